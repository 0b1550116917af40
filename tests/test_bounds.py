"""SubLoRA bound maths on hand-computed numbers: quantizer, Elias delta, arithmetic coder, bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysweep.adapters.sublora import coding as B

# ---------------------------------------------------------------- quantization

# (values, levels, expected centroids, expected symbols)
QUANTIZE = [
    # bins of width 2 over [0, 10]: [0,2) holds 0, .1, .9, 1 (mean .5); [2,4) and [6,8) are empty and
    # dropped; [4,6) holds 5; [8,10] holds 9 and the maximum 10 (mean 9.5)
    ([0, 0.1, 0.9, 1.0, 5, 9, 10], 5, [0.5, 5, 9.5], [0, 0, 0, 0, 1, 2, 2]),
    ([0, 1, 2, 3], 2, [0.5, 2.5], [0, 0, 1, 1]),  # width 1.5: {0, 1} and {2, 3}
    ([-1, 1], 4, [-1, 1], [0, 1]),  # the two middle bins are empty
    ([3, 3, 3], 11, [3], [0, 0, 0]),  # constant input: one level
    ([1, 2, 3, 6], 1, [3], [0, 0, 0, 0]),  # one level: the mean
]


@pytest.mark.parametrize(("values", "levels", "centroids", "symbols"), QUANTIZE)
@pytest.mark.parametrize("method", ["uniform", "kmeans"])
def test_quantize_hand_vectors(values, levels, centroids, symbols, method):
    q = B.quantize(np.array(values, dtype=float), levels=levels, method=method)
    if method == "uniform" or len(centroids) <= 1:
        assert q.centroids.dtype == np.float32
        np.testing.assert_array_equal(q.centroids, np.array(centroids, dtype=np.float32))
        np.testing.assert_array_equal(q.symbols, symbols)
    np.testing.assert_array_equal(B.dequantize(q), q.centroids[q.symbols])


def test_quantize_uses_all_levels_on_dense_data_and_keeps_shape():
    values = np.random.default_rng(0).normal(size=(40, 250))
    q = B.quantize(values, levels=11)
    assert q.centroids.size == 11 and q.symbols.shape == (40, 250)
    assert np.all(np.diff(q.centroids) > 0)
    for s in range(11):  # every centroid is its bin's mean (to float32 precision)
        assert q.centroids[s] == np.float32(values[q.symbols == s].mean())


DISTRIBUTIONS = {
    "normal": lambda rng: rng.normal(size=5000),
    "laplace": lambda rng: rng.laplace(size=5000),
    "bimodal": lambda rng: np.concatenate([rng.normal(-3, 0.2, 4000), rng.normal(5, 1, 1000)]),
    "lognormal": lambda rng: rng.lognormal(size=5000),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("levels", [2, 3, 11])
def test_kmeans_not_worse_than_uniform(name, levels):
    values = DISTRIBUTIONS[name](np.random.default_rng(1))
    mse = {m: float(np.mean((B.dequantize(B.quantize(values, levels, m)) - values) ** 2))
           for m in ("uniform", "kmeans")}
    assert mse["kmeans"] <= mse["uniform"] * (1 + 1e-6)
    q = B.quantize(values, levels, "kmeans")
    nearest = np.argmin(np.abs(values[:, None] - q.centroids[None, :].astype(float)), axis=1)
    assert np.mean(nearest == q.symbols) > 0.999  # a Lloyd fixed point (ties/float32 aside)


def test_kmeans_is_deterministic():
    values = DISTRIBUTIONS["bimodal"](np.random.default_rng(2))
    a, b = B.quantize(values, 7, "kmeans"), B.quantize(values, 7, "kmeans")
    np.testing.assert_array_equal(a.symbols, b.symbols)
    np.testing.assert_array_equal(a.centroids, b.centroids)


@pytest.mark.parametrize(("values", "levels", "method"), [
    ([], 3, "uniform"), ([1.0, np.nan], 3, "uniform"), ([1.0, 2.0], 0, "uniform"), ([1.0], 3, "median"),
])
def test_quantize_rejects_bad_input(values, levels, method):
    with pytest.raises(ValueError):
        B.quantize(np.array(values), levels, method)


# ---------------------------------------------------------------- Elias delta

# by hand: delta(n) = gamma(bit length L of n) + the L-1 low bits of n; gamma(L) = ⌊log2 L⌋ zeros + L
ELIAS = [
    (1, "1"),  # L=1: gamma(1) = "1"
    (2, "0100"),  # L=2: gamma(2) = "010", then "0"
    (3, "0101"),
    (4, "01100"),  # L=3: gamma(3) = "011", then "00"
    (7, "01111"),
    (8, "00100000"),  # L=4: gamma(4) = "00100", then "000"
    (16, "001010000"),  # L=5: gamma(5) = "00101", then "0000"
    (100, "00111100100"),  # 100 = 1100100, L=7: gamma(7) = "00111", then "100100"
    (2**16, "000010001" + "0" * 16),  # L=17: gamma(17) = "000010001", then 16 zeros: 25 bits
]


@pytest.mark.parametrize(("n", "code"), ELIAS)
def test_elias_delta_hand_values(n, code):
    assert B.elias_delta_code(n) == code
    assert B.elias_delta_length(n) == len(code)


def test_elias_delta_is_prefix_free_and_length_matches():
    codes = sorted(B.elias_delta_code(n) for n in range(1, 3000))
    assert all(not b.startswith(a) for a, b in zip(codes, codes[1:], strict=False))
    assert all(B.elias_delta_length(n) == len(B.elias_delta_code(n)) for n in range(1, 3000))
    with pytest.raises(ValueError):
        B.elias_delta_length(0)


# ---------------------------------------------------------------- arithmetic coding

# (alphabet size, symbol probabilities or None for uniform, N)
CODER = [
    (1, None, 500),
    (2, None, 1000),
    (2, [0.95, 0.05], 4000),
    (3, [0.998, 0.001, 0.001], 3000),
    (5, "dirichlet", 5000),
    (11, "dirichlet", 20000),
    (50, None, 3000),
    (256, "dirichlet", 2000),
]


@pytest.mark.parametrize(("k", "probs", "n"), CODER)
def test_arithmetic_coder_round_trips_near_entropy(k, probs, n):
    rng = np.random.default_rng(k * 1000 + n)
    if probs == "dirichlet":
        probs = rng.dirichlet(np.full(k, 0.3))
    symbols = rng.choice(k, size=n, p=probs)
    counts = np.bincount(symbols, minlength=k).tolist()
    bits = B.arithmetic_encode(symbols, counts)
    np.testing.assert_array_equal(B.arithmetic_decode(bits, counts, n), symbols)
    nh = B.entropy_bits(counts)
    assert nh - 1 <= bits.size <= nh + 32


def test_arithmetic_coder_skips_zero_count_symbols():
    symbols = np.array([0, 2, 2, 4, 0, 4, 4, 4])
    counts = [2, 0, 2, 0, 4]
    bits = B.arithmetic_encode(symbols, counts)
    np.testing.assert_array_equal(B.arithmetic_decode(bits, counts, symbols.size), symbols)
    with pytest.raises(ValueError, match="count 0"):
        B.arithmetic_encode(np.array([1]), counts)


def test_entropy_bits_hand_value():
    # counts [4, 1, 2]: -4·log2(4/7) - 1·log2(1/7) - 2·log2(2/7) = 7·log2 7 - 8 - 0 - 2
    assert B.entropy_bits([4, 1, 2]) == pytest.approx(7 * math.log2(7) - 10, abs=1e-12)
    assert B.entropy_bits([9]) == 0.0


# ---------------------------------------------------------------- message length


def test_message_length_parts_on_hand_vector():
    q = B.quantize(np.array([0, 0.1, 0.9, 1.0, 5, 9, 10]), levels=5)  # counts [4, 1, 2], K=3, N=7
    ml = B.message_length(q)
    assert ml.exact and (ml.num_symbols, ml.num_levels) == (7, 3)
    assert ml.codebook_bits == 3 * 32
    assert ml.model_bits == 5 + 4 + 4  # delta(5) + delta(2) + delta(3)
    assert ml.header_bits == 5 + 4  # delta(7) + delta(3)
    assert ml.symbol_bits == B.arithmetic_encode(q.symbols, [4, 1, 2]).size
    assert ml.total_bits == ml.symbol_bits + ml.codebook_bits + ml.model_bits + ml.header_bits
    assert ml.kl_nats == pytest.approx(ml.total_bits * math.log(2))


def test_message_length_entropy_fallback_and_round_trip():
    alpha = np.random.default_rng(3).normal(size=30000)
    q = B.quantize(alpha, levels=11, method="kmeans")
    exact, approx = B.message_length(q), B.message_length(q, max_exact=1000)
    assert exact.exact and not approx.exact
    assert approx.symbol_bits == math.ceil(approx.entropy_bits) + 2
    assert abs(exact.symbol_bits - approx.symbol_bits) <= 32
    for ml in (exact, approx):
        assert ml.total_bits == ml.symbol_bits + ml.codebook_bits + ml.model_bits + ml.header_bits
    # the message really describes α̂: decoding the symbols rebuilds the quantized vector exactly
    counts = np.bincount(q.symbols, minlength=q.centroids.size).tolist()
    decoded = B.arithmetic_decode(B.arithmetic_encode(q.symbols, counts), counts, alpha.size)
    np.testing.assert_array_equal(q.centroids[decoded], B.dequantize(q))


# ---------------------------------------------------------------- bounds

E3 = math.exp(-3)  # δ with ln(1/δ) = 3, so the hand arithmetic stays exact


def test_pac_bayes_bound_hand_values():
    # 0.25 + 1·sqrt((197 + ln(1/e^-3) + 0) / (2·10000)) = 0.25 + sqrt(200/20000) = 0.25 + 0.1
    b = B.pac_bayes_bound(0.25, kl_nats=197, m=10000, delta=E3)
    assert b.value == pytest.approx(0.35) and b.complexity == pytest.approx(0.1) and not b.vacuous
    # Δ = 2 doubles the complexity term: 0.25 + 2·0.1
    assert B.pac_bayes_bound(0.25, 197, 10000, E3, loss_range=2.0).value == pytest.approx(0.45)
    # extra nats add to the KL: (190 + 3 + 7) / 20000 = 0.01
    assert B.pac_bayes_bound(0.25, 190, 10000, E3, extra_nats=7).value == pytest.approx(0.35)
    # δ = 0.05, KL = 1000 bits: ln 20 = 2.995732; 693.147181 + 2.995732 = 696.142913;
    # / 20000 = 0.0348071456; sqrt = 0.186566...; + 0.3 = 0.486566
    b = B.pac_bayes_bound(0.3, 1000 * math.log(2), 10000, 0.05)
    assert b.value == pytest.approx(0.3 + math.sqrt(0.0348071456), abs=1e-9)
    assert b.value == pytest.approx(0.486566, abs=1e-6)


def test_vacuous_bound_is_not_clipped_and_is_flagged():
    # 0.25 + sqrt((97 + 3) / (2·50)) = 0.25 + 1 = 1.25 > 1
    b = B.pac_bayes_bound(0.25, 97, 50, E3)
    assert b.value == pytest.approx(1.25) and b.vacuous
    t = B.topk_error_bound(97, 50, error_rate=0.25, delta=E3)
    assert t.value == pytest.approx(1.25) and t.vacuous


@pytest.mark.parametrize("level", ["document", "sequence"])
def test_subsampled_bound_hand_formula(level):
    # δ = 2e^-3 split in halves: δ₁ = δ₂ = e^-3. m = 10000 units, n = 150 sampled:
    # 0.2 + sqrt(ln(1/δ₂) / (2·150)) + sqrt((197 + ln(1/δ₁)) / (2·10000)) = 0.2 + sqrt(3/300) + 0.1 = 0.4
    b = B.subsampled_bound(0.2, 197, m=10000, n=150, delta=2 * E3, level=level)
    assert b.delta_pac == pytest.approx(E3) and b.delta_sample == pytest.approx(E3)
    assert b.sampling == pytest.approx(0.1) and b.complexity == pytest.approx(0.1)
    assert b.value == pytest.approx(0.4) and (b.m, b.n, b.level) == (10000, 150, level)
    # the same through the top-k entry point with per-unit correctness flags: 30 of 150 wrong
    flags = np.array([0] * 30 + [1] * 120)
    t = B.topk_error_bound(197, 10000, correct=flags, k=5, delta=2 * E3, n_sampled=150, level=level)
    assert t.empirical == pytest.approx(0.2) and t.value == pytest.approx(0.4)


def test_subsampled_bound_uneven_split():
    # δ = 0.1, split 0.3: δ₁ = 0.03, δ₂ = 0.07
    b = B.subsampled_bound(0.1, 50, m=2000, n=400, delta=0.1, loss_range=3.0, delta_split=0.3)
    expected = 0.1 + 3 * math.sqrt(math.log(1 / 0.07) / 800) + 3 * math.sqrt((50 + math.log(1 / 0.03)) / 4000)
    assert b.value == pytest.approx(expected)


@pytest.mark.parametrize(("alpha", "vocab"), [(0.5, 4), (0.1, 50257), (0.01, 32000), (1.0, 10), (0.999, 2)])
def test_smoothed_range_is_width_of_token_loss(alpha, vocab):
    worst = -math.log2(alpha / vocab)  # p = 0
    best = -math.log2(1 - alpha + alpha / vocab)  # p = 1
    assert B.smoothed_bpd_range(alpha, vocab) == pytest.approx(worst - best, abs=1e-12)


def test_smoothed_range_hand_value():
    # V = 4, α = 0.5: p_α ∈ [0.125, 0.625]; log2(8) - log2(1.6) = log2(5) = log2(1 + 0.5·4/0.5)
    assert B.smoothed_bpd_range(0.5, 4) == pytest.approx(math.log2(5))


def test_smoothed_bpd_grid_pays_same_ln_k_for_every_alpha():
    probs = np.ones(100)  # every true token at probability 1: p_α = 1 - α + α/V
    kl = 197 - math.log(2)  # so that KL + ln(1/δ) + ln(k=2) = 200
    res = B.smoothed_bpd_bound(probs, vocab_size=4, kl_nats=kl, m=10000, delta=E3, alphas=(0.5, 0.25))
    assert res.grid_nats == pytest.approx(math.log(2))
    assert [r.bound.extra_nats for r in res.rows] == [math.log(2), math.log(2)]
    # α = 0.5: -log2(0.625) + log2(5)·sqrt(200/20000)
    assert res.rows[0].bound.value == pytest.approx(math.log2(1.6) + 0.1 * math.log2(5))
    # α = 0.25: -log2(0.75 + 0.0625) + log2(1 + 0.75·4/0.25)·0.1 = log2(1/0.8125) + 0.1·log2(13)
    assert res.rows[1].bound.value == pytest.approx(math.log2(1 / 0.8125) + 0.1 * math.log2(13))
    assert res.best is min(res.rows, key=lambda r: r.bound.value)
    assert not res.best.bound.vacuous and res.best.bound.trivial == pytest.approx(2.0)


def test_smoothed_bpd_per_unit_means_and_vacuous_flag():
    # units [[1, 0], [1]], α = 0.5, V = 4: token bits log2(1.6), 3, log2(1.6);
    # unit means (log2 1.6 + 3)/2 and log2 1.6; risk = their mean (not the pooled token mean)
    res = B.smoothed_bpd_bound([np.array([1.0, 0.0]), np.array([1.0])], 4, 97, m=2, delta=E3, alphas=(0.5,))
    row = res.rows[0].bound
    assert row.empirical == pytest.approx(((math.log2(1.6) + 3) / 2 + math.log2(1.6)) / 2)
    assert row.extra_nats == 0.0  # one α: ln(1) = 0
    # sqrt((97 + 3) / 4) = 5: far above log2(4) = 2, reported as is and flagged
    assert row.value == pytest.approx(row.empirical + 5 * math.log2(5)) and row.vacuous
    with pytest.raises(ValueError, match="units"):
        B.smoothed_bpd_bound([np.array([1.0])], 4, 97, m=2, delta=E3)


def test_topk_error_bound_inputs():
    # error rate 0.25 with the 0.1 complexity term of the first hand case
    assert B.topk_error_bound(197, 10000, error_rate=0.25, delta=E3).value == pytest.approx(0.35)
    assert B.topk_error_bound(197, 10000, correct=[1, 1, 1, 0], delta=E3).value == pytest.approx(0.35)
    with pytest.raises(ValueError):
        B.topk_error_bound(197, 10000, correct=[1], error_rate=0.1)


@pytest.mark.parametrize("kwargs", [
    {"kl_nats": -1.0}, {"m": 0}, {"delta": 0.0}, {"delta": 1.0}, {"loss_range": -1.0},
])
def test_bound_rejects_bad_arguments(kwargs):
    args = {"empirical_risk": 0.1, "kl_nats": 10.0, "m": 100, "delta": 0.05, "loss_range": 1.0} | kwargs
    with pytest.raises(ValueError):
        B.pac_bayes_bound(**args)
    with pytest.raises(ValueError):
        B.subsampled_bound(0.1, 10.0, m=100, n=101)
