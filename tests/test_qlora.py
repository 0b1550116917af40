"""QLoRA: the base loaded in 4-bit (nf4, double quantization) through bitsandbytes, on this CPU.

bitsandbytes ≥ 0.48 runs 4-bit forward and backward on CPU, so the whole path is tested here: quantized
layers, k-bit preparation, training with each adapter family that composes with a quantized base, the
per-process base cache, and the errors when it cannot work."""

from __future__ import annotations

import pytest

from raysweep.experiment import metrics as M
from raysweep.inputs import model_cache, models
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config

pytest.importorskip("bitsandbytes", reason="the quant extra (pip install -e '.[quant]')")


def test_4bit_base_has_nf4_layers_and_a_frozen_base(builtin_model_dir):
    import bitsandbytes as bnb

    model, _ = models.load({"name_or_path": "builtin", "dtype": "float32", "load_in_4bit": True})
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 14  # every linear layer of the 2 blocks; lm_head stays full precision
    assert {m.weight.quant_type for m in quantized} == {"nf4"}
    assert all(m.weight.quant_state.nested for m in quantized)  # double quantization
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("adapter", [
    {"type": "lora"}, {"type": "dora"}, {"type": "sora", "lambda": 0.1}, {"type": "sublora", "intrinsic_dim": 200,
                                                                           "bounds": False}])
def test_each_composing_adapter_trains_on_a_4bit_base(tmp_path, builtin_model_dir, adapter):
    lr = 0.1 if adapter["type"] == "sublora" else 3e-3
    cfg = trial_config(model={"load_in_4bit": True}, adapter=adapter,
                       train={"max_steps": 8, "eval_every": 8, "log_every": 4, "lr": lr})
    session = LocalSession(tmp_path)
    run_training(cfg, session)
    first, last = session.results[0], session.results[-1]
    assert last[M.EVAL_LOSS] < first[M.EVAL_LOSS] - 0.2, (first[M.EVAL_LOSS], last[M.EVAL_LOSS])
    assert (session.checkpoints[-1] / "adapter" / "adapter_config.json").is_file()


def test_cached_4bit_base_gives_the_same_trial(tmp_path, builtin_model_dir):
    model_cache.clear()
    cfg = trial_config(model={"load_in_4bit": True}, train={"max_steps": 4, "eval_every": 4})
    runs = []
    for i in range(2):
        session = LocalSession(tmp_path / str(i))
        run_training(cfg, session)
        runs.append(session.results[-1])
    assert runs[0][M.SYS_BASE_CACHED] is False and runs[1][M.SYS_BASE_CACHED] is True
    assert runs[1][M.EVAL_LOSS] == pytest.approx(runs[0][M.EVAL_LOSS], rel=1e-6)
    model_cache.clear()


def test_missing_bitsandbytes_is_named_with_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    problem = models.check_quantization({"load_in_4bit": True})
    assert "model.load_in_4bit" in problem and "[quant]" in problem
    assert models.check_quantization({"load_in_4bit": False}) is None


def test_merged_export_of_a_4bit_trial_goes_into_the_full_precision_base(tmp_path, builtin_model_dir):
    from raysweep.offline.export import export

    cfg = trial_config(model={"load_in_4bit": True}, train={"max_steps": 8, "eval_every": 4})
    session = LocalSession(tmp_path / "trial")
    run_training(cfg, session)
    result = export(session.checkpoints[-1], tmp_path / "merged", merged=True)
    assert result.passed is True and result.rel_diff < 1e-4  # merge == the unmerged adapter on that base
    assert "4-bit trial merged into the full-precision base" in result.note
    import json

    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in saved  # a plain full-precision model
