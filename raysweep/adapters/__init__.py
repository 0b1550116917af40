"""Adapter families: a registry from a lower-case name to what the rest of raysweep may know of a family.

A `Family` record says everything the layers above need without importing torch or peft: its options model
(pydantic, validated by config/), its capabilities (the DeepSpeed ZeRO stages it runs under, the options
that do not change a step's cost) and its live-table columns. The torch side (`Family.adapter`, an
`adapters.base.Adapter` subclass) is imported only where a trial trains (`get`).

Adding a family: a folder under adapters/ with options.py (no torch) and adapter.py, and one line in FAMILIES.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from raysweep.adapters.base import Adapter

# adapter options of every family that do not change what a step computes (values and seeds): trials that
# differ only in these share a time calibration (offline/estimate)
COMMON_COST_FREE_OPTIONS = frozenset({"alpha"})


@dataclass(frozen=True)
class Family:
    name: str
    adapter: str  # "module:Class" of the torch side (adapters.base.Adapter)
    description: str
    options: str | None = None  # "module:Class" of its pydantic options model (no torch); None: no options
    zero_stages: tuple[int, ...] = (2, 3)  # DeepSpeed ZeRO stages it was checked under (config/rules.py)
    zero_refusal: str = ""  # why it does not run under the other stages (said in the error)
    cost_free_options: frozenset[str] = frozenset()  # besides COMMON_COST_FREE_OPTIONS
    # extra columns of the live progress table: (header, "option" | "metric", option key or metric name)
    progress_columns: tuple[tuple[str, str, str], ...] = ()

    @property
    def Options(self) -> type[BaseModel]:  # noqa: N802 - a class, as in `family.Options(**keys)`
        if self.options is None:
            from raysweep.adapters.base import NoOptions

            return NoOptions
        return _load(self.options)

    def option_keys(self) -> list[str]:
        """The keys a user writes for this family's options (`lambda`, not the Python name `lambda_`)."""
        return [field.alias or name for name, field in self.Options.model_fields.items()]

    def option_default(self, key: str) -> Any:
        """The default of option `key` ('' if the family has no such option)."""
        for name, field in self.Options.model_fields.items():
            if key in (name, field.alias):
                return field.default
        return ""

    def cost_free(self) -> frozenset[str]:
        return COMMON_COST_FREE_OPTIONS | self.cost_free_options


def _load(target: str):
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


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
    return _load(family(name).adapter)


def _registry() -> dict[str, Family]:
    if not FAMILIES:  # filled on first use: the options modules import pydantic only
        FAMILIES.update(_families())
    return FAMILIES
