"""Per-family views: which objectives a family's Pareto front uses by default, and its own figures.

A sweep's family is the set of adapter types in it: all `masked` → the pruning views, all `sublora` →
the compression views, anything else → the generic adapter views (effective params vs eval loss).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raysweep.experiment import metrics as M

ADAPTERS = {M.ADAPTER_EFFECTIVE_PARAMS: "min", M.EVAL_LOSS: "min"}
MASKS = {M.MASK_ACHIEVED_SPARSITY: "max", M.EVAL_LOSS: "min"}
# SubLoRA: complexity (KL of the compressed α, nats) against the quantized model's empirical bits per token;
# the second view, compressed size against the bound, is a figure of its own (SUBLORA_BOUND_VIEW)
SUBLORA = {M.BOUND_KL_NATS: "min", M.BOUND_DOC_BPD_EMPIRICAL: "min"}
SUBLORA_BOUND_VIEW = {M.BOUND_COMPRESSED_BITS: "min", M.BOUND_DOC_BPD: "min"}

OBJECTIVES = {"adapters": ADAPTERS, "masks": MASKS, "sublora": SUBLORA}
METRICS = {
    "adapters": [],
    "masks": [M.MASK_TARGET_SPARSITY, M.MASK_ACHIEVED_SPARSITY, M.MASK_VIOLATIONS, M.MASK_MERGED_ZERO_FRACTION],
    "sublora": [M.ADAPTER_GAMMA_MEAN, M.BOUND_KL_NATS, M.BOUND_COMPRESSED_BITS, M.BOUND_DOC_BPD_EMPIRICAL,
                M.BOUND_DOC_BPD, M.bound_topk_key("document", 1, empirical=True), M.bound_topk_key("document", 1)],
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
    """The family's own figures (paths of the PNGs written into `out`)."""
    family = family_of(frame)
    if family == "masks" and "mask/target_sparsity mean" in table:
        from analysis.plots import sparsity_quality

        return [sparsity_quality(table, out / "sparsity_vs_quality.png")]
    if family == "sublora":
        return sublora_figures(frame, table, out)[0]
    return []


def sublora_figures(frame: pd.DataFrame, table: pd.DataFrame, out: Path) -> tuple[list[Path], list[str]]:
    """The compressed-size-vs-bound front (frontier_compressed_vs_bound.png) and the SubLoRA figures of
    sublora_plots (γ heatmap and trend over depth, compression views, allocation grid); returns (paths, notes)."""
    from analysis.pareto import pareto_front
    from analysis.plots import frontier
    from analysis.sublora_plots import write_figures

    paths, notes = [], []
    means = table.rename(columns={f"{m} mean": m for m in SUBLORA_BOUND_VIEW})
    if len(table) and all(m in means and means[m].notna().any() for m in SUBLORA_BOUND_VIEW):
        (x, _), (y, _) = SUBLORA_BOUND_VIEW.items()
        front = pareto_front(means, SUBLORA_BOUND_VIEW)
        paths.append(frontier(table, x, y, front.on_front, out / "frontier_compressed_vs_bound.png"))
    else:
        notes.append("frontier_compressed_vs_bound.png: not drawn, " + " and ".join(SUBLORA_BOUND_VIEW) + " not reported")
    more, more_notes = write_figures(frame, table, out)
    return paths + more, notes + more_notes
