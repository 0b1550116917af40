"""Every file and folder name of an experiment directory, and how to find things in one.

An experiment directory is `<storage>/<name>/`: raysweep's own files (the resolved grid, the trial table),
one directory per Tune trial (Tune's files, and under the actor executor its checkpoints), the train
executor's Ray Train runs, and what `analyze` writes. Nothing else in raysweep or analysis spells these
names; they import them from here (an import-graph test greps for the literals).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from raysweep.experiment import storage

# ---- raysweep's files at the top of an experiment directory
SWEEP_FILE = "raysweep.yaml"  # the resolved grid file, saved at launch for resume and analysis
TRIALS_FILE = "trials.csv"  # one row per trial: status, cell, final metrics, checkpoint, error (rewritten whole)
TRAIN_RUNS_DIR = "train_runs"  # Ray Train run dirs (train executor's checkpoints): train-<trial id>/
TRAIN_RUN_PREFIX = "train-"
MASKS_DIR = "masks"  # under the storage root, not an experiment: masks shared by every sweep on that storage
TOKENIZED_DIR = "tokenized"  # under the storage root too: tokenized datasets shared by every trial and sweep there
BASELINES_DIR = "baselines"  # under the storage root too: the untuned base's task metrics, one folder per key
BASELINE_FILE = "baseline.json"  # in a baselines/<key>/ folder: one base's metrics; at the top of an experiment:
#                                  every base of the sweep ({"baselines": [...]}), the row analyze compares with

# ---- the trackers' local stores (tracking: in grid.yaml; sweep/trackers.py)
MLFLOW_DB = "mlflow.db"  # MLflow's sqlite store when tracking.mlflow.tracking_uri is empty (MLflow 3 refuses file stores)
MLFLOW_ARTIFACTS = "mlflow-artifacts"  # ... and its artifact root
# W&B writes its own wandb/ folder under the experiment directory (dir=), named by wandb itself

# ---- what Ray Tune writes into each trial directory
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.csv"
ERROR_FILE = "error.txt"
CHECKPOINT_GLOB = "checkpoint_*"  # Tune: checkpoint_NNNNNN, Ray Train: checkpoint_stepNNNNNN

# ---- a checkpoint directory (no base weights)
ADAPTER_DIR = "adapter"  # peft export of the weights at this step
BEST_ADAPTER_DIR = "best_adapter"  # peft export of the best eval so far
TRAINER_STATE = "trainer_state.pt"  # optimizer, scheduler, data position, RNG
ADAPTER_STATE = "adapter_state.safetensors"  # the adapter's training state (gated adapters: differs from export)
BEST_STATE = "best_state.safetensors"
TRIAL_CONFIG = "trial_config.json"  # the resolved trial config
METRICS = "metrics.json"  # the metrics reported with this checkpoint
DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint (optimizer shards), ZeRO strategies only
PEFT_CONFIG = "adapter_config.json"  # peft's names inside an adapter directory
PEFT_WEIGHTS = "adapter_model.safetensors"
TASK_METRICS_FILE = "task_metrics.json"  # `raysweep eval`: task metrics of this checkpoint (analyze reads them)
EXPORT_INFO = "export.json"  # `raysweep export`: what was exported from where, and the check

# ---- per-family reports inside checkpoints (written by the family, read by analysis)
SPARSITY_LOG = "sparsity.csv"  # sora/sdora: per-module live ranks at every eval/log report
ALLOCATION_LOG = "allocation.csv"  # sublora learned allocation: step, mean γ, γ per module
BOUNDS_REPORT = "bounds.json"  # sublora: the PAC-Bayes bound report of the final checkpoint
MASK_VALIDATION_REPORT = "validation_report.json"  # masked: merged-weight checks at the end of training

# ---- what `analyze` writes (into the experiment directory or --out)
SUMMARY_CSV = "summary.csv"  # every trial, one row
SUMMARY_TABLE = "summary_table"  # .csv / .md / .tex: mean ± std over seeds per configuration
PARETO_FILE = "pareto.csv"
HISTORY_FILE = "history.csv"
REPORT_FILE = "report.html"
FRONTIER_FIGURE = "frontier.png"


def train_run_dir(experiment: Path, trial_id: str) -> Path:
    """Where the train executor's Ray Train run of a trial keeps its checkpoints."""
    return Path(experiment) / TRAIN_RUNS_DIR / f"{TRAIN_RUN_PREFIX}{trial_id}"


def trial_id_of_train_run(directory: Path) -> str | None:
    """The trial id in a Ray Train run directory's name (None for any other directory)."""
    name = Path(directory).name
    return name.removeprefix(TRAIN_RUN_PREFIX) if name.startswith(TRAIN_RUN_PREFIX) else None


def last_result(trial_dir: Path) -> dict[str, Any]:
    """The last result a Tune trial directory recorded (result.json), or {}."""
    result = Path(trial_dir) / RESULT_FILE
    lines = [line for line in result.read_text().splitlines() if line.strip()] if result.is_file() else []
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}


def find_checkpoints(path: Path) -> list[Path]:
    """The checkpoint(s) a user means by `path`: a checkpoint directory itself; a trial directory (its
    latest checkpoint_*); or an experiment directory (every trial's latest checkpoint, from trials.csv)."""
    from raysweep.experiment.metrics import CHECKPOINT_PATH

    path = Path(path).expanduser()
    if (path / TRIAL_CONFIG).is_file():
        return [path]
    if (path / TRIALS_FILE).is_file():
        old_root = recorded_root(path)
        with (path / TRIALS_FILE).open() as f:
            found = [Path(storage.relocate(row[CHECKPOINT_PATH], old_root, path)) for row in csv.DictReader(f)
                     if row.get(CHECKPOINT_PATH)]
        return [p for p in found if (p / TRIAL_CONFIG).is_file()]
    latest = sorted(p for p in path.glob(CHECKPOINT_GLOB) if (p / TRIAL_CONFIG).is_file())
    return latest[-1:] or _train_run_checkpoint(path)


def _train_run_checkpoint(trial_dir: Path) -> list[Path]:
    """A Tune trial dir of the `train` executor holds no checkpoint: Ray Train keeps them under
    <experiment>/train_runs/train-<trial id>/ and reports the path in the trial's results."""
    from raysweep.experiment.metrics import CHECKPOINT_PATH

    last = last_result(trial_dir)
    recorded = storage.relocate(str(last[CHECKPOINT_PATH]), recorded_root(trial_dir.parent), trial_dir.parent) \
        if last.get(CHECKPOINT_PATH) else None
    candidates = [Path(recorded)] if recorded else []
    if last.get("trial_id"):
        candidates.append(train_run_dir(trial_dir.parent, last["trial_id"]))
    for candidate in candidates:
        if (candidate / TRIAL_CONFIG).is_file():
            return [candidate]
        latest = sorted(p for p in candidate.glob(CHECKPOINT_GLOB) if (p / TRIAL_CONFIG).is_file())
        if latest:
            return latest[-1:]
    return []


def read_baselines(experiment: str | Path) -> list[dict[str, Any]]:
    """The untuned bases' task-metric records of an experiment (each {"key", "model", "metrics", ...}), [] if none."""
    try:
        return list(json.loads(storage.read_text(storage.join(experiment, BASELINE_FILE))).get("baselines", []))
    except (OSError, json.JSONDecodeError, AttributeError):
        return []


def merge_baselines(experiment: str | Path, records: list[dict[str, Any]]) -> str:
    """Add (or replace, by "key") baseline records in the experiment's baseline file; written whole."""
    merged = {r.get("key"): r for r in read_baselines(experiment)}
    merged |= {r.get("key"): r for r in records}
    path = storage.join(experiment, BASELINE_FILE)
    storage.write_text(path, json.dumps({"baselines": list(merged.values())}, indent=2, default=str))
    return path


def recorded_root(experiment: Path) -> str | None:
    """Where the experiment was when it ran (storage and name in its raysweep.yaml): recorded checkpoint
    locations start with it (storage.relocate maps them under the experiment's current place)."""
    import yaml

    try:
        saved = yaml.safe_load((Path(experiment) / SWEEP_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return storage.join(saved["storage"], saved["name"]) if saved.get("storage") and saved.get("name") else None
