"""Integration tier for the experiment families' grid files: real local Ray, the CLI as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_integration import read_trials, run_cli

pytestmark = pytest.mark.integration


def test_sparse_mask_grid_validates_every_trial_and_computes_each_mask_once(tmp_path, builtin_model_dir,
                                                                           builtin_task_files):
    # the family's grid file, cut to 2 sparsities × 3 kinds (+ the gradient/taylor slice) × 2 seeds
    proc = run_cli("run", "search_spaces/sparse_masks.yaml", "grid.adapter.sparsity=[0.0, 0.7]",
                   "grid.train.seed=[0, 1]", "train.max_steps=20", "train.eval_every=10",
                   "--storage", tmp_path, "--name", "sparse")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(tmp_path / "sparse")
    assert len(rows) == 2 * 3 * 2 + 2 * 2 * 2
    assert {r["status"] for r in rows} == {"TERMINATED"}
    for r in rows:
        target = float(r["cell/adapter.sparsity"])
        assert float(r["mask/target_sparsity"]) == target
        assert int(float(r["mask/violations"])) == 0, r
        # per layer, round(s·numel) weights (so over all layers within 1e-4 of s); structured: whole rows,
        # to one output row of a 128-row layer
        tolerance = 1 / 128 if r["cell/adapter.mask"] == "structured" else 1e-4
        assert abs(float(r["mask/achieved_sparsity"]) - target) <= tolerance, r
        report = json.loads((Path(r["checkpoint_path"]) / "validation_report.json").read_text())
        assert report["violations"] == 0 and all(v["violations"] == 0 for v in report["layers"].values())
        assert float(r["eval/loss"]) < float(r["eval/initial_loss"])
    # one computation per distinct mask: the two seeds share theirs
    log = (tmp_path / "masks" / "computations.log").read_text().splitlines()
    assert len(log) == len({(r["cell/adapter.sparsity"], r["cell/adapter.mask"], r["cell/adapter.importance"])
                            for r in rows}) == 10
    assert sum(r["mask/computed"] == "True" for r in rows) == 10

    # precomputing for the same storage finds every mask already there
    again = run_cli("masks", "search_spaces/sparse_masks.yaml", "grid.adapter.sparsity=[0.0, 0.7]",
                    "--storage", tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 computed, 10 reused" in again.stdout

    # analyze: the masks family's front (sparsity up, loss down) and its sparsity-vs-quality figure
    out = tmp_path / "analysis"
    analyzed = run_cli("analyze", tmp_path / "sparse", "--out", out)
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert "Pareto front (mask/achieved_sparsity max, eval/loss min)" in analyzed.stdout
    assert (out / "sparsity_vs_quality.png").stat().st_size > 10_000
    table = (out / "summary_table.md").read_text()
    assert "mask/violations" in table


def test_sublora_allocation_grid_reports_bounds_and_the_cli_reproduces_them(tmp_path, builtin_model_dir):
    import math

    # the family's grid file, cut to one budget × {uniform, learned, fixed 0.2} × 1 seed, short training
    proc = run_cli("run", "search_spaces/sublora_allocation.yaml",
                   "grid=[{adapter.allocation_mode: [uniform, learned]}, "
                   "{adapter.allocation_mode: fixed, adapter.allocation_ratio: 0.2}]",
                   "train.max_steps=30", "train.eval_every=30", "adapter.bound_sample=200",
                   "--storage", tmp_path, "--name", "sub")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(tmp_path / "sub")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"}
    for r in rows:
        bits, kl = float(r["bound/compressed_bits"]), float(r["bound/kl_nats"])
        assert kl == pytest.approx(bits * math.log(2))
        for level in ("doc", "seq"):
            bound, empirical = float(r[f"bound/{level}_bpd"]), float(r[f"bound/{level}_bpd_empirical"])
            assert bound > empirical
            assert (r[f"bound/{level}_vacuous_bpd"] == "True") == (bound > math.log2(307))  # builtin vocab
        assert float(r["eval/loss"]) < float(r["eval/initial_loss"])
        report = json.loads((Path(r["checkpoint_path"]) / "bounds.json").read_text())
        assert report["message"]["total_bits"] == int(bits)
    learned = next(r for r in rows if r["cell/adapter.allocation_mode"] == "learned")
    assert 0 < float(learned["adapter/gamma_mean"]) < 1
    gammas = (Path(learned["checkpoint_path"]) / "allocation.csv").read_text().splitlines()
    assert len(gammas[0].split(",")) == 2 + 14  # step, overall, one γ per adapted module of the builtin model

    # `raysweep bounds` recomputes every trial's bounds from its checkpoint, without Ray
    again = run_cli("bounds", tmp_path / "sub")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("wrote ") == 3 and "document: bpd ≤" in again.stdout
    for r in rows:
        report = json.loads((Path(r["checkpoint_path"]) / "bounds.json").read_text())
        assert report["metrics"]["bound/doc_bpd"] == pytest.approx(float(r["bound/doc_bpd"]), rel=1e-5)
    bad = run_cli("bounds", tmp_path / "nothing-here")
    assert bad.returncode == 2 and "nothing-here" in bad.stderr and "Traceback" not in bad.stderr

    # analyze after the experiment moved (as if copied to a laptop): the family's front and figures, which
    # read each trial's checkpoint files (allocation.csv, bounds.json) from their new place
    moved = tmp_path / "laptop" / "sub"
    moved.parent.mkdir()
    (tmp_path / "sub").rename(moved)
    analyzed = run_cli("analyze", moved)
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert "Pareto front (bound/kl_nats min, bound/doc_bpd_empirical min)" in analyzed.stdout
    for figure in ("sublora_gamma_heatmap.png", "sublora_kl_vs_bpd_bound.png", "sublora_allocation_grid.png"):
        assert (moved / figure).stat().st_size > 10_000, figure
    assert (moved / "report.html").read_text().count("data:image/png;base64,") >= 8


def test_qlora_grid_trains_4bit_trials_end_to_end(tmp_path, builtin_model_dir, builtin_task_files):
    proc = run_cli("run", "search_spaces/qlora_sft.yaml", "grid.train.seed=[0]", "train.max_steps=40",
                   "train.eval_every=20", "train.checkpoint_every=20", "--storage", tmp_path, "--name", "q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(tmp_path / "q")
    assert sorted(r["adapter.type"] for r in rows) == ["dora", "lora"] and {r["status"] for r in rows} == {"TERMINATED"}
    for r in rows:
        assert float(r["eval/loss"]) < 0.8 * float(r["eval/initial_loss"])
        config = json.loads((Path(r["checkpoint_path"]) / "trial_config.json").read_text())
        assert config["model"]["load_in_4bit"] is True and config["model"]["bnb_4bit_quant_type"] == "nf4"
