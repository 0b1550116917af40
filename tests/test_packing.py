"""Packed trials (trial/packing.py, packed_loop.py): every member of a pack gets the results it gets alone."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from raysweep.experiment import metrics as M
from raysweep.inputs import model_cache
from raysweep.trial.loop import run_training
from raysweep.trial.packed_loop import train_pack
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config

# four members that differ in everything a pack lets differ: lr, rank, seed (data order, init, dropout),
# batch size, λ, dropout, clipping, schedule and eval cadence
CELLS = [
    {"lr": 3e-3, "r": 4, "seed": 0, "batch_size": 4, "lambda": 0.1, "dropout": 0.0, "eval_every": 10},
    {"lr": 1e-2, "r": 8, "seed": 1, "batch_size": 7, "lambda": 0.3, "dropout": 0.1, "eval_every": 10},
    {"lr": 5e-3, "r": 2, "seed": 2, "batch_size": 5, "lambda": 0.5, "dropout": 0.0, "eval_every": 5,
     "schedule": "linear"},
    {"lr": 2e-3, "r": 16, "seed": 3, "batch_size": 6, "lambda": 0.2, "dropout": 0.05, "eval_every": 20,
     "max_grad_norm": None},
]


def config(family: str, cell: dict, steps: int, dtype: str = "float64") -> dict:
    adapter = {"type": family, "r": cell["r"], "dropout": cell["dropout"]}
    if family in ("sora", "sdora"):
        adapter["lambda"] = cell["lambda"]
    train = {"seed": cell["seed"], "lr": cell["lr"], "max_steps": steps, "eval_every": cell["eval_every"],
             "log_every": 5, "batch_size": cell["batch_size"], "warmup_steps": 3,
             "max_grad_norm": cell.get("max_grad_norm", 0.5), "schedule": cell.get("schedule", "cosine")}
    cfg = trial_config(train=train, adapter=adapter, data={"max_eval_examples": 24})
    cfg["model"]["dtype"] = dtype  # float64 (not a user option): equality to the last bit proves the maths
    return cfg


def alone(cfg: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        session = LocalSession(Path(tmp))
        run_training(cfg, session)
    model_cache.release_trial_memory()
    return session.results


def evals(rows: list[dict]) -> dict[int, float]:
    return {r[M.EVAL_STEP]: r[M.EVAL_LOSS] for r in rows if M.EVAL_LOSS in r}


@pytest.mark.parametrize("family", ["lora", "dora", "sora", "sdora"])
def test_every_member_of_a_pack_gets_the_eval_losses_it_gets_alone(family, builtin_model_dir, builtin_task_files):
    configs = [config(family, cell, steps=40) for cell in CELLS]
    packed = train_pack(configs)
    for cfg, member in zip(configs, packed, strict=True):
        rows = alone(cfg)
        mine, theirs = evals(member.reports), evals(rows)
        assert member.status == "TERMINATED" and mine.keys() == theirs.keys() and len(mine) >= 3
        for step, loss in theirs.items():
            assert mine[step] == pytest.approx(loss, rel=1e-9, abs=0), (cfg["train"]["seed"], step)
        # gates, sparsity and effective parameters at the end equal too
        for key in (M.ADAPTER_TRAINABLE_PARAMS, M.ADAPTER_EFFECTIVE_PARAMS, M.ADAPTER_SPARSITY, M.ADAPTER_LIVE_RANKS):
            assert (key in member.reports[-1]) == (key in rows[-1])
            if key in rows[-1]:
                assert member.reports[-1][key] == pytest.approx(rows[-1][key], rel=1e-9)
    assert len({evals(m.reports)[40] for m in packed}) == 4  # the members really trained differently


def test_float32_packs_drift_at_most_1e_4(builtin_model_dir, builtin_task_files):
    configs = [config("lora", cell, steps=20, dtype="float32") for cell in CELLS[:2]]
    for cfg, member in zip(configs, train_pack(configs), strict=True):
        for step, loss in evals(alone(cfg)).items():
            assert evals(member.reports)[step] == pytest.approx(loss, rel=1e-4)


def test_a_member_with_a_nan_loss_leaves_and_the_others_go_on_unchanged(builtin_model_dir, builtin_task_files):
    healthy = [config("lora", cell, steps=20) for cell in CELLS[:2]]
    broken = config("lora", CELLS[2], steps=20)
    broken["train"]["lr"], broken["train"]["max_grad_norm"] = 1e25, None  # diverges within a few steps
    with_nan = train_pack([healthy[0], broken, healthy[1]])
    without = train_pack(healthy)
    assert with_nan[1].status == "ERROR" and "NonFiniteLossError" in with_nan[1].error
    assert with_nan[1].state["step"] < 20
    for a, b in zip([with_nan[0], with_nan[2]], without, strict=True):
        assert a.status == b.status == "TERMINATED" and evals(a.reports) == evals(b.reports)


def test_early_stopping_is_per_member(builtin_model_dir, builtin_task_files):
    eager = config("lora", CELLS[2], steps=40)
    eager["train"]["early_stopping"] = {"patience": 1, "min_rel_improvement": 0.5}  # stops at its 2nd eval
    steady = config("lora", CELLS[0], steps=40)
    packed = train_pack([eager, steady])
    assert packed[0].state["early_stopped"] and packed[0].state["step"] < 40
    assert evals(packed[0].reports) == pytest.approx(evals(alone(eager)), rel=1e-9)
    assert packed[1].state["step"] == 40 and not packed[1].state["early_stopped"]
    assert evals(packed[1].reports) == pytest.approx(evals(alone(steady)), rel=1e-9)  # the other goes on as alone


def test_members_join_mid_run_and_resume_from_their_checkpoints_with_their_results_alone(
        builtin_model_dir, builtin_task_files, tmp_path):
    """Continuous packing and resume: a member that joins a pack already 7 steps in, and a member resumed
    from its own checkpoint into a new pack, each get every eval loss they get alone (float64: exactly);
    with gradient accumulation (micro-batches averaged as alone)."""
    from raysweep.trial.packed_loop import PackEngine

    first, late = (config("dora", cell, steps=20) for cell in CELLS[:2])
    for cfg in (first, late):
        cfg["train"]["grad_accum_steps"] = 2
    sessions = [LocalSession(tmp_path / "first"), LocalSession(tmp_path / "late")]
    engine = PackEngine(first)
    [run_first] = engine.admit([(first, sessions[0], None)])
    for _ in range(7):
        engine.step()
    [run_late] = engine.admit([(late, sessions[1], None)])
    while engine.running():
        engine.step()
    for cfg, run in ((first, run_first), (late, run_late)):
        assert run.status == "TERMINATED"
        assert evals(run.reports) == pytest.approx(evals(alone(cfg)), rel=1e-9, abs=0)

    # the first member again, resumed from its step-10 checkpoint beside a fresh member
    checkpoint = next(p for p in sessions[0].checkpoints if p.name.endswith("000010"))
    engine = PackEngine(first)
    resumed, _ = engine.admit([(first, LocalSession(tmp_path / "resumed"), checkpoint),
                               (late, LocalSession(tmp_path / "late2"), None)])
    while engine.running():
        engine.step()
    after = {step: loss for step, loss in evals(run_first.reports).items() if step > 10}
    mine = {step: loss for step, loss in evals(resumed.reports).items() if step > 10}
    assert resumed.status == "TERMINATED" and mine == pytest.approx(after, rel=1e-9, abs=0) and len(after) == 1


def test_each_member_gets_the_task_metrics_of_its_own_adapter(builtin_model_dir, builtin_task_files, tmp_path):
    """evaluate: in a pack: each member's generation exact match / F1 are those of its own adapter, equal to
    its run alone (the member's model runs outside the pack for them), and the pack still trains as alone."""
    evaluate = {"when": "end", "baseline": False, "generation": {"max_new_tokens": 8, "max_examples": 16}}
    configs = [trial_config(train={"seed": seed, "max_steps": 30, "eval_every": 30, "lr": lr}, adapter={"r": r},
                            evaluate=evaluate) for seed, lr, r in ((0, 3e-3, 4), (1, 1e-2, 8))]
    for cfg, member in zip(configs, train_pack(configs), strict=True):
        rows = alone(cfg)
        for key in (M.GEN_EXACT_MATCH, M.GEN_F1, M.EVAL_LOSS):
            assert member.reports[-1][key] == pytest.approx(rows[-1][key], rel=1e-4), key


@pytest.mark.parametrize("splits", [True, False], ids=["member-by-member", "whole-batch"])
def test_a_pack_keeps_no_members_logits_for_the_backward(splits, monkeypatch, builtin_model_dir, builtin_task_files):
    """The logits (positions × vocabulary) are what grows with the pack. Made member by member inside a
    checkpoint, none is kept for the backward (each member's are remade there, one member at a time); the
    whole-batch fallback (a model whose logits are not its output layer alone) keeps every member's."""
    import torch
    from transformers import AutoConfig

    from raysweep.trial import packing

    if not splits:
        monkeypatch.setattr(packing, "head_splits", lambda runner: False)
    vocab = AutoConfig.from_pretrained(builtin_model_dir).vocab_size
    configs = [config("lora", cell, steps=1, dtype="float32") for cell in CELLS]
    kept: list[int] = []

    def record(t):
        if t.dim() >= 2 and t.shape[-1] == vocab:
            kept.append(t.numel() // vocab)  # positions whose logits (or log-probabilities) are kept
        return t

    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        train_pack(configs)
    if splits:
        assert kept == []
    else:
        assert len(kept) >= len(CELLS) and sum(kept) >= sum(c["batch_size"] for c in CELLS) * 2


@pytest.mark.parametrize(("model", "splits"), [("llama", True), ("gpt2", True), ("gemma2-softcap", False)])
def test_logits_are_split_only_where_they_are_the_output_layer_alone(model, splits):
    """Gemma 2 soft-caps its logits after the output layer: there the pack keeps the whole batch's."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from raysweep.trial.packing import head_splits

    small = {"vocab_size": 100}
    built = {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                      num_attention_heads=2, **small)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, **small)),
        "gemma2-softcap": lambda: Gemma2ForCausalLM(Gemma2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, final_logit_softcapping=30.0, **small)),
    }[model]()
    assert head_splits(built) is splits
