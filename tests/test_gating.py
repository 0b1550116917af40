"""SoRA / SDoRA: the soft threshold, schedules, gradients to gates and magnitudes, effective-params
arithmetic, sparsity that grows with λ, and the pruned export that reloads in plain peft."""

from __future__ import annotations

import math

import pytest
import torch

from raysweep import adapters
from raysweep.adapters.sora import gating, schedules
from raysweep.experiment import metrics as M
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config

# (g, ξ, expected): the correct proximal step sign(g)·max(|g| − ξ, 0)
SOFT_THRESHOLD = [
    (3.0, 1.0, 2.0),
    (2.0, 1.0, 1.0),  # |g| = 2ξ shrinks to ξ
    (1.5, 1.0, 0.5),  # ξ < |g| ≤ 2ξ shrinks by ξ; three sequential in-place masks would zero it
    (1.0000001, 1.0, 1.0000001 - 1.0),
    (1.0, 1.0, 0.0),  # |g| = ξ: exactly zero
    (0.5, 1.0, 0.0),
    (0.0, 1.0, 0.0),
    (-0.3, 1.0, 0.0),
    (-1.5, 1.0, -0.5),  # negative values shrink towards zero too
    (-4.0, 0.5, -3.5),
    (0.2, 0.0, 0.2),  # ξ = 0: unchanged
]


@pytest.mark.parametrize(("g", "xi", "expected"), SOFT_THRESHOLD)
def test_soft_threshold(g, xi, expected):
    t = torch.tensor([g], dtype=torch.float64)
    gating.soft_threshold_(t, xi)
    assert t.item() == pytest.approx(expected, abs=1e-12)


def test_soft_threshold_is_one_step_not_three_masks():
    g = torch.tensor([1.2, 1.9, -1.7, 0.4, 2.5])
    gating.soft_threshold_(g, 1.0)
    assert torch.allclose(g, torch.tensor([0.2, 0.9, -0.7, 0.0, 1.5]))
    assert int((g == 0).sum()) == 1  # only |g| ≤ ξ died


@pytest.mark.parametrize(("schedule", "progress", "expected"), [
    ("constant", 0.7, 0.1),
    ("linear", 0.0, 0.1), ("linear", 0.5, 0.3), ("linear", 1.0, 0.5),
    ("log_linear", 0.5, math.log((math.exp(0.1) + math.exp(0.5)) / 2)), ("log_linear", 1.0, 0.5),
    ("exp_linear", 0.5, math.sqrt(0.1 * 0.5)), ("exp_linear", 1.0, 0.5),
    ("exp", 0.0, 0.1), ("exp", 1.0, 0.5), ("exp", 0.5, 0.1 + 0.4 * (math.exp(2.5) - 1) / (math.exp(5) - 1)),
])
def test_lambda_schedules_rise_from_lambda_to_lambda_final(schedule, progress, expected):
    assert schedules.lambda_at(progress, 0.1, 0.5, schedule) == pytest.approx(expected)


def build(name, model_dir, r=4, **options):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = {"type": name, "r": r, "alpha": 2.0 * r, "dropout": 0.0, "target_modules": "all-linear", **options}
    adapter = adapters.get(name)(cfg)
    return adapter, adapter.build(AutoModelForCausalLM.from_pretrained(model_dir))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (2, 12), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


@pytest.mark.parametrize("name", ["sora", "sdora"])
def test_gradients_reach_gates_and_magnitudes(name, builtin_model_dir):
    _, model = build(name, builtin_model_dir)
    with torch.no_grad():  # B starts at 0, which would block the gradient to g and A
        for _, layer in gating.lora_layers(model):
            layer.lora_B["default"].weight.normal_(0, 0.1)
    model(**batch()).loss.backward()
    layers = gating.lora_layers(model)
    assert all(gating.gate_of(layer).grad.abs().sum() > 0 for _, layer in layers)
    if name == "sdora":
        assert all(layer.lora_magnitude_vector["default"].weight.grad.abs().sum() > 0 for _, layer in layers)


def test_gate_scales_the_update_like_b_diag_g_a(builtin_model_dir):
    adapter, model = build("sora", builtin_model_dir, r=3)
    name, layer = gating.lora_layers(model)[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
        gating.gate_of(layer).copy_(torch.tensor([0.5, 0.0, -2.0]))
    a = layer.lora_A["default"].parametrizations.weight.original
    b = layer.lora_B["default"].weight
    expected = adapter.scaling * b @ torch.diag(torch.tensor([0.5, 0.0, -2.0])) @ a
    assert torch.allclose(layer.get_delta_weight("default"), expected, atol=1e-6)


def test_effective_params_count_in_plus_out_per_live_rank(builtin_model_dir):
    """MLP projections have in ≠ out; each live rank of a module costs in + out; DoRA adds out per module."""
    for name in ("sora", "sdora"):
        adapter, model = build(name, builtin_model_dir, r=4)
        layers = dict(gating.lora_layers(model))
        up, down = layers["model.layers.0.mlp.up_proj"], layers["model.layers.0.mlp.down_proj"]
        assert up.in_features != up.out_features
        with torch.no_grad():
            for layer in layers.values():
                gating.gate_of(layer).zero_()
            gating.gate_of(up)[:3] = 1.0  # 3 live ranks in up_proj
            gating.gate_of(down)[1] = 0.5  # 1 live rank in down_proj
        expected = 3 * (up.in_features + up.out_features) + 1 * (down.in_features + down.out_features)
        if name == "sdora":
            expected += sum(layer.out_features for layer in layers.values())
        m = adapter.metrics(model)
        assert m[M.ADAPTER_EFFECTIVE_PARAMS] == expected
        assert m[M.ADAPTER_LIVE_RANKS] == 4
        assert m[M.ADAPTER_SPARSITY] == pytest.approx(1 - 4 / (4 * len(layers)))
        assert m[M.ADAPTER_TRAINABLE_PARAMS] > m[M.ADAPTER_EFFECTIVE_PARAMS]


@pytest.mark.parametrize("name", ["sora", "sdora"])
def test_export_prunes_dead_ranks_and_reloads_in_peft_with_the_same_outputs(name, builtin_model_dir, tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, model = build(name, builtin_model_dir, r=4)
    layers = dict(gating.lora_layers(model))
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.lora_B["default"].weight.normal_(0, 0.2)
            gating.gate_of(layer).copy_(torch.tensor([0.0, 1.5, 0.0, -0.7]) * (1 + i / 10))
            if name == "sdora":
                layer.lora_magnitude_vector["default"].weight.mul_(1.1)
        dead = "model.layers.1.self_attn.v_proj"
        gating.gate_of(layers[dead]).zero_()
    model.eval()
    with torch.no_grad():
        expected = model(**batch(3)).logits
    adapter.save(model, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert config["use_dora"] is (name == "sdora")
    ranks = {k.strip("^$").replace("\\", ""): v for k, v in config["rank_pattern"].items()}
    if name == "sora":
        assert dead not in config["target_modules"] and dead not in ranks  # all ranks dead: dropped
    else:
        assert ranks[dead] == 1  # kept with one zero rank: its magnitude still rescales W
    assert {r for n, r in ranks.items() if n != dead} == {2}
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), tmp_path / "export")
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch(3)).logits, expected, atol=1e-5)


def sweep_point(tmp_path, adapter_type, lam, **extra):
    cfg = trial_config(train={"max_steps": 60, "eval_every": 30, "lr": 3e-3, "seed": 0},
                       adapter={"type": adapter_type, "r": 8, "lambda": lam, **extra})
    session = LocalSession(tmp_path / f"{adapter_type}-{lam}")
    run_training(cfg, session)
    return session


def test_sparsity_grows_with_lambda_and_the_checkpoint_export_reproduces_eval_loss(tmp_path, builtin_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep.inputs import data
    from raysweep.trial import checkpointing
    from raysweep.trial.loop import evaluate

    lambdas = (0.0, 0.5, 1.0)
    runs = {lam: sweep_point(tmp_path, "sora", lam, gate_lr=0.05) for lam in lambdas}
    last = {lam: s.results[-1] for lam, s in runs.items()}
    sparsity = [last[lam][M.ADAPTER_SPARSITY] for lam in lambdas]
    effective = [last[lam][M.ADAPTER_EFFECTIVE_PARAMS] for lam in lambdas]
    assert sparsity[0] == 0 and sparsity[0] < sparsity[1] < sparsity[2], sparsity
    assert effective[0] > effective[1] > effective[2], effective
    assert sparsity[2] < 1 and last[1.0][M.EVAL_LOSS] < 0.5 * last[1.0][M.EVAL_INITIAL_LOSS]  # still learns
    # the per-layer sparsity log: step, overall, one column per adapted module, every report
    final = runs[1.0].checkpoints[-1]
    rows = checkpointing.load_layer_log(final / "sparsity.csv")
    assert [r["step"] for r in rows][-1] == 60 and len(rows) >= 2
    assert rows[-1]["overall"] == pytest.approx(sparsity[2])
    assert len(rows[-1]) == 2 + 14  # 2 layers × 7 linear modules
    # the exported (pruned, folded) adapter in the checkpoint reproduces the trial's eval loss
    cfg = trial_config(train={"max_steps": 60, "eval_every": 30, "lr": 3e-3, "seed": 0}, adapter={"type": "sora"})
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), final / "adapter")
    tok = AutoTokenizer.from_pretrained(builtin_model_dir)
    _, evals = data.load_splits(tok, cfg["data"])
    loss = evaluate(model, evals, cfg, LocalSession(tmp_path), tok.pad_token_id)[M.EVAL_LOSS]
    assert loss == pytest.approx(last[1.0][M.EVAL_LOSS], rel=1e-4)


def test_gated_trial_resumes_exactly(tmp_path, builtin_model_dir):
    cfg = trial_config(train={"max_steps": 40, "eval_every": 20, "lr": 3e-3},
                       adapter={"type": "sdora", "r": 4, "lambda": 1.0, "gate_lr": 0.05})
    full = LocalSession(tmp_path / "full")
    run_training(cfg, full)
    resumed = LocalSession(tmp_path / "b", resume_from=full.checkpoints[0])  # the step-20 checkpoint
    run_training(cfg, resumed)
    assert resumed.results[-1][M.EVAL_LOSS] == pytest.approx(full.results[-1][M.EVAL_LOSS], rel=1e-6)
    assert resumed.results[-1][M.ADAPTER_SPARSITY] == full.results[-1][M.ADAPTER_SPARSITY] > 0
    # the per-layer log continues from the checkpoint's history: same rows as the uninterrupted run
    from raysweep.trial import checkpointing

    assert checkpointing.load_layer_log(resumed.checkpoints[-1] / "sparsity.csv") == \
        checkpointing.load_layer_log(full.checkpoints[-1] / "sparsity.csv")
