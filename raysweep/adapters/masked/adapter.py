"""Sparse-mask LoRA: the base is pruned by importance, and the LoRA update is masked the same way.

Base weights become W ⊙ M (frozen) and the update is ΔW = (B·A·s) ⊙ M in the forward pass *and* in
the merge, so what trains is exactly what merges and the merged model keeps every pruned zero. The
masking is a peft `LoraVariant` (the hook peft's own DoRA uses) installed on the pruned layers, so
peft's `merge_and_unload()` applies the mask too. Masks come from pruning.py and are computed once per
key and shared across trials (store.py). At the end of training every masked position of the merged
weights is checked to be exactly zero (`mask/violations`, validation_report.json).

DoRA does not compose here: peft's DoRA variant computes its own B·A product and weight norm and
never calls the masked delta, and the magnitude vector would need re-deriving on the masked weight.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from peft.utils.other import transpose
from safetensors.torch import load_file, save_file
from torch import nn

from raysweep.adapters.base import TrialContext
from raysweep.adapters.lora import PEFT_PREFIX, LoraAdapter
from raysweep.adapters.masked import pruning
from raysweep.adapters.masked import store as mask_store
from raysweep.adapters.masked.options import FAMILY, MaskOptions
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import MASK_VALIDATION_REPORT

MASK_FILE = "raysweep_mask.safetensors"  # saved beside the peft adapter: merging needs it
MASK_INFO = "raysweep_mask.json"  # beside it: sparsity, mask kind, importance, layout of the masks
VALIDATION_REPORT = MASK_VALIDATION_REPORT


def masked_delta(module, adapter_name: str):
    """(B·A·s) ⊙ M in the base weight's layout: the only update this layer can ever apply."""
    return module.get_delta_weight(adapter_name) * module.lora_mask


class MaskedLoraVariant(LoraVariant):
    """Forward and merge with the masked update (peft calls these instead of its vanilla path)."""

    @staticmethod
    def init(module, adapter_name: str, **kwargs: Any) -> None:
        pass

    @staticmethod
    def merge_safe(module, active_adapter: str, orig_weight):
        return orig_weight + masked_delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter: str, orig_weight) -> None:
        orig_weight.data += masked_delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter: str, orig_weight):
        return orig_weight - masked_delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module, active_adapter: str, x, result, **kwargs: Any):
        delta = transpose(masked_delta(module, active_adapter), module.fan_in_fan_out)  # -> [out, in]
        return result + F.linear(module.lora_dropout[active_adapter](x), delta.to(x.dtype))


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 layer: weight is [in, out]


def linear_layers(model) -> dict[str, tuple[Any, Any, bool]]:
    """Every linear layer by model-level name: (peft layer owning its adapter or None, the base linear
    layer, whether its weight is stored [in, out]). LoRA's own A/B layers are not listed."""
    found: dict[str, tuple[Any, Any, bool]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            found[name.removeprefix(PEFT_PREFIX)] = (module, module.get_base_layer(), bool(module.fan_in_fan_out))
    wrapped = {id(base) for _, base, _ in found.values()}
    for name, module in model.named_modules():
        parts = name.split(".")
        if id(module) in wrapped or any(p.startswith("lora_") for p in parts):
            continue
        if isinstance(module, nn.Linear) or _is_conv1d(module):
            found[name.removeprefix(PEFT_PREFIX)] = (None, module, _is_conv1d(module))
    return found


def pruned_layers(model, prune_modules: list[str] | None) -> dict[str, tuple[Any, Any, bool]]:
    """The layers to prune: the adapted ones (prune_modules null), else those whose name ends with one of
    the given suffixes (adapted or not; a non-adapted layer is pruned but has no update to mask)."""
    layers = linear_layers(model)
    if prune_modules is None:
        chosen = {n: v for n, v in layers.items() if v[0] is not None}
    else:
        chosen = {n: v for n, v in layers.items()
                  if any(n == s or n.endswith("." + s) for s in prune_modules)}
        if not chosen:
            raise ValueError(f"adapter.prune_modules {prune_modules} matches no linear layer of the model; "
                             "use module name suffixes such as q_proj or mlp.down_proj")
    return dict(sorted(chosen.items()))


class MaskedAdapter(LoraAdapter):
    name = FAMILY.name
    description = FAMILY.description
    options: MaskOptions
    use_dora = False

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.masks: dict[str, Any] = {}  # model-level name -> keep-mask in [out, in] layout (bool, CPU)
        self.layers: dict[str, tuple[Any, Any, bool]] = {}
        self.stats: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ masks

    def mask_key(self, context: TrialContext) -> dict[str, Any]:
        return mask_store.mask_key(self.options, context.config["model"], context.config["data"], list(self.layers))

    def _weights(self) -> dict[str, Any]:
        """Base weights in [out, in] layout, by model-level name."""
        return {n: (base.weight.T if in_out else base.weight) for n, (_, base, in_out) in self.layers.items()}

    def _calibration_gradients(self, model, context: TrialContext) -> dict[str, Any]:
        """Mean gradient of the training loss w.r.t. each pruned base weight over the calibration examples.
        The adapter's B is zero at this point, so the adapted model computes the base model's function."""

        params = {n: base.weight for n, (_, base, _) in self.layers.items()}
        flags = {n: p.requires_grad for n, p in params.items()}
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        was_training = model.training
        model.eval()  # no dropout: scores must not depend on chance
        batches = 0
        try:
            for batch in context.batches(self.options.calibration_examples, self.options.mask_seed):
                model(**batch).loss.backward()
                batches += 1
            grads = {}
            for n, p in params.items():
                g = p.grad / max(batches, 1)
                grads[n] = g.T if self.layers[n][2] else g
            return grads
        finally:
            for n, p in params.items():
                p.grad = None
                p.requires_grad_(flags[n])
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    def compute_masks(self, model, context: TrialContext) -> tuple[dict, dict]:
        o = self.options
        weights = self._weights()
        grads = None
        if mask_store.reads_data(o):
            grads = self._calibration_gradients(model, context)
        scores = {n: pruning.importance(w, grads[n] if grads else None, o.importance) for n, w in weights.items()}
        masks = pruning.make_masks(scores, o.sparsity, o.mask, o.mask_scope, o.mask_seed)
        return masks, pruning.score_histogram(scores)

    def prepare(self, model, context: TrialContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.layers = pruned_layers(model, self.options.prune_modules)
        masks, self.stats, computed = mask_store.get_or_compute(
            context.store, self.mask_key(context), lambda: self.compute_masks(model, context))
        self.masks = masks
        install_masks(self.layers, masks)
        return {M.MASK_TARGET_SPARSITY: self.options.sparsity, M.MASK_ACHIEVED_SPARSITY: self.stats["sparsity"],
                M.MASK_COMPUTED: computed, M.MASK_SETUP_S: time.perf_counter() - t0}

    # ------------------------------------------------------------------------- validation

    def validate(self, model) -> dict[str, Any]:
        """Merge every pruned layer exactly as peft's merge does and count nonzeros at masked positions."""
        layers, violations, zeros, numel, pruned = {}, 0, 0, 0, 0
        with torch.no_grad():
            for name, (owner, base, in_out) in self.layers.items():
                merged = base.weight
                if owner is not None:
                    for adapter_name in owner.active_adapters:
                        merged = owner.lora_variant[adapter_name].merge_safe(owner, adapter_name, merged)
                merged = merged.T if in_out else merged
                keep = self.masks[name].to(merged.device)
                bad = int((merged[~keep] != 0).sum())
                layer = {"target_sparsity": self.options.sparsity, "achieved_sparsity": float((~keep).sum()) / keep.numel(),
                         "merged_zero_fraction": float((merged == 0).sum()) / merged.numel(), "violations": bad,
                         "numel": keep.numel(), "adapted": owner is not None}
                layers[name] = layer
                violations += bad
                zeros += int((merged == 0).sum())
                numel += keep.numel()
                pruned += int((~keep).sum())
        return {"target_sparsity": self.options.sparsity, "achieved_sparsity": pruned / max(numel, 1),
                "merged_zero_fraction": zeros / max(numel, 1), "violations": violations, "numel": numel,
                "mask": self.stats.get("key", {}), "layers": layers}

    def on_train_end(self, model, context: TrialContext) -> tuple[dict[str, Any], dict[str, Any]]:
        report = self.validate(model)
        metrics = {M.MASK_ACHIEVED_SPARSITY: report["achieved_sparsity"], M.MASK_VIOLATIONS: report["violations"],
                   M.MASK_MERGED_ZERO_FRACTION: report["merged_zero_fraction"]}
        return metrics, {VALIDATION_REPORT: report}

    # ------------------------------------------------------------------------------- export

    def save(self, model, directory: Path, state: dict | None = None) -> None:
        """peft adapter + the masks (peft alone would merge an unmasked update: use `apply_saved_masks`)."""
        super().save(model, directory, state)
        save_file({n: m.to("cpu", dtype=torch.uint8).contiguous() for n, m in self.masks.items()},
                  str(Path(directory) / MASK_FILE))
        meta = {"sparsity": self.options.sparsity, "mask": self.options.mask, "importance": self.options.importance,
                "layout": "[out_features, in_features], 1 = keep"}
        (Path(directory) / MASK_INFO).write_text(json.dumps(meta, indent=2))


def install_masks(layers: dict[str, tuple[Any, Any, bool]], masks: dict[str, Any]) -> None:
    """Prune each layer's base weight to W ⊙ M and make its adapter (if any) apply (B·A·s) ⊙ M."""
    variant = MaskedLoraVariant()
    for name, (owner, base, in_out) in layers.items():
        keep = (masks[name].T if in_out else masks[name]).to(device=base.weight.device, dtype=base.weight.dtype)
        # a new Parameter, never an in-place write: the base may be shared with a per-process cache
        base.weight = nn.Parameter(base.weight.detach() * keep, requires_grad=False)
        if owner is not None:
            owner.register_buffer("lora_mask", keep, persistent=False)
            for adapter_name in owner.lora_A:
                owner.lora_variant[adapter_name] = variant


def apply_saved_masks(peft_model, adapter_dir: str | Path) -> None:
    """Make a `PeftModel.from_pretrained(base, adapter_dir)` model masked like in training: prune its base
    weights and mask the update in forward and merge (then `merge_and_unload()` keeps the sparsity)."""
    masks = {n: m.bool() for n, m in load_file(str(Path(adapter_dir) / MASK_FILE)).items()}
    layers = linear_layers(peft_model)
    missing = sorted(set(masks) - set(layers))
    if missing:
        raise ValueError(f"{adapter_dir}: masks for layers the model does not have: {missing[:3]}; "
                         "load the adapter on the base model it was trained on")
    install_masks({n: layers[n] for n in masks}, masks)

