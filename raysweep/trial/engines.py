"""How the workers of one trial share a training step: `resources.strategy`.

- `ddp`: every worker holds the whole (adapted) model; Ray Train wraps it in DistributedDataParallel,
  which averages the gradients (gloo on CPU, NCCL on GPU). One worker: no wrapping at all.
- `deepspeed_zero2` / `deepspeed_zero3`: a DeepSpeed engine over the same model and the same torch AdamW
  (with the adapter's parameter groups): ZeRO-2 partitions the optimizer state and the gradients of the
  trainable parameters over the workers, ZeRO-3 the parameters too (the frozen base included), so a
  base that does not fit one device with its training state can still be fine-tuned. DeepSpeed joins the
  process group that Ray Train set up. Its checkpoint (each worker's shard of the optimizer state, the
  trainable weights) goes into `deepspeed/` of the trial checkpoint, every worker reporting its files into
  the same checkpoint directory; `adapter/` stays a plain peft adapter, written by rank 0 from the
  gathered weights, so analysis and export do not know DeepSpeed was used.

The training loop (trial/loop.py, run_training) calls `zero_grad / backward / step`, `gathered` around
anything that reads whole adapter weights, and `save_shard / restore` for checkpoints; nothing else differs.
Which adapters and settings each strategy accepts is checked before Ray starts (config/rules.py), which
also resolves the ZeRO stage into the trial's config (`resources.zero_stage`). This module imports no torch
or DeepSpeed at import time.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from raysweep.experiment.layout import DEEPSPEED_DIR

_TAG = "state"  # DeepSpeed checkpoint tag: one per trial checkpoint directory, so a constant


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, mappings merged key by key (so zero_optimization keeps its stage)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build(config: dict[str, Any]) -> DDPStrategy:
    """The trial's strategy: `resources.zero_stage` resolved by config (config/grid.py run_config); a config
    without it means ddp."""
    stage = config["resources"].get("zero_stage")
    return DDPStrategy(config) if stage is None else DeepSpeedStrategy(config, stage)


def limit_gpu_memory(fraction: float | None, device) -> bool:
    """Cap this process's share of its GPU's memory (trials packed on one GPU by fractional gpus_per_worker),
    so a trial that outgrows its share fails with out-of-memory itself instead of starving its neighbours.
    Only on CUDA; returns whether a cap was set. GPU-unverified here (no GPU on the development machines)."""
    if fraction is None or getattr(device, "type", "cpu") != "cuda":
        return False
    import torch

    # a device without an index (TuneSession's "cuda") means the current one; torch wants an index
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(float(fraction), index)
    return True


class DDPStrategy:
    """The default: plain torch steps on a DDP-wrapped model (unwrapped with 1 worker); DeepSpeedStrategy
    overrides what differs."""

    name = "ddp"

    def __init__(self, config: dict[str, Any]):
        self.train = config["train"]

    def prepare(self, model, optimizer, session):
        """The module the loop calls forward on (DDP wrapper, DeepSpeed engine, or the model itself)."""
        return session.prepare_model(model)

    def zero_grad(self, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def backward(self, loss) -> None:
        """One micro-batch's backward; gradients of `grad_accum_steps` micro-batches are averaged."""
        (loss / self.train["grad_accum_steps"]).backward()

    def step(self, model, optimizer) -> None:
        import torch

        if self.train["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                           self.train["max_grad_norm"])
        optimizer.step()

    def gathered(self, model):
        """Context in which every trainable weight is whole on this worker (all workers must enter it)."""
        return contextlib.nullcontext()

    def optimizer_state(self, optimizer) -> dict | None:
        """Optimizer state for trainer_state.pt (rank 0; replicated under DDP)."""
        return optimizer.state_dict()

    def save_shard(self, directory: Path) -> bool:
        """Write this worker's part of the training state into `directory` (every worker calls it at the same
        step); True if it wrote files that must reach the checkpoint."""
        return False

    def restore(self, directory: Path, saved: dict[str, Any], model, adapter, optimizer) -> None:
        from raysweep.trial import checkpointing

        adapter.load_state_dict(model, checkpointing.load_adapter_state(directory))
        optimizer.load_state_dict(saved["optimizer"])



class DeepSpeedStrategy(DDPStrategy):
    def __init__(self, config: dict[str, Any], stage: int):
        super().__init__(config)
        self.extra = config["resources"].get("deepspeed_config") or {}
        self.stage = stage
        self.name = f"deepspeed_zero{stage}"
        self.engine = None

    def ds_config(self, n_trainable: int) -> dict[str, Any]:
        t = self.train
        # DeepSpeed's default buckets (5e8 elements: 2 GB each in fp32) are sized for full fine-tuning; an
        # adapter's gradients fit one bucket of their own size, and a big default would eat a packed GPU share
        bucket = int(min(5e8, max(2**20, n_trainable)))
        zero: dict[str, Any] = {"stage": self.stage, "reduce_bucket_size": bucket}
        if self.stage == 2:
            zero["allgather_bucket_size"] = bucket
        return merged({
            "train_micro_batch_size_per_gpu": t["batch_size"],
            "gradient_accumulation_steps": t["grad_accum_steps"],
            "gradient_clipping": float(t["max_grad_norm"] or 0.0),  # DeepSpeed clips partitioned gradients itself
            "zero_optimization": zero,
            # the torch AdamW with the adapter's parameter groups (own lr / no decay for gates, split logits)
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }, self.extra)

    def prepare(self, model, optimizer, session):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # an INFO line per step otherwise
        if get_accelerator().device_name() == "cpu":
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (~110 s on 2 cores, once
            # per machine) that serves only inference all-reduce; ZeRO's training collectives use gloo. The
            # probed-ops table is DeepSpeed's own switch for this (edits to it persist, ops/__init__.py).
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                    config=self.ds_config(n_trainable))
        if self.stage == 3:
            # ZeRO-3 replaced this trial's parameters by partitions; the process's cached base still holds the
            # whole weights, which is the memory ZeRO-3 is meant to give back (one trial per process here)
            from raysweep.inputs import model_cache

            model_cache.clear()
        return self.engine

    def zero_grad(self, optimizer) -> None:
        pass  # the engine zeroes gradients after each optimizer step

    def backward(self, loss) -> None:
        # engine.backward divides by gradient_accumulation_steps; engine.step() counts micro-batches and steps
        # the optimizer only at the accumulation boundary, so it runs after every micro-batch but the last
        # (whose step() is `step` below, where the loop expects the optimizer step)
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def step(self, model, optimizer) -> None:
        self.engine.step()  # clipping (gradient_clipping) included

    def gathered(self, model):
        if self.stage != 3:
            return contextlib.nullcontext()  # ZeRO-2 keeps whole parameters on every worker
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad],
                                                 modifier_rank=None)

    def optimizer_state(self, optimizer) -> dict | None:
        return None  # partitioned over the workers: each saves its shard (save_shard)

    def save_shard(self, directory: Path) -> bool:
        # collective: every worker writes zero_pp_rank_<rank>_*_optim_states.pt; rank 0 the trainable weights
        self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=_TAG, exclude_frozen_parameters=True)
        return True

    def restore(self, directory: Path, saved: dict[str, Any], model, adapter, optimizer) -> None:
        # weights and optimizer state together: under ZeRO the optimizer's fp32 master copy is what the next step
        # starts from, so loading the adapter into the model alone would be overwritten
        path, _ = self.engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=_TAG, load_module_strict=False,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"no DeepSpeed state in {directory / DEEPSPEED_DIR}: was this checkpoint written "
                               "with another resources.strategy?")
