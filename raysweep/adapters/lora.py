"""LoRA and DoRA through peft (`LoraConfig`, `use_dora=True` for DoRA)."""

from __future__ import annotations

from raysweep.adapters.base import Adapter


class LoraAdapter(Adapter):
    name = "lora"
    description = "low-rank update ΔW = B·A·(alpha/r) on the target linear layers (peft LoraConfig)"
    use_dora = False

    def lora_config(self):
        from peft import LoraConfig

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
        from peft import get_peft_model

        return get_peft_model(model, self.lora_config())


class DoraAdapter(LoraAdapter):
    name = "dora"
    description = "LoRA with a learned magnitude vector per output row (peft LoraConfig(use_dora=True))"
    use_dora = True
