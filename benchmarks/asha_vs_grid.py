"""ASHA vs the full grid: best eval loss reached and trial-steps spent, on the builtin model and task.

    .venv/bin/python benchmarks/asha_vs_grid.py [--orders 3] [--grace-periods 20 40] [--max-steps 160]
                                                [key=value overrides ...]

The grid is lr × rank (4 × 4 = 16 LoRA trials). It runs once with `search.scheduler: fifo` (every trial
to train.max_steps) and then with `search.scheduler: asha` (reduction factor 3; grace period 20 = the first
eval: rungs at 20 and 60 steps of 160; grace period 40 = the default, the first eval at or after
max_steps / 4: rungs at 40 and 120) once per grace period and trial order: ASHA is asynchronous, so which
trials reach a rung first decides the cutoffs (the order, and with 2 trials at once also their timing), and
the grid's order is an accident of how it was written. Order 0 is the grid's own (lr-major, ascending);
the others are seeded shuffles (one sub-grid per cell).
Each sweep is `python -m raysweep run` in a subprocess (actor executor, 2 trials at once, no dashboard).

Recorded per sweep: the best final eval/loss over trials that ran to train.max_steps, its ratio to the
grid's best, the trial-steps run (Σ over trials of the last train/step; an actor-executor trial stops
exactly at the report it was stopped on) and their fraction of the grid's, trials stopped, wall time.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "_out" / "asha_vs_grid"
LRS = [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]
RANKS = [2, 4, 8, 16]


def base(max_steps: int, eval_every: int) -> dict:
    return {
        "model": {"name_or_path": "builtin"},
        "data": {"task": "builtin", "max_seq_len": 32},
        "train": {"batch_size": 32, "eval_batch_size": 200, "max_steps": max_steps, "warmup_steps": 10,
                  "schedule": "cosine", "eval_every": eval_every, "log_every": 10},
        "adapter": {"type": "lora"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "executor": "actor"},
    }


def grid_cells(order: int) -> list[dict]:
    cells = [{"train.lr": lr, "adapter.r": r} for lr in LRS for r in RANKS]
    if order:
        random.Random(order).shuffle(cells)
    return cells


def sweep(name: str, raw: dict, overrides: list[str]) -> dict:
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", str(path), *overrides, "--storage", str(OUT),
                           "--name", name, "--no-dashboard"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    with (OUT / name / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(r["status"] == "TERMINATED" for r in rows), rows
    full = [r for r in rows if not r["stopped_by"]]
    best = min(full, key=lambda r: float(r["eval/loss"]))
    return {"name": name, "rows": rows, "wall_s": wall, "steps": sum(int(r["train/step"]) for r in rows),
            "stopped": len(rows) - len(full), "best": float(best["eval/loss"]),
            "best_cfg": f"lr={float(best['cell/train.lr']):g} r={best['cell/adapter.r']}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=3, help="ASHA sweeps: the grid's order, then shuffles")
    parser.add_argument("--max-steps", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--grace-periods", type=int, nargs="+", default=[20, 40])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    ensure_builtin_model()
    ensure_builtin_task()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)

    raw = base(args.max_steps, args.eval_every) | {"grid": {"train.lr": LRS, "adapter.r": RANKS}}
    grid = sweep("grid", raw | {"search": {"scheduler": "fifo"}}, args.overrides)
    print(f"grid: best {grid['best']:.4f} ({grid['best_cfg']}), {grid['steps']} trial-steps, "
          f"{grid['wall_s']:.0f} s", flush=True)
    results = []
    for grace in args.grace_periods:
        for order in range(args.orders):
            cells = grid_cells(order)
            asha_raw = raw | {"search": {"scheduler": "asha", "grace_period": grace, "reduction_factor": 3},
                              "grid": [{k: [v] for k, v in c.items()} for c in cells] if order else raw["grid"]}
            res = sweep(f"asha-grace{grace}-order{order}", asha_raw, args.overrides) | {"grace": grace, "order": order}
            results.append(res)
            print(f"asha grace {grace} order {order}: best {res['best']:.4f} ({res['best_cfg']}), {res['steps']} "
                  f"trial-steps, {res['stopped']} stopped, {res['wall_s']:.0f} s", flush=True)

    n = len(grid["rows"])
    print(f"\n| sweep ({n} trials, {args.max_steps} steps, eval every {args.eval_every}) | best final eval/loss "
          "(trials run to the end) | best configuration | ÷ grid best | trial-steps run | ÷ grid trial-steps "
          "| trials stopped | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| grid (fifo) | {grid['best']:.4f} | {grid['best_cfg']} | 1.000 | {grid['steps']} | 1.00 | 0 "
          f"| {grid['wall_s']:.0f} s |")
    for res in results:
        i = res["order"]
        print(f"| asha, grace {res['grace']}, order {i}{' (grid order)' if i == 0 else ' (shuffled)'} | {res['best']:.4f} | "
              f"{res['best_cfg']} | {res['best'] / grid['best']:.3f} | {res['steps']} | "
              f"{res['steps'] / grid['steps']:.2f} | {res['stopped']} | {res['wall_s']:.0f} s |")
    ranked = sorted(grid["rows"], key=lambda r: float(r["eval/loss"]))
    print("\ngrid, final eval/loss by configuration (best first): " + ", ".join(
        f"lr={float(r['cell/train.lr']):g} r={r['cell/adapter.r']}: {float(r['eval/loss']):.4f}" for r in ranked))
    for res in results:
        stopped = sorted((int(r["train/step"]), f"lr={float(r['cell/train.lr']):g} r={r['cell/adapter.r']}")
                         for r in res["rows"] if r["stopped_by"])
        print(f"{res['name']}: stopped (step, configuration): {stopped}")


if __name__ == "__main__":
    main()
