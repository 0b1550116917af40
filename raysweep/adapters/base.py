"""The interface every adapter family implements.

The training loop (trial/loop.py) only talks to this interface: build the adapted model, add a penalty to
the loss, act after each optimizer step, report extra metrics, save in peft format. Families with learned
gates or masks (SoRA, SubLoRA, sparse masks) override the hooks; plain peft families use the defaults.
Adapters never import Ray. This module imports torch and peft only inside the hooks that use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from raysweep import adapters
from raysweep.experiment.layout import PEFT_WEIGHTS


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts of a torch module."""
    # DeepSpeed ZeRO-3 leaves an empty tensor in a partitioned parameter and its true size in ds_numel
    def numel(p) -> int:
        return getattr(p, "ds_numel", None) or p.numel()

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    return trainable, total



@dataclass
class TrialContext:
    """What the training loop lends an adapter for `prepare` and `on_train_end` (no Ray objects in here)."""

    config: dict[str, Any]  # the resolved trial config
    device: Any  # torch.device of this process
    batches: Callable[[int, int], Iterator[dict[str, Any]]]  # (n_examples, seed) -> collated train batches on device
    evaluate: Callable[[Any], dict[str, float]]  # model -> eval metrics over the whole eval split
    store: str  # a directory or object-store URI shared by all trials of all sweeps on this storage (e.g. masks computed once)
    world_rank: int = 0
    train_set: Any = None  # the tokenized training examples (data.Example list) as the loop trains on them


def parse_options(options: type[BaseModel], cfg: dict[str, Any]) -> BaseModel:
    """`options` built from the keys of `cfg` it knows (by alias, e.g. `lambda`, or by field name); the
    common adapter keys (r, alpha, target_modules, ...) are left out."""
    known = set(options.model_fields) | {f.alias for f in options.model_fields.values() if f.alias}
    return options(**{k: v for k, v in cfg.items() if k in known})


class Adapter:
    """One adapter family. Subclasses set `name` (their registry name: the options model is the family
    record's), `description` and implement `build`."""

    name: ClassVar[str]
    description: ClassVar[str]
    # file name of the per-module log written into every checkpoint (None: layer_log() is not used)
    LAYER_LOG: ClassVar[str | None] = None

    def __init__(self, cfg: dict[str, Any]):
        # cfg: the trial's resolved `adapter:` section (common keys + this family's options)
        self.cfg = cfg
        self.options = parse_options(adapters.family(self.name).Options, cfg)  # this family's options, validated

    def build(self, model):
        """Wrap `model` with the adapter; only adapter parameters may require grad afterwards."""
        raise NotImplementedError

    def prepare(self, model, context: TrialContext) -> dict[str, Any]:
        """Called once after `build` and the data are ready, before the optimizer exists (e.g. compute
        pruning masks from calibration batches). Returns static metrics reported with every result."""
        return {}

    def on_train_end(self, model, context: TrialContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """Called once when training ends (last step or early stop), before the final checkpoint.
        Returns (metrics for the final report, {file name: JSON-able report} saved in that checkpoint)."""
        return {}, {}

    def param_groups(self, model, train_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        """Optimizer parameter groups (AdamW); families with gates give them their own lr/decay."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": train_cfg["lr"],
                 "weight_decay": train_cfg["weight_decay"]}]

    def loss_penalty(self, model):
        """An extra term added to the training loss (None: no penalty)."""
        return None

    def after_optimizer_step(self, model, optimizer, progress: float) -> None:
        """Called after every optimizer step (e.g. proximal steps on gates); progress = step / total ∈ (0, 1]."""

    def stage_ends(self, steps: int) -> list[int]:
        """The steps where each training stage ends, the last one ending training (default: one stage)."""
        return [steps]

    def layer_log(self, model) -> dict[str, float] | None:
        """Per-module values logged with every eval/log report into the LAYER_LOG csv (None: no log)."""
        return None

    def metrics(self, model) -> dict[str, float]:
        """Adapter metrics reported with every result (effective params, sparsity, ...)."""
        from raysweep.experiment import metrics as m

        trainable, total = count_parameters(model)
        return {
            m.ADAPTER_TRAINABLE_PARAMS: trainable,
            m.ADAPTER_EFFECTIVE_PARAMS: trainable,
            m.ADAPTER_TOTAL_PARAMS: total - trainable,
        }

    def save(self, model, directory: Path, state: dict | None = None) -> None:
        """Save the adapter in a format `PeftModel.from_pretrained` loads: the model's current adapter, or
        the weights in `state` (a `state_dict()` taken earlier, e.g. the best one) with the same config."""
        model.save_pretrained(str(directory))
        if state is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(Path(directory) / PEFT_WEIGHTS))

    def state_dict(self, model) -> dict:
        """Adapter weights only (for in-memory best copies and resume)."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}

    def load_state_dict(self, model, state: dict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
