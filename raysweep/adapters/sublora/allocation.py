"""Learned allocation: how α's d dimensions are shared between LoRA A and B, in two conventions.

Both give each split group g a logit θ_split[g], γ_g = σ(θ_split[g]), and a soft mask over α's indices
i = 0 … d − 1; module ℓ of group g gets A_ℓ = A₀ + rows_ℓ(P_A·(m_A ⊙ α)), B_ℓ = B₀ + rows_ℓ(P_B·(m_B ⊙ α)),
with m_A + m_B = 1.

  raysweep  one group per adapted module; γ is A's share; m_A(i) = σ(C·(γ − (i + ½)/d)), positions in
            units of d so the mask has the same shape at every d (its 10 %→90 % transition spans
            2·ln 9 / C of the range: 0.44 at the default C = 10); split_lr follows train.schedule.
  fork      as the separated-projectors fork of the SubLoRA reference code: one group per transformer
            block (the module name up to its first numeric component, e.g. `model.layers.3`) and one for
            the modules outside any block; γ is B's share; m_B(i) = σ(C·(γ·d − i)) over raw indices
            (C = 5 by default: the transition is ≈ 0.9 of one index wide, a hard split whose γ gets its
            gradient from the one or two coordinates at the boundary); split_lr is constant.
Logged and reported γ values (`adapter/gamma_mean`, allocation.csv, bounds.json `gamma`) are always A's
share per module, so the two conventions plot on one axis; bounds.json `allocation` keeps the raw logits'
γ in the convention's own sense.
"""

from __future__ import annotations

from typing import Any

# no torch at module level: options.py (validated without torch) reads the conventions from here
CONVENTIONS: tuple[str, ...] = ("raysweep", "fork")
DEFAULT_TEMPERATURE = {"raysweep": 10.0, "fork": 5.0}
REST = "rest"  # the fork's group for adapted modules outside every transformer block


def block_of(name: str) -> str | None:
    """The transformer block a module belongs to: its name up to the first numeric component."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def split_groups(names: list[str], convention: str) -> tuple[list[int], list[str]]:
    """(group index of each module, group names): per module (raysweep), or per block in model order
    and then `rest` (fork)."""
    if convention == "raysweep":
        return list(range(len(names))), list(names)
    if convention != "fork":
        raise ValueError(f"unknown learned_convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    blocks = [block_of(n) for n in names]
    groups = list(dict.fromkeys(b for b in blocks if b is not None))
    if any(b is None for b in blocks):
        groups.append(REST)
    index = {g: i for i, g in enumerate(groups)}
    return [index[REST if b is None else b] for b in blocks], groups


def positions(d: int, convention: str, device=None) -> Any:
    """What the mask compares γ with: (i + ½)/d (raysweep) or the raw index i (fork), a float32 tensor."""
    import torch

    i = torch.arange(d, device=device, dtype=torch.float32)
    return (i + 0.5) / d if convention == "raysweep" else i


def side_mask(gamma: Any, pos: Any, temperature: float, convention: str, side: str) -> Any:
    """The share of each α_i that goes to `side` ("A" | "B") of a module whose group has this γ."""
    if convention == "raysweep":
        m_a = (temperature * (gamma - pos)).sigmoid()
        return m_a if side == "A" else 1.0 - m_a
    m_b = (temperature * (gamma * pos.numel() - pos)).sigmoid()
    return m_b if side == "B" else 1.0 - m_b


def a_share(gamma: Any, convention: str) -> Any:
    """A's nominal share of d for a group's γ (γ itself is A's share in raysweep, B's in the fork)."""
    return gamma if convention == "raysweep" else 1.0 - gamma
