"""Every registered adapter on the builtin model: only adapter weights train, gradients reach them,
saving in peft format round-trips, merging equals the unmerged forward."""

from __future__ import annotations

import pytest
import torch

from raysweep import adapters
from raysweep.adapters.base import Adapter


def build(name: str, model_dir, r: int = 4):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = {"type": name, "r": r, "alpha": 2.0 * r, "dropout": 0.0, "target_modules": "all-linear"}
    adapter = adapters.get(name)(cfg)
    return adapter, adapter.build(base)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (2, 12), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def train_steps(model, n: int = 3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for i in range(n):
        loss = model(**batch(i)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_registry_lists_lora_and_dora_and_every_entry_is_an_adapter():
    assert {"lora", "dora"} <= set(adapters.names())
    for name in adapters.names():
        cls = adapters.get(name)
        assert issubclass(cls, Adapter) and cls.name == name and cls.description
    with pytest.raises(KeyError, match="known adapters"):
        adapters.get("nope")


@pytest.mark.parametrize("name", adapters.names())
def test_only_adapter_parameters_train(name, builtin_model_dir):
    adapter, model = build(name, builtin_model_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_steps(model)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    metrics = adapter.metrics(model)
    assert metrics["adapter/trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", adapters.names())
def test_gradients_reach_every_adapter_tensor(name, builtin_model_dir):
    _, model = build(name, builtin_model_dir)
    # B starts at zero in LoRA, so A gets no gradient on the first step; take one step first
    train_steps(model, 1)
    model(**batch(5)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing[:5]


def test_rank_sets_trainable_parameter_count(builtin_model_dir):
    a4, m4 = build("lora", builtin_model_dir, r=4)
    a8, m8 = build("lora", builtin_model_dir, r=8)
    n4, n8 = a4.metrics(m4)["adapter/trainable_params"], a8.metrics(m8)["adapter/trainable_params"]
    assert n8 == 2 * n4


@pytest.mark.parametrize("name", adapters.names())
def test_saved_adapter_reloads_with_peft_and_merge_matches(name, builtin_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, model = build(name, builtin_model_dir)
    train_steps(model)
    model.eval()
    with torch.no_grad():
        expected = model(**batch(9)).logits
    adapter.save(model, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch(9)).logits, expected, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert torch.allclose(merged(**batch(9)).logits, expected, atol=1e-4)
