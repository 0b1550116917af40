"""Sparse-mask conventions on hand inputs: structured masks over output rows or input columns, and how
calibration gradients are aggregated for gradient/taylor importance (|mean G| over the batches, not mean |G|).
Masks surviving peft's merge (2:4, columns) are in test_pruning.py, beside the other merge tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from raysweep.adapters.base import TrialContext
from raysweep.adapters.masked import pruning
from raysweep.adapters.masked import store as mask_store
from raysweep.adapters.masked.adapter import MaskedAdapter
from raysweep.adapters.masked.options import MaskOptions

W = torch.tensor([[0.5, -2.0, 0.1, 3.0],
                  [-1.0, 0.2, -0.3, 0.0],
                  [4.0, -0.5, 1.5, -0.05]])


def magnitude_mask(sparsity: float, kind: str) -> torch.Tensor:
    return pruning.make_masks({"w": pruning.importance(W, None, "magnitude")}, sparsity, kind)["w"]


def test_structured_cols_prunes_whole_input_columns_by_total_importance():
    # column L1 norms: 5.5, 2.7, 1.9, 3.05 -> round(0.5·4) = 2 columns: the 2nd and 3rd
    assert magnitude_mask(0.5, "structured_cols").tolist() == [[True, False, False, True]] * 3
    # 0.25 of 4 columns: one, the lowest (1.9)
    assert magnitude_mask(0.25, "structured_cols").tolist() == [[True, True, False, True]] * 3


def test_structured_is_structured_rows():
    # row L1 norms 5.6, 1.5, 6.05 -> round(0.34·3) = 1 row: row 1
    rows = magnitude_mask(0.34, "structured_rows")
    assert rows.tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert torch.equal(rows, magnitude_mask(0.34, "structured"))


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_structured_cols_hit_the_sparsity_to_one_column(sparsity):
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (64, 128), "b": (128, 64), "c": (30, 16)}
    masks = pruning.make_masks({n: torch.rand(s, generator=g) for n, s in shapes.items()}, sparsity, "structured_cols")
    for name, (rows, cols) in shapes.items():
        pruned = ~masks[name]
        assert int(pruned.sum()) == int(sparsity * cols + 0.5) * rows  # round half up, whole columns
        assert (pruned.all(0) | (~pruned).all(0)).all()  # columns are all-or-nothing


def test_structured_masks_refuse_the_global_scope():
    assert "mask_scope 'global' applies to unstructured masks only" in \
        pruning.check_mask_options("structured_cols", 0.5, "global")
    with pytest.raises(ValueError, match="structured_rows"):
        MaskOptions(mask="structured_rows", mask_scope="global")


def test_structured_rows_shares_the_mask_key_of_structured():
    def key(kind):
        return mask_store.mask_key(MaskOptions(mask=kind), {"name_or_path": "builtin"}, {}, ["q_proj"])

    assert key("structured_rows") == key("structured") != key("structured_cols")


# ------------------------------------------------------------------------- calibration gradients


class Toy(nn.Module):
    """loss = Σ sign·(W·x): ∂loss/∂W = sign · 1 ⊗ Σ_rows x, so each batch's gradient is known by hand."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(W)

    def forward(self, x, sign):
        return SimpleNamespace(loss=(sign * self.lin(x)).sum())


def calibration_gradient(batches: list[dict], importance: str = "gradient") -> torch.Tensor:
    adapter = MaskedAdapter({"type": "masked", "r": 4, "importance": importance, "sparsity": 0.5})
    model = Toy()
    adapter.layers = {"lin": (None, model.lin, False)}
    context = TrialContext(config={}, device=torch.device("cpu"), batches=lambda n, seed: iter(batches),
                           evaluate=lambda m: {}, store=None)
    grads = adapter._calibration_gradients(model, context)
    assert model.lin.weight.grad is None  # left clean for training
    return grads["lin"]


def batch(x, sign):
    return {"x": torch.tensor([x]), "sign": torch.tensor(float(sign))}


def test_opposite_gradients_of_two_batches_cancel():
    g = calibration_gradient([batch([1.0, 2.0, 3.0, 4.0], +1), batch([1.0, 2.0, 3.0, 4.0], -1)])
    assert torch.equal(g, torch.zeros(3, 4))
    assert torch.equal(pruning.importance(W, g, "gradient"), torch.zeros(3, 4))  # mean |G| would be |G|


def test_gradient_importance_is_the_absolute_mean_over_batches():
    # G1 = 1 ⊗ [1, 2, 3, 4], G2 = 1 ⊗ [3, 0, 1, −2]: mean [2, 1, 2, 1] (mean |G| would give 3 in the last column)
    g = calibration_gradient([batch([1.0, 2.0, 3.0, 4.0], +1), batch([3.0, 0.0, 1.0, -2.0], +1)])
    assert torch.equal(g, torch.tensor([[2.0, 1.0, 2.0, 1.0]] * 3))
    assert torch.equal(pruning.importance(W, g, "gradient"), torch.tensor([[2.0, 1.0, 2.0, 1.0]] * 3))
    assert torch.allclose(pruning.importance(W, g, "taylor"), (W * g).abs())  # |W · mean G|
