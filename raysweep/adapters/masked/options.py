"""Masked-adapter options and family record (pydantic only: config/ validates them without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raysweep.adapters.family import Family
from raysweep.adapters.masked.pruning import IMPORTANCE, check_mask_options
from raysweep.experiment import metrics as M


class MaskOptions(BaseModel):
    """Keys under `adapter:` for the masked adapter (`sparsity`, `importance`, `mask` are grid axes)."""

    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of each pruned layer's weights set to zero, in [0, 1)")
    importance: Literal[IMPORTANCE] = Field(  # type: ignore[valid-type]
        "magnitude", description="weight importance: magnitude |W|, gradient |∇W| or taylor |W·∇W|")
    mask: str = Field("unstructured", description="unstructured, structured_rows (= structured: whole output rows), "
                                                  "structured_cols (whole input columns), random, or N:M (e.g. 2:4)")
    mask_scope: Literal["layer", "global"] = Field(
        "layer", description="unstructured masks: the sparsity holds per layer, or over all pruned weights together")
    mask_seed: int = Field(0, description="seed of random masks and of the calibration examples (not train.seed: "
                                          "trials that differ only in training seed share one mask)")
    calibration_examples: int = Field(64, gt=0, description="training examples whose mean gradient scores gradient/taylor importance")
    prune_modules: list[str] | None = Field(
        None, description="module name suffixes to prune, e.g. [q_proj, v_proj] (null: the adapted linear layers)")

    @model_validator(mode="after")
    def _consistent(self) -> MaskOptions:
        problem = check_mask_options(self.mask, self.sparsity, self.mask_scope)
        if problem:
            raise ValueError(problem)
        return self


FAMILY = Family(
    "masked", "raysweep.adapters.masked.adapter:MaskedAdapter",
    "LoRA on a pruned base: W ⊙ M frozen, update (B·A·s) ⊙ M, so merged weights keep the sparsity",
    options="raysweep.adapters.masked.options:MaskOptions", zero_stages=(2,),
    # ZeRO-3 holds a weight whole only inside its own module's forward; the mask merges pruned base weights
    zero_refusal="it uses weights outside their own module's forward, where ZeRO-3 holds only a partition",
    rewrites_base="prunes the base weights (W ⊙ M)",
    cost_free_options=frozenset({"sparsity", "mask_seed"}),
    progress_columns=(("mask", "option", "mask"), ("importance", "option", "importance"),
                      ("sparsity", "option", "sparsity"), ("violations", "metric", M.MASK_VIOLATIONS)),
)
