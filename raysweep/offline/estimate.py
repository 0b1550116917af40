"""Wall-time and device-hour estimates of a sweep from a short calibration on this machine.

`raysweep plan grid.yaml --calibrate` runs a few steps of one representative trial per distinct *shape*
(what determines step and eval time: `shape_key`) in this process (no Ray, `LocalSession`, the trial's
torch thread count) and caches the measurements (`calibration.json` in the builtin cache directory,
keyed by shape + hardware). `estimate` then prices every trial of the grid and lays the trials out on
the sweep's slots the way Tune does; `plan` without `--calibrate` and the `run` header use the cached
calibrations when they cover the whole grid (`run` never calibrates).

The model of one trial (seconds it holds its slot):

    start-up + (fixed + steps·step_s + evals·eval_s + checkpoints·ckpt_s) · contention + end

- step_s, eval_s, ckpt_s, fixed (setup on a cached base, on_train_end work such as SubLoRA bounds or the
  masked validation, reports) and the fresh-process costs (torch import, transformers/peft/raysweep
  imports, base-model load, tokenization) are calibrated here, per shape and machine.
- start-up and end depend on the executor and are Ray's part (constants below, measured on this 2-core
  machine; benchmarks/RESULTS.md (c) and (g)): with `actor`, the first trial on each slot starts a fresh
  actor (Ray actor start + the fresh-process costs); a trial that follows another on the same slot only
  pays a reset, plus re-tokenization when its data or seed differ from the previous trial's and a model
  load when its base model differs (model_cache.py keeps one of each per process). With `train`, every
  trial starts fresh processes.
- the wall time is greedy list scheduling of the trials, in Tune's order, onto `slots` (each trial
  starts on the slot that frees first, as Tune fills a free slot with the next pending trial), plus the
  command's own start and stop (CLI start, ray.init, Tuner, ray.shutdown).
- device-hours: Σ trial seconds × the GPUs a trial reserves (or its CPUs when it asks for no GPU) / 3600.

It is an upper bound when trials can stop early (search.scheduler asha/median, train.early_stopping), and
it assumes the machine runs nothing else: another job on the same cores slows every trial (on this 2-core
machine a second sweep made the quickstart take 1.6–2.0× the estimate; RESULTS (g)). Which reused actor
gets which trial is Tune's choice; the schedule assumes the slot that frees first (lowest index on a tie),
so a re-tokenization when Tune swaps seeds between actors (~0.8 s a trial here) is not predicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 1  # bump when what a Calibration measures changes: older entries are ignored

# ---- Ray's part of a trial's life, measured on this machine (2-core AMD EPYC, Ray 2.60, local Ray) ----
# Measured with `python -m raysweep.offline.estimate search_spaces/quickstart.yaml train.max_steps=20
# train.eval_every=10 'grid.adapter.type=[lora]' --storage DIR --no-dashboard` (a separate 4-trial sweep,
# not the quickstart; medians of 3 runs; benchmarks/RESULTS.md (g)) unless RESULTS (c) is named.
# actor executor, first trial on a slot: Tune launches the trial → its training loop is ready (5.94, 5.13,
# 5.04 s), minus the fresh-process costs calibrated on this machine (torch, transformers/peft imports,
# model load, tokenization: 5.69 s) × CONTENTION. Negative: each actor starts importing the moment its
# process starts (raysweep/warmup.py), before Tune reports the trial launched.
ACTOR_START_S = -0.8
# actor executor, a trial that follows another on the same (reused) actor: Tune's actor reset (0.005 s;
# RESULTS (c): 0.02 s).
ACTOR_REUSE_S = 0.01
# last report → Tune sees the trial end and frees the slot: actor 0.31 s (0.32, 0.31, 0.30; RESULTS (c):
# 0.33 s); train 3.78 s (RESULTS (c)).
ACTOR_END_S = 0.31
TRAIN_END_S = 3.78
# train executor, every trial: slot free → our training code runs (three process starts, torch/ray
# imports in each, Train controller and worker group), 1 worker, 2 cores. RESULTS (c): 17.4 s. The
# transformers/peft imports, model load and tokenization come on top (calibrated).
TRAIN_START_S = 17.4
# the `run` command around the trials: CLI start, imports, ray.init and Tuner set-up before the first
# trial is launched (7.80, 7.82, 6.89 s), summary, ray.shutdown and exit after the last one ends (0.73,
# 0.71, 0.68 s).
RUN_START_S = 7.8
RUN_STOP_S = 0.71
# two 1-thread trials running at once on this 2-core machine each run slower than one alone (shared
# caches and memory bandwidth, plus Ray's own processes): RESULTS (c), "warm pair" ÷ "ideal", median over
# 3 repeats of 1.03, 1.07, 1.04. Applied to CPU trials whenever more than one slot runs at once.
CONTENTION = 1.04

# adapter options that do not change what a step computes (values, seeds, schedules): trials that differ
# only in these share a calibration. Everything else in the adapter section is part of the shape.
_ADAPTER_VALUE_KEYS = frozenset({
    "alpha", "lambda", "lambda_", "lambda_schedule", "lambda_final", "threshold", "gate_lr", "gate_l1",
    "sparsity", "mask_seed", "projector_seed", "allocation_ratio", "split_lr", "mask_temperature",
    "bound_delta",
})
# train keys that change the cost of one step or one eval (the counts — max_steps, epochs, eval_every,
# checkpoint_every — are multiplied by the estimate instead; lr, seed, schedules change no cost)
_TRAIN_SHAPE_KEYS = ("batch_size", "eval_batch_size", "grad_accum_steps", "bf16", "gradient_checkpointing")


# --------------------------------------------------------------------------------------- shape


def shape_key(trial: dict[str, Any]) -> str:
    """What determines a trial's step, eval and start-up time, as canonical JSON.

    The whole model and data sections (model, dtype, quantization; task, files, max_seq_len, example
    caps), the adapter's type and every option that changes compute (r, target_modules, dropout,
    intrinsic_dim, allocation_mode, projector, bounds settings, mask kind and importance, ...), the batch
    sizes, gradient accumulation, precision, gradient checkpointing, whether gradients are clipped, and
    the trial's workers/CPUs/GPUs. Seeds, learning rates, λ, sparsity and step counts are not in it."""
    train = trial["train"]
    res = trial["resources"]
    adapter = {k: v for k, v in trial["adapter"].items() if k not in _ADAPTER_VALUE_KEYS}
    shape = {
        "model": trial["model"],
        "data": trial["data"],
        "adapter": adapter,
        "train": {k: train.get(k) for k in _TRAIN_SHAPE_KEYS} | {"clip": bool(train.get("max_grad_norm"))},
        "resources": {k: res[k] for k in ("num_workers", "cpus_per_worker", "gpus_per_worker")},
    }
    return json.dumps(shape, sort_keys=True, default=str)


def _short(shape: str) -> str:
    """A readable name of a shape for messages."""
    s = json.loads(shape)
    a = s["adapter"]
    return f"{s['model']['name_or_path']} {a['type']} r={a.get('r')}"


# ------------------------------------------------------------------------------------ hardware


_HARDWARE: dict[str, Any] | None = None


def _gpu_names() -> list[str]:
    """GPU names without importing torch (nvidia-smi), so `plan` and the `run` header stay light."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine a calibration holds for: CPU model, cores, GPU names."""
    global _HARDWARE
    if _HARDWARE is None:
        _HARDWARE = {"cpu": _cpu_model(), "cores": os.cpu_count() or 1, "gpus": _gpu_names()}
    return _HARDWARE


def _device_for(shape: dict[str, Any], hw: dict[str, Any]) -> str:
    """Where a trial of this shape computes here: a GPU if it asks for one and one exists, else the CPU."""
    return hw["gpus"][0] if shape["resources"]["gpus_per_worker"] and hw["gpus"] else "cpu"


def cache_key(shape: str, hw: dict[str, Any] | None = None) -> str:
    """Cache key of a calibration: shape + hardware + the threads (cpus_per_worker) it ran with."""
    hw = hw or hardware()
    s = json.loads(shape)
    ident = {"v": CALIBRATION_VERSION, "shape": s, "cpu": hw["cpu"], "cores": hw["cores"],
             "device": _device_for(s, hw), "threads": max(1, int(s["resources"]["cpus_per_worker"]))}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------------- calibration


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
    import_s: float  # then transformers, peft and the raysweep worker/adapter modules
    model_load_s: float  # base model from disk (first trial of a process, or a different base)
    data_s: float  # tokenizing the data (first trial of a process, or other data/seed than the last)
    train_examples: int  # size of the train split (steps of `train.epochs` budgets)
    calibrated_at: float  # unix time
    seconds: float  # how long the calibration took
    hardware: dict[str, Any] = field(default_factory=dict)

    def warm_trial_s(self, steps: int, evals: int, checkpoints: int) -> float:
        return self.fixed_s + steps * self.step_s + evals * self.eval_s + checkpoints * self.ckpt_s


def cache_path() -> Path:
    from raysweep.inputs.builtin import default_cache_dir

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


_IMPORTS = ("torch", "transformers", "peft")


def _import_costs(adapter_type: str) -> tuple[float, float]:
    """(torch import s, transformers + peft + raysweep worker/adapter imports s) of a fresh process.

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


class _Timers:
    """Wall time of the calls a calibration run makes to evaluate / checkpoint / on_train_end / setup_data."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self.active: list[str] = []
        self.extra: dict[str, Any] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self.active:  # nested (e.g. an eval inside on_train_end): counted by the outer call only
                return fn(*args, **kwargs)
            self.active.append(name)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append(time.perf_counter() - t0)
                self.active.pop()
        return timed

    def total(self, *names: str) -> float:
        return sum(sum(self.calls.get(n, [])) for n in names)

    def count(self, name: str) -> int:
        return len(self.calls.get(name, []))


@contextlib.contextmanager
def _instrumented(adapter_type: str) -> Iterator[_Timers]:
    """Times the worker's evals, checkpoint writes, data set-up and the adapter's on_train_end, in this
    process, for the duration of the block (module attributes patched and restored)."""
    from raysweep import adapters
    from raysweep.trial import checkpointing, loop
    from raysweep.trial.session import LocalSession

    timers = _Timers()
    cls = adapters.get(adapter_type)
    saved = [(loop, "evaluate"), (loop, "setup_data"), (checkpointing, "save"), (cls, "on_train_end"),
             (LocalSession, "report")]
    # (object, name, its own attribute or None when inherited: then the patch is deleted, not overwritten)
    originals = [(obj, name, vars(obj).get(name)) for obj, name in saved]
    setup_data = loop.setup_data

    def record_data(config, tokenizer):
        train, evals = setup_data(config, tokenizer)
        timers.extra["train_examples"] = len(train)
        return train, evals

    original_report = LocalSession.report

    def report(self, metrics, checkpoint_dir=None):  # the copy into storage belongs to the checkpoint
        if checkpoint_dir is None:
            return original_report(self, metrics, checkpoint_dir)
        return timers.wrap("ckpt_copy", original_report)(self, metrics, checkpoint_dir)

    try:
        loop.evaluate = timers.wrap("eval", loop.evaluate)
        loop.setup_data = timers.wrap("data", record_data)
        checkpointing.save = timers.wrap("ckpt", checkpointing.save)
        cls.on_train_end = timers.wrap("end", cls.on_train_end)
        LocalSession.report = report
        yield timers
    finally:
        for obj, name, value in originals:
            if value is None:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


def _run(trial: dict[str, Any], steps: int, eval_every: int, store: Path) -> tuple[float, _Timers, dict]:
    """One shortened run of `trial` in this process: (wall s, timers, first report)."""
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    cfg = json.loads(json.dumps(trial))
    cfg["train"] |= {"max_steps": steps, "epochs": None, "eval_every": eval_every, "checkpoint_every": None,
                     "early_stopping": {"patience": None, "min_rel_improvement": 0.0}}
    cfg["_store"] = str(store)
    gpu = bool(cfg["resources"]["gpus_per_worker"])

    class _Session(LocalSession):
        # a trial that reserves no GPU computes on the CPU under Ray: do the same here
        def device(self):
            import torch

            return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")

    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars and deprecation notes are not for `plan`
    with tempfile.TemporaryDirectory() as tmp, _instrumented(cfg["adapter"]["type"]) as timers, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = _Session(Path(tmp))
        t0 = time.perf_counter()
        run_training(cfg, session)
        wall = time.perf_counter() - t0
    return wall, timers, session.results[0]


def calibrate(trial: dict[str, Any], target_s: float = 2.0, log: Callable[[str], None] | None = None,
              shared: dict[str, Any] | None = None) -> Calibration:
    """Measure one trial shape on this machine, without Ray (a few seconds of training).

    Runs, in this process with the trial's torch threads (run_training sets them; restored after):
    0. a run of 4 steps; the first one for its base model and data (`shared` remembers) empties the
       per-process cache first, so it pays the base-model load and tokenization as the first trial of a
       fresh actor does (the imports are timed before, see _import_costs); later ones just warm up;
    1. a warm run of 4 steps (evals at step 0 and 4, one checkpoint): the fixed part of a trial;
    2. a warm run of 4 + N steps, N ≈ `target_s` of steps (10 ≤ N ≤ 400), evals and checkpoints at its
       middle and end.
    step_s = the difference of runs 2 and 1, both without their timed evals and checkpoints, ÷ N
    (start-up and end-of-training work cancel, as in benchmarks/step_time.py); eval_s and ckpt_s are
    the medians of the timed calls; fixed_s = run 1 − its steps, evals and checkpoints.
    `shared` carries process-level measurements between the shapes of one `calibrate_all`."""
    say = log or (lambda _msg: None)
    shared = {} if shared is None else shared
    started = time.perf_counter()
    shape = shape_key(trial)
    hw = hardware()
    if "imports" not in shared:  # first: it times the imports in this process when it can
        shared["imports"] = _import_costs(trial["adapter"]["type"])
    torch_s, import_s = shared["imports"]
    import torch

    from raysweep.inputs import model_cache

    threads = torch.get_num_threads()
    cold_key = json.dumps([trial["model"], trial["data"]], sort_keys=True, default=str)
    n1 = 4
    say(f"calibrating {_short(shape)}")
    try:
        with tempfile.TemporaryDirectory() as store:
            if cold_key not in shared:
                model_cache.clear()
                _, cold, first = _run(trial, n1, n1, Path(store))  # run 0: cold base and data
            else:
                _run(trial, n1, n1, Path(store))  # run 0: warm-up (cache this trial's data and seed)
            wall1, t1, warm = _run(trial, n1, n1, Path(store))  # run 1
            if cold_key not in shared:
                shared[cold_key] = (max(0.0, first["sys/model_load_s"] - warm["sys/model_load_s"]),
                                    max(0.0, cold.calls["data"][0] - t1.calls["data"][0]))
            loop1 = wall1 - t1.total("eval", "ckpt", "ckpt_copy")
            rough = max(1e-4, (loop1 - warm["sys/setup_s"]) / n1)
            extra = int(min(400, max(10, math.ceil(target_s / rough))))
            n2 = n1 + extra
            wall2, t2, _ = _run(trial, n2, max(1, n2 // 2), Path(store))  # run 2
            loop2 = wall2 - t2.total("eval", "ckpt", "ckpt_copy")
    finally:
        torch.set_num_threads(threads)
    step_s = max(1e-6, (loop2 - loop1) / extra)
    eval_s = statistics.median(t1.calls.get("eval", []) + t2.calls.get("eval", []))
    ckpts = [a + b for a, b in zip(t1.calls.get("ckpt", []) + t2.calls.get("ckpt", []),
                                   t1.calls.get("ckpt_copy", []) + t2.calls.get("ckpt_copy", []), strict=False)]
    ckpt_s = statistics.median(ckpts) if ckpts else 0.0
    fixed_s = max(0.0, wall1 - n1 * step_s - t1.count("eval") * eval_s - t1.count("ckpt") * ckpt_s)
    model_load_s, data_s = shared[cold_key]
    say(f"  {step_s * 1000:.1f} ms/step ({n2} steps), eval {eval_s:.2f} s, checkpoint {ckpt_s:.2f} s, "
        f"fresh process {torch_s + import_s + model_load_s + data_s:.1f} s")
    return Calibration(
        shape=shape, device=_device_for(json.loads(shape), hw), threads=max(1, int(trial["resources"]["cpus_per_worker"])),
        step_s=step_s, eval_s=eval_s, ckpt_s=ckpt_s, fixed_s=fixed_s,
        end_s=statistics.median(t2.calls.get("end", [0.0])), torch_import_s=torch_s, import_s=import_s,
        model_load_s=model_load_s, data_s=data_s, train_examples=int(t1.extra.get("train_examples", 0)),
        calibrated_at=time.time(), seconds=time.perf_counter() - started, hardware=dict(hw))


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


# ------------------------------------------------------------------------------------ estimate


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


def trial_counts(train: dict[str, Any], train_examples: int, world_size: int = 1) -> tuple[int, int, int]:
    """(optimizer steps, evals, checkpoints) of a trial that runs to its end (loop.run_training)."""
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
    for trial in trials:
        cal = calibrations[shape_key(trial)]
        steps, evals, ckpts = trial_counts(trial["train"], cal.train_examples, trial["resources"]["num_workers"])
        work = cal.warm_trial_s(steps, evals, ckpts) * contention
        model_key = json.dumps(trial["model"], sort_keys=True)
        data_key = json.dumps([trial["model"], trial["data"], trial["train"]["seed"]], sort_keys=True)
        fresh = (cal.torch_import_s + cal.import_s + cal.model_load_s + cal.data_s) * contention

        def job(slot, last, work=work, fresh=fresh, cal=cal, model_key=model_key, data_key=data_key):
            if executor == "train":  # fresh processes per trial; torch imports are inside TRAIN_START_S
                start = TRAIN_START_S + (cal.import_s + cal.model_load_s + cal.data_s) * contention + TRAIN_END_S
            elif last is None:  # a new actor on this slot
                start = ACTOR_START_S + fresh + ACTOR_END_S
            else:  # reused actor: reloads only what differs from its previous trial (model_cache.py)
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


# ------------------------------------------------------------------------------ for the CLI


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


# ------------------------------------------------------------------- measuring the constants


def measure_run(args: list[str]) -> dict[str, Any]:
    """Run `python -m raysweep run ARGS` (timed, launch → exit) and read Ray's part of it back from the
    experiment's trials.csv and result.json files: how the constants above were measured, and how an
    estimate is checked against the actual wall time (benchmarks/RESULTS.md (g))."""
    import csv
    import re
    import statistics as st

    from raysweep.__main__ import _parser
    from raysweep.config import grid as G

    parsed = _parser().parse_args(["run", *args])
    _, sweep, trials = G.load(parsed.grid, parsed.overrides)
    est, source = for_sweep(sweep, trials)  # from the cached calibrations, before the run
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", *args], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="200"))
    t1 = time.time()
    out = proc.stdout + proc.stderr
    found = re.search(r"^experiment: (.+)$", out, re.M)
    header = re.search(r"^estimated: .*$", out, re.M)
    result: dict[str, Any] = {"wall_s": t1 - t0, "exit_code": proc.returncode, "estimate_source": source,
                              "estimate_line": header.group(0) if header else None}
    if est is not None:
        result |= {"estimated_wall_s": est.wall_s, "estimated_makespan_s": est.makespan_s,
                   "actual_over_estimate": (t1 - t0) / est.wall_s}
    if not found:
        result["output"] = out[-2000:]
        return result
    rows = list(csv.DictReader((Path(found.group(1).strip()) / "trials.csv").open()))
    first_pid, starts, readies, reuses, ends = set(), [], [], [], []
    for row in sorted(rows, key=lambda r: float(r["launched_at"])):
        reports = [json.loads(line) for line in (Path(row["trial_path"]) / "result.json").open()]
        launched = float(row["launched_at"])
        begin = reports[0]["sys/started_at"] - launched
        if reports[0]["sys/pid"] in first_pid:
            reuses.append(begin)
        else:
            starts.append(begin)
            readies.append(begin + reports[0]["sys/setup_s"])
        first_pid.add(reports[0]["sys/pid"])
        ends.append(float(row["ended_at"]) - reports[-1]["sys/time"])
    result |= {
        "trials": len(rows),
        "run_start_s": min(float(r["launched_at"]) for r in rows) - t0,
        "run_stop_s": t1 - max(float(r["ended_at"]) for r in rows),
        "trials_span_s": max(float(r["ended_at"]) for r in rows) - min(float(r["launched_at"]) for r in rows),
        "actor_first_start_s": st.median(starts) if starts else None,  # launch → run_training, new actor
        "actor_first_ready_s": st.median(readies) if readies else None,  # ... → training loop ready
        "actor_reuse_start_s": st.median(reuses) if reuses else None,
        "trial_end_s": st.median(ends),  # last report → Tune saw the end
    }
    return result


if __name__ == "__main__":
    # python -m raysweep.offline.estimate GRID [overrides] --storage DIR ...: one timed `raysweep run`, its numbers
    # as JSON (with `torch_import_s` of a fresh process, what ACTOR_START_S excludes)
    measured = measure_run(sys.argv[1:])
    measured["torch_import_s"], _ = _import_costs("lora")
    print(json.dumps(measured, indent=1))
