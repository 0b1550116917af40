"""Writing a trial checkpoint and reading it back (its file names live in experiment/layout.py).

A checkpoint directory (adapter weights only, small):
  adapter/           current adapter, peft format: PeftModel.from_pretrained(base, "adapter") (gated
                     adapters: pruned and folded into plain LoRA/DoRA)
  best_adapter/      adapter with the best eval/loss so far, peft format (so "last K + best" holds
                     with Ray keeping only the last K checkpoints)
  adapter_state.safetensors, best_state.safetensors
                     the adapter's training state (Adapter.state_dict: e.g. gates too), for resuming
  trainer_state.pt   optimizer, lr scheduler, step, early-stopping state, RNG: resume continues exactly
  <layer log>.csv    per-module log history up to this step, if the adapter keeps one (sparsity.csv)
  trial_config.json  the resolved trial config
  metrics.json       the metrics reported with this checkpoint
  <report>.json      final checkpoint only: the adapter's end-of-training reports (validation_report.json
                     of masked trials, bounds.json of SubLoRA trials)
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from raysweep.experiment.layout import (
    ADAPTER_DIR,
    ADAPTER_STATE,
    BEST_ADAPTER_DIR,
    BEST_STATE,
    METRICS,
    PEFT_WEIGHTS,
    TRAINER_STATE,
    TRIAL_CONFIG,
)


def save(directory: Path, *, adapter, model, best_state: dict | None, trainer_state: dict[str, Any],
         config: dict[str, Any], metrics: dict[str, Any], layer_log: tuple[str, list[dict]] | None = None,
         reports: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint; `best_state` None: the best adapter is the current one (its files are copied)."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = adapter.state_dict(model)
    adapter.save(model, directory / ADAPTER_DIR)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / ADAPTER_STATE))
    if best_state is None:
        shutil.copytree(directory / ADAPTER_DIR, directory / BEST_ADAPTER_DIR, dirs_exist_ok=True)
        shutil.copy(directory / ADAPTER_STATE, directory / BEST_STATE)
    else:
        adapter.save(model, directory / BEST_ADAPTER_DIR, state=best_state)
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(directory / BEST_STATE))
    if layer_log is not None:
        write_layer_log(directory / layer_log[0], layer_log[1])
    torch.save(trainer_state, directory / TRAINER_STATE)
    (directory / TRIAL_CONFIG).write_text(json.dumps(config, indent=2))
    (directory / METRICS).write_text(json.dumps(metrics, indent=2, default=float))
    for name, report in (reports or {}).items():  # end-of-training reports (validation_report.json, bounds.json)
        (directory / name).write_text(json.dumps(report, indent=2, default=float))
    return directory


def load_trainer_state(directory: Path) -> dict[str, Any]:
    import torch

    # our own file (optimizer state, python ints, RNG tensors): not untrusted input
    return torch.load(directory / TRAINER_STATE, weights_only=False)


def load_adapter_state(directory: Path) -> dict:
    from safetensors.torch import load_file

    path = directory / ADAPTER_STATE
    if not path.is_file():  # checkpoints written before the training state was split from the export
        path = directory / ADAPTER_DIR / PEFT_WEIGHTS
    return load_file(str(path))


def load_best_state(directory: Path) -> dict:
    from safetensors.torch import load_file

    path = directory / BEST_STATE
    if not path.is_file():
        path = directory / BEST_ADAPTER_DIR / PEFT_WEIGHTS
    return load_file(str(path))


def write_layer_log(path: Path, rows: list[dict]) -> None:
    """step, overall, then one column per module (the order of the first row)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def load_layer_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: int(v) if k == "step" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def load_metrics(directory: Path) -> dict[str, Any]:
    return json.loads((directory / METRICS).read_text())
