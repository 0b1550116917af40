"""SubLoRA: the LoRA parameters live in a random d-dimensional subspace, θ = θ₀ + P·α; only α trains.

θ is every LoRA parameter of the model flattened (D numbers: A and B of each adapted module), θ₀ is
peft's LoRA init (A random, B = 0, so B·A = 0 and the model starts as the base model), and P ∈ R^{D×d} is
a seeded structured projector (projectors.py: Kronecker factors, regenerated from `projector_seed`, never
a dense D×d matrix). Only α ∈ R^d trains (plus one split logit per module in `learned` mode). θ₀, the
projector and its seed are the PAC-Bayes *prior*: none of them depends on training data, so the bound
only pays for describing α (sublora_bounds.py).

How θ reaches peft: every LoRA weight (`lora_A.weight`, `lora_B.weight` of each adapted module) gets a torch
*parametrization* (as gating.py does for SoRA): weight = original + (rows of P·α for that weight), where
`original` is the frozen θ₀ slice. So peft's forward, merge and `get_delta_weight` all see θ(α) without
patching peft, and the exported adapter is an ordinary peft LoRA. Each parametrization computes only its
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
           and has its own optimizer group (`split_lr`, no weight decay).

The complexity measure is d (`adapter/effective_params`): the bound's message describes α (and, in
learned mode, the split logits as float32), whatever D is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysweep.adapters.base import TrialContext, count_parameters
from raysweep.adapters.lora import LoraAdapter
from raysweep.adapters.sublora.options import SubloraOptions
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import ALLOCATION_LOG, BOUNDS_REPORT, PEFT_WEIGHTS

EXPORT_INFO = "raysweep_export.json"
STATE_MODULE = "lora_sublora"  # where α (and θ_split) live in the peft model ("lora_" marks adapter weights)
ADAPTER = "default"
PEFT_PREFIX = "base_model.model."


# ------------------------------------------------------------------------------------------------ torch side
# nn.Module subclasses need torch at class creation; they are created on first use so that importing this
# module (config validation, `plan`) never imports torch.

_CLASSES: dict[str, Any] = {}


def _classes() -> dict[str, Any]:
    if _CLASSES:
        return _CLASSES
    import torch
    import torch.nn.functional as F
    from torch import nn

    from raysweep.adapters.sublora.projectors import DenseProjector, KronProjector

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
        return proj(alpha)[lo:hi]

    class SubspaceState(nn.Module):
        """α, the split logits and the projector(s); computes any LoRA weight's slice of P·α."""

        def __init__(self, opts: SubloraOptions, slots: list[dict[str, Any]], sizes: dict[str, int], device):
            super().__init__()
            from raysweep.adapters.sublora.projectors import derive_seed, make_projector

            self.mode, self.d, self.C = opts.allocation_mode, opts.intrinsic_dim, float(opts.mask_temperature)
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
                self.theta_split = nn.Parameter(torch.zeros(len(slots), device=device))  # γ = ½ at the start
                self.register_buffer("positions", (torch.arange(self.d, device=device, dtype=torch.float32) + 0.5)
                                     / self.d, persistent=False)

        def gamma(self, theta_split=None):
            return torch.sigmoid(self.theta_split if theta_split is None else theta_split)

        def mask(self, index: int, theta_split=None):
            """m_ℓ(i) = σ(C·(γ_ℓ − (i + ½)/d)): the share of α_i that goes to module ℓ's A (the rest to B)."""
            return torch.sigmoid(self.C * (self.gamma(theta_split)[index] - self.positions))

        def delta(self, index: int, side: str, alpha=None, theta_split=None):
            """The change of module `index`'s A or B (side "A" | "B") from θ₀, as a flat vector."""
            alpha = self.alpha if alpha is None else alpha
            space, lo, hi = self.slots[index][side]
            if self.mode == "fixed":
                alpha = alpha[: self.d_a] if side == "A" else alpha[self.d_a :]
            elif self.mode == "learned":
                m = self.mask(index, theta_split)
                alpha = alpha * (m if side == "A" else 1.0 - m)
            return project_rows(self.projectors[space], alpha, lo, hi)

        def projector_bytes(self) -> int:
            return sum(p.nbytes() for p in self.projectors.values())

        def projected_params(self) -> int:
            return sum(p.D for p in self.projectors.values())

        def extra_repr(self) -> str:
            return f"mode={self.mode}, d={self.d}, D={self.projected_params()}, modules={len(self.slots)}"

    class SubspaceWeight(nn.Module):
        """Parametrization of one LoRA weight: θ₀ slice (the frozen `original`) + its rows of P·α."""

        def __init__(self, state: SubspaceState, index: int, side: str):
            super().__init__()
            object.__setattr__(self, "state", state)  # a reference, not a submodule: α is registered once
            self.index, self.side = index, side

        def forward(self, original):
            return original + self.state.delta(self.index, self.side).view_as(original).to(original.dtype)

    _CLASSES.update(SubspaceState=SubspaceState, SubspaceWeight=SubspaceWeight, project_rows=project_rows)
    return _CLASSES


def _dense_chunks(proj, lo: int, hi: int):
    """(chunk k, row range [a, b) of it inside [lo, hi), first row of chunk k) for every chunk overlapping."""
    for k in range(lo // proj.chunk_rows, (hi - 1) // proj.chunk_rows + 1):
        clo, chi = proj.chunk_bounds(k)
        yield k, max(lo, clo), min(hi, chi), clo


def project_rows(proj, alpha, lo: int, hi: int):
    """(P·α)[lo:hi], computing only those rows (Kronecker and dense projectors)."""
    return _classes()["project_rows"](proj, alpha, lo, hi)


def lora_layers(model):
    from raysweep.adapters.sora.gating import lora_layers as layers

    return layers(model)


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
    from torch.nn.utils import parametrize

    cls = _classes()
    slots, sizes = layout(model, opts.allocation_mode)
    layers = lora_layers(model)
    device = layers[0][1].lora_A[ADAPTER].weight.device
    state = cls["SubspaceState"](opts, slots, sizes, device)
    model.add_module(STATE_MODULE, state)
    for index, (_, layer) in enumerate(layers):
        for side, lin in (("A", layer.lora_A[ADAPTER]), ("B", layer.lora_B[ADAPTER])):
            lin.weight.requires_grad_(False)  # becomes the frozen θ₀ slice (`parametrizations.weight.original`)
            parametrize.register_parametrization(lin, "weight", cls["SubspaceWeight"](state, index, side))
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


class SubloraAdapter(LoraAdapter):
    name = "sublora"
    description = "LoRA weights in a random d-dim subspace, θ = θ₀ + P·α, only α trains; PAC-Bayes bounds at the end"
    Options = SubloraOptions
    use_dora = False
    LAYER_LOG = ALLOCATION_LOG  # learned mode: step, overall (mean γ), γ per adapted module
    PROGRESS_COLUMNS = (("d", "option", "intrinsic_dim"), ("allocation", "option", "allocation_mode"),
                        ("B share", "option", "allocation_ratio"), ("γ mean", "metric", M.ADAPTER_GAMMA_MEAN),
                        ("bpd bound", "metric", M.BOUND_DOC_BPD))

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.opts = SubloraOptions(**{k: cfg[k] for k in SubloraOptions.model_fields if k in cfg})
        if self.opts.allocation_mode != "learned":
            self.LAYER_LOG = None  # no γ to log: uniform and fixed trials write no allocation.csv

    def build(self, model):
        from peft import get_peft_model

        model = get_peft_model(model, self.lora_config())
        attach(model, self.opts)
        return model

    # --- training hooks ----------------------------------------------------------------------------
    def param_groups(self, model, train_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        state = subspace(model)
        groups = [{"params": [state.alpha], "lr": train_cfg["lr"], "weight_decay": train_cfg["weight_decay"],
                   "name": "alpha"}]
        if self.opts.allocation_mode == "learned":
            # a logit: Adam moves it by ≈ lr per step whatever α's scale, so an absolute lr (0.01: γ can cross
            # most of (0, 1) in a few hundred steps) rather than a multiple of α's; decay would pull γ to ½
            groups.append({"params": [state.theta_split], "lr": self.opts.split_lr, "weight_decay": 0.0,
                           "name": "split"})
        return groups

    # --- metrics -----------------------------------------------------------------------------------
    def metrics(self, model) -> dict[str, float]:
        state = subspace(model)
        trainable, total = count_parameters(model)
        out = {
            M.ADAPTER_TRAINABLE_PARAMS: trainable,  # d (+ one split logit per module in learned mode)
            M.ADAPTER_EFFECTIVE_PARAMS: state.d,  # the intrinsic dimension: what the bound's message describes
            M.ADAPTER_TOTAL_PARAMS: total - trainable - state.projected_params(),  # the base model (θ₀ excluded)
            M.ADAPTER_PROJECTED_PARAMS: state.projected_params(),
            M.ADAPTER_PROJECTOR_BYTES: state.projector_bytes(),
        }
        if self.opts.allocation_mode == "learned":
            out[M.ADAPTER_GAMMA_MEAN] = float(state.gamma().detach().mean())
        return out

    def gammas(self, model) -> dict[str, float]:
        """Learned mode: γ per adapted module (share of α's dimensions given to its A)."""
        state = subspace(model)
        g = state.gamma().detach().cpu().tolist()
        return {slot["name"]: float(v) for slot, v in zip(state.slots, g, strict=True)}

    def layer_log(self, model) -> dict[str, float] | None:
        if self.opts.allocation_mode != "learned":
            return None
        gammas = self.gammas(model)
        # "overall" replaces the worker's default (adapter/sparsity, meaningless here) with the mean γ
        return {"overall": sum(gammas.values()) / len(gammas)} | gammas

    # --- end of training: bounds -------------------------------------------------------------------
    def on_train_end(self, model, context: TrialContext) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.opts.bounds or context.world_rank != 0:  # rank 0 reports; the others would repeat it
            return {}, {}
        from raysweep.adapters.sublora import bounds as sublora_bounds

        train = getattr(context, "train_set", None)
        if train is None:
            train = sublora_bounds.training_examples(context.config)
        metrics, report = sublora_bounds.compute_bounds(model, self, context.config, train, device=context.device)
        return metrics, {BOUNDS_REPORT: report}

    # --- state, checkpoints, export ----------------------------------------------------------------
    def state_dict(self, model) -> dict:
        """α, θ_split (learned) and θ₀ (A0, B0 per module): everything that determines θ besides the seed."""
        state = subspace(model)
        out = {"alpha": state.alpha.detach().cpu().clone()}
        if self.opts.allocation_mode == "learned":
            out["theta_split"] = state.theta_split.detach().cpu().clone()
        for name, layer in lora_layers(model):
            for side in ("A", "B"):
                out[f"{name}.{side}0"] = original(layer, side).detach().cpu().clone()
        return out

    def load_state_dict(self, model, state_dict: dict) -> None:
        import torch

        state = subspace(model)
        if tuple(state_dict["alpha"].shape) != (state.d,):
            raise ValueError(f"saved α has {tuple(state_dict['alpha'].shape)[0]} dimensions, this adapter has "
                             f"intrinsic_dim {state.d}; resume with the trial's own adapter config")
        with torch.no_grad():
            state.alpha.copy_(state_dict["alpha"])
            if self.opts.allocation_mode == "learned":
                state.theta_split.copy_(state_dict["theta_split"])
            for name, layer in lora_layers(model):
                for side in ("A", "B"):
                    original(layer, side).copy_(state_dict[f"{name}.{side}0"])

    def materialize(self, model, state_dict: dict | None = None) -> dict[str, tuple[Any, Any]]:
        """{module name: (A, B)} = θ₀ + P·α as plain tensors (CPU), from the model or a saved state."""
        import torch

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
        from peft import LoraConfig
        from safetensors.torch import save_file

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
             "allocation_mode": self.opts.allocation_mode, "projector": self.opts.projector,
             "projector_seed": self.opts.projector_seed}, indent=2))
