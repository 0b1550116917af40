"""The per-process base-model cache that reused actors rely on: fresh views, no leaks, one entry."""

from __future__ import annotations

import os

import pytest
import torch

from raysweep.experiment import metrics as M
from raysweep.inputs import model_cache
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import make_gpt2_model, trial_config


@pytest.fixture(autouse=True)
def _empty_cache():
    model_cache.clear()
    yield
    model_cache.clear()


def eval_losses(session: LocalSession) -> dict[int, float]:
    return {r[M.TRAIN_STEP]: r[M.EVAL_LOSS] for r in session.results if r[M.TRAIN_STEP] % 10 == 0}


def test_fresh_view_shares_weights_but_not_flags_config_or_modules(builtin_model_dir):
    cfg = trial_config()
    view, tok, hit, _ = model_cache.base_model(cfg["model"], torch.device("cpu"))
    base = model_cache.cached_base()
    assert not hit and view is not base
    for (name, p), (_, q) in zip(base.named_parameters(), view.named_parameters(), strict=True):
        assert p is not q and p.data_ptr() == q.data_ptr(), name  # no copy of the weights
    # tied input/output embeddings stay tied inside the view
    assert view.get_output_embeddings().weight is view.get_input_embeddings().weight
    view.get_input_embeddings().weight.requires_grad_(True)
    view.config.use_cache = False
    view.model.layers[0].self_attn.q_proj = torch.nn.Identity()
    assert not base.get_input_embeddings().weight.requires_grad
    assert base.config.use_cache is not False
    assert isinstance(base.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    again, _, hit, _ = model_cache.base_model(cfg["model"], torch.device("cpu"))
    assert hit and isinstance(again.model.layers[0].self_attn.q_proj, torch.nn.Linear)


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_trials_on_the_cached_base_match_uncached_trials_and_leave_it_unchanged(tmp_path, builtin_model_dir,
                                                                                monkeypatch, adapter):
    cfg = trial_config(train={"max_steps": 20, "seed": 3}, adapter={"type": adapter})
    model_cache.base_model(cfg["model"], torch.device("cpu"))  # the base as loaded, before any trial
    before = model_cache.fingerprint(model_cache.cached_base())
    model_cache.clear()
    first = LocalSession(tmp_path / "1")
    run_training(cfg, first)
    assert model_cache.fingerprint(model_cache.cached_base()) == before
    second = LocalSession(tmp_path / "2")
    run_training(cfg, second)
    assert first.results[-1][M.SYS_BASE_CACHED] is False and second.results[-1][M.SYS_BASE_CACHED] is True
    assert model_cache.fingerprint(model_cache.cached_base()) == before  # training never wrote into the base
    monkeypatch.setenv("RAYSWEEP_BASE_CACHE", "0")
    uncached = LocalSession(tmp_path / "3")
    run_training(cfg, uncached)
    assert uncached.results[-1][M.SYS_BASE_CACHED] is False
    assert eval_losses(first) == eval_losses(second) == eval_losses(uncached)
    assert len(eval_losses(first)) == 3


def test_one_base_per_process_evicted_when_the_key_changes(tmp_path, builtin_model_dir):
    gpt2 = make_gpt2_model(tmp_path / "gpt2", builtin_model_dir)
    llama = trial_config()["model"]
    model_cache.base_model(llama, torch.device("cpu"))
    first = model_cache.cached_base()
    model_cache.base_model(llama | {"name_or_path": str(gpt2)}, torch.device("cpu"))
    assert type(model_cache.cached_base()).__name__ == "GPT2LMHeadModel"
    model_cache.base_model(llama | {"dtype": "bfloat16"}, torch.device("cpu"))
    assert model_cache.cached_base() is not first
    assert next(model_cache.cached_base().parameters()).dtype == torch.bfloat16
    # rewriting the model on disk invalidates the entry too
    model_cache.base_model(llama | {"name_or_path": str(gpt2)}, torch.device("cpu"))
    cached = model_cache.cached_base()
    os.utime(gpt2 / "model.safetensors", ns=(1, 1))  # weights rewritten, config untouched
    _, _, hit, _ = model_cache.base_model(llama | {"name_or_path": str(gpt2)}, torch.device("cpu"))
    assert not hit and model_cache.cached_base() is not cached


def test_a_seed_sweep_tokenizes_its_data_once_per_process(builtin_model_dir, builtin_task_files, monkeypatch,
                                                          tmp_path):
    """train.seed orders the examples, it never changes their tokens or the held-out split: trials of a seed
    sweep in one reused actor share one tokenization; a change to data.* tokenizes again."""
    from raysweep.inputs import data
    from raysweep.trial.loop import setup_data

    calls = []
    tokenize = data.tokenize_files
    monkeypatch.setattr(data, "tokenize_files", lambda *args: calls.append(args) or tokenize(*args))
    _, tokenizer, _, _ = model_cache.base_model(trial_config()["model"], torch.device("cpu"))
    store = {"_store": str(tmp_path)}
    first = setup_data(trial_config(train={"seed": 0}) | store, tokenizer)
    second = setup_data(trial_config(train={"seed": 7}) | store, tokenizer)
    assert len(calls) == 1 and second[0] is first[0] and second[1] is first[1]
    assert first[2] and not second[2]  # the first trial tokenized, the second reused
    shorter = setup_data(trial_config(train={"seed": 7}, data={"max_seq_len": 24}) | store, tokenizer)
    assert len(calls) == 2 and max(len(e.input_ids) for e in shorter[0]) <= 24


def test_trials_of_two_seeds_in_one_process_match_each_alone(tmp_path, builtin_model_dir):
    """The shared tokenization changes nothing a trial computes: seed 1 after seed 0 in one process gives
    the eval losses of seed 1 in a fresh cache."""
    cfg = {"train": {"max_steps": 10, "eval_every": 5, "seed": 1}}
    run_training(trial_config(train={"max_steps": 10, "eval_every": 5, "seed": 0}), LocalSession(tmp_path / "a"))
    after = LocalSession(tmp_path / "b")
    run_training(trial_config(**cfg), after)
    model_cache.clear()
    alone = LocalSession(tmp_path / "c")
    run_training(trial_config(**cfg), alone)
    steps = lambda s: {r[M.TRAIN_STEP]: r[M.EVAL_LOSS] for r in s.results if M.EVAL_LOSS in r}  # noqa: E731
    assert steps(after) == steps(alone) and len(steps(alone)) >= 3
