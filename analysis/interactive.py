"""The interactive figures of report.html, drawn with plotly: parallel coordinates of the grid axes against the
chosen metric, parameter importance, the Pareto front with each configuration on hover, and curves per
configuration with seed bands. Each function returns one `<div>` (its figure's data and a `Plotly.newPlot`
call) or None when there is nothing to draw; the page inlines plotly's JavaScript once (`plotly_js`), so it
works offline. plotly is imported inside the functions (an optional extra: `report`).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.aggregate import config_axes
from analysis.importance import LOG_SPAN, Importance
from analysis.plots import label, varying
from raysweep.experiment import metrics as M

# plotly.js 3 adds a "Share chart" button that uploads the figure to Plotly Cloud, and a logo linking to
# plotly.com: the page must never send anything anywhere
CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False,
          "modeBarButtonsToRemove": ["sendChartToCloud"]}
HEIGHT = 420
MAX_TICKS = 12  # a numeric axis with at most this many values gets a tick at each
# element ids of the figures (tests and the page's own links find them by these)
PARCOORDS, IMPORTANCE, PARETO, CURVES = "plot-parcoords", "plot-importance", "plot-pareto", "plot-curves"


def available() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def plotly_js() -> str:
    """plotly.js itself (~4.8 MB), to inline in one `<script>`: no CDN, no request leaves the page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _div(fig, div_id: str, top: int = 50) -> str:
    fig.update_layout(height=HEIGHT, margin={"l": 60, "r": 30, "t": top, "b": 50}, template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG)


def _short(axis: str) -> str:
    return axis.removeprefix("cell/")


def _numeric_dimension(name: str, numbers: pd.Series) -> dict:
    """A numeric axis: on a log10 scale when positive and spanning two decades (learning rates; parcoords has
    no log axes), with a tick at each grid value when there are few."""
    log = bool((numbers > 0).all() and numbers.max() / numbers.min() >= LOG_SPAN)
    values = numbers.map(math.log10) if log else numbers
    dim = {"label": f"{name} (log)" if log else name, "values": values.tolist()}
    distinct = sorted(numbers.unique())
    if len(distinct) <= MAX_TICKS:
        dim |= {"tickvals": [math.log10(v) if log else v for v in distinct], "ticktext": [f"{v:g}" for v in distinct]}
    return dim


def parallel_coordinates(trials: pd.DataFrame, axes: list[str], metric: str, mode: str) -> str | None:
    """One line per finished trial through every varying axis and `metric` (the colour too: best is yellow).
    Non-numeric axes get one tick per value."""
    import plotly.graph_objects as go

    values = pd.to_numeric(trials.get(metric), errors="coerce") if metric in trials else None
    if values is None or not values.map(math.isfinite).any():
        return None
    trials, values = trials[values.map(math.isfinite)], values[values.map(math.isfinite)]
    dims = []
    for axis in [a for a in axes if trials[a].astype(str).nunique() > 1] or axes:
        numbers = pd.to_numeric(trials[axis], errors="coerce")
        if numbers.notna().all() and not trials[axis].map(lambda v: isinstance(v, bool)).any():
            dims.append(_numeric_dimension(_short(axis), numbers))
            continue
        text = trials[axis].map(lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        ticks = sorted(text.unique())
        dims.append({"label": _short(axis), "values": [ticks.index(t) for t in text],
                     "tickvals": list(range(len(ticks))), "ticktext": ticks})
    dims.append({"label": metric, "values": values.tolist()})
    line = {"color": values.tolist(), "colorscale": "Viridis", "reversescale": mode == "min", "showscale": True,
            "colorbar": {"title": {"text": metric}}}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(title=f"Grid axes against {metric} ({len(trials)} finished trial(s); drag along an axis "
                            "to filter)")
    return _div(fig, PARCOORDS, top=110)  # the axis names sit above the plot, under the title


def importance_bar(importance: Importance) -> str | None:
    import plotly.graph_objects as go

    if not importance.values:
        return None
    names = list(importance.values)[::-1]  # most important at the top
    fig = go.Figure(go.Bar(x=[importance.values[n] for n in names], y=names, orientation="h",
                           marker_color="#4c72b0", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title="Parameter importance", xaxis_title="importance (sums to 1)")
    return _div(fig, IMPORTANCE)


def _hover(table: pd.DataFrame, axes: list[str], metrics: list[str]) -> list[str]:
    out = []
    for _, row in table.iterrows():
        parts = [label(row, axes) or "configuration", f"n = {int(row['n'])} seed(s)"]
        for m in metrics:
            mean, std = row.get(f"{m} mean"), row.get(f"{m} std")
            if mean is not None and pd.notna(mean):
                parts.append(f"{m} = {mean:.5g}" + ("" if std is None or pd.isna(std) else f" ± {std:.3g}"))
        out.append("<br>".join(parts))
    return out


def pareto(table: pd.DataFrame, objectives: dict[str, str], on_front: pd.Series) -> str | None:
    """Configurations (seed means, ±std error bars) of the first two objectives; the front joined in red.
    Hovering a point shows its configuration."""
    import plotly.graph_objects as go

    names = list(objectives)[:2]
    if len(names) < 2 or not all(f"{n} mean" in table for n in names) or table.empty:
        return None
    (x, y), axes = names, varying(table, config_axes(table))
    text = _hover(table, axes, names)
    front = on_front.to_numpy()
    fig = go.Figure()
    for name, mask, color, mode in (("configuration", ~front, "#999999", "markers"),
                                    ("Pareto front", front, "#c44e52", "lines+markers")):
        part = table[mask].assign(_text=[t for t, m in zip(text, mask, strict=True) if m]).sort_values(f"{x} mean")
        if part.empty:
            continue
        fig.add_trace(go.Scatter(
            x=part[f"{x} mean"], y=part[f"{y} mean"], mode=mode, name=name, text=part["_text"],
            hovertemplate="%{text}<extra></extra>", marker={"size": 9, "color": color}, line={"color": color},
            error_x={"array": part.get(f"{x} std", pd.Series(dtype=float)).fillna(0).tolist(), "color": "#cccccc"},
            error_y={"array": part.get(f"{y} std", pd.Series(dtype=float)).fillna(0).tolist(), "color": "#cccccc"}))
    fig.update_layout(title=f"Pareto front: {x} ({objectives[x]}) against {y} ({objectives[y]}), seed means",
                      xaxis_title=x, yaxis_title=y)
    return _div(fig, PARETO)


def _colour(i: int) -> tuple[str, str]:
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
               "#ccb974", "#64b5cd"]
    hex_ = palette[i % len(palette)]
    r, g, b = (int(hex_[k:k + 2], 16) for k in (1, 3, 5))
    return hex_, f"rgba({r},{g},{b},0.2)"


def curves(history: pd.DataFrame, metric: str = M.EVAL_LOSS, div_id: str = CURVES) -> str | None:
    """`metric` against the step, one line per configuration (mean over its seeds) in a mean ± std band (no
    band where a step has one seed). Running trials count too: the live page follows a sweep as it goes."""
    import plotly.graph_objects as go

    if metric not in history or M.TRAIN_STEP not in history or not history[metric].notna().any():
        return None
    data = history.dropna(subset=[metric])
    if metric.startswith("eval/") and M.EVAL_STEP in data:
        # reports between evals repeat the last eval's numbers: each eval at the step it was measured
        data = data[data[M.EVAL_STEP] == data[M.TRAIN_STEP]]
    axes = [a for a in config_axes(data) if a != "status"]
    shown = varying(data, axes) if axes else axes
    groups = list(data.groupby(axes, dropna=False, sort=True)) if axes else [((), data)]
    fig = go.Figure()
    for i, (key, group) in enumerate(groups):
        keys = key if isinstance(key, tuple) else (key,)
        name = ", ".join(f"{_short(a).split('.')[-1]}={v}" for a, v in zip(axes, keys, strict=True)
                         if a in shown and pd.notna(v)) or metric
        stats = group.groupby(M.TRAIN_STEP)[metric].agg(["mean", "std", "count"]).reset_index()
        line, fill = _colour(i)
        steps, low, high = stats[M.TRAIN_STEP], stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0)
        fig.add_trace(go.Scatter(x=[*steps, *steps[::-1]], y=[*high, *low[::-1]], fill="toself", fillcolor=fill,
                                 line={"width": 0}, hoverinfo="skip", legendgroup=name, showlegend=False))
        fig.add_trace(go.Scatter(x=steps, y=stats["mean"], mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": line}, marker={"size": 4}, customdata=stats["count"],
                                 hovertemplate=f"{name}<br>step %{{x}}: %{{y:.4g}} (%{{customdata}} seed(s))"
                                               "<extra></extra>"))
    fig.update_layout(title=f"{metric} per configuration (mean ± std over seeds)", xaxis_title="step",
                      yaxis_title=metric)
    return _div(fig, div_id)
