"""SubLoRA random projectors: reproducibility from the seed, forward/backward against the dense matrix,
the scaling and orthonormality conventions, memory that grows like sqrt(D·d), and an empty state dict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raysweep.adapters.sublora import projectors as pj
from raysweep.adapters.sublora.projectors import DenseProjector, KronProjector, make_projector

D, d = 300, 20  # small: D1×D2 = 18×17 = 306 > D (truncation is exercised), d1×d2 = 5×4 = d


def _probe(proj: pj.Projector) -> torch.Tensor:
    # a fixed α, independent of the global RNG
    return torch.linspace(-1.0, 1.0, proj.d)


@pytest.mark.parametrize("kind", pj.KINDS)
def test_same_seed_same_projector(kind):
    a, b = make_projector(kind, D, d, seed=7), make_projector(kind, D, d, seed=7)
    assert torch.equal(a.materialize(), b.materialize())
    assert torch.equal(a(_probe(a)), b(_probe(b)))


@pytest.mark.parametrize("kind", pj.KINDS)
def test_different_seed_different_projector(kind):
    a, b = make_projector(kind, D, d, seed=7), make_projector(kind, D, d, seed=8)
    # entries have std ~ 1/sqrt(D) ≈ 0.06: two independent draws differ by far more than 1e-3
    assert (a.materialize() - b.materialize()).abs().max().item() > 1e-3


@pytest.mark.parametrize("kind", pj.KINDS)
def test_generation_ignores_global_rng(kind):
    torch.manual_seed(0)
    a = make_projector(kind, D, d, seed=3).materialize()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    b = make_projector(kind, D, d, seed=3).materialize()
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())  # the global stream was not consumed


def test_same_in_a_fresh_process():
    code = ("from raysweep.adapters.sublora import projectors as pj\n"
            "for k in pj.KINDS:\n"
            "    print(repr(pj.make_projector(k, 300, 20, 11).materialize().double().sum().item()))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root).stdout
    here = [repr(make_projector(k, D, d, 11).materialize().double().sum().item()) for k in pj.KINDS]
    assert out.split() == here


# (D, d): truncated, both exactly factored, trivial, d > D (orthonormal impossible, so not for kron_qr)
FORWARD_CASES = [(k, n, m) for k in pj.KINDS for n, m in [(D, d), (324, 16), (1, 1), (37, 50)]
                 if not (k == "kron_qr" and m > n)]


@pytest.mark.parametrize(("kind", "n", "m"), FORWARD_CASES)
def test_forward_equals_dense_matrix(kind, n, m):
    proj = make_projector(kind, n, m, seed=5)
    P = proj.materialize()
    assert P.shape == (n, m)
    alpha = torch.randn(m, generator=torch.Generator().manual_seed(0))
    y = proj(alpha)
    assert y.shape == (n,)
    torch.testing.assert_close(y, P @ alpha, atol=1e-5, rtol=1e-5)


def test_dense_forward_over_many_chunks():
    proj = DenseProjector(D, d, seed=5, chunk_elems=64 * d)  # 64 rows per chunk: 4 full + 1 partial
    assert (proj.chunk_rows, proj.n_chunks) == (64, 5)
    alpha = _probe(proj)
    torch.testing.assert_close(proj(alpha), proj.materialize() @ alpha, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", pj.KINDS)
def test_gradient_is_transpose_times_grad_out(kind):
    proj = make_projector(kind, D, d, seed=2)
    gen = torch.Generator().manual_seed(1)
    alpha = torch.randn(d, generator=gen).requires_grad_()
    grad_out = torch.randn(D, generator=gen)
    proj(alpha).backward(grad_out)
    torch.testing.assert_close(alpha.grad, proj.materialize().T @ grad_out, atol=1e-5, rtol=1e-5)


def test_dense_autograd_function_passes_gradcheck():
    proj = DenseProjector(40, 6, seed=0, chunk_elems=6 * 16)  # 3 chunks
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(proj, (alpha,))


def test_kron_qr_exactly_orthonormal_when_D_factors_exactly():
    proj = make_projector("kron_qr", 324, d, seed=4)  # 324 = 18·18: no truncation
    P = proj.materialize()
    torch.testing.assert_close(P.T @ P, torch.eye(d), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_kron_qr_truncation_removes_exactly_the_dropped_rows(seed):
    proj = KronProjector(D, d, seed, orthonormal=True)
    P = proj.materialize()
    full = torch.kron(proj.L, proj.R)[:, :d]  # exactly orthonormal columns, D1·D2 = 306 rows
    dropped = full[D:]
    torch.testing.assert_close(full.T @ full, torch.eye(d), atol=1e-5, rtol=0)
    # truncation subtracts exactly the Gram matrix of the D1·D2 − D = 6 dropped rows from I ...
    torch.testing.assert_close(P.T @ P, torch.eye(d) - dropped.T @ dropped, atol=1e-5, rtol=0)
    # ... whose mean diagonal has expectation (D1·D2 − D)/(D1·D2) = 6/306 ≈ 0.020 (max over 1000 seeds: 0.065)
    assert (1 - (P.T @ P).diagonal()).mean().item() < 0.08


def test_kron_qr_near_orthonormal_at_a_realistic_size():
    # D = 9950 → 100×100 (50 rows, 0.5 %, dropped), d = 400 → 20×20. Over 100 seeds: mean column-norm²
    # deficit ≤ 0.0093 (expected 0.005), largest |PᵀP − I| entry ≤ 0.095; the bounds leave 2× room.
    # (Not spectrally: dropped rows all share L's last row, so one direction can lose up to ~0.3.)
    P = make_projector("kron_qr", 9950, 400, seed=0).materialize().double()
    err = P.T @ P - torch.eye(400, dtype=torch.float64)
    assert -err.diagonal().mean().item() < 0.02
    assert err.abs().max().item() < 0.2


@pytest.mark.parametrize("kind", pj.KINDS)
def test_columns_have_unit_norm_on_average(kind):
    # kron: mean‖col‖² = mean‖L_p‖²·mean‖R_q‖²·c, relative std ≈ 2·sqrt(2/(D1·d1)) = 0.045 here
    proj = make_projector(kind, 10_000, 400, seed=9)
    sq = proj.materialize().pow(2).sum(0)
    assert abs(sq.mean().item() - 1.0) < 0.15
    assert abs(sq.sqrt().mean().item() - 1.0) < 0.15


def test_kron_memory_grows_like_sqrt_D_times_d():
    big = KronProjector(1_000_000, 50_000, seed=0)
    # L: 1000×224, R: 1000×224 floats = 1.79 MB, vs a dense matrix of 200 GB
    assert big.nbytes() == 4 * (1000 * 224 + 1000 * 224)
    assert big.nbytes() < 1e-4 * 50_000 * 1_000_000 * 4
    sizes = [KronProjector(n, 10_000, seed=0).nbytes() for n in (250_000, 1_000_000, 4_000_000)]
    assert sizes == [400_000, 800_000, 1_600_000]  # D ×4 → nbytes ×2
    assert all(b / a <= 2.01 for a, b in zip(sizes, sizes[1:], strict=False))


def _saved_numel(proj: pj.Projector) -> int:
    """Elements autograd saves for backward during one forward (what a training step keeps alive)."""
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        proj(torch.ones(proj.d, requires_grad=True)).sum().backward()
    return sum(saved)


def test_dense_never_holds_the_full_matrix(monkeypatch):
    proj = DenseProjector(D, d, seed=1, chunk_elems=50 * d)
    assert proj.nbytes() == 0 and list(proj.buffers()) == []
    assert _saved_numel(proj) == 0  # autograd keeps no chunk alive
    shapes: list[tuple[int, ...]] = []
    original = DenseProjector.chunk

    def spy(self, k, *args, **kwargs):
        out = original(self, k, *args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(DenseProjector, "chunk", spy)
    proj(torch.ones(d, requires_grad=True)).sum().backward()
    # 6 chunks regenerated in forward, again in backward; none larger than chunk_elems
    assert len(shapes) == 2 * proj.n_chunks == 12
    assert max(r * c for r, c in shapes) <= proj.chunk_elems < D * d


def test_kron_autograd_saves_far_less_than_dense():
    proj = KronProjector(40_000, 400, seed=0)  # dense would be 16M elements
    assert _saved_numel(proj) < 40_000 * 400 / 100


def test_orthonormal_with_too_small_D_raises():
    with pytest.raises(ValueError, match=r"D1 >= d1 and D2 >= d2.*D=10 factors as 4x3.*d=100 as 10x10"):
        make_projector("kron_qr", 10, 100, seed=0)
    make_projector("kron", 10, 100, seed=0)  # Gaussian factors have no such constraint


@pytest.mark.parametrize("kind", pj.KINDS)
def test_state_is_regenerated_not_saved(kind):
    proj = make_projector(kind, D, d, seed=0)
    assert proj.state_dict() == {}
    assert list(proj.parameters()) == []
    assert not any(b.requires_grad for b in proj.buffers())
    # buffers still follow .to(): the factors change dtype with the module
    proj64 = proj.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in proj64.buffers())


def test_make_projector_rejects_unknown_kind_and_bad_sizes():
    with pytest.raises(ValueError, match="valid kinds: kron, kron_qr, dense"):
        make_projector("fastfood", D, d, seed=0)
    with pytest.raises(ValueError, match="D >= 1 and d >= 1"):
        make_projector("kron", 0, d, seed=0)


@pytest.mark.parametrize("kind", pj.KINDS)
def test_alpha_shape_is_checked(kind):
    with pytest.raises(ValueError, match=r"alpha must have shape \(20,\)"):
        make_projector(kind, D, d, seed=0)(torch.zeros(21))
