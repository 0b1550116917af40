# over 400 lines: finding the source, exporting and checking the export are one command's steps, each short
"""Export a trial's adapter — as a peft adapter, or merged into the base model — and check it.

`export(path, out)` takes a checkpoint directory, a trial directory (its latest checkpoint) or, with
`best=True`, an experiment directory (its best finished trial by `search.metric`/`search.mode` of the
experiment's raysweep.yaml, or `metric`/`mode`). It writes into `out`:

- adapter export (default): the checkpoint's peft adapter (`adapter_config.json`,
  `adapter_model.safetensors`; masked trials also `raysweep_mask.safetensors`/`.json`), the tokenizer
  as the trial used it (pad token and chat template set), `trial_config.json` and `export.json`.
  Loads with `PeftModel.from_pretrained(base, out)`; masked trials then need
  `raysweep.adapters.masked.adapter.apply_saved_masks(model, out)`.
- merged export (`merged=True`): the base with the adapter merged in (`merge_and_unload`, computed in
  float32, saved in the trial's model dtype), its tokenizer, `trial_config.json` and `export.json`.
  Loads with `AutoModelForCausalLM.from_pretrained(out)` alone (no peft). Masked trials are merged with
  their masks and every masked weight is checked to be exactly 0 (`mask_violations`, must be 0).

Which weights: the checkpoint's `best_adapter/` (`weights="best"`, default: the weights of the trial's
best eval loss, `eval/best_loss`) or `adapter/` (`weights="final"`: the weights at the checkpoint's
step, `eval/loss`; for SubLoRA this is the model the PAC-Bayes bounds are about).

The check: the exported artefact is loaded back from `out` (the merged model, or the base + the exported
adapter, with the exported tokenizer) and evaluated on the trial's eval split with the training loop's
own `worker.evaluate`; its loss must match the trial's reference (`eval/best_loss` or `eval/loss` from
the checkpoint's metrics.json) within `tolerance` (relative). A failed check keeps the files and
records it in export.json; `ExportResult.passed` is False. User errors raise `ExportError` before
anything is written.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from raysweep.experiment import layout as L
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import EXPORT_INFO, SWEEP_FILE, TRIAL_CONFIG, TRIALS_FILE
from raysweep.trial import checkpointing

WEIGHTS = {"best": L.BEST_ADAPTER_DIR, "final": L.ADAPTER_DIR}
REFERENCE = {"best": M.EVAL_BEST_LOSS, "final": M.EVAL_LOSS}
# relative tolerance of the eval-loss check (measured on the builtin model, CPU, LoRA / masked / SoRA).
# float32: the export evaluates the same weights another way (merged instead of factored, gates folded,
# maybe another device): ≤ 1.2e-7 measured; 1e-3 leaves room for another device or TF32 matmuls and still
# catches real mistakes (merging without the masks: 3.5e-2; adapter scale off by 10 %: 7.5e-3).
# bf16 / fp16: merging rounds W + ΔW to 8 / 11 mantissa bits once: ≤ 1.4e-4 (bf16) and 2.5e-5 (fp16)
# measured; 5e-3 allows for deeper models and still catches the errors above.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-3, "float16": 5e-3}


class ExportError(ValueError):
    """A user error (path, options, output directory); raised before anything is written."""


@dataclass
class Source:
    """The checkpoint to export and how it was found."""

    checkpoint: Path
    trial_id: str | None = None
    selection: dict[str, Any] | None = None  # --best: metric, mode, value, trials considered


@dataclass
class ExportResult:
    out: Path
    checkpoint: Path
    trial_id: str | None
    weights: str  # "best" | "final"
    merged: bool
    tolerance: float
    reference_metric: str  # eval/best_loss | eval/loss
    reference_loss: float | None  # from the checkpoint's metrics.json (None: not measured on these weights)
    exported_loss: float | None = None  # the exported artefact's eval loss (None: not checked)
    mask_violations: int | None = None  # masked merged exports: masked positions that are not 0
    masked_positions: int | None = None
    selection: dict[str, Any] | None = None
    note: str | None = None  # why the check was skipped

    @property
    def rel_diff(self) -> float | None:
        if self.exported_loss is None or self.reference_loss is None:
            return None
        return abs(self.exported_loss - self.reference_loss) / max(abs(self.reference_loss), 1e-12)

    @property
    def passed(self) -> bool | None:
        """True: checked and equal within tolerance (and no mask violations); False: a check failed;
        None: the loss was not checked and nothing else failed."""
        if self.mask_violations:
            return False
        if self.rel_diff is None:
            return None
        return self.rel_diff <= self.tolerance

    def problems(self) -> list[str]:
        out = []
        if self.mask_violations:
            out.append(f"{self.mask_violations} of {self.masked_positions} masked weights of the merged model "
                       "are not 0")
        if self.rel_diff is not None and self.rel_diff > self.tolerance:
            out.append(f"the exported model's eval loss {self.exported_loss:.6g} differs from the trial's "
                       f"{self.reference_metric} {self.reference_loss:.6g} by {self.rel_diff:.2e} relative "
                       f"(tolerance {self.tolerance:g})")
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(out=str(self.out), checkpoint=str(self.checkpoint), rel_diff=self.rel_diff, passed=self.passed)
        return d


# ------------------------------------------------------------------------------------ finding

def resolve_source(path: str | Path, *, best: bool = False, metric: str | None = None,
                   mode: str | None = None) -> Source:
    """The checkpoint `path` means: a checkpoint dir; a trial dir (its latest checkpoint); with `best`, an
    experiment dir's best TERMINATED trial (its latest checkpoint). ExportError on anything else."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ExportError(f"{path}: no such directory; give a checkpoint, trial or experiment directory")
    if not path.is_dir():
        raise ExportError(f"{path}: not a directory; give a checkpoint, trial or experiment directory")
    if (path / SWEEP_FILE).is_file():
        if not best:
            raise ExportError(f"{path} is an experiment directory: add --best to export its best finished trial "
                              "(by the experiment's search.metric, or --metric/--mode), or give one trial's "
                              "directory")
        return _best_trial(path, metric, mode)
    if best:
        raise ExportError(f"--best picks the best trial of an experiment directory (one with {SWEEP_FILE}); "
                          f"{path} is not one: drop --best to export this trial or checkpoint")
    if metric is not None or mode is not None:
        raise ExportError("--metric and --mode choose the best trial of an experiment: use them with --best")
    found = L.find_checkpoints(path)
    if len(found) > 1:
        raise ExportError(f"{path} holds the checkpoints of {len(found)} trials; give one trial's directory")
    if not found:
        raise ExportError(f"{path}: not a raysweep checkpoint, trial or experiment directory (no "
                          f"{TRIAL_CONFIG}, no checkpoint_*/ inside, no {SWEEP_FILE}); give an "
                          "experiment directory with --best, a trial directory, or a checkpoint_path from "
                          f"{TRIALS_FILE}")
    return Source(found[0], _trial_id(found[0], path))


def _trial_id(checkpoint: Path, given: Path) -> str | None:
    for directory in (given, checkpoint.parent):
        trial_id = L.last_result(directory).get("trial_id")
        if trial_id:
            return str(trial_id)
        if L.trial_id_of_train_run(directory):
            return L.trial_id_of_train_run(directory)
    return None


def _best_trial(experiment: Path, metric: str | None, mode: str | None) -> Source:
    import pandas as pd
    import yaml

    from analysis.load import ResultsError, load_trials, ran_to_end
    from raysweep.config import SearchConfig

    saved = yaml.safe_load((experiment / SWEEP_FILE).read_text()) or {}
    search = SearchConfig(**(saved.get("search") or {}))
    metric, mode = metric or search.metric, mode or search.mode
    if mode not in ("min", "max"):
        raise ExportError(f"--mode {mode!r}: use min or max")
    try:
        frame = load_trials(experiment)
    except ResultsError as exc:
        raise ExportError(str(exc)) from None
    if frame.empty:
        raise ExportError(f"{experiment}: no trial has reported yet, so there is nothing to export")
    if "status" not in frame:
        raise ExportError(f"{experiment}: no {TRIALS_FILE}, so which trials finished is unknown; give a trial "
                          "directory instead of --best")
    # a trial a scheduler (asha, median) stopped early did not run its budget: not a candidate
    finished = frame[ran_to_end(frame)]
    if finished.empty:
        counts = ", ".join(f"{n} {s}" for s, n in frame["status"].fillna("unknown").value_counts().items())
        raise ExportError(f"{experiment}: no finished (TERMINATED) trial ({counts}); resume the experiment or "
                          "give a trial directory")
    if metric not in frame:
        known = sorted(c for c in frame.columns if "/" in c and not c.startswith("cell/"))
        raise ExportError(f"--metric {metric!r} is not a metric of {experiment}; known: {', '.join(known)}")
    values = pd.to_numeric(finished[metric], errors="coerce")
    values = values[values.map(lambda v: math.isfinite(v))]
    if values.empty:
        raise ExportError(f"{experiment}: no finished trial has a finite {metric}; choose another --metric")
    row = finished.loc[values.idxmin() if mode == "min" else values.idxmax()]
    found: list[Path] = []
    recorded = row.get(M.CHECKPOINT_PATH)
    if isinstance(recorded, str) and recorded and Path(recorded).is_dir():
        found = L.find_checkpoints(Path(recorded))
    if not found and isinstance(row.get("trial_path"), str):
        found = L.find_checkpoints(Path(row["trial_path"]))
    if len(found) != 1:
        raise ExportError(f"{experiment}: the best trial {row['trial_id']} ({metric} {values[row.name]:.6g}) has "
                          f"no checkpoint on disk (recorded: {recorded or 'none'}); was the experiment moved "
                          "without its checkpoints?")
    selection = {"experiment": str(experiment), "metric": metric, "mode": mode, "value": float(values[row.name]),
                 "trials_considered": int(len(values)), "trials": int(len(frame))}
    return Source(found[0], str(row["trial_id"]), selection)


# ------------------------------------------------------------------------------------ export

def export(path: str | Path, out: str | Path, *, best: bool = False, merged: bool = False,
           weights: Literal["best", "final"] = "best", metric: str | None = None, mode: str | None = None,
           check: bool = True, tolerance: float | None = None) -> ExportResult:
    """Export the adapter of the checkpoint `path` means (see `resolve_source`) into `out` (a new or empty
    directory), as a peft adapter or (`merged`) a merged model, and check its eval loss against the trial's.
    Returns the result whatever the check says (`result.passed`); raises ExportError on user errors."""
    if weights not in WEIGHTS:
        raise ExportError(f"weights {weights!r}: use 'best' ({L.BEST_ADAPTER_DIR}/) or 'final' ({L.ADAPTER_DIR}/)")
    if tolerance is not None and not tolerance > 0:
        raise ExportError(f"--tolerance {tolerance}: must be > 0")
    source = resolve_source(path, best=best, metric=metric, mode=mode)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty directory; remove it or choose another")
    checkpoint = source.checkpoint
    adapter_dir = checkpoint / WEIGHTS[weights]
    if not (adapter_dir / L.PEFT_CONFIG).is_file():
        raise ExportError(f"{checkpoint}: no peft adapter in {WEIGHTS[weights]}/; is this a complete raysweep "
                          "checkpoint?")
    cfg = json.loads((checkpoint / TRIAL_CONFIG).read_text())
    _preflight(cfg, check)
    saved_metrics = checkpointing.load_metrics(checkpoint) if (checkpoint / L.METRICS).is_file() else {}
    reference, note = _reference(saved_metrics, weights, cfg)
    dtype = cfg["model"].get("dtype", "float32")
    result = ExportResult(out=out, checkpoint=checkpoint, trial_id=source.trial_id, weights=weights, merged=merged,
                          tolerance=tolerance or TOLERANCE.get(dtype, 5e-3), reference_metric=REFERENCE[weights],
                          reference_loss=reference, selection=source.selection, note=note)
    if not check:
        result.note = "not checked (--no-check)"

    out.mkdir(parents=True, exist_ok=True)
    masked = (adapter_dir / _mask_file()).is_file()
    if merged:
        result.masked_positions, result.mask_violations = _write_merged(cfg, adapter_dir, out, masked)
    else:
        shutil.copytree(adapter_dir, out, dirs_exist_ok=True)
    _tokenizer(cfg).save_pretrained(str(out))
    shutil.copy(checkpoint / TRIAL_CONFIG, out / TRIAL_CONFIG)
    _write_info(result, cfg, saved_metrics)  # complete even if the check below crashes
    if check and reference is not None:
        if merged and cfg["model"].get("load_in_4bit"):
            # the merge goes into the full-precision base, whose loss differs from the nf4 base the adapter
            # trained on (by the quantization error, ~3% on the builtin model): check the merge against the
            # same adapter unmerged on that full-precision base, and report the trial's own loss beside it
            full = dict(cfg, model=dict(cfg["model"], load_in_4bit=False))
            result.reference_loss = _evaluate_export(full, out, False, masked, adapter_dir=adapter_dir)
            result.reference_metric = "adapter unmerged on the full-precision base"
            result.note = (f"4-bit trial merged into the full-precision base; the trial's {REFERENCE[weights]} on "
                           f"its 4-bit base was {reference:.6g} ({result.reference_loss / reference - 1:+.2%} here)")
        result.exported_loss = _evaluate_export(cfg, out, merged, masked)
        _write_info(result, cfg, saved_metrics)
    return result


def _mask_file() -> str:
    from raysweep.adapters.masked.adapter import MASK_FILE

    return MASK_FILE


def _preflight(cfg: dict[str, Any], check: bool) -> None:
    from raysweep.inputs import data, models

    problems = [p for p in [models.check_source(cfg["model"]["name_or_path"])] if p]
    if check:
        problems += data.check_files(cfg["data"])
    if problems:
        hint = "" if not check else " (or skip the eval-loss check with --no-check if only the data is missing)"
        raise ExportError("the trial's inputs are not usable here" + hint + ":\n" +
                          "\n".join(f"  - {p}" for p in problems))


def _reference(saved: dict[str, Any], weights: str, cfg: dict[str, Any]) -> tuple[float | None, str | None]:
    """The trial's eval loss of exactly these weights, or (None, why not). best_adapter/ is by definition
    the weights of eval/best_loss; adapter/ matches eval/loss only if that eval ran at the checkpoint's step
    (a checkpoint between evals repeats the last eval's numbers)."""
    key = REFERENCE[weights]
    value = saved.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"not checked: the checkpoint's {L.METRICS} has no finite {key}"
    if weights == "final":
        step, train = saved.get(M.EVAL_STEP), cfg["train"]
        if step is None:  # checkpoints written before eval/step was reported: evals ran on these steps
            at = saved.get(M.TRAIN_STEP)
            on_eval = isinstance(at, int) and (at % train["eval_every"] == 0 or at == train.get("max_steps")
                                               or bool(saved.get(M.TRAIN_EARLY_STOPPED)))
            step = at if on_eval else None
        if step is None or step != saved.get(M.TRAIN_STEP):
            return None, (f"not checked: the checkpoint's {key} was not measured at its step "
                          f"{saved.get(M.TRAIN_STEP)} (eval/step {saved.get(M.EVAL_STEP)}), so there is no "
                          "reference for adapter/; export the best weights instead")
    return float(value), None


def _tokenizer(cfg: dict[str, Any]):
    """The tokenizer as the trial used it (pad token and chat template set as data.load_splits sets them)."""
    from transformers import AutoTokenizer

    from raysweep.inputs import data, models

    model_cfg = cfg["model"]
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(model_cfg["name_or_path"]),
                                              trust_remote_code=model_cfg.get("trust_remote_code", False))
    data.prepare_tokenizer(tokenizer)
    return tokenizer


def _adapted(model_cfg: dict[str, Any], adapter_dir: Path, masked: bool):
    """Base (in model_cfg's dtype, CPU) + the peft adapter in `adapter_dir`, masked like in training."""
    from peft import PeftModel

    from raysweep.inputs import models

    base, _ = models.load(model_cfg)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    if masked:
        from raysweep.adapters.masked.adapter import apply_saved_masks

        apply_saved_masks(model, adapter_dir)
    return model


def _write_merged(cfg: dict[str, Any], adapter_dir: Path, out: Path, masked: bool) -> tuple[int | None, int | None]:
    """Merge in float32 (one rounding to the trial's dtype at the end), save; (masked positions, violations)."""
    import torch

    # a 4-bit (QLoRA) trial merges into the full-precision base, as QLoRA adapters are deployed: merging into
    # nf4 weights would re-quantize the update away
    full = dict(cfg["model"], dtype="float32", load_in_4bit=False)
    model = _adapted(full, adapter_dir, masked).merge_and_unload()
    model = model.to(getattr(torch, cfg["model"].get("dtype", "float32")))
    counts: tuple[int | None, int | None] = (None, None)
    if masked:
        counts = mask_violations(model, load_masks(adapter_dir))
    model.config.use_cache = True  # training turns the KV cache off; the exported model generates
    model.save_pretrained(str(out))
    return counts


def load_masks(adapter_dir: str | Path) -> dict[str, Any]:
    """The keep-masks saved beside a masked trial's adapter: {module name: bool [out, in]}."""
    from safetensors.torch import load_file

    return {n: m.bool() for n, m in load_file(str(Path(adapter_dir) / _mask_file())).items()}


def mask_violations(model, masks: dict[str, Any]) -> tuple[int, int]:
    """(masked positions, how many of them are not exactly 0) in a plain (merged) model's weights."""
    from raysweep.adapters.masked.adapter import linear_layers

    layers = linear_layers(model)
    missing = sorted(set(masks) - set(layers))
    if missing:
        raise ValueError(f"the merged model has no layers {missing[:3]} that the masks name")
    positions = violations = 0
    for name, keep in masks.items():
        _, module, in_out = layers[name]
        weight = module.weight.detach()
        weight = weight.T if in_out else weight
        pruned = ~keep.to(weight.device)
        positions += int(pruned.sum())
        violations += int((weight[pruned] != 0).sum())
    return positions, violations


def _evaluate_export(cfg: dict[str, Any], out: Path, merged: bool, masked: bool, adapter_dir: Path | None = None) -> float:
    """Load the export back from `out` as a user would and evaluate it on the trial's eval split (the adapter
    from `adapter_dir` instead, when given: the unmerged reference of a 4-bit trial's merged export)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep.inputs import data
    from raysweep.trial.loop import evaluate
    from raysweep.trial.session import LocalSession

    remote = cfg["model"].get("trust_remote_code", False)
    if merged:
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=getattr(torch, cfg["model"].get("dtype", "float32")),
                                                     trust_remote_code=remote)
    else:
        model = _adapted(cfg["model"], adapter_dir or out, masked)
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=remote)
    _, eval_set = data.load_splits(tokenizer, cfg["data"])
    session = LocalSession(out)
    model.to(session.device())
    return evaluate(model, eval_set, cfg, session, tokenizer.pad_token_id)[M.EVAL_LOSS]


def _write_info(result: ExportResult, cfg: dict[str, Any], saved: dict[str, Any]) -> None:
    from raysweep import __version__
    from raysweep.inputs import models

    keys = (M.EVAL_LOSS, M.EVAL_BEST_LOSS, M.EVAL_ACCURACY, M.EVAL_STEP, M.TRAIN_STEP, M.ADAPTER_TRAINABLE_PARAMS,
            M.ADAPTER_EFFECTIVE_PARAMS, M.ADAPTER_SPARSITY, M.MASK_VIOLATIONS, M.MASK_ACHIEVED_SPARSITY)
    info = {
        "source_checkpoint": str(result.checkpoint),
        "trial_id": result.trial_id,
        "weights": result.weights,
        "adapter_dir": WEIGHTS[result.weights],
        "format": "merged model (transformers)" if result.merged else "peft adapter",
        "merged": result.merged,
        "adapter_type": cfg["adapter"]["type"],
        "base_model": cfg["model"]["name_or_path"],
        "base_model_path": models.resolve(cfg["model"]["name_or_path"]),
        "dtype": cfg["model"].get("dtype", "float32"),
        "selection": result.selection,
        "trial_metrics": {k: saved[k] for k in keys if k in saved},
        "check": {"reference_metric": result.reference_metric, "reference_loss": result.reference_loss,
                  "exported_loss": result.exported_loss, "rel_diff": result.rel_diff,
                  "tolerance": result.tolerance, "passed": result.passed, "note": result.note},
        "mask_check": None if result.mask_violations is None else {
            "masked_positions": result.masked_positions, "violations": result.mask_violations},
        "raysweep_version": __version__,
    }
    (result.out / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=float))

