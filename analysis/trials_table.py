"""The trials table of report.html: one row per trial with its status and the reason its numbers need care
(error, unfinished, stopped by a scheduler, early-stopped), its varying grid axes and its latest metrics.
Sorting and filtering are the page's own script (report_assets.TABLE_JS); every numeric cell carries its
raw value in `data-v` so that the script sorts numbers as numbers."""

from __future__ import annotations

import html
import math
import numbers

import numpy as np
import pandas as pd

from analysis.aggregate import SEED_AXIS, config_axes
from analysis.plots import varying
from raysweep.experiment import metrics as M

SHOWN_METRICS = [M.TRAIN_STEP, M.EVAL_LOSS, M.EVAL_ACCURACY, M.ADAPTER_EFFECTIVE_PARAMS, M.ADAPTER_SPARSITY]
MAX_REASON = 300  # characters of an error kept in the cell (the full traceback is the trial's error file)


def reason(row: pd.Series) -> str:
    """Why the trial's numbers need care, '' when they are final: the load's flag, then the error text."""
    parts = [str(row[c]) for c in ("flag", "error") if c in row and isinstance(row[c], str) and row[c].strip()]
    text = ": ".join(dict.fromkeys(parts))
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "…"


def _cell(value: object, classes: str = "") -> str:
    cls = f' class="{classes}"' if classes else ""
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_)):
        number = float(value)  # numpy scalars too (their repr is not a number)
        if math.isnan(number):
            return f"<td{cls}></td>"
        shown = f"{number:,.0f}" if abs(number) >= 1000 else f"{number:.5g}"
        return f'<td{cls} data-v="{number!r}">{shown}</td>'
    if value is None:
        return f"<td{cls}></td>"
    return f"<td{cls}>{html.escape(str(value))}</td>"


def trials_table(frame: pd.DataFrame, metric: str) -> str:
    """The table, its filter box and status menu (ids trials, trials-filter, trials-status, trials-count)."""
    seed = [c for c in frame.columns if c == f"cell/{SEED_AXIS}"]
    axes = varying(frame, config_axes(frame)) + seed if len(frame) else []
    metrics = [m for m in dict.fromkeys([M.TRAIN_STEP, metric, *SHOWN_METRICS]) if m in frame]
    extra = ["wall_time_s"] if "wall_time_s" in frame else []
    heads = ["trial", "status", "reason", *[a.removeprefix("cell/") for a in axes], *metrics, *extra]
    statuses = frame["status"].fillna("–").astype(str) if "status" in frame else pd.Series("–", index=frame.index)
    rows = []
    for (_, row), status in zip(frame.iterrows(), statuses, strict=True):
        tds = [_cell(row["trial_id"]), _cell(status), _cell(reason(row), "reason")]
        tds += [_cell(row[a]) for a in axes]
        tds += [_cell(pd.to_numeric(row[m], errors="coerce")) for m in metrics]
        tds += [_cell(row[c]) for c in extra]
        rows.append(f'<tr class="{html.escape(status)}" data-status="{html.escape(status)}">{"".join(tds)}</tr>')
    options = "".join(f'<option value="{html.escape(s)}">{html.escape(s)}</option>' for s in sorted(statuses.unique()))
    controls = ('<p><input id="trials-filter" type="search" placeholder="filter: words that must all occur" size="40"> '
                f'<select id="trials-status"><option value="">every status</option>{options}</select> '
                '<span id="trials-count"></span></p>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return (f'{controls}<div class="trials-wrap"><table id="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
