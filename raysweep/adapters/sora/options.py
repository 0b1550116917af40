"""SoRA / SDoRA options and family records (pydantic only: config/ validates them without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raysweep.adapters.family import Family
from raysweep.experiment import metrics as M


class GateOptions(BaseModel):
    """Keys under `adapter:` for gated adapters (all may be grid axes, e.g. `adapter.lambda`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lambda_: float = Field(0.1, ge=0, alias="lambda",
                           description="sparsity strength ξ of the proximal soft threshold on the gates")
    threshold: Literal["lr_scaled", "absolute"] = Field(
        "lr_scaled", description="ξ per step: lambda × the gates' current lr (lr_scaled) or lambda itself (absolute)")
    gate_lr: float | None = Field(None, gt=0, description="learning rate of the gates (null: train.lr); no weight decay")
    gate_l1: float = Field(0.0, ge=0, description="weight of an optional L1 term gate_l1·Σ|g| added to the loss")
    lambda_schedule: Literal["constant", "linear", "log_linear", "exp"] = Field(
        "constant", description="raise lambda from `lambda` to `lambda_final` over training (sparsifying schedule)")
    lambda_final: float | None = Field(None, gt=0, description="lambda at the end of training (with lambda_schedule)")

    @model_validator(mode="after")
    def _schedule_has_an_end(self) -> GateOptions:
        if self.lambda_schedule == "constant" and self.lambda_final is not None:
            raise ValueError("adapter.lambda_final has no effect with lambda_schedule 'constant'; "
                             "set adapter.lambda_schedule (linear | log_linear | exp) or remove lambda_final")
        if self.lambda_schedule != "constant":
            if self.lambda_final is None:
                raise ValueError(f"lambda_schedule {self.lambda_schedule!r} needs adapter.lambda_final "
                                 "(the lambda reached at the end of training)")
            if self.lambda_final < self.lambda_:
                raise ValueError("adapter.lambda_final must be ≥ adapter.lambda (the schedule sparsifies: ξ rises)")
            if self.lambda_schedule == "log_linear" and self.lambda_ <= 0:
                raise ValueError("lambda_schedule 'log_linear' needs adapter.lambda > 0")
        return self


_COLUMNS = (("λ", "option", "lambda"), ("sparsity", "metric", M.ADAPTER_SPARSITY),
            ("eff. params", "metric", M.ADAPTER_EFFECTIVE_PARAMS))
# their proximal gate step edits gate values after optimizer.step(); ZeRO keeps its own fp32 copy of the
# trainable weights and writes it back at the next step, undoing the edit (1.5e-3 off DDP after 20 steps)
_ZERO = "its proximal gate step edits the gates after each optimizer step, and ZeRO writes its own fp32 copy " \
        "of the trainable weights back over them"
_VALUES = frozenset({"lambda", "lambda_", "lambda_schedule", "lambda_final", "threshold", "gate_lr", "gate_l1"})
SORA = Family(
    "sora", "raysweep.adapters.sora.adapter:SoraAdapter",
    "LoRA with a learned gate g between A and B (ΔW = B·diag(g)·A·s), sparsified by a proximal step",
    options="raysweep.adapters.sora.options:GateOptions", zero_stages=(), zero_refusal=_ZERO,
    cost_free_options=_VALUES, progress_columns=_COLUMNS)
SDORA = Family(
    "sdora", "raysweep.adapters.sora.adapter:SdoraAdapter",
    "SoRA's gated update on DoRA (learned magnitude per output row on top of B·diag(g)·A·s)",
    options="raysweep.adapters.sora.options:GateOptions", zero_stages=(), zero_refusal=_ZERO,
    cost_free_options=_VALUES, progress_columns=_COLUMNS)
FAMILIES = (SORA, SDORA)
