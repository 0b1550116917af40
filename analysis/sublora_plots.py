# over 400 lines: one figure per function, all of one family's views, sharing their data helpers
"""SubLoRA figures (PNG, paper column width): the learned split γ per module (heatmap and trend over depth),
compression vs quality (KL or compressed size against empirical BPD, the BPD bound and eval loss), and the
allocation comparison (doc BPD bound and empirical BPD per allocation and intrinsic dimension d).

Configuration-level figures draw from the per-configuration table of `aggregate.over_seeds` (`<metric> mean`
/ `<metric> std`); the γ figures read each finished learned trial's final checkpoint (`checkpoint_path`):
the last row of allocation.csv, else the `gamma` of bounds.json. Data preparation is split from drawing
(`final_gammas`, `gamma_by_depth`, `allocation_table`) so it can be tested on numbers. Everything skips what
is missing (files, metrics, errored trials; one seed gives no error bar) and says so on the figure.
Reads JSON and CSV only; matplotlib is imported lazily (Agg) through plots._plt.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from analysis.load import ran_to_end
from analysis.plots import _plt
from analysis.sweep_bounds import read_bounds
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import ALLOCATION_LOG, BOUNDS_REPORT

DIM = "cell/adapter.intrinsic_dim"
MODE = "cell/adapter.allocation_mode"
RATIO = "cell/adapter.allocation_ratio"
SEEDS = ("cell/train.seed", "train.seed")
KL = M.BOUND_KL_NATS
BITS = M.BOUND_COMPRESSED_BITS
BPD = M.BOUND_DOC_BPD
BPD_EMPIRICAL = M.BOUND_DOC_BPD_EMPIRICAL
LOSS = M.EVAL_LOSS
KINDS = ("q", "k", "v", "o", "gate", "up", "down")
MARKERS = "osD^v<>p"
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


# ---------------------------------------------------------------- data preparation (no matplotlib)

def _seed(trial: pd.Series) -> object:
    for column in SEEDS:
        if column in trial and pd.notna(trial[column]):
            return trial[column]
    return math.nan


def _trial_dim(trial: pd.Series, bounds: dict | None) -> float:
    for column in (DIM, M.ADAPTER_EFFECTIVE_PARAMS):
        if column in trial and pd.notna(trial[column]):
            return float(trial[column])
    return float((bounds or {}).get("hypothesis", {}).get("intrinsic_dim", math.nan))


def _finished(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    if "status" not in frame:
        return frame, []
    done = ran_to_end(frame)  # scheduler-stopped trials did not run their budget
    skipped = [f"{t}: {s} (not finished)" for t, s in zip(frame.loc[~done, "trial_id"], frame.loc[~done, "status"],
                                                           strict=True)]
    return frame[done], skipped


def final_gammas(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished learned-allocation trial: trial_id, intrinsic_dim, seed, then the final γ of each
    adapted module (model order, as the trial logged them). Source: the last row of the checkpoint's
    allocation.csv, else bounds.json's `gamma`. Also returns why trials were skipped."""
    trials, skipped = _finished(frame[frame[MODE].astype(str) == "learned"] if MODE in frame else frame)
    rows, modules = [], []
    for _, trial in trials.iterrows():
        checkpoint = trial.get("checkpoint_path")
        bounds = read_bounds(checkpoint)
        mode = (bounds or {}).get("hypothesis", {}).get("allocation_mode")
        if MODE not in trials and mode not in (None, "learned"):
            continue  # not a learned trial (the mode is not a swept axis here)
        gamma: dict[str, float] = {}
        log = Path(checkpoint) / ALLOCATION_LOG if isinstance(checkpoint, str) and checkpoint else None
        if log is not None and log.is_file():
            try:
                last = pd.read_csv(log).iloc[-1]
                gamma = {k: float(v) for k, v in last.items() if k not in ("step", "overall")}
            except (OSError, ValueError, IndexError):
                gamma = {}
        if not gamma and bounds and isinstance(bounds.get("gamma"), dict):
            gamma = {k: float(v) for k, v in bounds["gamma"].items()}
        if not gamma:
            if MODE in trials or mode == "learned":
                skipped.append(f"{trial['trial_id']}: no {ALLOCATION_LOG} or γ in {BOUNDS_REPORT}")
            continue
        modules += [m for m in gamma if m not in modules]
        rows.append({"trial_id": trial["trial_id"], "intrinsic_dim": _trial_dim(trial, bounds), "seed": _seed(trial),
                     **gamma})
    table = pd.DataFrame(rows, columns=["trial_id", "intrinsic_dim", "seed", *modules])
    return table.sort_values(["intrinsic_dim", "seed", "trial_id"], kind="stable").reset_index(drop=True), skipped


def module_block(name: str) -> int | None:
    """Transformer block index of a module name (`model.layers.3.mlp.up_proj` -> 3), or None."""
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def module_kind(name: str) -> str:
    """`model.layers.3.mlp.up_proj` -> 'up'; `...self_attn.q_proj` -> 'q'."""
    return name.rsplit(".", 1)[-1].removesuffix("_proj")


def gamma_by_depth(gammas: pd.DataFrame) -> pd.DataFrame:
    """Long table (intrinsic_dim, kind, block, mean, std, n): γ per module kind and block, mean ± std over
    the trials (seeds) of each d. Modules without a block index are left out."""
    modules = [c for c in gammas.columns if c not in ("trial_id", "intrinsic_dim", "seed")]
    long = gammas.melt(id_vars=["intrinsic_dim"], value_vars=modules, var_name="module", value_name="gamma")
    long["block"] = long["module"].map(module_block)
    long["kind"] = long["module"].map(module_kind)
    long = long.dropna(subset=["block", "gamma"])
    if long.empty:
        return pd.DataFrame(columns=["intrinsic_dim", "kind", "block", "mean", "std", "n"])
    long["block"] = long["block"].astype(int)
    out = long.groupby(["intrinsic_dim", "kind", "block"])["gamma"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"})


def allocation_label(mode: object, ratio: object) -> str:
    """'uniform', 'fixed 0.2', 'learned' (a fixed split without a swept ratio: 'fixed')."""
    if not isinstance(mode, str):
        return "sublora"
    if mode == "fixed":
        return f"fixed {float(ratio):g}" if pd.notna(ratio) else "fixed"
    return mode


def _order(label: str) -> tuple[int, str]:
    head = label.split(" ")[0]
    return ({"uniform": 0, "fixed": 1, "learned": 2}.get(head, 3), label)


def allocation_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-configuration table with `d` (intrinsic dimension: the swept axis, else the seed mean of
    adapter/effective_params) and `allocation` (label, see allocation_label; other swept axes appended),
    sorted by d and allocation (uniform, fixed by ratio, learned)."""
    out = table.copy()
    if DIM in out:
        out["d"] = pd.to_numeric(out[DIM], errors="coerce")
    elif "adapter/effective_params mean" in out:
        out["d"] = out["adapter/effective_params mean"]
    else:
        out["d"] = math.nan
    modes = out[MODE] if MODE in out else pd.Series([None] * len(out), index=out.index)
    ratios = out[RATIO] if RATIO in out else pd.Series([math.nan] * len(out), index=out.index)
    labels = [allocation_label(m, r) for m, r in zip(modes, ratios, strict=True)]
    others = [c for c in out.columns if c.startswith("cell/") and c not in (DIM, MODE, RATIO)]
    for i, (_, row) in enumerate(out.iterrows()):
        extra = ", ".join(f"{c.split('.')[-1]}={row[c]}" for c in others if pd.notna(row[c]))
        if extra:
            labels[i] = extra if labels[i] == "sublora" else f"{labels[i]}, {extra}"
    out["allocation"] = labels
    keys = [_order(a) for a in labels]
    out["_key"] = keys
    out = out.sort_values(["d", "_key"], kind="stable").drop(columns="_key").reset_index(drop=True)
    return out


def vocab_sizes(frame: pd.DataFrame) -> set[int]:
    """Vocabulary sizes in the finished trials' bounds.json (`hypothesis.vocab_size`)."""
    sizes = set()
    for checkpoint in _finished(frame)[0].get("checkpoint_path", pd.Series(dtype=object)):
        bounds = read_bounds(checkpoint)
        size = (bounds or {}).get("hypothesis", {}).get("vocab_size")
        if size:
            sizes.add(int(size))
    return sizes


# ---------------------------------------------------------------- drawing

def _note(fig, skipped: list[str]) -> None:
    if skipped:
        text = f"skipped {len(skipped)}: " + "; ".join(skipped[:3]) + (" …" if len(skipped) > 3 else "")
        fig.text(0.01, 0.005, text, fontsize=5, color="0.4", ha="left", va="bottom")


def _finish(plt, fig, path: Path, skipped: list[str] | None = None, bottom: float = 0.0) -> Path:
    fig.tight_layout(rect=(0, bottom if skipped else 0, 1, 1))
    _note(fig, skipped or [])
    fig.savefig(path)
    plt.close(fig)
    return path


def _short(module: str) -> str:
    block = module_block(module)
    return f"{block}.{module_kind(module)}" if block is not None else module.removeprefix("model.")


def gamma_heatmap(gammas: pd.DataFrame, path: Path, skipped: list[str] | None = None) -> Path:
    """Final γ (share of α given to A) per adapted module (columns, model order) and trial (rows, labelled by
    seed), one panel per intrinsic dimension d; diverging colours centred on γ = ½ (an even split)."""
    import numpy as np

    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    modules = [c for c in gammas.columns if c not in ("trial_id", "intrinsic_dim", "seed")]
    dims = list(dict.fromkeys(gammas["intrinsic_dim"]))
    values = gammas[modules].to_numpy(dtype=float)
    spread = max(float(np.nanmax(np.abs(values - 0.5))) if np.isfinite(values).any() else 0.0, 0.02)
    norm = TwoSlopeNorm(vcenter=0.5, vmin=0.5 - spread, vmax=0.5 + spread)
    heights = [max(len(gammas[gammas["intrinsic_dim"] == d]), 1) for d in dims]
    annotate = len(modules) <= 28 and max(heights) <= 6
    fig, axes = plt.subplots(len(dims), 1, figsize=(4.8, 0.3 * sum(heights) + 0.55 * len(dims) + 0.9),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, d in zip(axes[:, 0], dims, strict=True):
        rows = gammas[gammas["intrinsic_dim"] == d]
        image = ax.imshow(rows[modules].to_numpy(dtype=float), aspect="auto", cmap="RdBu_r", norm=norm,
                          interpolation="nearest")
        ax.set_yticks(range(len(rows)), [f"seed {s}" if pd.notna(s) else str(t)
                                         for s, t in zip(rows["seed"], rows["trial_id"], strict=True)], fontsize=6)
        blocks = [module_block(m) for m in modules]
        if len(modules) <= 28:
            ax.set_xticks(range(len(modules)), [_short(m) for m in modules], fontsize=5.5, rotation=90)
        else:  # many modules: one tick per transformer block
            firsts = [i for i, b in enumerate(blocks) if b is not None and (i == 0 or blocks[i - 1] != b)]
            step = max(1, len(firsts) // 16)
            ax.set_xticks(firsts[::step], [str(blocks[i]) for i in firsts[::step]], fontsize=6)
        for i in range(1, len(modules)):  # thin separators between transformer blocks
            if blocks[i] is not None and blocks[i] != blocks[i - 1]:
                ax.axvline(i - 0.5, color="k", lw=0.6)
        if annotate:
            for (r, c), v in np.ndenumerate(rows[modules].to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=4.5,
                            color="white" if abs(v - 0.5) > 0.6 * spread else "black")
        ax.set_title(f"d = {d:g}" if pd.notna(d) else "d unknown", fontsize=8)
        ax.grid(False)
    axes[-1, 0].set_xlabel("adapted module (block.kind)" if len(modules) <= 28 else "transformer block")
    # tight_layout does not handle a colorbar shared by several axes: lay out by hand
    top, bottom = 1 - 0.32 / fig.get_figheight(), 0.75 / fig.get_figheight()
    fig.subplots_adjust(left=0.14, right=0.8, top=top, bottom=bottom, hspace=0.9 if len(modules) <= 28 else 0.5)
    bar = fig.colorbar(image, cax=fig.add_axes((0.83, bottom, 0.025, top - bottom)))
    bar.set_label("final γ (share of d to A)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    _note(fig, skipped or [])
    fig.savefig(path)
    plt.close(fig)
    return path


def gamma_depth(depth: pd.DataFrame, path: Path, skipped: list[str] | None = None) -> Path:
    """γ per transformer block (mean ± std over seeds), one line per module kind, one panel per d."""
    plt = _plt()
    dims = sorted(depth["intrinsic_dim"].unique())
    fig, axes = plt.subplots(1, len(dims), figsize=(4.8 if len(dims) < 3 else 2.4 * len(dims), 3.0),
                             sharey=True, squeeze=False)
    kinds = sorted(depth["kind"].unique(), key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))
    for ax, d in zip(axes[0], dims, strict=True):
        for i, kind in enumerate(kinds):
            line = depth[(depth["intrinsic_dim"] == d) & (depth["kind"] == kind)].sort_values("block")
            ax.errorbar(line["block"] + (i - (len(kinds) - 1) / 2) * 0.02, line["mean"], yerr=line["std"],
                        fmt="-" + MARKERS[i % len(MARKERS)], ms=3, lw=1.1, capsize=2, color=f"C{i % 10}", label=kind)
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
        blocks = sorted(depth["block"].unique())
        ax.set_xticks(blocks if len(blocks) <= 12 else blocks[:: max(1, len(blocks) // 8)])
        ax.set_title(f"d = {d:g}", fontsize=8)
        ax.set_xlabel("transformer block")
    axes[0, 0].set_ylabel("final γ (mean ± std over seeds)")
    axes[0, -1].legend(fontsize=6, title="module", title_fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(plt, fig, path, skipped, bottom=0.04)


def _kb(table: pd.DataFrame, stat: str) -> pd.Series:
    return table[f"{BITS} {stat}"] / 8000 if f"{BITS} {stat}" in table else pd.Series(math.nan, index=table.index)


def _xy(table: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series]:
    if metric == "compressed_kb":
        return _kb(table, "mean"), _kb(table, "std")
    return table[f"{metric} mean"], table.get(f"{metric} std", pd.Series(math.nan, index=table.index))


NAMES = {KL: "KL (nats)", "compressed_kb": "compressed size (kB)", BPD_EMPIRICAL: "empirical BPD (quantized model)",
         BPD: "doc BPD bound", LOSS: "eval loss"}


def _scatter(ax, data: pd.DataFrame, x: str, y: str, hollow: pd.Series | None = None) -> list:
    """Configurations as points with seed error bars: colour = allocation, marker = d. Returns legend handles."""
    from matplotlib.lines import Line2D

    labels = sorted(data["allocation"].unique(), key=_order)
    dims = sorted(data["d"].dropna().unique())
    colours = {a: f"C{i % 10}" for i, a in enumerate(labels)}
    markers = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(dims)}
    xm, xs = _xy(data, x)
    ym, ys = _xy(data, y)
    for i in data.index:
        colour, marker = colours[data.at[i, "allocation"]], markers.get(data.at[i, "d"], "o")
        face = "white" if hollow is not None and bool(hollow.get(i, False)) else colour
        ax.errorbar(xm[i], ym[i], xerr=None if pd.isna(xs[i]) else xs[i], yerr=None if pd.isna(ys[i]) else ys[i],
                    fmt=marker, ms=5, mfc=face, mec=colour, color=colour, ecolor=colour, elinewidth=0.8, capsize=2)
    handles = [Line2D([], [], ls="", marker="s", color=colours[a], label=a) for a in labels]
    if len(dims) > 1 or (dims and len(data) > len(labels)):
        handles += [Line2D([], [], ls="", marker=markers[d], color="0.3", mfc="0.3", label=f"d = {d:g}") for d in dims]
    return handles


def compression_scatter(table: pd.DataFrame, x: str, y: str, path: Path, trivial: float | None = None,
                        skipped: list[str] | None = None) -> Path:
    """One compression view: configurations (mean ± std over seeds) of `x` against `y`, coloured by allocation,
    marker by d. `x`/`y`: a metric name, or 'compressed_kb' (bound/compressed_bits / 8000). With `trivial`
    (log2 V) draws the trivial bound: points above it are vacuous (hollow), below non-vacuous (filled)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    data = allocation_table(table)
    ym = _xy(data, y)[0]
    data = data[_xy(data, x)[0].notna() & ym.notna()]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    hollow = None
    extra = []
    if trivial is not None:
        hollow = _xy(data, y)[0] > trivial
        ax.axhline(trivial, color="k", lw=0.9, ls="--")
        extra = [Line2D([], [], color="k", ls="--", label=f"trivial log₂V = {trivial:.2f}"),
                 Line2D([], [], ls="", marker="o", mfc="0.3", color="0.3", label="non-vacuous"),
                 Line2D([], [], ls="", marker="o", mfc="white", color="0.3", label="vacuous (> log₂V)")]
    handles = _scatter(ax, data, x, y, hollow) + extra
    if trivial is not None:
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, trivial - 0.05 * (high - low)), max(high, trivial + 0.05 * (high - low)))
        ax.axhspan(trivial, ax.get_ylim()[1], color="0.94", zorder=0)
        ax.text(0.01, 0.99, "vacuous", transform=ax.transAxes, ha="left", va="top", fontsize=6, color="0.4")
    ax.set_xlabel(NAMES.get(x, x))
    ax.set_ylabel(NAMES.get(y, y))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _finish(plt, fig, path, skipped, bottom=0.04)


def complexity_vs_empirical(table: pd.DataFrame, path: Path, skipped: list[str] | None = None) -> Path:
    """KL (nats) against the quantized model's empirical doc BPD."""
    return compression_scatter(table, KL, BPD_EMPIRICAL, path, skipped=skipped)


def complexity_vs_bound(table: pd.DataFrame, path: Path, vocab_size: int | None,
                        skipped: list[str] | None = None) -> Path:
    """KL (nats) against the doc BPD bound, with the trivial bound log2(V) (vacuous above it)."""
    trivial = math.log2(vocab_size) if vocab_size else None
    return compression_scatter(table, KL, BPD, path, trivial=trivial, skipped=skipped)


def size_vs_performance(table: pd.DataFrame, path: Path, skipped: list[str] | None = None) -> Path:
    """Compressed size of α (kB) against eval loss."""
    return compression_scatter(table, "compressed_kb", LOSS, path, skipped=skipped)


def allocation_grid(table: pd.DataFrame, path: Path, vocab_size: int | None = None,
                    skipped: list[str] | None = None) -> Path:
    """Per d (columns), the doc BPD bound (top row) and the empirical BPD (bottom row) of each allocation
    (mean ± std over seeds); the bound row shows log2(V) when known."""
    plt = _plt()
    data = allocation_table(table)
    dims = list(dict.fromkeys(data["d"]))
    short = {BPD: "doc BPD bound", BPD_EMPIRICAL: "empirical doc BPD"}
    rows = [(m, short[m]) for m in (BPD, BPD_EMPIRICAL) if f"{m} mean" in data and data[f"{m} mean"].notna().any()]
    labels = sorted(data["allocation"].unique(), key=_order)
    width = max(4.8, 0.45 * len(labels) * len(dims) + 1.2)
    fig, axes = plt.subplots(len(rows), len(dims), figsize=(width, 1.9 * len(rows) + 0.8), sharey="row",
                             sharex=True, squeeze=False)
    for r, (metric, name) in enumerate(rows):
        for c, d in enumerate(dims):
            ax = axes[r, c]
            part = data[data["d"] == d] if pd.notna(d) else data[data["d"].isna()]
            xs = [labels.index(a) for a in part["allocation"]]
            for x, (_, row) in zip(xs, part.iterrows(), strict=True):
                std = row.get(f"{metric} std")
                ax.errorbar(x, row[f"{metric} mean"], yerr=None if pd.isna(std) else std, fmt="o", ms=4, capsize=3,
                            color=f"C{labels.index(row['allocation']) % 10}")
            if metric == BPD and vocab_size:
                ax.axhline(math.log2(vocab_size), color="k", lw=0.8, ls="--",
                           label=f"log₂V = {math.log2(vocab_size):.2f}")
            if r == 0:
                ax.set_title(f"d = {d:g}" if pd.notna(d) else "d unknown", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)
    if vocab_size and rows and rows[0][0] == BPD:
        axes[0, -1].legend(fontsize=6, loc="best")
    return _finish(plt, fig, path, skipped, bottom=0.04)


# ---------------------------------------------------------------- all of them

def write_figures(frame: pd.DataFrame, table: pd.DataFrame, out: Path) -> tuple[list[Path], list[str]]:
    """Every SubLoRA figure the data allows, into `out`; returns (paths, notes on what was skipped)."""
    paths: list[Path] = []
    notes: list[str] = []
    gammas, skipped = final_gammas(frame)
    modules = [c for c in gammas.columns if c not in ("trial_id", "intrinsic_dim", "seed")]
    if len(gammas) and modules:
        paths.append(gamma_heatmap(gammas, out / "sublora_gamma_heatmap.png", skipped))
        depth = gamma_by_depth(gammas)
        if len(depth):
            paths.append(gamma_depth(depth, out / "sublora_gamma_depth.png", skipped))
        else:
            notes.append("γ vs depth: no module name has a block index (layers.<i>.)")
    elif skipped:
        notes.append("γ figures: no learned trial with a final γ (" + "; ".join(skipped) + ")")
    _, unfinished = _finished(frame)
    sizes = vocab_sizes(frame)
    vocab = next(iter(sizes)) if len(sizes) == 1 else None
    if len(sizes) > 1:
        notes.append(f"several vocabulary sizes {sorted(sizes)}: no trivial-bound line")
    has = {m: f"{m} mean" in table and table[f"{m} mean"].notna().any() for m in (KL, BITS, BPD, BPD_EMPIRICAL, LOSS)}
    views = [("sublora_kl_vs_empirical_bpd.png", (KL, BPD_EMPIRICAL), lambda p: complexity_vs_empirical(
                 table, p, unfinished)),
             ("sublora_kl_vs_bpd_bound.png", (KL, BPD), lambda p: complexity_vs_bound(table, p, vocab, unfinished)),
             ("sublora_size_vs_eval_loss.png", (BITS, LOSS), lambda p: size_vs_performance(table, p, unfinished)),
             ("sublora_allocation_grid.png", (BPD,), lambda p: allocation_grid(table, p, vocab, unfinished))]
    for name, needs, draw in views:
        missing = [m for m in needs if not has[m]]
        if not missing:
            paths.append(draw(out / name))
        else:
            notes.append(f"{name}: not drawn, no finished trial reported {', '.join(missing)}")
    return paths, notes
