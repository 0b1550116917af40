"""What the layers above adapters/ may know of a family, without importing torch or peft: the `Family`
record (declared in each family's options.py) and the empty options model of families without options."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class NoOptions(BaseModel):
    """Family-specific keys under `adapter:`; a family without extra keys accepts none."""

    model_config = ConfigDict(extra="forbid")


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
    rewrites_base: str = ""  # how it changes the base weights themselves ('' if it does not): no 4-bit base
    cost_free_options: frozenset[str] = frozenset()  # besides COMMON_COST_FREE_OPTIONS
    # extra columns of the live progress table: (header, "option" | "metric", option key or metric name)
    progress_columns: tuple[tuple[str, str, str], ...] = ()

    @property
    def Options(self) -> type[BaseModel]:  # noqa: N802 - a class, as in `family.Options(**keys)`
        return NoOptions if self.options is None else load(self.options)

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


def load(target: str):
    """The object a \"module:Name\" string names (imports the module)."""
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
