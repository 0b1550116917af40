"""Calibrating a trial shape on this machine (a few seconds of training in this process) and the cache.

`raysweep plan grid.yaml --calibrate` runs a few steps of one representative trial per distinct shape
(shapes.py) in this process (no Ray, a `LocalSession`, the trial's torch thread count) and caches the
measurements (`calibration.json` in the builtin cache directory, keyed by shape + hardware: hardware.py).
The durations of the evals, checkpoint writes, data set-up and on_train_end come from the trial's own
timing metrics (sys/eval_s, sys/checkpoint_s, ...: trial/loop.py); the copy of each checkpoint into
storage is timed around the session (`_CalibrationSession`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raysweep.experiment import metrics as M
from raysweep.offline.estimate.constants import CALIBRATION_FILE, CALIBRATION_VERSION
from raysweep.offline.estimate.hardware import cache_key, device_for, hardware
from raysweep.offline.estimate.shapes import shape_key, short_name
from raysweep.trial.session import LocalSession


@dataclass
class Calibration:
    shape: str  # shape_key
    device: str  # 'cpu' or the GPU's name
    threads: int  # torch threads (cpus_per_worker)
    step_s: float  # one optimizer step (all micro-batches, clipping, optimizer, adapter hooks)
    eval_s: float  # one evaluation of the eval split
    ckpt_s: float  # one checkpoint: write + copy into storage
    fixed_s: float  # the rest of a trial on a warm process: setup on the cached base, on_train_end, reports
    end_s: float  # of which adapter.on_train_end (SubLoRA bounds, masked validation), for display
    torch_import_s: float  # `import torch` in a fresh process
    import_s: float  # then transformers, peft and the raysweep trial/adapter modules
    model_load_s: float  # base model from disk (first trial of a process, or a different base)
    data_s: float  # tokenizing the data (first trial of a process, or other data/seed than the last)
    train_examples: int  # size of the train split (steps of `train.epochs` budgets)
    calibrated_at: float  # unix time
    seconds: float  # how long the calibration took
    hardware: dict[str, Any] = field(default_factory=dict)
    task_eval_s: float = 0.0  # one evaluation of the task metrics (evaluate:), not in fixed_s
    baseline_s: float = 0.0  # the untuned base's task metrics (once per sweep and base), not in fixed_s

    def warm_trial_s(self, steps: int, evals: int, checkpoints: int, task_evals: int = 0) -> float:
        return (self.fixed_s + steps * self.step_s + evals * self.eval_s + checkpoints * self.ckpt_s
                + task_evals * self.task_eval_s)


# ---------------------------------------------------------------------------------------- cache


def cache_path() -> Path:
    from raysweep.inputs.cache import default_cache_dir

    return default_cache_dir() / CALIBRATION_FILE


def load_cache(path: Path | None = None) -> dict[str, Calibration]:
    """cache key -> Calibration; a missing, unreadable or older-version file is an empty cache."""
    path = path or cache_path()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if raw.get("version") != CALIBRATION_VERSION:
        return {}
    out = {}
    for key, entry in (raw.get("entries") or {}).items():
        with contextlib.suppress(TypeError):
            out[key] = Calibration(**entry)
    return out


def save_cache(calibrations: dict[str, Calibration], path: Path | None = None) -> Path:
    """Merge `calibrations` into the cache file (written atomically; later entries replace older ones)."""
    path = path or cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = load_cache(path) | calibrations
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"version": CALIBRATION_VERSION,
                               "entries": {k: asdict(v) for k, v in merged.items()}}, indent=1))
    os.replace(tmp, path)
    return path


def cached_for(trials: list[dict[str, Any]], cache: dict[str, Calibration] | None = None,
               hw: dict[str, Any] | None = None) -> tuple[dict[str, Calibration], list[str]]:
    """(shape -> cached calibration, shapes with none) for these trial configs on this hardware."""
    cache = load_cache() if cache is None else cache
    found, missing = {}, []
    for shape in dict.fromkeys(shape_key(t) for t in trials):
        entry = cache.get(cache_key(shape, hw))
        if entry is None:
            missing.append(shape)
        else:
            found[shape] = entry
    return found, missing


# ----------------------------------------------------------------------------------- measuring


_IMPORTS = ("torch", "transformers", "peft")


def import_costs(adapter_type: str) -> tuple[float, float]:
    """(torch import s, transformers + peft + raysweep trial/adapter imports s) of a fresh process.

    Timed here when this process has not imported them yet (the `plan` CLI), else in a fresh
    subprocess (what an actor or Train worker pays)."""
    if not any(m in sys.modules for m in _IMPORTS):
        import importlib

        from raysweep import adapters

        t0 = time.perf_counter()
        import torch  # noqa: F401

        t1 = time.perf_counter()
        for name in ("transformers", "peft", "raysweep.trial.loop", "raysweep.inputs.data"):
            importlib.import_module(name)
        adapters.get(adapter_type)
        return t1 - t0, time.perf_counter() - t1
    code = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
            "import transformers, peft, raysweep.trial.loop, raysweep.inputs.data; from raysweep import adapters; "
            f"adapters.get({adapter_type!r}); print(t1 - t0, time.perf_counter() - t1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    torch_s, rest_s = (float(x) for x in out.stdout.split()[-2:])
    return torch_s, rest_s


class _CalibrationSession(LocalSession):
    """A LocalSession that computes where the trial would under Ray and times each checkpoint's copy into
    storage (the trial's loop times the write; the copy is the session's)."""

    def __init__(self, root: Path, gpu: bool) -> None:
        super().__init__(root)
        self.gpu = gpu
        self.copy_s: list[float] = []

    def device(self):
        import torch

        # a trial that reserves no GPU computes on the CPU under Ray: do the same here
        return torch.device("cuda" if self.gpu and torch.cuda.is_available() else "cpu")

    def report(self, metrics, checkpoint_dir=None):
        if checkpoint_dir is None:
            return super().report(metrics)
        t0 = time.perf_counter()
        super().report(metrics, checkpoint_dir)
        self.copy_s.append(time.perf_counter() - t0)


def _per_call(reports: list[dict[str, Any]], seconds_key: str, count_key: str) -> list[float]:
    """Seconds of each call behind a cumulative pair of timing metrics (e.g. sys/eval_s, sys/evals)."""
    out: list[float] = []
    seconds, count = 0.0, 0
    for row in reports:
        n = int(row.get(count_key, 0)) - count
        if n > 0:  # every eval and checkpoint is reported right away: n is 1
            out += [(row[seconds_key] - seconds) / n] * n
            seconds, count = row[seconds_key], int(row[count_key])
    return out


@dataclass
class _Run:
    """What one shortened run of a trial measured."""

    wall: float  # run_training, call → return
    evals: list[float]  # each evaluation
    writes: list[float]  # each checkpoint write (by the trial)
    copies: list[float]  # each checkpoint's copy into storage (by the session)
    data_s: float  # data set-up (tokenization, or the process's cached splits)
    end_s: float  # adapter.on_train_end
    train_examples: int
    first: dict[str, Any]  # its first report
    task_s: float = 0.0  # task metrics (evaluate:), every evaluation of them
    baseline_s: float = 0.0  # the untuned base's task metrics (computed by this run, else read: ~0)

    @classmethod
    def of(cls, wall: float, session: _CalibrationSession) -> _Run:
        reports = session.results
        return cls(wall=wall, evals=_per_call(reports, M.SYS_EVAL_S, M.SYS_EVALS),
                   writes=_per_call(reports, M.SYS_CHECKPOINT_S, M.SYS_CHECKPOINTS), copies=session.copy_s,
                   data_s=reports[0][M.SYS_DATA_S], end_s=reports[-1][M.SYS_END_S],
                   train_examples=int(reports[0][M.TRAIN_EXAMPLES]), first=reports[0],
                   task_s=reports[-1].get(M.SYS_TASK_EVAL_S, 0.0), baseline_s=reports[-1].get(M.SYS_BASELINE_S, 0.0))

    @property
    def ckpts(self) -> list[float]:
        """Each checkpoint: write + copy into storage."""
        return [w + c for w, c in zip(self.writes, self.copies, strict=False)]

    def untimed(self) -> float:
        """Wall time without its evals, checkpoints and task metrics."""
        return self.wall - sum(self.evals) - sum(self.writes) - sum(self.copies) - self.task_s - self.baseline_s


def _run(trial: dict[str, Any], steps: int, eval_every: int, store: Path, tasks: bool = False) -> _Run:
    """One shortened run of `trial` in this process; with `tasks`, its task metrics (evaluate:) too."""
    from raysweep.trial.loop import run_training

    cfg = json.loads(json.dumps(trial))
    if not tasks:
        cfg["evaluate"] = None
    cfg["train"] |= {"max_steps": steps, "epochs": None, "eval_every": eval_every, "checkpoint_every": None,
                     "early_stopping": {"patience": None, "min_rel_improvement": 0.0}}
    cfg["_store"] = str(store)

    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars and deprecation notes are not for `plan`
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = _CalibrationSession(Path(tmp), gpu=bool(cfg["resources"]["gpus_per_worker"]))
        t0 = time.perf_counter()
        run_training(cfg, session)
        wall = time.perf_counter() - t0
    return _Run.of(wall, session)


def calibrate(trial: dict[str, Any], target_s: float = 2.0, log: Callable[[str], None] | None = None,
              shared: dict[str, Any] | None = None) -> Calibration:
    """Measure one trial shape on this machine, without Ray (a few seconds of training).

    Runs, in this process with the trial's torch threads (run_training sets them; restored after):
    0. a run of 4 steps; the first one for its base model and data (`shared` remembers) empties the
       per-process cache first, so it pays the base-model load and tokenization as the first trial of a
       fresh actor does (the imports are timed before, see import_costs); later ones just warm up;
    1. a warm run of 4 steps (evals at step 0 and 4, one checkpoint): the fixed part of a trial;
    2. a warm run of 4 + N steps, N ≈ `target_s` of steps (10 ≤ N ≤ 400), evals and checkpoints at its
       middle and end.
    step_s = the difference of runs 2 and 1, both without their evals and checkpoints, ÷ N (start-up and
    end-of-training work cancel, as in benchmarks/step_time.py); eval_s and ckpt_s are the medians of the
    single calls (the trial's sys/eval_s and sys/checkpoint_s metrics, plus the copy into storage);
    fixed_s = run 1 − its steps, evals and checkpoints.
    `shared` carries process-level measurements between the shapes of one `calibrate_all`."""
    say = log or (lambda _msg: None)
    shared = {} if shared is None else shared
    started = time.perf_counter()
    shape = shape_key(trial)
    hw = hardware()
    if "imports" not in shared:  # first: it times the imports in this process when it can
        shared["imports"] = import_costs(trial["adapter"]["type"])
    torch_s, import_s = shared["imports"]
    import torch

    from raysweep.inputs import model_cache

    threads = torch.get_num_threads()
    cold_key = json.dumps([trial["model"], trial["data"]], sort_keys=True, default=str)
    n1 = 4
    say(f"calibrating {short_name(shape)}")
    try:
        with tempfile.TemporaryDirectory() as store:
            # run 0 also measures the task metrics, once (runs 1 and 2 leave them out): the baseline first (it
            # pays lm-eval's import, as the first trial of a sweep does), then one evaluation at its end
            if cold_key not in shared:
                model_cache.clear()
                cold = run0 = _run(trial, n1, n1, Path(store), tasks=True)  # run 0: cold base and data
            else:
                run0 = _run(trial, n1, n1, Path(store), tasks=True)  # run 0: warm-up (caches base and data)
            run1 = _run(trial, n1, n1, Path(store))
            if cold_key not in shared:
                shared[cold_key] = (max(0.0, cold.first[M.SYS_MODEL_LOAD_S] - run1.first[M.SYS_MODEL_LOAD_S]),
                                    max(0.0, cold.data_s - run1.data_s))
            loop1 = run1.untimed()
            rough = max(1e-4, (loop1 - run1.first[M.SYS_SETUP_S]) / n1)
            extra = int(min(400, max(10, math.ceil(target_s / rough))))
            n2 = n1 + extra
            run2 = _run(trial, n2, max(1, n2 // 2), Path(store))
            loop2 = run2.untimed()
    finally:
        torch.set_num_threads(threads)
    step_s = max(1e-6, (loop2 - loop1) / extra)
    eval_s = statistics.median(run1.evals + run2.evals)
    ckpts = run1.ckpts + run2.ckpts
    ckpt_s = statistics.median(ckpts) if ckpts else 0.0
    fixed_s = max(0.0, run1.wall - n1 * step_s - len(run1.evals) * eval_s - len(run1.writes) * ckpt_s)
    task_eval_s = run0.task_s
    model_load_s, data_s = shared[cold_key]
    say(f"  {step_s * 1000:.1f} ms/step ({n2} steps), eval {eval_s:.2f} s, checkpoint {ckpt_s:.2f} s, "
        f"fresh process {torch_s + import_s + model_load_s + data_s:.1f} s"
        + (f", task metrics {task_eval_s:.1f} s (baseline {run0.baseline_s:.1f} s)" if trial.get("evaluate") else ""))
    return Calibration(
        shape=shape, device=device_for(json.loads(shape), hw), threads=max(1, int(trial["resources"]["cpus_per_worker"])),
        step_s=step_s, eval_s=eval_s, ckpt_s=ckpt_s, fixed_s=fixed_s, end_s=run2.end_s, torch_import_s=torch_s,
        import_s=import_s, model_load_s=model_load_s, data_s=data_s, train_examples=run1.train_examples,
        calibrated_at=time.time(), seconds=time.perf_counter() - started, hardware=dict(hw),
        task_eval_s=task_eval_s, baseline_s=run0.baseline_s)


def calibrate_all(trials: list[dict[str, Any]], log: Callable[[str], None] | None = None,
                  path: Path | None = None) -> dict[str, Calibration]:
    """Calibrate every distinct shape of `trials` (the first trial of each is its representative),
    refresh the cache, and return shape -> Calibration."""
    from raysweep.inputs import model_cache

    out: dict[str, Calibration] = {}
    shared: dict[str, Any] = {}
    try:
        for trial in trials:
            shape = shape_key(trial)
            if shape not in out:
                out[shape] = calibrate(trial, log=log, shared=shared)
    finally:
        model_cache.clear()  # give the base model's memory back
    save_cache({cache_key(s): c for s, c in out.items()}, path)
    return out
