"""Figures for papers (PNG, readable at column width): the frontier, curves over steps with seed bands, and
the per-layer sparsity heatmap of a gated trial. Each function draws one figure from a DataFrame and saves it.
matplotlib is imported inside the functions (Agg backend), so loading `analysis` stays light."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.aggregate import config_axes
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import PARETO_FILE

SEED = "cell/train.seed"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "figure.dpi": 150, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(plt, fig, ax, xlabel: str, ylabel: str, path: Path, legend_size: int) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def varying(table: pd.DataFrame, axes: list[str]) -> list[str]:
    """The axes that take more than one value in `table` (all of them when none does): figure labels name only
    what tells configurations apart."""
    return [a for a in axes if table[a].nunique(dropna=False) > 1] or axes


def label(row: pd.Series, axes: list[str]) -> str:
    return ", ".join(f"{a.removeprefix('cell/').split('.')[-1]}={row[a]}" for a in axes if pd.notna(row[a]))


FRONT_KEYS = 12  # front points named in the key under the plot (the rest are numbered only)


def frontier(table: pd.DataFrame, x: str, y: str, on_front: pd.Series, path: Path) -> Path:
    """Configurations as points (mean ± std over seeds as error bars), the non-dominated ones joined and
    numbered; a key under the plot names each numbered configuration by the axes that vary in the sweep
    (long labels written next to the points squeezed the plot to a sliver)."""
    plt = _plt()
    axes = config_axes(table)
    axes = varying(table, axes)
    front = table[on_front.to_numpy()].sort_values(f"{x} mean")
    keys = [f"{i}: {label(row, axes)}" for i, (_, row) in enumerate(front.iterrows(), 1)]
    if len(keys) > FRONT_KEYS:
        keys = [*keys[:FRONT_KEYS], f"… {len(keys) - FRONT_KEYS} more ({PARETO_FILE})"]
    key_h = 0.13 * len(keys) + (0.1 if keys else 0)
    fig, ax = plt.subplots(figsize=(4.8, 3.4 + key_h))
    xm, ym = table[f"{x} mean"], table[f"{y} mean"]
    ax.errorbar(xm, ym, xerr=table.get(f"{x} std"), yerr=table.get(f"{y} std"), fmt="o", ms=4, color="0.55",
                ecolor="0.75", capsize=2, label="configuration")
    ax.plot(front[f"{x} mean"], front[f"{y} mean"], "-o", color="C3", ms=5, label="Pareto front")
    for i, (_, row) in enumerate(front.iterrows(), 1):
        ax.annotate(str(i), (row[f"{x} mean"], row[f"{y} mean"]), fontsize=7, color="C3", xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, key_h / fig.get_figheight(), 1, 1))
    if keys:
        fig.text(0.02, 0.06 / fig.get_figheight(), "\n".join(keys), fontsize=6, va="bottom", ha="left",
                 linespacing=1.3)
    fig.savefig(path)
    plt.close(fig)
    return path


def curves(history: pd.DataFrame, metric: str, path: Path) -> Path:
    """`metric` over steps per configuration: mean line with a ±std band over seeds."""
    plt = _plt()
    data = history.dropna(subset=[metric])
    if metric.startswith("eval/") and M.EVAL_STEP in data:
        # reports between evals repeat the last eval's numbers: plot each eval at the step it was measured
        data = data[data[M.EVAL_STEP] == data[M.TRAIN_STEP]]
    axes = [a for a in config_axes(data) if a != "status"]
    groups = list(data.groupby(axes, dropna=False) if axes else [((), data)])
    shown = varying(data, axes) if axes else axes
    below = len(groups) > 4  # many configurations: the legend goes under the plot, not over the curves
    fig, ax = plt.subplots(figsize=(4.8, 3.4 + (0.13 * len(groups) + 0.2 if below else 0)))
    for i, (key, group) in enumerate(groups):
        stats = group.groupby(M.TRAIN_STEP)[metric].agg(["mean", "std"]).reset_index()
        name = ", ".join(f"{a.removeprefix('cell/').split('.')[-1]}={v}" for a, v in
                         zip(axes, key if isinstance(key, tuple) else (key,), strict=True) if pd.notna(v) and a in shown)
        ax.plot(stats[M.TRAIN_STEP], stats["mean"], color=f"C{i % 10}", lw=1.2, label=name)
        ax.fill_between(stats[M.TRAIN_STEP], stats["mean"] - stats["std"].fillna(0),
                        stats["mean"] + stats["std"].fillna(0), color=f"C{i % 10}", alpha=0.2, lw=0)
    if not below:
        return _save(plt, fig, ax, "step", metric, path, legend_size=6)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2 if len(groups) > 12 else 1,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def sparsity_heatmap(log: pd.DataFrame, title: str, path: Path) -> Path:
    """Fraction of dead gates per adapted module (rows) over steps (columns), from a trial's sparsity.csv."""
    plt = _plt()
    modules = [c for c in log.columns if c not in ("step", "overall")]
    fig, ax = plt.subplots(figsize=(4.8, 0.25 * len(modules) + 1.2))
    image = ax.imshow(log[modules].to_numpy().T, aspect="auto", vmin=0, vmax=1, cmap="viridis",
                      extent=(log["step"].min(), log["step"].max(), len(modules) - 0.5, -0.5))
    ax.set_yticks(range(len(modules)), [m.removeprefix("model.") for m in modules], fontsize=6)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=8)
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="sparsity")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sparsity_quality(table: pd.DataFrame, path: Path, metric: str = M.EVAL_LOSS) -> Path:
    """`metric` (mean ± std over seeds) against target sparsity, one line per mask kind and importance."""
    plt = _plt()
    kinds = [c for c in ("cell/adapter.mask", "cell/adapter.importance") if c in table]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    groups = table.groupby(kinds, dropna=False) if kinds else [((), table)]
    for i, (key, group) in enumerate(groups):
        group = group.sort_values("mask/target_sparsity mean")
        name = ", ".join(str(v) for v in (key if isinstance(key, tuple) else (key,)) if pd.notna(v)) or "mask"
        ax.errorbar(group["mask/target_sparsity mean"], group[f"{metric} mean"], yerr=group.get(f"{metric} std"),
                    fmt="-o", ms=3, lw=1.2, capsize=2, color=f"C{i % 10}", label=name)
    return _save(plt, fig, ax, "sparsity (fraction of pruned weights)", metric, path, legend_size=6)
