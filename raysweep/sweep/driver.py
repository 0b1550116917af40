"""Ray's lifecycle and the Tuner: build and run it with one of two executors (`resources.executor`,
docs/ARCHITECTURE.md).

- `train`: Ray Train V2's supported Tune+Train pattern (`Tuner(TorchTrainer)` is deprecated): Tune runs
  `driver_fn` once per trial; it builds a TorchTrainer whose rank-0 reports reach Tune through
  `TuneReportCallback`. Needed for multi-worker (DDP) trials; costs a Ray Train start-up (worker
  processes) per trial.
- `actor`: Tune runs `actor_trial_fn`, the same training loop in the trial's own (reused) Tune actor,
  which keeps torch imported and the base model cached between trials (inputs/model_cache.py).

Starting/connecting Ray and building the Tuner happen only here (Ray silently starts a new local cluster
if called after shutdown, so keep those calls in one place); inside trials, trial/session.py is the only
module that talks to Ray. Which trials Tune runs and stops: sweep/param_space.py and sweep/schedulers.py.

The driver takes the validated `Sweep`; the raw grid dict travels to the trials, each of which resolves
its own cell's config from it (config.trial_config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raysweep.config import Sweep, Trial, trial_config
from raysweep.experiment import storage as storage_layer  # `storage` is run()'s storage root
from raysweep.experiment.layout import TRAIN_RUN_PREFIX, TRAIN_RUNS_DIR
from raysweep.sweep import packs, trackers
from raysweep.sweep.failures import TrialFailed, _reason
from raysweep.sweep.param_space import param_space
from raysweep.sweep.schedulers import build_scheduler, build_search_alg


def executor(sweep: Sweep) -> str:
    """'actor' or 'train' for this sweep (resources are experiment-level, not grid axes)."""
    return sweep.resources.resolved_executor()


def shared_store(sweep_raw: dict[str, Any]) -> str | None:
    """The experiments' storage root (shared storage on a cluster: a directory every node mounts, or an
    object-store URI): trials, and later sweeps, share what is stored there by key, e.g. pruning masks under
    <storage>/masks/ (inputs/cache.build_once_shared)."""
    return sweep_raw.get("storage") or None


def actor_trial_fn(cell_config: dict[str, Any], sweep_raw: dict[str, Any]) -> None:
    """One trial run in this Tune actor's process (reused across trials: imports and base model stay)."""
    from raysweep.sweep import warmup

    warmup.wait()  # this process's background imports, if Ray started them (init_ray)
    from raysweep.inputs.model_cache import release_trial_memory
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import TuneSession

    trial = trial_config(sweep_raw, cell_config["cell"]) | {"_store": shared_store(sweep_raw)}
    try:
        run_training(trial, TuneSession())
    except Exception as exc:  # noqa: BLE001 - re-raised with the root cause as a one-line reason
        raise TrialFailed(_reason(exc)) from exc
    finally:
        release_trial_memory()


def driver_fn(cell_config: dict[str, Any], sweep_raw: dict[str, Any], train_storage: str) -> None:
    """One trial: resolve its config, fit a TorchTrainer named after the trial id."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysweep.trial.loop import train_fn_per_worker

    trial = trial_config(sweep_raw, cell_config["cell"]) | {"_store": shared_store(sweep_raw)}
    res = trial["resources"]
    per_worker = {"CPU": res["cpus_per_worker"]}
    if res["gpus_per_worker"]:
        per_worker["GPU"] = res["gpus_per_worker"]
    # Names come from the trial id, never a timestamp: a resumed trial finds its own Train run
    # (and its latest checkpoint) again under the same name.
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=trial,
        scaling_config=ScalingConfig(num_workers=res["num_workers"], use_gpu=bool(res["gpus_per_worker"]),
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{TRAIN_RUN_PREFIX}{tune.get_context().get_trial_id()}",
            storage_path=train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=res["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=trial["train"]["keep_last"]),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - re-raised with the root cause as a one-line reason
        raise TrialFailed(_reason(exc)) from exc


def warm_imports(sweep: Sweep) -> bool:
    """Whether every trial process should import the training stack as it starts (sweep/warmup.py): for the
    actor executor, unless the sweep packs — then most of its processes are relays that never train, and
    importing torch in each of them cost a packed quickstart ~30 s of its 2 CPUs (benchmarks/RESULTS.md (n))."""
    return executor(sweep) == "actor" and packs.packing(sweep).size == 1


def slots(sweep: Sweep) -> int:
    """Trials the connected cluster can hold at once (resources.max_concurrent wins)."""
    import ray

    from raysweep.sweep.resources import trials_at_once

    cluster = ray.cluster_resources()
    return trials_at_once(sweep.resources, cluster.get("CPU", 1), cluster.get("GPU", 0))


_dashboard: bool | None = None  # whether init_ray started a local Ray with its dashboard (None: not known)
_owned = False  # init_ray called ray.init here (a Ray someone else started is left running)


def setup_problem(sweep: Sweep, dashboard: bool | None, address: str | None = None) -> str | None:
    """Why this sweep cannot run on this Ray setup, or None.

    A trial scheduler stopping a `train`-executor trial ends the trial's driver process; its TorchTrainer
    controller dies with it, and Ray Train's PlacementGroupCleaner frees the workers' placement group by
    polling the controller's state through the dashboard's state API. Without the dashboard a stopped
    trial's placement group can stay reserved (Ray 2.60): a sweep can hang with no CPU free and its next
    trial's group pending (docs/ARCHITECTURE.md). Trials of the `actor` executor stop inside their own
    process and need nothing of this.
    """
    search = sweep.search
    if search.scheduler != "fifo" and executor(sweep) == "train" and dashboard is False and not address:
        return (f"search.scheduler {search.scheduler!r} with resources.executor 'train' needs the Ray dashboard "
                "(Ray Train frees a stopped trial's workers through it; without it the sweep hangs): run "
                "without --no-dashboard, or use resources.executor: actor (1-worker trials)")
    return None


class SetupError(RuntimeError):
    """The sweep cannot run on this Ray setup (see `setup_problem`)."""


def init_ray(address: str | None, dashboard: bool = True, verbose: bool = False, warm_imports: bool = False) -> None:
    """Start a local Ray (or join `address`). `warm_imports` (the actor executor): every trial actor of a
    local Ray starts importing the training stack the moment its process starts (sweep/warmup.py)."""
    import ray

    global _dashboard, _owned
    if ray.is_initialized():
        return
    # RAY_ADDRESS (set e.g. inside a `ray job submit` job) names the cluster like --address does
    address = address or os.environ.get("RAY_ADDRESS") or None
    _dashboard = None if address else dashboard
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray Tune's own progress output is replaced by ours (sweep/progress.py)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    _owned = True
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a new embedded cluster, as the CLI promises without --address. Plain ray.init() would
        # join the latest cluster `ray start` left on this machine instead.
        # The dashboard listens on loopback only; reach it from elsewhere through an SSH tunnel.
        # A joined cluster keeps its own job settings (e.g. a `ray job submit` runtime_env): no hook there.
        if warm_imports:
            kwargs["runtime_env"] = {"worker_process_setup_hook": "raysweep.sweep.warmup.start"}
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)


def shutdown_ray() -> None:
    """Stop the local Ray that init_ray started (a joined cluster is only disconnected from).

    Ray stops its head processes in order (raylet, GCS, ..., autoscaler monitor), giving each SIGTERM and
    one second before SIGKILL. The monitor's SIGTERM handler reports its own death through the GCS, which
    is already gone by then, so it always uses the whole second (Ray 2.60): every `raysweep run` took ~1 s
    longer to exit than needed. A one-machine Ray has nothing to autoscale, so the monitor is killed first.
    """
    import ray

    global _owned
    if not _owned:
        return
    _owned = False
    node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001 - no public handle in 2.60
    try:
        if node is not None and node.head:
            for info in node.all_processes.get("monitor", []):
                info.process.kill()
    except Exception:  # noqa: BLE001 - only a speed-up: ray.shutdown below stops everything regardless
        pass
    ray.shutdown()


def build_trainable(sweep: Sweep, sweep_raw: dict[str, Any], experiment_path: str, registry: str | None = None):
    """Tune's trainable for this sweep; `sweep_raw` (the grid dict `sweep` was validated from) goes to every
    trial, which resolves its cell's config from it. With a pack registry: the packed trials' relay."""
    from ray import tune

    if registry is not None:
        return packs.relay_trainable(sweep_raw, registry, shared_store(sweep_raw))
    if executor(sweep) == "actor":
        res = sweep.resources
        request = {"cpu": res.cpus_per_worker} | ({"gpu": res.gpus_per_worker} if res.gpus_per_worker else {})
        return tune.with_resources(tune.with_parameters(actor_trial_fn, sweep_raw=sweep_raw), request)
    trainable = tune.with_parameters(
        driver_fn, sweep_raw=sweep_raw, train_storage=storage_layer.join(experiment_path, TRAIN_RUNS_DIR)
    )
    # The driver only waits on its TorchTrainer; by default it would reserve a CPU, which deadlocks a
    # 2-CPU machine (workers never start). CPU 0 alone is rejected, so reserve a token of memory.
    return tune.with_resources(trainable, {"cpu": 0, "memory": 1})


def _trial_dirname(trial) -> str:
    cell = trial.config.get("cell", {})
    # drawn floats (random/optuna ranges) shortened; the exact value is in params.json and trials.csv
    short = "_".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in cell.items())
    return f"{trial.trial_id}_{short}"[:120].replace("/", "-")


def _with_loggers(callbacks: list, tensorboard: bool) -> list:
    """Tune's per-trial result.json and progress.csv (what analysis and users read), plus TensorBoard event
    files only when asked: Tune adds its TensorBoard logger whenever tensorboardX is installed (ray[tune]
    installs it), and that logger imports torch into the driver at start-up, delaying the first trial
    (benchmarks/RESULTS.md (c))."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # else Tune appends the missing defaults
    return [*callbacks, CSVLoggerCallback(), JsonLoggerCallback(), *([TBXLoggerCallback()] if tensorboard else [])]


def run(sweep: Sweep, sweep_raw: dict[str, Any], trials: list[Trial], storage: str, name: str, callbacks: list,
        max_concurrent: int, tensorboard: bool = False):
    """Run the sweep's trials (`sweep` validated from `sweep_raw`, which goes to the trials)."""
    from ray import tune

    # live_report imports Ray Tune: not at module level (the launch path stays light)
    from raysweep.sweep import live_report

    problem = setup_problem(sweep, _dashboard)
    if problem:
        raise SetupError(problem)
    experiment_path = storage_layer.join(storage, name)
    search, res = sweep.search, sweep.resources
    in_actor = executor(sweep) == "actor"
    registry = start_packs(sweep, name, max_concurrent)
    if registry is not None:  # every slot holds a pack worker with up to `pack` members
        max_concurrent *= packs.packing(sweep).size
    tuner = tune.Tuner(
        build_trainable(sweep, sweep_raw, experiment_path, registry),
        param_space=param_space(trials, search.algorithm),
        tune_config=tune.TuneConfig(
            num_samples=search.num_samples,
            search_alg=build_search_alg(sweep),
            scheduler=build_scheduler(sweep),
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=_trial_dirname,
            # the point of the actor executor: the next trial reuses a finished trial's process
            reuse_actors=in_actor,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0,
            # Tune uploads its experiment state and the trials' result files from the driver every
            # sync_period (checkpoints go up at once, from the trials): 300 s by default, too stale for the
            # live report and a resume after a killed driver
            sync_config=tune.SyncConfig(sync_period=OBJECT_STORE_SYNC_S if storage_layer.is_uri(storage) else 300),
            # the live report after the progress callback, which writes the trials.csv it reads
            callbacks=_with_loggers([*callbacks, *trackers.callbacks(sweep.tracking, experiment_path),
                                     *live_report.callbacks(experiment_path)], tensorboard),
            # retries: Ray Train's FailureConfig inside the TorchTrainer (train), Tune's here (actor);
            # both restart the trial from its latest checkpoint
            failure_config=tune.FailureConfig(max_failures=res.max_failures if in_actor else 0),
            # actor trials checkpoint through Tune (train trials through Ray Train, see driver_fn)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=max(t.config.train.keep_last for t in trials) if in_actor else None),
        ),
    )
    return tuner.fit()


OBJECT_STORE_SYNC_S = 15  # Tune's driver-side uploads to an object-store storage (a few small files each time)

_registry_handle = None  # the pack registry actor lives as long as this driver's sweep


def start_packs(sweep: Sweep, name: str, slots_at_once: int) -> str | None:
    """Start the sweep's pack registry when it packs (sweep/packs.py); its actor name, or None."""
    global _registry_handle
    decision = packs.packing(sweep)
    if decision.size == 1:
        return None
    registry = packs.registry_name(name)
    _registry_handle = packs.start_registry(registry, slots_at_once, decision.size, sweep)
    return registry


def resume(experiment_path: str, sweep: Sweep, sweep_raw: dict[str, Any], callbacks: list,
           retry_errored: bool = False, tensorboard: bool = False):
    """Continue an experiment: unfinished trials (and failed ones with `retry_errored`) go on from their
    latest checkpoint; finished ones are not started again."""
    from ray import tune

    from raysweep.sweep import live_report

    problem = setup_problem(sweep, _dashboard)
    if problem:
        raise SetupError(problem)
    # the same pack registry (by the experiment's name) as `run` started: the restored trainable names it
    registry = start_packs(sweep, storage_layer.name_of(experiment_path), slots(sweep))
    tuner = tune.Tuner.restore(
        experiment_path,
        trainable=build_trainable(sweep, sweep_raw, experiment_path, registry),
        resume_unfinished=True,
        # a failed trial is retried as itself (Tune's restart_errored would make it a new trial with a new
        # id and directory, leaving the failed one behind as a second, never-finished trial of the same
        # cell), from its latest checkpoint like a max_failures retry (train executor: Ray Train's run of
        # the same name)
        resume_errored=retry_errored,
    )
    # Tuner.restore keeps the RunConfig of the original run, whose callbacks are not restored
    tuner._local_tuner.get_run_config().callbacks = _with_loggers(  # noqa: SLF001 - no public setter in Ray 2.60
        [*callbacks, *trackers.callbacks(sweep.tracking, experiment_path), *live_report.callbacks(experiment_path)],
        tensorboard)
    return tuner.fit()


def experiment_exists(path: str | Path) -> bool:
    if storage_layer.is_uri(path):
        from ray import tune

        return tune.Tuner.can_restore(str(path))
    return Path(path).is_dir() and any(Path(path).glob("experiment_state*.json"))
