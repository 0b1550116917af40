"""The model-aware preflight (inputs/model_facts.py, cli/model_check.py): what a model directory's files say,
read without torch and cached per directory; the adapter judged against them; token ids against the
tokenizer; chat roles against the template. And `plan` on a local model: fast, no torch, same verdicts as run.
The command-line table of mistakes is tests/test_bad_input.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from raysweep import config as C
from raysweep.cli import model_check
from raysweep.inputs import data, model_facts, models
from raysweep.inputs.examples import DEFAULT_CHAT_TEMPLATE
from tests.conftest import ROOT
from tests.helpers import make_gpt2_model


@pytest.fixture(scope="module")
def gpt2_dir(builtin_model_dir, tmp_path_factory) -> Path:
    return make_gpt2_model(tmp_path_factory.mktemp("gpt2") / "gpt2", builtin_model_dir)


def _adapter(**values) -> C.AdapterConfig:
    return C.AdapterConfig(**values)


def test_the_builtin_models_facts(builtin_model_dir):
    facts = model_facts.inspect(builtin_model_dir, use_cache=False)
    assert facts.problems == []
    assert facts.vocab_size == 307 and facts.config["model_type"] == "llama"
    # every tensor of model.safetensors, counted from its header: 2 layers of 7 linear layers + embedding + norms
    assert facts.params == 307 * 128 + 2 * (4 * 128 * 128 + 3 * 128 * 256 + 2 * 128) + 128
    assert facts.shapes["model.layers.0.mlp.down_proj"] == [128, 256]
    assert "model.layers.0.input_layernorm" in facts.modules and "model.layers.0.input_layernorm" not in facts.shapes
    assert facts.tool_role  # its template renders any role


def test_facts_are_cached_per_directory_until_a_file_changes(builtin_model_dir, tmp_path, monkeypatch):
    import shutil

    model = Path(shutil.copytree(builtin_model_dir, tmp_path / "model"))
    first = model_facts.inspect(model)
    reads = []
    monkeypatch.setattr(model_facts, "_read", lambda d, c: reads.append(d) or model_facts.ModelFacts(str(d)))
    assert model_facts.inspect(model) == first and reads == []  # the second look reads one JSON file
    (model / "tokenizer.json").write_text("{broken")  # a changed file (size, mtime): a new key, read again
    model_facts.inspect(model)
    assert reads == [model.resolve()]


@pytest.mark.parametrize(("adapter", "expected"), [
    ({"target_modules": "all-linear", "r": 8}, []),
    ({"target_modules": ["q_proj", "v_proj"], "r": 64}, []),
    ({"target_modules": [r"model\.layers\.\d+\.self_attn\.(q|v)_proj"], "r": 8}, ["matches no layer"]),
    ({"target_modules": r"model\.layers\.\d+\.self_attn\.(q|v)_proj", "r": 8}, []),  # one pattern: peft's regex
    ({"target_modules": "model.layers.(", "r": 8}, ["is not a regular expression"]),
    ({"target_modules": ["lm_head"], "r": 8}, []),  # tied to the embedding: not stored, still a module
    ({"target_modules": ["mlp.down_proj"], "r": 8}, []),  # a dotted suffix, as peft matches it
    ({"target_modules": ["q_proj", "qproj"], "r": 8}, ["'qproj' matches no layer", "did you mean 'q_proj'"]),
    ({"target_modules": ["norm"], "r": 8}, ["no 2-D weight"]),
    ({"target_modules": "all-linear", "r": 129}, ["above min(in, out) of every layer", "use adapter.r ≤ 128"]),
    ({"target_modules": ["q_proj"], "r": 128}, []),  # q_proj alone: 32k per 128-rank module, well below the base
    ({"target_modules": "all-linear", "r": 100}, ["1.2× the whole base model's 368k", "lower adapter.r"]),
])
def test_the_adapter_against_the_builtin_model(builtin_model_dir, adapter, expected):
    facts = model_facts.inspect(builtin_model_dir)
    problems = model_check.adapter_problems(facts, _adapter(**adapter), "builtin")
    assert len(problems) == (1 if expected else 0), problems
    for part in expected:
        assert part in problems[0], problems


def test_a_gpt2_models_conv1d_layers(gpt2_dir):
    facts = model_facts.inspect(gpt2_dir)
    assert facts.problems == [] and facts.shapes["transformer.h.0.attn.c_attn"] == [32, 96]  # Conv1D: (in, out)
    typo = model_check.adapter_problems(facts, _adapter(target_modules=["c_atn"]), "gpt2")
    assert len(typo) == 1 and "did you mean 'c_attn'" in typo[0] and "c_fc" in typo[0]
    assert model_check.adapter_problems(facts, _adapter(target_modules=["c_attn"], r=8), "gpt2") == []
    # all-linear leaves out the embeddings (wte: vocab rows, wpe: positions) and the tied head
    adapted, _ = model_check._adapted(facts, "all-linear", "gpt2")
    assert {n.rpartition(".")[2] for n in adapted} == {"c_attn", "c_proj", "c_fc"}
    wide = model_check.adapter_problems(facts, _adapter(r=33), "gpt2")
    assert len(wide) == 1 and "use adapter.r ≤ 32" in wide[0]


def test_a_model_without_safetensors_is_read_with_torch_once(gpt2_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = Path(shutil.copytree(gpt2_dir, tmp_path / "bin"))
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    facts = model_facts.inspect(model)
    assert facts.problems == [] and facts.shapes["transformer.h.0.attn.c_attn"] == [32, 96]


@pytest.mark.parametrize(("template", "tool"), [
    (DEFAULT_CHAT_TEMPLATE, True),
    ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('no') }}{% endif %}"
     "{{ m['content'] }}{% endfor %}", False),
    ("{% for m in messages %}{% if m['role'] in ['user', 'assistant'] %}{{ m['content'] }}{% endif %}{% endfor %}",
     False),  # a tool message would be silently dropped
    ("{% for m in messages %}{{ m.content }}{% endfor %}{{ undefined_function() }}", True),  # no verdict: allowed
])
def test_the_template_decides_whether_tool_is_a_role(template, tool):
    assert model_facts.renders_tool(template, {"eos_token": "</s>"}) is tool


def test_chat_roles_are_checked_with_file_and_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                       {"role": "tool", "content": "t"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(ok) + "\n")
    cfg = {"task": "chat", "train_file": str(path), "validation_file": None}
    assert data.check_files(cfg) == []
    (problem,) = data.check_files(cfg, roles=data.CHAT_ROLES[:3])
    assert f"{path}:1: role 'tool' is not one of system, user, assistant" in problem and "'tool' messages" in problem


def test_token_ids_are_checked_against_the_vocabulary_and_the_scan_is_cached(tmp_path, monkeypatch):
    (tmp_path / "train.bin").write_bytes(np.array([1, 2, 500, 3] * 8, dtype=np.uint16).tobytes())
    (tmp_path / "val.bin").write_bytes(np.arange(30, dtype=np.uint16).tobytes())
    cfg = {"task": "tokens", "data_dir": str(tmp_path), "max_seq_len": 8, "max_train_examples": None,
           "max_eval_examples": None}
    assert data.check_token_vocab(cfg, 501) == []
    (problem,) = data.check_token_vocab(cfg, 500, model_check.cached_max_id)
    assert "train.bin' holds token id 500" in problem and "tokenizer has 500 tokens" in problem
    # the example limit bounds what a trial reads: 500 is in the first block, 29 is val.bin's largest id
    assert len(data.check_token_vocab(cfg | {"max_train_examples": 1}, 30, model_check.cached_max_id)) == 1
    monkeypatch.setattr(data.TokenBlocks, "max_id", lambda self, chunk=0: pytest.fail("scanned again"))
    assert data.check_token_vocab(cfg, 500, model_check.cached_max_id) == [problem]


def test_a_hub_id_not_on_this_machine_has_no_facts_yet():
    assert models.local_files("no-such-org/no-such-model") == (None, False)
    assert models.facts("no-such-org/no-such-model") is None


def test_plan_on_a_local_model_is_fast_imports_no_torch_and_refuses_what_run_refuses(gpt2_dir, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"train: {{max_steps: 10}}\nmodel: {{name_or_path: {gpt2_dir}}}\n"
                    "adapter: {target_modules: [c_attn]}\n")
    code = textwrap.dedent(f"""
        import sys, time
        t = time.perf_counter()
        from raysweep.__main__ import main
        codes = [main(["plan", {str(grid)!r}]), main(["plan", {str(grid)!r}, "adapter.target_modules=[c_atn]"])]
        print(codes, round(time.perf_counter() - t, 2),
              sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
    """)
    # a cache of its own: the first look reads the headers and the tokenizer, the second the cached facts
    env = dict(os.environ, COLUMNS="200", RAYSWEEP_CACHE=str(tmp_path / "cache"))
    for _ in range(2):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=120)
        wall = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr[-3000:]
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("[0, 2]") and last.endswith("[]"), proc.stdout  # no torch, transformers, peft
        assert "'c_atn' matches no layer" in proc.stderr and "did you mean 'c_attn'" in proc.stderr
        assert wall < 10, wall  # ~1 s here (2 plans and the Python start); generous for a loaded CI machine
    assert len(list((tmp_path / "cache" / model_facts.CACHE_DIR).glob("model-*.json"))) == 1
