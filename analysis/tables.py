"""The per-configuration summary as paper tables: LaTeX (booktabs) and markdown, "mean ± std" cells,
the best value of each metric column in bold. Written by hand: pandas' own to_latex/to_markdown need
jinja2/tabulate and cannot bold a per-column best among "mean ± std" strings."""

from __future__ import annotations

import math

import pandas as pd

from raysweep.experiment import metrics as M

# which way is better, per metric (columns without an entry get no bold)
BETTER = {M.EVAL_LOSS: "min", M.EVAL_BEST_LOSS: "min", M.EVAL_PPL: "min", M.EVAL_ACCURACY: "max",
          M.ADAPTER_EFFECTIVE_PARAMS: "min", M.ADAPTER_TRAINABLE_PARAMS: "min", M.ADAPTER_SPARSITY: "max",
          M.TRAIN_TOKENS_PER_S: "max"}


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def cells(table: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, dict[str, set[int]]]:
    """(string table: axes, n, one "mean ± std" column per metric; {metric: row positions that are best})."""
    axes = [c for c in table.columns if c.startswith("cell/") or c in ("adapter.type", "adapter.r")]
    out = pd.DataFrame({c.removeprefix("cell/"): table[c].map(lambda v: "–" if pd.isna(v) else str(v)) for c in axes})
    out["n"] = table["n"].astype(int).astype(str) + table["fewer_seeds"].map({True: "*", False: ""})
    best: dict[str, set[int]] = {}
    for m in metrics:
        mean, std = table.get(f"{m} mean"), table.get(f"{m} std")
        if mean is None or mean.isna().all():
            continue
        out[m] = [_fmt(a) + ("" if pd.isna(b) else f" ± {_fmt(b)}") for a, b in zip(mean, std, strict=True)]
        if m in BETTER or M.is_task_metric(m):  # task metrics (accuracy, exact match, F1, Δbase): higher is better
            target = mean.min() if BETTER.get(m, "max") == "min" else mean.max()
            best[m] = {i for i, v in enumerate(mean) if v == target}
    return out, best


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("–", "--"), ("Δ", r"$\Delta$")):  # Δbase: pdflatex has no Greek in text
        text = text.replace(a, b)
    return text


def to_latex(table: pd.DataFrame, metrics: list[str], caption: str = "") -> str:
    frame, best = cells(table, metrics)
    cols = list(frame.columns)
    numeric = [c for c in cols if c in metrics]
    spec = "l" * (len(cols) - len(numeric)) + "r" * len(numeric)
    lines = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for i, row in enumerate(frame.itertuples(index=False)):
        values = []
        for c, v in zip(cols, row, strict=True):
            text = _latex_escape(v)
            values.append(rf"\textbf{{{text}}}" if i in best.get(c, set()) else text)
        lines.append(" & ".join(values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    frame, best = cells(table, metrics)
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for i, row in enumerate(frame.itertuples(index=False)):
        lines.append("| " + " | ".join(f"**{v}**" if i in best.get(c, set()) else v
                                       for c, v in zip(cols, row, strict=True)) + " |")
    return "\n".join(lines) + "\n"
