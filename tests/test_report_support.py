"""A small experiment directory written by hand, as a finished or running sweep leaves it (no Ray): the
report tests build their pages from it. Also tests the pieces of the report that need no browser."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysweep.experiment import layout as L
from raysweep.experiment import metrics as M

TYPES, RANKS, LRS, SEEDS = ("lora", "dora"), (4, 16), (1e-4, 1e-3), (0, 1)
STEPS = (0, 10, 20, 30)
ERROR = "NonFiniteLossError: train/loss is nan at step 10"


def final_loss(adapter: str, r: int, lr: float, seed: int) -> float:
    """Rank matters most, the learning rate a little, the family less, the seed least."""
    return 2.0 - 0.05 * r - (0.1 if lr == 1e-3 else 0.0) - (0.03 if adapter == "dora" else 0.0) + 0.01 * seed


def _trial(root: Path, trial_id: str, cell: dict, steps: tuple[int, ...], final: float) -> None:
    short = "_".join(f"{k.split('.')[-1]}={v}" for k, v in cell.items())
    directory = root / f"{trial_id}_{short}"
    directory.mkdir()
    (directory / L.PARAMS_FILE).write_text(json.dumps({"cell": cell}))
    lines = []
    for step in steps:
        loss = 3.0 + (final - 3.0) * step / STEPS[-1]
        lines.append(json.dumps({"trial_id": trial_id, M.TRAIN_STEP: step, M.EVAL_STEP: step, M.EVAL_LOSS: loss,
                                 M.TRAIN_LOSS: loss + 0.1, M.ADAPTER_EFFECTIVE_PARAMS: 1000 * cell["adapter.r"],
                                 M.ADAPTER_TRAINABLE_PARAMS: 1000 * cell["adapter.r"]}))
    (directory / L.RESULT_FILE).write_text("\n".join(lines) + "\n")


def make_experiment(root: Path, running: int = 0) -> Path:
    """16 finished trials (type × r × lr × seed), one failed, and `running` trials still at step 10 (RUNNING)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / L.SWEEP_FILE).write_text(yaml.safe_dump({"name": root.name, "search": {"metric": M.EVAL_LOSS,
                                                                                   "mode": "min"}}))
    rows = []
    cells = [(t, r, lr, s) for t in TYPES for r in RANKS for lr in LRS for s in SEEDS]
    cells += [("lora", 8, 1e-4, 0)] + [("dora", 8, 1e-3, s) for s in range(running)]
    for i, (adapter, r, lr, seed) in enumerate(cells):
        trial_id = f"t{i:02d}"
        cell = {"adapter.type": adapter, "adapter.r": r, "train.lr": lr, "train.seed": seed}
        failed, live = i == 16, i > 16
        _trial(root, trial_id, cell, STEPS[:2] if failed or live else STEPS, final_loss(adapter, r, lr, seed))
        rows.append({"trial_id": trial_id, "status": "ERROR" if failed else "RUNNING" if live else "TERMINATED",
                     "adapter.type": adapter, "adapter.r": r, "train.seed": seed, "error": ERROR if failed else "",
                     "launched_at": 1000.0 + i, "ended_at": "" if live else 1060.0 + 3 * i, "stopped_by": ""})
    with (root / L.TRIALS_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_the_experiment_loads_as_analysis_sees_a_sweep(tmp_path):
    from analysis.load import load_trials, ran_to_end

    frame = load_trials(make_experiment(tmp_path / "exp", running=2))
    assert len(frame) == 19 and int(ran_to_end(frame).sum()) == 16
    assert frame.set_index("trial_id").loc["t16", "flag"] == "error"


def test_importance_ranks_the_axis_that_moves_the_metric_first(tmp_path):
    from analysis.importance import param_importance
    from analysis.load import load_trials, ran_to_end

    frame = load_trials(make_experiment(tmp_path / "exp"))
    finished = frame[ran_to_end(frame)]
    axes = [c for c in frame if c.startswith("cell/")]
    result = param_importance(finished, axes, M.EVAL_LOSS, "min")
    assert list(result.values)[0] == "adapter.r" and set(result.values) == {"adapter.type", "adapter.r",
                                                                           "train.lr", "train.seed"}
    assert math.isclose(sum(result.values.values()), 1.0, rel_tol=1e-6) and "fANOVA" in result.note
    assert result.values["train.seed"] < result.values["train.lr"]


@pytest.mark.parametrize(("n", "note"), [(0, "at least 4"), (3, "(3 so far)")])
def test_importance_with_too_few_trials_is_a_note(tmp_path, n, note):
    from analysis.importance import param_importance

    frame = pd.DataFrame({"cell/adapter.type": ["lora", "dora", "lora"][:n], M.EVAL_LOSS: [1.0, 2.0, 3.0][:n]})
    result = param_importance(frame, ["cell/adapter.type"], M.EVAL_LOSS, "min")
    assert result.values == {} and note in result.note


def test_importance_handles_categorical_axes_and_axes_a_subgrid_leaves_unset():
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from analysis.importance import distributions, param_importance

    frame = pd.DataFrame({"cell/adapter.type": ["lora", "dora", "sora", "sora"] * 2,
                          "cell/adapter.lambda": [math.nan, math.nan, 0.1, 0.3] * 2,
                          "cell/adapter.r": [4, 4, 16, 16, 64, 64, 400, 400], "cell/use_bias": [True, False] * 4,
                          M.EVAL_LOSS: [1.0, 1.1, 0.5, 0.6, 0.9, 0.8, 0.4, 0.3]})
    axes = [c for c in frame if c.startswith("cell/")]
    dists, params = distributions(frame, axes)
    assert dists["adapter.lambda"] == CategoricalDistribution(["0.1", "0.3", "–"])
    assert dists["adapter.r"] == IntDistribution(4, 400, log=True)  # two decades: log scale
    assert dists["use_bias"] == CategoricalDistribution(["False", "True"])
    assert set(param_importance(frame, axes, M.EVAL_LOSS, "min").values) == set(dists)


def test_the_trials_table_keeps_numbers_sortable_and_escapes_text():
    from analysis.trials_table import trials_table

    frame = pd.DataFrame({"trial_id": ["a", "b"], "status": ["ERROR", "TERMINATED"], "flag": ["error", ""],
                          "error": ["<script>alert(1)</script>", ""], "cell/adapter.r": [4, 16],
                          M.EVAL_LOSS: [float("nan"), 1234.5]})
    page = trials_table(frame, M.EVAL_LOSS)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'data-v="1234.5">1,234</td>' in page and 'data-status="ERROR"' in page


def test_analyze_keeps_the_paper_figures_and_tables_beside_the_interactive_views(tmp_path):
    import io

    from rich.console import Console

    from analysis.load import load_trials, print_overview
    from analysis.summary import write_summaries

    root, out = make_experiment(tmp_path / "exp", running=1), tmp_path / "out"
    frame = load_trials(root)
    print_overview(Console(file=io.StringIO()), frame, str(root), out)  # what `analyze` does first
    written = write_summaries(frame, out)
    page = written["report"].read_text()
    assert page.count('<img src="data:image/png;base64,') == len(written["figures"]) >= 2  # the PNGs for papers
    assert (out / f"{L.SUMMARY_TABLE}.tex").read_text().startswith(r"\begin{table}")
    for plot in ('id="plot-parcoords"', 'id="plot-importance"', 'id="plot-pareto"', 'id="plot-curves-eval-loss"',
                 'id="trials"'):
        assert plot in page
    assert "location.reload" not in page  # a finished analysis does not reload itself


def test_the_page_of_a_sweep_that_is_starting_says_what_it_cannot_show_yet(tmp_path):
    from analysis.report_build import write_experiment_report

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / L.SWEEP_FILE).write_text("name: empty\n")
    page = write_experiment_report(empty).read_text()
    assert "No trial has reported yet." in page and "No finished trial yet." in page
    # trials report, none has ended: no trial table on disk yet
    running = make_experiment(tmp_path / "running")
    (running / L.TRIALS_FILE).unlink()
    page = write_experiment_report(running).read_text()
    assert "No trial has ended yet" in page and 'id="plot-parcoords"' in page and 'data-status="–"' in page
