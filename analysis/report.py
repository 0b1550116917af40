"""One self-contained report.html: tables, figures embedded as base64 PNG (no network), and a
recommendation: the Pareto-optimal configuration for each budget of the first objective."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from analysis.aggregate import config_axes
from analysis.plots import label
from analysis.tables import cells


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


def write_report(path: Path, *, title: str, table: pd.DataFrame, metrics: list[str], objectives: dict[str, str],
                 on_front: pd.Series, figures: list[Path], notes: list[str]) -> Path:
    recs = recommendation(table, on_front, objectives) if len(objectives) >= 2 else []
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    body.append("<h2>Recommendation: Pareto-optimal configuration per budget</h2><ul>")
    body += [f"<li>{html.escape(r)}</li>" for r in recs] + ["</ul>"]
    body.append("<h2>Summary (mean ± std over seeds; best per column in bold; * = fewer seeds)</h2>")
    body.append(_table(table, metrics))
    body.append("<h2>Figures</h2>")
    body += [_img(f) for f in figures]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right}"
             "img{max-width:100%}figure{display:inline-block;width:48%;margin:0.5%}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return path
