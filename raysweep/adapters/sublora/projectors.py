"""Random projectors P ∈ R^{D×d} for SubLoRA: θ = θ₀ + P·α, with only α ∈ R^d trained.

D (all LoRA parameters, flattened) reaches millions and d tens of thousands, so a dense d×D matrix
(e.g. 2M × 50k × 4 B = 400 GB) is out of the question. Every projector here is a pure function of
(seed, D, d): its factors are regenerated from the seed instead of being saved — they are registered as
*non-persistent* buffers, so they follow `.to(device)` but never appear in a state dict, and a checkpoint
of a SubLoRA model only needs α, θ₀ and the seed.

Generation uses a local CPU `torch.Generator` seeded from a hash of (seed, tag): it never touches the
global torch RNG (which training code seeds and consumes) and gives the same numbers on every device and
in every process; tensors are moved to the target device afterwards.

Scaling convention: every column has unit norm in expectation, E‖P·e_i‖² = 1, so a step in α of a given
size moves θ by about the same size whatever D and d are (`kron_qr`: orthonormal before truncation).

Kinds (see `make_projector`): "kron" (Gaussian Kronecker factors), "kron_qr" (QR-orthonormalised
Kronecker factors), "dense" (lazy, chunked Gaussian reference for small D and for tests), "rdkronqr" (the
SubLoRA reference code's default: floor-sized orthonormal Kronecker block, a dense block for the leftover
rows and columns, and a seeded row permutation).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import Tensor, nn

KINDS: tuple[str, ...] = ("kron", "kron_qr", "dense", "rdkronqr")

# Elements of one generated chunk of the dense projector (16 MiB in float32): bounds its peak memory.
DEFAULT_CHUNK_ELEMS = 1 << 22


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed from (seed, tags), stable across processes and Python versions.

    A hash, not arithmetic like seed*K + k: distinct (seed, tag) pairs must not collide, and Python's
    built-in hash() of strings is salted per process.
    """
    key = "/".join(str(t) for t in (seed, *tags)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def _generator(seed: int, *tags: object) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, *tags))
    return gen


def _near_square(n: int) -> tuple[int, int]:
    """(n1, n2) with n1 = ceil(sqrt(n)), n2 = ceil(n / n1): n ≤ n1·n2 < n + n1, both ≈ sqrt(n)."""
    n1 = math.isqrt(n - 1) + 1 if n > 1 else 1
    return n1, -(-n // n1)


def _orthonormal_columns(g: Tensor) -> Tensor:
    """Q of g = QR (float64 in, float64 out), sign-fixed so that Q is Haar-distributed and independent of
    the LAPACK sign convention; g must have at least as many rows as columns."""
    q, r = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


class Projector(nn.Module):
    """A seeded linear map α ∈ R^d ↦ P·α ∈ R^D; differentiable in α, holding no trainable state."""

    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        if D < 1 or d < 1:
            raise ValueError(f"projector needs D >= 1 and d >= 1, got D={D}, d={d}")
        self.D, self.d, self.seed = int(D), int(d), int(seed)

    def forward(self, alpha: Tensor) -> Tensor:  # pragma: no cover - abstract
        """P·α as a tensor of shape (D,); gradients flow to α."""
        raise NotImplementedError

    def materialize(self) -> Tensor:  # pragma: no cover - abstract
        """The dense (D, d) matrix P. Tests and small D only."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of the tensors this projector holds (its factors), not counting transient work memory."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _check_alpha(self, alpha: Tensor) -> None:
        if alpha.dim() != 1 or alpha.shape[0] != self.d:
            raise ValueError(f"alpha must have shape ({self.d},), got {tuple(alpha.shape)}")

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, seed={self.seed}, nbytes={self.nbytes()}"


class KronProjector(Projector):
    """P = (L ⊗ R) restricted to its first D rows and d columns.

    With d ≤ d1·d2 and D ≤ D1·D2 (each factor ≈ ceil(sqrt(·))), α is zero-padded to d1·d2 and
        P·α = vec(L · reshape(α, d1, d2) · Rᵀ)[:D],   L ∈ R^{D1×d1}, R ∈ R^{D2×d2},
    with row-major (C-order) reshape and vec, which is exactly (L ⊗ R)·vec(A). Held memory is
    O(D1·d1 + D2·d2) ≈ 2·sqrt(D·d) numbers; forward/backward cost O(D·sqrt(d)).

    Scaling: column (p, q) of L ⊗ R is L[:, p] ⊗ R[:, q], whose norm is ‖L[:, p]‖·‖R[:, q]‖.
      - Gaussian (orthonormal=False): L ~ N(0, 1/D1), R ~ N(0, 1/D2), so each of the D1·D2 entries of a
        column has variance 1/(D1·D2); truncation keeps D of them, so L is multiplied by
        sqrt(D1·D2/D) to make E‖P·e_i‖² = 1 exactly (the factor is < 1 + 1/sqrt(D)).
      - orthonormal=True: L and R get orthonormal columns by QR (Haar-distributed, via the sign fix), so
        L ⊗ R has exactly orthonormal columns; truncation to D rows drops fewer than D1 of its D1·D2 rows,
        so PᵀP = I − (dropped rows)ᵀ(dropped rows): columns lose (D1·D2 − D)/(D1·D2) < 1/D2 of their
        squared norm on average. The dropped rows all share L's last row, so the worst direction loses
        more (~0.2–0.3 at D ≈ 10⁴); exact only when D = D1·D2. No rescale: it would spoil that case.
    """

    def __init__(self, D: int, d: int, seed: int, *, orthonormal: bool = False,
                 dtype: torch.dtype = torch.float32):
        super().__init__(D, d, seed)
        self.orthonormal = orthonormal
        self.D1, self.D2 = _near_square(self.D)
        self.d1, self.d2 = _near_square(self.d)
        if orthonormal and (self.D1 < self.d1 or self.D2 < self.d2):
            raise ValueError(
                f"orthonormal Kronecker projector needs D1 >= d1 and D2 >= d2, but D={self.D} factors as "
                f"{self.D1}x{self.D2} and d={self.d} as {self.d1}x{self.d2}: at most D1*D2 orthonormal "
                f"columns exist. Use d <= D (roughly), or orthonormal=False (kind 'kron')")
        L = self._factor(self.D1, self.d1, "L")
        R = self._factor(self.D2, self.d2, "R")
        if not orthonormal:
            L = L * math.sqrt(self.D1 * self.D2 / self.D)
        # non-persistent: regenerated from the seed, so never saved; buffers never require grad
        self.register_buffer("L", L.to(dtype), persistent=False)
        self.register_buffer("R", R.to(dtype), persistent=False)

    def _factor(self, rows: int, cols: int, tag: str) -> Tensor:
        # separate generator per factor: L does not depend on how many numbers R consumed, and vice versa
        gen = _generator(self.seed, "kron", tag, self.D, self.d)
        if not self.orthonormal:
            return torch.randn(rows, cols, generator=gen) / math.sqrt(rows)
        return _orthonormal_columns(torch.randn(rows, cols, generator=gen, dtype=torch.float64))

    def forward(self, alpha: Tensor) -> Tensor:
        self._check_alpha(alpha)
        a = alpha.to(self.L.dtype)
        a = nn.functional.pad(a, (0, self.d1 * self.d2 - self.d)).reshape(self.d1, self.d2)
        # (L·A)·Rᵀ: autograd keeps only L·A (D1×d2) besides the factors — never anything D×d
        return ((self.L @ a) @ self.R.T).reshape(-1)[: self.D]

    def materialize(self) -> Tensor:
        return torch.kron(self.L, self.R)[: self.D, : self.d]

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, orthonormal={self.orthonormal}, "
                f"L={self.D1}x{self.d1}, R={self.D2}x{self.d2}")


class _ChunkedMatVec(torch.autograd.Function):
    """y = P·α where P's row-chunks are regenerated on demand, in forward and again in backward.

    A custom Function because plain autograd would save every chunk for backward (the whole D×d
    matrix); here nothing is saved, and backward recomputes Pᵀ·g chunk by chunk.
    """

    @staticmethod
    def forward(ctx: Any, alpha: Tensor, proj: DenseProjector) -> Tensor:
        ctx.proj = proj
        out = torch.empty(proj.D, dtype=alpha.dtype, device=alpha.device)
        for k in range(proj.n_chunks):
            lo, hi = proj.chunk_bounds(k)
            out[lo:hi] = proj.chunk(k, alpha.dtype, alpha.device) @ alpha
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        proj: DenseProjector = ctx.proj
        grad = torch.zeros(proj.d, dtype=grad_out.dtype, device=grad_out.device)
        for k in range(proj.n_chunks):
            lo, hi = proj.chunk_bounds(k)
            grad += proj.chunk(k, grad_out.dtype, grad_out.device).T @ grad_out[lo:hi]
        return grad, None


class DenseProjector(Projector):
    """Reference projector P = G/sqrt(D), G i.i.d. N(0, 1), so E‖P·e_i‖² = 1; stores nothing.

    Rows come in chunks of `chunk_rows` = max(1, chunk_elems // d); chunk k is drawn from its own seed
    (seed, k), so any chunk can be regenerated alone. P depends on (seed, D, d, chunk_elems); keep the
    default chunk_elems for reproducibility. Peak memory of forward and backward is one chunk. Computes
    in α's dtype, on α's device (chunks are generated on CPU and moved: slow on GPU, it is a reference).
    """

    def __init__(self, D: int, d: int, seed: int, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS):
        super().__init__(D, d, seed)
        self.chunk_elems = int(chunk_elems)
        self.chunk_rows = max(1, self.chunk_elems // self.d)
        self.n_chunks = -(-self.D // self.chunk_rows)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Row range [lo, hi) of chunk k."""
        lo = k * self.chunk_rows
        return lo, min(lo + self.chunk_rows, self.D)

    def chunk(self, k: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """Rows [lo, hi) of P, shape (hi − lo, d), regenerated from (seed, k)."""
        lo, hi = self.chunk_bounds(k)
        gen = _generator(self.seed, "dense", self.D, self.d, self.chunk_rows, k)
        g = torch.randn(hi - lo, self.d, generator=gen)
        return (g / math.sqrt(self.D)).to(dtype=dtype, device=device)

    def forward(self, alpha: Tensor) -> Tensor:
        self._check_alpha(alpha)
        return _ChunkedMatVec.apply(alpha, self)

    def materialize(self) -> Tensor:
        return torch.cat([self.chunk(k) for k in range(self.n_chunks)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_rows={self.chunk_rows}, n_chunks={self.n_chunks}"


class RdKronQRProjector(Projector):
    """P = Π · diag(L ⊗ R, E): the SubLoRA reference code's default projector ("rdkronqr"), written anew.

    With D1 = ⌊√D⌋ and d1 = ⌊√d⌋ (floor, where `kron` takes ceilings and truncates):
      - L, R ∈ R^{D1×d1}, QR-orthonormal (columns when D1 ≥ d1, else rows, as the reference does for d > D);
        L ⊗ R maps the first d1² coordinates of α onto the first D1² rows, exactly orthonormally;
      - E ∈ R^{(D − D1²)×(d − d1²)}, Gaussian with E‖column‖² = 1, maps the leftover coordinates onto the
        leftover rows: block-diagonal, so a leftover coordinate never reaches the Kronecker rows;
      - Π permutes the D rows (a seeded random permutation), so the leftover rows are spread over the model.
    When D is a perfect square and d is not, the last d − d1² coordinates of α reach no row (they are inert);
    when d is a perfect square and D is not, D − D1² parameters stay at θ₀. Both as in the reference.
    Held memory: 2·D1·d1 + |E| ≤ 2√(D·d) + 4√(D·d) numbers, plus the permutation (D int64).
    """

    def __init__(self, D: int, d: int, seed: int, *, dtype: torch.dtype = torch.float32):
        super().__init__(D, d, seed)
        self.D1, self.d1 = math.isqrt(self.D), math.isqrt(self.d)
        self.K = self.D1 * self.D1  # rows of the Kronecker block
        rows, cols = self.D - self.K, self.d - self.d1 * self.d1
        L, R = self._factor("L"), self._factor("R")
        gen = _generator(self.seed, "rdkronqr", "E", self.D, self.d)
        E = torch.randn(rows, cols, generator=gen) / math.sqrt(max(rows, 1))
        self.register_buffer("L", L.to(dtype), persistent=False)
        self.register_buffer("R", R.to(dtype), persistent=False)
        self.register_buffer("E", E.to(dtype), persistent=False)
        # an attribute, not a buffer: `.to(float64)` must not touch it; moved to α's device on first use
        self.perm = torch.randperm(self.D, generator=_generator(self.seed, "rdkronqr", "perm", self.D, self.d))
        self._perm_on: dict[torch.device, Tensor] = {}

    def _factor(self, tag: str) -> Tensor:
        gen = _generator(self.seed, "rdkronqr", tag, self.D, self.d)
        g = torch.randn(self.D1, self.d1, generator=gen, dtype=torch.float64)
        return _orthonormal_columns(g) if self.D1 >= self.d1 else _orthonormal_columns(g.T).T

    def _perm(self, device: torch.device) -> Tensor:
        if device not in self._perm_on:
            self._perm_on[device] = self.perm.to(device)
        return self._perm_on[device]

    def _split(self, alpha: Tensor) -> tuple[Tensor, Tensor]:
        a = alpha.to(self.L.dtype)
        return a[: self.d1 * self.d1].reshape(self.d1, self.d1), a[self.d1 * self.d1 :]

    def forward(self, alpha: Tensor) -> Tensor:
        self._check_alpha(alpha)
        x, rest = self._split(alpha)
        y = torch.cat([((self.L @ x) @ self.R.T).reshape(-1), self.E @ rest])
        return y[self._perm(y.device)]

    def rows(self, alpha: Tensor, lo: int, hi: int) -> Tensor:
        """(P·α)[lo:hi] without the other rows: row i is row perm[i] of the block-diagonal map, and a
        Kronecker row a·D1 + b is L[a] · (X·Rᵀ)[:, b], so only X·Rᵀ (d1×D1) is formed."""
        x, rest = self._split(alpha)
        idx = self._perm(alpha.device)[lo:hi]
        kron = idx < self.K
        out = torch.zeros(hi - lo, dtype=self.L.dtype, device=alpha.device)
        k = idx[kron]
        if k.numel():
            z = x @ self.R.T
            out[kron] = (self.L[k // self.D1] * z[:, k % self.D1].T).sum(-1)
        e = idx[~kron] - self.K
        if e.numel():
            out[~kron] = self.E[e] @ rest
        return out

    def materialize(self) -> Tensor:
        block = torch.zeros(self.D, self.d, dtype=self.L.dtype)
        block[: self.K, : self.d1 * self.d1] = torch.kron(self.L, self.R)
        block[self.K :, self.d1 * self.d1 :] = self.E
        return block[self.perm]

    def nbytes(self) -> int:
        return super().nbytes() + self.perm.numel() * self.perm.element_size()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, L=R={self.D1}x{self.d1}, E={tuple(self.E.shape)}, "
                f"permuted rows")


def make_projector(kind: str, D: int, d: int, seed: int) -> Projector:
    """The projector of `kind` (one of KINDS) mapping R^d to R^D, generated from `seed`."""
    if kind == "kron":
        return KronProjector(D, d, seed)
    if kind == "kron_qr":
        return KronProjector(D, d, seed, orthonormal=True)
    if kind == "dense":
        return DenseProjector(D, d, seed)
    if kind == "rdkronqr":
        return RdKronQRProjector(D, d, seed)
    raise ValueError(f"unknown projector kind {kind!r}; valid kinds: {', '.join(KINDS)}")
