"""Pruning maths and the masked adapter: importance on hand-computed values, exact sparsity per mask
kind, merged weights that keep every zero, masked forward == merged forward, masks computed once."""

from __future__ import annotations

import json

import pytest
import torch

from raysweep.adapters.masked import adapter as masked
from raysweep.adapters.masked import pruning
from raysweep.adapters.masked import store as mask_store
from raysweep.experiment import metrics as M
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.helpers import trial_config

W = torch.tensor([[0.5, -2.0, 0.1, 3.0],
                  [-1.0, 0.2, -0.3, 0.0],
                  [4.0, -0.5, 1.5, -0.05]])
G = torch.tensor([[1.0, 0.1, -2.0, 0.01],
                  [0.5, -4.0, 1.0, 7.0],
                  [0.0, 2.0, -0.1, 10.0]])


@pytest.mark.parametrize(("kind", "expected"), [
    ("magnitude", [[0.5, 2.0, 0.1, 3.0], [1.0, 0.2, 0.3, 0.0], [4.0, 0.5, 1.5, 0.05]]),
    ("gradient", [[1.0, 0.1, 2.0, 0.01], [0.5, 4.0, 1.0, 7.0], [0.0, 2.0, 0.1, 10.0]]),
    # |W·G| element by element: 0.5·1, 2·0.1, 0.1·2, 3·0.01 / 1·0.5, 0.2·4, 0.3·1, 0·7 / 4·0, 0.5·2, 1.5·0.1, 0.05·10
    ("taylor", [[0.5, 0.2, 0.2, 0.03], [0.5, 0.8, 0.3, 0.0], [0.0, 1.0, 0.15, 0.5]]),
])
def test_importance_on_a_3x4_weight(kind, expected):
    assert torch.allclose(pruning.importance(W, G, kind), torch.tensor(expected))


def test_magnitude_unstructured_prunes_the_smallest():
    keep = pruning.make_masks({"w": pruning.importance(W, None, "magnitude")}, 0.25, "unstructured")["w"]
    # 12 weights, 3 pruned: |0.0|, |0.05|, |0.1|
    assert (~keep).nonzero().tolist() == [[0, 2], [1, 3], [2, 3]]


def test_structured_prunes_whole_rows_by_total_importance():
    keep = pruning.make_masks({"w": pruning.importance(W, None, "magnitude")}, 0.34, "structured")["w"]
    # row L1 norms 5.6, 1.5, 6.05 -> round(0.34·3) = 1 row: row 1
    assert keep.tolist() == [[True] * 4, [False] * 4, [True] * 4]


def test_two_four_keeps_the_two_largest_of_every_group():
    keep = pruning.make_masks({"w": pruning.importance(W, None, "magnitude")}, 0.5, "2:4")["w"]
    assert keep.tolist() == [[False, True, False, True], [True, False, True, False], [True, False, True, False]]


SHAPES = {"a": (64, 128), "b": (128, 64), "c": (30, 16)}


@pytest.mark.parametrize("kind", ["unstructured", "structured", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_each_kind_hits_the_requested_sparsity(kind, sparsity):
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=g) for n, s in SHAPES.items()}
    masks = pruning.make_masks(scores, sparsity, kind, seed=3)
    for name, (rows, cols) in SHAPES.items():
        pruned = int((~masks[name]).sum())
        if kind == "structured":  # to the nearest whole row (round half up)
            assert pruned == int(sparsity * rows + 0.5) * cols
            assert ((~masks[name]).all(1) | masks[name].all(1)).all()  # rows are all-or-nothing
        else:  # exactly round(s·numel) weights in every layer
            assert pruned == int(sparsity * rows * cols + 0.5)


def test_global_scope_hits_the_sparsity_over_all_layers_together():
    scores = {"small": torch.full((10, 10), 0.1), "large": torch.full((10, 10), 5.0)}
    masks = pruning.make_masks(scores, 0.5, "unstructured", scope="global")
    assert pruning.mask_stats(masks)["sparsity"] == 0.5
    assert (~masks["small"]).all() and masks["large"].all()  # all low scores live in one layer


def test_random_masks_are_reproducible_from_the_seed():
    scores = {"a": torch.rand(20, 20)}
    a = pruning.make_masks(scores, 0.3, "random", seed=1)["a"]
    assert torch.equal(a, pruning.make_masks(scores, 0.3, "random", seed=1)["a"])
    assert not torch.equal(a, pruning.make_masks(scores, 0.3, "random", seed=2)["a"])


@pytest.mark.parametrize(("kind", "sparsity", "scope", "fragment"), [
    ("2:4", 0.3, "layer", "set adapter.sparsity to 0.5"),
    ("blocky", 0.3, "layer", "not known"),
    ("structured", 0.3, "global", "mask_scope 'global'"),
])
def test_bad_mask_options_name_the_fix(kind, sparsity, scope, fragment):
    assert fragment in pruning.check_mask_options(kind, sparsity, scope)


def test_store_computes_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.tensor([[True, False]])}, {"counts": []}

    key = {"importance": "magnitude", "mask": "unstructured", "sparsity": 0.5}
    results = [mask_store.get_or_compute(tmp_path, key, compute) for _ in range(5)]
    assert len(calls) == 1 and [r[2] for r in results] == [True, False, False, False, False]
    assert results[-1][1]["sparsity"] == 0.5 and torch.equal(results[-1][0]["w"], torch.tensor([[True, False]]))
    mask_store.get_or_compute(tmp_path, key | {"sparsity": 0.9}, compute)
    assert len(calls) == 2 and len(mask_store.computations(tmp_path / mask_store.MASKS_DIR)) == 2


# ------------------------------------------------------------------------------ the adapter


def masked_model(model_dir, tmp_path, **options):
    from transformers import AutoModelForCausalLM

    from raysweep.adapters.base import TrialContext

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = trial_config(adapter={"type": "masked", "r": 4, **options})
    adapter = masked.MaskedAdapter(cfg["adapter"])
    model = adapter.build(base)
    ids = torch.randint(5, 100, (4, 12), generator=torch.Generator().manual_seed(0))

    def batches(n, seed):
        yield {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

    ctx = TrialContext(config=cfg, device=torch.device("cpu"), batches=batches, evaluate=lambda m: {},
                       store=tmp_path)
    metrics = adapter.prepare(model, ctx)
    with torch.no_grad():  # a trained-looking adapter: B is zero at init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, adapter, ids, metrics, ctx


@pytest.mark.parametrize("kind", ["unstructured", "structured", "random"])
def test_merged_weights_keep_every_zero_and_forward_matches(builtin_model_dir, tmp_path, kind):
    model, adapter, ids, metrics, ctx = masked_model(builtin_model_dir, tmp_path, sparsity=0.6, mask=kind)
    assert metrics[M.MASK_ACHIEVED_SPARSITY] == pytest.approx(0.6, abs=0.01)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
    end_metrics, reports = adapter.on_train_end(model, ctx)
    assert end_metrics[M.MASK_VIOLATIONS] == 0
    report = reports[masked.VALIDATION_REPORT]
    assert report["layers"] and all(layer["violations"] == 0 for layer in report["layers"].values())
    merged = model.merge_and_unload()  # peft's own merge goes through the masked variant
    for name, keep in adapter.masks.items():
        weight = merged.get_submodule(name).weight
        assert (weight[~keep] == 0).all(), name
        assert (weight[keep] != 0).float().mean() > 0.99  # the update landed on the kept weights
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged, atol=1e-4)


def test_two_four_mask_survives_merge_and_unload_exactly(builtin_model_dir, tmp_path):
    """2:4 after peft's merge: in every group of 4 consecutive inputs exactly the 2 pruned weights are 0."""
    model, adapter, ids, metrics, ctx = masked_model(builtin_model_dir, tmp_path, sparsity=0.5, mask="2:4")
    assert metrics[M.MASK_ACHIEVED_SPARSITY] == 0.5
    assert adapter.on_train_end(model, ctx)[0][M.MASK_VIOLATIONS] == 0
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    for name, keep in adapter.masks.items():
        weight = merged.get_submodule(name).weight.detach()
        out_f, in_f = keep.shape
        groups = keep.reshape(out_f, in_f // 4, 4)
        assert (groups.sum(-1) == 2).all(), name  # the mask itself is 2:4
        assert torch.equal(weight != 0, keep), name  # zero exactly where pruned, nonzero where kept
        assert ((weight != 0).reshape(out_f, in_f // 4, 4).sum(-1) == 2).all(), name
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged, atol=1e-4)


def test_structured_cols_mask_survives_merge_as_whole_zero_columns(builtin_model_dir, tmp_path):
    model, adapter, ids, metrics, ctx = masked_model(builtin_model_dir, tmp_path, sparsity=0.25, mask="structured_cols")
    assert metrics[M.MASK_ACHIEVED_SPARSITY] == 0.25  # in_features 128 and 256: 0.25 of them exactly
    merged = model.merge_and_unload()
    for name, keep in adapter.masks.items():
        weight = merged.get_submodule(name).weight.detach()
        dead = ~keep.all(0)
        assert int(dead.sum()) == keep.shape[1] // 4 and (~keep[:, dead]).all(), name  # whole input columns
        assert (weight[:, dead] == 0).all() and (weight[:, ~dead] != 0).float().mean() > 0.99, name


def test_an_unmasked_update_would_be_caught(builtin_model_dir, tmp_path):
    model, adapter, ids, _, ctx = masked_model(builtin_model_dir, tmp_path, sparsity=0.5)
    name, (owner, _, _) = next(iter(adapter.layers.items()))
    owner.lora_mask.fill_(1.0)  # what plain LoRA on a pruned base does
    end_metrics, _ = adapter.on_train_end(model, ctx)
    assert end_metrics[M.MASK_VIOLATIONS] > 0


@pytest.mark.parametrize("importance", ["gradient", "taylor"])
def test_gradient_importance_uses_calibration_batches(builtin_model_dir, tmp_path, importance):
    model, adapter, *_ = masked_model(builtin_model_dir, tmp_path, sparsity=0.5, importance=importance)
    magnitude, mag_adapter, *_ = masked_model(builtin_model_dir, tmp_path / "m", sparsity=0.5)
    differs = [n for n in adapter.masks if not torch.equal(adapter.masks[n], mag_adapter.masks[n])]
    assert differs  # gradient information changed which weights survive
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_saved_adapter_reloads_masked(builtin_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, adapter, ids, _, _ = masked_model(builtin_model_dir, tmp_path, sparsity=0.7, mask="structured")
    adapter.save(model, tmp_path / "export")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), tmp_path / "export")
    masked.apply_saved_masks(reloaded, tmp_path / "export")
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
    merged = reloaded.merge_and_unload()
    name, keep = next(iter(adapter.masks.items()))
    assert (merged.get_submodule(name).weight[~keep] == 0).all()


def test_trials_share_one_mask_and_report_validation(tmp_path):
    """Three trials (two seeds, two ranks) on one mask key: one computation; every trial validates."""
    results = []
    for seed, r in [(0, 4), (1, 4), (0, 8)]:
        cfg = trial_config(adapter={"type": "masked", "r": r, "sparsity": 0.3, "mask": "unstructured"},
                           train={"seed": seed, "max_steps": 6, "eval_every": 6})
        cfg["_store"] = str(tmp_path)
        session = LocalSession(tmp_path / f"trial-{seed}-{r}")
        results.append(run_training(cfg, session))
        final = session.results[-1]
        assert final[M.MASK_VIOLATIONS] == 0 and final[M.MASK_ACHIEVED_SPARSITY] == pytest.approx(0.3, abs=1e-3)
        report = json.loads((session.checkpoints[-1] / masked.VALIDATION_REPORT).read_text())
        assert report["violations"] == 0 and report["target_sparsity"] == 0.3
    assert len(mask_store.computations(tmp_path / mask_store.MASKS_DIR)) == 1


def test_prune_modules_selects_layers_by_name_suffix(builtin_model_dir, tmp_path):
    _, adapter, _, metrics, _ = masked_model(builtin_model_dir, tmp_path, sparsity=0.5, prune_modules=["q_proj"])
    assert list(adapter.layers) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert metrics[M.MASK_ACHIEVED_SPARSITY] == 0.5
    with pytest.raises(ValueError, match="prune_modules.*matches no linear layer"):
        masked_model(builtin_model_dir, tmp_path / "x", sparsity=0.5, prune_modules=["qproj"])
