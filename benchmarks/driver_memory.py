"""Driver memory over a long sweep of short trials, and resume time vs an uninterrupted run.

    .venv/bin/python benchmarks/driver_memory.py [--trials 200] [--resume-trials 24]

1. memory: `python -m raysweep run` of a generated grid of N (≥ 200) two-step trials on the builtin model
   (the quickstart settings, one axis train.seed = 0..N-1). The driver's RSS (the `raysweep run` process
   only: Tune's controller, our progress table and trials.csv writer live there) is sampled every 0.5 s
   with the number of trials finished so far (the TERMINATED lines the driver prints). Flat = the RSS
   after the first 50 trials does not grow with the trials: the slope of a least-squares line of RSS over
   finished trials in the second half of the sweep, in KiB per trial, is printed with the samples at
   25/50/100/150/N finished. Baseline, measured in the same run: a plain Ray Tune sweep (no raysweep code
   in the driver; reused function actors; each trial reports as many numbers as a raysweep trial) of the
   same N trials, sampled the same way: what Tune itself keeps per trial.
2. resume: a grid of M trials of 30 steps, run uninterrupted (T_full); then run again and SIGKILL the driver
   once half of the trials have finished (T_killed, launch → kill), and `raysweep resume` it (T_resume).
   Printed: (T_killed + T_resume) / T_full, T_resume / T_full, and of the trials finished before the kill,
   how many the resume trained again (steps below the last in new result lines: must be 0) or only
   re-reported (restored from their final checkpoint); results_lost counts trials with fewer result
   lines after the resume than before (must be 0).
The builtin model and task are created first (not timed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "_out" / "driver_memory"


def grid_file(name: str, trials: int, steps: int) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    raw["name"] = name
    raw["train"].update(max_steps=steps, eval_every=steps, log_every=steps, warmup_steps=0, keep_last=1)
    raw["adapter"]["r"] = 2
    raw["grid"] = {"train.seed": list(range(trials))}
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Driver:
    """`python -m raysweep <args>` (or another command) in a subprocess, counting the trials it reports
    finished (its TERMINATED lines)."""

    def __init__(self, *args: str, command: list[str] | None = None):
        env = dict(os.environ, COLUMNS="120")
        self.started = time.perf_counter()
        command = command or [sys.executable, "-m", "raysweep", *args, "--no-dashboard"]
        self.proc = subprocess.Popen(command,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        self.finished = 0
        self.finished_ids: list[str] = []
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("TERMINATED "):
                self.finished += 1
                self.finished_ids.append(line.split()[1])
            self.tail = (self.tail + [line])[-40:]

    def wait(self) -> float:
        rc = self.proc.wait()
        if rc != 0:
            raise SystemExit(f"driver exited {rc}:\n{''.join(self.tail)}")
        return time.perf_counter() - self.started


def bare_tune(trials: int, keys: int) -> None:
    """The baseline driver: plain Ray Tune, reused function actors, each trial reporting 2 results of `keys`
    numbers (as many as a raysweep report), no raysweep code in the driver."""
    import ray
    from ray import tune

    def trainable(config):
        for step in (1, 2):
            tune.report({f"m{i}": float(step * i + config["seed"]) for i in range(keys)})

    class Lines(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"TERMINATED {trial.trial_id}", flush=True)

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), param_space={"seed": tune.grid_search(list(range(trials)))},
               tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=2),
               run_config=tune.RunConfig(name="bare", storage_path=str(OUT / "runs"), callbacks=[Lines()],
                                         verbose=0)).fit()


def memory(trials: int, bare_keys: int | None = None) -> dict:
    """Driver RSS over a sweep: raysweep's (bare_keys None) or the plain-Tune baseline's."""
    if bare_keys is None:
        driver = Driver("run", str(grid_file("memory", trials, 2)), "--storage", str(OUT / "runs"))
    else:
        driver = Driver(command=[sys.executable, __file__, "--bare", str(trials), str(bare_keys)])
    me = psutil.Process(driver.proc.pid)
    samples = []  # (finished, rss MiB)
    while driver.proc.poll() is None:
        try:
            samples.append((driver.finished, me.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    seconds = driver.wait()
    at = {}
    for mark in (25, 50, 100, 150, trials):
        rss = [r for f, r in samples if f >= mark]
        at[mark] = round(rss[0], 1) if rss else None
    half = [(f, r) for f, r in samples if f >= trials // 2]
    n = len(half)
    mean_f, mean_r = sum(f for f, _ in half) / n, sum(r for _, r in half) / n
    var = sum((f - mean_f) ** 2 for f, _ in half)
    slope_kib = (sum((f - mean_f) * (r - mean_r) for f, r in half) / var * 1024) if var else 0.0
    if bare_keys is None:
        rows = list(csv.DictReader((OUT / "runs" / "memory" / "trials.csv").open()))
        terminated = sum(r["status"] == "TERMINATED" for r in rows)
    else:
        terminated = driver.finished
    return {"trials": trials, "terminated": terminated, "seconds": round(seconds, 1),
            "rss_mib_at_finished": at, "rss_mib_max": round(max(r for _, r in samples), 1),
            "slope_kib_per_trial_second_half": round(slope_kib, 2), "samples": len(samples)}


def results(experiment: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in experiment.glob("*/result.json")}


def resume(trials: int) -> dict:
    full = Driver("run", str(grid_file("full", trials, 30)), "--storage", str(OUT / "runs")).wait()
    killed = Driver("run", str(grid_file("killed", trials, 30)), "--storage", str(OUT / "runs"))
    while killed.finished < trials // 2 and killed.proc.poll() is None:
        time.sleep(0.2)
    os.kill(killed.proc.pid, signal.SIGKILL)
    killed.proc.wait()
    t_killed = time.perf_counter() - killed.started
    experiment = OUT / "runs" / "killed"
    time.sleep(3)  # let the orphaned local Ray processes notice their driver is gone
    before = results(experiment)
    # the trial dirs (<trial id>_seed=N) the driver printed finished before it was killed
    finished_before = {d for d in before if any(d.startswith(f"{i}_") for i in killed.finished_ids)}
    t_resume = Driver("resume", str(experiment)).wait()
    after = results(experiment)
    # a trial finished just before the kill but after Tune last saved the experiment state is restarted by
    # the resume: it restores its final checkpoint and re-reports its last result (no step trained again)
    new = {d: after[d][len(before[d]):] for d in finished_before}
    rows = list(csv.DictReader((experiment / "trials.csv").open()))
    return {"trials": trials, "t_full_s": round(full, 1), "t_killed_s": round(t_killed, 1),
            "t_resume_s": round(t_resume, 1), "killed_plus_resume_over_full": round((t_killed + t_resume) / full, 3),
            "resume_over_full": round(t_resume / full, 3), "finished_before_kill": len(finished_before),
            "finished_trials_retrained": sum(any(r["train/step"] < 30 for r in rows) for rows in new.values()),
            "finished_trials_rereported": sum(bool(rows) for rows in new.values()),
            "results_lost": sum(len(after.get(d, [])) < len(rows) for d, rows in before.items()),
            "terminated_after_resume": sum(r["status"] == "TERMINATED" for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--resume-trials", type=int, default=24)
    parser.add_argument("--bare", nargs=2, type=int, help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.bare:
        bare_tune(*args.bare)
        return
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    ensure_builtin_model()
    ensure_builtin_task()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    out = {"memory": memory(args.trials)}
    with (OUT / "runs" / "memory" / "trials.csv").open() as f:  # numbers per raysweep report, for the baseline
        row = next(csv.DictReader(f))
    keys = sum(1 for k, v in row.items() if "/" in k and v not in ("", None))
    out["memory_plain_tune"] = memory(args.trials, bare_keys=keys) | {"numbers_per_report": keys}
    out["resume"] = resume(args.resume_trials)
    print(json.dumps(out, indent=2))
    (OUT / "result.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
