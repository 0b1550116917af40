"""Packed trials vs one trial at a time, on the quickstart grid (issue "Packed trials", case a, in-process).

    .venv/bin/python benchmarks/packing.py [--steps 200] [key=value overrides of the quickstart grid ...]

The 8 quickstart configurations (lora/dora × r 4/16 × seed 0/1) on 2 slots, each slot a process with one torch
thread (what a 1-CPU trial gets), all in this one invocation:
1. alone: each slot runs its 4 trials one after another with `run_training` (today's actor executor without
   Ray's ~0.1 s hand-over per trial: the base is cached in the process);
2. pack 4 × 2: each slot trains its 4 configurations as one pack (`train_pack`);
3. pack 8 × 1: one slot trains all 8 as one pack (the other slot idle).
Reported: wall time of each mode (both slots in parallel), trials/hour, the ratio to `alone`, and the largest
relative difference of any eval loss between packed and alone (float32). Not yet through Ray: the packed
executor is the next step of the issue.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from raysweep import config as C
from raysweep.experiment import metrics as M
from raysweep.inputs import model_cache
from raysweep.trial.loop import run_training
from raysweep.trial.packed_loop import train_pack
from raysweep.trial.session import LocalSession

mode, indices, overrides = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
_, _, trials = C.load(str(Path("search_spaces/quickstart.yaml")), overrides)
configs = [trials[i].config.model_dump(mode="json") for i in indices]
evals = lambda rows: {r[M.EVAL_STEP]: r[M.EVAL_LOSS] for r in rows if M.EVAL_LOSS in r}
model_cache.base_model(configs[0]["model"], torch.device("cpu"))  # the base loaded once, as in a warm actor
t0 = time.perf_counter()
out = []
if mode == "alone":
    for cfg in configs:
        with tempfile.TemporaryDirectory() as tmp:
            session = LocalSession(Path(tmp))
            run_training(cfg, session)
        model_cache.release_trial_memory()
        out.append(evals(session.results))
else:
    out = [evals(r.reports) for r in train_pack(configs)]
print(json.dumps({"seconds": time.perf_counter() - t0, "evals": out}))
"""


def run_slots(mode: str, slots: list[list[int]], overrides: list[str]) -> tuple[float, dict[int, dict]]:
    """Wall seconds with every slot's child running in parallel, and each trial's eval losses."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, mode, json.dumps(s), json.dumps(overrides)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for s in slots]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t0
    evals = {i: {int(k): v for k, v in e.items()} for s, o in zip(slots, outs, strict=True)
             for i, e in zip(s, o["evals"], strict=True)}
    return wall, evals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args, overrides = parser.parse_known_args()
    overrides = [f"train.max_steps={args.steps}", *overrides]
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    ensure_builtin_model()
    ensure_builtin_task()
    with tempfile.TemporaryDirectory():
        results = {"alone (4 + 4 on 2 slots)": run_slots("alone", [[0, 1, 2, 3], [4, 5, 6, 7]], overrides),
                   "pack 4 × 2 slots": run_slots("pack", [[0, 1, 2, 3], [4, 5, 6, 7]], overrides),
                   "pack 8 × 1 slot": run_slots("pack", [list(range(8))], overrides)}
    base_wall, base_evals = results["alone (4 + 4 on 2 slots)"]
    table = {}
    for name, (wall, evals) in results.items():
        drift = max(abs(evals[i][s] - base_evals[i][s]) / abs(base_evals[i][s]) for i in evals for s in evals[i])
        table[name] = {"wall_s": round(wall, 1), "trials_per_hour": round(8 * 3600 / wall),
                       "speed-up vs alone": round(base_wall / wall, 2), "max eval-loss rel. diff": f"{drift:.1e}"}
    print(json.dumps({"steps": args.steps, "results": table}, indent=1))


if __name__ == "__main__":
    main()
