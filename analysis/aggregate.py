"""Mean, std and count over seeds for every configuration of a sweep."""

from __future__ import annotations

import pandas as pd

SEED_AXIS = "train.seed"


def config_axes(frame: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration: swept axes (`cell/…`) and the resolved adapter and
    rank, never the seed."""
    axes = [c for c in frame.columns if c.startswith("cell/") and c != f"cell/{SEED_AXIS}"]
    axes += [c for c in ("adapter.type", "adapter.r") if c in frame and f"cell/{c}" not in frame]
    return axes


def over_seeds(frame: pd.DataFrame, metrics: list[str], axes: list[str] | None = None) -> pd.DataFrame:
    """One row per configuration: the axes, `n` (finished seeds with a value), `<metric> mean`,
    `<metric> std` (sample std; NaN for one seed), and `fewer_seeds` (True when this configuration has
    fewer seeds than the best-covered one, e.g. a failed or unfinished seed)."""
    axes = config_axes(frame) if axes is None else axes
    present = [m for m in metrics if m in frame]
    numeric = frame[present].apply(pd.to_numeric, errors="coerce")
    data = pd.concat([frame[axes], numeric], axis=1)
    groups = data.groupby(axes, dropna=False, sort=True) if axes else data.groupby(lambda _: 0)
    out = groups[present].agg(["mean", "std"])
    out.columns = [f"{m} {stat}" for m, stat in out.columns]
    out.insert(0, "n", groups[present[0]].count() if present else groups.size())
    out = out.reset_index() if axes else out.reset_index(drop=True)
    out["fewer_seeds"] = out["n"] < out["n"].max()
    return out
