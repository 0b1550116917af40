"""The SubLoRA reference code's conventions as options beside raysweep's, each against its formula on hand
inputs: the δ split of the sub-sampled bound (the reference's formula to ≤ 1e-12), symmetric quantizer bins
and a 16-bit codebook, sliding document windows, the fork's learned allocation (per-block logits, B share,
raw-index mask, C = 5, constant split lr) and the `rdkronqr` projector; then one trial with all of them."""

from __future__ import annotations

import json
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

from raysweep.adapters.sublora import allocation as A
from raysweep.adapters.sublora import coding as B
from raysweep.adapters.sublora import subspace as S
from raysweep.adapters.sublora.bounds import _sliding_windows, _windows, window_stride
from raysweep.adapters.sublora.options import SubloraOptions
from raysweep.adapters.sublora.projectors import RdKronQRProjector, make_projector
from raysweep.experiment.layout import BOUNDS_REPORT
from raysweep.inputs import data
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config
from tests.test_sublora import build, check_report

# ---------------------------------------------------------------- δ split


def reference_subsampling_bound(train_error, div, data_size, sample_size, loss_range, eps):
    """The SubLoRA reference's sub-sampling bound, transcribed from its formula: with r = n/(n + m),
    err + Δ·(sqrt((div − ln(r·ε))/(2m)) + sqrt(−ln((1 − r)·ε)/(2n)))."""
    r = sample_size / (sample_size + data_size)
    return train_error + loss_range * (math.sqrt((div - math.log(r * eps)) / (2 * data_size))
                                       + math.sqrt(-math.log((1 - r) * eps) / (2 * sample_size)))


def _decimal_reference(err, div, m, n, width, eps) -> float:
    getcontext().prec = 50
    err, div, m, n, width, eps = (Decimal(str(x)) for x in (err, div, m, n, width, eps))
    r = n / (n + m)
    return float(err + width * (((div - (r * eps).ln()) / (2 * m)).sqrt() + ((-((1 - r) * eps).ln()) / (2 * n)).sqrt()))


# (train error, KL nats, m, n, Δ, δ): document-level bpd at GPT-2 scale, a chat task, a tiny m = n one
REFERENCE_CASES = [(0.25, 1000.0, 10000, 100, 1.0, 0.05), (5.1, 2900.5, 100000, 2000, 12.3, 0.05),
                   (0.9, 0.0, 50, 50, 1.0, 0.2), (3.7, 123456.7, 8009762, 10000, 17.6, 0.01)]


@pytest.mark.parametrize(("err", "kl", "m", "n", "width", "delta"), REFERENCE_CASES)
def test_proportional_split_reproduces_the_reference_subsampling_formula(err, kl, m, n, width, delta):
    split = B.delta_split("proportional", n, m)
    assert split == n / (n + m)
    ours = B.subsampled_bound(err, kl, m=m, n=n, delta=delta, loss_range=width, delta_split=split)
    assert abs(ours.value - reference_subsampling_bound(err, kl, m, n, width, delta)) <= 1e-12
    assert abs(ours.value - _decimal_reference(err, kl, m, n, width, delta)) <= 1e-12
    assert ours.delta_pac == pytest.approx(split * delta, rel=1e-15)
    assert ours.delta_sample == pytest.approx((1 - split) * delta, rel=1e-15)
    # the same numbers through the entry points compute_bounds uses
    t = B.topk_error_bound(kl, m, error_rate=min(err, 1.0), delta=delta, n_sampled=n, delta_split=split)
    assert abs(t.value - reference_subsampling_bound(min(err, 1.0), kl, m, n, 1.0, delta)) <= 1e-12


def test_hand_value_of_the_reference_formula():
    # 0.25 + sqrt((1000 − ln(100/10100 · 0.05)) / 20000) + sqrt(−ln(10000/10100 · 0.05) / 200), by Decimal
    b = B.subsampled_bound(0.25, 1000.0, m=10000, n=100, delta=0.05, delta_split=B.delta_split("proportional", 100, 10000))
    assert abs(b.value - 0.59704653197517042) <= 1e-12


def test_even_split_and_unsampled_bounds():
    assert B.delta_split("even", 100, 10000) == 0.5 and B.delta_split("proportional", None, 10000) == 0.5
    with pytest.raises(ValueError, match="proportional, even"):
        B.delta_split("optimal", 100, 10000)
    # even: δ/2 to each term (coding's own default)
    even = B.subsampled_bound(0.25, 1000.0, m=10000, n=100, delta=0.05, delta_split=B.delta_split("even", 100, 10000))
    want = 0.25 + math.sqrt((1000 + math.log(1 / 0.025)) / 20000) + math.sqrt(math.log(1 / 0.025) / 200)
    assert abs(even.value - want) <= 1e-12
    assert even.value > 0.59704653197517042  # the reference's split is tighter here (by 0.85 %)


def test_proportional_is_never_looser_than_even_when_n_le_m():
    worst = -math.inf
    for kl in (0.0, 10.0, 1e3, 1e5):
        for m in (10, 1000, 100_000, 10_000_000):
            for frac in (1e-4, 0.01, 0.3, 1.0):
                n = max(1, round(frac * m))
                for delta in (0.001, 0.05, 0.2):
                    p, e = (B.subsampled_bound(0.0, kl, m, n, delta, delta_split=B.delta_split(k, n, m)).value
                            for k in ("proportional", "even"))
                    worst = max(worst, (p - e) / e)
    assert worst <= 1e-12


# ---------------------------------------------------------------- quantizer and codebook


def test_symmetric_bins_on_a_hand_vector():
    values = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    # uniform over [−1, 3], 2 bins of width 2: {−1, 0} and {1, 2, 3}
    u = B.quantize(values, 2, "uniform")
    np.testing.assert_array_equal(u.centroids, np.array([-0.5, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(u.symbols, [0, 0, 1, 1, 1])
    # symmetric over [−3, 3], bins [−3, 0) and [0, 3]: {−1} and {0, 1, 2, 3}
    s = B.quantize(values, 2, "symmetric")
    np.testing.assert_array_equal(s.centroids, np.array([-1.0, 1.5], dtype=np.float32))
    np.testing.assert_array_equal(s.symbols, [0, 1, 1, 1, 1])


def _reference_bins(vec: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's bin rule: edges linspace(−M − 1e-6, M + 1e-6, levels + 1), M = max|v|, np.digitize,
    float16 bin means (its empty bins, which it keeps with an edge value, are left out here)."""
    largest = max(vec.max(), abs(vec.min()))
    edges = np.linspace(-largest - 1e-6, largest + 1e-6, levels + 1)
    assign = np.digitize(vec, edges) - 1
    used = np.unique(assign)
    return np.searchsorted(used, assign), np.array([vec[assign == i].mean() for i in used], dtype=np.float16)


def test_symmetric_16_bit_quantizer_matches_the_reference_bins_and_codebook():
    vec = np.random.default_rng(4).laplace(0.01, 0.02, size=2000)
    symbols, codebook = _reference_bins(vec, 11)
    q = B.quantize(vec, 11, "symmetric", codebook_bits=16)
    np.testing.assert_array_equal(q.symbols, symbols)
    np.testing.assert_array_equal(q.centroids, codebook.astype(np.float32))
    assert q.codebook_bits == 16 and q.centroids.dtype == np.float32


def test_16_bit_codebook_rounds_merges_and_costs_16_bits_per_level():
    q32 = B.quantize(np.array([0, 0.1, 0.9, 1.0, 5, 9, 10]), levels=5)  # centroids 0.5, 5, 9.5: exact in float16
    q16 = B.quantize(np.array([0, 0.1, 0.9, 1.0, 5, 9, 10]), levels=5, codebook_bits=16)
    np.testing.assert_array_equal(q16.centroids, q32.centroids)
    ml32, ml16 = B.message_length(q32), B.message_length(q16)
    assert (ml32.codebook_bits, ml16.codebook_bits) == (3 * 32, 3 * 16)
    assert ml32.total_bits - ml16.total_bits == 48
    # 1.0 and 1.0002 are 2 bins apart in float32 but one float16 value (spacing 2^-10 near 1): merged
    q = B.quantize(np.array([1.0, 1.0002]), levels=2, codebook_bits=16)
    np.testing.assert_array_equal(q.centroids, [1.0])
    np.testing.assert_array_equal(q.symbols, [0, 0])
    assert B.quantize(np.array([1.0, 1.0002]), levels=2).centroids.size == 2
    with pytest.raises(ValueError, match="bound_codebook_bits: 32"):
        B.quantize(np.array([0.0, 1e6]), levels=2, codebook_bits=16)
    with pytest.raises(ValueError, match="codebook_bits must be 16 or 32"):
        B.quantize(np.array([0.0, 1.0]), levels=2, codebook_bits=8)


# ---------------------------------------------------------------- document windows


@pytest.mark.parametrize("max_len", [2, 4, 7, 23, 64])
@pytest.mark.parametrize("stride", [1, 2, 3, 100])
def test_sliding_windows_predict_every_token_once_with_carried_context(max_len, stride):
    doc = np.arange(100, 123)  # 23 tokens
    size, step = max(2, max_len), min(stride, max(2, max_len) - 1)
    windows = _sliding_windows(doc, max_len, stride)
    predicted = []
    for w in windows:
        start = int(w.input_ids[0]) - 100
        assert len(w.input_ids) <= size and w.input_ids == list(range(100 + start, 100 + start + len(w.input_ids)))
        for j in range(1, len(w.labels)):
            if w.labels[j] != data.IGNORE_INDEX:
                assert w.labels[j] == w.input_ids[j]
                predicted.append(w.labels[j])
                # context carried: min(position in the document, max_len − stride) tokens before it
                assert j >= min(start + j, size - step)
    assert predicted == list(range(101, 123))


def test_sliding_with_stride_max_len_minus_one_is_restart_but_for_the_last_window():
    doc = np.arange(100, 123)
    restart, sliding = _windows(doc, 7), _sliding_windows(doc, 7, 6)
    assert [w.input_ids for w in sliding[:-1]] == [w.input_ids for w in restart[:-1]]
    assert len(sliding[-1].input_ids) == 7 and len(restart[-1].input_ids) < 7  # the last one keeps a full context


def test_window_stride_resolution():
    assert window_stride(SubloraOptions(bound_doc_window="restart"), 64) is None
    assert window_stride(SubloraOptions(), 64) == 32  # sliding by default, half a window
    assert window_stride(SubloraOptions(bound_window_stride=6), 64) == 6
    assert window_stride(SubloraOptions(bound_window_stride=100), 64) == 63  # at most max_seq_len − 1
    assert window_stride(SubloraOptions(), 2) == 1


# ---------------------------------------------------------------- learned allocation conventions


def test_split_groups_per_module_or_per_block():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj",
             "lm_head", "transformer.h.11.attn.c_attn"]
    assert A.split_groups(names, "raysweep") == ([0, 1, 2, 3, 4], names)
    assert A.split_groups(names, "fork") == ([0, 0, 1, 3, 2], ["model.layers.0", "model.layers.1",
                                                               "transformer.h.11", A.REST])
    with pytest.raises(ValueError, match="raysweep, fork"):
        A.split_groups(names, "paper")


def test_fork_mask_is_b_share_over_raw_indices():
    d, gamma = 8, torch.tensor(0.25)
    pos = A.positions(d, "fork")
    m_b = A.side_mask(gamma, pos, 5.0, "fork", "B")
    # σ(5·(0.25·8 − i)) = σ(10), σ(5), σ(0), σ(−5), ...
    want = torch.sigmoid(5.0 * (2.0 - torch.arange(8.0)))
    torch.testing.assert_close(m_b, want, atol=0, rtol=0)
    assert m_b[2].item() == 0.5
    torch.testing.assert_close(A.side_mask(gamma, pos, 5.0, "fork", "A"), 1 - want)
    assert A.a_share(gamma, "fork").item() == 0.75
    # raysweep's: A's share, positions (i + ½)/d
    m_a = A.side_mask(gamma, A.positions(d, "raysweep"), 10.0, "raysweep", "A")
    torch.testing.assert_close(m_a, torch.sigmoid(10.0 * (0.25 - (torch.arange(8.0) + 0.5) / 8)))
    assert A.a_share(gamma, "raysweep").item() == 0.25


def test_temperature_default_follows_the_convention():
    assert SubloraOptions().temperature == 10.0
    assert SubloraOptions(learned_convention="fork").temperature == 5.0
    assert SubloraOptions(learned_convention="fork", mask_temperature=20).temperature == 20.0


def test_fork_allocation_on_the_builtin_model(builtin_model_dir):
    adapter, model = build(builtin_model_dir, intrinsic_dim=200, allocation_mode="learned", learned_convention="fork")
    state = S.subspace(model)
    assert state.groups == ["model.layers.0", "model.layers.1"] and state.C == 5.0
    assert state.group_of == [0] * 7 + [1] * 7
    assert {n: p.numel() for n, p in model.named_parameters() if p.requires_grad} == {
        "lora_sublora.alpha": 200, "lora_sublora.theta_split": 2}
    with torch.no_grad():
        state.theta_split.copy_(torch.tensor([-1.0, 2.0]))
    gamma = torch.sigmoid(torch.tensor([-1.0, 2.0]))
    for index in (0, 7):
        g = gamma[state.group_of[index]]
        want_b = torch.sigmoid(5.0 * (g * 200 - torch.arange(200.0)))
        torch.testing.assert_close(state.mask(index, side="B"), want_b)
        torch.testing.assert_close(state.mask(index), 1 - want_b)
    # reported γ is A's share per module: 1 − γ of its block
    shares = adapter.gammas(model)
    assert shares["model.layers.0.self_attn.q_proj"] == pytest.approx(1 - gamma[0].item())
    assert shares["model.layers.1.mlp.down_proj"] == pytest.approx(1 - gamma[1].item())
    assert adapter.split_report(model)["gamma_is"] == "B share"
    with torch.no_grad():
        state.alpha.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        state.theta_split.zero_()
    ids = torch.randint(5, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    assert (state.theta_split.grad.abs() > 0).all()


@pytest.mark.parametrize("convention", ["raysweep", "fork"])
def test_split_lr_is_scheduled_only_in_the_raysweep_convention(convention, builtin_model_dir):
    from transformers import get_scheduler

    adapter, model = build(builtin_model_dir, intrinsic_dim=100, allocation_mode="learned",
                           learned_convention=convention, split_lr=0.05)
    optimizer = torch.optim.AdamW(adapter.param_groups(model, {"lr": 0.1, "weight_decay": 0.0}))
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=8)
    ids = torch.randint(5, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    for step in range(6):
        factor = step / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 6))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()  # the lr each group stepped with is its lr now, before scheduler.step()
        alpha_group, split_group = optimizer.param_groups
        assert alpha_group["lr"] == pytest.approx(0.1 * factor)
        assert split_group["lr"] == pytest.approx(0.05 if convention == "fork" else 0.05 * factor)
        optimizer.zero_grad()
        scheduler.step()
    # the marker survives a checkpoint: a resumed optimizer keeps the constant lr
    again = torch.optim.AdamW(adapter.param_groups(model, {"lr": 0.1, "weight_decay": 0.0}))
    again.load_state_dict(optimizer.state_dict())
    assert ("fixed_lr" in again.param_groups[1]) == (convention == "fork")


# ---------------------------------------------------------------- rdkronqr projector


def test_rdkronqr_block_structure_and_floor_sizes():
    proj = RdKronQRProjector(300, 20, seed=3)
    assert (proj.D1, proj.d1, proj.K, tuple(proj.E.shape)) == (17, 4, 289, (11, 4))  # ⌊√300⌋, ⌊√20⌋
    P = proj.materialize()
    assert sorted(proj.perm.tolist()) == list(range(300))
    block = P[torch.argsort(proj.perm)]  # undo the row permutation: diag(L ⊗ R, E)
    torch.testing.assert_close(block[:289, :16], torch.kron(proj.L, proj.R))
    torch.testing.assert_close(block[289:, 16:], proj.E)
    assert not block[:289, 16:].any() and not block[289:, :16].any()
    torch.testing.assert_close(proj.L.T @ proj.L, torch.eye(4), atol=1e-6, rtol=0)  # orthonormal factors
    assert not torch.equal(proj.perm, RdKronQRProjector(300, 20, seed=4).perm)


def test_rdkronqr_perfect_squares_and_leftovers():
    P = make_projector("rdkronqr", 324, 16, seed=0).materialize()  # 18², 4²: exactly orthonormal columns
    torch.testing.assert_close(P.T @ P, torch.eye(16), atol=1e-5, rtol=0)
    # D a square, d not: the d − d1² = 4 last coordinates of α reach no row (as in the reference)
    P = make_projector("rdkronqr", 324, 20, seed=0).materialize()
    assert not P[:, 16:].any() and P[:, :16].any()
    # d a square, D not: D − D1² = 6 rows (parameters) stay at θ₀
    P = make_projector("rdkronqr", 330, 16, seed=0).materialize()
    assert int((P.abs().sum(1) == 0).sum()) == 6
    # d > D: the factors get orthonormal rows instead (the reference's rule for D ≤ d)
    proj = RdKronQRProjector(37, 50, seed=0)
    torch.testing.assert_close(proj.L @ proj.L.T, torch.eye(6, dtype=proj.L.dtype), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- one trial with the reference's conventions


def test_trial_with_the_reference_conventions(tmp_path, builtin_model_dir):
    from raysweep.offline.bounds import bounds_for_checkpoint

    cfg = trial_config(train={"max_steps": 10, "eval_every": 10, "lr": 0.03},
                       data={"task": "builtin_tokens", "max_seq_len": 64},
                       adapter={"type": "sublora", "r": 4, "intrinsic_dim": 200, "allocation_mode": "learned",
                                "learned_convention": "fork", "projector": "rdkronqr", "bound_quantizer": "symmetric",
                                "bound_codebook_bits": 16, "bound_window_stride": 6, "bound_sample": 40})
    session = LocalSession(tmp_path)
    run_training(cfg, session)
    final = session.checkpoints[-1]
    report = json.loads((final / BOUNDS_REPORT).read_text())
    last = session.results[-1]
    check_report(report, last, vocab=307)
    assert report["allocation"]["convention"] == "fork" and report["allocation"]["temperature"] == 5.0
    assert list(report["allocation"]["groups"]) == ["model.layers.0", "model.layers.1"]
    assert report["message"]["split_bits"] == 2 * 32
    k = report["quantization"]["levels_used"]
    assert report["message"]["codebook_bits"] == 16 * k and report["quantization"]["codebook_bits"] == 16
    centroids = np.array(report["quantization"]["centroids"])
    np.testing.assert_array_equal(centroids, centroids.astype(np.float16).astype(float))
    assert report["doc_window"] == {"kind": "sliding", "stride": 6} and report["delta_split"] == "proportional"
    doc = report["levels"]["document"]["bpd"]["bound"]
    assert doc["delta_pac"] == pytest.approx(0.05 * 40 / (40 + doc["m"]))
    shares = [1 - g for g in report["allocation"]["groups"].values()]
    assert last["adapter/gamma_mean"] == pytest.approx(sum(shares) / 2)  # 7 modules in each block
    again = bounds_for_checkpoint(final)  # the projector and the per-block logits rebuild from the checkpoint
    timing = "bound/seconds"
    assert {k: v for k, v in again["metrics"].items() if k != timing} == pytest.approx(
        {k: v for k, v in report["metrics"].items() if k != timing}, rel=1e-5)
    assert again["message"] == report["message"]
