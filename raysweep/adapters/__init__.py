"""Adapter families: a registry from a lower-case name to the class implementing it.

Adding a family is one module under adapters/ plus one line in FAMILIES. Modules are imported lazily
(by name) so that validating a grid or printing a plan never imports peft or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raysweep.adapters.base import Adapter

# name -> "module:Class". One line per family.
FAMILIES: dict[str, str] = {
    "lora": "raysweep.adapters.lora:LoraAdapter",
    "dora": "raysweep.adapters.lora:DoraAdapter",
    "sora": "raysweep.adapters.sora.adapter:SoraAdapter",
    "sdora": "raysweep.adapters.sora.adapter:SdoraAdapter",
    "masked": "raysweep.adapters.masked.adapter:MaskedAdapter",
    "sublora": "raysweep.adapters.sublora.adapter:SubloraAdapter",
}


def names() -> list[str]:
    return sorted(FAMILIES)


def get(name: str) -> type[Adapter]:
    """The adapter class registered under `name` (KeyError names the known ones)."""
    try:
        target = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; known adapters: {', '.join(names())}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
