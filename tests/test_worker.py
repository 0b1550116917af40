"""The training loop without Ray (LocalSession): learning, checkpoints, resume, early stop, NaN, GPT-2."""

from __future__ import annotations

import json

import pytest

from raysweep.experiment import metrics as M
from raysweep.trial import checkpointing
from raysweep.trial.loop import NonFiniteLossError, run_training
from raysweep.trial.session import LocalSession
from tests.helpers import make_gpt2_model, trial_config


def run(tmp_path, cfg, resume_from=None):
    session = LocalSession(tmp_path, resume_from=resume_from)
    run_training(cfg, session)
    return session


def test_eval_loss_falls_and_final_checkpoint_reproduces_it(tmp_path, builtin_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep.inputs import data
    from raysweep.trial.loop import evaluate

    cfg = trial_config(train={"max_steps": 40, "eval_every": 20})
    session = run(tmp_path, cfg)
    first, last = session.results[0], session.results[-1]
    assert first[M.TRAIN_STEP] == 0 and last[M.TRAIN_STEP] == 40
    assert last[M.EVAL_LOSS] < first[M.EVAL_LOSS]
    assert last[M.EVAL_INITIAL_LOSS] == first[M.EVAL_LOSS]
    for key in (M.TRAIN_LOSS, M.TRAIN_LR, M.TRAIN_TOKENS_PER_S, M.SYS_MEM_MB, M.EVAL_PPL, M.EVAL_ACCURACY,
                M.ADAPTER_TRAINABLE_PARAMS):
        assert key in last, key
    assert [c.name for c in session.checkpoints] == ["checkpoint_step000020", "checkpoint_step000040"]

    final = session.checkpoints[-1]
    assert json.loads((final / checkpointing.TRIAL_CONFIG).read_text()) == cfg
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), final / "adapter")
    tok = AutoTokenizer.from_pretrained(builtin_model_dir)
    _, evals = data.load_splits(tok, cfg["data"])
    reproduced = evaluate(model, evals, cfg, LocalSession(tmp_path), tok.pad_token_id)
    assert reproduced[M.EVAL_LOSS] == pytest.approx(last[M.EVAL_LOSS], rel=1e-5)
    assert reproduced[M.EVAL_ACCURACY] == pytest.approx(last[M.EVAL_ACCURACY])


def test_resume_from_a_checkpoint_continues_exactly(tmp_path, builtin_model_dir):
    cfg = trial_config(train={"max_steps": 30, "eval_every": 10, "log_every": 10})
    straight = run(tmp_path / "a", cfg)
    interrupted = run(tmp_path / "b", trial_config(train={"max_steps": 30, "eval_every": 10, "log_every": 10}))
    resumed = run(tmp_path / "c", cfg, resume_from=interrupted.checkpoints[0])  # from step 10
    assert resumed.results[0][M.TRAIN_STEP] == 10  # the re-report right after resuming
    assert resumed.results[-1][M.TRAIN_STEP] == 30
    assert resumed.results[-1][M.EVAL_LOSS] == pytest.approx(straight.results[-1][M.EVAL_LOSS], rel=1e-4)


def test_best_adapter_is_kept_in_every_checkpoint(tmp_path, builtin_model_dir):
    """best_adapter/ holds the weights of the best eval (as early stopping defines it), the adapter/
    next to it the current weights; both reload with peft and reproduce their eval losses."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep.inputs import data
    from raysweep.trial.loop import evaluate

    # only a 40% relative improvement counts as "better": the step-10 eval (6.1 -> ~3.3) is the best,
    # later evals improve a little, so best_adapter/ (step 10) and adapter/ (step 30) differ
    cfg = trial_config(train={"max_steps": 30, "eval_every": 10, "lr": 0.05, "schedule": "constant",
                              "early_stopping": {"min_rel_improvement": 0.4}})
    session = run(tmp_path, cfg)
    evals = {r[M.TRAIN_STEP]: r[M.EVAL_LOSS] for r in session.results}
    last = session.checkpoints[-1]
    best_loss = session.results[-1][M.EVAL_BEST_LOSS]
    assert best_loss == evals[10] and evals[30] < best_loss
    tok = AutoTokenizer.from_pretrained(builtin_model_dir)
    _, eval_set = data.load_splits(tok, cfg["data"])
    for sub, expected in (("best_adapter", best_loss), ("adapter", session.results[-1][M.EVAL_LOSS])):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), last / sub)
        got = evaluate(model, eval_set, cfg, LocalSession(tmp_path), tok.pad_token_id)[M.EVAL_LOSS]
        assert got == pytest.approx(expected, rel=1e-5), sub


def test_early_stopping_ends_the_trial(tmp_path, builtin_model_dir):
    # demanding a 90% relative improvement per eval: the second eval fails it, patience 1 stops
    cfg = trial_config(train={"max_steps": 200, "eval_every": 5, "log_every": 5,
                              "early_stopping": {"patience": 1, "min_rel_improvement": 0.9}})
    session = run(tmp_path, cfg)
    last = session.results[-1]
    assert last[M.TRAIN_EARLY_STOPPED] is True
    assert last[M.TRAIN_STEP] == 5
    assert session.checkpoints[-1].name == "checkpoint_step000005"


def test_non_finite_loss_ends_the_trial_with_a_clear_error(tmp_path, builtin_model_dir):
    # lr 1e25: Adam's first step moves every lora_B entry by ~lr, so the next forward overflows float32. A merely
    # large lr (1e2 .. 1e16 on the builtin model) overflows LlamaRMSNorm's x**2 instead: the norm returns exact
    # zeros with zero gradient, and the loss freezes at a finite ln(vocab) = 5.7268 (measured here)
    cfg = trial_config(train={"max_steps": 20, "lr": 1e25, "max_grad_norm": None, "warmup_steps": 0,
                              "schedule": "constant"})
    with pytest.raises(NonFiniteLossError, match=r"train/loss is (nan|inf).*lower train.lr"):
        run(tmp_path, cfg)


def test_epochs_budget_and_grad_accumulation(tmp_path, builtin_model_dir):
    cfg = trial_config(train={"max_steps": None, "epochs": 0.05, "grad_accum_steps": 2, "batch_size": 8,
                              "eval_every": 100}, data={"max_train_examples": 400})
    session = run(tmp_path, cfg)
    # 0.05 epochs of 400 examples at 16 examples per optimizer step -> ceil(20/16) = 2 steps
    assert session.results[-1][M.TRAIN_STEP] == 2


def test_gpt2_style_local_model_with_all_linear(tmp_path, builtin_model_dir):
    path = make_gpt2_model(tmp_path / "gpt2-tiny", builtin_model_dir)
    cfg = trial_config(model={"name_or_path": str(path)}, adapter={"target_modules": "all-linear"},
                       train={"max_steps": 10, "eval_every": 10})
    session = run(tmp_path / "out", cfg)
    assert session.results[-1][M.EVAL_LOSS] < session.results[0][M.EVAL_LOSS]
    adapter_cfg = json.loads((session.checkpoints[-1] / "adapter" / "adapter_config.json").read_text())
    assert any(m.endswith("c_attn") for m in adapter_cfg["target_modules"])  # GPT-2's fused qkv Conv1D
