"""Pareto fronts over any number of objectives, each minimised or maximised. Pure numpy/pandas.

Written by hand (a few lines) rather than taken from optuna, whose front helpers work on its Trial objects,
not on a table of results with NaNs and mixed directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DIRECTIONS = ("min", "max")


@dataclass(frozen=True)
class Front:
    """`on_front`: a boolean per row of the input (False for excluded rows); `excluded`: the index of rows
    left out because an objective was missing, NaN or ±inf (reported, never silently dropped)."""

    on_front: pd.Series
    excluded: pd.Index


def parse_objectives(specs: list[str]) -> dict[str, str]:
    """`["adapter/effective_params:min", M.EVAL_LOSS]` -> {name: direction} (direction defaults to min)."""
    out = {}
    for spec in specs:
        name, _, direction = spec.rpartition(":") if spec.endswith((":min", ":max")) else (spec, "", "min")
        out[name] = direction
    return out


def pareto_front(frame: pd.DataFrame, objectives: dict[str, str]) -> Front:
    """Rows not dominated by any other row. Row a dominates b when a is at least as good in every
    objective and strictly better in one; rows equal in every objective do not dominate each other, so
    ties are all on the front."""
    if not objectives:
        raise ValueError("give at least one objective")
    for name, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"objective {name!r}: direction must be 'min' or 'max', got {direction!r}")
        if name not in frame:
            raise KeyError(f"objective {name!r} is not a column; columns: {', '.join(map(str, frame.columns))}")
    values = frame[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(values).all(axis=1)
    # turn every objective into "smaller is better"
    signs = np.array([1.0 if d == "min" else -1.0 for d in objectives.values()])
    v = values[finite] * signs
    # a[i] dominates b[j]: all(v[i] <= v[j]) and any(v[i] < v[j])
    le = (v[:, None, :] <= v[None, :, :]).all(axis=2)
    lt = (v[:, None, :] < v[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    on_front = np.zeros(len(frame), dtype=bool)
    on_front[np.flatnonzero(finite)[~dominated]] = True
    return Front(pd.Series(on_front, index=frame.index), frame.index[~finite])
