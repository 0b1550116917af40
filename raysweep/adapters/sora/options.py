"""SoRA / SDoRA options and family records (pydantic only: config/ validates them without torch).

λ and ξ: `lambda` is λ; the proximal step's threshold ξ is derived from it — ξ = λ × the gates' current
learning rate (`threshold: lr_scaled`, raysweep's default; also the SoRA reference's multiply-lr optimizer
and SDoRA's) or ξ = λ itself (`threshold: absolute`, the SoRA reference's `sparse_lambda_2`, e.g. 3e-4).

`convention` picks the defaults of the keys a grid leaves unset (a key that is set always wins):
  raysweep         the field defaults below
  sora_reference   TsinghuaC3I/SoRA run_glue.py: threshold absolute (ξ = lambda, so lambda must be set),
                   gates start randn, L1 term gate_l1·mean|g| with gate_l1 0.001 (its `sparse_lambda`)
  sdora_reference  ZhuochengHe/SDoRA: threshold lr_scaled, gates start at ones, L1 term λ·mean|g| with the
                   same λ (gate_l1: lambda), gates' lr 10 × train.lr
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raysweep.adapters.family import Family
from raysweep.experiment import metrics as M

# what each convention sets when the grid leaves the key unset
CONVENTIONS: dict[str, dict[str, Any]] = {
    "raysweep": {},
    "sora_reference": {"threshold": "absolute", "gate_init": "randn", "gate_l1": 1e-3, "gate_l1_reduction": "mean"},
    "sdora_reference": {"threshold": "lr_scaled", "gate_init": "ones", "gate_l1": "lambda",
                        "gate_l1_reduction": "mean", "gate_lr_scale": 10.0},
}


class GateOptions(BaseModel):
    """Keys under `adapter:` for gated adapters (all may be grid axes, e.g. `adapter.lambda`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    convention: Literal["raysweep", "sora_reference", "sdora_reference"] = Field(
        "raysweep", description="defaults of the unset gate keys: raysweep, sora_reference (TsinghuaC3I/SoRA) or "
        "sdora_reference (ZhuochengHe/SDoRA)")
    lambda_: float = Field(0.1, ge=0, alias="lambda",
                           description="sparsity strength λ; the proximal threshold is ξ = λ × the gates' lr "
                                       "(threshold lr_scaled) or ξ = λ (threshold absolute)")
    threshold: Literal["lr_scaled", "absolute"] = Field(
        "lr_scaled", description="ξ per step: lambda × the gates' current lr (lr_scaled) or lambda itself (absolute)")
    gate_lr: float | None = Field(None, gt=0, description="learning rate of the gates (null: gate_lr_scale × "
                                                          "train.lr); no weight decay")
    gate_lr_scale: float = Field(1.0, gt=0, description="with gate_lr null, the gates' lr is gate_lr_scale × "
                                                        "train.lr (SDoRA: 10)")
    gate_init: Literal["ones", "randn"] = Field(
        "ones", description="initial gates: ones (a fresh gated adapter is plain LoRA) or randn (standard normal, "
                            "the SoRA reference)")
    gate_l1: float | Literal["lambda"] = Field(
        0.0, description="weight w of an L1 term on the gates added to the loss (a number ≥ 0, or 'lambda': "
                         "w = adapter.lambda, as in SDoRA)")
    gate_l1_reduction: Literal["sum", "mean"] = Field(
        "sum", description="L1 term w·Σ|g| (sum) or w·Σ|g| / the number of gate entries (mean, the references')")
    lambda_schedule: Literal["constant", "linear", "log_linear", "exp_linear", "exp"] = Field(
        "constant", description="raise lambda to lambda_final: linear, log_linear (log of a linspace of e^λ), "
                                "exp_linear (geometric; raysweep's former log_linear) or exp")
    lambda_final: float | None = Field(None, gt=0, description="lambda at the end of the schedule (with lambda_schedule)")
    lambda_stages: int | None = Field(
        None, ge=2, description="staged schedule (SoRA's Algorithm 1, the reference's lambda_num): after the main "
                                "run, lambda_stages − 1 stages of stage_steps steps, λ stepped through the schedule")
    stage_steps: int | None = Field(None, gt=0, description="optimizer steps of each extra stage (with lambda_stages; "
                                                           "the SoRA reference runs 15 epochs per stage)")

    @field_validator("gate_l1", mode="before")
    @classmethod
    def _l1_weight(cls, value: Any) -> Any:
        # one clear message instead of the union's two (a number; the word 'lambda')
        if value == "lambda" or (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"adapter.gate_l1 must be a number ≥ 0 or 'lambda' (w = adapter.lambda), got {value!r}")

    @model_validator(mode="before")
    @classmethod
    def _convention_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        convention = data.get("convention", "raysweep")
        if convention == "sora_reference" and "lambda" not in data and "lambda_" not in data:
            raise ValueError("adapter.convention 'sora_reference' thresholds by λ itself (the reference's "
                             "sparse_lambda_2): set adapter.lambda, e.g. 3e-4")
        if data.get("gate_lr") is not None and "gate_lr_scale" in data:
            raise ValueError("adapter.gate_lr and adapter.gate_lr_scale are both set; keep one (gate_lr is the "
                             "gates' lr itself, gate_lr_scale a multiple of train.lr)")
        defaults = CONVENTIONS.get(convention, {})  # an unknown name is reported by the field's own check
        if data.get("gate_lr") is not None:
            defaults = {k: v for k, v in defaults.items() if k != "gate_lr_scale"}
        return defaults | data

    @model_validator(mode="after")
    def _schedule_has_an_end(self) -> GateOptions:
        if self.lambda_schedule == "constant" and self.lambda_final is not None:
            raise ValueError("adapter.lambda_final has no effect with lambda_schedule 'constant'; set "
                             "adapter.lambda_schedule (linear | log_linear | exp_linear | exp) or remove lambda_final")
        if self.lambda_schedule != "constant":
            if self.lambda_final is None:
                raise ValueError(f"lambda_schedule {self.lambda_schedule!r} needs adapter.lambda_final "
                                 "(the lambda reached at the end of the schedule)")
            if self.lambda_final < self.lambda_:
                raise ValueError("adapter.lambda_final must be ≥ adapter.lambda (the schedule sparsifies: ξ rises)")
            if self.lambda_schedule == "exp_linear" and self.lambda_ <= 0:
                raise ValueError("lambda_schedule 'exp_linear' (geometric) needs adapter.lambda > 0")
        return self

    @model_validator(mode="after")
    def _stages_complete(self) -> GateOptions:
        if (self.lambda_stages is None) != (self.stage_steps is None):
            raise ValueError("adapter.lambda_stages and adapter.stage_steps go together: set both (a staged "
                             "schedule) or neither")
        if self.lambda_stages is None:
            return self
        if self.lambda_schedule == "constant":
            raise ValueError("adapter.lambda_stages steps λ through a schedule: set adapter.lambda_schedule "
                             "(linear | log_linear | exp_linear | exp) and adapter.lambda_final")
        if self.threshold != "absolute":
            raise ValueError("adapter.lambda_stages needs adapter.threshold: absolute (the stages run at the main "
                             "run's final lr, 0 after decay, where ξ = λ × lr would vanish)")
        return self

    def gate_l1_weight(self) -> float:
        """w of the L1 term: gate_l1, or λ itself (gate_l1: lambda; λ as set, never the scheduled value)."""
        return self.lambda_ if self.gate_l1 == "lambda" else float(self.gate_l1)


# reported by staged trials with every result (names in experiment/metrics.py, like every metric); the old
# names stay importable from here (tests/test_sora_conventions.py imports them)
STAGE_METRIC = M.ADAPTER_STAGE
LAMBDA_METRIC = M.ADAPTER_LAMBDA

_COLUMNS = (("λ", "option", "lambda"), ("sparsity", "metric", M.ADAPTER_SPARSITY),
            ("eff. params", "metric", M.ADAPTER_EFFECTIVE_PARAMS))
# their proximal gate step edits gate values after optimizer.step(); ZeRO keeps its own fp32 copy of the
# trainable weights and writes it back at the next step, undoing the edit (1.5e-3 off DDP after 20 steps)
_ZERO = "its proximal gate step edits the gates after each optimizer step, and ZeRO writes its own fp32 copy " \
        "of the trainable weights back over them"
_VALUES = frozenset({"lambda", "lambda_", "lambda_schedule", "lambda_final", "threshold", "gate_lr", "gate_l1",
                     "convention", "gate_lr_scale", "gate_init", "gate_l1_reduction", "lambda_stages", "stage_steps"})
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
