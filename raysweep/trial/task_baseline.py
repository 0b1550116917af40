"""The untuned base's task metrics: computed once per key (model, evaluate settings, and the data when
generating) into `<storage>/baselines/<key>/`, under a file lock, by the first trial that needs them; every
other trial of the sweep (and of later sweeps on that storage) reads them. The driver copies them into the
experiment directory (sweep/progress.py), where `analyze` compares every trial with them.

The base is the trial's own model with its adapter switched off (peft's `disable_adapter`), before the
adapter's `prepare` (a masked adapter prunes the base there): the same weights, dtype and 4-bit quantization
the trial trains on, nothing loaded again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raysweep.experiment import storage
from raysweep.experiment.layout import BASELINE_FILE, BASELINES_DIR
from raysweep.trial.task_eval import task_metrics

VERSION = 1  # part of the key: bump when what a baseline holds changes


def baseline_key(config: dict[str, Any]) -> str:
    """What the base's task metrics depend on, hashed: the base's identity, the evaluate settings (not when or
    baseline), the data and eval batch size when answers are generated from the validation split."""
    from raysweep.inputs.model_cache import identity

    evaluate = {k: v for k, v in (config.get("evaluate") or {}).items() if k not in ("when", "baseline")}
    data = config["data"] if evaluate.get("generation") else None
    chat = config["data"]["task"]  # lm-eval prompts follow the data's kind (chat template or not)
    body = {"v": VERSION, "model": identity(config["model"]), "evaluate": evaluate, "data": data, "kind": chat}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_metrics(model, tokenizer, config: dict[str, Any], eval_set, store: str | Path,
                 device=None) -> tuple[dict[str, Any], str, bool]:
    """(the base's task metrics, the file they are kept in (in the storage: the driver, maybe on another
    node, reads it), whether this call computed them)."""
    from raysweep.inputs.cache import build_once_shared

    key = baseline_key(config)
    computed: list[bool] = []

    def build(tmp: Path) -> None:
        with model.disable_adapter():  # the untuned base: the adapted layers add nothing
            metrics = task_metrics(model, tokenizer, config, eval_set, device)
        computed.append(True)
        record = {"key": key, "model": config["model"]["name_or_path"], "model_config": config["model"],
                  "evaluate": config.get("evaluate"), "metrics": metrics}
        (tmp / BASELINE_FILE).write_text(json.dumps(record, indent=2, default=str))

    # kept with its failed parts too (their reasons under task/errors): one baseline per sweep, as every trial
    # sees it; delete <storage>/baselines/ to compute it again once the dataset can be reached
    directory = build_once_shared(store, f"{BASELINES_DIR}/{key}", build)
    record = json.loads((directory / BASELINE_FILE).read_text())
    kept = storage.join(store, BASELINES_DIR, key, BASELINE_FILE) if storage.is_uri(store) else directory / BASELINE_FILE
    return record["metrics"], str(kept), bool(computed)
