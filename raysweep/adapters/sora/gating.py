"""The maths of learned sparse gates (SoRA / SDoRA): the gate parametrization, the proximal step, the L1
term, the gated state and its pruned, folded peft export (λ schedules: schedules.py). The adapter class
(adapter.py) wires them into training.

A gate vector g ∈ R^r sits between A and B of each adapted linear layer: ΔW = s·B·diag(g)·A. It is added
to peft's LoRA layer as a *parametrization* of `lora_A.weight` (weight = diag(g)·A), so every code path
that uses that weight — the LoRA forward, DoRA's weight norm (which calls lora_A on an identity matrix),
and peft's merge — sees the gated update without patching peft.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from raysweep.adapters.lora import ADAPTER, PEFT_PREFIX, lora_layers

GATE_INITS = ("ones", "randn")


class Gate(nn.Module):
    """weight (r × in) -> diag(g)·weight. g starts at ones (a fresh gated adapter equals plain LoRA) or, as in
    the SoRA reference, standard normal (`randn`, from torch's global generator: seeded by train.seed)."""

    def __init__(self, r: int, dtype: torch.dtype, device: torch.device, init: str = "ones"):
        super().__init__()
        if init not in GATE_INITS:
            raise ValueError(f"unknown gate_init {init!r}; use one of {', '.join(GATE_INITS)}")
        start = torch.ones(r, dtype=dtype, device=device) if init == "ones" else torch.randn(r, dtype=dtype, device=device)
        self.gate = nn.Parameter(start)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.gate.unsqueeze(1)


def soft_threshold_(g: torch.Tensor, xi: float) -> None:
    """In place: g ← sign(g)·max(|g| − ξ, 0), in one expression.

    Not three sequential masks (g[g > ξ] -= ξ; g[g < −ξ] += ξ; g[|g| ≤ ξ] = 0): after the first two, a
    value in (ξ, 2ξ] has become ≤ ξ and the third mask wrongly zeroes it.
    """
    with torch.no_grad():
        g.copy_(torch.sign(g) * torch.clamp(g.abs() - xi, min=0.0))


def l1_term(all_gates: list[torch.Tensor], weight: float, reduction: str) -> torch.Tensor:
    """w·Σ|g| over every gate entry (sum), or w·Σ|g| / (number of gate entries) (mean: the SoRA and SDoRA
    references' term, one mean over all modules together, not a mean of per-module means)."""
    total = sum(g.abs().sum() for g in all_gates)
    if reduction == "mean":
        return weight * total / sum(g.numel() for g in all_gates)
    if reduction == "sum":
        return weight * total
    raise ValueError(f"unknown gate_l1_reduction {reduction!r}; use sum or mean")


def add_gates(model, init: str = "ones") -> None:
    for _, layer in lora_layers(model):
        lin = layer.lora_A[ADAPTER]
        w = lin.weight
        parametrize.register_parametrization(lin, "weight", Gate(w.shape[0], w.dtype, w.device, init))


def gate_of(layer) -> torch.Tensor:
    return layer.lora_A[ADAPTER].parametrizations.weight[0].gate


def gates(model) -> list[torch.Tensor]:
    return [gate_of(layer) for _, layer in lora_layers(model)]


def is_gate(param_name: str) -> bool:
    return param_name.endswith("parametrizations.weight.0.gate")


# --------------------------------------------------------------------------------- state and export


def state_dict(model) -> dict[str, torch.Tensor]:
    """The trainable state by base module name: A (ungated), B, g and, for DoRA, the magnitude m."""
    out = {}
    for name, layer in lora_layers(model):
        lin = layer.lora_A[ADAPTER]
        out[f"{name}.A"] = lin.parametrizations.weight.original.detach().cpu().clone()
        out[f"{name}.B"] = layer.lora_B[ADAPTER].weight.detach().cpu().clone()
        out[f"{name}.g"] = gate_of(layer).detach().cpu().clone()
        if ADAPTER in getattr(layer, "lora_magnitude_vector", {}):
            out[f"{name}.m"] = layer.lora_magnitude_vector[ADAPTER].weight.detach().cpu().clone()
    return out


def load_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, layer in lora_layers(model):
            lin = layer.lora_A[ADAPTER]
            lin.parametrizations.weight.original.copy_(state[f"{name}.A"])
            layer.lora_B[ADAPTER].weight.copy_(state[f"{name}.B"])
            gate_of(layer).copy_(state[f"{name}.g"])
            if f"{name}.m" in state:
                layer.lora_magnitude_vector[ADAPTER].weight.copy_(state[f"{name}.m"])


def module_names(state: dict[str, torch.Tensor]) -> list[str]:
    return list(dict.fromkeys(k.rsplit(".", 1)[0] for k in state))


def export(state: dict[str, torch.Tensor], scaling: float) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Prune dead ranks and fold g into B: (LoraConfig keyword arguments, peft-format tensors).

    For live ranks L of a module: B' = B[:, L]·diag(g_L), A' = A[L], r' = |L|, alpha' = s·r' so the
    exported scaling alpha'/r' equals the trained s and ΔW is unchanged. A module whose ranks all died is
    dropped (its ΔW is 0) — except with DoRA, where its trained magnitude still rescales the base weight:
    it is kept with one zero rank (B' = 0), which leaves ΔW = 0 and the magnitude in place. If no module
    of a plain LoRA export survives, one zero-rank module is kept so the adapter still loads.
    """
    names = module_names(state)
    dora = any(f"{n}.m" in state for n in names)
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    for name in names:
        g, a, b = state[f"{name}.g"], state[f"{name}.A"], state[f"{name}.B"]
        live = torch.nonzero(g != 0).flatten()
        if len(live):
            a_out, b_out = a[live], b[:, live] * g[live].unsqueeze(0)
        elif dora or (name == names[-1] and not rank_pattern):
            a_out, b_out = a[:1], torch.zeros_like(b[:, :1])
        else:
            continue
        key = f"{PEFT_PREFIX}{name}"
        tensors[f"{key}.lora_A.weight"] = a_out.contiguous()
        tensors[f"{key}.lora_B.weight"] = b_out.contiguous()
        if dora:
            tensors[f"{key}.lora_magnitude_vector"] = state[f"{name}.m"].contiguous()
        rank_pattern[name] = int(a_out.shape[0])
    top = max(rank_pattern.values())
    config = {
        "r": top,
        "lora_alpha": scaling * top,
        "target_modules": sorted(rank_pattern),
        # anchored names: a pattern key is a regex matched at the end of a module's name
        "rank_pattern": {f"^{re.escape(n)}$": r for n, r in rank_pattern.items()},
        "alpha_pattern": {f"^{re.escape(n)}$": scaling * r for n, r in rank_pattern.items()},
        "use_dora": dora,
    }
    return config, tensors


def effective_params(model) -> int:
    """Σ over adapted modules of live ranks × (in + out), plus out (the magnitude vector) per DoRA module;
    from gates and layer shapes, so a report copies no weights."""
    total = 0
    for _, layer in lora_layers(model):
        live = int((gate_of(layer).detach() != 0).sum())
        total += live * (layer.in_features + layer.out_features)
        if ADAPTER in getattr(layer, "lora_magnitude_vector", {}):
            total += layer.out_features
    return total
