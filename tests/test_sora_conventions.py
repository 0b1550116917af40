"""SoRA / SDoRA reference conventions: each formula against the reference's on hand inputs — ξ = λ × the gates'
lr before the scheduler step, weight decay 0 on gates, the L1 term (sum or mean, its own weight or λ), gate
init, gate lr, the λ schedules (reference names: linear, log_linear, exp_linear) and what each
`adapter.convention` sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysweep import adapters
from raysweep.adapters.sora import gating, schedules
from raysweep.adapters.sora.options import GateOptions
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config

# ------------------------------------------------------------------------------------- schedules


def reference_lambdas(a: float, b: float, n: int, kind: str) -> list[float]:
    """The SoRA reference's lambda list (its optimizer's _build_lambda_list), written out with numpy."""
    if kind == "linear":
        return list(np.linspace(a, b, n))
    if kind == "log_linear":
        return list(np.log(np.linspace(np.exp(a), np.exp(b), n)))
    if kind == "exp_linear":
        return list(np.exp(np.linspace(np.log(a), np.log(b), n)))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["linear", "log_linear", "exp_linear"])
@pytest.mark.parametrize(("a", "b", "n"), [(1e-4, 7e-4, 7), (0.1, 2.0, 5), (0.5, 0.5, 3), (1e-3, 10.0, 10)])
def test_stage_lambdas_are_the_reference_lists(kind, a, b, n):
    assert schedules.stage_lambdas(a, b, n, kind) == pytest.approx(reference_lambdas(a, b, n, kind), rel=1e-12)


def test_schedules_on_hand_values():
    # halfway from 0.1 to 0.5
    assert schedules.lambda_at(0.5, 0.1, 0.5, "linear") == pytest.approx(0.3)
    assert schedules.lambda_at(0.5, 0.1, 0.5, "log_linear") == pytest.approx(math.log((math.exp(0.1) + math.exp(0.5)) / 2))
    assert schedules.lambda_at(0.5, 0.1, 0.5, "exp_linear") == pytest.approx(math.sqrt(0.1 * 0.5))
    # the reference's staged script: lambda2 0 -> max_lambda 7e-4 in lambda_num 7 values, linear: 6 steps of 7e-4/6
    assert schedules.stage_lambdas(0.0, 7e-4, 7, "linear") == pytest.approx([k * 7e-4 / 6 for k in range(7)])
    # log_linear of 0 is defined (e^0 = 1); exp_linear is not
    assert schedules.lambda_at(1.0, 0.0, 2.0, "log_linear") == pytest.approx(2.0)


def test_log_linear_is_the_references_and_the_old_geometric_one_is_exp_linear():
    old_geometric = math.exp((math.log(0.1) + math.log(1.0)) / 2)  # raysweep's log_linear before
    assert schedules.lambda_at(0.5, 0.1, 1.0, "exp_linear") == pytest.approx(old_geometric)
    assert schedules.lambda_at(0.5, 0.1, 1.0, "log_linear") == pytest.approx(0.648007)  # ln((e^0.1 + e)/2), not 0.3162
    with pytest.raises(ValueError, match="exp_linear.*needs adapter.lambda > 0"):
        GateOptions(**{"lambda": 0.0, "lambda_schedule": "exp_linear", "lambda_final": 1.0})
    assert GateOptions(**{"lambda": 0.0, "lambda_schedule": "log_linear", "lambda_final": 1.0})


# ------------------------------------------------------------------------------------ conventions


def test_raysweep_convention_keeps_todays_defaults():
    o = GateOptions()
    assert (o.convention, o.lambda_, o.threshold, o.gate_lr, o.gate_lr_scale, o.gate_init, o.gate_l1,
            o.gate_l1_reduction, o.lambda_schedule, o.lambda_stages) == \
        ("raysweep", 0.1, "lr_scaled", None, 1.0, "ones", 0.0, "sum", "constant", None)


def test_sora_reference_convention():
    o = GateOptions(**{"convention": "sora_reference", "lambda": 3e-4})
    assert (o.threshold, o.gate_init, o.gate_l1, o.gate_l1_reduction, o.gate_lr_scale) == \
        ("absolute", "randn", 1e-3, "mean", 1.0)
    assert o.gate_l1_weight() == 1e-3  # SoRA's L1 weight (sparse_lambda) is its own, not ξ
    with pytest.raises(ValueError, match="sora_reference.*set adapter.lambda"):
        GateOptions(convention="sora_reference")  # λ means ξ itself here: no default of another unit
    # what the grid sets wins: the reference's multiply-lr optimizer is sora_reference + lr_scaled
    assert GateOptions(**{"convention": "sora_reference", "lambda": 0.1, "threshold": "lr_scaled",
                          "gate_l1": 10.0}).threshold == "lr_scaled"


def test_sdora_reference_convention():
    o = GateOptions(**{"convention": "sdora_reference", "lambda": 0.3})
    assert (o.threshold, o.gate_init, o.gate_l1, o.gate_l1_reduction, o.gate_lr_scale) == \
        ("lr_scaled", "ones", "lambda", "mean", 10.0)
    assert o.gate_l1_weight() == 0.3  # the same λ as the threshold's
    assert GateOptions(convention="sdora_reference", gate_lr=0.02).gate_lr == 0.02  # an explicit gate lr wins
    with pytest.raises(ValueError, match="gate_lr and adapter.gate_lr_scale are both set"):
        GateOptions(gate_lr=0.02, gate_lr_scale=10)


@pytest.mark.parametrize(("options", "fragment"), [
    ({"gate_l1": -1}, "gate_l1 must be a number ≥ 0 or 'lambda'"),
    ({"gate_l1": "lambdas"}, "gate_l1 must be a number ≥ 0 or 'lambda'"),
    ({"convention": "sora"}, "'raysweep', 'sora_reference' or 'sdora_reference'"),
    ({"lambda_schedule": "log"}, "exp_linear"),
])
def test_bad_gate_options_name_the_fix(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        GateOptions(**options)


def test_config_reports_convention_problems_at_the_adapter_key(tmp_path):
    from raysweep import config as C

    path = tmp_path / "grid.yaml"
    path.write_text("train: {max_steps: 10}\nadapter: {type: sora, convention: sora_reference}\n")
    with pytest.raises(C.ConfigError) as info:
        C.load(path, [])
    assert any("adapter" in str(i) and "set adapter.lambda" in str(i) for i in info.value.issues)


# ------------------------------------------------------------------------- gates in a built model


def build(name, model_dir, r=2, **options):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = {"type": name, "r": r, "alpha": 2.0 * r, "dropout": 0.0, "target_modules": "all-linear", **options}
    adapter = adapters.get(name)(cfg)
    return adapter, adapter.build(AutoModelForCausalLM.from_pretrained(model_dir))


def set_gates(model, values):
    with torch.no_grad():
        for _, layer in gating.lora_layers(model):
            gating.gate_of(layer).copy_(torch.tensor(values))


def test_l1_term_sum_and_mean_over_all_gate_entries():
    g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0, -0.5, 3.0])
    # Σ|g| = 3 + 4 = 7 over 6 entries; the references divide by the number of entries of all gates together
    assert gating.l1_term([g1, g2], 0.3, "sum").item() == pytest.approx(0.3 * 7)
    assert gating.l1_term([g1, g2], 0.3, "mean").item() == pytest.approx(0.3 * 7 / 6)  # not 0.3·(1.5 + 1.0)/2


@pytest.mark.parametrize(("options", "expected"), [
    ({}, None),  # today's default: no L1 term
    ({"gate_l1": 0.01}, 0.01 * 28.0),  # sum: 14 modules × (0.5 + 1.5)
    ({"gate_l1": 0.01, "gate_l1_reduction": "mean"}, 0.01 * 1.0),  # 28 / 28 entries
    ({"convention": "sdora_reference", "lambda": 0.3}, 0.3 * 1.0),  # SDoRA: the same λ, mean
    ({"convention": "sora_reference", "lambda": 3e-4, "gate_l1": 10.0}, 10.0 * 1.0),  # SoRA: sparse_lambda, mean
])
def test_loss_penalty_value(builtin_model_dir, options, expected):
    adapter, model = build("sora", builtin_model_dir, **options)
    set_gates(model, [0.5, -1.5])
    penalty = adapter.loss_penalty(model)
    assert (penalty is None) if expected is None else penalty.item() == pytest.approx(expected)


def test_gate_init_ones_or_randn(builtin_model_dir):
    _, ones = build("sora", builtin_model_dir)
    assert all(torch.equal(g, torch.ones(2)) for g in gating.gates(ones))
    torch.manual_seed(5)
    gate = gating.Gate(6, torch.float32, torch.device("cpu"), "randn").gate
    torch.manual_seed(5)
    assert torch.equal(gate, torch.randn(6))  # standard normal, from the global (train.seed) generator
    _, a = build("sdora", builtin_model_dir, gate_init="randn")
    _, b = build("sdora", builtin_model_dir, gate_init="randn")
    assert all(torch.equal(x, y) for x, y in zip(gating.gates(a), gating.gates(b), strict=True))
    assert not any(torch.equal(g, torch.ones(2)) for g in gating.gates(a))


@pytest.mark.parametrize(("options", "gate_lr"), [
    ({}, 1e-3), ({"gate_lr": 0.05}, 0.05), ({"gate_lr_scale": 10}, 1e-2),
    ({"convention": "sdora_reference"}, 1e-2), ({"convention": "sdora_reference", "gate_lr": 0.05}, 0.05),
])
def test_gate_lr_and_no_weight_decay_on_gates(builtin_model_dir, options, gate_lr):
    adapter, model = build("sora", builtin_model_dir, **options)
    groups = adapter.param_groups(model, {"lr": 1e-3, "weight_decay": 0.1})
    gates = next(g for g in groups if g.get("name") == "gates")
    rest = next(g for g in groups if g.get("name") != "gates")
    assert (gates["lr"], gates["weight_decay"]) == (pytest.approx(gate_lr), 0.0)
    assert (rest["lr"], rest["weight_decay"]) == (1e-3, 0.1)
    # one AdamW step with zero gradients: decay shrinks the other weights by lr·wd, the gates not at all
    optimizer = torch.optim.AdamW(groups)
    a = next(p for n, p in model.named_parameters() if "lora_A" in n and p.requires_grad)
    before_a, before_g = a.detach().clone(), [g.detach().clone() for g in gating.gates(model)]
    for p in (p for g in groups for p in g["params"]):
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(a, before_a * (1 - 1e-3 * 0.1))
    assert all(torch.equal(g, b) for g, b in zip(gating.gates(model), before_g, strict=True))


# ------------------------------------------------------------------- ξ in the training loop's order


def recorded_thresholds(tmp_path, monkeypatch, **adapter_options) -> list[float]:
    """ξ of every step of a 4-step trial (linear schedule, 2 warmup steps)."""
    from raysweep.adapters.sora.adapter import SoraAdapter

    seen: list[float] = []
    original = SoraAdapter.threshold

    def spy(self, optimizer, progress):
        seen.append(original(self, optimizer, progress))
        return seen[-1]

    monkeypatch.setattr(SoraAdapter, "threshold", spy)
    cfg = trial_config(train={"max_steps": 4, "eval_every": 4, "lr": 1e-3, "schedule": "linear", "warmup_steps": 2},
                       adapter={"type": "sora", "r": 2, **adapter_options})
    run_training(cfg, LocalSession(tmp_path))
    return seen


def test_xi_is_lambda_times_the_gates_lr_before_the_scheduler_step(tmp_path, monkeypatch):
    # the lr step k used: linear warmup over 2 steps then linear decay to 0 at step 4: 0, 1/2, 1, 1/2 (× gate_lr);
    # the lr after scheduler.step() would give 1/2, 1, 1/2, 0
    seen = recorded_thresholds(tmp_path, monkeypatch, **{"lambda": 0.5, "gate_lr": 0.05})
    assert seen == pytest.approx([0.5 * 0.05 * f for f in (0.0, 0.5, 1.0, 0.5)])


def test_absolute_xi_ignores_the_lr(tmp_path, monkeypatch):
    seen = recorded_thresholds(tmp_path, monkeypatch, **{"convention": "sora_reference", "lambda": 3e-4})
    assert seen == [3e-4] * 4


# ------------------------------------------------------------------ the staged schedule (Algorithm 1)


def test_stage_plan_lays_the_reference_lambdas_over_the_steps(builtin_model_dir):
    adapter, _ = build("sora", builtin_model_dir, **{
        "convention": "sora_reference", "lambda": 0.0, "lambda_schedule": "linear", "lambda_final": 3e-4,
        "lambda_stages": 4, "stage_steps": 3})
    assert adapter.stage_ends(10) == [10, 13, 16, 19]
    per_step = [adapter.lambda_now((k + 1) / 19) for k in range(19)]
    assert per_step == pytest.approx([0.0] * 10 + [1e-4] * 3 + [2e-4] * 3 + [3e-4] * 3)
    assert [adapter.stage((k + 1) / 19) for k in range(19)] == [0] * 10 + [1] * 3 + [2] * 3 + [3] * 3
    unstaged, _ = build("sora", builtin_model_dir)
    assert unstaged.stage_ends(10) == [10]


@pytest.mark.parametrize(("options", "fragment"), [
    ({"lambda_stages": 3}, "lambda_stages and adapter.stage_steps go together"),
    ({"lambda_stages": 3, "stage_steps": 2, "threshold": "absolute"}, "set adapter.lambda_schedule"),
    ({"lambda_stages": 3, "stage_steps": 2, "lambda_schedule": "linear", "lambda_final": 1.0}, "threshold: absolute"),
    ({"lambda_stages": 1, "stage_steps": 2}, "greater than or equal to 2"),
])
def test_bad_stage_options_name_the_fix(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        GateOptions(**options)


def test_staged_trial_reports_every_stage_at_the_main_runs_final_lr(tmp_path, monkeypatch):
    """6 main steps (linear decay to lr 0), then 2 stages of 2 steps at λ 0.1, 0.2: an eval ends each stage,
    the lr stays 0, so each stage only shrinks the gates: by 2 × 0.1, then 2 × 0.2."""
    from raysweep.adapters.sora.adapter import SoraAdapter
    from raysweep.adapters.sora.options import LAMBDA_METRIC, STAGE_METRIC
    from raysweep.experiment import metrics as M

    steps: list[tuple[float, list[torch.Tensor]]] = []
    original = SoraAdapter.after_optimizer_step

    def spy(self, model, optimizer, progress):
        xi = self.threshold(optimizer, progress)
        original(self, model, optimizer, progress)
        steps.append((xi, [g.detach().clone() for g in gating.gates(model)]))

    monkeypatch.setattr(SoraAdapter, "after_optimizer_step", spy)
    cfg = trial_config(train={"max_steps": 6, "eval_every": 100, "lr": 3e-3, "schedule": "linear"},
                       adapter={"type": "sora", "r": 2, "convention": "sora_reference", "lambda": 0.0,
                                "lambda_schedule": "linear", "lambda_final": 0.2, "lambda_stages": 3, "stage_steps": 2})
    session = LocalSession(tmp_path)
    run_training(cfg, session)
    assert [xi for xi, _ in steps] == pytest.approx([0.0] * 6 + [0.1] * 2 + [0.2] * 2)
    evals = [r for r in session.results if r.get(M.EVAL_STEP) == r[M.TRAIN_STEP] and r[M.TRAIN_STEP] > 0]
    assert [(r[M.TRAIN_STEP], r[STAGE_METRIC]) for r in evals] == [(6, 0), (8, 1), (10, 2)]
    assert [r[LAMBDA_METRIC] for r in evals] == pytest.approx([0.0, 0.1, 0.2])
    assert [r[M.TRAIN_LR] for r in evals[1:]] == [0.0, 0.0]
    sparsity = [r[M.ADAPTER_SPARSITY] for r in evals]
    assert sparsity == sorted(sparsity) and sparsity[-1] > sparsity[0]
    for main, end in zip(steps[5][1], steps[-1][1], strict=True):  # lr 0: a pure shrink by 0.2 + 0.4
        expected = main.clone()
        gating.soft_threshold_(expected, 0.6)
        assert torch.allclose(end, expected, atol=1e-7)
