"""`raysweep masks grid.yaml`: compute every pruning mask a sweep will need, before it runs.

Runs in the CLI process (no Ray): for each distinct mask of the grid's `masked` trials it builds the
trial's model and data exactly as a trial does (trial/loop.py setup_*) and calls the adapter's `prepare`,
which computes the mask into `<storage>/masks/` or finds it there. Trials of a later `raysweep run` with the
same storage then only load masks. Running it is optional: trials compute missing masks on demand.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysweep.adapters.base import parse_options
from raysweep.adapters.masked import store as mask_store
from raysweep.adapters.masked.options import FAMILY as MASKED
from raysweep.experiment import metrics as M


@dataclass
class MaskResult:
    sparsity: float
    mask: str
    importance: str
    achieved: float
    computed: bool
    seconds: float
    trials: int


def mask_identity(config: dict[str, Any]) -> str:
    """The trial's mask key (`mask_store.mask_key`, the key the trial's adapter will look its mask up by)
    before its model is built: the pruned layers are not known yet, so what chooses them (target_modules,
    prune_modules) stands in for their names."""
    a = config["adapter"]
    options = parse_options(MASKED.Options, a)
    modules = {"target_modules": a.get("target_modules"), "prune_modules": options.prune_modules}
    key = mask_store.mask_key(options, config["model"], config["data"], modules)
    return json.dumps(key, sort_keys=True, default=str)


def precompute_masks(trial_configs: list[dict[str, Any]], store: Path) -> list[MaskResult]:
    """Compute (or find) the mask of every distinct masked configuration; one result per distinct mask."""
    import warnings

    from transformers.utils import logging as hf_logging

    from raysweep.inputs import model_cache
    from raysweep.trial import loop
    from raysweep.trial.session import LocalSession

    hf_logging.disable_progress_bar()  # the CLI prints its own table; weight-loading bars would bury it
    warnings.filterwarnings("ignore", category=FutureWarning)

    groups: dict[str, list[dict[str, Any]]] = {}
    for cfg in trial_configs:
        if cfg["adapter"]["type"] == MASKED.name:
            groups.setdefault(mask_identity(cfg), []).append(cfg)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        session = LocalSession(Path(tmp))
        for configs in groups.values():
            cfg = dict(configs[0], _store=str(store))
            loop.setup_runtime(cfg)
            model, adapter, tokenizer, _ = loop.setup_model(cfg, session)
            train, evals, _ = loop.setup_data(cfg, tokenizer)
            context = loop.setup_context(cfg, session, train, evals, tokenizer.pad_token_id)
            metrics = adapter.prepare(model, context)
            a = cfg["adapter"]
            results.append(MaskResult(a["sparsity"], a["mask"], a["importance"], metrics[M.MASK_ACHIEVED_SPARSITY],
                                      bool(metrics[M.MASK_COMPUTED]), metrics[M.MASK_SETUP_S], len(configs)))
            del model, adapter
    model_cache.clear()
    return results
