"""What task metrics (`evaluate:`) cost per trial relative to training, on the quickstart grid.

    .venv/bin/python benchmarks/eval_cost.py [--limit N]

Runs `python -m raysweep run search_spaces/quickstart.yaml` twice in subprocesses (the builtin model cached
first): once as it is, once with an evaluate section (the two local cipher tasks of
raysweep/offline/cipher_tasks.py, `limit` examples each, and greedy generation on `limit` validation answers,
baseline on). Prints per trial: its training time (sys/time of the last report − sys/started_at, minus the task
metrics), `sys/task_eval_s` and their ratio; the untuned base's one-off `sys/baseline_s`; and both sweeps'
wall clock from launch to exit.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(storage: Path, name: str, overrides: list[str]) -> tuple[float, list[dict[str, str]]]:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", "search_spaces/quickstart.yaml", "--storage",
                           str(storage), "--name", name, *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with (storage / name / "trials.csv").open() as f:
        return wall, list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=200, help="examples per task and generated answers")
    args = parser.parse_args()
    from raysweep.inputs.builtin import ensure_builtin_model
    from raysweep.offline.cipher_tasks import write_cipher_tasks

    ensure_builtin_model()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write_cipher_tasks(Path(tmp) / "eval_tasks")
        storage = Path(tmp) / "runs"
        plain_wall, _ = sweep(storage, "plain", [])
        evaluate = (f"evaluate={{generation: {{max_new_tokens: 16, max_examples: {args.limit}}}, lm_eval: {{tasks: "
                    f"[{tasks['cipher_mc']}, {tasks['cipher_gen']}], limit: {args.limit}, batch_size: 32}}}}")
        eval_wall, rows = sweep(storage, "evaluated", [evaluate])
    ratios = []
    for row in rows:
        task_s, base_s = float(row["sys/task_eval_s"]), float(row["sys/baseline_s"])
        train_s = float(row["sys/time"]) - float(row["sys/started_at"]) - task_s - base_s
        ratios.append(task_s / train_s)
        print(f"{row['adapter.type']} r={row['adapter.r']} seed={row['train.seed']}: training {train_s:.1f} s, task "
              f"metrics {task_s:.1f} s ({task_s / train_s:.2f}×), baseline {base_s:.1f} s; "
              f"mc acc {float(row['task/cipher_mc/acc']):.3f}, gen EM {float(row['task/cipher_gen/exact_match']):.3f}, "
              f"gen/f1 {float(row['gen/f1']):.3f}")
    print(f"task metrics / training per trial: median {statistics.median(ratios):.2f}× "
          f"(range {min(ratios):.2f}–{max(ratios):.2f}×)")
    print(f"baseline (once per sweep): {max(float(r['sys/baseline_s']) for r in rows):.1f} s")
    print(f"sweep wall, launch to exit: plain {plain_wall:.1f} s, with task metrics {eval_wall:.1f} s "
          f"(+{eval_wall - plain_wall:.1f} s, {eval_wall / plain_wall:.2f}×)")


if __name__ == "__main__":
    main()
