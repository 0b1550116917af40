"""The cells of an expanded grid (config/grid.py) as Ray Tune's param_space.

One grid axis whose values are the cells (a sweep is a union of cartesian products, which Tune's
`grid_search` per key cannot express); ranges as Tune domains, drawn per cell and sample. Optuna cannot
sample a grid axis: for it, one mapping of choices and domains.
"""

from __future__ import annotations

from typing import Any

from raysweep.config.grid import Trial
from raysweep.config.ranges import Range


def tune_domain(rng: Range):
    """The Ray Tune domain of a grid range; the integer kinds include their upper bound (Tune's exclude it)."""
    from ray import tune

    low_high = rng.args
    return {
        "uniform": lambda: tune.uniform(*low_high),
        "loguniform": lambda: tune.loguniform(*low_high),
        "randint": lambda: tune.randint(low_high[0], low_high[1] + 1),
        "lograndint": lambda: tune.lograndint(low_high[0], low_high[1] + 1),
        "choice": lambda: tune.choice(list(rng.args)),
    }[rng.kind]()


def param_space(trials: list[Trial], algorithm: str = "grid") -> dict[str, Any]:
    """Tune param_space: one grid axis over the cells, ranges as Tune domains (see module docstring); for
    Optuna one mapping of choices and domains (it cannot sample a grid axis)."""
    from ray import tune

    def domain(value):
        return tune_domain(value) if isinstance(value, Range) else value

    if algorithm != "optuna":
        return {"cell": tune.grid_search([{k: domain(v) for k, v in t.cell.items()} for t in trials])}
    space = {}
    for key in dict.fromkeys(k for t in trials for k in t.cell):
        values = list(dict.fromkeys(t.cell[key] for t in trials if key in t.cell))
        # a one-value choice, not a constant: Tune's Optuna adapter drops constants from what it suggests
        space[key] = domain(values[0]) if isinstance(values[0], Range) else tune.choice(values)
    return {"cell": space}
