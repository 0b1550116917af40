"""Per-trial start-up and sweep makespan for each executor, against the ideal and the bash loop.

    .venv/bin/python benchmarks/trial_startup.py [--steps 600] [--skip-big-model]

All measured in one run, on the quickstart grid (8 trials, 1 CPU each, 2 at once here) with
`train.max_steps=<steps>` so that each trial computes for ~30 s:

1. bare: every trial in this one warm process (`run_training` + `LocalSession`, 1 thread). Ideal makespan
   = Σ bare ÷ slots. Two trials running at once on this machine each run slower than one alone (they
   share cores, caches and memory bandwidth with each other and with Ray's own processes), so a second
   reference is measured too: "warm pair" = the trials split over `slots` warm Python processes running
   in parallel (no Ray, no start-up besides each process's first load) — a perfect executor's makespan.
2. loop: what users run today, a sequential loop of one fresh `python` process per trial (2 threads each,
   the whole machine, as a bash loop would give it).
3. `python -m raysweep run ... resources.executor=train` and `... =actor`, launch → exit.

Per-trial start-up of a swept trial = (training loop ready) − (its slot became free), where loop ready =
`sys/started_at` + `sys/setup_s` reported by the worker and a slot becomes free when Tune sees a trial end
(`ended_at` in trials.csv; the first trial on each slot counts from Tune's trial start callback). Phases:
executor (slot free → our training code runs: process starts, imports, Ray Train controller/worker group
or actor reuse), setup (base model + data + optimizer; `sys/model_load_s` is the model part), and shutdown
(last report → Tune sees the trial end).

4. base-model cache: a ~1.1B-parameter Llama (bf16, random weights, written to a temp dir) loaded from
   disk vs taken from the per-process cache (what a reused actor does), in this process.

The machine's speed drifts by ±10% over minutes here (a shared 2-core host), more than the differences
measured, so bare, the actor sweep, the warm pair and the loop are run `--repeats` times, back to back in
each repeat, and every ratio is taken within a repeat; the table reports the median over repeats (and
each repeat). The `train` executor is run once (it is far from every target).

The actor sweep's fixed cost is split as: CLI start → first trial launched (Python and Ray start-up, Tune
set-up, the trial actors' processes), first trial launched → its training loop ready (the actor's first
imports and base-model load), and last trial ended → the CLI has exited (summary, Ray shutdown).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = str(ROOT / "search_spaces" / "quickstart.yaml")
OUT = ROOT / "benchmarks" / "_out"


def one_trial(index: int, overrides: list[str]) -> None:
    """Entry point of the `loop` baseline: one trial of the grid in this fresh process."""
    from raysweep import config as G
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    _, _, trials = G.load(GRID, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_training(trials[index].config.model_dump(mode="json"), LocalSession(Path(tmp)))


def many_trials(indices: list[int], overrides: list[str]) -> None:
    """Entry point of the `warm pair` reference: several trials, one after another, in this process."""
    import torch

    from raysweep import config as G
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    torch.set_num_threads(1)
    _, _, trials = G.load(GRID, overrides)
    for i in indices:
        with tempfile.TemporaryDirectory() as tmp:
            run_training(trials[i].config.model_dump(mode="json"), LocalSession(Path(tmp)))


def warm_pair(overrides: list[str], n: int, slots: int) -> float:
    """Trials dealt round-robin (the order Tune starts them) to `slots` processes started together."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--many", ",".join(map(str, range(k, n, slots))),
                               *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k in range(slots)]
    if any(p.wait() for p in procs):
        sys.exit("warm pair: a trial process failed")
    print(f"warm pair: {time.perf_counter() - t0:.1f} s", flush=True)
    return time.perf_counter() - t0


def bare(overrides: list[str]) -> list[float]:
    import torch

    from raysweep import config as G
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    torch.set_num_threads(1)
    _, _, trials = G.load(GRID, overrides)
    times = []
    for t in trials:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_training(t.config.model_dump(mode="json"), LocalSession(Path(tmp)))
            times.append(time.perf_counter() - t0)
        print(f"bare {t.label()}: {times[-1]:.1f} s", flush=True)
    return times


def loop(overrides: list[str], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        subprocess.run([sys.executable, __file__, "--one", str(i), *overrides, "resources.cpus_per_worker=2"],
                       cwd=ROOT, check=True, capture_output=True)
        print(f"loop trial {i}: {time.perf_counter() - t0:.1f} s elapsed", flush=True)
    return time.perf_counter() - t0


def sweep(overrides: list[str], executor: str, tag: str = "") -> tuple[float, list[dict], dict[str, float]]:
    name = f"startup-{executor}{tag}"
    shutil.rmtree(OUT / name, ignore_errors=True)
    t0, wall0 = time.perf_counter(), time.time()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", GRID, *overrides,
                           f"resources.executor={executor}", "--storage", str(OUT), "--name", name,
                           "--no-dashboard"], cwd=ROOT, capture_output=True, text=True)
    makespan, wall1 = time.perf_counter() - t0, time.time()
    if proc.returncode:
        sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
    with (OUT / name / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        results = [json.loads(line) for line in Path(r["trial_path"], "result.json").read_text().splitlines()]
        r["last_report"] = results[-1]["sys/time"]
    first = min(rows, key=lambda r: float(r["launched_at"]))
    fixed = {"to_first_launch": float(first["launched_at"]) - wall0,
             "first_ready": float(first["sys/started_at"]) + float(first["sys/setup_s"]) - float(first["launched_at"]),
             "after_last_end": wall1 - max(float(r["ended_at"]) for r in rows)}
    print(f"{executor}: makespan {makespan:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in fixed.items())})",
          flush=True)
    return makespan, rows, fixed


def phases(rows: list[dict], slots: int) -> dict[str, list[float]]:
    """Per-trial start-up phases (see module docstring), trials in the order their training code started."""
    num = {k: [float(r[k]) for r in rows] for k in
           ("sys/started_at", "sys/setup_s", "sys/model_load_s", "launched_at", "ended_at", "last_report")}
    order = sorted(range(len(rows)), key=lambda i: num["sys/started_at"][i])
    ends = sorted(num["ended_at"])
    out: dict[str, list[float]] = {"executor": [], "setup": [], "model": [], "startup": [], "shutdown": [],
                                   "first": []}
    for rank, i in enumerate(order):
        first = rank < slots
        freed = num["launched_at"][i] if first else ends[rank - slots]
        ready = num["sys/started_at"][i] + num["sys/setup_s"][i]
        out["first" if first else "startup"].append(ready - freed)
        if not first:  # steady state: a slot freed by a finished trial is taken by the next one
            out["executor"].append(num["sys/started_at"][i] - freed)
            out["setup"].append(num["sys/setup_s"][i])
            out["model"].append(num["sys/model_load_s"][i])
        out["shutdown"].append(num["ended_at"][i] - num["last_report"][i])
    return out


def _drop_page_cache() -> bool:
    """Make the next read come from disk (root only); False where not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def big_model_cache() -> dict[str, float]:
    """Seconds from asking for the base to every weight being in memory (safetensors are memory-mapped, so
    a load alone defers the reading to first use; we read each tensor once): cache hit vs miss, with the
    weights file in the OS page cache (warm) and, where allowed, read from disk (cold)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from raysweep.inputs import model_cache
    from raysweep.inputs.builtin import ensure_builtin_model

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with torch.device("meta"):  # no time spent on an init that is overwritten below
            model = LlamaForCausalLM(cfg)
        model = model.to_empty(device="cpu").to(torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(ensure_builtin_model()).save_pretrained(tmp)  # any tokenizer will do
        out["params"] = sum(p.numel() for p in model.parameters())
        del model
        model_cfg = {"name_or_path": tmp, "dtype": "bfloat16"}
        def ready() -> tuple[float, bool]:
            t0 = time.perf_counter()
            view, _, hit, _ = model_cache.base_model(model_cfg, torch.device("cpu"))
            with torch.no_grad():
                for p in view.parameters():
                    p.sum()
            return time.perf_counter() - t0, hit

        model_cache.clear()
        if _drop_page_cache():
            out["miss_cold"], hit = ready()
            assert not hit
            model_cache.clear()
        out["miss_warm"], hit = ready()
        assert not hit
        out["hit"] = statistics.median(ready()[0] for _ in range(3))
        model_cache.clear()
    return out


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}" if xs else "-"


def ratio_table(runs: list[dict[str, float]], slots: int) -> None:
    """One row per way of running the grid; every ratio is the median over repeats of the ratio taken within
    a repeat (see the module docstring)."""
    def med_ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in runs)

    ways = [("ideal", f"ideal: Σ bare (one trial at a time, warm) ÷ {slots}"),
            ("pair", f"warm pair: {slots} warm processes in parallel, no Ray"),
            ("loop", "sequential loop of fresh processes (2 threads each)"),
            ("actor", "raysweep, executor=actor")] + ([("train", "raysweep, executor=train")] if "train" in runs[0] else [])
    print("| way to run the grid | makespan, median (each repeat) | ÷ ideal (Σ bare ÷ slots) | ÷ warm pair | "
          "speed-up vs loop |\n|---|---|---|---|---|")
    for key, label in ways:
        each = ", ".join(f"{r[key]:.1f}" for r in runs if key in r)
        ideal = med_ratio(key, "ideal") if key != "train" else runs[0]["train"] / runs[0]["ideal"]
        pair = med_ratio(key, "pair") if key != "train" else runs[0]["train"] / runs[0]["pair"]
        loop_x = med_ratio("loop", key) if key != "train" else runs[0]["loop"] / runs[0]["train"]
        bold = "**" if key == "actor" else ""
        print(f"| {label} | {statistics.median(r[key] for r in runs if key in r):.1f} s ({each}) | "
              f"{bold}{ideal:.2f}{bold} | {bold}{pair:.2f}{bold} | {bold}{loop_x:.2f}{bold} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--many", default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3, help="repeats of bare / actor / warm pair / loop")
    p.add_argument("--skip-train", action="store_true", help="leave out the train executor's sweep")
    p.add_argument("--skip-big-model", action="store_true")
    args, rest = p.parse_known_args()
    if args.one is not None:
        one_trial(args.one, rest)
        return
    if args.many is not None:
        many_trials([int(i) for i in args.many.split(",")], rest)
        return
    overrides = [f"train.max_steps={args.steps}"]
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    ensure_builtin_model()
    ensure_builtin_task()
    shutil.rmtree(OUT / "startup-train", ignore_errors=True)
    slots = 2 if (os.cpu_count() or 1) >= 2 else 1
    runs: list[dict[str, float]] = []
    sweeps: dict[str, list[tuple[list[dict], dict[str, float]]]] = {"actor": [], "train": []}
    for k in range(args.repeats):
        print(f"--- repeat {k + 1} of {args.repeats}", flush=True)
        bare_times = bare(overrides)
        run = {"ideal": sum(bare_times) / slots, "sum_bare": sum(bare_times)}
        run["actor"], rows, fixed = sweep(overrides, "actor", tag=f"-{k + 1}")
        sweeps["actor"].append((rows, fixed))
        run["pair"] = warm_pair(overrides, len(bare_times), slots)
        run["loop"] = loop(overrides, len(bare_times))
        if k == 0 and not args.skip_train:
            run["train"], rows, fixed = sweep(overrides, "train")
            sweeps["train"].append((rows, fixed))
        runs.append(run)
        print(f"repeat {k + 1}: " + ", ".join(f"{key} {v:.1f} s" for key, v in run.items()), flush=True)

    sums = ", ".join(f"{r['sum_bare']:.1f}" for r in runs)
    print(f"\n8 trials × train.max_steps={args.steps}, {slots} slots, {args.repeats} repeat(s); Σ bare per repeat: "
          f"{sums} s\n")
    ratio_table(runs, slots)
    print("\n| executor | median start-up, steady state (s) | executor phase | setup | of which model | "
          "first trial per slot | shutdown |\n|---|---|---|---|---|---|---|")
    for ex, done in sweeps.items():
        if not done:
            continue
        ph: dict[str, list[float]] = {}
        for rows, _ in done:
            for key, values in phases(rows, slots).items():
                ph.setdefault(key, []).extend(values)
        print(f"| {ex} | **{med(ph['startup'])}** | {med(ph['executor'])} | {med(ph['setup'])} | {med(ph['model'])} "
              f"| {med(ph['first'])} | {med(ph['shutdown'])} |")
        print(f"<!-- {ex} start-ups: {[round(x, 2) for x in ph['startup']]} -->")
    print("\n| actor sweep, fixed cost (median over repeats) | s |\n|---|---|")
    for key, label in (("to_first_launch", "CLI start → first trial launched (Python, Ray, Tune, actor processes)"),
                       ("first_ready", "first trial launched → its training loop ready (first imports, base model)"),
                       ("after_last_end", "last trial ended → CLI exited (summary, Ray shutdown)")):
        print(f"| {label} | {statistics.median(f[key] for _, f in sweeps['actor']):.2f} |")
    if not args.skip_big_model:
        big = big_model_cache()
        print(f"\n| base model ({big['params'] / 1e9:.2f}B params, bf16): ask → all weights in memory | s |\n|---|---|")
        if "miss_cold" in big:
            print(f"| reload, weights read from disk (page cache dropped) | {big['miss_cold']:.2f} |")
        print(f"| reload, weights file in the OS page cache | {big['miss_warm']:.2f} |")
        print(f"| cached base in this process (reused actor; median of 3) | {big['hit']:.2f} |")


if __name__ == "__main__":
    main()
