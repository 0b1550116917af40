"""Sweep -> trials: expand the grid (a union of sub-grids) into cells, validate every cell,
and build the Ray Tune param_space.

Why not Tune's own `grid_search` per key: a sweep is a *union* of cartesian products ("LoRA and DoRA at
r16; SoRA at λ ∈ {0.1, 0.3, 0.5}"), which one product of independent axes cannot express. We expand
locally (so `plan` shows the exact trial list and every cell is validated before Ray starts) and hand
Tune a single grid axis whose values are the cells.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from typing import Any

from raysweep import config as C


@dataclass(frozen=True)
class Trial:
    index: int
    subgrid: int
    cell: dict[str, Any]  # axis key path -> value for this trial
    config: C.TrialConfig

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cell.items())


def resolve(base_raw: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The raw trial dict: base values with the cell's axis values set at their key paths."""
    raw = {k: copy.deepcopy(v) for k, v in base_raw.items() if k in C.TrialConfig.model_fields}
    for key, value in cell.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return raw


def trial_config(base_raw: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The validated, JSON-ready config one trial runs with (what the worker receives)."""
    trial, issues = C.validate_trial(resolve(base_raw, cell))
    if trial is None:
        raise C.ConfigError("trial", issues)
    return trial.model_dump(mode="json")


def _subgrids(grid: Any) -> tuple[list[dict[str, list]], list[C.ConfigIssue]]:
    """Normalise `grid:` to a list of {axis: [values]} and check its shape and axis names."""
    if grid in (None, {}, []):
        return [{}], []
    items = grid if isinstance(grid, list) else [grid]
    known = C.axis_paths()
    out, issues = [], []
    for i, sub in enumerate(items):
        where = f"grid[{i}]" if isinstance(grid, list) else "grid"
        if not isinstance(sub, dict) or not sub:
            issues.append(C.ConfigIssue(where, "a sub-grid is a non-empty mapping of key.path: [values]"))
            continue
        axes = {}
        for key, values in sub.items():
            key = str(key)
            if key not in known:
                section = key.split(".")[0]
                hint = C._suggest(key, known)
                if section not in C.SECTIONS_IN_TRIAL:
                    hint += f" (axes live under {', '.join(s + '.' for s in C.SECTIONS_IN_TRIAL)})"
                issues.append(C.ConfigIssue(f"{where}.{key}", f"not a key a grid axis can sweep{hint}"))
                continue
            if isinstance(values, dict):
                issues.append(C.ConfigIssue(f"{where}.{key}", "axis values are a list such as [4, 8, 16]"))
                continue
            values = values if isinstance(values, list) else [values]  # a scalar fixes the key
            if not values:
                issues.append(C.ConfigIssue(f"{where}.{key}", "empty list of values: give at least one"))
                continue
            axes[key] = values
        out.append(axes)
    return out, issues


def expand(base_raw: dict[str, Any]) -> tuple[C.Sweep, list[Trial]]:
    """The validated sweep and all its trials; raises ConfigError listing every problem."""
    sweep, base_issues = C.validate_sweep(base_raw)
    subgrids, issues = _subgrids(base_raw.get("grid"))
    issues = base_issues + issues
    seen_base = {(i.path, i.message) for i in base_issues}
    trials: list[Trial] = []
    seen_cells = set()
    multi = isinstance(base_raw.get("grid"), list)
    for g, axes in enumerate(subgrids):
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            cell = dict(zip(keys, values, strict=False))
            trial, cell_issues = C.validate_trial(resolve(base_raw, cell))
            if trial is not None:
                # the union of sub-grids runs a configuration once, however its cells spell it
                fingerprint = json.dumps(trial.model_dump(mode="json"), sort_keys=True)
                if fingerprint in seen_cells:
                    continue
                seen_cells.add(fingerprint)
            prefix = (f"grid[{g}]" if multi else "grid") + f" ({', '.join(f'{k}={v}' for k, v in cell.items())})"
            for issue in cell_issues:
                if (issue.path, issue.message) not in seen_base:
                    issues.append(C.ConfigIssue(f"{prefix} {issue.path}".strip(), issue.message))
            if trial is not None:
                trials.append(Trial(len(trials), g, cell, trial))
    if sweep is not None and sweep.resources.resolved_executor() == "actor":
        kept = sorted({t.config.train.keep_last for t in trials})
        if len(kept) > 1:
            issues.append(C.ConfigIssue("train.keep_last", (
                f"the grid gives several values {kept}, but with the actor executor Tune keeps the same number "
                "of checkpoints for every trial; use one value, or set resources.executor: train")))
    if issues:
        raise C.ConfigError(str(base_raw.get("name", "grid")), _dedupe(issues))
    return sweep, trials


def _dedupe(issues: list[C.ConfigIssue]) -> list[C.ConfigIssue]:
    return list(dict.fromkeys(issues))


def load(path, overrides: list[str] | None = None) -> tuple[dict[str, Any], C.Sweep, list[Trial]]:
    """Read grid.yaml, apply overrides, validate everything. Returns (raw, sweep, trials)."""
    raw = C.read_yaml(path)
    issues = C.apply_overrides(raw, list(overrides or []))
    if issues:
        raise C.ConfigError(str(path), issues)
    try:
        sweep, trials = expand(raw)
    except C.ConfigError as exc:
        raise C.ConfigError(str(path), exc.issues) from None
    return raw, sweep, trials


def param_space(trials: list[Trial]) -> dict[str, Any]:
    """Tune param_space: one grid axis over the cells (see module docstring)."""
    from ray import tune

    return {"cell": tune.grid_search([t.cell for t in trials])}
