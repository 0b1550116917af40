"""The seed studies as grid files (search_spaces/papers/): each loads and expands to the count its header
states, and each runs a few steps with its model and data swapped for local tiny ones, so the files stay
valid as the code moves (every other key, adapter convention and option is the file's own)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raysweep import config as C
from raysweep.config import grid as G
from raysweep.experiment import metrics as M
from tests.conftest import ROOT

PAPERS = ROOT / "search_spaces" / "papers"
FILES = sorted(PAPERS.glob("*.yaml"))
EXPECTED = {"sora_qwen.yaml": 6, "sublora_gpt2.yaml": 30, "sparse_ft.yaml": 140, "qwen3_qlora_sft.yaml": 1}


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, s in enumerate(lines) if not s.startswith("#"))])


def test_the_four_seed_studies_are_there():
    assert {f.name for f in FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_paper_grid_expands_to_the_count_its_header_states(path):
    _, sweep, trials = C.load(path)
    assert len({t.label() for t in trials}) == len(trials)
    count = G.trial_count(sweep, trials)
    assert count == EXPECTED[path.name]
    text = header(path)
    # the header: launch command, the hardware it assumes, and plan's count on the plan line
    assert re.search(rf"python -m raysweep run +search_spaces/papers/{path.name}", text)
    assert "Hardware assumed:" in text
    plan_line = next(line for line in text.splitlines()
                     if re.search(rf"python -m raysweep plan +search_spaces/papers/{path.name}", line))
    assert re.search(rf"# {count} trials?\b", plan_line), plan_line
    # user paths are placeholders the header explains
    assert "PLACEHOLDER" in path.read_text() and "/path/to/" in path.read_text()


def _cells(trials) -> list[dict[str, Any]]:
    return [t.config.model_dump(mode="json") for t in trials]


def test_sora_qwen_is_the_seeds_six_runs():
    _, _, trials = C.load(PAPERS / "sora_qwen.yaml")
    got = sorted((c["adapter"]["type"], c["train"]["lr"], c["adapter"].get("lambda"), c["adapter"].get("convention"))
                 for c in _cells(trials))
    assert got == sorted([("lora", 3e-4, None, None), ("dora", 1e-4, None, None),
                          ("sora", 3e-4, 0.1, "sora_reference"), ("sora", 3e-4, 0.3, "sora_reference"),
                          ("sora", 3e-4, 0.5, "sora_reference"), ("sdora", 3e-4, 0.3, "sdora_reference")])
    for c in _cells(trials):
        assert (c["adapter"]["r"], c["adapter"]["alpha"], c["train"]["epochs"]) == (16, 32, 3)
        assert c["train"]["checkpoint_every"] == 500 and c["data"]["task"] == "chat"
        assert c["model"]["name_or_path"].startswith("Qwen/")
    # λ ∈ {0.1, 0.3, 0.5} scale the gates' lr (the reference's multiply-lr form), not an absolute per-step ξ
    assert {c["adapter"]["threshold"] for c in _cells(trials) if c["adapter"]["type"] == "sora"} == {"lr_scaled"}


def test_sublora_gpt2_is_two_budgets_five_allocations_three_seeds():
    _, _, trials = C.load(PAPERS / "sublora_gpt2.yaml")
    cells = _cells(trials)
    alloc = {(c["adapter"]["allocation_mode"], c["adapter"].get("allocation_ratio")) for c in cells}
    assert alloc == {("uniform", None), ("learned", None), ("fixed", 0.2), ("fixed", 0.5), ("fixed", 0.8)}
    assert {c["adapter"]["intrinsic_dim"] for c in cells} == {1000, 2000}
    assert {c["train"]["seed"] for c in cells} == {42, 123, 999}
    assert all(c["adapter"]["target_modules"] == ["c_attn"] and c["adapter"]["r"] == 8 for c in cells)
    assert all(c["adapter"]["bounds"] and c["data"]["task"] == "tokens" for c in cells)
    assert {c["model"]["name_or_path"] for c in cells} == {"gpt2"}


def test_sparse_ft_runs_every_distinct_configuration_once_with_its_own_mask():
    from raysweep.offline.masks import mask_identity

    _, _, trials = C.load(PAPERS / "sparse_ft.yaml")
    cells = _cells(trials)
    assert len({c["model"]["name_or_path"] for c in cells}) == 2
    kinds = {(c["adapter"]["mask"], c["adapter"]["importance"]) for c in cells}
    # a random mask ignores importance: one random line, scored masks by each importance
    assert kinds == {(m, i) for m in ("unstructured", "structured") for i in ("magnitude", "gradient", "taylor")} | {
        ("random", "magnitude")}
    assert sorted({c["adapter"]["sparsity"] for c in cells}) == pytest.approx([i / 10 for i in range(10)])
    assert len({mask_identity(G.run_config(t.config)) for t in trials}) == len(trials)  # `raysweep masks`: 140


def test_qwen3_qlora_sft_is_the_llama_factory_recipe():
    _, _, trials = C.load(PAPERS / "qwen3_qlora_sft.yaml")
    (c,) = _cells(trials)
    assert c["model"]["name_or_path"] == "Qwen/Qwen3-0.6B"
    assert (c["model"]["load_in_4bit"], c["model"]["bnb_4bit_quant_type"]) == (True, "nf4")
    assert (c["adapter"]["r"], c["adapter"]["alpha"], c["adapter"]["target_modules"]) == (16, 64, "all-linear")
    t = c["train"]
    assert (t["lr"], t["schedule"], t["bf16"], t["gradient_checkpointing"]) == (1.5e-4, "cosine", True, True)
    assert (t["eval_every"], t["checkpoint_every"], t["keep_last"]) == (200, 200, 2)


# ---------------------------------------------------------------------------------------------
# each file runs: model and data swapped for local tiny ones, a few steps, a few cells, no Ray

# what every file's run changes: the model, the data, the budget and the machine (nothing about the method)
TINY = ["model.name_or_path=builtin", "data.train_file=", "data.validation_file=", "data.data_dir=",
        "data.max_seq_len=32", "data.max_eval_examples=16", "train.epochs=", "train.max_steps=3",
        "train.batch_size=4", "train.eval_batch_size=16", "train.grad_accum_steps=1", "train.warmup_steps=1",
        "train.log_every=1", "resources.gpus_per_worker=0", "resources.cpus_per_worker=1"]


def _run(trials, tmp_path: Path, store: Path | None = None) -> list[Any]:
    import torch

    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    torch.set_num_threads(1)
    sessions = []
    for t in trials:
        cfg = G.run_config(t.config)
        if store is not None:
            cfg["_store"] = str(store)
        session = LocalSession(tmp_path / f"trial{t.index}")
        run_training(cfg, session)
        last = session.results[-1]
        assert last[M.TRAIN_STEP] == 3 and math.isfinite(last[M.EVAL_LOSS])
        assert (session.checkpoints[-1] / "adapter" / "adapter_config.json").is_file()
        assert (session.checkpoints[-1] / "best_adapter").is_dir()
        sessions.append(session)
    return sessions


def _pick(trials, wanted: Callable[[dict[str, Any]], Any], most: int = 4) -> list[Any]:
    """The first trial of each distinct `wanted(cell)` (None: skip), at most `most`: a few cells that cover
    the file's variants."""
    seen: dict[Any, Any] = {}
    for t in trials:
        key = wanted(t.cell)
        if key is not None and key not in seen:
            seen[key] = t
    assert seen and len(seen) <= most, list(seen)
    return list(seen.values())


def test_sora_qwen_runs(tmp_path, builtin_model_dir):
    _, _, trials = C.load(PAPERS / "sora_qwen.yaml", TINY + ["data.task=builtin"])
    picked = _pick(trials, lambda cell: cell["adapter.type"])  # lora, dora, sora (λ 0.1), sdora
    sessions = _run(picked, tmp_path)
    for t, session in zip(picked, sessions, strict=True):
        if t.cell["adapter.type"] in ("sora", "sdora"):  # the per-layer sparsity log is in the checkpoint
            assert (session.checkpoints[-1] / "sparsity.csv").is_file()
            assert M.ADAPTER_SPARSITY in session.results[-1]


def _token_dir(directory: Path, builtin_model_dir: Path) -> Path:
    """nanoGPT-format token files (uint16 train.bin / val.bin) of the builtin tokenizer's ids, documents ended by
    its eos: what the file's data.data_dir holds, at a size a CPU test reads in no time."""
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_model_dir)
    rng = np.random.default_rng(0)
    directory.mkdir()
    for split, n in (("train", 6000), ("val", 1200)):
        ids = rng.integers(4, len(tok), size=n).astype(np.uint16)
        ids[23::24] = tok.eos_token_id  # 24-token documents
        ids.tofile(directory / f"{split}.bin")
    return directory


def test_sublora_gpt2_runs_with_its_bounds(tmp_path, builtin_model_dir):
    from tests.helpers import make_gpt2_model

    # a tiny GPT-2 (its fused attention projection is c_attn, as in GPT-2 small) keeps the file's target_modules
    gpt2 = make_gpt2_model(tmp_path / "gpt2", builtin_model_dir)
    tokens = _token_dir(tmp_path / "tokens", builtin_model_dir)
    _, _, trials = C.load(PAPERS / "sublora_gpt2.yaml", TINY + [
        f"model.name_or_path={gpt2}", f"data.data_dir={tokens}",
        # the bounds' size, and a window stride below the 32-token blocks (the file's 100 is for 1024)
        "adapter.bound_sample=16", "adapter.bound_window_stride=16"])
    picked = _pick(trials, lambda cell: (cell["adapter.allocation_mode"], cell.get("adapter.allocation_ratio"))
                   if cell["adapter.intrinsic_dim"] == 1000 and cell["train.seed"] == 42
                   and cell.get("adapter.allocation_ratio") in (None, 0.2) else None)
    assert {t.cell["adapter.allocation_mode"] for t in picked} == {"uniform", "fixed", "learned"}
    for session in _run(picked, tmp_path):
        last = session.results[-1]
        assert last[M.BOUND_KL_NATS] > 0 and math.isfinite(last[M.BOUND_DOC_BPD])


def test_sparse_ft_runs_on_masks_precomputed_by_raysweep_masks(tmp_path, builtin_model_dir):
    from raysweep.offline.masks import precompute_masks

    _, _, trials = C.load(PAPERS / "sparse_ft.yaml", TINY + [
        "data.task=builtin", "adapter.calibration_examples=16"])
    # the two models' sub-grids both become builtin ones, and run once each (a union)
    assert len(trials) == 70
    wanted = {("unstructured", "gradient"), ("structured", "taylor"), ("random", None)}  # random: no importance
    picked = _pick(trials, lambda cell: (cell["adapter.mask"], cell.get("adapter.importance"))
                   if cell["adapter.sparsity"] == 0.5
                   and (cell["adapter.mask"], cell.get("adapter.importance")) in wanted else None)
    assert len(picked) == 3
    store = tmp_path / "store"
    results = precompute_masks([G.run_config(t.config) for t in picked], store)  # what `raysweep masks` runs
    assert len(results) == 3 and all(r.computed for r in results)
    for session in _run(picked, tmp_path, store):
        first, last = session.results[0], session.results[-1]
        assert first[M.MASK_COMPUTED] is False  # loaded, not computed again
        assert last[M.MASK_VIOLATIONS] == 0 and last[M.MASK_TARGET_SPARSITY] == 0.5


def test_qwen3_qlora_sft_runs_on_a_4bit_base(tmp_path, builtin_model_dir):
    pytest.importorskip("bitsandbytes", reason="the quant extra (pip install -e '.[quant]')")
    _, _, trials = C.load(PAPERS / "qwen3_qlora_sft.yaml", TINY + ["data.task=builtin"])
    (session,) = _run(trials, tmp_path)
    assert session.results[-1][M.TRAIN_STEP] == 3


@pytest.mark.integration
def test_qwen3_qlora_sft_runs_through_the_cli(tmp_path, builtin_model_dir):
    """One file through `raysweep run` (preflight, Ray, the actor executor, trials.csv) with the same swaps."""
    pytest.importorskip("bitsandbytes", reason="the quant extra (pip install -e '.[quant]')")
    from tests.test_integration import read_trials, run_cli

    proc = run_cli("run", PAPERS / "qwen3_qlora_sft.yaml", *TINY, "data.task=builtin", "--storage", tmp_path,
                   "--name", "papers", "--no-dashboard", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = read_trials(tmp_path / "papers")
    assert row["status"] == "TERMINATED"
    assert os.path.isdir(Path(row["checkpoint_path"]) / "best_adapter")
