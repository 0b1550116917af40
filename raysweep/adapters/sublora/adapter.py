"""SubLoRA: the LoRA parameters live in a random d-dimensional subspace, θ = θ₀ + P·α; only α trains.

θ is every LoRA parameter of the model flattened (D numbers: A and B of each adapted module), θ₀ is
peft's LoRA init (A random, B = 0, so B·A = 0 and the model starts as the base model), and P ∈ R^{D×d} is
a seeded structured projector (projectors.py: Kronecker factors, regenerated from `projector_seed`, never
a dense D×d matrix). Only α ∈ R^d trains (plus one split logit per module in `learned` mode). θ₀, the
projector and its seed are the PAC-Bayes *prior*: none of them depends on training data, so the bound
only pays for describing α (bounds.py).

How θ reaches peft (subspace.py): every LoRA weight (`lora_A.weight`, `lora_B.weight` of each adapted
module) gets a torch *parametrization* (as sora/gating.py does for SoRA): weight = original + (rows of P·α
for that weight), where `original` is the frozen θ₀ slice. So peft's forward, merge and `get_delta_weight`
all see θ(α) without patching peft, and the exported adapter is an ordinary peft LoRA. Each parametrization computes only its
own rows of P·α (for Kronecker P, rows [lo, hi) cost (hi − lo)·sqrt(d)); together the slices cost one
projection per forward. There is deliberately no cache: every access recomputes from the current α, so
nothing goes stale between micro-batches, after an optimizer step or in eval, and non-reentrant gradient
checkpointing (which recomputes a layer's forward in backward and checks it saves the same tensors) works.
peft reads `lora_A.weight` twice per forward (a dtype check, then the matmul); caching that second read
with `parametrize.cached()` saved ≤ 2 ms of a ≈ 30 ms builtin step and broke gradient checkpointing.

Allocation of the d dimensions between A and B (`allocation_mode`):
  uniform  one joint projection over all D parameters (A and B of every module, in module order);
  fixed    α = [α_A, α_B] with d_B = round(allocation_ratio·d), d_A = d − d_B; P_A maps α_A onto all A
           parameters (D_A of them), P_B maps α_B onto all B parameters (D_B);
  learned  per adapted module ℓ a logit θ_split[ℓ], γ_ℓ = σ(θ_split[ℓ]) = share of α's dimensions given to
           A in that module; with u_i = (i + ½)/d the position of α_i as a fraction of d,
               m_ℓ(i) = σ(C·(γ_ℓ − u_i)),   A_ℓ = A₀ + rows_ℓ(P_A·(m_ℓ ⊙ α)),  B_ℓ = B₀ + rows_ℓ(P_B·((1 − m_ℓ) ⊙ α)),
           with P_A: R^d → R^{D_A}, P_B: R^d → R^{D_B}. The mask is σ(C·(k − i)) with k = γ·d and i both
           measured in units of d: with raw indices, C = 10 makes a step one index wide (γ would get a
           gradient from a single coordinate of α, and C would mean something different at d = 1000 and
           d = 50000); in units of d the mask has the same shape at every d, its 10 %→90 % transition is
           2·ln 9 / C ≈ 0.44 of the range at C = 10 (a soft split, every γ gets gradient from many coordinates),
           and a large `mask_temperature` (≈ 100+) approaches fixed's hard split. θ_split starts at 0 (γ = ½)
           and has its own optimizer group (`split_lr`, no weight decay). `learned_convention: fork` is the
           separated-projectors fork's variant instead (a logit per transformer block, γ = B's share, raw
           indices, C = 5, constant split_lr): allocation.py has both.

The complexity measure is d (`adapter/effective_params`): the bound's message describes α (and, in
learned mode, the split logits as float32), whatever D is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from raysweep.adapters.base import TrialContext, count_parameters
from raysweep.adapters.lora import ADAPTER, EXPORT_INFO, PEFT_PREFIX, LoraAdapter, lora_layers
from raysweep.adapters.sublora import bounds
from raysweep.adapters.sublora.options import FAMILY, SubloraOptions
from raysweep.adapters.sublora.subspace import attach, original, subspace
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import ALLOCATION_LOG, BOUNDS_REPORT, PEFT_WEIGHTS

FIXED_LR = "fixed_lr"  # a param-group key: that group's lr is set back to it before every optimizer step
_fixed_lr_hook = None


def _hold_fixed_lrs(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        if FIXED_LR in group:
            group["lr"] = group[FIXED_LR]


def _install_fixed_lr_hook() -> None:
    """Once per process: a global optimizer pre-step hook that un-schedules groups carrying FIXED_LR.

    Global because the loop builds the optimizer and its lr schedule (which rewrites every group's lr)
    after param_groups; the hook acts only on groups with the key, which survives checkpoint and resume
    in the optimizer state (so a resumed trial holds the same lr), and under DeepSpeed it sees the torch
    optimizer ZeRO steps."""
    global _fixed_lr_hook
    if _fixed_lr_hook is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _fixed_lr_hook = register_optimizer_step_pre_hook(_hold_fixed_lrs)


class SubloraAdapter(LoraAdapter):
    name = FAMILY.name
    description = FAMILY.description
    options: SubloraOptions
    use_dora = False
    LAYER_LOG = ALLOCATION_LOG  # learned mode: step, overall (mean γ), γ per adapted module

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        if self.options.allocation_mode != "learned":
            self.LAYER_LOG = None  # no γ to log: uniform and fixed trials write no allocation.csv

    def build(self, model):
        model = get_peft_model(model, self.lora_config())
        attach(model, self.options)
        return model

    # --- training hooks ----------------------------------------------------------------------------
    def param_groups(self, model, train_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        state = subspace(model)
        groups = [{"params": [state.alpha], "lr": train_cfg["lr"], "weight_decay": train_cfg["weight_decay"],
                   "name": "alpha"}]
        if self.options.allocation_mode == "learned":
            # a logit: Adam moves it by ≈ lr per step whatever α's scale, so an absolute lr (0.01: γ can cross
            # most of (0, 1) in a few hundred steps) rather than a multiple of α's; decay would pull γ to ½
            split = {"params": [state.theta_split], "lr": self.options.split_lr, "weight_decay": 0.0,
                     "name": "split"}
            if self.options.learned_convention == "fork":  # the fork steps its gating logits at a constant lr
                _install_fixed_lr_hook()
                split[FIXED_LR] = self.options.split_lr
            groups.append(split)
        return groups

    # --- metrics -----------------------------------------------------------------------------------
    def metrics(self, model) -> dict[str, float]:
        state = subspace(model)
        trainable, total = count_parameters(model)
        out = {
            M.ADAPTER_TRAINABLE_PARAMS: trainable,  # d (+ one split logit per split group in learned mode)
            M.ADAPTER_EFFECTIVE_PARAMS: state.d,  # the intrinsic dimension: what the bound's message describes
            M.ADAPTER_TOTAL_PARAMS: total - trainable - state.projected_params(),  # the base model (θ₀ excluded)
            M.ADAPTER_PROJECTED_PARAMS: state.projected_params(),
            M.ADAPTER_PROJECTOR_BYTES: state.projector_bytes(),
        }
        if self.options.allocation_mode == "learned":
            out[M.ADAPTER_GAMMA_MEAN] = float(state.a_share().detach().mean())
        return out

    def gammas(self, model) -> dict[str, float]:
        """Learned mode: per adapted module, the share of α's dimensions given to its A (in both conventions)."""
        state = subspace(model)
        g = state.a_share().detach().cpu().tolist()
        return {slot["name"]: float(v) for slot, v in zip(state.slots, g, strict=True)}

    def split_report(self, model) -> dict[str, Any]:
        """Learned mode: the convention, C and each split group's γ in the convention's own sense."""
        state = subspace(model)
        g = state.gamma().detach().cpu().tolist()
        return {"convention": state.convention, "temperature": state.C,
                "gamma_is": "A share" if state.convention == "raysweep" else "B share",
                "groups": {name: float(v) for name, v in zip(state.groups, g, strict=True)}}

    def layer_log(self, model) -> dict[str, float] | None:
        if self.options.allocation_mode != "learned":
            return None
        gammas = self.gammas(model)
        # "overall" replaces the loop's default (adapter/sparsity, meaningless here) with the mean γ
        return {"overall": sum(gammas.values()) / len(gammas)} | gammas

    # --- end of training: bounds -------------------------------------------------------------------
    def on_train_end(self, model, context: TrialContext) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.options.bounds or context.world_rank != 0:  # rank 0 reports; the others would repeat it
            return {}, {}
        # the examples exactly as the loop trained on them (trial/loop.py always lends them)
        metrics, report = bounds.compute_bounds(model, self, context.config, context.train_set, device=context.device)
        return metrics, {BOUNDS_REPORT: report}

    # --- state, checkpoints, export ----------------------------------------------------------------
    def state_dict(self, model) -> dict:
        """α, θ_split (learned) and θ₀ (A0, B0 per module): everything that determines θ besides the seed."""
        state = subspace(model)
        out = {"alpha": state.alpha.detach().cpu().clone()}
        if self.options.allocation_mode == "learned":
            out["theta_split"] = state.theta_split.detach().cpu().clone()
        for name, layer in lora_layers(model):
            for side in ("A", "B"):
                out[f"{name}.{side}0"] = original(layer, side).detach().cpu().clone()
        return out

    def load_state_dict(self, model, state_dict: dict) -> None:
        state = subspace(model)
        if tuple(state_dict["alpha"].shape) != (state.d,):
            raise ValueError(f"saved α has {tuple(state_dict['alpha'].shape)[0]} dimensions, this adapter has "
                             f"intrinsic_dim {state.d}; resume with the trial's own adapter config")
        with torch.no_grad():
            state.alpha.copy_(state_dict["alpha"])
            if self.options.allocation_mode == "learned":
                state.theta_split.copy_(state_dict["theta_split"])
            for name, layer in lora_layers(model):
                for side in ("A", "B"):
                    original(layer, side).copy_(state_dict[f"{name}.{side}0"])

    def materialize(self, model, state_dict: dict | None = None) -> dict[str, tuple[Any, Any]]:
        """{module name: (A, B)} = θ₀ + P·α as plain tensors (CPU), from the model or a saved state."""
        state = subspace(model)
        alpha = split = None
        if state_dict is not None:
            alpha = state_dict["alpha"].to(state.alpha)
            split = state_dict["theta_split"].to(state.alpha) if "theta_split" in state_dict else None
        out = {}
        with torch.no_grad():
            for index, (name, layer) in enumerate(lora_layers(model)):
                pair = []
                for side in ("A", "B"):
                    base = original(layer, side) if state_dict is None else state_dict[f"{name}.{side}0"]
                    base = base.to(state.alpha.device)
                    delta = state.delta(index, side, alpha, split).view_as(base).to(base.dtype)
                    pair.append((base + delta).cpu().contiguous())
                out[name] = (pair[0], pair[1])
        return out

    def save(self, model, directory: Path, state: dict | None = None) -> None:
        """θ materialised as an ordinary peft LoRA adapter (`PeftModel.from_pretrained` loads it)."""
        weights = self.materialize(model, state)
        tensors = {}
        for name, (a, b) in weights.items():
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
        base = model.peft_config[ADAPTER]
        config = LoraConfig(r=self.cfg["r"], lora_alpha=self.cfg["alpha"], lora_dropout=self.cfg["dropout"],
                            target_modules=sorted(weights), task_type="CAUSAL_LM",
                            base_model_name_or_path=base.base_model_name_or_path)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(directory))
        save_file(tensors, str(directory / PEFT_WEIGHTS))
        s = subspace(model)
        (directory / EXPORT_INFO).write_text(json.dumps(
            {"from": self.name, "materialized": True, "intrinsic_dim": s.d, "projected_params": s.projected_params(),
             "allocation_mode": self.options.allocation_mode, "projector": self.options.projector,
             "projector_seed": self.options.projector_seed}, indent=2))
