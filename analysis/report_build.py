"""report.html straight from an experiment directory, for a sweep that is still running: what the live
rewrite during `run` and `raysweep report [--watch]` write. The same page as `analyze` writes, less the paper
figures and LaTeX tables (matplotlib at every rewrite would cost seconds; `analyze` draws them), and it
never fails on a partial experiment: a view that has nothing to show yet says so in one line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import families
from analysis.aggregate import config_axes, over_seeds
from analysis.load import load_trials, ran_to_end
from analysis.pareto import pareto_front
from analysis.report import write_report
from analysis.summary import SUMMARY_METRICS
from raysweep.experiment.layout import PARAMS_FILE, REPORT_FILE, RESULT_FILE, SWEEP_FILE, TRIALS_FILE


def report_path(experiment: str | Path) -> Path:
    return Path(experiment).expanduser() / REPORT_FILE


def inputs_signature(experiment: str | Path) -> tuple:
    """What the page is computed from (size and mtime of the grid, trials table and every trial's params and
    results): a watcher rewrites the page only when this changed."""
    root = Path(experiment).expanduser()
    files = [root / SWEEP_FILE, root / TRIALS_FILE, *root.glob(f"*/{PARAMS_FILE}"), *root.glob(f"*/{RESULT_FILE}")]
    out = []
    for f in sorted(files):
        try:
            stat = f.stat()
        except FileNotFoundError:  # not written yet, or replaced while we looked
            continue
        out.append((str(f), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def write_experiment_report(experiment: str | Path, out: Path | None = None, refresh_s: float | None = None,
                            objectives: dict[str, str] | None = None) -> Path:
    """Write `<experiment>/report.html` (or `out`) from the experiment as it is now; returns the path."""
    root = Path(experiment).expanduser()
    out = Path(out) if out else report_path(root)
    frame = load_trials(root)  # ResultsError when this is no experiment: the caller says so
    notes: list[str] = []
    if frame.empty:
        table, on_front, objectives, metrics = pd.DataFrame(), pd.Series(dtype=bool), objectives or {}, []
        notes.append("No trial has reported yet.")
    else:
        objectives = objectives or families.default_objectives(frame)
        finished = frame[ran_to_end(frame)]
        metrics = [m for m in dict.fromkeys([*SUMMARY_METRICS, *families.METRICS[families.family_of(frame)],
                                             *objectives]) if m in frame]
        table = over_seeds(finished, metrics, config_axes(frame)) if len(finished) and metrics else pd.DataFrame()
        metrics = [m for m in metrics if f"{m} mean" in table and table[f"{m} mean"].notna().any()]
        on_front = pd.Series(False, index=table.index)
        means = table.rename(columns={f"{m} mean": m for m in objectives})
        if len(table) and all(m in means for m in objectives):
            on_front = pareto_front(means, objectives).on_front
        notes.append(f"{len(frame)} trial(s), {len(finished)} finished; {len(table)} configuration(s) with a "
                     "finished trial.")
        if "status" not in frame:  # the trial table is first written when a trial ends
            notes.append("No trial has ended yet: every view shows each trial's latest report.")
    notes.append("Paper figures (PNG) and LaTeX tables: raysweep analyze.")
    return write_report(out, title=f"raysweep: {root.resolve().name}", table=table, metrics=metrics,
                        objectives=objectives, on_front=on_front, figures=[], notes=notes, frame=frame,
                        refresh_s=refresh_s)
