"""What a trial checkpoint holds, and reading it back.

A checkpoint directory (adapter weights only, small):
  adapter/           current adapter, peft format: PeftModel.from_pretrained(base, "adapter")
  best_adapter/      adapter with the best eval/loss so far, peft format (so "last K + best" holds
                     with Ray keeping only the last K checkpoints)
  trainer_state.pt   optimizer, lr scheduler, step, early-stopping state, RNG: resume continues exactly
  trial_config.json  the resolved trial config
  metrics.json       the metrics reported with this checkpoint
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"
BEST_ADAPTER_DIR = "best_adapter"
TRAINER_STATE = "trainer_state.pt"
TRIAL_CONFIG = "trial_config.json"
METRICS = "metrics.json"


def save(directory: Path, *, adapter, model, best_state: dict | None, trainer_state: dict[str, Any],
         config: dict[str, Any], metrics: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    adapter.save(model, directory / ADAPTER_DIR)
    best_dir = directory / BEST_ADAPTER_DIR
    if best_state is None:
        shutil.copytree(directory / ADAPTER_DIR, best_dir, dirs_exist_ok=True)
    else:
        # same files as save_pretrained writes: its config plus the best weights
        best_dir.mkdir(exist_ok=True)
        for f in (directory / ADAPTER_DIR).glob("*.json"):
            shutil.copy(f, best_dir / f.name)
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(best_dir / "adapter_model.safetensors"))
    torch.save(trainer_state, directory / TRAINER_STATE)
    (directory / TRIAL_CONFIG).write_text(json.dumps(config, indent=2))
    (directory / METRICS).write_text(json.dumps(metrics, indent=2, default=float))
    return directory


def load_trainer_state(directory: Path) -> dict[str, Any]:
    import torch

    # our own file (optimizer state, python ints, RNG tensors): not untrusted input
    return torch.load(directory / TRAINER_STATE, weights_only=False)


def load_adapter_state(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / ADAPTER_DIR / "adapter_model.safetensors"))


def load_best_state(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / BEST_ADAPTER_DIR / "adapter_model.safetensors"))


def load_metrics(directory: Path) -> dict[str, Any]:
    return json.loads((directory / METRICS).read_text())
