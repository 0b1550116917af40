"""Parameter importance over the finished trials: optuna's fANOVA (PED-ANOVA where scikit-learn, which
fANOVA's random forest needs, is missing) on an in-memory study built from the results table.

Each grid axis that takes more than one value becomes a distribution: numbers an Int/FloatDistribution over
their range (log scale when they span two decades or more, as ranks and learning rates do), everything else
(adapter names, booleans, an axis only some sub-grids set) a CategoricalDistribution. optuna is imported
inside the functions: loading `analysis` stays light.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import pandas as pd

MIN_TRIALS = 4  # fewer finished trials say nothing about which axis matters: a note instead of a chart
LOG_SPAN = 100.0  # a positive axis whose max/min reaches this is judged on a log scale


@dataclass(frozen=True)
class Importance:
    """`values`: axis (without `cell/`) -> importance (sum 1), most important first; `note`: one line for the
    page, set whenever `values` is empty and naming the evaluator otherwise."""

    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _numeric(values: pd.Series) -> pd.Series | None:
    """The axis as numbers when every value is a (non-bool) number, else None."""
    if any(isinstance(v, bool) for v in values):
        return None
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers.notna().all() else None


def _native(value):
    """numpy scalars as the Python int/float/str optuna's distributions check against."""
    return value.item() if hasattr(value, "item") else value


def distributions(frame: pd.DataFrame, axes: list[str]) -> tuple[dict[str, object], pd.DataFrame]:
    """(axis -> optuna distribution, the params table in the distributions' terms) for the axes of `frame`
    that take more than one value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, object] = {}
    params = pd.DataFrame(index=frame.index)
    for axis in axes:
        values = frame[axis]
        if values.astype(str).nunique() < 2:
            continue  # a constant explains nothing
        name = axis.removeprefix("cell/")
        numbers = _numeric(values)
        if numbers is None:
            # NaN (an axis a sub-grid leaves unset) becomes its own category, as in the tables' "–"
            labels = values.map(lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            dists[name] = CategoricalDistribution(sorted(labels.unique()))
            params[name] = labels
            continue
        low, high = float(numbers.min()), float(numbers.max())
        log = low > 0 and high / low >= LOG_SPAN
        if (numbers == numbers.round()).all() and low >= (1 if log else -math.inf):
            dists[name] = IntDistribution(int(low), int(high), log=log)
            params[name] = numbers.astype(int)
        else:
            dists[name] = FloatDistribution(low, high, log=log)
            params[name] = numbers.astype(float)
    return dists, params


def param_importance(frame: pd.DataFrame, axes: list[str], metric: str, mode: str) -> Importance:
    """Importance of each varying axis for `metric` over the rows of `frame` (the finished trials)."""
    if metric not in frame:
        return Importance(note=f"Parameter importance: no finished trial reported {metric} yet.")
    values = pd.to_numeric(frame[metric], errors="coerce")
    rows = frame[values.map(math.isfinite)]
    if len(rows) < MIN_TRIALS:
        return Importance(note=f"Parameter importance: needs at least {MIN_TRIALS} finished trials with {metric} "
                               f"({len(rows)} so far).")
    dists, params = distributions(rows, axes)
    if not dists:
        return Importance(note="Parameter importance: no grid axis takes more than one value among the finished trials.")
    if values[rows.index].nunique() < 2:
        return Importance(note=f"Parameter importance: {metric} is the same in every finished trial.")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    # column by column: a row of mixed dtypes would turn an int axis into floats
    columns = {name: [_native(v) for v in params[name]] for name in dists}
    for i, index in enumerate(params.index):
        study.add_trial(optuna.trial.create_trial(params={name: columns[name][i] for name in dists},
                                                  distributions=dists, value=float(values[index])))
    try:
        import sklearn  # noqa: F401 - fANOVA's random forest

        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's experimental-feature warnings: not the reader's concern
        result = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return Importance({k: float(v) for k, v in result.items()},
                      f"Parameter importance of the grid axes for {metric} ({name} over {len(rows)} finished "
                      f"trial(s), optuna {optuna.__version__}).")
