"""SoRA and SDoRA: LoRA / DoRA with a learned sparse gate between A and B (maths in gating.py).

Training: the gates are their own optimizer parameter group (own learning rate, no weight decay); after
every optimizer step they take the proximal soft-threshold step g ← sign(g)·max(|g| − ξ, 0). By default
ξ = lambda × the gates' current learning rate (`threshold: lr_scaled`, the proximal-gradient form of the
SoRA paper, so ξ follows warmup and decay); `threshold: absolute` uses ξ = lambda every step. An optional
schedule raises lambda over training, and an optional L1 term on the gates is added to the loss.

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
from raysweep.adapters.sora import gating
from raysweep.adapters.sora.options import SDORA, SORA, GateOptions
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import PEFT_WEIGHTS, SPARSITY_LOG


class SoraAdapter(LoraAdapter):
    name = SORA.name
    description = SORA.description
    options: GateOptions
    use_dora = False
    LAYER_LOG = SPARSITY_LOG  # in every checkpoint: step, overall, one column per adapted module

    @property
    def scaling(self) -> float:
        return self.cfg["alpha"] / self.cfg["r"]  # config/schema.py resolves an empty alpha to 2·r

    def build(self, model):
        model = super().build(model)
        gating.add_gates(model)
        return model

    # --- training hooks ----------------------------------------------------------------------------
    def param_groups(self, model, train_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [
            {"params": [p for n, p in named if not gating.is_gate(n)], "lr": train_cfg["lr"],
             "weight_decay": train_cfg["weight_decay"]},
            {"params": [p for n, p in named if gating.is_gate(n)], "lr": self.options.gate_lr or train_cfg["lr"],
             "weight_decay": 0.0, "name": "gates"},
        ]

    def threshold(self, optimizer, progress: float) -> float:
        o = self.options
        lam = gating.threshold_at(progress, o.lambda_, o.lambda_final, o.lambda_schedule)
        if o.threshold == "absolute":
            return lam
        gate_lr = next(g["lr"] for g in optimizer.param_groups if g.get("name") == "gates")
        return lam * gate_lr

    def after_optimizer_step(self, model, optimizer, progress: float) -> None:
        xi = self.threshold(optimizer, progress)
        if xi > 0:
            for g in gating.gates(model):
                gating.soft_threshold_(g, xi)

    def loss_penalty(self, model):
        if not self.options.gate_l1:
            return None
        return self.options.gate_l1 * sum(g.abs().sum() for g in gating.gates(model))

    # --- metrics -----------------------------------------------------------------------------------
    def metrics(self, model) -> dict[str, float]:
        out = super().metrics(model)
        all_gates = [g.detach() for g in gating.gates(model)]
        total = sum(g.numel() for g in all_gates)
        out[M.ADAPTER_SPARSITY] = sum(int((g == 0).sum()) for g in all_gates) / total
        out[M.ADAPTER_NEAR_ZERO_GATES] = sum(int((g.abs() < 1e-6).sum()) for g in all_gates)
        out[M.ADAPTER_LIVE_RANKS] = total - sum(int((g == 0).sum()) for g in all_gates)
        out[M.ADAPTER_EFFECTIVE_PARAMS] = gating.effective_params(model)
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
