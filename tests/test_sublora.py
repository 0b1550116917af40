# over 400 lines: one family's options, maths and trial-level checks share the fixtures above the trials
"""SubLoRA: θ = θ₀ + P·α over the LoRA parameters. Allocation sizes per mode, only α (and the split logits)
train, θ(0) = θ₀, the soft mask's gradient, projector memory, the trial-end bounds and bounds.json,
the per-module γ log, the peft export, exact resume, and bounds recomputed from a checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from raysweep import adapters
from raysweep.adapters.sublora import adapter as S
from raysweep.adapters.sublora import coding as B
from raysweep.adapters.sublora.options import DEFAULT_SPLIT_LR, SubloraOptions
from raysweep.experiment import metrics as M
from raysweep.trial import checkpointing
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config

N_MODULES = 14  # builtin model: 2 layers × 7 linear modules


def build(model_dir, r=4, seed=0, **options):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = {"type": "sublora", "r": r, "alpha": 2.0 * r, "dropout": 0.0, "target_modules": "all-linear", **options}
    adapter = adapters.get("sublora")(cfg)
    return adapter, adapter.build(AutoModelForCausalLM.from_pretrained(model_dir))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (2, 12), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def lora_sizes(model) -> tuple[int, int]:
    """(D_A, D_B): the LoRA parameter counts of every A and every B, from the layer shapes."""
    layers = S.lora_layers(model)
    d_a = sum(layer.lora_A["default"].weight.numel() for _, layer in layers)
    d_b = sum(layer.lora_B["default"].weight.numel() for _, layer in layers)
    return d_a, d_b


# ------------------------------------------------------------------------------------------- options


def test_importing_sublora_and_validating_a_grid_needs_no_torch(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("train: {max_steps: 5}\nadapter: {type: sublora}\n"
                    "grid: {adapter.intrinsic_dim: [100, 1000], adapter.allocation_mode: [uniform, learned]}\n")
    code = ("import sys; import raysweep.adapters.sublora.options; from raysweep import config as C; "
            f"_, _, trials = C.load({str(grid)!r}); assert len(trials) == 4, len(trials); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_allocation_ratio_is_valid_only_with_fixed_mode():
    from raysweep import config as C

    issues = C.validate_adapter_options(C.AdapterConfig(type="sublora", allocation_ratio=0.3))
    assert [i.path for i in issues] == ["adapter.allocation_ratio"]
    assert "allocation_mode: fixed" in issues[0].message
    assert not C.validate_adapter_options(C.AdapterConfig(type="sublora", allocation_mode="fixed", allocation_ratio=0.3))
    # a ratio that leaves A or B no dimension
    issues = C.validate_adapter_options(C.AdapterConfig(type="sublora", allocation_mode="fixed",
                                                        allocation_ratio=0.001, intrinsic_dim=100))
    assert issues and "d_B = 0" in issues[0].message
    issues = C.validate_adapter_options(C.AdapterConfig(type="sublora", allocation_mode="sideways", bound_levels=0))
    assert {i.path for i in issues} == {"adapter.allocation_mode", "adapter.bound_levels"}
    opts = SubloraOptions(allocation_mode="fixed", intrinsic_dim=1001)
    assert opts.ratio == 0.5 and opts.sizes() == (501, 500)
    assert SubloraOptions(allocation_mode="fixed", intrinsic_dim=1000, allocation_ratio=0.3).sizes() == (700, 300)


# ---------------------------------------------------------------------------------- structure and maths


@pytest.mark.parametrize("mode", ["uniform", "fixed", "learned"])
def test_allocation_sizes(mode, builtin_model_dir):
    extra = {"allocation_ratio": 0.3} if mode == "fixed" else {}
    adapter, model = build(builtin_model_dir, r=4, intrinsic_dim=600, allocation_mode=mode, **extra)
    state = S.subspace(model)
    d_a, d_b = lora_sizes(model)
    assert d_a == 4 * sum(layer.in_features for _, layer in S.lora_layers(model))
    assert d_b == 4 * sum(layer.out_features for _, layer in S.lora_layers(model))
    shapes = {space: (p.D, p.d) for space, p in state.projectors.items()}
    if mode == "uniform":
        assert shapes == {"joint": (d_a + d_b, 600)}
    elif mode == "fixed":
        assert shapes == {"A": (d_a, 420), "B": (d_b, 180)}  # d_B = round(0.3·600), d_A = d − d_B
    else:
        assert shapes == {"A": (d_a, 600), "B": (d_b, 600)}  # each module masks the whole α between A and B
        assert state.theta_split.shape == (N_MODULES,)
        assert adapter.LAYER_LOG == S.ALLOCATION_LOG
    if mode != "learned":
        assert adapter.LAYER_LOG is None and not hasattr(state, "theta_split")
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    expected = {"lora_sublora.alpha": 600} | ({"lora_sublora.theta_split": N_MODULES} if mode == "learned" else {})
    assert trainable == expected
    m = adapter.metrics(model)
    assert m[M.ADAPTER_TRAINABLE_PARAMS] == sum(expected.values())
    assert m[M.ADAPTER_EFFECTIVE_PARAMS] == 600 and m[M.ADAPTER_PROJECTED_PARAMS] == d_a + d_b
    assert m[M.ADAPTER_TOTAL_PARAMS] == sum(p.numel() for p in model.get_base_model().parameters()) - (d_a + d_b)
    groups = adapter.param_groups(model, {"lr": 1e-3, "weight_decay": 0.1})
    assert [g["name"] for g in groups] == (["alpha", "split"] if mode == "learned" else ["alpha"])
    if mode == "learned":
        assert groups[1]["lr"] == DEFAULT_SPLIT_LR and groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("mode", ["uniform", "fixed", "learned"])
def test_theta_at_alpha_zero_is_the_lora_init_and_the_model_is_the_base_model(mode, builtin_model_dir):
    from transformers import AutoModelForCausalLM

    adapter, model = build(builtin_model_dir, allocation_mode=mode)
    for name, (a, b) in adapter.materialize(model).items():
        layer = dict(S.lora_layers(model))[name]
        assert torch.equal(a, S.original(layer, "A")) and torch.equal(b, S.original(layer, "B"))
        assert not b.any() and a.abs().sum() > 0  # θ₀: A random, B = 0
        assert not S.original(layer, "A").requires_grad
    base = AutoModelForCausalLM.from_pretrained(builtin_model_dir)
    with torch.no_grad():
        assert torch.allclose(model(**batch()).logits, base(**batch()).logits, atol=1e-6)


@pytest.mark.parametrize("kind", ["kron", "kron_qr", "dense", "rdkronqr"])
def test_rows_of_the_projection_equal_the_full_projection(kind):
    from raysweep.adapters.sublora.projectors import make_projector
    from raysweep.adapters.sublora.subspace import project_rows

    proj = make_projector(kind, 5000, 300, seed=3)
    alpha = torch.randn(300, dtype=torch.float32, requires_grad=True)
    full = proj(alpha)
    for lo, hi in [(0, 1), (0, 5000), (17, 900), (70, 71), (4321, 5000), (1234, 3210)]:
        rows = project_rows(proj, alpha, lo, hi)
        assert torch.allclose(rows, full[lo:hi], atol=1e-6), (lo, hi)
        g = torch.randn(hi - lo)
        (got,) = torch.autograd.grad(rows, alpha, g)
        (want,) = torch.autograd.grad(full[lo:hi], alpha, g, retain_graph=True)
        assert torch.allclose(got, want, atol=1e-5), (lo, hi)


def test_soft_mask_is_differentiable_and_gamma_receives_gradients(builtin_model_dir):
    adapter, model = build(builtin_model_dir, intrinsic_dim=200, allocation_mode="learned", mask_temperature=10)
    state = S.subspace(model)
    with torch.no_grad():
        state.theta_split.copy_(torch.linspace(-2, 2, N_MODULES))
    # m(i) = σ(C·(γ − (i + ½)/d)), and its derivative in θ_split is C·σ'(·)·γ(1 − γ)
    u = (torch.arange(200) + 0.5) / 200
    gamma = torch.sigmoid(state.theta_split.detach())
    for index in (0, 6, 13):
        m = state.mask(index)
        want = torch.sigmoid(10 * (gamma[index] - u))
        assert torch.allclose(m, want, atol=1e-6)
        (grad,) = torch.autograd.grad(m.sum(), state.theta_split)
        s = want * (1 - want)
        assert torch.allclose(grad[index], (10 * s * gamma[index] * (1 - gamma[index])).sum(), rtol=1e-4)
        assert grad[torch.arange(N_MODULES) != index].abs().sum() == 0
    # γ is the share of α given to A: Σ m / d = (1/C)·ln((1 + e^{Cγ}) / (1 + e^{C(γ−1)})), ½ at γ = ½
    with torch.no_grad():
        state.theta_split.zero_()
    assert state.mask(0).mean().item() == pytest.approx(0.5, abs=1e-6)
    # through the model: once α ≠ 0, the loss reaches every split logit and α
    with torch.no_grad():
        state.alpha.normal_(0, 0.05)
    model(**batch()).loss.backward()
    assert state.alpha.grad.abs().sum() > 0
    assert (state.theta_split.grad.abs() > 0).all(), state.theta_split.grad


def test_every_forward_is_a_pure_function_of_alpha(builtin_model_dir):
    """No cached projection: gradient accumulation, no_grad evaluation after a change of α, and non-reentrant
    gradient checkpointing (which re-runs the forward in backward) all see the current α."""
    grads = []
    for checkpointing_on in (False, True):
        adapter, model = build(builtin_model_dir, allocation_mode="learned")
        state = S.subspace(model)
        with torch.no_grad():
            state.alpha.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            state.theta_split.normal_(0, 1, generator=torch.Generator().manual_seed(2))
        if checkpointing_on:
            model.enable_input_require_grads()
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(**batch()).loss.backward()
        once = (state.alpha.grad.clone(), state.theta_split.grad.clone())
        model(**batch()).loss.backward()  # a second micro-batch before any step: gradients add up
        assert torch.allclose(state.alpha.grad, 2 * once[0], atol=1e-6)
        assert torch.allclose(state.theta_split.grad, 2 * once[1], atol=1e-6)
        grads.append(once)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    with torch.no_grad():
        before = model(**batch()).logits
        state.alpha.add_(0.5)
        assert not torch.allclose(model(**batch()).logits, before, atol=1e-3)


def test_kron_qr_needs_d_below_D(builtin_model_dir):
    with pytest.raises(ValueError, match="adapter.projector 'kron_qr'.*adapter.intrinsic_dim"):
        build(builtin_model_dir, r=4, intrinsic_dim=50_000, projector="kron_qr")
    build(builtin_model_dir, r=4, intrinsic_dim=1000, projector="kron_qr")


def test_projector_memory_grows_with_D_not_with_d_times_D(builtin_model_dir):
    """Kronecker factors hold ≈ 2·sqrt(D·d) numbers: 50× d costs ≈ sqrt(50)× memory, never d·D."""
    sizes = {}
    for r, d in [(4, 1000), (4, 50_000), (16, 1000)]:
        adapter, model = build(builtin_model_dir, r=r, intrinsic_dim=d)
        m = adapter.metrics(model)
        sizes[(r, d)] = (m[M.ADAPTER_PROJECTOR_BYTES], m[M.ADAPTER_PROJECTED_PARAMS])
        dense_bytes = 4 * d * m[M.ADAPTER_PROJECTED_PARAMS]
        assert m[M.ADAPTER_PROJECTOR_BYTES] < dense_bytes / 100
    (b1, D4), (b50, _), (b16, D16) = sizes[(4, 1000)], sizes[(4, 50_000)], sizes[(16, 1000)]
    assert D16 == 4 * D4
    assert b50 / b1 < 1.2 * math.sqrt(50)  # far from the 50× of a d×D matrix
    assert 0.8 * math.sqrt(4) < b16 / b1 < 1.2 * math.sqrt(4)  # grows with D (as sqrt)
    adapter, model = build(builtin_model_dir, r=4, intrinsic_dim=1000, projector="dense")
    assert adapter.metrics(model)[M.ADAPTER_PROJECTOR_BYTES] == 0  # lazy: rows regenerated from the seed


def test_export_is_a_plain_peft_lora_with_the_same_logits(builtin_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, model = build(builtin_model_dir, allocation_mode="learned")
    state = S.subspace(model)
    with torch.no_grad():
        state.alpha.normal_(0, 0.3)
        state.theta_split.normal_(0, 1)
    model.eval()
    with torch.no_grad():
        expected = model(**batch(3)).logits
    best = adapter.state_dict(model)
    adapter.save(model, tmp_path / "export")
    info = json.loads((tmp_path / "export" / S.EXPORT_INFO).read_text())
    assert info["from"] == "sublora" and info["intrinsic_dim"] == 1000
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), tmp_path / "export")
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch(3)).logits, expected, atol=1e-5)
        assert torch.allclose(reloaded.merge_and_unload()(**batch(3)).logits, expected, atol=1e-4)
    # saving an earlier state (the best one) exports that state, not the model's current α
    with torch.no_grad():
        state.alpha.zero_()
    adapter.save(model, tmp_path / "best", state=best)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), tmp_path / "best")
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch(3)).logits, expected, atol=1e-5)


def test_state_restores_alpha_split_and_theta0_exactly(builtin_model_dir):
    adapter, model = build(builtin_model_dir, seed=0, allocation_mode="learned")
    state = S.subspace(model)
    with torch.no_grad():
        state.alpha.normal_(0, 0.3)
        state.theta_split.normal_(0, 1)
    saved = adapter.state_dict(model)
    assert set(saved) == {"alpha", "theta_split"} | {f"{n}.{s}0" for n, _ in S.lora_layers(model) for s in "AB"}
    other, fresh = build(builtin_model_dir, seed=1, allocation_mode="learned")  # another θ₀ draw
    assert not torch.equal(other.state_dict(fresh)[f"{S.lora_layers(fresh)[0][0]}.A0"],
                           saved[f"{S.lora_layers(model)[0][0]}.A0"])
    other.load_state_dict(fresh, saved)
    assert all(torch.equal(v, saved[k]) for k, v in other.state_dict(fresh).items())
    with torch.no_grad():
        assert torch.equal(fresh(**batch()).logits, model(**batch()).logits)
    wrong, small = build(builtin_model_dir, intrinsic_dim=10, allocation_mode="learned")
    with pytest.raises(ValueError, match="intrinsic_dim 10"):
        wrong.load_state_dict(small, saved)


# ------------------------------------------------------------------------------------------- trials

SUBLORA_TRAIN = {"max_steps": 20, "eval_every": 10, "lr": 0.03}


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory, builtin_model_dir):
    cfg = trial_config(train=SUBLORA_TRAIN, data={"max_train_examples": 600},
                       adapter={"type": "sublora", "r": 8, "intrinsic_dim": 500})
    session = LocalSession(tmp_path_factory.mktemp("uniform"))
    run_training(cfg, session)
    return cfg, session


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, builtin_model_dir):
    cfg = trial_config(train=SUBLORA_TRAIN, data={"max_train_examples": 300},
                       adapter={"type": "sublora", "r": 4, "intrinsic_dim": 300, "allocation_mode": "learned",
                                "split_lr": 0.05, "bound_quantizer": "kmeans", "bound_levels": 7})
    session = LocalSession(tmp_path_factory.mktemp("learned"))
    run_training(cfg, session)
    return cfg, session


def check_report(report: dict, metrics: dict, vocab: int) -> None:
    """bounds.json is self-consistent and agrees with the reported metrics."""
    msg = report["message"]
    assert msg["total_bits"] == msg["alpha_bits"] + msg["split_bits"]
    assert msg["alpha_bits"] == msg["symbol_bits"] + msg["codebook_bits"] + msg["model_bits"] + msg["header_bits"]
    assert msg["kl_nats"] == pytest.approx(msg["total_bits"] * math.log(2), rel=1e-12)
    assert metrics[M.BOUND_KL_NATS] == msg["kl_nats"] and metrics[M.BOUND_COMPRESSED_BITS] == msg["total_bits"]
    assert metrics[M.BOUND_QUANT_LEVELS] == report["quantization"]["levels_used"] <= report["quantization"]["levels_requested"]
    assert report["hypothesis"]["vocab_size"] == vocab
    for level, r in report["levels"].items():
        best = r["bpd"]["bound"]
        assert best["value"] == min(row["bound"]["value"] for row in r["bpd"]["rows"])
        assert len(r["bpd"]["rows"]) == len(report["alphas"])
        assert r["bpd"]["grid_nats"] == pytest.approx(math.log(len(report["alphas"])))
        for row in r["bpd"]["rows"]:  # the same extra nats for every α
            b = row["bound"]
            assert b["extra_nats"] == pytest.approx(r["bpd"]["grid_nats"])
            assert b["kl_nats"] == msg["kl_nats"] and b["delta"] == report["delta"]
            assert b["value"] == pytest.approx(b["empirical"] + b["complexity"] + b["sampling"])
            assert b["value"] >= b["empirical"]
            assert b["vacuous"] == (b["value"] > math.log2(vocab))
            assert b["loss_range"] == pytest.approx(B.smoothed_bpd_range(row["alpha"], vocab))
            m, delta_pac = b["m"], b["delta_pac"]
            assert b["complexity"] == pytest.approx(
                b["loss_range"] * math.sqrt((b["kl_nats"] + math.log(1 / delta_pac) + b["extra_nats"]) / (2 * m)))
            assert (b["n"] is not None) == r["subsampled"] and (b["sampling"] > 0) == r["subsampled"]
        assert metrics[M.bound_key(level, "bpd")] == best["value"]
        assert metrics[M.bound_key(level, "alpha_smoothing")] == r["bpd"]["alpha"]
        assert metrics[M.bound_key(level, "vacuous_bpd")] == best["vacuous"]
        assert metrics[M.bound_key(level, "bpd_empirical")] == r["bpd_empirical"]
        assert metrics[M.bound_key(level, "units")] == r["units"] and metrics[M.bound_key(level, "sampled")] == r["sampled"]
        # quantization changes the empirical bits per token only a little
        assert abs(r["bpd_empirical"] - r["bpd_unquantized"]) < 0.1 * r["bpd_unquantized"]
        errors = {}
        for k, b in r["top_k"].items():
            assert b["value"] >= b["empirical"] and b["loss_range"] == 1.0
            assert b["vacuous"] == (b["value"] > 1.0)
            assert metrics[M.bound_topk_key(level, int(k))] == b["value"]
            assert metrics[M.bound_topk_key(level, int(k), empirical=True)] == b["empirical"]
            errors[int(k)] = b["empirical"]
        assert errors[5] <= errors[1]


def test_trial_lowers_eval_loss_and_reports_bounds(uniform_run):
    cfg, session = uniform_run
    first, last = session.results[0], session.results[-1]
    assert last[M.EVAL_LOSS] < 0.9 * first[M.EVAL_LOSS]
    bound_keys = {k for k in M.ALL_METRICS if k.startswith("bound/")}
    assert bound_keys <= set(last), sorted(bound_keys - set(last))
    assert not any(k.startswith("bound/") for r in session.results[:-1] for k in r)  # only at the end
    final = session.checkpoints[-1]
    report = json.loads((final / S.BOUNDS_REPORT).read_text())
    metrics = {k: v for k, v in last.items() if k.startswith("bound/")}
    assert report["metrics"] == pytest.approx(metrics)
    check_report(report, last, vocab=307)
    # builtin chat task: a document is a training example, so both levels see the same 600 units
    for level in ("document", "sequence"):
        assert report["levels"][level]["units"] == 600 and not report["levels"][level]["subsampled"]
    assert report["message"]["split_bits"] == 0
    # the message describes exactly the saved α (uniform quantizer, 11 levels)
    alpha = checkpointing.load_adapter_state(final)["alpha"].double().numpy()
    q = B.quantize(alpha, 11, "uniform")
    assert report["message"]["total_bits"] == B.message_length(q).total_bits
    assert report["quantization"]["max_abs_error"] == pytest.approx(np.abs(alpha - B.dequantize(q)).max())
    assert last[M.ADAPTER_EFFECTIVE_PARAMS] == 500 and last[M.ADAPTER_TRAINABLE_PARAMS] == 500
    assert not (final / S.ALLOCATION_LOG).exists()


def test_bounds_for_checkpoint_reproduces_the_trial_end_numbers(uniform_run):
    from raysweep.offline.bounds import bounds_for_checkpoint

    _, session = uniform_run
    final = session.checkpoints[-1]
    saved = json.loads((final / S.BOUNDS_REPORT).read_text())
    again = bounds_for_checkpoint(final)
    assert again["checkpoint"] == str(final)
    for key, value in saved["metrics"].items():
        if key != M.BOUND_SECONDS:
            assert again["metrics"][key] == pytest.approx(value, rel=1e-5), key
    assert again["message"] == saved["message"]
    coarse = bounds_for_checkpoint(final, bound_levels=3, bound_sample=100)
    assert coarse["metrics"][M.BOUND_QUANT_LEVELS] <= 3
    assert coarse["message"]["total_bits"] < saved["message"]["total_bits"]
    assert coarse["levels"]["document"]["sampled"] == 100 and coarse["levels"]["document"]["subsampled"]
    check_report(coarse, coarse["metrics"], vocab=307)
    with pytest.raises(ValueError, match="unknown bound option"):
        bounds_for_checkpoint(final, bound_level=3)


def test_learned_trial_logs_gamma_per_module_and_saves_it(learned_run):
    cfg, session = learned_run
    final = session.checkpoints[-1]
    rows = checkpointing.load_layer_log(final / S.ALLOCATION_LOG)
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert len(rows[-1]) == 2 + N_MODULES  # step, overall, one γ per adapted module
    state = checkpointing.load_adapter_state(final)
    gamma = torch.sigmoid(state["theta_split"]).tolist()
    modules = [k for k in rows[-1] if k not in ("step", "overall")]
    assert [rows[-1][k] for k in modules] == pytest.approx(gamma, abs=1e-6)
    assert rows[0]["overall"] == 0.5 and rows[-1]["overall"] == pytest.approx(np.mean(gamma), abs=1e-6)
    assert any(abs(g - 0.5) > 1e-3 for g in gamma)  # the split moved
    last = session.results[-1]
    assert last[M.ADAPTER_GAMMA_MEAN] == pytest.approx(np.mean(gamma), abs=1e-6)
    assert last[M.ADAPTER_TRAINABLE_PARAMS] == 300 + N_MODULES and last[M.ADAPTER_EFFECTIVE_PARAMS] == 300
    report = json.loads((final / S.BOUNDS_REPORT).read_text())
    assert report["gamma"] == pytest.approx(dict(zip(modules, gamma, strict=True)), abs=1e-6)
    assert report["message"]["split_bits"] == 32 * N_MODULES  # the split logits are part of the message
    assert report["quantization"]["method"] == "kmeans" and report["quantization"]["levels_used"] <= 7
    check_report(report, last, vocab=307)


def test_learned_trial_resumes_exactly(learned_run, tmp_path):
    cfg, full = learned_run
    resumed = LocalSession(tmp_path / "resumed", resume_from=full.checkpoints[0])  # the step-10 checkpoint
    run_training(cfg, resumed)
    a = checkpointing.load_adapter_state(full.checkpoints[-1])
    b = checkpointing.load_adapter_state(resumed.checkpoints[-1])
    assert set(a) == set(b)
    for key in a:  # α, θ_split and θ₀
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), key
    assert resumed.results[-1][M.EVAL_LOSS] == pytest.approx(full.results[-1][M.EVAL_LOSS], rel=1e-5)
    assert resumed.results[-1][M.BOUND_COMPRESSED_BITS] == pytest.approx(full.results[-1][M.BOUND_COMPRESSED_BITS],
                                                                          abs=8)
    rows_full = checkpointing.load_layer_log(full.checkpoints[-1] / S.ALLOCATION_LOG)
    rows_resumed = checkpointing.load_layer_log(resumed.checkpoints[-1] / S.ALLOCATION_LOG)
    assert len(rows_resumed) == len(rows_full)
    for got, want in zip(rows_resumed, rows_full, strict=True):  # the γ history continues from the checkpoint
        assert got == pytest.approx(want, abs=1e-6)


def test_token_task_has_document_and_sequence_units_and_subsampled_bounds(tmp_path, builtin_model_dir):
    from raysweep.inputs import data
    from raysweep.inputs.builtin.tokens import N_TRAIN_DOCS

    cfg = trial_config(train={"max_steps": 10, "eval_every": 10, "lr": 0.03},
                       data={"task": "builtin_tokens", "max_seq_len": 64},
                       adapter={"type": "sublora", "r": 4, "intrinsic_dim": 200, "allocation_mode": "fixed",
                                "allocation_ratio": 0.7, "bound_sample": 40, "bound_top_k": [1, 5, 20]})
    session = LocalSession(tmp_path)
    run_training(cfg, session)
    report = json.loads((session.checkpoints[-1] / S.BOUNDS_REPORT).read_text())
    docs = data.load_token_documents(cfg["data"], "train")
    n_blocks = -(-sum(len(x) for x in docs) // 64)
    doc, seq = report["levels"]["document"], report["levels"]["sequence"]
    assert doc["units"] == len(docs) == N_TRAIN_DOCS and seq["units"] == n_blocks
    assert doc["sampled"] == seq["sampled"] == 40 and doc["subsampled"] and seq["subsampled"]
    # δ split proportionally by default: r = n/(n + m) to the PAC term, 1 − r to the sampling term
    r = 40 / (40 + doc["units"])
    assert doc["bpd"]["bound"]["sampling"] > 0 and doc["bpd"]["bound"]["delta_sample"] == pytest.approx(0.05 * (1 - r))
    assert doc["bpd"]["bound"]["delta_pac"] == pytest.approx(0.05 * r)
    assert set(doc["top_k"]) == {"1", "5", "20"}
    check_report(report, session.results[-1], vocab=307)
    assert session.results[-1][M.bound_topk_key("sequence", 20)] == seq["top_k"]["20"]["value"]


def test_document_windows_predict_every_token_after_the_first_once():
    from raysweep.adapters.sublora.bounds import _windows

    doc = np.arange(100, 123)  # 23 tokens
    for max_len in (2, 4, 7, 23, 64):
        windows = _windows(doc, max_len)
        assert all(len(w.input_ids) <= max(2, max_len) for w in windows)
        predicted = [t for w in windows for t in w.input_ids[1:]]
        assert predicted == list(range(101, 123)), max_len


def test_bounds_can_be_turned_off(tmp_path, builtin_model_dir):
    cfg = trial_config(train={"max_steps": 2, "eval_every": 2, "lr": 0.03}, data={"max_train_examples": 64},
                       adapter={"type": "sublora", "r": 4, "intrinsic_dim": 50, "bounds": False})
    session = LocalSession(tmp_path)
    run_training(cfg, session)
    assert not any(k.startswith("bound/") for k in session.results[-1])
    assert not (session.checkpoints[-1] / S.BOUNDS_REPORT).exists()
