"""Sweep -> trials: expand the grid (a union of sub-grids) into cells, validate every cell, and resolve
the config each trial runs with (sweep/param_space.py turns the cells into Ray Tune's param_space).

Why not Tune's own `grid_search` per key: a sweep is a *union* of cartesian products ("LoRA and DoRA at
r16; SoRA at λ ∈ {0.1, 0.3, 0.5}"), which one product of independent axes cannot express. We expand
locally (so `plan` shows the exact trial list and every cell is validated before Ray starts) and hand
Tune a single grid axis whose values are the cells.

Ranges (`{loguniform: [1e-5, 1e-3]}`, ranges.py) stay in the cells as Tune domains: random search draws
them per cell and sample, Optuna samples the lists (as choices) and ranges of the one grid mapping.
A cell with ranges is validated at every end of every range, so no value Tune can draw is invalid.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from typing import Any

from raysweep.config import rules
from raysweep.config.issues import ConfigError, ConfigIssue, suggest
from raysweep.config.ranges import Range
from raysweep.config.ranges import parse as parse_range
from raysweep.config.schema import (
    SECTIONS_IN_TRIAL,
    Sweep,
    TrialConfig,
    axis_paths,
    validate_sweep,
    validate_trial,
)


@dataclass(frozen=True)
class Trial:
    index: int
    subgrid: int
    cell: dict[str, Any]  # axis key path -> value for this trial
    config: TrialConfig

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cell.items())


def resolve(base_raw: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The raw trial dict: base values with the cell's axis values set at their key paths."""
    raw = {k: copy.deepcopy(v) for k, v in base_raw.items() if k in TrialConfig.model_fields}
    for key, value in cell.items():
        set_path(raw, key, copy.deepcopy(value))
    return raw


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[a][b][c] = value for key "a.b.c", creating (or replacing non-mapping) parents on the way."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def trial_config(base_raw: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """The validated, JSON-ready config one trial runs with (what the worker receives)."""
    trial, issues = validate_trial(resolve(base_raw, cell))
    if trial is None:
        raise ConfigError("trial", issues)
    return run_config(trial)


def run_config(trial: TrialConfig) -> dict[str, Any]:
    """The JSON-ready dict the trial layer runs with: the validated config plus the resolved values it
    needs (executor, GPU memory cap, DeepSpeed ZeRO stage: None for ddp), so that trial/ never imports or
    re-validates through config/."""
    config = trial.model_dump(mode="json")
    config["resources"] |= {"executor": trial.resources.resolved_executor(),
                            "gpu_memory_fraction": trial.resources.resolved_gpu_memory_fraction(),
                            "zero_stage": rules.zero_stage(trial.resources.strategy)}
    return config


def _subgrids(grid: Any, algorithm: str = "grid") -> tuple[list[dict[str, list]], list[ConfigIssue]]:
    """Normalise `grid:` to a list of {axis: [values]} (a range is one value, a Range) and check its shape,
    axis names and ranges."""
    if grid in (None, {}, []):
        return [{}], []
    items = grid if isinstance(grid, list) else [grid]
    known = axis_paths()
    out, issues = [], []
    for i, sub in enumerate(items):
        where = f"grid[{i}]" if isinstance(grid, list) else "grid"
        if not isinstance(sub, dict) or not sub:
            issues.append(ConfigIssue(where, "a sub-grid is a non-empty mapping of key.path: [values]"))
            continue
        axes = {}
        for key, values in sub.items():
            key = str(key)
            if key not in known:
                section = key.split(".")[0]
                hint = suggest(key, known)
                if section not in SECTIONS_IN_TRIAL:
                    hint += f" (axes live under {', '.join(s + '.' for s in SECTIONS_IN_TRIAL)})"
                issues.append(ConfigIssue(f"{where}.{key}", f"not a key a grid axis can sweep{hint}"))
                continue
            if isinstance(values, dict):
                rng, problem = parse_range(values)
                if problem and algorithm == "grid":
                    problem = ("axis values are a list such as [4, 8, 16] (ranges such as {loguniform: [1e-5, 1e-3]} "
                               "need search.algorithm random or optuna)")
                elif problem is None and algorithm == "grid":
                    problem = (f"a range needs search.algorithm random or optuna (it is 'grid'); for a grid give "
                               f"a list of values such as [{rng.representative():.3g}]")
                if problem:
                    issues.append(ConfigIssue(f"{where}.{key}", problem))
                    continue
                if algorithm == "optuna" and not all(v is None or isinstance(v, str | int | float) for v in rng.args):
                    issues.append(ConfigIssue(f"{where}.{key}", (
                        "Optuna chooses among plain values (numbers, strings, booleans); use search.algorithm "
                        "random for a choice of lists or mappings")))
                    continue
                axes[key] = [rng]
                continue
            values = values if isinstance(values, list) else [values]  # a scalar fixes the key
            if algorithm == "optuna" and not all(v is None or isinstance(v, str | int | float) for v in values):
                issues.append(ConfigIssue(f"{where}.{key}", (
                    "Optuna chooses among plain values (numbers, strings, booleans); this axis has lists or "
                    "mappings: use search.algorithm grid or random for it")))
                continue
            if not values:
                issues.append(ConfigIssue(f"{where}.{key}", "empty list of values: give at least one"))
                continue
            axes[key] = values
        out.append(axes)
    return out, issues


def expand(base_raw: dict[str, Any]) -> tuple[Sweep, list[Trial]]:
    """The validated sweep and all its trials; raises ConfigError listing every problem."""
    sweep, base_issues = validate_sweep(base_raw)
    algorithm = sweep.search.algorithm if sweep else str((base_raw.get("search") or {}).get("algorithm", "grid"))
    subgrids, issues = _subgrids(base_raw.get("grid"), algorithm)
    issues = base_issues + issues
    seen_base = {(i.path, i.message) for i in base_issues}
    trials: list[Trial] = []
    seen_cells = set()
    multi = isinstance(base_raw.get("grid"), list)
    for g, axes in enumerate(subgrids):
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            cell = dict(zip(keys, values, strict=False))
            trial, cell_issues = _validate_cell(base_raw, cell)
            if trial is not None:
                # the union of sub-grids runs a configuration once, however its cells spell it
                fingerprint = json.dumps(trial.model_dump(mode="json"), sort_keys=True)
                if fingerprint in seen_cells:
                    continue
                seen_cells.add(fingerprint)
            # no axes: the base config's problems need no grid prefix
            prefix = ((f"grid[{g}]" if multi else "grid") + f" ({', '.join(f'{k}={v}' for k, v in cell.items())})"
                      if cell else "")
            for issue in cell_issues:
                if (issue.path, issue.message) not in seen_base:
                    issues.append(ConfigIssue(f"{prefix} {issue.path}".strip(), issue.message))
            if trial is not None:
                trials.append(Trial(len(trials), g, cell, trial))
    if sweep is not None and sweep.resources.resolved_executor() == "actor":
        kept = sorted({t.config.train.keep_last for t in trials})
        if len(kept) > 1:
            issues.append(ConfigIssue("train.keep_last", (
                f"the grid gives several values {kept}, but with the actor executor Tune keeps the same number "
                "of checkpoints for every trial; use one value, or set resources.executor: train")))
    if issues:
        raise ConfigError(str(base_raw.get("name", "grid")), _dedupe(issues))
    return sweep, trials


def _validate_cell(base_raw: dict[str, Any], cell: dict[str, Any]) -> tuple[TrialConfig | None, list[ConfigIssue]]:
    """The cell's trial config (ranges at their representative values) and the problems of any value its
    ranges can take (checked at every end of every range)."""
    ranged = [k for k, v in cell.items() if isinstance(v, Range)]
    middle = {k: (v.representative() if isinstance(v, Range) else v) for k, v in cell.items()}
    trial, issues = validate_trial(resolve(base_raw, middle))
    # corners of the ranges' box; capped so a cell with many ranges/choices cannot stall `plan` (8 ranges = 256)
    for ends in itertools.islice(itertools.product(*(cell[k].extremes() for k in ranged)), 256):
        at = dict(zip(ranged, ends, strict=True))
        _, more = validate_trial(resolve(base_raw, middle | at))
        where = ", ".join(f"{k}={v}" for k, v in at.items())
        issues += [ConfigIssue(i.path, f"{i.message} (at {where} of the range)") for i in more if i not in issues]
    if issues:
        trial = None
    return trial, list(dict.fromkeys(issues))


def trial_count(sweep: Sweep, trials: list[Trial]) -> int:
    """How many trials Tune will run: every cell num_samples times, or optuna's num_samples in total."""
    n = sweep.search.num_samples
    return n if sweep.search.algorithm == "optuna" else len(trials) * n


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return list(dict.fromkeys(issues))
