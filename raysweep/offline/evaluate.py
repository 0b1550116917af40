"""`raysweep eval PATH [--best] [--tasks ...]`: task metrics of finished trials, computed afterwards (the
evaluation of the best trial a researcher runs before writing the paper).

Rebuilds each checkpoint's model (base + its peft adapter, as `export` does), computes the same metrics as a
trial's `evaluate:` section (trial/task_eval.py; `--tasks`/`--generation`/`--limit` replace or add settings),
and writes them beside the trial's results: `task_metrics.json` in the checkpoint, which `analyze` reads over
the trial's own numbers. With `baseline` (the default), the untuned base's metrics are computed once per key
into the storage's shared baselines and copied into the experiment's baseline file (analyze's Δbase).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysweep.experiment import layout as L
from raysweep.experiment import metrics as M
from raysweep.experiment import storage


class EvalError(ValueError):
    """Bad input for `raysweep eval` (the message names the fix)."""


@dataclass
class EvalResult:
    checkpoint: Path
    trial_id: str | None
    metrics: dict[str, Any]
    written: Path
    baseline: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None


def evaluate_settings(saved: dict[str, Any] | None, tasks: list[str] | None, generation: bool,
                      limit: int | None) -> dict[str, Any]:
    """The trial's `evaluate` section with the command's options applied, validated (config/evaluate.py)."""
    from pydantic import ValidationError

    from raysweep.config.evaluate import EvaluateConfig

    body = json.loads(json.dumps(saved or {}))
    if tasks:
        body["lm_eval"] = (body.get("lm_eval") or {}) | {"tasks": list(tasks)}
    if generation and body.get("generation") is None:
        body["generation"] = {}  # the defaults (an empty section is a valid one)
    if limit is not None:
        if body.get("lm_eval") is not None:
            body["lm_eval"]["limit"] = limit
        if body.get("generation") is not None:
            body["generation"]["max_examples"] = limit
    if body.get("lm_eval") is None and body.get("generation") is None:
        raise EvalError("nothing to evaluate: the trial's grid has no evaluate section; give --tasks (lm-eval task "
                        "names or task YAML paths) and/or --generation")
    try:
        return EvaluateConfig(**{k: v for k, v in body.items() if v is not None}).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise EvalError(f"evaluate.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def experiment_of(checkpoint: Path) -> Path | None:
    """The experiment directory holding `checkpoint` (the first parent with the resolved grid file)."""
    for parent in Path(checkpoint).resolve().parents:
        if (parent / L.SWEEP_FILE).is_file():
            return parent
    return None


def store_of(experiment: Path) -> str | Path:
    """The storage root the experiment ran with, where its sweep's baselines are shared: the object store it
    was written to (`experiment` is then its local mirror), else the directory holding it."""
    import yaml

    try:
        saved = yaml.safe_load((experiment / L.SWEEP_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        saved = {}
    return saved["storage"] if storage.is_uri(saved.get("storage")) else experiment.parent


def sources(path: str | Path, best: bool) -> list:
    """The checkpoints `path` means (offline/export.py's rules); an experiment without --best: every trial's."""
    from raysweep.offline.export import ExportError, Source, resolve_source

    path = Path(path).expanduser()
    try:
        if (path / L.SWEEP_FILE).is_file() and not best:
            found = L.find_checkpoints(path)
            if not found:
                raise EvalError(f"{path}: no trial checkpoint found ({L.TRIALS_FILE} names none on disk)")
            return [Source(c) for c in found]
        return [resolve_source(path, best=best)]
    except ExportError as exc:
        raise EvalError(str(exc).replace("export", "evaluate")) from None


def evaluate_path(path: str | Path, *, best: bool = False, tasks: list[str] | None = None, generation: bool = False,
                  limit: int | None = None, weights: str = "final", baseline: bool | None = None,
                  device: str | None = None, log=lambda message: None) -> list[EvalResult]:
    """Evaluate every checkpoint `path` means and write its task_metrics.json; returns what was written."""
    return [evaluate_checkpoint(s.checkpoint, trial_id=s.trial_id, selection=s.selection, tasks=tasks,
                                generation=generation, limit=limit, weights=weights, baseline=baseline,
                                device=device, log=log) for s in sources(path, best)]


def evaluate_checkpoint(checkpoint: Path, *, trial_id: str | None = None, selection: dict | None = None,
                        tasks: list[str] | None = None, generation: bool = False, limit: int | None = None,
                        weights: str = "final", baseline: bool | None = None, device: str | None = None,
                        log=lambda message: None) -> EvalResult:
    import torch

    from raysweep.inputs import data
    from raysweep.inputs.cache import default_cache_dir
    from raysweep.offline.export import _adapted, _tokenizer
    from raysweep.trial.task_baseline import base_metrics
    from raysweep.trial.task_eval import task_metrics

    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint / L.TRIAL_CONFIG).read_text())
    config["evaluate"] = evaluate_settings(config.get("evaluate"), tasks, generation, limit)
    if baseline is not None:
        config["evaluate"]["baseline"] = baseline
    if config["evaluate"].get("generation") and config["data"]["task"] not in ("builtin", "chat"):
        raise EvalError(f"--generation: the trial's data.task is {config['data']['task']!r}, which has no answers "
                        "to generate (chat data only)")
    adapter_dir = checkpoint / (L.BEST_ADAPTER_DIR if weights == "best" else L.ADAPTER_DIR)
    if not adapter_dir.is_dir():
        raise EvalError(f"{checkpoint}: no {adapter_dir.name}/ in this checkpoint; use --weights final")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = _tokenizer(config)
    model = _adapted(config["model"], adapter_dir, config["adapter"]["type"] == "masked").to(device)
    eval_set = data.load_splits(tokenizer, config["data"])[1] if config["evaluate"].get("generation") else None
    log(f"task metrics of {checkpoint} ({adapter_dir.name}/)")
    started = time.perf_counter()
    metrics = task_metrics(model, tokenizer, config, eval_set, device)
    metrics[M.SYS_TASK_EVAL_S] = time.perf_counter() - started
    record = {"checkpoint": str(checkpoint), "weights": weights, "evaluate": config["evaluate"], "metrics": metrics}
    written = checkpoint / L.TASK_METRICS_FILE
    written.write_text(json.dumps(record, indent=2, default=str))
    result = EvalResult(checkpoint, trial_id, metrics, written, selection=selection)
    # a masked adapter's saved masks prune the base itself: switching the adapter off does not give the base
    if config["evaluate"].get("baseline") and config["adapter"]["type"] != "masked":
        experiment = experiment_of(checkpoint)
        store = store_of(experiment) if experiment is not None else default_cache_dir()
        found, path, computed = base_metrics(model, tokenizer, config, eval_set, store, device)
        log(f"baseline {'computed' if computed else 'found'}: {path}")
        result.baseline = found
        if experiment is not None:
            L.merge_baselines(experiment, [json.loads(storage.read_text(path))])
    return result
