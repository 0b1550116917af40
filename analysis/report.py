"""One self-contained report.html that works offline: the interactive views (plotly, its JavaScript inlined:
parallel coordinates, parameter importance, the Pareto front, curves with seed bands), a sortable and filterable
trials table, the per-configuration summary, a recommendation (the Pareto-optimal configuration for each budget
of the first objective) and the paper figures embedded as base64 PNG. No request leaves the page."""

from __future__ import annotations

import base64
import html
import os
import threading
import time
from pathlib import Path

import pandas as pd

from analysis import interactive as views
from analysis.aggregate import config_axes
from analysis.importance import param_importance
from analysis.load import ran_to_end
from analysis.plots import label
from analysis.report_assets import REFRESH_JS, STYLE, TABLE_JS
from analysis.tables import cells
from analysis.trials_table import trials_table
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import SUMMARY_CSV, SWEEP_FILE


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"></figure>'


def _table(table: pd.DataFrame, metrics: list[str]) -> str:
    frame, best = cells(table, metrics)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        tds = "".join(f"<td><b>{html.escape(v)}</b></td>" if i in best.get(c, set()) else f"<td>{html.escape(v)}</td>"
                      for c, v in zip(frame.columns, row, strict=True))
        rows.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def recommendation(table: pd.DataFrame, on_front: pd.Series, objectives: dict[str, str]) -> list[str]:
    """For each front configuration, in order of the first objective: 'with budget ≤ x: config (y ± s, n)'."""
    (x, xdir), (y, _) = list(objectives.items())[:2]
    front = table[on_front.to_numpy()].sort_values(f"{x} mean", ascending=xdir == "min")
    axes = config_axes(table)
    out = []
    for _, row in front.iterrows():
        spread = "" if pd.isna(row.get(f"{y} std")) else f" ± {row[f'{y} std']:.4g}"
        bound = "≤" if xdir == "min" else "≥"
        out.append(f"{x} {bound} {row[f'{x} mean']:.6g}: {label(row, axes)} — {y} {row[f'{y} mean']:.4g}{spread} "
                   f"over {int(row['n'])} seed(s)")
    return out


def search_metric(frame: pd.DataFrame) -> tuple[str, str]:
    """The experiment's search.metric and search.mode (raysweep.yaml beside the trial directories), the
    metric the parallel coordinates and the importance are about; eval/loss, min when unknown."""
    import yaml

    metric, mode = M.EVAL_LOSS, "min"
    if len(frame) and "trial_path" in frame:
        saved = Path(str(frame["trial_path"].iloc[0])).parent / SWEEP_FILE
        if saved.is_file():
            search = (yaml.safe_load(saved.read_text()) or {}).get("search") or {}
            metric, mode = search.get("metric") or metric, search.get("mode") or mode
    return metric, mode


def _trials_beside(path: Path) -> pd.DataFrame | None:
    """The per-trial table `analyze` wrote next to the report just before (its overview), when the caller
    passed no frame."""
    saved = path.parent / SUMMARY_CSV
    return pd.read_csv(saved, dtype={"trial_id": str}) if saved.is_file() else None


def _section(anchor: str, title: str, parts: list[str | None], notes: list[str] = ()) -> str:
    body = [p for p in parts if p]
    body += [f'<p class="note">{html.escape(n)}</p>' for n in notes if n]
    return f'<h2 id="{anchor}">{html.escape(title)}</h2>' + "".join(body)


def interactive_sections(frame: pd.DataFrame, history: pd.DataFrame | None, table: pd.DataFrame,
                         objectives: dict[str, str], on_front: pd.Series, metric: str, mode: str) -> list[str]:
    """The plotly views and the trials table (the page inlines plotly's JavaScript once, before them)."""
    finished = frame[ran_to_end(frame)] if len(frame) else frame
    axes = [a for a in frame.columns if a.startswith("cell/")]
    importance = param_importance(finished, axes, metric, mode)
    if history is None:
        from analysis.history import load_history

        history = load_history(frame) if len(frame) else pd.DataFrame()
    parcoords = views.parallel_coordinates(finished, axes, metric, mode) if axes else None
    curve_divs = [views.curves(history, m, f"{views.CURVES}-{m.replace('/', '-')}") for m in (M.EVAL_LOSS, M.TRAIN_LOSS)]
    return [
        _section("parallel", f"Grid axes against {metric}", [parcoords],
                 [] if parcoords else [f"No finished trial has reported {metric} yet."]),
        _section("importance", "Parameter importance", [views.importance_bar(importance)], [importance.note]),
        _section("pareto", "Pareto front", [views.pareto(table, objectives, on_front)],
                 [] if len(objectives) >= 2 and len(table) else ["Needs two objectives reported by finished trials."]),
        _section("curves", "Curves per configuration (mean ± std over seeds)", curve_divs,
                 [] if any(curve_divs) else ["No trial has reported a curve yet."]),
    ]


def write_report(path: Path, *, title: str, table: pd.DataFrame, metrics: list[str], objectives: dict[str, str],
                 on_front: pd.Series, figures: list[Path], notes: list[str], frame: pd.DataFrame | None = None,
                 history: pd.DataFrame | None = None, metric: str | None = None, mode: str | None = None,
                 refresh_s: float | None = None) -> Path:
    """Write the page to `path` (whole, then renamed: a browser or server never reads half a page).

    `frame` (one row per trial, analysis.load) feeds the interactive views and the trials table; without it
    they come from the summary.csv `analyze` writes beside the report, and are left out when there is none.
    `metric`/`mode` default to the experiment's search.metric. `refresh_s`: the page reloads itself at that
    interval (a report rewritten while the sweep runs)."""
    path = Path(path)
    frame = _trials_beside(path) if frame is None else frame
    interactive = frame is not None and views.available()
    if frame is not None and (metric is None or mode is None):
        found = search_metric(frame)
        metric, mode = metric or found[0], mode or found[1]
    recs = recommendation(table, on_front, objectives) if len(objectives) >= 2 and len(table) else []
    body = [f"<h1>{html.escape(title)}</h1>"]
    if refresh_s:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        body.append(f'<p class="live">live: written {stamp}, reloads every {refresh_s:g} s '
                    '<label><input id="live-pause" type="checkbox"> pause</label></p>')
    links = [("parallel", "parallel coordinates"), ("importance", "importance"), ("pareto", "Pareto front"),
             ("curves", "curves")] if interactive else []
    links += [("trials-section", "trials")] if frame is not None else []
    links += [("summary", "summary")] + ([("figures", "figures")] if figures else [])
    body.append("<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>")
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    body.append("<h2>Recommendation: Pareto-optimal configuration per budget</h2><ul>")
    body += [f"<li>{html.escape(r)}</li>" for r in recs] + ["</ul>"]
    head_js = ""
    if interactive:
        head_js = f"<script>{views.plotly_js()}</script>"
        body += interactive_sections(frame, history, table, objectives, on_front, metric, mode)
    elif frame is not None:
        body.append('<p class="note">Interactive views: install the report extra (plotly).</p>')
    if frame is not None:
        body.append('<h2 id="trials-section">Trials</h2>' + trials_table(frame, metric))
    body.append('<h2 id="summary">Summary (mean ± std over seeds; best per column in bold; * = fewer seeds)</h2>')
    body.append(_table(table, metrics) if len(table) else '<p class="note">No finished trial yet.</p>')
    if figures:
        body.append('<h2 id="figures">Figures</h2>')
        body += [_img(f) for f in figures]
    scripts = f"<script>{TABLE_JS}</script>" + (f"<script>{REFRESH_JS % max(1, round(refresh_s))}</script>" if refresh_s else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style>{head_js}</head><body>{''.join(body)}{scripts}</body></html>")
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
