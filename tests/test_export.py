"""`raysweep export`: real checkpoints from short LocalSession trials (lora, masked, sora), exported as peft
adapters or merged models, loaded back the way a user would, and evaluated against the trial's numbers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raysweep.experiment import metrics as M
from raysweep.offline.export import ExportError, export, load_masks, mask_violations, resolve_source
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.conftest import ROOT
from tests.helpers import trial_config


def _train(root: Path, cfg: dict) -> Path:
    """Run a trial without Ray; the directory holding its checkpoint_step* dirs (a trial directory)."""
    cfg["_store"] = str(root / "store")  # masks stay out of the shared cache
    run_training(cfg, LocalSession(root / "trial"))
    return root / "trial"


def _latest(trial_dir: Path) -> Path:
    return sorted(trial_dir.glob("checkpoint_*"))[-1]


def _metrics(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "metrics.json").read_text())


@pytest.fixture(scope="module")
def lora_trial(tmp_path_factory, builtin_model_dir, builtin_task_files) -> Path:
    # only a 40% relative improvement counts as better: best_adapter/ (step 5) and adapter/ (step 20) differ
    cfg = trial_config(train={"max_steps": 20, "eval_every": 5, "log_every": 5, "lr": 0.05, "schedule": "constant",
                              "early_stopping": {"min_rel_improvement": 0.4}})
    return _train(tmp_path_factory.mktemp("lora"), cfg)


@pytest.fixture(scope="module")
def masked_trial(tmp_path_factory, builtin_model_dir, builtin_task_files) -> Path:
    cfg = trial_config(adapter={"type": "masked", "r": 4, "sparsity": 0.5},
                       train={"max_steps": 10, "eval_every": 5, "log_every": 5})
    return _train(tmp_path_factory.mktemp("masked"), cfg)


@pytest.fixture(scope="module")
def sora_trial(tmp_path_factory, builtin_model_dir, builtin_task_files) -> Path:
    # a large absolute threshold: the best adapter (step 5) has lost some ranks, the final one all of them
    cfg = trial_config(adapter={"type": "sora", "r": 8, "lambda": 0.2, "threshold": "absolute"},
                       train={"max_steps": 10, "eval_every": 5, "log_every": 5})
    return _train(tmp_path_factory.mktemp("sora"), cfg)


def eval_loss_with_peft(out: Path, masked: bool = False) -> float:
    """Base + the exported adapter with plain peft (and the exported tokenizer), evaluated as in training."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from raysweep.adapters.masked.adapter import apply_saved_masks
    from raysweep.inputs import data, models
    from raysweep.trial.loop import evaluate

    cfg = json.loads((out / "trial_config.json").read_text())
    base, _ = models.load(cfg["model"])
    model = PeftModel.from_pretrained(base, out)
    if masked:
        apply_saved_masks(model, out)
    tok = AutoTokenizer.from_pretrained(out)
    _, evals = data.load_splits(tok, cfg["data"])
    return evaluate(model, evals, cfg, LocalSession(out), tok.pad_token_id)[M.EVAL_LOSS]


NO_PEFT = textwrap.dedent("""
    import json, sys
    sys.modules["peft"] = None  # importing peft now fails: the merged model must load without it
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from raysweep.inputs import data
    from raysweep.trial.session import LocalSession
    from raysweep.trial.loop import evaluate
    out = sys.argv[1]
    cfg = json.load(open(out + "/trial_config.json"))
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    _, evals = data.load_splits(tok, cfg["data"])
    loss = evaluate(model, evals, cfg, LocalSession(out), tok.pad_token_id)["eval/loss"]
    print(json.dumps({"loss": loss, "params": [n for n, _ in model.named_parameters()]}))
""")


def eval_loss_without_peft(out: Path) -> tuple[float, list[str]]:
    proc = subprocess.run([sys.executable, "-c", NO_PEFT, str(out)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return found["loss"], found["params"]


# ------------------------------------------------------------------------------------------ lora


def test_adapter_export_reloads_with_peft_and_matches_the_best_eval_loss(lora_trial, tmp_path):
    checkpoint = _latest(lora_trial)
    saved = _metrics(checkpoint)
    assert saved[M.EVAL_BEST_LOSS] != saved[M.EVAL_LOSS]  # the test can tell best from final
    out = tmp_path / "out"
    result = export(checkpoint, out)
    assert result.passed is True and result.weights == "best" and not result.merged
    assert result.reference_metric == M.EVAL_BEST_LOSS and result.reference_loss == saved[M.EVAL_BEST_LOSS]
    assert result.exported_loss == pytest.approx(saved[M.EVAL_BEST_LOSS], rel=1e-5)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "trial_config.json",
                 "export.json"):
        assert (out / name).is_file(), name
    assert eval_loss_with_peft(out) == pytest.approx(saved[M.EVAL_BEST_LOSS], rel=1e-5)
    info = json.loads((out / "export.json").read_text())
    assert info["source_checkpoint"] == str(checkpoint) and info["adapter_dir"] == "best_adapter"
    assert info["merged"] is False and info["base_model"] == "builtin" and info["adapter_type"] == "lora"
    assert info["check"]["passed"] is True and info["check"]["reference_metric"] == M.EVAL_BEST_LOSS
    assert info["trial_metrics"][M.EVAL_LOSS] == saved[M.EVAL_LOSS]


def test_final_weights_of_a_trial_directory_match_eval_loss(lora_trial, tmp_path):
    saved = _metrics(_latest(lora_trial))
    result = export(lora_trial, tmp_path / "out", weights="final")  # a trial dir: its latest checkpoint
    assert result.checkpoint == _latest(lora_trial) and result.reference_metric == M.EVAL_LOSS
    assert result.passed is True
    assert result.exported_loss == pytest.approx(saved[M.EVAL_LOSS], rel=1e-5)
    assert abs(result.exported_loss - saved[M.EVAL_BEST_LOSS]) > 1e-3 * saved[M.EVAL_BEST_LOSS]


def test_merged_export_loads_with_transformers_alone(lora_trial, tmp_path):
    saved = _metrics(_latest(lora_trial))
    out = tmp_path / "merged"
    result = export(lora_trial, out, merged=True)
    assert result.passed is True and result.merged
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    loss, params = eval_loss_without_peft(out)
    assert not [n for n in params if "lora" in n]
    assert loss == pytest.approx(saved[M.EVAL_BEST_LOSS], rel=1e-5)
    assert result.exported_loss == pytest.approx(loss, rel=1e-9)
    assert json.loads((out / "export.json").read_text())["format"] == "merged model (transformers)"


def test_a_failed_check_keeps_the_files_and_says_so(lora_trial, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(_latest(lora_trial), checkpoint)
    saved = _metrics(checkpoint)
    saved[M.EVAL_BEST_LOSS] *= 1.05  # the export no longer reproduces the trial's number
    (checkpoint / "metrics.json").write_text(json.dumps(saved))
    out = tmp_path / "out"
    result = export(checkpoint, out, merged=True)
    assert result.passed is False and result.rel_diff == pytest.approx(0.05 / 1.05, rel=1e-3)
    assert "differs from the trial's eval/best_loss" in result.problems()[0]
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "export.json").read_text())["check"]["passed"] is False
    # a looser tolerance accepts it; the final weights have no reference once eval/step disagrees
    assert export(checkpoint, tmp_path / "loose", tolerance=0.1).passed is True
    saved[M.EVAL_STEP] = saved[M.TRAIN_STEP] - 1
    (checkpoint / "metrics.json").write_text(json.dumps(saved))
    unchecked = export(checkpoint, tmp_path / "final", weights="final")
    assert unchecked.passed is None and unchecked.exported_loss is None and "not measured" in unchecked.note
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------- masked


def test_masked_merged_export_keeps_every_masked_zero(masked_trial, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from raysweep.inputs import models

    checkpoint = _latest(masked_trial)
    saved = _metrics(checkpoint)
    out = tmp_path / "merged"
    result = export(checkpoint, out, merged=True)
    masks = load_masks(checkpoint / "best_adapter")
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned > 0 and result.masked_positions == pruned and result.mask_violations == 0
    assert result.passed is True
    assert result.exported_loss == pytest.approx(saved[M.EVAL_BEST_LOSS], rel=1e-5)
    # independently: every masked position of the saved merged weights is exactly 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    weights = dict(merged.named_parameters())
    for name, keep in masks.items():
        w = weights[f"{name}.weight"]
        assert torch.count_nonzero(w[~keep]) == 0, name
        assert torch.count_nonzero(w[keep]) > 0, name  # and the layer is not just zeros
    assert json.loads((out / "export.json").read_text())["mask_check"] == {"masked_positions": pruned,
                                                                           "violations": 0}
    # the counter is not blind: plain peft (no apply_saved_masks) merges an unmasked update on an unpruned base
    base, _ = models.load(json.loads((checkpoint / "trial_config.json").read_text())["model"])
    unmasked = PeftModel.from_pretrained(base, checkpoint / "best_adapter").merge_and_unload()
    assert mask_violations(unmasked, masks)[1] > 0.9 * pruned


def test_masked_adapter_export_carries_its_masks(masked_trial, tmp_path):
    saved = _metrics(_latest(masked_trial))
    out = tmp_path / "adapter"
    result = export(masked_trial, out)
    assert result.passed is True and result.mask_violations is None
    assert (out / "raysweep_mask.safetensors").is_file() and (out / "raysweep_mask.json").is_file()
    assert eval_loss_with_peft(out, masked=True) == pytest.approx(saved[M.EVAL_BEST_LOSS], rel=1e-5)


# ------------------------------------------------------------------------------------------ sora


@pytest.mark.parametrize("weights,merged", [("best", False), ("best", True), ("final", True)])
def test_sora_exports_as_plain_lora_with_pruned_ranks(sora_trial, tmp_path, weights, merged):
    checkpoint = _latest(sora_trial)
    saved = _metrics(checkpoint)
    out = tmp_path / "out"
    result = export(checkpoint, out, weights=weights, merged=merged)
    assert result.passed is True, result.problems()
    expected = saved[M.EVAL_BEST_LOSS if weights == "best" else M.EVAL_LOSS]
    assert result.exported_loss == pytest.approx(expected, rel=1e-5)
    if not merged:
        ranks = json.loads((out / "adapter_config.json").read_text())["rank_pattern"].values()
        assert min(ranks) < 8  # dead ranks were pruned (the export is still a plain peft LoRA)
        assert eval_loss_with_peft(out) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------ experiments


def _experiment(root: Path, trials: list[tuple[str, str, Path, dict]], executor_trial: str | None = None) -> Path:
    """A hand-built experiment directory like `raysweep run` leaves: raysweep.yaml, per-trial params.json +
    result.json, trials.csv, and real checkpoints (copied in; one trial in the train-executor layout)."""
    exp = root / "exp"
    exp.mkdir()
    (exp / "raysweep.yaml").write_text("name: exp\nsearch:\n  metric: eval/loss\n  mode: min\n")
    rows = []
    for trial_id, status, checkpoint, reported in trials:
        trial_dir = exp / f"{trial_id}_r=8"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({"cell": {"adapter.r": 8}}))
        if trial_id == executor_trial:  # Ray Train keeps it outside the Tune trial dir
            dest = exp / "train_runs" / f"train-{trial_id}" / "checkpoint_step000010"
        else:
            dest = trial_dir / "checkpoint_000001"
        shutil.copytree(checkpoint, dest)
        (trial_dir / "result.json").write_text(json.dumps({"trial_id": trial_id, **reported,
                                                           "checkpoint_path": str(dest)}) + "\n")
        rows.append({"trial_id": trial_id, "status": status, "adapter.type": "lora", "adapter.r": 8, "train.seed": 0,
                     **reported, "checkpoint_path": str(dest), "error": "", "trial_path": str(trial_dir)})
    with (exp / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return exp


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, lora_trial, masked_trial, sora_trial) -> Path:
    lora, masked, sora = _latest(lora_trial), _latest(masked_trial), _latest(sora_trial)
    return _experiment(tmp_path_factory.mktemp("experiment"), [
        ("abcde_00000", "TERMINATED", lora, {"eval/loss": 2.0, "adapter/trainable_params": 300}),
        ("abcde_00001", "TERMINATED", masked, {"eval/loss": 1.5, "adapter/trainable_params": 200}),
        ("abcde_00002", "ERROR", lora, {"eval/loss": 0.1, "adapter/trainable_params": 100}),  # never chosen
        ("abcde_00003", "TERMINATED", sora, {"eval/loss": 1.8, "adapter/trainable_params": 100}),
    ], executor_trial="abcde_00003")


def test_best_trial_of_an_experiment(experiment, tmp_path):
    best = resolve_source(experiment, best=True)
    assert best.trial_id == "abcde_00001" and best.checkpoint == experiment / "abcde_00001_r=8" / "checkpoint_000001"
    assert best.selection == {"experiment": str(experiment), "metric": "eval/loss", "mode": "min", "value": 1.5,
                              "trials_considered": 3, "trials": 4}
    assert resolve_source(experiment, best=True, mode="max").trial_id == "abcde_00000"
    by_params = resolve_source(experiment, best=True, metric="adapter/trainable_params")
    assert by_params.trial_id == "abcde_00003"  # the ERROR trial ties on it but is not finished
    assert by_params.checkpoint == experiment / "train_runs" / "train-abcde_00003" / "checkpoint_step000010"
    # a train-executor trial directory holds no checkpoint: it is found where Ray Train keeps it
    assert resolve_source(experiment / "abcde_00003_r=8").checkpoint == by_params.checkpoint
    assert resolve_source(experiment / "abcde_00003_r=8").trial_id == "abcde_00003"
    # end to end: the best (masked) trial, merged, checked against its own checkpoint's number
    result = export(experiment, tmp_path / "best", best=True, merged=True)
    assert result.trial_id == "abcde_00001" and result.passed is True and result.mask_violations == 0
    info = json.loads((tmp_path / "best" / "export.json").read_text())
    assert info["trial_id"] == "abcde_00001" and info["selection"]["value"] == 1.5


def test_bad_inputs_raise_export_error_before_writing(experiment, lora_trial, tmp_path):
    out = tmp_path / "out"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a raysweep directory")
    cases = [
        (dict(path=tmp_path / "missing"), "no such directory"),
        (dict(path=experiment), "add --best"),
        (dict(path=stray), "not a raysweep checkpoint, trial or experiment directory"),
        (dict(path=lora_trial, best=True), "drop --best"),
        (dict(path=lora_trial, metric="eval/loss"), "use them with --best"),
        (dict(path=experiment, best=True, metric="eval/nope"), "not a metric"),
        (dict(path=experiment, best=True, mode="up"), "use min or max"),
        (dict(path=lora_trial, weights="latest"), "use 'best'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message):
            export(kwargs.pop("path"), out, **kwargs)
        assert not out.exists(), kwargs
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty directory"):
        export(lora_trial, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_an_experiment_without_finished_trials_is_an_error(tmp_path, lora_trial):
    exp = _experiment(tmp_path, [("fffff_00000", "ERROR", _latest(lora_trial), {"eval/loss": 1.0})])
    with pytest.raises(ExportError, match=r"no finished \(TERMINATED\) trial \(1 ERROR\)"):
        export(exp, tmp_path / "out", best=True)
