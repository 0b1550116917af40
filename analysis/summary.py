"""What `raysweep analyze` writes besides the per-trial table: per-configuration means over seeds and the
Pareto front of those configurations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.aggregate import config_axes, over_seeds
from analysis.pareto import pareto_front
from analysis.tables import to_latex, to_markdown

DEFAULT_OBJECTIVES = {"adapter/effective_params": "min", "eval/loss": "min"}
SUMMARY_METRICS = ["eval/loss", "eval/accuracy", "eval/best_loss", "adapter/effective_params",
                   "adapter/trainable_params", "adapter/sparsity", "train/tokens_per_s"]


def write_summaries(frame: pd.DataFrame, out: Path, objectives: dict[str, str] | None = None) -> dict[str, object]:
    """summary_table.csv (one row per configuration, finished trials only) and pareto.csv (the same rows
    with `on_front`; the front is taken on the seed means). Returns the paths and what was excluded."""
    objectives = objectives or DEFAULT_OBJECTIVES
    out.mkdir(parents=True, exist_ok=True)
    finished = frame[frame["status"] == "TERMINATED"] if "status" in frame else frame
    metrics = list(dict.fromkeys([*SUMMARY_METRICS, *objectives]))
    table = over_seeds(finished, metrics, config_axes(frame))
    table.to_csv(out / "summary_table.csv", index=False)
    shown = [m for m in metrics if f"{m} mean" in table and table[f"{m} mean"].notna().any()]
    caption = "mean ± std over seeds; best per column in bold; * fewer seeds than the other configurations"
    (out / "summary_table.tex").write_text(to_latex(table, shown, caption))
    (out / "summary_table.md").write_text(to_markdown(table, shown))
    means = table.rename(columns={f"{m} mean": m for m in objectives})
    missing = [m for m in objectives if m not in means]
    if missing:
        raise KeyError(f"objective(s) {', '.join(missing)} not reported by any finished trial")
    front = pareto_front(means, objectives)
    table.assign(on_front=front.on_front).to_csv(out / "pareto.csv", index=False)
    return {"summary_table": out / "summary_table.csv", "pareto": out / "pareto.csv",
            "markdown": (out / "summary_table.md").read_text(),
            "front": table[front.on_front], "excluded": table.loc[front.excluded],
            "configurations": len(table), "unfinished": len(frame) - len(finished)}
