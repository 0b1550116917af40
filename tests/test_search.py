"""search.algorithm grid | random | optuna and ranges in the grid file.

Unit tier (no Ray cluster): ranges are parsed and checked with errors naming the key, every value a range
can take is validated, the trial count and Tune param space follow the algorithm, and Tune's OptunaSearch
built from a grid file suggests the same trials for the same seed (single- and multi-objective, past TPE's
random start-up). Integration tier: an Optuna sweep and a random sweep run from grid files with the CLI,
and the Optuna one draws the same trials when run again with the same seed.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import yaml

from raysweep import config as C
from raysweep.config import grid as G
from raysweep.config.ranges import Range, parse
from raysweep.sweep.param_space import param_space, tune_domain
from tests.test_integration import read_trials, run_cli

BASE = {"name": "s", "model": {"name_or_path": "builtin"}, "data": {"task": "builtin"},
        "train": {"max_steps": 20, "eval_every": 10}}


def _expand(search: dict, grid) -> tuple[C.Sweep, list[G.Trial]]:
    return G.expand(dict(BASE, search=search, grid=grid))


def _problems(search: dict, grid) -> str:
    with pytest.raises(C.ConfigError) as info:
        _expand(search, grid)
    return str(info.value)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"uniform": [0, 1]}, Range("uniform", (0.0, 1.0))),
    ({"loguniform": [1e-5, 1e-3]}, Range("loguniform", (1e-5, 1e-3))),
    ({"randint": [4, 32]}, Range("randint", (4, 32))),
    ({"lograndint": [2, 64]}, Range("lograndint", (2, 64))),
    ({"choice": ["lora", "dora"]}, Range("choice", ("lora", "dora"))),
])
def test_ranges_parse(spec, expected):
    assert parse(spec) == (expected, None)


@pytest.mark.parametrize(("spec", "says"), [
    ({"gaussian": [0, 1]}, "unknown range 'gaussian'"),
    ({"uniform": [1, 0]}, "low (1) must be below high (0)"),
    ({"uniform": [1]}, "[low, high]"),
    ({"uniform": ["a", "b"]}, "two numbers"),
    ({"loguniform": [0, 1]}, "needs low > 0"),
    ({"randint": [1, 2.5]}, "two integers"),
    ({"choice": ["only"]}, "at least two options"),
    ({"uniform": [0, 1], "choice": [1, 2]}, "a range is one key"),
    ({"uniform": 3}, "takes a list"),
])
def test_bad_ranges_say_what_to_write(spec, says):
    rng, problem = parse(spec)
    assert rng is None and says in problem


def test_integer_ranges_include_their_upper_bound():
    from ray.tune.search.sample import Integer

    domain = tune_domain(Range("randint", (4, 6)))
    assert isinstance(domain, Integer) and (domain.lower, domain.upper) == (4, 7)  # Tune's upper is exclusive
    assert Range("lograndint", (2, 32)).representative() == 8  # geometric middle
    assert Range("loguniform", (1e-4, 1e-2)).representative() == pytest.approx(1e-3)


def test_a_range_needs_random_or_optuna():
    out = _problems({}, {"train.lr": {"loguniform": [1e-4, 1e-2]}})
    assert "grid.train.lr: a range needs search.algorithm random or optuna" in out and "[0.001]" in out


def test_every_value_a_range_can_take_is_validated():
    # dropout must be < 1: the upper end of the range is invalid even though the middle is fine
    out = _problems({"algorithm": "random"}, {"adapter.dropout": {"uniform": [0.0, 1.5]}})
    assert "adapter.dropout" in out and "at adapter.dropout=1.5 of the range" in out
    out = _problems({"algorithm": "random"}, {"adapter.type": {"choice": ["lora", "nope"]}})
    assert "unknown adapter 'nope'" in out


@pytest.mark.parametrize(("search", "grid", "says"), [
    ({"algorithm": "optuna"}, {"train.lr": [1e-3, 2e-3]}, "search.num_samples: search.algorithm 'optuna' runs"),
    ({"algorithm": "optuna", "num_samples": 4}, [{"adapter.r": [2]}, {"adapter.r": [4]}], "samples one space"),
    ({"algorithm": "optuna", "num_samples": 4}, {"adapter.target_modules": [["q_proj"], ["v_proj"]]},
     "Optuna chooses among plain values"),
    ({"algorithm": "random", "objectives": {"eval/loss": "min"}}, {}, "several objectives need search.algorithm"),
    ({"algorithm": "optuna", "num_samples": 4, "objectives": {"eval/los": "min"}}, {},
     "search.objectives.eval/los: not a metric trials report"),
    ({"seed": 3}, {}, "search.seed: search.algorithm 'grid' draws nothing at random"),
    ({"algorithm": "bayes"}, {}, "search.algorithm"),
])
def test_search_settings_that_cannot_work_are_refused(search, grid, says):
    assert says in _problems(search, grid)


def test_trial_count_and_param_space_follow_the_algorithm():
    from ray.tune.search.sample import Categorical, Float

    grid = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "adapter.r": [2, 4, 8], "adapter.type": ["lora"]}
    sweep, trials = _expand({"algorithm": "random", "num_samples": 2}, grid)
    assert len(trials) == 3 and G.trial_count(sweep, trials) == 6
    # the plan's config of a ranged cell sits inside the range
    assert trials[0].config.train.lr == pytest.approx(1e-3)
    cells = param_space(trials, "random")["cell"]["grid_search"]
    assert [c["adapter.r"] for c in cells] == [2, 4, 8] and all(isinstance(c["train.lr"], Float) for c in cells)

    sweep, trials = _expand({"algorithm": "optuna", "num_samples": 5}, grid)
    assert G.trial_count(sweep, trials) == 5
    optuna_space = param_space(trials, "optuna")["cell"]
    assert optuna_space["adapter.r"].categories == [2, 4, 8]
    # a one-value list is a one-option choice: Tune's Optuna adapter would drop a constant from the trial
    assert isinstance(optuna_space["adapter.type"], Categorical) and optuna_space["adapter.type"].categories == ["lora"]


def _optuna_suggestions(search: dict, n: int) -> list[dict]:
    """What Tune's OptunaSearch, built as the driver builds it, suggests for n trials run one at a time,
    each told a result that depends on its config (lr near 3e-3 and small ranks are best)."""
    from raysweep.sweep import schedulers

    grid = {"train.lr": {"loguniform": [1e-4, 1e-1]}, "adapter.r": [2, 4, 8, 16]}
    raw = dict(BASE, search=dict(search, algorithm="optuna", num_samples=n), grid=grid)
    sweep, trials = G.expand(raw)
    searcher = schedulers.build_search_alg(sweep)
    assert searcher.set_search_properties(None, None, param_space(trials, "optuna"))
    out = []
    for i in range(n):
        cell = searcher.suggest(f"t{i}")["cell"]
        loss = (math.log10(cell["train.lr"]) + 2.5) ** 2 + 0.01 * cell["adapter.r"]
        searcher.on_trial_complete(f"t{i}", {"eval/loss": loss, "eval/best_loss": loss,
                                             "adapter/trainable_params": 1000 * cell["adapter.r"]})
        out.append(cell)
    return out


@pytest.mark.parametrize("objectives", [None, {"eval/best_loss": "min", "adapter/trainable_params": "min"}])
def test_optuna_suggests_the_same_trials_for_the_same_seed(objectives):
    search = {"seed": 7} | ({"objectives": objectives} if objectives else {})
    first = _optuna_suggestions(search, 14)  # TPE samples at random for 10 trials, then models the results
    assert _optuna_suggestions(search, 14) == first
    assert _optuna_suggestions(dict(search, seed=8), 14) != first
    assert all(1e-4 <= c["train.lr"] <= 1e-1 and c["adapter.r"] in (2, 4, 8, 16) for c in first)


def test_optuna_learns_from_results():
    """After its random start-up, TPE proposes learning rates closer to the best region than at random."""
    cells = _optuna_suggestions({"seed": 0}, 30)
    distance = [abs(math.log10(c["train.lr"]) + 2.5) for c in cells]
    assert sum(distance[20:]) / 10 < sum(distance[:10]) / 10


def test_every_search_space_with_ranges_plans(tmp_path):
    proc = run_cli("plan", "search_spaces/optuna_lr_rank.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "trials: 16 (optuna: num_samples 16 trials chosen by TPE (seed 0)" in " ".join(proc.stdout.split())


def test_the_live_table_and_log_lines_show_drawn_values(tmp_path):
    """A learning-rate search shows each trial's drawn lr (not only adapter, rank and seed)."""
    from rich.console import Console

    from raysweep.sweep.progress import ProgressCallback, TrialRecord, describe

    raw = dict(BASE, search={"algorithm": "random"}, grid={"train.lr": {"loguniform": [1e-4, 1e-2]},
                                                          "adapter.r": [2, 4]})
    callback = ProgressCallback(str(tmp_path), lambda cell: G.trial_config(raw, cell), Console(width=200))
    for i, (lr, r) in enumerate([(0.00123456, 2), (0.0045, 4)]):
        cell = {"train.lr": lr, "adapter.r": r}
        callback.records[str(i)] = TrialRecord(str(i), cell, G.trial_config(raw, cell))
    console = Console(width=200, record=True)
    console.print(callback.table())
    text = console.export_text()
    header = text.splitlines()[2]
    assert [c.strip() for c in header.split("┃") if c.strip()][:6] == ["trial", "status", "adapter", "rank", "seed", "lr"]
    assert "0.001235" in text and "0.0045" in text
    assert describe(callback.records["0"]) == "lora r=2 seed=0 lr=0.001235"


# ------------------------------------------------------------------------------------------ integration

GRID = textwrap.dedent("""
    name: {name}
    model: {{name_or_path: builtin}}
    data: {{task: builtin, max_seq_len: 32}}
    train: {{batch_size: 32, eval_batch_size: 200, max_steps: 20, eval_every: 10, log_every: 10, schedule: constant,
            warmup_steps: 0}}
    search:
      algorithm: {algorithm}
      num_samples: {num_samples}
      seed: 3
      {extra}
    grid:
      train.lr: {{loguniform: [3.0e-4, 1.0e-2]}}
      adapter.r: [2, 4, 8]
""")


def _run(tmp_path: Path, name: str, algorithm: str, num_samples: int, extra: str = "") -> list[dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, algorithm=algorithm, num_samples=num_samples, extra=extra))
    assert yaml.safe_load(path.read_text())["search"]["algorithm"] == algorithm
    proc = run_cli("run", path, "--storage", tmp_path / "runs", "--no-dashboard")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_trials(tmp_path / "runs" / name)


@pytest.mark.integration
def test_optuna_sweep_runs_from_a_grid_file_and_repeats_with_its_seed(tmp_path, builtin_model_dir, builtin_task_files):
    extra = "objectives: {eval/best_loss: min, adapter/trainable_params: min}"
    runs = [_run(tmp_path, f"optuna{i}", "optuna", 3, extra) for i in range(2)]
    drawn = [sorted((float(r["cell/train.lr"]), int(r["cell/adapter.r"])) for r in rows) for rows in runs]
    assert drawn[0] == drawn[1]  # same seed, same grid file: the same trials
    assert len(set(drawn[0])) == 3
    for rows in runs:
        assert {r["status"] for r in rows} == {"TERMINATED"} and len(rows) == 3
        for r in rows:
            assert 3e-4 <= float(r["cell/train.lr"]) <= 1e-2 and r["cell/adapter.r"] in {"2", "4", "8"}
            assert float(r["train/lr"]) == pytest.approx(float(r["cell/train.lr"]))  # the trial trained with it
            assert float(r["eval/loss"]) < float(r["eval/initial_loss"])


@pytest.mark.integration
def test_random_sweep_draws_each_cell_num_samples_times(tmp_path, builtin_model_dir, builtin_task_files):
    rows = _run(tmp_path, "random", "random", 2)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"TERMINATED"}
    by_rank = {}
    for r in rows:
        by_rank.setdefault(r["cell/adapter.r"], []).append(float(r["cell/train.lr"]))
    assert sorted(by_rank) == ["2", "4", "8"]
    for lrs in by_rank.values():  # each sample of a cell draws its own learning rate, inside the range
        assert len(set(lrs)) == 2 and all(3e-4 <= lr <= 1e-2 for lr in lrs)
