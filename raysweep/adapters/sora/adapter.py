"""SoRA and SDoRA: LoRA / DoRA with a learned sparse gate between A and B (maths in gating.py).

Training: the gates are their own optimizer parameter group (own learning rate, no weight decay); after
every optimizer step they take the proximal soft-threshold step g ← sign(g)·max(|g| − ξ, 0). By default
ξ = λ × the learning rate the gates' step just used (`threshold: lr_scaled`, the proximal-gradient form of
the SoRA paper, its multiply-lr optimizer and SDoRA's, so ξ follows warmup and decay); `threshold:
absolute` uses ξ = λ every step (the SoRA reference's `sparse_lambda_2`). An optional schedule raises λ
over training or, staged, after it (schedules.py), and an optional L1 term on the gates is added to the
loss. `convention` sets these to a reference's (options.py).

Staged schedule (`lambda_stages`, SoRA's Algorithm 1): the loop asks `stage_ends` for the steps where the
main run and each stage end, evaluates at each and keeps the main run's final learning rate in the stages,
as the reference's exhausted scheduler does (0 after a linear or cosine decay: then only the absolute
threshold acts, shrinking every gate by stage_steps × λ_k in stage k). Every report of a staged trial says
its stage and λ. Unlike the reference, the stages go on from the main run's last state, not its best.

Checkpoints and exports: dead ranks are pruned and g folded into B, so `adapter/` is an ordinary peft LoRA
(sora) or DoRA (sdora) adapter with a per-module `rank_pattern`; the full gated state (A, B, g, m) is
kept beside it for resuming.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import LoraConfig
from safetensors.torch import save_file

from raysweep.adapters.lora import EXPORT_INFO, LoraAdapter
from raysweep.adapters.sora import gating, schedules
from raysweep.adapters.sora.options import SDORA, SORA, GateOptions
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import PEFT_WEIGHTS, SPARSITY_LOG


class SoraAdapter(LoraAdapter):
    name = SORA.name
    description = SORA.description
    options: GateOptions
    use_dora = False
    LAYER_LOG = SPARSITY_LOG  # in every checkpoint: step, overall, one column per adapted module

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.plan: schedules.StagePlan | None = None  # the staged schedule, once the loop knows its steps
        self.progress = 0.0  # of the latest optimizer step (what metrics() reports λ and the stage for)

    @property
    def scaling(self) -> float:
        return self.cfg["alpha"] / self.cfg["r"]  # config/schema.py resolves an empty alpha to 2·r

    def build(self, model):
        model = super().build(model)
        gating.add_gates(model, self.options.gate_init)
        return model

    # --- training hooks ----------------------------------------------------------------------------
    def param_groups(self, model, train_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [
            {"params": [p for n, p in named if not gating.is_gate(n)], "lr": train_cfg["lr"],
             "weight_decay": train_cfg["weight_decay"]},
            # no weight decay: the gates' penalty is L1 alone (a lasso, as in both references), not elastic net
            {"params": [p for n, p in named if gating.is_gate(n)], "lr": self.gate_lr(train_cfg["lr"]),
             "weight_decay": 0.0, "name": "gates"},
        ]

    def gate_lr(self, lr: float) -> float:
        """The gates' peak learning rate: gate_lr, else gate_lr_scale × train.lr (SDoRA's 10 × lr)."""
        return self.options.gate_lr or self.options.gate_lr_scale * lr

    def stage_ends(self, main_steps: int) -> list[int]:
        """The steps where the main run and each extra stage of a staged schedule end: the loop evaluates at
        each, keeps the main run's final lr in the stages, and stops at the last ([main_steps] if unstaged)."""
        o = self.options
        if o.lambda_stages is None:
            return [main_steps]
        lambdas = schedules.stage_lambdas(o.lambda_, o.lambda_final, o.lambda_stages, o.lambda_schedule)
        self.plan = schedules.StagePlan(main_steps, o.stage_steps, tuple(lambdas))
        return self.plan.ends

    def stage(self, progress: float) -> int:
        """The stage of the step that ends at `progress` (0: the main run, or no staged schedule)."""
        if self.plan is None:
            return 0
        return self.plan.stage(round(progress * self.plan.ends[-1]) - 1)

    def lambda_now(self, progress: float) -> float:
        """λ of the step that ends at `progress`: staged, the stage's; else the continuous schedule's."""
        o = self.options
        if o.lambda_stages is not None:
            # before the loop lays out the stages (stage_ends), only the main run's λ is known
            return o.lambda_ if self.plan is None else self.plan.lambdas[self.stage(progress)]
        return schedules.lambda_at(progress, o.lambda_, o.lambda_final, o.lambda_schedule)

    def threshold(self, optimizer, progress: float) -> float:
        """ξ for the step that just ran: λ, or λ × the gates' lr as it was for that step (the loop calls
        after_optimizer_step before scheduler.step())."""
        lam = self.lambda_now(progress)
        if self.options.threshold == "absolute":
            return lam
        gate_lr = next(g["lr"] for g in optimizer.param_groups if g.get("name") == "gates")
        return lam * gate_lr

    def after_optimizer_step(self, model, optimizer, progress: float) -> None:
        self.progress = progress
        xi = self.threshold(optimizer, progress)
        if xi > 0:
            for g in gating.gates(model):
                gating.soft_threshold_(g, xi)

    def loss_penalty(self, model):
        weight = self.options.gate_l1_weight()
        if not weight:
            return None
        return gating.l1_term(gating.gates(model), weight, self.options.gate_l1_reduction)

    # --- metrics -----------------------------------------------------------------------------------
    def metrics(self, model) -> dict[str, float]:
        out = super().metrics(model)
        all_gates = [g.detach() for g in gating.gates(model)]
        total = sum(g.numel() for g in all_gates)
        out[M.ADAPTER_SPARSITY] = sum(int((g == 0).sum()) for g in all_gates) / total
        out[M.ADAPTER_NEAR_ZERO_GATES] = sum(int((g.abs() < 1e-6).sum()) for g in all_gates)
        out[M.ADAPTER_LIVE_RANKS] = total - sum(int((g == 0).sum()) for g in all_gates)
        out[M.ADAPTER_EFFECTIVE_PARAMS] = gating.effective_params(model)
        if self.options.lambda_stages is not None:  # the sparsity–quality path: which λ each eval is at
            out[M.ADAPTER_STAGE] = self.stage(self.progress)
            out[M.ADAPTER_LAMBDA] = self.lambda_now(self.progress)
        return out

    def layer_log(self, model) -> dict[str, float]:
        """Fraction of dead gates per adapted module (the per-layer sparsity heatmap's columns)."""
        return {name: float((gating.gate_of(layer) == 0).float().mean())
                for name, layer in gating.lora_layers(model)}

    # --- state, checkpoints, export ----------------------------------------------------------------
    def state_dict(self, model) -> dict:
        return gating.state_dict(model)

    def load_state_dict(self, model, state: dict) -> None:
        gating.load_state_dict(model, state)

    def save(self, model, directory: Path, state: dict | None = None) -> None:
        """The pruned, folded export as a plain peft adapter (state: this gated state instead of the model's)."""
        kwargs, tensors = gating.export(state if state is not None else self.state_dict(model), self.scaling)
        base = model.peft_config["default"]
        config = LoraConfig(lora_dropout=self.cfg["dropout"], task_type="CAUSAL_LM",
                            base_model_name_or_path=base.base_model_name_or_path, **kwargs)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(directory))
        save_file(tensors, str(directory / PEFT_WEIGHTS))
        (directory / EXPORT_INFO).write_text(json.dumps(
            {"from": self.name, "pruned_and_folded": True, "rank_pattern": kwargs["rank_pattern"]}, indent=2))


class SdoraAdapter(SoraAdapter):
    name = SDORA.name
    description = SDORA.description
    use_dora = True
