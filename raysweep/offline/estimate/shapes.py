"""A trial's *shape*: what determines its step, eval and start-up time (trials of one shape share a calibration)."""

from __future__ import annotations

import json
from typing import Any

# train keys that change the cost of one step or one eval (the counts — max_steps, epochs, eval_every,
# checkpoint_every — are multiplied by the estimate instead; lr, seed, schedules change no cost)
TRAIN_SHAPE_KEYS = ("batch_size", "eval_batch_size", "grad_accum_steps", "bf16", "gradient_checkpointing")


def shape_key(trial: dict[str, Any]) -> str:
    """What determines a trial's step, eval and start-up time, as canonical JSON.

    The whole model and data sections (model, dtype, quantization; task, files, max_seq_len, example
    caps), the adapter's type and every option that changes compute (r, target_modules, dropout,
    intrinsic_dim, allocation_mode, projector, bounds settings, mask kind and importance, ...; the family's
    `cost_free()` options are left out), the batch sizes, gradient accumulation, precision, gradient
    checkpointing, whether gradients are clipped, and the trial's workers/CPUs/GPUs. Seeds, learning rates,
    λ, sparsity and step counts are not in it."""
    from raysweep import adapters

    train = trial["train"]
    res = trial["resources"]
    cost_free = adapters.family(trial["adapter"]["type"]).cost_free()
    adapter = {k: v for k, v in trial["adapter"].items() if k not in cost_free}
    shape = {
        "model": trial["model"],
        "data": trial["data"],
        "adapter": adapter,
        "train": {k: train.get(k) for k in TRAIN_SHAPE_KEYS} | {"clip": bool(train.get("max_grad_norm"))},
        "resources": {k: res[k] for k in ("num_workers", "cpus_per_worker", "gpus_per_worker")},
    }
    if trial.get("evaluate"):  # task metrics cost an evaluation each (only then: other shapes keep their keys)
        shape["evaluate"] = {k: v for k, v in trial["evaluate"].items() if k != "when"}
    return json.dumps(shape, sort_keys=True, default=str)


def short_name(shape: str) -> str:
    """A readable name of a shape for messages."""
    s = json.loads(shape)
    a = s["adapter"]
    return f"{s['model']['name_or_path']} {a['type']} r={a.get('r')}"
