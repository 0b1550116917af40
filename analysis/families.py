"""Per-family views: which objectives a family's Pareto front uses by default, and its own figures.

A sweep's family is the set of adapter types in it: all `masked` → the pruning views, all `sublora` →
the compression views, anything else → the generic adapter views (effective params vs eval loss).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ADAPTERS = {"adapter/effective_params": "min", "eval/loss": "min"}
MASKS = {"mask/achieved_sparsity": "max", "eval/loss": "min"}
SUBLORA = {"bound/kl_bits": "min", "bound/bpd_empirical": "min"}

OBJECTIVES = {"adapters": ADAPTERS, "masks": MASKS, "sublora": SUBLORA}
METRICS = {
    "adapters": [],
    "masks": ["mask/target_sparsity", "mask/achieved_sparsity", "mask/violations", "mask/merged_zero_fraction"],
    "sublora": ["bound/kl_bits", "bound/compressed_bits", "bound/bpd_empirical", "bound/bpd", "bound/top1_error",
                "bound/top1_error_empirical"],
}


def family_of(frame: pd.DataFrame) -> str:
    types = set(frame["adapter.type"].dropna().astype(str)) if "adapter.type" in frame else set()
    if types == {"masked"}:
        return "masks"
    if types == {"sublora"}:
        return "sublora"
    return "adapters"


def default_objectives(frame: pd.DataFrame) -> dict[str, str]:
    """The family's default objectives, when every one of them was reported; else the generic pair."""
    objectives = OBJECTIVES[family_of(frame)]
    if all(m in frame and frame[m].notna().any() for m in objectives):
        return objectives
    return ADAPTERS


def figures(frame: pd.DataFrame, table: pd.DataFrame, out: Path) -> list[Path]:
    family = family_of(frame)
    if family == "masks" and "mask/target_sparsity mean" in table:
        from analysis.plots import sparsity_quality

        return [sparsity_quality(table, out / "sparsity_vs_quality.png")]
    return []
