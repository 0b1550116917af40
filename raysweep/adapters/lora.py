"""LoRA and DoRA through peft (`LoraConfig`, `use_dora=True` for DoRA), and what every LoRA-based family
shares: finding peft's LoRA layers in a model."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from raysweep.adapters.base import Adapter

ADAPTER = "default"  # peft's adapter name inside a LoraLayer
PEFT_PREFIX = "base_model.model."  # what get_peft_model puts in front of the base model's module names
# written beside a peft adapter that a family turned into plain LoRA (sora pruned and folded, sublora
# materialized): what it was made from
EXPORT_INFO = "raysweep_export.json"


def lora_layers(model) -> list[tuple[str, nn.Module]]:
    """(base-model module name, peft LoraLayer) for every adapted linear layer, in model order."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            out.append((name.removeprefix(PEFT_PREFIX), module))
    return out


class LoraAdapter(Adapter):
    name = "lora"
    description = "low-rank update ΔW = B·A·(alpha/r) on the target linear layers (peft LoraConfig)"
    use_dora = False

    def lora_config(self) -> LoraConfig:
        c = self.cfg
        return LoraConfig(
            r=c["r"],
            lora_alpha=c["alpha"],
            lora_dropout=c["dropout"],
            target_modules=c["target_modules"],
            use_dora=self.use_dora,
            task_type="CAUSAL_LM",
        )

    def build(self, model):
        return get_peft_model(model, self.lora_config())


class DoraAdapter(LoraAdapter):
    name = "dora"
    description = "LoRA with a learned magnitude vector per output row (peft LoraConfig(use_dora=True))"
    use_dora = True
