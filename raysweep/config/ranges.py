"""Continuous ranges in a grid file: `train.lr: {loguniform: [1e-5, 1e-3]}` next to list axes.

A range is parsed and checked here, without Ray; sweep/param_space.py turns it into the Ray Tune domain
that random search and Optuna sample from. Bounds are inclusive for the integer kinds (Tune's randint
excludes its upper bound, which surprises users reading `{randint: [4, 32]}`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KINDS = ("uniform", "loguniform", "randint", "lograndint", "choice")
SPELLING = ("{uniform: [low, high]}, {loguniform: [low, high]}, {randint: [low, high]}, "
            "{lograndint: [low, high]} or {choice: [a, b, ...]}")


@dataclass(frozen=True)
class Range:
    kind: str
    args: tuple

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(f'{a:g}' if isinstance(a, float) else str(a) for a in self.args)})"

    def representative(self) -> Any:
        """A value inside the range: what `plan` and the time estimate assume a trial gets."""
        if self.kind == "choice":
            return self.args[0]
        low, high = self.args
        mid = math.sqrt(low * high) if self.kind.startswith("log") else (low + high) / 2
        return round(mid) if self.kind.endswith("randint") else mid

    def extremes(self) -> list[Any]:
        """The values every trial config is validated at (both ends, or every option)."""
        return list(self.args)


def parse(spec: Any) -> tuple[Range | None, str | None]:
    """(range, None) or (None, what is wrong with it and how to write it)."""
    if not isinstance(spec, dict) or len(spec) != 1:
        return None, f"a range is one key: {SPELLING}"
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        return None, f"unknown range {kind!r}; write {SPELLING}"
    if not isinstance(args, list) or not args:
        return None, f"{kind} takes a list, e.g. {{{kind}: [1, 10]}}"
    if kind == "choice":
        if len(args) < 2:
            return None, "choice needs at least two options (one value is a plain setting)"
        return Range(kind, tuple(args)), None
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        return None, f"{kind} takes [low, high], two numbers"
    low, high = args
    if kind.endswith("randint") and not all(isinstance(a, int) for a in args):
        return None, f"{kind} takes two integers [low, high] (both included)"
    if not low < high:
        return None, f"low ({low}) must be below high ({high})"
    if kind.startswith("log") and low <= 0:
        return None, f"{kind} needs low > 0 (it samples the logarithm); got {low}"
    if not kind.endswith("randint"):
        low, high = float(low), float(high)
    return Range(kind, (low, high)), None
