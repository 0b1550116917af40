"""Adapter families: a registry from a lower-case name to what the rest of raysweep may know of a family.

A `Family` record says everything the layers above need without importing torch or peft: its options model
(pydantic, validated by config/), its capabilities (the DeepSpeed ZeRO stages it runs under, the options
that do not change a step's cost) and its live-table columns. The torch side (`Family.adapter`, an
`adapters.base.Adapter` subclass) is imported only where a trial trains (`get`).

Adding a family: a folder under adapters/ with options.py (no torch) and adapter.py, and one line in `_families`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raysweep.adapters.family import COMMON_COST_FREE_OPTIONS, Family, load

if TYPE_CHECKING:
    from raysweep.adapters.base import Adapter

__all__ = ["COMMON_COST_FREE_OPTIONS", "FAMILIES", "Family", "family", "get", "names"]

def _families() -> dict[str, Family]:
    from raysweep.adapters.masked.options import FAMILY as MASKED
    from raysweep.adapters.sora.options import FAMILIES as GATED
    from raysweep.adapters.sublora.options import FAMILY as SUBLORA

    plain = [
        Family("lora", "raysweep.adapters.lora:LoraAdapter",
               "low-rank update ΔW = B·A·(alpha/r) on the target linear layers (peft LoraConfig)"),
        Family("dora", "raysweep.adapters.lora:DoraAdapter",
               "LoRA with a learned magnitude per output row (peft use_dora)"),
    ]
    return {f.name: f for f in (*plain, *GATED, MASKED, SUBLORA)}


FAMILIES: dict[str, Family] = {}


def names() -> list[str]:
    return sorted(_registry())


def family(name: str) -> Family:
    """The record of family `name` (KeyError names the known ones)."""
    try:
        return _registry()[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; known adapters: {', '.join(names())}") from None


def get(name: str) -> type[Adapter]:
    """The adapter class (torch side) of family `name`."""
    return load(family(name).adapter)


def _registry() -> dict[str, Family]:
    if not FAMILIES:  # filled on first use: the options modules import pydantic only
        FAMILIES.update(_families())
    return FAMILIES
