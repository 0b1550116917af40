"""Integration tier: real local Ray (2 CPUs), the CLI as a user runs it, real files on disk."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def run_cli(*args, timeout=900):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "raysweep", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def read_trials(experiment: Path) -> list[dict]:
    with (experiment / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def eval_loss_of_saved_adapter(checkpoint: Path) -> float:
    """Load the trial's final adapter with plain peft on the base model and evaluate it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep import data, models
    from raysweep.session import LocalSession
    from raysweep.worker import evaluate

    cfg = json.loads((checkpoint / "trial_config.json").read_text())
    base_dir = models.resolve(cfg["model"]["name_or_path"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), checkpoint / "adapter")
    tok = AutoTokenizer.from_pretrained(base_dir)
    _, evals = data.load_splits(tok, cfg["data"], seed=cfg["train"]["seed"])
    return evaluate(model, evals, cfg, LocalSession(checkpoint), tok.pad_token_id)["eval/loss"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, builtin_model_dir, builtin_task_files):
    storage = tmp_path_factory.mktemp("runs")
    proc = run_cli("run", "search_spaces/quickstart.yaml", "--storage", storage, "--name", "qs")
    return proc, storage / "qs"


def test_quickstart_every_trial_terminates_and_learns(quickstart):
    proc, experiment = quickstart
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(experiment)
    assert len(rows) == 8
    assert {r["status"] for r in rows} == {"TERMINATED"}
    for r in rows:
        assert float(r["eval/loss"]) < 0.7 * float(r["eval/initial_loss"]), r
        assert int(r["train/step"]) == 200
    # rank matters on the builtin task: at every (adapter, seed), r=16 beats r=4
    by = {(r["adapter.type"], r["train.seed"], int(r["adapter.r"])): float(r["eval/loss"]) for r in rows}
    for (adapter, seed, rank), loss in by.items():
        if rank == 4:
            assert by[(adapter, seed, 16)] < loss


def test_quickstart_prints_summary_and_next_commands(quickstart):
    proc, experiment = quickstart
    assert "best trial per adapter" in proc.stdout
    assert "8 finished, 0 failed" in proc.stdout
    assert f"python -m raysweep resume {experiment}" in proc.stdout
    assert f"python -m raysweep analyze {experiment}" in proc.stdout


def test_quickstart_checkpoints_reload_and_reproduce_eval_loss(quickstart):
    _, experiment = quickstart
    for r in read_trials(experiment):
        checkpoint = Path(r["checkpoint_path"])
        assert checkpoint.name == "checkpoint_step000200"
        kept = sorted(p.name for p in checkpoint.parent.glob("checkpoint_step*"))
        assert len(kept) == 2  # train.keep_last, with the best adapter inside each
        assert (checkpoint / "best_adapter" / "adapter_model.safetensors").is_file()
        assert eval_loss_of_saved_adapter(checkpoint) == pytest.approx(float(r["eval/loss"]), rel=1e-4)


def test_analyze_reads_the_experiment(quickstart):
    _, experiment = quickstart
    proc = run_cli("analyze", experiment)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    frame = pd.read_csv(experiment / "summary.csv")
    assert len(frame) == 8 and set(frame["status"]) == {"TERMINATED"}
    assert frame["eval/loss"].notna().all()


def test_resume_after_interruption_keeps_finished_trials(tmp_path, builtin_model_dir, builtin_task_files):
    storage = tmp_path / "runs"
    args = ["run", "search_spaces/quickstart.yaml", "grid.train.seed=[0]", "train.max_steps=100",
            "--storage", storage, "--name", "rs"]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "raysweep", *map(str, args)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, COLUMNS="200"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and "TERMINATED " not in (tmp_path / "run.log").read_text():
        time.sleep(1)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    experiment = storage / "rs"
    first = {r["trial_id"]: r for r in read_trials(experiment)}
    finished = [t for t, r in first.items() if r["status"] == "TERMINATED"]
    assert finished and len(finished) < 4, first
    checkpoints_before = {t: sorted(p.name for p in (experiment / "train_runs" / f"train-{t}").glob("checkpoint_step*"))
                          for t in finished}

    resumed = run_cli("resume", experiment)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = {r["trial_id"]: r for r in read_trials(experiment)}
    # trials not yet started at the interruption may not have been listed then
    assert len(rows) == 4 and set(first) <= set(rows)
    assert {r["status"] for r in rows.values()} == {"TERMINATED"}
    for t in finished:  # not re-run: same final metrics, no new checkpoints
        assert rows[t]["eval/loss"] == first[t]["eval/loss"]
        assert sorted(p.name for p in (experiment / "train_runs" / f"train-{t}").glob("checkpoint_step*")) == \
            checkpoints_before[t]
    for r in rows.values():
        assert int(r["train/step"]) == 100 and float(r["eval/loss"]) < float(r["eval/initial_loss"])


def test_failed_trial_is_reported_and_others_finish(tmp_path, builtin_model_dir, builtin_task_files):
    grid = tmp_path / "nan.yaml"
    grid.write_text("""
name: nan
data: {max_seq_len: 32}
train: {max_steps: 20, eval_every: 10, max_grad_norm: null, schedule: constant}
grid:
  train.lr: [0.002, 1.0e+12]
""")
    proc = run_cli("run", grid, "--storage", tmp_path / "runs")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["status"]: r for r in read_trials(tmp_path / "runs" / "nan")}
    assert set(rows) == {"TERMINATED", "ERROR"}
    assert "NonFiniteLossError" in rows["ERROR"]["error"] and "lower train.lr" in rows["ERROR"]["error"]
    assert "1 finished, 1 failed" in proc.stdout
    assert "NonFiniteLossError: train/loss is" in proc.stdout
    assert Path(rows["TERMINATED"]["checkpoint_path"]).is_dir()  # the finished trial kept its results


def test_two_worker_ddp_trial(tmp_path, builtin_model_dir, builtin_task_files):
    proc = run_cli("run", "search_spaces/quickstart.yaml", "grid.train.seed=[0]", "grid.adapter.type=[lora]",
                   "adapter.r=4", "train.max_steps=60", "resources.num_workers=2", "--storage", tmp_path / "runs",
                   "--name", "ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [row] = read_trials(tmp_path / "runs" / "ddp")
    assert row["status"] == "TERMINATED"
    assert float(row["eval/loss"]) < 0.8 * float(row["eval/initial_loss"])
    assert eval_loss_of_saved_adapter(Path(row["checkpoint_path"])) == pytest.approx(float(row["eval/loss"]), rel=1e-4)


def test_worker_runs_as_a_plain_tune_trainable_in_a_reused_actor(tmp_path, builtin_model_dir, builtin_task_files):
    """The executor seam: the same loop under Tune alone, two trials in one reused actor, with no state
    leaking from the first trial into the second (it matches a fresh run of the same config)."""
    import ray
    from ray import tune

    from raysweep.session import LocalSession, TuneSession
    from raysweep.worker import run_training
    from tests.helpers import trial_config

    configs = [trial_config(train={"max_steps": 20, "seed": s, "eval_every": 10}, adapter={"type": a})
               for s, a in ((1, "dora"), (0, "lora"))]
    reference = LocalSession(tmp_path / "ref")
    run_training(configs[1], reference)

    def trainable(config):
        run_training(config["trial"], TuneSession())

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"RAYSWEEP_CACHE": os.environ["RAYSWEEP_CACHE"]}})
    try:
        results = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="plain", verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not results.errors
    by_seed = {r.config["trial"]["train"]["seed"]: r.metrics for r in results}
    assert by_seed[0]["eval/loss"] == pytest.approx(reference.results[-1]["eval/loss"], rel=1e-5)
    assert by_seed[1]["train/step"] == 20
