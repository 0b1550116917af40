"""Per-trial fixed overhead and sweep makespan vs the ideal, for the quickstart grid.

    .venv/bin/python benchmarks/sweep_overhead.py [grid.yaml] [key=value overrides ...]

1. bare: every trial of the grid run in this one warm process, one after another, with no Ray
   (`run_training` + `LocalSession`, 1 torch thread = what a 1-CPU trial gets). Ideal makespan =
   Σ bare times ÷ slots (trials the machine runs at once).
2. sweep: `python -m raysweep run <grid>` in a subprocess, wall clock from launch to exit (Ray start-up,
   every trial, shutdown), with the builtin model already cached.
Per-trial overhead = (makespan × slots − Σ bare) ÷ trials: what Ray Tune + Ray Train add per trial
(process starts, imports, placement, reporting, shutdown), amortised. Tune's own `time_total_s` of
each trial's last result (driver start → last report) is printed too.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bare_times(grid: str, overrides: list[str]) -> list[tuple[str, float]]:
    import torch

    from raysweep import config as G
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    torch.set_num_threads(1)
    raw, _, trials = G.load(grid, overrides)
    out = []
    for t in trials:
        cfg = t.config.model_dump(mode="json")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_training(cfg, LocalSession(Path(tmp)))
            out.append((t.label(), time.perf_counter() - t0))
        print(f"bare {t.label()}: {out[-1][1]:.1f} s", flush=True)
    return out


def main() -> None:
    grid = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "search_spaces" / "quickstart.yaml")
    overrides = sys.argv[2:]
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    ensure_builtin_model()
    ensure_builtin_task()
    storage = ROOT / "benchmarks" / "_out"
    shutil.rmtree(storage, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", grid, *overrides, "--storage", str(storage),
                           "--name", "bench", "--no-dashboard"], cwd=ROOT, capture_output=True, text=True)
    makespan = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
    with (storage / "bench" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    tune_times = []
    for r in rows:
        lines = Path(r["trial_path"], "result.json").read_text().splitlines()
        tune_times.append(json.loads(lines[-1])["time_total_s"])
    print(f"sweep makespan: {makespan:.1f} s", flush=True)

    bare = bare_times(grid, overrides)
    slots = min(len(bare), int((os.cpu_count() or 1) // 1))
    total_bare = sum(b for _, b in bare)
    ideal = total_bare / slots
    overhead = (makespan * slots - total_bare) / len(bare)
    print(f"\n| quantity ({len(bare)} trials, {slots} slots) | value |\n|---|---|")
    print(f"| Σ bare single-trial time (no Ray, warm process) | {total_bare:.1f} s |")
    print(f"| mean bare trial | {total_bare / len(bare):.1f} s |")
    print(f"| ideal makespan = Σ bare ÷ slots | {ideal:.1f} s |")
    print(f"| raysweep sweep makespan (CLI launch → exit) | {makespan:.1f} s |")
    print(f"| makespan ÷ ideal | {makespan / ideal:.2f} |")
    print(f"| per-trial overhead (makespan × slots − Σ bare) ÷ trials | {overhead:.1f} s |")
    print(f"| mean Tune time_total_s per trial (driver start → last report) | {sum(tune_times) / len(tune_times):.1f} s |")


if __name__ == "__main__":
    main()
