"""Train-step time and peak memory of SubLoRA against plain LoRA, at d = 1000 and d = 50000.

    .venv/bin/python benchmarks/sublora_step.py [--steps 40 120] [--repeats 3] [--rank 32]

Every measurement runs in a fresh Python process (so peak RSS belongs to that configuration alone) on the
builtin model and the quickstart task (batch 32, 1 thread); per-step time = (wall(N2 steps) − wall(N1
steps)) / (N2 − N1) of the raysweep loop (`run_training`) in that process, so set-up and evaluation
cancel out. Peak memory = the process's maximum resident set size (ru_maxrss) after both runs; the
projector's own bytes (adapter/projector_bytes) are reported beside it, since on this model they are
too small to see in RSS. Bounds are off (they are a once-per-trial cost, not a per-step one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("lora", None), ("sublora", 1000), ("sublora", 50000)]


def measure(adapter: str, d: int | None, rank: int, steps: tuple[int, int], seed: int) -> dict:
    """Run inside the child process: two loops of N1 and N2 steps, then peak RSS."""
    import resource

    import torch

    from raysweep import config as G
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    torch.set_num_threads(1)
    raw = G.read_yaml(ROOT / "search_spaces" / "quickstart.yaml")
    cell = {"adapter.type": adapter, "adapter.r": rank, "train.seed": seed, "train.eval_every": 10**6}
    if adapter == "sublora":
        cell |= {"adapter.intrinsic_dim": d, "adapter.bounds": False, "train.lr": 0.1}
    walls, last = [], {}
    for n in (1, *steps):  # the 1-step run loads the base model and data into the process caches
        cfg = G.trial_config(raw, cell | {"train.max_steps": n})
        with tempfile.TemporaryDirectory() as tmp:
            session = LocalSession(Path(tmp))
            t0 = time.perf_counter()
            run_training(cfg, session)
            walls.append(time.perf_counter() - t0)
            last = session.results[-1]
    return {"step_s": (walls[2] - walls[1]) / (steps[1] - steps[0]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable": last.get("adapter/trainable_params"), "projector_bytes": last.get("adapter/projector_bytes"),
            "D": last.get("adapter/projected_params")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, nargs=2, default=[40, 120])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=32)  # D ≈ 139k LoRA parameters: d = 50000 stays below D
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one measurement, printed as JSON for the parent
        adapter, d, seed = json.loads(args.child)
        print(json.dumps(measure(adapter, d, args.rank, tuple(args.steps), seed)))
        return
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.repeats):  # interleaved, so slow phases of a shared machine hit every configuration
        for adapter, d in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps([adapter, d, r]), "--rank",
                                  str(args.rank), "--steps", *map(str, args.steps)],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs.setdefault((adapter, d), []).append(result)
            print(f"{adapter} d={d} run {r}: {1000 * result['step_s']:.2f} ms/step, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    base = runs[("lora", None)]
    print(f"\n| adapter (r={args.rank}, batch 32, 1 thread) | trainable | D (LoRA params) | projector bytes | "
          f"ms/step (median of {args.repeats}) | step-time ratio to lora (median; range) | peak RSS MB | "
          "RSS − lora MB |\n|---|---|---|---|---|---|---|---|")
    for (adapter, d), results in runs.items():
        ratios = [x["step_s"] / y["step_s"] for x, y in zip(results, base, strict=True)]
        rss = statistics.median(x["peak_rss_mb"] for x in results)
        rss0 = statistics.median(x["peak_rss_mb"] for x in base)
        name = adapter if d is None else f"{adapter} d={d}"
        print(f"| {name} | {results[0]['trainable']} | {results[0]['D'] or '-'} | {results[0]['projector_bytes'] or '-'} "
              f"| {1000 * statistics.median(x['step_s'] for x in results):.2f} | **{statistics.median(ratios):.2f}** "
              f"({min(ratios):.2f}–{max(ratios):.2f}) | {rss:.0f} | {rss - rss0:+.0f} |")


if __name__ == "__main__":
    main()
