"""The pure scheduling model of a sweep's wall time and device-hours (no I/O, no torch).

One trial holds its slot for

    start-up + (fixed + steps·step_s + evals·eval_s + checkpoints·ckpt_s) · contention + end

- step_s, eval_s, ckpt_s, fixed (setup on a cached base, on_train_end work such as SubLoRA bounds or the
  masked validation, reports) and the fresh-process costs (torch import, transformers/peft/raysweep
  imports, base-model load, tokenization) are calibrated per shape and machine (calibration.py).
- start-up and end depend on the executor and are Ray's part (constants.py): with `actor`, the first trial
  on each slot starts a fresh actor (Ray actor start + the fresh-process costs); a trial that follows
  another on the same slot only pays a reset, plus re-tokenization when its data or seed differ from the
  previous trial's and a model load when its base model differs (inputs/model_cache.py keeps one of each per
  process). With `train`, every trial starts fresh processes.
- the wall time is greedy list scheduling of the trials, in Tune's order, onto `slots` (each trial starts
  on the slot that frees first, as Tune fills a free slot with the next pending trial), plus the command's
  own start and stop (CLI start, ray.init, Tuner, ray.shutdown).
- device-hours: Σ trial seconds × the GPUs a trial reserves (or its CPUs when it asks for no GPU) / 3600.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raysweep.offline.estimate.constants import (
    ACTOR_END_S,
    ACTOR_REUSE_S,
    ACTOR_START_S,
    CONTENTION,
    RUN_START_S,
    RUN_STOP_S,
    TRAIN_END_S,
    TRAIN_START_S,
)
from raysweep.offline.estimate.shapes import shape_key

if TYPE_CHECKING:
    from raysweep.offline.estimate.calibration import Calibration


@dataclass
class TrialEstimate:
    index: int  # position in the (repeated) trial list
    cell: int  # index of the grid cell (Trial.index)
    slot: int
    start_at: float  # seconds after the first trial started
    seconds: float  # how long it holds its slot
    startup_s: float  # of which start-up and end (executor, imports, loads)


@dataclass
class Estimate:
    trials: list[TrialEstimate]
    slots: int
    executor: str
    makespan_s: float  # first trial start → last trial end
    overhead_s: float  # the command's start and stop around the trials
    device_hours: dict[str, float]  # "CPU" / "GPU" -> hours reserved
    calibrated_at: float  # the oldest calibration used
    contention: float
    notes: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.makespan_s + self.overhead_s

    def cell_seconds(self) -> dict[int, float]:
        """Grid cell -> seconds of its first sample (the plan table's est. column)."""
        out: dict[int, float] = {}
        for t in self.trials:
            out.setdefault(t.cell, t.seconds)
        return out


def task_evaluations(trial: dict[str, Any], evals: int) -> int:
    """How many times a trial computes its task metrics: every eval after step 0 (when: every_eval), else once."""
    evaluate = trial.get("evaluate") or {}
    if not evaluate:
        return 0
    return max(1, evals - 1) if evaluate.get("when") == "every_eval" else 1


def trial_counts(train: dict[str, Any], train_examples: int, world_size: int = 1) -> tuple[int, int, int]:
    """(optimizer steps, evals, checkpoints) of a trial that runs to its end (trial/loop.py run_training)."""
    if train.get("max_steps"):
        steps = int(train["max_steps"])
    else:
        per_step = train["batch_size"] * train.get("grad_accum_steps", 1) * world_size
        steps = max(1, math.ceil(train["epochs"] * train_examples / per_step))
    every = int(train["eval_every"])
    ckpt_every = int(train.get("checkpoint_every") or every)
    evals = 1 + steps // every + (1 if steps % every else 0)  # step 0, every eval_every, the last step
    checkpoints = steps // ckpt_every + (1 if steps % ckpt_every else 0)
    return steps, evals, checkpoints


def schedule(durations: list[Callable[[int, Any], tuple[float, Any]]] | list[float], slots: int
             ) -> list[tuple[int, float, float]]:
    """Greedy list scheduling in order: each job starts on the slot that frees first (lowest index on a
    tie), as Tune starts the next pending trial when a slot frees. `durations` are seconds, or callables
    (slot, slot state) -> (seconds, new slot state) for costs that depend on what ran there before.
    Returns (slot, start, seconds) per job."""
    free = [0.0] * max(1, slots)
    state: list[Any] = [None] * len(free)
    out = []
    for job in durations:
        slot = min(range(len(free)), key=lambda s: (free[s], s))
        if callable(job):
            seconds, state[slot] = job(slot, state[slot])
        else:
            seconds = float(job)
        out.append((slot, free[slot], seconds))
        free[slot] += seconds
    return out


def makespan(placed: list[tuple[int, float, float]]) -> float:
    return max((start + seconds for _, start, seconds in placed), default=0.0)


def device_hours(trial_seconds: list[float], resources: list[dict[str, Any]]) -> dict[str, float]:
    """Σ seconds × reserved units / 3600 per resource type: GPUs when a trial reserves any, else CPUs."""
    out: dict[str, float] = {}
    for seconds, res in zip(trial_seconds, resources, strict=True):
        workers = res.get("num_workers", 1)
        kind, units = ("GPU", res["gpus_per_worker"]) if res.get("gpus_per_worker") else ("CPU", res["cpus_per_worker"])
        out[kind] = out.get(kind, 0.0) + seconds * units * workers / 3600
    return out


def estimate(trials: list[dict[str, Any]], calibrations: dict[str, Calibration], slots: int, executor: str,
             cells: list[int] | None = None, overhead_s: float | None = None) -> Estimate:
    """Price every trial (configs in Tune's order, repeats included) and schedule them on `slots`."""
    cells = cells if cells is not None else list(range(len(trials)))
    on_gpu = any(t["resources"]["gpus_per_worker"] for t in trials)
    contention = CONTENTION if slots > 1 and not on_gpu else 1.0
    jobs = []
    baselines: set[str] = set()  # the untuned base is evaluated once per sweep and base (trial/task_baseline.py)
    for trial in trials:
        cal = calibrations[shape_key(trial)]
        steps, evals, ckpts = trial_counts(trial["train"], cal.train_examples, trial["resources"]["num_workers"])
        work = cal.warm_trial_s(steps, evals, ckpts, task_evaluations(trial, evals)) * contention
        evaluate = trial.get("evaluate") or {}
        if evaluate.get("baseline") and (key := json.dumps([trial["model"], evaluate], sort_keys=True)) not in baselines:
            baselines.add(key)
            work += cal.baseline_s * contention
        model_key = json.dumps(trial["model"], sort_keys=True)
        data_key = json.dumps([trial["model"], trial["data"], trial["train"]["seed"]], sort_keys=True)
        fresh = (cal.torch_import_s + cal.import_s + cal.model_load_s + cal.data_s) * contention

        def job(slot, last, work=work, fresh=fresh, cal=cal, model_key=model_key, data_key=data_key):
            if executor == "train":  # fresh processes per trial; torch imports are inside TRAIN_START_S
                start = TRAIN_START_S + (cal.import_s + cal.model_load_s + cal.data_s) * contention + TRAIN_END_S
            elif last is None:  # a new actor on this slot
                start = ACTOR_START_S + fresh + ACTOR_END_S
            else:  # reused actor: reloads only what differs from its previous trial (inputs/model_cache.py)
                start = ACTOR_REUSE_S + ACTOR_END_S
                start += cal.model_load_s * contention if last[0] != model_key else 0.0
                start += cal.data_s * contention if last[1] != data_key else 0.0
            return (start + work, start), (model_key, data_key)

        jobs.append(job)
    # schedule() takes (seconds, state); keep start-up per job alongside
    startups: list[float] = []

    def seconds_only(job):
        def run(slot, last):
            (seconds, start), new = job(slot, last)
            startups.append(start)
            return seconds, new
        return run

    placed = schedule([seconds_only(j) for j in jobs], slots)
    estimates = [TrialEstimate(i, cells[i], slot, start, seconds, startups[i])
                 for i, (slot, start, seconds) in enumerate(placed)]
    notes = []
    devices = {c.device for c in calibrations.values()}
    if on_gpu and devices == {"cpu"}:
        notes.append("calibrated on the CPU (no GPU here) although the trials ask for GPUs: CPU times")
    if any(t["resources"]["num_workers"] > 1 for t in trials):
        notes.append("multi-worker trials calibrated as one process (DDP communication not included)")
    return Estimate(
        trials=estimates, slots=slots, executor=executor, makespan_s=makespan(placed),
        overhead_s=RUN_START_S + RUN_STOP_S if overhead_s is None else overhead_s,
        device_hours=device_hours([e.seconds for e in estimates], [t["resources"] for t in trials]),
        calibrated_at=min(c.calibrated_at for c in calibrations.values()), contention=contention, notes=notes)
