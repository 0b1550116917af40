"""The untuned base as a row of its own: its task metrics (the experiment's baseline file, written by the sweep's
driver and by `raysweep eval`), each trial's and configuration's difference to it, and which configurations
fall below it. Pure pandas over what raysweep.experiment reads; no torch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raysweep.experiment import layout as L
from raysweep.experiment import metrics as M

MODEL_AXIS = "cell/model.name_or_path"  # a sweep over several bases: each trial is compared with its own
BASELINE_LABEL = "baseline (untuned base)"


def task_metrics(frame: pd.DataFrame) -> list[str]:
    """The task and generation metric columns of a trials frame or summary table (`<m> mean` counted as m)."""
    names = [c.removesuffix(" mean") for c in frame.columns]
    return sorted({n for n in names if M.is_task_metric(n) and M.BASELINE_DELTA_SUFFIX not in n})


def load_baselines(experiment: str | Path) -> dict[str, dict[str, float]]:
    """{model name_or_path: {metric: value}} of the experiment's baseline file ({} if there is none)."""
    out: dict[str, dict[str, float]] = {}
    for record in L.read_baselines(Path(experiment).expanduser()):
        values = {k: float(v) for k, v in (record.get("metrics") or {}).items()
                  if M.is_task_metric(k) and isinstance(v, int | float) and not isinstance(v, bool)}
        out.setdefault(str(record.get("model")), {}).update(values)
    return out


def baseline_of(frame: pd.DataFrame, baselines: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per row of `frame`, the baseline's value of each task metric (NaN where there is none): a sweep over
    several models compares each trial with its own base; with one base, every row with it."""
    metrics = task_metrics(frame)
    if not baselines or not metrics:
        return pd.DataFrame(index=frame.index, columns=metrics, dtype=float)
    if MODEL_AXIS in frame:
        rows = [baselines.get(str(m), {}) for m in frame[MODEL_AXIS]]
    else:
        only = next(iter(baselines.values())) if len(baselines) == 1 else {}
        rows = [only] * len(frame)
    return pd.DataFrame([{m: row.get(m, float("nan")) for m in metrics} for row in rows], index=frame.index)


def with_deltas(frame: pd.DataFrame, baselines: dict[str, dict[str, float]], suffix: str = "") -> pd.DataFrame:
    """`frame` plus `<metric> Δbase<suffix>` = the metric − the baseline's, for every task metric with a baseline
    (suffix " mean": on a summary table's means)."""
    base = baseline_of(frame, baselines)
    out = frame.copy()
    for metric in base.columns:
        if base[metric].notna().any():
            column = f"{metric}{suffix}"
            out[f"{metric}{M.BASELINE_DELTA_SUFFIX}{suffix}"] = pd.to_numeric(out[column], errors="coerce") - base[metric]
    return out


def below_baseline(table: pd.DataFrame, baseline: dict[str, float], threshold: float = 0.0) -> pd.Series:
    """Per configuration of a summary table (`<metric> mean` columns), whether any task metric's mean is more
    than `threshold` below the baseline's (task metrics are higher-is-better: accuracies, exact match, F1).
    threshold 0: anything below the untuned base; 0.05: a regression of more than 5 points."""
    flags = pd.Series(False, index=table.index)
    for metric, value in baseline.items():
        column = f"{metric} mean"
        if column in table:
            flags |= pd.to_numeric(table[column], errors="coerce") < value - threshold
    return flags


def baseline_row(table: pd.DataFrame, baseline: dict[str, float]) -> pd.DataFrame:
    """The baseline as one row shaped like the summary table (axes say what it is; n 0: not a trial)."""
    row: dict[str, object] = {c: None for c in table.columns}
    axes = [c for c in table.columns if c.startswith("cell/") or c in ("adapter.type", "adapter.r")]
    if axes:
        row[axes[0]] = BASELINE_LABEL
    row |= {"n": 0, "fewer_seeds": False}
    row |= {f"{m} mean": v for m, v in baseline.items() if f"{m} mean" in table}
    return pd.DataFrame([row], columns=table.columns)
