"""The command line on bad input: one clear message naming the key or file, exit 2, no traceback,
nothing launched. And `plan` on good input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT


def cli(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "raysweep", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def grid(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def assert_bad_input(proc, *expected, storage=None):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for s in expected:
        assert s in proc.stderr, proc.stderr
    if storage is not None:
        assert not storage.exists() or not any(storage.iterdir()), "something was launched"


def test_plan_prints_the_trials_and_resources():
    proc = cli("plan", "search_spaces/quickstart.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "quickstart: 8 trial(s)" in proc.stdout
    assert "each trial asks for: 1 worker(s) × (1 CPU)" in proc.stdout
    assert "executor: actor (reused Tune actors" in proc.stdout
    multi = cli("plan", "search_spaces/quickstart.yaml", "resources.num_workers=2")
    assert "executor: train (a Ray Train TorchTrainer per trial" in multi.stdout
    assert proc.stdout.count("lora") == 4 and proc.stdout.count("dora") == 4


def test_plan_shows_the_pack_workers_a_packed_sweep_starts_with():
    """8 cells, pack 8, 2 slots: two workers of 4 (free slots first), and the slots counted as pack workers."""
    proc = cli("plan", "search_spaces/quickstart.yaml", "resources.pack=8", "resources.max_concurrent=2")
    assert proc.returncode == 0, proc.stderr
    assert "pack 1: trials 0, 2, 4, 6\n  pack 2: trials 1, 3, 5, 7\n" in proc.stdout
    assert "at most 2 pack worker(s) of up to 8 trials at once (resources.max_concurrent)" in proc.stdout


def test_plan_with_overrides(tmp_path):
    proc = cli("plan", "search_spaces/quickstart.yaml", "grid.train.seed=[0]", "adapter.r=8")
    assert proc.returncode == 0, proc.stderr
    assert "quickstart: 2 trial(s)" in proc.stdout


def test_malformed_grid_exits_2_naming_every_key(tmp_path):
    path = grid(tmp_path, """
        train: {max_steps: 10, lr: -1}
        grid: {adapter.type: [lora, lorax], adapter.rank: [4]}
    """)
    proc = cli("run", path, "--storage", tmp_path / "runs")
    assert_bad_input(proc, "train.lr", "grid.adapter.rank", "did you mean 'adapter.r'", "lorax",
                     storage=tmp_path / "runs")


def test_missing_data_file(tmp_path):
    path = grid(tmp_path, f"""
        train: {{max_steps: 10}}
        data: {{task: chat, train_file: {tmp_path / 'nope.jsonl'}}}
    """)
    proc = cli("run", path, "--storage", tmp_path / "runs")
    assert_bad_input(proc, "data.train_file", "nope.jsonl", "does not exist", storage=tmp_path / "runs")


def test_malformed_data_line_is_named(tmp_path):
    data = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{broken\n")
    path = grid(tmp_path, f"""
        train: {{max_steps: 10}}
        data: {{task: chat, train_file: {data}}}
    """)
    proc = cli("run", path, "--storage", tmp_path / "runs")
    assert_bad_input(proc, f"{data}:3", "not valid JSON", storage=tmp_path / "runs")


def test_model_path_that_does_not_exist(tmp_path):
    path = grid(tmp_path, f"""
        train: {{max_steps: 10}}
        model: {{name_or_path: {tmp_path / 'no-such-model'}}}
    """)
    proc = cli("run", path, "--storage", tmp_path / "runs")
    assert_bad_input(proc, "model.name_or_path", "does not exist", storage=tmp_path / "runs")


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    path = grid(tmp_path, "train: {max_steps: 10}\nmodel: {name_or_path: no-such-org/no-such-model}\n")
    proc = cli("run", path, "--storage", tmp_path / "runs")
    assert_bad_input(proc, "model.name_or_path", "no-such-org/no-such-model", storage=tmp_path / "runs")


def test_missing_grid_file(tmp_path):
    assert_bad_input(cli("plan", tmp_path / "missing.yaml"), "missing.yaml", "does not exist")


def test_resume_of_a_directory_that_is_not_an_experiment(tmp_path):
    assert_bad_input(cli("resume", tmp_path), "not a raysweep experiment directory")


@pytest.mark.parametrize("command", ["analyze"])
def test_analyze_of_a_directory_that_is_not_an_experiment(tmp_path, command):
    assert_bad_input(cli(command, tmp_path), "not a raysweep experiment directory")


def test_the_sweep_driver_and_trial_entry_points_import_no_ml_stack(builtin_model_dir, builtin_task_files):
    """Lazy imports: the CLI's launch path (validation, preflight, builtin check, trainable) and the module
    a trial actor unpickles never import torch/transformers/peft; only the training loop does."""
    code = textwrap.dedent("""
        import sys
        import raysweep.__main__
        from raysweep.cli import preflight as cli
        from raysweep.sweep import progress
        from raysweep import config as C
        from raysweep.sweep import driver
        raw, sweep, trials = C.load("search_spaces/quickstart.yaml", [])
        cli.preflight(raw, trials)
        cli.ensure_builtin(trials)
        driver.build_trainable(sweep, raw, "unused")
        import raysweep.trial.loop, raysweep.trial.session, raysweep.inputs.model_cache
        print(sorted(m for m in ("torch", "transformers", "peft", "ray.train.torch") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_plan_says_when_the_builtin_model_is_judged_later(tmp_path):
    # a fresh machine: the builtin model is built by the first `run` (which then judges the adapter against
    # it, before Ray starts); `plan` stays fast and says so instead of building it
    env = dict(os.environ, COLUMNS="200", RAYSWEEP_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "raysweep", "plan", "search_spaces/quickstart.yaml",
                           "adapter.r=100000"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "note: model 'builtin' is created on first use" in proc.stdout
    assert not (tmp_path / "cache" / "models").exists()
