"""Experiment trackers (`tracking:` in grid.yaml): W&B and MLflow, fed by Ray Tune's own logger callbacks in
the driver process. Each trial is one run whose config/params are its grid cell and whose history is every
metric it reported; the sweep is the W&B group / the MLflow experiment.

A tracker is a convenience next to the experiment directory, never instead of it: a tracker that fails while
the sweep runs (server gone, disk full in wandb's dir) is reported once on stderr and then left out, and the
trials, result.json, trials.csv and checkpoints go on as without it. What can be known before Ray starts (the
package installed, the server answering, a W&B login) is checked by `problems`, shared by `plan` and `run`.

wandb and mlflow are optional (the `track` extra): both are imported only inside functions.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from raysweep.config.schema import TrackingConfig
from raysweep.experiment import metrics as M
from raysweep.experiment import storage
from raysweep.experiment.layout import MLFLOW_ARTIFACTS, MLFLOW_DB

INSTALL = "pip install -e '.[track]'"


def problems(tracking: TrackingConfig | dict | None) -> list[str]:
    """Why the trackers of a grid cannot work here, one line each (empty: fine or none asked for)."""
    if not isinstance(tracking, TrackingConfig):
        tracking = TrackingConfig(**(tracking or {}))
    out = []
    wandb = tracking.wandb
    if wandb is not None and wandb.mode != "disabled":
        if importlib.util.find_spec("wandb") is None:
            out.append(f"tracking.wandb: wandb is not installed; `{INSTALL}` (or `pip install wandb`), or remove "
                       "tracking.wandb")
        elif wandb.mode == "online" and not _wandb_login():
            out.append("tracking.wandb.mode 'online' needs a W&B login: set WANDB_API_KEY (or run `wandb login`), "
                       "or set tracking.wandb.mode: offline")
    mlflow = tracking.mlflow
    if mlflow is not None:
        if importlib.util.find_spec("mlflow") is None:
            out.append(f"tracking.mlflow: mlflow is not installed; `{INSTALL}` (or `pip install mlflow`), or remove "
                       "tracking.mlflow")
        elif mlflow.tracking_uri and mlflow.tracking_uri.startswith(("http://", "https://")):
            out += [p for p in [_server_problem(mlflow.tracking_uri)] if p]
    return out


def _wandb_login() -> bool:
    """A W&B API key is known: the environment or the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _server_problem(uri: str) -> str | None:
    """An MLflow server that does not answer: Ray would start and every trial's first report would then wait on
    MLflow's HTTP retries."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            if response.status == 200:
                return None
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
    return (f"tracking.mlflow.tracking_uri: no MLflow server answers at {uri} ({reason}); start it (`mlflow server "
            "--host 127.0.0.1 --port 5000`) or fix the URI, or leave it empty for a local store in the experiment")


def callbacks(tracking: TrackingConfig, experiment_path: str) -> list:
    """Tune callbacks for the trackers asked for (none: [])."""
    name = storage.name_of(experiment_path)
    # the trackers' local files (offline W&B runs, MLflow's sqlite store) beside the experiment; an experiment
    # in object storage keeps them in its local mirror (a database cannot live in an object store)
    local = storage.mirror_of(experiment_path)
    out: list = []
    if tracking.wandb is not None and tracking.wandb.mode != "disabled":
        # group: the sweep. Runs (offline ones until `wandb sync`) go to <experiment>/wandb/ unless WANDB_DIR
        # says otherwise: Ray's logging actor works in Ray's temporary session directory
        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(local)}
        out.append(tracker_class("WandbTracker")(project=tracking.wandb.project, group=tracking.wandb.group or name,
                                                 mode=tracking.wandb.mode, **where))
    if tracking.mlflow is not None:
        # a dead server must not stall the driver for minutes of HTTP retries per metric
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        local.mkdir(parents=True, exist_ok=True)
        tracker = tracker_class("MlflowTracker")(tracking_uri=tracking.mlflow.tracking_uri or f"sqlite:///{local / MLFLOW_DB}",
                                                 experiment_name=tracking.mlflow.experiment or name)
        # a local store keeps its artifacts beside it (MLflow's default is ./mlruns of the current directory);
        # a server decides for itself
        tracker.artifact_location = None if tracking.mlflow.tracking_uri else str(local / MLFLOW_ARTIFACTS)
        out.append(tracker)
    return out


def tracker_class(name: str) -> type:
    """WandbTracker or MlflowTracker: Ray's callback with the cell as config and the guard against failures.
    Built on first use (Ray's wandb module imports wandb) yet importable by name, as unpickling Tune's saved
    RunConfig needs (see __getattr__)."""
    if name in globals():
        return globals()[name]
    if name == "WandbTracker":
        from ray.air.integrations.wandb import WandbLoggerCallback

        bases, label = (_Guarded, _WandbCellConfig, WandbLoggerCallback), "W&B"
    elif name == "MlflowTracker":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        bases, label = (_Guarded, _MlflowCellParams, MLflowLoggerCallback), "MLflow"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = type(name, bases, {"__module__": __name__, "__qualname__": name, "_tracker": label})
    return cls


def __getattr__(name: str) -> type:
    return tracker_class(name)


def cell_of(trial) -> dict[str, Any]:
    """A trial's grid cell (key path -> value), what its tracker run records as config/params."""
    return dict((trial.config or {}).get("cell") or {})


class _Guarded:
    """Mixed in before a Tune LoggerCallback: a failing hook is reported once and the tracker is then left out,
    so the sweep (and every result Tune and raysweep write) goes on."""

    _tracker = "tracker"
    _failed = False

    def _safe(self, hook, *args, **kwargs) -> None:
        if self._failed:
            return
        try:
            hook(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the tracker raises, training results come first
            self._failed = True
            sys.stderr.write(f"raysweep: {self._tracker} tracking stopped ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); the sweep goes on, "
                             "results are in the experiment directory\n")

    def setup(self, *args, **kwargs) -> None:
        self._safe(super().setup, *args, **kwargs)

    def log_trial_start(self, trial) -> None:
        self._safe(super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result) -> None:
        self._safe(super().log_trial_result, iteration, trial, result)

    def log_trial_save(self, trial) -> None:
        self._safe(super().log_trial_save, trial)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._safe(super().log_trial_end, trial, failed)

    def on_experiment_end(self, trials, **info) -> None:
        self._safe(super().on_experiment_end, trials, **info)


class _WandbCellConfig:
    """W&B run config = the grid cell (Ray's default is the whole Tune config, here {'cell': {...}})."""

    def setup(self, *args, **kwargs) -> None:
        if self.kwargs.get("mode") == "offline":
            # offline runs need no login, but Ray's setup demands an API key whatever the mode (Ray 2.60);
            # project and group are always given, the rest of its setup is only their defaults
            self.api_key_file = None
            return
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial) -> None:
        exclude = [*self._exclude_results, *self.excludes, *([] if self.log_config else ["config"])]
        kwargs = dict(id=trial.trial_id, name=str(trial), resume=False, reinit=True, allow_val_change=True,
                      group=self.group or trial.experiment_dir_name, project=self.project, config=cell_of(trial))
        self._start_logging_actor(trial, exclude, **(kwargs | self.kwargs))


class _MlflowCellParams:
    """MLflow params = the grid cell; each metric's step = the trial's optimizer step (Ray's default logs the
    flattened Tune config and steps by report count)."""

    artifact_location: str | None = None

    def setup(self, *args, **kwargs) -> None:
        # Ray's setup, with the experiment's artifact location (Ray 2.60's callback does not pass one)
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri,
                                      experiment_name=self.experiment_name, tracking_token=self.tracking_token,
                                      artifact_location=self.artifact_location)
        self.tags = dict(self.tags or {})
        self._trial_runs = {}

    def log_trial_start(self, trial) -> None:
        if trial not in self._trial_runs:
            tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id}
            self._trial_runs[trial] = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
        self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=cell_of(trial))

    def log_trial_result(self, iteration, trial, result) -> None:
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        step = result.get(M.TRAIN_STEP)
        step = int(step) if isinstance(step, (int, float)) else int(result.get("training_iteration") or 0)
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=result, step=step)
