"""Per-trial cost of a seed sweep of tiny trials: raysweep vs plain Ray Tune's reused-actor trivial trial.

    .venv/bin/python benchmarks/seed_sweep.py [--trials 100] [--steps 2]

Both run on this machine, one after the other in one invocation, 2 trials at once (1 CPU each):
1. plain: `tune.Tuner` over `seed: grid_search(range(N))` with reuse_actors=True and a function trainable
   that reports once — the floor of what a Tune trial costs (scheduling, actor reuse, one report).
2. raysweep: `python -m raysweep run search_spaces/quickstart.yaml` with `grid={train.seed: [0..N-1]}`,
   train.max_steps=2, eval_every=2 (step-0 eval, 2 steps, a final eval and checkpoint), builtin model cached.
Per-trial slot time = makespan × 2 slots ÷ N, where makespan runs from the first trial's start to the last
trial's end as the trials record them (so Ray's start and shutdown count in neither). For raysweep it also
prints where a trial's time goes (medians of each trial's sys/* timings, from its last result).
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
SLOTS = 2


PLAIN = """
import sys, tempfile, time
import ray
from ray import tune

def trivial(config):
    started = time.time()
    tune.report({"seed": config["seed"], "started": started, "ended": time.time()})

ray.init(num_cpus=int(sys.argv[2]), include_dashboard=False, log_to_driver=False)
with tempfile.TemporaryDirectory() as tmp:
    tuner = tune.Tuner(tune.with_resources(trivial, {"cpu": 1}),
                       param_space={"seed": tune.grid_search(list(range(int(sys.argv[1]))))},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=tmp, verbose=0))
    frame = tuner.fit().get_dataframe()
print(frame["ended"].max() - frame["started"].min())
ray.shutdown()
"""


def plain_tune(trials: int) -> tuple[float, float]:
    """(wall seconds launch -> exit, trials' makespan) of the plain Tune script in a fresh interpreter."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(trials), str(SLOTS)], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, float(proc.stdout.strip().splitlines()[-1])


def raysweep_sweep(trials: int, steps: int) -> tuple[float, float, dict[str, float]]:
    """(wall seconds launch -> exit, trials' makespan, where a trial's time goes)."""
    from raysweep.experiment import layout
    from raysweep.experiment import metrics as M

    with tempfile.TemporaryDirectory() as tmp:
        seeds = ", ".join(str(s) for s in range(trials))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "raysweep", "run", str(ROOT / "search_spaces" / "quickstart.yaml"),
             f"grid={{train.seed: [{seeds}]}}", f"train.max_steps={steps}", f"train.eval_every={steps}",
             "--storage", tmp, "--name", "seeds"], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
        last = [layout.last_result(p.parent) for p in (Path(tmp) / "seeds").glob(f"*/{layout.RESULT_FILE}")]
    assert len(last) == trials, len(last)
    makespan = max(r[M.SYS_TIME] for r in last) - min(r[M.SYS_STARTED_AT] for r in last)
    by_process: dict[int, list[dict]] = {}
    for r in sorted(last, key=lambda r: r[M.SYS_STARTED_AT]):
        by_process.setdefault(r[M.SYS_PID], []).append(r)
    later = [r for rows in by_process.values() for r in rows[1:]]  # the first trial of a process loads the base
    med = lambda key, rows=later: statistics.median(r[key] for r in rows)  # noqa: E731
    breakdown = {"in run_training (start -> last report)": statistics.median(r[M.SYS_TIME] - r[M.SYS_STARTED_AT]
                                                                             for r in later),
                 M.SYS_SETUP_S: med(M.SYS_SETUP_S), M.SYS_DATA_S: med(M.SYS_DATA_S),
                 M.SYS_MODEL_LOAD_S: med(M.SYS_MODEL_LOAD_S), M.SYS_EVAL_S: med(M.SYS_EVAL_S),
                 M.SYS_CHECKPOINT_S: med(M.SYS_CHECKPOINT_S),
                 "sys/mem_mb, first trial of a process": statistics.median(rows[0][M.SYS_MEM_MB]
                                                                          for rows in by_process.values()),
                 "sys/mem_mb, last trial of a process": statistics.median(rows[-1][M.SYS_MEM_MB]
                                                                         for rows in by_process.values())}
    return wall, makespan, breakdown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    ensure_builtin_model()
    ensure_builtin_task()
    plain_wall, plain = plain_tune(args.trials)
    ours_wall, ours, breakdown = raysweep_sweep(args.trials, args.steps)
    per = lambda seconds: round(seconds * SLOTS / args.trials, 3)  # noqa: E731
    print(json.dumps({
        "trials": args.trials,
        "wall launch->exit (s)": {"plain": round(plain_wall, 1), "raysweep": round(ours_wall, 1)},
        "slot-s per trial from the wall": {"plain": per(plain_wall), "raysweep": per(ours_wall),
                                           "ratio": round(ours_wall / plain_wall, 2)},
        "slot-s per trial from the trials' makespan": {"plain": per(plain), "raysweep": per(ours),
                                                       "ratio": round(ours / plain, 2)},
        "raysweep medians after the first trial of a process": {k: round(v, 3) for k, v in breakdown.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
