"""What `raysweep analyze` writes besides the per-trial table: per-configuration means over seeds and the
Pareto front of those configurations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import families
from analysis.aggregate import config_axes, over_seeds
from analysis.baseline import baseline_row, below_baseline, load_baselines, task_metrics
from analysis.history import load_history
from analysis.load import ran_to_end
from analysis.pareto import pareto_front
from analysis.plots import curves, frontier, sparsity_heatmap
from analysis.report import write_report
from analysis.tables import to_latex, to_markdown
from raysweep.experiment import layout as L
from raysweep.experiment import metrics as M

SUMMARY_METRICS = [M.EVAL_LOSS, M.EVAL_ACCURACY, M.EVAL_BEST_LOSS, M.ADAPTER_EFFECTIVE_PARAMS,
                   M.ADAPTER_TRAINABLE_PARAMS, M.ADAPTER_SPARSITY, M.TRAIN_TOKENS_PER_S]


def write_summaries(frame: pd.DataFrame, out: Path, objectives: dict[str, str] | None = None,
                    regression: float = 0.0) -> dict[str, object]:
    """summary_table.csv (one row per configuration, finished trials only) and pareto.csv (the same rows
    with `on_front`; the front is taken on the seed means). Returns the paths and what was excluded.
    `regression`: the report lists configurations more than this below the untuned base on a task metric."""
    objectives = objectives or families.default_objectives(frame)
    out.mkdir(parents=True, exist_ok=True)
    finished = frame[ran_to_end(frame)]
    stopped = _stopped_by(frame)
    tasks = task_metrics(frame)  # task/<task>/<metric>, gen/*: named by the tasks the sweep evaluated
    deltas = [f"{m}{M.BASELINE_DELTA_SUFFIX}" for m in tasks if f"{m}{M.BASELINE_DELTA_SUFFIX}" in frame]
    metrics = list(dict.fromkeys([*SUMMARY_METRICS, *families.METRICS[families.family_of(frame)], *tasks, *deltas,
                                  *objectives]))
    metrics = [m for m in metrics if m in frame]
    table = over_seeds(finished, metrics, config_axes(frame))
    baseline = _single_baseline(frame)
    # the untuned base is a row of its own in the written tables (not in the Pareto front: it is no configuration)
    written = pd.concat([baseline_row(table, baseline), table], ignore_index=True) if baseline else table
    written.to_csv(out / f"{L.SUMMARY_TABLE}.csv", index=False)
    shown = [m for m in metrics if f"{m} mean" in table and table[f"{m} mean"].notna().any()]
    caption = "mean ± std over seeds; best per column in bold; * fewer seeds than the other configurations"
    if baseline:
        caption += "; Δbase: difference to the untuned base (first row, n 0)"
    (out / f"{L.SUMMARY_TABLE}.tex").write_text(to_latex(written, shown, caption))
    (out / f"{L.SUMMARY_TABLE}.md").write_text(to_markdown(written, shown))
    means = table.rename(columns={f"{m} mean": m for m in objectives})
    missing = [m for m in objectives if m not in means]
    if missing:
        raise KeyError(f"objective(s) {', '.join(missing)} not reported by any finished trial")
    front = pareto_front(means, objectives)
    table.assign(on_front=front.on_front).to_csv(out / L.PARETO_FILE, index=False)
    figures = write_figures(frame, table, objectives, front.on_front, out)
    notes = [f"{len(frame)} trial(s), {len(finished)} finished; {len(table)} configuration(s)."]
    if len(stopped):
        by = ", ".join(sorted(stopped.unique()))
        notes.append(f"{len(stopped)} trial(s) stopped early by {by}: left out of the table (their numbers are "
                     "from an earlier step); a configuration shows only its seeds that ran to the end.")
    if len(front.excluded):
        notes.append(f"{len(front.excluded)} configuration(s) left out of the front (missing or non-finite objective).")
    if M.BOUND_DOC_BPD in frame:  # SubLoRA: per-trial bounds are in the table; the sweep's best pays ln N
        from analysis.sweep_bounds import lines

        notes += lines(frame, ran_to_end(frame))
    if baseline:  # the report marks what an adapter made worse than the untuned base
        below = table[below_baseline(table, baseline, regression).to_numpy()]
        if len(below):
            axes = [c for c in table.columns if c.startswith("cell/")]
            names = ["; ".join(f"{a.removeprefix('cell/')}={row[a]}" for a in axes) for _, row in below.iterrows()]
            by = f"more than {regression:g} below" if regression else "below"
            notes.append(f"{by[0].upper()}{by[1:]} the untuned base on a task metric: {len(below)} configuration(s): "
                         + " | ".join(names))
    write_report(out / L.REPORT_FILE, title=f"raysweep: {Path(str(frame['trial_path'].iloc[0])).parent.name}",
                 table=table, metrics=shown, objectives=objectives, on_front=front.on_front, figures=figures,
                 notes=notes, frame=frame)
    return {"report": out / L.REPORT_FILE, "figures": figures, "objectives": objectives, "summary_table": out / f"{L.SUMMARY_TABLE}.csv", "pareto": out / L.PARETO_FILE,
            "markdown": (out / f"{L.SUMMARY_TABLE}.md").read_text(),
            "front": table[front.on_front], "excluded": table.loc[front.excluded],
            "configurations": len(table), "unfinished": len(frame) - len(finished), "stopped": len(stopped)}


def _single_baseline(frame: pd.DataFrame) -> dict[str, float]:
    """The untuned base's task metrics when the sweep has one base (several: each trial's Δbase columns)."""
    path = frame["trial_path"].dropna()
    if path.empty:
        return {}
    baselines = load_baselines(Path(str(path.iloc[0])).parent)
    return next(iter(baselines.values())) if len(baselines) == 1 else {}


def _stopped_by(frame: pd.DataFrame) -> pd.Series:
    """The scheduler name of every trial a trial scheduler stopped early (trials.csv `stopped_by`)."""
    if "stopped_by" not in frame:
        return pd.Series(dtype=object)
    names = frame["stopped_by"].fillna("").astype(str)
    return names[names != ""]


def write_figures(frame: pd.DataFrame, table: pd.DataFrame, objectives: dict[str, str], on_front: pd.Series,
                  out: Path) -> list[Path]:
    """frontier.png (first two objectives), curves_<metric>.png, and a sparsity heatmap per gated trial."""
    figures = []
    names = list(objectives)
    if len(names) >= 2:
        figures.append(frontier(table, names[0], names[1], on_front, out / L.FRONTIER_FIGURE))
    history = load_history(frame)
    if len(history):
        history.to_csv(out / L.HISTORY_FILE, index=False)  # the long table: one row per trial and report
    for metric in (M.EVAL_LOSS, M.TRAIN_LOSS):
        if metric in history and history[metric].notna().any():
            figures.append(curves(history, metric, out / f"curves_{metric.replace('/', '_')}.png"))
    for _, trial in frame.iterrows():
        log = Path(str(trial.get("checkpoint_path", ""))) / L.SPARSITY_LOG
        if trial.get("checkpoint_path") and isinstance(trial["checkpoint_path"], str) and log.is_file():
            title = f"{trial['trial_id']} {trial.get('adapter.type', '')} " + ", ".join(
                f"{c.removeprefix('cell/')}={trial[c]}" for c in frame.columns if c.startswith("cell/") and pd.notna(trial[c]))
            figures.append(sparsity_heatmap(pd.read_csv(log), title, out / f"sparsity_{trial['trial_id']}.png"))
    return figures + families.figures(frame, table, out)
