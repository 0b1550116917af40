"""Ray's part of a trial's life (raysweep/offline/estimate/constants.py), and an estimate against a real run.

    .venv/bin/python benchmarks/estimate_constants.py GRID [overrides] --storage DIR [--no-dashboard ...]

Runs `python -m raysweep run GRID [overrides] ...` once (timed, launch → exit) and reads Ray's part of it back
from the experiment's trials.csv and result.json files; prints the numbers as JSON, with the estimate from
the cached calibrations (`raysweep plan GRID --calibrate` first) and `torch_import_s` of a fresh process
(what ACTOR_START_S excludes). How the constants were measured, and how an estimate is checked against the
actual wall time: benchmarks/RESULTS.md (g).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics as st
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _run_args(args: list[str]) -> argparse.Namespace:
    """GRID and overrides of `raysweep run ARGS` (the other options are passed through as they are)."""
    parser = argparse.ArgumentParser(prog="estimate_constants.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("grid")
    parser.add_argument("overrides", nargs="*")
    for option in ("--address", "--storage", "--name"):  # options of `raysweep run` that take a value
        parser.add_argument(option, default=None)
    parsed, _flags = parser.parse_known_args(args)  # --no-dashboard, --verbose, --tensorboard
    return parsed


def measure_run(args: list[str]) -> dict[str, Any]:
    """Run `python -m raysweep run ARGS` (timed, launch → exit) and read Ray's part of it back from the
    experiment's trials.csv and result.json files, next to the estimate of the cached calibrations."""
    from raysweep import config as G
    from raysweep.offline.estimate import for_sweep

    parsed = _run_args(args)
    _, sweep, trials = G.load(parsed.grid, parsed.overrides)
    est, source = for_sweep(sweep, trials)  # from the cached calibrations, before the run
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", *args], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="200"))
    t1 = time.time()
    out = proc.stdout + proc.stderr
    found = re.search(r"^experiment: (.+)$", out, re.M)
    header = re.search(r"^estimated: .*$", out, re.M)
    result: dict[str, Any] = {"wall_s": t1 - t0, "exit_code": proc.returncode, "estimate_source": source,
                              "estimate_line": header.group(0) if header else None}
    if est is not None:
        result |= {"estimated_wall_s": est.wall_s, "estimated_makespan_s": est.makespan_s,
                   "actual_over_estimate": (t1 - t0) / est.wall_s}
    if not found:
        result["output"] = out[-2000:]
        return result
    rows = list(csv.DictReader((Path(found.group(1).strip()) / "trials.csv").open()))
    first_pid, starts, readies, reuses, ends = set(), [], [], [], []
    for row in sorted(rows, key=lambda r: float(r["launched_at"])):
        reports = [json.loads(line) for line in (Path(row["trial_path"]) / "result.json").open()]
        launched = float(row["launched_at"])
        begin = reports[0]["sys/started_at"] - launched
        if reports[0]["sys/pid"] in first_pid:
            reuses.append(begin)
        else:
            starts.append(begin)
            readies.append(begin + reports[0]["sys/setup_s"])
        first_pid.add(reports[0]["sys/pid"])
        ends.append(float(row["ended_at"]) - reports[-1]["sys/time"])
    result |= {
        "trials": len(rows),
        "run_start_s": min(float(r["launched_at"]) for r in rows) - t0,
        "run_stop_s": t1 - max(float(r["ended_at"]) for r in rows),
        "trials_span_s": max(float(r["ended_at"]) for r in rows) - min(float(r["launched_at"]) for r in rows),
        "actor_first_start_s": st.median(starts) if starts else None,  # launch → run_training, new actor
        "actor_first_ready_s": st.median(readies) if readies else None,  # ... → training loop ready
        "actor_reuse_start_s": st.median(reuses) if reuses else None,
        "trial_end_s": st.median(ends),  # last report → Tune saw the end
    }
    return result


def main(argv: list[str]) -> None:
    from raysweep.offline.estimate.calibration import import_costs

    measured = measure_run(argv)
    measured["torch_import_s"], _ = import_costs("lora")
    print(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
