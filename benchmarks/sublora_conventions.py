"""raysweep's SubLoRA conventions against the reference code's, on the builtin SubLoRA grid (builtin_tokens).

    .venv/bin/python benchmarks/sublora_conventions.py [--dims 1000] [--seeds 0] [--projector-seeds 0 1 2]
                                                       [--steps 300] [--workers 2]

Table 1 (the allocations of search_spaces/sublora_allocation.yaml at each d and seed): every trial trained
and bounded twice, with raysweep's conventions as they were before the reference's became options (kron
projector, a split logit per module, even δ split, restart windows, uniform bins, float32 codebook) and
with the reference's (rdkronqr projector, the fork's learned allocation, proportional δ split, sliding
windows of stride 6 = 100/1024 of max_seq_len 64, symmetric bins, float16 codebook); a third column
recomputes the first trial's bound with today's defaults (proportional split, sliding windows of
max_seq_len // 2) from its checkpoint. γ is A's share (mean over modules; the fork's own γ is 1 − it).

Table 2: does `rdkronqr` train differently from `kron`? Uniform allocation at the first d, several seeds
(Table 1's uniform trials are reused for its seeds, the other seeds run with bounds off): final eval loss and
training throughput (train/tokens_per_s).

Each trial runs in its own process with one torch thread, `--workers` at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "search_spaces" / "sublora_allocation.yaml"
ALLOCATIONS = [("uniform", None), ("fixed", 0.2), ("fixed", 0.5), ("fixed", 0.8), ("learned", None)]
TODAY = {"projector": "kron", "learned_convention": "raysweep", "mask_temperature": 10.0,
         "bound_quantizer": "uniform", "bound_codebook_bits": 32, "bound_delta_split": "even",
         "bound_doc_window": "restart"}
REFERENCE = {"projector": "rdkronqr", "learned_convention": "fork", "mask_temperature": 5.0,
             "bound_quantizer": "symmetric", "bound_codebook_bits": 16, "bound_delta_split": "proportional",
             "bound_doc_window": "sliding", "bound_window_stride": 6}
NEW_DEFAULTS = {"bound_delta_split": "proportional", "bound_doc_window": "sliding"}  # the bound options that changed


def run_one(spec: dict) -> dict:
    """Inside the child: one trial of the grid's base config with `spec`'s cell; its final metrics."""
    import torch

    from raysweep import config as G
    from raysweep.experiment import metrics as M
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    torch.set_num_threads(1)
    raw = G.read_yaml(GRID)
    raw.pop("grid")
    cell = {f"adapter.{k}": v for k, v in spec["adapter"].items()} | {
        "train.seed": spec["seed"], "train.max_steps": spec["steps"], "train.eval_every": spec["steps"]}
    with tempfile.TemporaryDirectory() as tmp:
        session = LocalSession(Path(tmp))
        t0 = time.perf_counter()
        run_training(G.trial_config(raw, cell), session)
        wall = time.perf_counter() - t0
        last = session.results[-1]
        out = {"wall_s": wall, "eval_loss": last[M.EVAL_LOSS], "gamma": last.get(M.ADAPTER_GAMMA_MEAN),
               "tokens_per_s": last[M.TRAIN_TOKENS_PER_S]}
        if spec["adapter"].get("bounds", True):
            out |= {"bound": last[M.BOUND_DOC_BPD], "bpd": last[M.BOUND_DOC_BPD_EMPIRICAL],
                    "bpd_unquantized": last[M.BOUND_DOC_BPD_UNQUANTIZED], "kl_bits": last[M.BOUND_COMPRESSED_BITS]}
        if spec.get("recompute"):
            from raysweep.offline.bounds import bounds_for_checkpoint

            again = bounds_for_checkpoint(session.checkpoints[-1], **spec["recompute"])
            out["recomputed_bound"] = again["metrics"][M.BOUND_DOC_BPD]
    return out


def _child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{spec}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _allocation(mode: str, ratio: float | None) -> dict:
    return {"allocation_mode": mode} | ({"allocation_ratio": ratio} if ratio is not None else {})


def _label(mode: str, ratio: float | None) -> str:
    return f"fixed B {ratio}" if mode == "fixed" else mode


def _ms(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dims", type=int, nargs="+", default=[1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--projector-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    specs = []
    for d in args.dims:
        for seed in args.seeds:
            for mode, ratio in ALLOCATIONS:
                base = {"intrinsic_dim": d} | _allocation(mode, ratio)
                specs.append({"table": 1, "key": (d, seed, mode, ratio, "today"), "seed": seed, "steps": args.steps,
                              "adapter": base | TODAY, "recompute": NEW_DEFAULTS})
                specs.append({"table": 1, "key": (d, seed, mode, ratio, "reference"), "seed": seed,
                              "steps": args.steps, "adapter": base | REFERENCE})
    for seed in args.projector_seeds:
        if seed in args.seeds:  # Table 1's uniform trials: kron (today) and rdkronqr (reference), same training else
            continue
        for projector in ("kron", "rdkronqr"):
            specs.append({"table": 2, "key": (projector, seed), "seed": seed, "steps": args.steps,
                          "adapter": {"intrinsic_dim": args.dims[0], "allocation_mode": "uniform",
                                      "projector": projector, "bounds": False}})
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(_child, specs))
    for spec, r in zip(specs, results, strict=True):
        print(json.dumps({"key": spec["key"], **r}), flush=True)
    got = {tuple(s["key"]): r for s, r in zip(specs, results, strict=True)}
    for seed in set(args.projector_seeds) & set(args.seeds):
        got[("kron", seed)] = got[(args.dims[0], seed, "uniform", None, "today")]
        got[("rdkronqr", seed)] = got[(args.dims[0], seed, "uniform", None, "reference")]

    print(f"\n{len(specs)} trials in {time.perf_counter() - t0:.0f} s ({args.workers} at a time, 1 thread each), "
          f"{args.steps} steps, builtin_tokens, r = 8, δ = 0.05, bound_sample 2000\n")
    print("| d | seed | allocation | today: doc bpd bound | bpd (unquantized) | γ (A) | KL bits | "
          "today's training, new defaults: bound | reference: doc bpd bound | bpd (unquantized) | γ (A) | KL bits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        for seed in args.seeds:
            for mode, ratio in ALLOCATIONS:
                a, b = got[(d, seed, mode, ratio, "today")], got[(d, seed, mode, ratio, "reference")]
                gam = [f"{x['gamma']:.3f}" if x.get("gamma") is not None else "–" for x in (a, b)]
                print(f"| {d} | {seed} | {_label(mode, ratio)} | {a['bound']:.3f} | {a['bpd']:.3f} "
                      f"({a['bpd_unquantized']:.3f}) | {gam[0]} | {a['kl_bits']} | {a['recomputed_bound']:.3f} | "
                      f"{b['bound']:.3f} | {b['bpd']:.3f} ({b['bpd_unquantized']:.3f}) | {gam[1]} | {b['kl_bits']} |")
    print(f"\n| projector (uniform, d = {args.dims[0]}) | seeds | eval loss | per seed | train tokens/s |")
    print("|---|---|---|---|---|")
    for projector in ("kron", "rdkronqr"):
        rs = [got[(projector, s)] for s in args.projector_seeds]
        losses = [r["eval_loss"] for r in rs]
        print(f"| {projector} | {len(rs)} | {_ms(losses, 4)} | {', '.join(f'{x:.4f}' for x in losses)} | "
              f"{_ms([r['tokens_per_s'] for r in rs], 0)} |")


if __name__ == "__main__":
    main()
