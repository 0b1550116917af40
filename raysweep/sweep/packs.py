"""Packed trials in the sweep: which cells share a pack worker, and how their Tune trials reach it.

Every grid cell stays a Tune trial of its own (so the live table, trials.csv, schedulers, checkpoints and
resume stay per configuration), but its trainable is a *relay* that asks for no CPU: it joins a pack worker
(trial/pack_worker.py, a Ray actor holding one slot's resources and one base) and reports to Tune what its
member reports there. A registry actor places relays by one rule (`placement`): a free slot gets a new worker
before an existing one takes another member (spread, then fill), else the least-filled worker with the same
pack key and a free place, else one whose members have all left is replaced. So `pack: K` never leaves a
reserved CPU/GPU idle, a member that ends (finished, stopped by ASHA/median, NaN) frees its place for the next
pending cell with the same key (continuous packing), and a cell that cannot be packed gets a worker of its own.

`plan` uses `packing` / `describe_packs` (no Ray, no torch; the same `placement`); the driver uses
`start_registry` / `relay_trainable`.
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


@dataclass
class Place:
    """A pack worker as the placement rule sees it."""

    key: str  # pack key; "alone:<key>" for a worker that runs one unpackable cell
    members: int
    capacity: int


def placement(places: list[Place], slots: int, key: str) -> tuple[str, int | None] | None:
    """Where a new member with pack `key` goes: ("join", i) worker i; ("new", None) a new worker on a free slot;
    ("replace", i) a new worker instead of idle worker i (its members all left); None: no place yet (ask again).

    Spread, then fill: a free slot gets a new worker before a worker takes a second member, so 8 cells with
    pack 8 on 2 slots train as 2 workers × 4 rather than 1 × 8 beside an idle slot (benchmarks/RESULTS.md (n2));
    a sweep that wants one base in memory gives one worker all the CPUs/GPUs (resources.*_per_worker)."""
    same = [i for i, p in enumerate(places) if p.key == key and p.members < p.capacity]
    empty = next((i for i in same if places[i].members == 0), None)
    if empty is not None:
        return "join", empty
    if len(places) < slots:
        return "new", None
    if same:
        return "join", min(same, key=lambda i: places[i].members)
    idle = next((i for i, p in enumerate(places) if p.members == 0), None)
    return ("replace", idle) if idle is not None else None


def first_wave(keys: list[tuple[str, int]], slots: int) -> tuple[list[tuple[str, list[int]]], list[int]]:
    """The workers the sweep starts with when cells (key, capacity) ask in order and none has ended yet:
    [(key, indices of the cells it holds)], and the cells left waiting for a place."""
    places: list[Place] = []
    held: list[list[int]] = []
    waiting = []
    for index, (key, capacity) in enumerate(keys):
        where = placement(places, slots, key)
        if where is None:
            waiting.append(index)
        elif where[0] == "join":
            places[where[1]].members += 1
            held[where[1]].append(index)
        else:  # "new" ("replace" needs a worker whose members left: not in a first wave)
            places.append(Place(key, 1, capacity))
            held.append([index])
    return [(p.key, h) for p, h in zip(places, held, strict=True)], waiting


def describe_packs(sweep: Any, trials: list[Any]) -> list[str]:
    """`plan`'s lines on packing: the decision, which trials share a worker, and each one that runs alone."""
    from raysweep.config import run_config

    if sweep.resources.pack == 1:
        return []
    decision = packing(sweep)
    if decision.why_not:
        return [f"packed trials: off ({decision.why_not})"]
    res = sweep.resources
    lines = [f"packed trials: up to {decision.size} per worker over one shared base (resources.pack: {res.pack}); "
             "free slots get a worker first, and a member that ends frees its place for the next cell with the "
             "same base"]
    reasons = {t.index: unpacked_reason(run_config(t.config)) for t in trials}
    if res.gpus_per_worker and not res.max_concurrent:
        # the slots are the cluster's GPUs, unknown here: the cells by base, K at a time
        packed, _ = groups(trials, run_config)
        chunks = [[t.index for t in cells[i : i + decision.size]]
                  for cells in packed.values() for i in range(0, len(cells), decision.size)]
        lines += [f"  pack {n}: trials {', '.join(map(str, c))}" for n, c in enumerate(chunks, 1)]
    else:
        workers = trials_at_once(res, os.cpu_count() or 1, 0)
        lines[0] += f"; on this machine {workers} worker(s) at once"
        keys = [((f"alone:{reasons[t.index]}", 1) if reasons[t.index]
                 else (pack_key(run_config(t.config)), decision.size)) for t in trials]
        wave, waiting = first_wave(keys, workers)
        n = 0
        for key, held in wave:
            if not key.startswith("alone:"):
                n += 1
                lines.append(f"  pack {n}: trials {', '.join(str(trials[i].index) for i in held)}")
        later = [str(trials[i].index) for i in waiting if not keys[i][0].startswith("alone:")]
        if later:
            lines.append(f"  then, as places free up: trials {', '.join(later)}")
    alone: dict[str, list[str]] = {}
    for index, reason in reasons.items():
        if reason:
            alone.setdefault(reason, []).append(str(index))
    lines += [f"  alone (one per worker), trials {', '.join(cells)}: {reason}" for reason, cells in alone.items()]
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
        where = placement([Place(w["key"], len(w["members"]), w["capacity"]) for w in self.workers], self.slots, key)
        if where is None:
            return None
        if where[0] == "join":
            w = self.workers[where[1]]
            w["members"].add(trial_id)
            return w["handle"], w["name"]
        if where[0] == "replace":
            idle = self.workers.pop(where[1])
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
