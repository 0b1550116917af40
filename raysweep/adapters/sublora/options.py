"""SubLoRA options and family record (pydantic only: config/ validates them without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from raysweep.adapters.family import Family
from raysweep.adapters.sublora.allocation import DEFAULT_TEMPERATURE
from raysweep.adapters.sublora.coding import DEFAULT_ALPHAS
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import BOUNDS_REPORT

DEFAULT_SPLIT_LR = 0.01


class SubloraOptions(BaseModel):
    """Keys under `adapter:` for sublora (intrinsic_dim, allocation_mode, allocation_ratio are grid axes)."""

    model_config = ConfigDict(extra="forbid")

    intrinsic_dim: int = Field(1000, gt=0, description="d, the dimension of the trained vector α (θ = θ₀ + P·α)")
    allocation_mode: Literal["uniform", "fixed", "learned"] = Field(
        "uniform", description="how d is shared between LoRA A and B: uniform (one joint projection), fixed "
        "(d_B = allocation_ratio·d) or learned (a split per module, trained)")
    allocation_ratio: float | None = Field(
        None, gt=0, lt=1, description="allocation_mode fixed only: the share of d given to B, d_B = "
        "round(ratio·d) (empty: 0.5)")
    projector: Literal["kron", "kron_qr", "rdkronqr", "dense"] = Field(
        "kron", description="random projector P: kron (Gaussian Kronecker factors, any D and d), kron_qr "
        "(orthonormal factors; needs d ≲ D), rdkronqr (the SubLoRA reference's default: floor-sized orthonormal "
        "Kronecker block, a dense block for the leftover rows/columns, a seeded row permutation) or dense (lazy, "
        "slow reference for small D)")
    projector_seed: int = Field(0, description="seed of P; part of the PAC-Bayes prior, so it must not be chosen "
                                               "from the training data (trials may share it)")
    learned_convention: Literal["raysweep", "fork"] = Field(
        "raysweep", description="learned mode: raysweep (a split logit per adapted module, γ = A's share, mask "
        "σ(C·(γ − (i+½)/d)), C = 10, split_lr follows train.schedule) or fork (the separated-projectors fork: a "
        "logit per transformer block + one for the rest, γ = B's share, mask σ(C·(γ·d − i)) over raw indices, "
        "C = 5, split_lr constant)")
    split_lr: float = Field(DEFAULT_SPLIT_LR, gt=0, description="learned mode: learning rate of the split logits "
                            "θ_split (absolute, not × train.lr; no weight decay)")
    mask_temperature: float | None = Field(
        None, gt=0, description="learned mode: C in the soft mask; larger is sharper (empty: 10 for "
        "learned_convention raysweep, ≈0.44·d wide; 5 for fork)")
    bounds: bool = Field(True, description="compute the PAC-Bayes bounds at the end of training (bound/* metrics, "
                                           f"{BOUNDS_REPORT} in the final checkpoint)")
    bound_levels: int = Field(11, ge=1, description="quantization levels of α for the bound")
    bound_quantizer: Literal["uniform", "kmeans", "symmetric"] = Field(
        "uniform", description="uniform (bins over [min α, max α], centroid = bin mean), kmeans (started from "
        "them) or symmetric (the reference's bins over [−max|α|, max|α|], centroid = bin mean)")
    bound_codebook_bits: Literal[16, 32] = Field(
        32, description="precision of the transmitted centroids: 32 (float32) or 16 (float16, the reference's); "
        "the model is evaluated with the rounded centroids")
    bound_delta: float = Field(0.05, gt=0, lt=1, description="confidence δ of every bound")
    bound_delta_split: Literal["proportional", "even"] = Field(
        "proportional", description="sub-sampled bounds: δ·r for the PAC term and δ·(1 − r) for the sampling "
        "term with r = n/(n + m) (proportional, the reference's) or r = ½ (even)")
    bound_sample: int | None = Field(
        2000, gt=0, description="units (documents, sequences) evaluated for the empirical risk; fewer than the "
        "training set gives a sub-sampled bound (empty: all)")
    bound_doc_window: Literal["sliding", "restart"] = Field(
        "sliding", description="documents longer than max_seq_len: sliding (windows advance by "
        "bound_window_stride, each predicting only its new tokens with the rest as context, as the reference) "
        "or restart (consecutive windows overlapping by one token: the context restarts at each window)")
    bound_window_stride: int | None = Field(
        None, gt=0, description="bound_doc_window sliding: tokens each window advances (empty: max_seq_len // 2; "
        "at most max_seq_len − 1)")
    bound_alphas: list[float] = Field(
        list(DEFAULT_ALPHAS), min_length=1, description="grid of prediction-smoothing α for the bits-per-token "
        "bound (each costs the same ln(len) nats)")
    bound_top_k: list[int] = Field(list(M.BOUND_DEFAULT_TOP_K), description="k of the top-k error bounds")

    @field_validator("allocation_ratio")
    @classmethod
    def _ratio_needs_fixed(cls, value: float | None, info: ValidationInfo) -> float | None:
        mode = info.data.get("allocation_mode")
        if value is None or mode is None:
            return value
        if mode != "fixed":
            raise ValueError(f"allocation_ratio applies only to allocation_mode 'fixed' (allocation_mode is "
                             f"{mode!r}); set adapter.allocation_mode: fixed or remove adapter.allocation_ratio")
        d = info.data.get("intrinsic_dim")
        if d is not None and not 1 <= round(value * d) <= d - 1:
            raise ValueError(f"allocation_ratio {value} with intrinsic_dim {d} gives d_B = {round(value * d)}, "
                             f"leaving A or B no dimension; use a ratio in [{1 / d:.3g}, {1 - 1 / d:.3g}] or a larger "
                             "adapter.intrinsic_dim")
        return value

    @field_validator("bound_alphas")
    @classmethod
    def _alphas_in_range(cls, value: list[float]) -> list[float]:
        bad = [a for a in value if not 0 < a <= 1]
        if bad:
            raise ValueError(f"bound_alphas must be in (0, 1], got {bad}")
        return sorted(set(value))

    @field_validator("bound_top_k")
    @classmethod
    def _top_k_positive(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"bound_top_k values must be >= 1, got {value}")
        return sorted(set(value))

    @property
    def temperature(self) -> float:
        """C of the learned mode's soft mask: mask_temperature, else the convention's default."""
        return DEFAULT_TEMPERATURE[self.learned_convention] if self.mask_temperature is None else self.mask_temperature

    @property
    def ratio(self) -> float:
        return 0.5 if self.allocation_ratio is None else self.allocation_ratio

    def sizes(self) -> tuple[int, int]:
        """(d_A, d_B) in fixed mode: d_B = round(ratio·d), d_A = d − d_B."""
        d_b = round(self.ratio * self.intrinsic_dim)
        return self.intrinsic_dim - d_b, d_b


FAMILY = Family(
    "sublora", "raysweep.adapters.sublora.adapter:SubloraAdapter",
    "LoRA weights in a random d-dim subspace, θ = θ₀ + P·α, only α trains; PAC-Bayes bounds at the end",
    options="raysweep.adapters.sublora.options:SubloraOptions", zero_stages=(2,),
    # ZeRO-3 holds a weight whole only inside its own module's forward; θ(α) is built from α held elsewhere
    zero_refusal="it uses weights outside their own module's forward, where ZeRO-3 holds only a partition",
    cost_free_options=frozenset({"projector_seed", "allocation_ratio", "split_lr", "mask_temperature",
                                 "bound_delta", "bound_delta_split"}),
    progress_columns=(("d", "option", "intrinsic_dim"), ("allocation", "option", "allocation_mode"),
                      ("B share", "option", "allocation_ratio"), ("γ mean", "metric", M.ADAPTER_GAMMA_MEAN),
                      ("bpd bound", "metric", M.BOUND_DOC_BPD)),
)
