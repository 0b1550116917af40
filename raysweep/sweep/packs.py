"""Packed trials in the sweep: which cells share a pack worker, and how their Tune trials reach it.

Every grid cell stays a Tune trial of its own (so the live table, trials.csv, schedulers, checkpoints and
resume stay per configuration), but its trainable is a *relay* that asks for no CPU: it joins a pack worker
(trial/pack_worker.py, a Ray actor holding one slot's resources and one base) and reports to Tune what its
member reports there. A registry actor places relays: a worker with the same pack key and a free place,
else a new worker while slots remain, else one whose members have all left is replaced. So a member that
ends (finished, stopped by ASHA/median, NaN) frees its place for the next pending cell with the same key
(continuous packing), and a cell that cannot be packed gets a worker of its own.

`plan` uses `packing` / `groups` (no Ray, no torch); the driver uses `start_registry` / `relay_trainable`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysweep.sweep.resources import trials_at_once
from raysweep.trial.pack_key import pack_key, unpacked_reason


@dataclass
class Packing:
    """The sweep-level decision: members per worker (1: no packing) and why not more."""

    size: int
    why_not: str | None = None  # set when the sweep asked for packing but runs unpacked


def packing(sweep: Any) -> Packing:
    """Members per pack worker for this sweep (`resources.pack`, `auto` resolved), or why it runs unpacked."""
    res, search = sweep.resources, sweep.search
    asked = res.pack
    if asked == 1:
        return Packing(1)
    if res.resolved_executor() != "actor":
        return Packing(1, "packed trials run one process per pack; num_workers > 1, DeepSpeed and executor 'train' "
                          "trials run unpacked")
    if search.algorithm == "optuna":
        return Packing(1, "search.algorithm optuna proposes each trial from the finished ones; it runs unpacked")
    if asked == "auto":
        # `auto` packs only where a benchmark showed packing is not slower: none has yet (on CPUs the step is
        # bound by arithmetic, benchmarks/RESULTS.md (n); GPUs: benchmarks/gpu_check.py step 5, not yet run)
        where = "GPUs" if res.gpus_per_worker else "CPUs"
        return Packing(1, f"pack: auto is 1 on {where} until a benchmark shows packing is faster there "
                          "(benchmarks/RESULTS.md (n)); set resources.pack: K to pack anyway")
    return Packing(int(asked))


def groups(trials: list[Any], run_config) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Cells by pack key (each key's cells share pack workers), and cells that run alone by reason."""
    packed: dict[str, list[Any]] = {}
    alone: dict[str, list[Any]] = {}
    for trial in trials:
        config = run_config(trial.config)
        reason = unpacked_reason(config)
        if reason:
            alone.setdefault(reason, []).append(trial)
        else:
            packed.setdefault(pack_key(config), []).append(trial)
    return packed, alone


def describe_packs(sweep: Any, trials: list[Any]) -> list[str]:
    """`plan`'s lines on packing: the decision, which trials share a worker, and each one that runs alone."""
    from raysweep.config import run_config

    if sweep.resources.pack == 1:
        return []
    decision = packing(sweep)
    if decision.why_not:
        return [f"packed trials: off ({decision.why_not})"]
    packed, alone = groups(trials, run_config)
    res = sweep.resources
    workers = trials_at_once(res, os.cpu_count() or 1, 0)
    here = "" if res.gpus_per_worker else (
        f"; on this machine {workers} worker(s) at once, so up to {workers * decision.size} trials")
    lines = [f"packed trials: up to {decision.size} per worker over one shared base "
             f"(resources.pack: {res.pack}){here}; a member that ends frees its place for the next cell "
             "with the same base"]
    n = 0
    for cells in packed.values():
        for i in range(0, len(cells), decision.size):
            n += 1
            chunk = cells[i : i + decision.size]
            lines.append(f"  pack {n}: trials {', '.join(str(t.index) for t in chunk)}")
    for reason, cells in alone.items():
        lines.append(f"  alone (one per worker), trials {', '.join(str(t.index) for t in cells)}: {reason}")
    return lines


# ------------------------------------------------------------------------------------ Ray side


class Registry:
    """Places members on pack workers (a Ray actor, one per sweep; see the module docstring)."""

    def __init__(self, slots: int, capacity: int, resources: dict[str, float], name: str):
        self.slots, self.capacity, self.resources, self.name = slots, capacity, resources, name
        self.workers: list[dict[str, Any]] = []  # {"handle", "key", "members": set, "capacity", "name"}
        self.count = 0

    def assign(self, key: str, alone: bool, trial_id: str):
        """(handle, name) of the worker this member joins, or None while every slot is busy with other keys
        (ask again)."""
        import ray

        from raysweep.trial.pack_worker import PackWorker

        for w in self.workers:
            if trial_id in w["members"]:  # a retry of the same trial (its relay restarted)
                w["members"].discard(trial_id)
        capacity = 1 if alone else self.capacity
        key = f"alone:{key}" if alone else key  # a worker that ran a trial alone never takes packed members
        for w in self.workers:
            if w["key"] == key and len(w["members"]) < w["capacity"]:
                w["members"].add(trial_id)
                return w["handle"], w["name"]
        if len(self.workers) >= self.slots:
            idle = next((w for w in self.workers if not w["members"]), None)
            if idle is None:
                return None
            self.workers.remove(idle)
            ray.kill(idle["handle"])
        self.count += 1
        name = f"{self.name}-pack{self.count}"
        options = {"num_cpus": self.resources.get("CPU", 1), "max_concurrency": 4 * capacity + 4}
        if self.resources.get("GPU"):
            options["num_gpus"] = self.resources["GPU"]
        # no warm-up imports race the worker's training thread: packed sweeps run without them (driver.warm_imports)
        handle = ray.remote(PackWorker).options(**options).remote(name)
        self.workers.append({"handle": handle, "key": key, "members": {trial_id}, "capacity": capacity, "name": name})
        return handle, name

    def release(self, trial_id: str) -> None:
        for w in self.workers:
            w["members"].discard(trial_id)

    def forget(self, worker: str) -> None:
        """This worker died: take it off the books (its other members fail and are retried too)."""
        self.workers = [w for w in self.workers if w["name"] != worker]


def registry_name(experiment_name: str) -> str:
    return f"raysweep-packs-{experiment_name}"


def start_registry(name: str, slots: int, capacity: int, sweep: Any):
    """The sweep's registry actor (the driver holds the handle: it lives as long as the sweep)."""
    import ray

    res = sweep.resources
    resources = {"CPU": res.cpus_per_worker} | ({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})
    # one call at a time (the default): calls from one relay are then handled in the order it sent them
    return ray.remote(Registry).options(name=name, num_cpus=0, get_if_exists=True).remote(
        slots, capacity, resources, name)


def relay_trial_fn(cell_config: dict[str, Any], sweep_raw: dict[str, Any], registry: str, store: str | None) -> None:
    """One Tune trial of a packed sweep: join a pack worker, hand Tune what the member reports there."""
    import ray
    from ray import tune

    from raysweep.config import trial_config
    from raysweep.sweep.failures import TrialFailed
    from raysweep.trial.pack_worker import pack_dir, unpack_dir

    trial = trial_config(sweep_raw, cell_config["cell"]) | {"_store": store}
    trial_id = tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    data = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            data = pack_dir(Path(d))
    reg = ray.get_actor(registry)
    alone = unpacked_reason(trial) is not None
    while (placed := ray.get(reg.assign.remote(pack_key(trial), alone, trial_id))) is None:
        time.sleep(0.2)
    worker, name = placed
    finished = False
    try:
        ray.get(worker.join.remote(trial_id, trial, data))
        while not finished:
            for kind, payload in ray.get(worker.take.remote(trial_id, 1.0)):
                if kind == "error":
                    raise TrialFailed(payload)
                if kind == "done":
                    finished = True
                    break
                metrics, blob = payload
                if blob is None:
                    tune.report(metrics)
                    continue
                tmp = Path(tempfile.mkdtemp(prefix="raysweep-relay-"))
                try:  # Tune copies the checkpoint into the trial's storage before report returns
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(unpack_dir(blob, tmp))))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    except ray.exceptions.RayActorError as exc:
        reg.forget.remote(name)
        raise TrialFailed(f"PackWorkerDied: the pack worker of this trial died ({type(exc).__name__}); "
                          "resources.max_failures retries it from its latest checkpoint") from None
    finally:
        if not finished:
            try:
                worker.leave.remote(trial_id)
            except Exception:  # noqa: BLE001 - a dead worker has nothing to leave
                pass
        reg.release.remote(trial_id)


def relay_trainable(sweep_raw: dict[str, Any], registry: str, store: str | None):
    from ray import tune

    # a relay only waits on its pack worker, which holds the slot's resources; CPU 0 alone is rejected
    return tune.with_resources(tune.with_parameters(relay_trial_fn, sweep_raw=sweep_raw, registry=registry,
                                                     store=store),
                               {"cpu": 0, "memory": 1})
