"""Packed trials end to end through the CLI (issue "Packed trials", case a): `raysweep run` of the quickstart grid
with resources.pack 1 (today's actor executor), 4 and 8, in one invocation, alternating the modes per round.

    .venv/bin/python benchmarks/packing_cli.py [--rounds 2] [key=value overrides of the quickstart grid ...]

Per mode: wall time launch -> exit of `raysweep run` (Ray start and stop included), the trials' makespan (first
trial start -> last report, from their results), trials/hour by each, the ratio to pack 1, and the largest
relative difference of any trial's final eval loss from pack 1's (float32). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(pack: int, storage: Path, overrides: list[str]) -> dict:
    name = f"pack{pack}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", "search_spaces/quickstart.yaml",
                           f"resources.pack={pack}", *overrides, "--storage", str(storage), "--name", name],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    finals, starts, ends = {}, [], []
    for result in (storage / name).glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        cell = json.loads((result.parent / "params.json").read_text())["cell"]
        finals[json.dumps(cell, sort_keys=True)] = rows[-1]["eval/loss"]
        starts.append(rows[0]["sys/started_at"])
        ends.append(rows[-1]["sys/time"])
    return {"wall": wall, "makespan": max(ends) - min(starts), "finals": finals}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--packs", default="1,4,8")
    args, overrides = parser.parse_known_args()
    packs = [int(p) for p in args.packs.split(",")]
    out: dict[int, list[dict]] = {p: [] for p in packs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for pack in packs:
                res = run(pack, Path(tmp) / f"round{r}", overrides)
                out[pack].append(res)
                print(f"round {r} pack {pack}: wall {res['wall']:.1f} s, makespan {res['makespan']:.1f} s", flush=True)
    base = {k: statistics.median(x[k] for x in out[packs[0]]) for k in ("wall", "makespan")}
    reference = out[packs[0]][0]["finals"]
    n = len(reference)
    print(f"\n{n} trials; medians over {args.rounds} round(s)")
    print("| pack | wall s | trials/h (wall) | × pack 1 | makespan s | trials/h (makespan) | × pack 1 | max rel. diff of final eval loss |")
    print("|---|---|---|---|---|---|---|---|")
    for pack in packs:
        wall = statistics.median(x["wall"] for x in out[pack])
        span = statistics.median(x["makespan"] for x in out[pack])
        diff = max(abs(x["finals"][k] - v) / abs(v) for x in out[pack] for k, v in reference.items())
        print(f"| {pack} | {wall:.1f} | {n * 3600 / wall:.0f} | {base['wall'] / wall:.2f} | {span:.1f} | "
              f"{n * 3600 / span:.0f} | {base['makespan'] / span:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
