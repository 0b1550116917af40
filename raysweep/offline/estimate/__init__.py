"""Wall-time and device-hour estimates of a sweep from a short calibration on this machine.

`raysweep plan grid.yaml --calibrate` runs a few steps of one representative trial per distinct *shape*
(what determines step and eval time: shapes.py) in this process (no Ray, `LocalSession`, the trial's
torch thread count) and caches the measurements (calibration.py; keyed by shape + hardware: hardware.py).
`estimate` (model.py) then prices every trial of the grid and lays the trials out on the sweep's slots the
way Tune does, with Ray's part of a trial's life from constants.py; `plan` without `--calibrate` and the
`run` header use the cached calibrations when they cover the whole grid (`run` never calibrates).

It is an upper bound when trials can stop early (search.scheduler asha/median, train.early_stopping), and
it assumes the machine runs nothing else: another job on the same cores slows every trial (on a 2-core
machine a second sweep made the quickstart take 1.6–2.0× the estimate; benchmarks/RESULTS.md (g)). Which
reused actor gets which trial is Tune's choice; the schedule assumes the slot that frees first (lowest
index on a tie), so a re-tokenization when Tune swaps seeds between actors (~0.8 s a trial there) is not
predicted.

This module: what the CLI calls (for_sweep, header_line, human, hours_text, local_slots) and the names of
the modules below, re-exported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from raysweep.offline.estimate.calibration import (
    Calibration,
    cache_path,
    cached_for,
    calibrate,
    calibrate_all,
    load_cache,
    save_cache,
)
from raysweep.offline.estimate.constants import (
    ACTOR_END_S,
    ACTOR_REUSE_S,
    ACTOR_START_S,
    CALIBRATION_FILE,
    CALIBRATION_VERSION,
    CONTENTION,
    RUN_START_S,
    RUN_STOP_S,
    TRAIN_END_S,
    TRAIN_START_S,
)
from raysweep.offline.estimate.hardware import cache_key, hardware
from raysweep.offline.estimate.model import (
    Estimate,
    TrialEstimate,
    device_hours,
    estimate,
    makespan,
    schedule,
    trial_counts,
)
from raysweep.offline.estimate.shapes import shape_key

__all__ = [
    "ACTOR_END_S", "ACTOR_REUSE_S", "ACTOR_START_S", "CALIBRATION_FILE", "CALIBRATION_VERSION", "CONTENTION",
    "RUN_START_S", "RUN_STOP_S", "TRAIN_END_S", "TRAIN_START_S", "Calibration", "Estimate", "TrialEstimate",
    "cache_key", "cache_path", "cached_for", "calibrate", "calibrate_all", "device_hours", "estimate",
    "for_sweep", "hardware", "header_line", "hours_text", "human", "load_cache", "local_slots", "makespan",
    "save_cache", "schedule", "shape_key", "sweep_trials", "trial_counts",
]


def local_slots(resources) -> int:
    """Trials at once on a local Ray of this machine (no Ray started)."""
    from raysweep.sweep.resources import trials_at_once

    return trials_at_once(resources, os.cpu_count() or 1, len(hardware()["gpus"]))


def sweep_trials(trials, search) -> tuple[list[dict[str, Any]], list[int]]:
    """The trial configs in the order Tune starts them (the grid, once per sample) and their cell indices.
    Ranges count at their representative values; Optuna's num_samples trials are assumed to cycle through
    the cells of its lists (which it really picks is learned while it runs)."""
    from raysweep.config import grid as G

    configs = [G.run_config(t.config) for t in trials]
    if search.algorithm == "optuna":
        picks = [i % len(trials) for i in range(search.num_samples)]
        return [configs[i] for i in picks], [trials[i].index for i in picks]
    return configs * search.num_samples, [t.index for t in trials] * search.num_samples


def for_sweep(sweep, trials, slots: int | None = None, calibrate_now: bool = False,
              log: Callable[[str], None] | None = None) -> tuple[Estimate | None, str]:
    """(estimate or None, one line saying where the numbers come from or why there are none)."""
    configs, cells = sweep_trials(trials, sweep.search)
    if calibrate_now:
        calibrations = calibrate_all(configs, log=log)
        source = (f"calibrated now: {len(calibrations)} trial shape(s) in "
                  f"{sum(c.seconds for c in calibrations.values()):.0f} s, cached in {cache_path()}")
    else:
        calibrations, missing = cached_for(configs)
        if missing:
            return None, (f"no time estimate: {len(missing)} of {len(missing) + len(calibrations)} trial shape(s) "
                          "not calibrated on this machine; add --calibrate")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(min(c.calibrated_at for c in calibrations.values())))
        source = f"cached calibration of {when} ({cache_path()}); refresh it with --calibrate"
    slots = slots or local_slots(sweep.resources)
    return estimate(configs, calibrations, slots, sweep.resources.resolved_executor(), cells), source


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def hours_text(hours: dict[str, float]) -> str:
    return ", ".join(f"{v:.3g} {k}-hours" for k, v in sorted(hours.items())) or "0 CPU-hours"


def header_line(sweep, trials, slots: int) -> str | None:
    """The `run` header's estimate line from cached calibrations, or None (never calibrates)."""
    try:
        est, _ = for_sweep(sweep, trials, slots=slots)
    except Exception:  # noqa: BLE001 - an estimate must never stop a sweep from starting
        return None
    if est is None:
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(est.calibrated_at))
    return f"estimated: ~{est.wall_s / 60:.1f} min wall, {hours_text(est.device_hours)} (calibrated {when})"
