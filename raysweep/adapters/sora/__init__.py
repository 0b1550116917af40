"""SoRA / SDoRA: gated LoRA/DoRA ranks with a proximal L1 step."""
