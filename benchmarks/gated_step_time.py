"""Train-step time of the gated adapters against their ungated counterparts: sora vs lora, sdora vs dora.

    .venv/bin/python benchmarks/gated_step_time.py [--steps 60 160] [--repeats 3] [--rank 16]

Same model (builtin), batch (32), rank and thread count (1) for every adapter; per-step time =
(wall(N2 steps) − wall(N1 steps)) / (N2 − N1) of the raysweep loop (`run_training`), so set-up and
evaluation cancel out; the gated adapters' extra work per step (the gate parametrization in forward and
backward, a second parameter group, the proximal step over every gate) is what remains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from step_time import raysweep_loop  # noqa: E402 - sibling benchmark script


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, nargs=2, default=[60, 160])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    n1, n2 = args.steps
    per_step: dict[str, list[float]] = {}
    raysweep_loop(5, "lora", args.rank, 0)  # imports and caches
    for r in range(args.repeats):  # interleaved, so slow phases of a shared machine hit every adapter
        for adapter in ("lora", "sora", "dora", "sdora"):
            t = (raysweep_loop(n2, adapter, args.rank, r) - raysweep_loop(n1, adapter, args.rank, r)) / (n2 - n1)
            per_step.setdefault(adapter, []).append(t)
            print(f"{adapter} run {r}: {1000 * t:.2f} ms/step", flush=True)
    med = {a: statistics.median(v) for a, v in per_step.items()}
    # ratios within a repeat (measured back to back), so a slow phase of the shared machine cancels out
    ratios = {g: [x / y for x, y in zip(per_step[g], per_step[b], strict=True)]
              for g, b in (("sora", "lora"), ("sdora", "dora"))}
    print(f"\n| adapter (r={args.rank}, batch 32, 1 thread) | ms/step (median of {args.repeats}) | "
          "ratio to its ungated twin (median of per-repeat ratios; range) |\n|---|---|---|")
    for gated, plain in (("sora", "lora"), ("sdora", "dora")):
        r = ratios[gated]
        print(f"| {plain} | {1000 * med[plain]:.2f} | 1.00 |")
        print(f"| {gated} | {1000 * med[gated]:.2f} | **{statistics.median(r):.2f}** × {plain} "
              f"({min(r):.2f}–{max(r):.2f}) |")


if __name__ == "__main__":
    main()
