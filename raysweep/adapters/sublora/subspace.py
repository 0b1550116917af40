"""The SubLoRA subspace: θ = θ₀ + P·α for every LoRA weight of a peft model, as torch parametrizations.

`attach` turns a peft LoRA model into SubLoRA in place: the LoRA weights become the frozen θ₀ (each one's
`parametrizations.weight.original`), α (and, in learned mode, the split logits) live in one `SubspaceState`
module, and each LoRA weight's parametrization (`SubspaceWeight`) adds its own rows of P·α
(`project_rows`). `layout` says where each weight sits in the flattened parameter space(s). The maths and
the allocation modes are described in adapter.py; the projectors P are in projectors.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from raysweep.adapters.lora import ADAPTER, lora_layers
from raysweep.adapters.sublora import allocation
from raysweep.adapters.sublora.options import SubloraOptions
from raysweep.adapters.sublora.projectors import (
    DenseProjector,
    KronProjector,
    RdKronQRProjector,
    derive_seed,
    make_projector,
)

STATE_MODULE = "lora_sublora"  # where α (and θ_split) live in the peft model ("lora_" marks adapter weights)


def _dense_chunks(proj, lo: int, hi: int):
    """(chunk k, row range [a, b) of it inside [lo, hi), first row of chunk k) for every chunk overlapping."""
    for k in range(lo // proj.chunk_rows, (hi - 1) // proj.chunk_rows + 1):
        clo, chi = proj.chunk_bounds(k)
        yield k, max(lo, clo), min(hi, chi), clo


class _DenseRows(torch.autograd.Function):
    """Rows [lo, hi) of a lazy dense P times α; chunks regenerated in forward and backward, none saved."""

    @staticmethod
    def forward(ctx, alpha, proj, lo, hi):
        ctx.proj, ctx.lo, ctx.hi = proj, lo, hi
        out = torch.empty(hi - lo, dtype=alpha.dtype, device=alpha.device)
        for k, a, b, clo in _dense_chunks(proj, lo, hi):
            out[a - lo : b - lo] = proj.chunk(k, alpha.dtype, alpha.device)[a - clo : b - clo] @ alpha
        return out

    @staticmethod
    def backward(ctx, grad_out):
        proj, lo, hi = ctx.proj, ctx.lo, ctx.hi
        grad = torch.zeros(proj.d, dtype=grad_out.dtype, device=grad_out.device)
        for k, a, b, clo in _dense_chunks(proj, lo, hi):
            grad += proj.chunk(k, grad_out.dtype, grad_out.device)[a - clo : b - clo].T @ grad_out[a - lo : b - lo]
        return grad, None, None, None


def project_rows(proj, alpha, lo: int, hi: int):
    """(P·α)[lo:hi] without computing the other rows (equal to proj(alpha)[lo:hi]). Always in the
    projector's float32, also under bf16 autocast: θ must be the same function of α in training, export
    and bounds (bf16 would round B = P·α to 8 bits of mantissa)."""
    with torch.autocast(device_type=alpha.device.type, enabled=False):
        return _rows(proj, alpha, lo, hi)


def _rows(proj, alpha, lo: int, hi: int):
    if isinstance(proj, KronProjector):
        # P·α = vec(L·X·Rᵀ)[:D] with X = reshape(pad(α), d1, d2), row-major: rows [lo, hi) of the result
        # come from rows r0..r1 of L only
        x = F.pad(alpha.to(proj.L.dtype), (0, proj.d1 * proj.d2 - proj.d)).reshape(proj.d1, proj.d2)
        r0, r1 = lo // proj.D2, (hi - 1) // proj.D2 + 1
        y = (proj.L[r0:r1] @ x) @ proj.R.T
        return y.reshape(-1)[lo - r0 * proj.D2 : hi - r0 * proj.D2]
    if isinstance(proj, DenseProjector):
        return _DenseRows.apply(alpha, proj, lo, hi)
    if isinstance(proj, RdKronQRProjector):  # permuted rows: each is gathered on its own
        return proj.rows(alpha, lo, hi)
    return proj(alpha)[lo:hi]


class SubspaceState(nn.Module):
    """α, the split logits and the projector(s); computes any LoRA weight's slice of P·α."""

    def __init__(self, opts: SubloraOptions, slots: list[dict[str, Any]], sizes: dict[str, int], device):
        super().__init__()
        self.mode, self.d, self.C = opts.allocation_mode, opts.intrinsic_dim, float(opts.temperature)
        self.convention = opts.learned_convention
        self.slots = slots  # per adapted module: name, shapes, and (space, lo, hi) of its A and B
        self.alpha = nn.Parameter(torch.zeros(self.d, device=device))  # α = 0: θ = θ₀ at the start
        self.d_a = opts.sizes()[0] if self.mode == "fixed" else self.d
        dims = {"joint": self.d} if self.mode == "uniform" else \
            {"A": self.d_a, "B": self.d - self.d_a} if self.mode == "fixed" else {"A": self.d, "B": self.d}
        projectors = {}
        for space, d in dims.items():
            D = sizes[space]
            # distinct seeds per space: P_A and P_B must differ even when D_A == D_B
            seed = derive_seed(opts.projector_seed, "sublora", space)
            try:
                projectors[space] = make_projector(opts.projector, D, d, seed)
            except ValueError as exc:
                raise ValueError(f"adapter.projector {opts.projector!r} cannot map d={d} onto the {D} LoRA "
                                 f"parameters of {space!r} ({exc}); use adapter.projector: kron, or a smaller "
                                 "adapter.intrinsic_dim") from None
        self.projectors = nn.ModuleDict(projectors).to(device)
        if self.mode == "learned":
            # split groups (allocation.py): one per module (raysweep) or per transformer block (fork)
            self.group_of, self.groups = allocation.split_groups([s["name"] for s in slots], self.convention)
            self.theta_split = nn.Parameter(torch.zeros(len(self.groups), device=device))  # γ = ½ at the start
            self.register_buffer("positions", allocation.positions(self.d, self.convention, device),
                                 persistent=False)

    def gamma(self, theta_split=None):
        """σ(θ_split) per split group, in the convention's own sense (A's share: raysweep; B's: fork)."""
        return torch.sigmoid(self.theta_split if theta_split is None else theta_split)

    def a_share(self, theta_split=None):
        """A's nominal share of d per adapted module (what allocation.csv and adapter/gamma_mean report)."""
        shares = allocation.a_share(self.gamma(theta_split), self.convention)
        return shares[torch.as_tensor(self.group_of, device=shares.device)]

    def mask(self, index: int, theta_split=None, side: str = "A"):
        """The share of each α_i that goes to module `index`'s A (side "A") or B; allocation.py has both
        conventions' formulas (raysweep: m_A(i) = σ(C·(γ − (i + ½)/d)))."""
        gamma = self.gamma(theta_split)[self.group_of[index]]
        return allocation.side_mask(gamma, self.positions, self.C, self.convention, side)

    def delta(self, index: int, side: str, alpha=None, theta_split=None):
        """The change of module `index`'s A or B (side "A" | "B") from θ₀, as a flat vector."""
        alpha = self.alpha if alpha is None else alpha
        space, lo, hi = self.slots[index][side]
        if self.mode == "fixed":
            alpha = alpha[: self.d_a] if side == "A" else alpha[self.d_a :]
        elif self.mode == "learned":
            alpha = alpha * self.mask(index, theta_split, side)
        return project_rows(self.projectors[space], alpha, lo, hi)

    def projector_bytes(self) -> int:
        return sum(p.nbytes() for p in self.projectors.values())

    def projected_params(self) -> int:
        return sum(p.D for p in self.projectors.values())

    def extra_repr(self) -> str:
        groups = f", split groups={len(self.groups)} ({self.convention})" if self.mode == "learned" else ""
        return f"mode={self.mode}, d={self.d}, D={self.projected_params()}, modules={len(self.slots)}{groups}"


class SubspaceWeight(nn.Module):
    """Parametrization of one LoRA weight: θ₀ slice (the frozen `original`) + its rows of P·α."""

    def __init__(self, state: SubspaceState, index: int, side: str):
        super().__init__()
        object.__setattr__(self, "state", state)  # a reference, not a submodule: α is registered once
        self.index, self.side = index, side

    def forward(self, original):
        return original + self.state.delta(self.index, self.side).view_as(original).to(original.dtype)


def layout(model, mode: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Where each LoRA weight sits in the flattened parameter space(s): (slots, size of each space).

    uniform: one space "joint" holding, per module in model order, A (r×in) then B (out×r), row-major.
    fixed / learned: space "A" holds every module's A, space "B" every module's B, in module order.
    """
    slots, sizes = [], {"joint": 0} if mode == "uniform" else {"A": 0, "B": 0}
    for name, layer in lora_layers(model):
        slot: dict[str, Any] = {"name": name}
        for side, lin in (("A", layer.lora_A[ADAPTER]), ("B", layer.lora_B[ADAPTER])):
            space = "joint" if mode == "uniform" else side
            n = lin.weight.numel()
            slot[side] = (space, sizes[space], sizes[space] + n)
            slot[f"{side}_shape"] = tuple(lin.weight.shape)
            sizes[space] += n
        slots.append(slot)
    if not slots:
        raise ValueError("sublora found no LoRA layers; check adapter.target_modules")
    return slots, sizes


def attach(model, opts: SubloraOptions):
    """Turn a peft LoRA model into SubLoRA in place: freeze the LoRA weights as θ₀, add α, parametrize."""
    slots, sizes = layout(model, opts.allocation_mode)
    layers = lora_layers(model)
    device = layers[0][1].lora_A[ADAPTER].weight.device
    state = SubspaceState(opts, slots, sizes, device)
    model.add_module(STATE_MODULE, state)
    for index, (_, layer) in enumerate(layers):
        for side, lin in (("A", layer.lora_A[ADAPTER]), ("B", layer.lora_B[ADAPTER])):
            lin.weight.requires_grad_(False)  # becomes the frozen θ₀ slice (`parametrizations.weight.original`)
            parametrize.register_parametrization(lin, "weight", SubspaceWeight(state, index, side))
    return state


def subspace(model):
    """The SubspaceState of a SubLoRA model (also through a DDP wrapper)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == STATE_MODULE:
            return module
    raise ValueError("not a sublora model (no α found); build it with the sublora adapter")


def original(layer, side: str):
    lin = layer.lora_A[ADAPTER] if side == "A" else layer.lora_B[ADAPTER]
    return lin.parametrizations.weight.original
