"""Which trials may share a pack (packed trials, trial/packing.py): the one place that says it.

No torch here: `plan` groups cells into packs before anything heavy is imported.
"""

from __future__ import annotations

import json
from typing import Any

# what members of one pack must share: everything the base computes with (the rest may differ per member)
PACK_KEY = ("model", "data", "train.bf16", "train.gradient_checkpointing", "train.grad_accum_steps",
            "train.eval_batch_size")

# families whose members train exactly as alone inside a pack (tests/test_packing.py proves each)
PACKABLE_FAMILIES = ("lora", "dora", "sora", "sdora")

# why the other families run one per worker (plan prints it; not an error)
UNPACKED_FAMILIES = {
    "masked": "masked adapters prune the base weights they train over, so a pack would need one base per mask",
    "sublora": "sublora trains a subspace projection of the whole adapter with its own bound computations",
}


def pack_key(config: dict[str, Any]) -> str:
    """The pack key of a resolved trial config: equal keys may share a pack."""

    def get(path: str) -> Any:
        section, _, key = path.partition(".")
        return config[section][key] if key else config[section]

    return json.dumps({p: get(p) for p in PACK_KEY}, sort_keys=True, default=str)


def unpacked_reason(config: dict[str, Any]) -> str | None:
    """Why this trial cannot join a pack (None: it can)."""
    family = config["adapter"]["type"]
    if family in PACKABLE_FAMILIES:
        return None
    return UNPACKED_FAMILIES.get(family, f"adapter family {family!r} is not packed (only "
                                 + ", ".join(PACKABLE_FAMILIES) + ")")
