# over 400 lines: quantizer, prefix-free code and bounds are one derivation (a bound holds only for this code length)
"""SubLoRA PAC-Bayes compression bounds: quantize α, arithmetic-code it, turn code length into a bound.

Pure arithmetic on numpy arrays (no torch): the caller evaluates the *quantized* model, i.e.
θ = θ₀ + P·dequantize(q), and passes per-token probabilities or correctness flags in.

The bound (Lotfi et al. 2023, "Non-vacuous generalization bounds for large language models") is an
Occam bound: Hoeffding for one fixed hypothesis plus a union bound over a countable set weighted by a
prior P(h). With a prefix-free code of length L(h), Kraft's inequality makes P(h) = 2^-L(h) a valid
(sub-)prior, so for the point-mass posterior on the compressed h, KL = ln 1/P(h) ≤ L(h)·ln 2. That is
why every part of the message (N, the number of levels, the counts, the codebook, the symbols) is
encoded prefix-free here and nothing is ever divided away: an inflated length must stay inflated.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
DEFAULT_MAX_EXACT = 200_000
DEFAULT_ALPHAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
LEVELS = ("document", "sequence")
CODEBOOK_BITS_PER_LEVEL = 32  # centroids are stored (and used) as float32 unless a 16-bit codebook is asked for
CODEBOOK_DTYPES = {32: np.float32, 16: np.float16}
QUANTIZERS = ("uniform", "kmeans", "symmetric")
DELTA_SPLITS = ("proportional", "even")

# Witten–Neal–Cleary coder with 32-bit registers; the total count must stay below a quarter range
# so every symbol with a non-zero count keeps a non-empty sub-interval.
_CODE_BITS = 32
_TOP = (1 << _CODE_BITS) - 1
_HALF = 1 << (_CODE_BITS - 1)
_Q1 = 1 << (_CODE_BITS - 2)
_Q3 = _HALF + _Q1


# ---------------------------------------------------------------- quantization


@dataclass(frozen=True, eq=False)
class Quantized:
    """α as symbols (indices into `centroids`, same shape as the input) and a float32 codebook."""

    symbols: np.ndarray  # int64, values in [0, len(centroids))
    centroids: np.ndarray  # float32 array, sorted ascending, distinct; every centroid is used at least once
    codebook_bits: int = CODEBOOK_BITS_PER_LEVEL  # 32: float32 values; 16: float16 values (held as float32)


def quantize(values: np.ndarray, levels: int = 11, method: str = "uniform", max_iter: int = 100,
             codebook_bits: int = CODEBOOK_BITS_PER_LEVEL) -> Quantized:
    """Quantize `values` to at most `levels` centroids.

    uniform: `levels` equal-width bins over [min, max]; each centroid is the mean of its bin's values;
    empty bins are dropped and symbols re-indexed compactly. symmetric: the same over [−max|v|, max|v|]
    (the SubLoRA reference's bins; they waste levels on the emptier side when the values are skewed).
    kmeans: Lloyd's iterations started from the uniform centroids (deterministic, so no seed is needed);
    Lloyd's never increases the squared error, and the first nearest-centroid assignment already beats the
    bin assignment, so kmeans is never worse than uniform. Centroids are rounded to the transmitted
    precision (float32, or float16 with codebook_bits=16; centroids that round to the same value merge)
    because the bound must describe exactly the model that is evaluated.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if method not in QUANTIZERS:
        raise ValueError(f"method must be one of {', '.join(QUANTIZERS)}, got {method!r}")
    if codebook_bits not in CODEBOOK_DTYPES:
        raise ValueError(f"codebook_bits must be 16 or 32, got {codebook_bits}")
    arr = np.asarray(values, dtype=np.float64)
    flat = arr.ravel()
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ValueError("values must be a non-empty array of finite numbers")
    lo, hi = float(flat.min()), float(flat.max())
    if method == "symmetric":
        hi = float(np.abs(flat).max())
        lo = -hi
    if hi > lo:
        bins = np.floor((flat - lo) / (hi - lo) * levels).astype(np.int64)
        bins = np.clip(bins, 0, levels - 1)  # the maximum lands in the last bin, not a new one
    else:
        bins = np.zeros(flat.size, dtype=np.int64)  # constant input: one bin
    symbols, centroids = _compact_means(flat, bins)
    if method == "kmeans":
        for _ in range(max_iter):
            # 1-D nearest centroid = the interval between consecutive midpoints (centroids sorted)
            new = np.searchsorted((centroids[:-1] + centroids[1:]) / 2.0, flat).astype(np.int64)
            new_symbols, new_centroids = _compact_means(flat, new)
            converged = np.array_equal(new_symbols, symbols) and np.array_equal(new_centroids, centroids)
            symbols, centroids = new_symbols, new_centroids
            if converged:
                break
    symbols, centroids = _round_codebook(symbols, centroids, codebook_bits)
    return Quantized(symbols=symbols.reshape(arr.shape), centroids=centroids, codebook_bits=codebook_bits)


def _round_codebook(symbols: np.ndarray, centroids: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids rounded to the codebook's precision (as float32), equal ones merged, symbols re-indexed."""
    with np.errstate(over="ignore"):
        rounded = centroids.astype(CODEBOOK_DTYPES[bits])
    if not np.all(np.isfinite(rounded)):
        raise ValueError(f"a centroid ({float(np.abs(centroids).max()):.4g}) is beyond float{bits}'s range; "
                         "use a 32-bit codebook (adapter.bound_codebook_bits: 32)")
    merged, index = np.unique(rounded.astype(np.float32), return_inverse=True)
    return index.astype(np.int64).ravel()[symbols], merged


def _compact_means(flat: np.ndarray, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty groups, re-index compactly, and return (symbols, group means)."""
    present, symbols = np.unique(assign, return_inverse=True)
    counts = np.bincount(symbols, minlength=present.size)
    means = np.bincount(symbols, weights=flat, minlength=present.size) / counts
    return symbols.astype(np.int64).ravel(), means


def dequantize(q: Quantized) -> np.ndarray:
    """The quantized vector, centroids[symbols] (float32, the input's shape)."""
    return q.centroids[q.symbols]


# ---------------------------------------------------------------- prefix-free integer code


def elias_delta_code(n: int) -> str:
    """Elias delta codeword of n >= 1 as a '0'/'1' string: gamma(bit length of n), then n without its leading 1."""
    if n < 1:
        raise ValueError(f"Elias delta codes integers >= 1, got {n}")
    nbits = n.bit_length()
    return "0" * (nbits.bit_length() - 1) + format(nbits, "b") + format(n, "b")[1:]


def elias_delta_length(n: int) -> int:
    """Length of the Elias delta codeword of n >= 1: ⌊log2 n⌋ + 2⌊log2(⌊log2 n⌋ + 1)⌋ + 1."""
    if n < 1:
        raise ValueError(f"Elias delta codes integers >= 1, got {n}")
    nbits = n.bit_length()  # ⌊log2 n⌋ + 1
    return nbits + 2 * (nbits.bit_length() - 1)


# ---------------------------------------------------------------- arithmetic coding


def _cumulative(counts: Sequence[int]) -> list[int]:
    cum = [0]
    for c in counts:
        if c < 0:
            raise ValueError("counts must be non-negative")
        cum.append(cum[-1] + int(c))
    if not 0 < cum[-1] < _Q1:
        raise ValueError(f"total count must be in (0, 2^{_CODE_BITS - 2}), got {cum[-1]}")
    return cum


def arithmetic_encode(symbols: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Encode `symbols` with the static model `counts` (Witten–Neal–Cleary, exact integers).

    Returns the emitted bits (uint8 0/1). The output is prefix-free given N and the counts: the two
    terminating bits pick a dyadic interval inside the final coding interval, so every continuation
    of the bits decodes to the same symbols (the decoder pads with zeros).
    """
    cum = _cumulative(counts)
    total = cum[-1]
    low, high, pending = 0, _TOP, 0
    out = bytearray()

    def emit(bit: int) -> None:
        nonlocal pending
        out.append(bit)
        out.extend(bytes([1 - bit]) * pending)  # resolve the E3 (underflow) bits now known
        pending = 0

    for s in np.asarray(symbols).ravel().tolist():
        if cum[s + 1] == cum[s]:
            raise ValueError(f"symbol {s} has count 0 in the model")
        span = high - low + 1
        high = low + span * cum[s + 1] // total - 1
        low = low + span * cum[s] // total
        while True:
            if high < _HALF:
                emit(0)
            elif low >= _HALF:
                emit(1)
                low, high = low - _HALF, high - _HALF
            elif low >= _Q1 and high < _Q3:  # E3: straddles the middle; defer the bit
                pending += 1
                low, high = low - _Q1, high - _Q1
            else:
                break
            low, high = 2 * low, 2 * high + 1
    pending += 1
    emit(0 if low < _Q1 else 1)
    return np.frombuffer(bytes(out), dtype=np.uint8).copy()


def arithmetic_decode(bits: np.ndarray, counts: Sequence[int], n: int) -> np.ndarray:
    """Inverse of `arithmetic_encode`: decode `n` symbols from `bits` with the same `counts`."""
    cum = _cumulative(counts)
    total = cum[-1]
    stream = np.asarray(bits, dtype=np.uint8).tolist()
    pos = 0

    def next_bit() -> int:
        nonlocal pos
        pos += 1
        return stream[pos - 1] if pos <= len(stream) else 0

    value = 0
    for _ in range(_CODE_BITS):
        value = 2 * value + next_bit()
    low, high = 0, _TOP
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        span = high - low + 1
        target = ((value - low + 1) * total - 1) // span
        s = bisect_right(cum, target) - 1  # skips zero-count symbols (repeated cum values)
        out[i] = s
        high = low + span * cum[s + 1] // total - 1
        low = low + span * cum[s] // total
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                value, low, high = value - _HALF, low - _HALF, high - _HALF
            elif low >= _Q1 and high < _Q3:
                value, low, high = value - _Q1, low - _Q1, high - _Q1
            else:
                break
            low, high, value = 2 * low, 2 * high + 1, 2 * value + next_bit()
    return out


def entropy_bits(counts: Sequence[int]) -> float:
    """N·H of the empirical distribution: -Σ c·log2(c/N) = N·log2 N - Σ c·log2 c (ideal code length)."""
    c = [int(x) for x in counts if x > 0]
    n = sum(c)
    return max(0.0, math.fsum([n * math.log2(n)] + [-x * math.log2(x) for x in c]))


# ---------------------------------------------------------------- message length


@dataclass(frozen=True)
class MessageLength:
    """Every part of the prefix-free description of the quantized α, in bits."""

    symbol_bits: int  # arithmetic-coded symbols (exact coder output, or ⌈N·H⌉ + 2)
    codebook_bits: int  # 32 (float32) or 16 (float16) per centroid
    model_bits: int  # the counts, Σ EliasDelta(count + 1)
    header_bits: int  # EliasDelta(N) + EliasDelta(number of levels)
    total_bits: int  # the sum: a prefix-free code length L, so KL ≤ L·ln 2
    kl_nats: float  # total_bits · ln 2
    exact: bool  # True: symbol_bits is the real coder's output; False: the entropy bound
    entropy_bits: float  # N·H, for reference
    num_symbols: int  # N
    num_levels: int  # K, centroids actually used


def message_length(q: Quantized, max_exact: int = DEFAULT_MAX_EXACT) -> MessageLength:
    """Length of the whole message describing `q` (read N and K, then counts, codebook, symbols).

    For N <= max_exact the symbols are really encoded (and the emitted bits counted); above it the
    length is ⌈N·H⌉ + 2, which an infinite-precision arithmetic code (Shannon–Fano–Elias on the whole
    sequence, Cover & Thomas §13.3) achieves, so the total is still the length of a real prefix-free code.
    """
    symbols = np.asarray(q.symbols).ravel()
    n, k = int(symbols.size), int(q.centroids.size)
    counts = np.bincount(symbols, minlength=k).tolist()
    ent = entropy_bits(counts)
    exact = n <= max_exact
    symbol_bits = int(arithmetic_encode(symbols, counts).size) if exact else math.ceil(ent) + 2
    codebook_bits = q.codebook_bits * k
    model_bits = sum(elias_delta_length(c + 1) for c in counts)  # +1: Elias codes integers >= 1
    header_bits = elias_delta_length(n) + elias_delta_length(k)
    total = symbol_bits + codebook_bits + model_bits + header_bits
    return MessageLength(symbol_bits, codebook_bits, model_bits, header_bits, total, total * LN2,
                         exact, ent, n, k)


# ---------------------------------------------------------------- bound arithmetic


@dataclass(frozen=True)
class Bound:
    """A risk bound and its parts; `value` is never clipped, so a vacuous bound stays visible."""

    value: float  # empirical + sampling + complexity
    empirical: float  # empirical risk (on the subsample when n is set)
    complexity: float  # Δ·sqrt((KL + ln(1/δ₁) + extra) / (2m))
    sampling: float  # Δ·sqrt(ln(1/δ₂) / (2n)), 0 without subsampling
    loss_range: float  # Δ
    kl_nats: float
    extra_nats: float  # union-bound costs (α grid, sweep hyperparameters, ...)
    m: int
    n: int | None  # subsample size, None when the empirical risk uses all m units
    delta: float  # total confidence δ = δ₁ + δ₂
    delta_pac: float  # δ₁
    delta_sample: float  # δ₂ (0 without subsampling)
    level: str | None  # "document" | "sequence": what one of the m units is
    trivial: float  # the risk of a trivial predictor; value > trivial means vacuous
    vacuous: bool


def _check(kl_nats: float, m: int, delta: float, loss_range: float, extra_nats: float,
           level: str | None) -> None:
    if not (kl_nats >= 0 and extra_nats >= 0 and math.isfinite(kl_nats + extra_nats)):
        raise ValueError("kl_nats and extra_nats must be finite and >= 0")
    if m < 1:
        raise ValueError(f"m (number of i.i.d. units) must be >= 1, got {m}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not (loss_range >= 0 and math.isfinite(loss_range)):
        raise ValueError(f"loss_range must be finite and >= 0, got {loss_range}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def pac_bayes_bound(empirical_risk: float, kl_nats: float, m: int, delta: float = 0.05,
                    loss_range: float = 1.0, extra_nats: float = 0.0,
                    trivial: float | None = None, level: str | None = None) -> Bound:
    """R ≤ R̂ + Δ·sqrt((KL + ln(1/δ) + extra) / (2m)), with probability ≥ 1 - δ over m i.i.d. units.

    The Occam form used by Lotfi et al.: Hoeffding for a loss in an interval of width Δ, union-bounded
    over hypotheses with prior 2^-L(h). Unlike McAllester's it has no ln(2√m) term, which is valid
    here because the posterior is a point mass on a countable class. `trivial` (default Δ) is the
    value above which the bound says nothing (error: 1; bits per token: log2 V).
    """
    _check(kl_nats, m, delta, loss_range, extra_nats, level)
    complexity = loss_range * math.sqrt((kl_nats + math.log(1.0 / delta) + extra_nats) / (2.0 * m))
    value = float(empirical_risk) + complexity
    triv = loss_range if trivial is None else trivial
    return Bound(value, float(empirical_risk), complexity, 0.0, loss_range, kl_nats, extra_nats, m,
                 None, delta, delta, 0.0, level, triv, value > triv)


def subsampled_bound(sample_risk: float, kl_nats: float, m: int, n: int, delta: float = 0.05,
                     loss_range: float = 1.0, extra_nats: float = 0.0, level: str = "document",
                     delta_split: float = 0.5, trivial: float | None = None) -> Bound:
    """PAC-Bayes bound when the empirical risk comes from a random subsample of n of the m units.

    R ≤ R̂_n + Δ·sqrt(ln(1/δ₂)/(2n)) + Δ·sqrt((KL + ln(1/δ₁) + extra)/(2m)), δ₁ = split·δ,
    δ₂ = (1 - split)·δ (equal halves by default). The sampling term is Hoeffding for the subsample
    mean around the full-data mean R̂_m (it also holds when sampling without replacement, Hoeffding
    1963 §6); a union bound over the two failure events gives confidence δ₁ + δ₂ = δ. The subsample
    must be drawn independently of training. level="document": m counts documents;
    level="sequence": m counts fixed-length sequences, which the bound then treats as i.i.d.
    """
    if not 0.0 < delta_split < 1.0:
        raise ValueError(f"delta_split must be in (0, 1), got {delta_split}")
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    d1, d2 = delta * delta_split, delta * (1.0 - delta_split)
    pac = pac_bayes_bound(sample_risk, kl_nats, m, d1, loss_range, extra_nats, trivial, level)
    sampling = loss_range * math.sqrt(math.log(1.0 / d2) / (2.0 * n))
    value = pac.value + sampling
    return Bound(value, pac.empirical, pac.complexity, sampling, loss_range, kl_nats, extra_nats, m, n,
                 delta, d1, d2, level, pac.trivial, value > pac.trivial)


def delta_split(kind: str, n: int | None, m: int) -> float:
    """The share of δ given to the PAC term of a sub-sampled bound (the sampling term gets the rest).

    proportional: r = n/(n + m), the SubLoRA reference's. The PAC term's ln(1/δ₁) is divided by 2m and the
    sampling term's by 2n ≤ 2m, so the sampling term gains more from a larger share; proportional is never
    looser than even for n ≤ m (checked over KL ∈ [0, 10⁶], m ∈ [10, 10⁷], n/m ∈ [10⁻⁴, 1], δ ∈ [10⁻³, 0.2]).
    even: ½. Without sub-sampling (n None) the split is unused; ½ is returned.
    """
    if kind not in DELTA_SPLITS:
        raise ValueError(f"delta split must be one of {', '.join(DELTA_SPLITS)}, got {kind!r}")
    if kind == "even" or n is None:
        return 0.5
    return n / (n + m)


def _risk_bound(empirical: float, kl_nats: float, m: int, delta: float, loss_range: float,
                extra_nats: float, n_sampled: int | None, level: str, delta_split: float,
                trivial: float) -> Bound:
    if n_sampled is None:
        return pac_bayes_bound(empirical, kl_nats, m, delta, loss_range, extra_nats, trivial, level)
    return subsampled_bound(empirical, kl_nats, m, n_sampled, delta, loss_range, extra_nats, level,
                            delta_split, trivial)


def smoothed_bpd_range(alpha: float, vocab_size: int) -> float:
    """Δ(α) = log2(1 + (1-α)·V/α): the width of the range of -log2 p_α, p_α = (1-α)p + α/V.

    p_α runs from α/V (p = 0) to 1 - α + α/V (p = 1), so -log2 p_α spans
    [-log2(1 - α + α/V), log2(V/α)], whose width is log2((V/α)·(1 - α + α/V)) = log2(1 + (1-α)V/α).
    Hoeffding needs only the width: the constant shift cancels between the true and empirical risks.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return math.log2(1.0 + (1.0 - alpha) * vocab_size / alpha)


@dataclass(frozen=True)
class BPDRow:
    alpha: float
    bound: Bound  # bound.empirical is the smoothed bits per token, bound.loss_range is Δ(α)


@dataclass(frozen=True)
class SmoothedBPD:
    rows: tuple[BPDRow, ...]  # one per α, all paying the same ln(k) extra nats
    best: BPDRow  # the smallest bound
    grid_nats: float  # ln(k), the price of choosing α from k values


def smoothed_bpd_bound(token_probs: np.ndarray | Sequence[np.ndarray], vocab_size: int, kl_nats: float,
                       m: int, delta: float = 0.05, alphas: Sequence[float] = DEFAULT_ALPHAS,
                       extra_nats: float = 0.0, n_sampled: int | None = None, level: str = "document",
                       delta_split: float = 0.5, trivial: float | None = None) -> SmoothedBPD:
    """Bits-per-token bound of the α-smoothed predictor, for every α of a grid, and the best.

    `token_probs` is the probability the quantized model gives each true token: a 1-D array (risk =
    mean over tokens; right when all units have equal length) or one array per unit (risk = mean
    over units of the unit's mean). Choosing α from k values is a union bound: every row pays the
    same ln(k) extra nats, so each row's bound holds simultaneously and the minimum is a valid bound.
    `trivial` defaults to log2(V), a uniform predictor's bits per token.
    """
    if not alphas:
        raise ValueError("alphas must not be empty")
    per_unit = not isinstance(token_probs, np.ndarray) or token_probs.ndim != 1
    units = [np.asarray(u, dtype=np.float64).ravel() for u in token_probs] if per_unit else \
        [np.asarray(token_probs, dtype=np.float64)]
    if any(u.size == 0 or not np.all(np.isfinite(u)) for u in units):
        raise ValueError("token_probs must be non-empty and finite")
    if per_unit and len(units) != (m if n_sampled is None else n_sampled):
        raise ValueError(f"{len(units)} units of token_probs given, expected n_sampled or m")
    probs = np.clip(np.concatenate(units), 0.0, 1.0)  # softmax outputs may overshoot 1 by rounding
    owner = np.repeat(np.arange(len(units)), [u.size for u in units])
    lengths = np.bincount(owner)
    grid_nats = math.log(len(alphas))
    triv = math.log2(vocab_size) if trivial is None else trivial
    rows = []
    for alpha in alphas:
        width = smoothed_bpd_range(alpha, vocab_size)
        bits = -np.log2((1.0 - alpha) * probs + alpha / vocab_size)
        empirical = float(np.mean(np.bincount(owner, weights=bits) / lengths))
        rows.append(BPDRow(alpha, _risk_bound(empirical, kl_nats, m, delta, width,
                                              grid_nats + extra_nats, n_sampled, level, delta_split, triv)))
    best = min(rows, key=lambda r: r.bound.value)
    return SmoothedBPD(tuple(rows), best, grid_nats)


def topk_error_bound(kl_nats: float, m: int, *, correct: np.ndarray | None = None,
                     error_rate: float | None = None, k: int = 1, delta: float = 0.05,
                     extra_nats: float = 0.0, n_sampled: int | None = None, level: str = "document",
                     delta_split: float = 0.5) -> Bound:
    """Bound on the top-k token error (loss in [0, 1], Δ = 1; vacuous above 1).

    Give exactly one of `correct` (per unit: a 0/1 flag or the unit's fraction of tokens whose true
    token is in the model's top k) or `error_rate` (already averaged over units). `k` only documents
    what was counted: the caller computes the flags.
    """
    if (correct is None) == (error_rate is None):
        raise ValueError("give exactly one of correct or error_rate")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if correct is not None:
        flags = np.asarray(correct, dtype=np.float64).ravel()
        if flags.size == 0 or np.any((flags < 0) | (flags > 1)):
            raise ValueError("correct must be non-empty with values in [0, 1]")
        error_rate = 1.0 - float(flags.mean())
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    return _risk_bound(error_rate, kl_nats, m, delta, 1.0, extra_nats, n_sampled, level, delta_split, 1.0)
