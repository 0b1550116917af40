"""The best SubLoRA bound *of a sweep*: choosing one trial among N costs ln N nats.

Each trial's bounds (bound/* metrics, bounds.json) hold with probability ≥ 1 − δ on their own. Reporting
the smallest of them as the sweep's bound picks a trial after seeing every trial's bound, so it needs a
union over the N candidates: every trial's bound is recomputed at confidence δ/N, i.e. with ln N more nats
in each of its failure events (the PAC term's ln(1/δ₁) and, for a sub-sampled bound, the sampling term's
ln(1/δ₂)), and the smallest of those holds with probability ≥ 1 − δ. N counts every trial of the sweep,
finished or not: each seed has its own prior (θ₀ is drawn from train.seed), so a seed is a configuration
too. The SubLoRA reference pays a fixed 7 bits (≈ 4.85 nats) in the PAC term for its hyperparameter
sweep whatever its size; here the price follows the sweep.

From a bound's parts (coding.Bound as bounds.json stores it), with Δ its loss range:
    complexity' = sqrt(complexity² + Δ²·ln N / (2m)),   sampling' = sqrt(sampling² + Δ²·ln N / (2n)),
    bound' = empirical + complexity' + sampling'
which is the bound's own formula with ln N added under each square root. Per-trial numbers are unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from raysweep.experiment.layout import BOUNDS_REPORT


@dataclass(frozen=True)
class SweepBound:
    level: str  # "document" | "sequence"
    what: str  # "bpd" or "top<k>_error"
    configurations: int  # N
    extra_nats: float  # ln N
    value: float  # the best bound of the sweep, every trial paying ln N
    trial_id: str  # the trial it comes from
    alpha: float | None  # its prediction-smoothing α (bpd)
    trial_bound: float  # that trial's own bound (without ln N)
    best_trial_bound: float  # the smallest per-trial bound (not a bound on the chosen trial)
    trials: int  # trials whose bounds.json was read (the candidates)


def read_bounds(checkpoint: object) -> dict | None:
    """bounds.json of a checkpoint directory, or None (no path, no file, unreadable)."""
    if not isinstance(checkpoint, str) or not checkpoint:
        return None
    path = Path(checkpoint) / BOUNDS_REPORT
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def with_extra_nats(bound: dict, nats: float) -> float:
    """A bound (a bounds.json bound dict) recomputed with `nats` more in each failure event's ln(1/δ)."""
    width, m, n = float(bound["loss_range"]), int(bound["m"]), bound.get("n")
    complexity = math.sqrt(float(bound["complexity"]) ** 2 + width**2 * nats / (2.0 * m))
    sampling = math.sqrt(float(bound["sampling"]) ** 2 + width**2 * nats / (2.0 * int(n))) if n else 0.0
    return float(bound["empirical"]) + complexity + sampling


def _candidates(report: dict, level: str, what: str) -> list[tuple[float | None, dict]]:
    """(α or None, bound dict) of one trial's report for one level and quantity."""
    entry = report.get("levels", {}).get(level)
    if not entry:
        return []
    if what == "bpd":
        return [(row["alpha"], row["bound"]) for row in entry["bpd"]["rows"]]
    k = what.removeprefix("top").removesuffix("_error")
    return [(None, entry["top_k"][k])] if k in entry.get("top_k", {}) else []


def best_of_sweep(frame: pd.DataFrame, finished: pd.Series, level: str = "document",
                  what: str = "bpd") -> SweepBound | None:
    """The sweep's best `what` bound at `level` with ln N paid (N = every trial in `frame`), over the finished
    trials whose final checkpoint has bounds.json; None when there is none."""
    n_configs = len(frame)
    nats = math.log(n_configs) if n_configs else 0.0
    best: SweepBound | None = None
    read = 0
    own_best = math.inf
    for _, trial in frame[finished.to_numpy()].iterrows():
        report = read_bounds(trial.get("checkpoint_path"))
        rows = _candidates(report, level, what) if report else []
        if not rows:
            continue
        read += 1
        own = min(float(b["value"]) for _, b in rows)
        own_best = min(own_best, own)
        alpha, bound = min(rows, key=lambda r: with_extra_nats(r[1], nats))
        value = with_extra_nats(bound, nats)
        if best is None or value < best.value:
            best = SweepBound(level, what, n_configs, nats, value, str(trial["trial_id"]), alpha,
                              float(bound["value"]), own_best, 0)
    if best is None:
        return None
    return SweepBound(best.level, best.what, best.configurations, best.extra_nats, best.value, best.trial_id,
                      best.alpha, best.trial_bound, own_best, read)


def describe(b: SweepBound) -> str:
    """One line: the best-of-sweep bound, its ln N term and where it comes from."""
    alpha = f", α = {b.alpha:g}" if b.alpha is not None else ""
    return (f"{b.level} {b.what} bound, best of N = {b.configurations} configurations: + ln N = "
            f"{b.extra_nats:.3f} nats → {b.value:.4f} (trial {b.trial_id}{alpha}; its own bound {b.trial_bound:.4f}; "
            f"{b.trials} trial(s) with {BOUNDS_REPORT})")


def lines(frame: pd.DataFrame, finished: pd.Series) -> list[str]:
    """The best-of-sweep lines `analyze` prints for a sweep with SubLoRA bounds (bits per token at both
    levels, top-1 error at document level); empty when no trial has bounds.json."""
    out = []
    for level, what in (("document", "bpd"), ("sequence", "bpd"), ("document", "top1_error")):
        b = best_of_sweep(frame, finished, level, what)
        if b is not None:
            out.append(describe(b))
    return out
