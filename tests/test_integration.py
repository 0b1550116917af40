"""Integration tier: real local Ray (2 CPUs), the CLI as a user runs it, real files on disk."""

from __future__ import annotations

import csv
import json
import os
import re
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


def kept_checkpoints(row: dict) -> list[str]:
    """Checkpoint dirs of a trial: Ray Train's run dir (train executor) or Tune's trial dir (actor)."""
    return sorted(p.name for p in Path(row["checkpoint_path"]).parent.glob("checkpoint_*") if p.is_dir())


def results_of(trial_dir: Path) -> list[dict]:
    """Every result a trial reported, in order (Tune's result.json)."""
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def eval_loss_of_saved_adapter(checkpoint: Path) -> float:
    """Load the trial's final adapter with plain peft on the base model and evaluate it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep.inputs import data, models
    from raysweep.trial.loop import evaluate
    from raysweep.trial.session import LocalSession

    cfg = json.loads((checkpoint / "trial_config.json").read_text())
    base_dir = models.resolve(cfg["model"]["name_or_path"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), checkpoint / "adapter")
    tok = AutoTokenizer.from_pretrained(base_dir)
    _, evals = data.load_splits(tok, cfg["data"])
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
        assert json.loads((checkpoint / "metrics.json").read_text())["train/step"] == 200  # the final one
        assert len(kept_checkpoints(r)) == 2  # train.keep_last, with the best adapter inside each
        assert (checkpoint / "best_adapter" / "adapter_model.safetensors").is_file()
        assert eval_loss_of_saved_adapter(checkpoint) == pytest.approx(float(r["eval/loss"]), rel=1e-4)


def test_analyze_reads_the_experiment(quickstart):
    _, experiment = quickstart
    proc = run_cli("analyze", experiment)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    frame = pd.read_csv(experiment / "summary.csv")
    assert len(frame) == 8 and set(frame["status"]) == {"TERMINATED"}
    assert frame["eval/loss"].notna().all() and frame["flag"].fillna("").eq("").all()
    assert (frame["wall_time_s"] > 1).all()  # launch to end, from trials.csv
    # the long per-step table: every trial, from step 0 to its last step
    history = pd.read_csv(experiment / "history.csv")
    assert set(history["trial_id"]) == set(frame["trial_id"])
    assert history.groupby("trial_id")["train/step"].agg(["min", "max"]).eq([0, 200]).all().all()
    # means over the two seeds per (adapter, rank), and the Pareto front of effective params vs eval loss
    table = pd.read_csv(experiment / "summary_table.csv")
    assert len(table) == 4 and set(table["n"]) == {2} and not table["fewer_seeds"].any()
    lora16 = frame[(frame["adapter.type"] == "lora") & (frame["adapter.r"] == 16)]["eval/loss"]
    row = table[(table["cell/adapter.type"] == "lora") & (table["cell/adapter.r"] == 16)].iloc[0]
    assert row["eval/loss mean"] == pytest.approx(lora16.mean()) and row["eval/loss std"] == pytest.approx(lora16.std())
    pareto = pd.read_csv(experiment / "pareto.csv")
    points = list(zip(pareto["adapter/effective_params mean"], pareto["eval/loss mean"], strict=True))
    for (p, loss), flag in zip(points, pareto["on_front"], strict=True):
        dominated = any(q <= p and l2 <= loss and (q < p or l2 < loss) for q, l2 in points)
        assert flag == (not dominated)
    assert "Pareto front (adapter/effective_params min, eval/loss min)" in proc.stdout
    tex = (experiment / "summary_table.tex").read_text()
    assert r"\toprule" in tex and tex.count(r"\textbf{") >= 2 and tex.count(r" \\") == 5  # header + 4 rows
    assert (experiment / "summary_table.md").read_text().count("\n") == 6
    report = (experiment / "report.html").read_text()
    # self-contained: no element loads anything from the network (tests/test_report_html.py checks in a browser)
    assert not re.search(r"""<(?:script|link|img|iframe)[^>]+(?:src|href)=["']?https?://""", report)
    assert report.count('<img src="data:image/png;base64,') == 3  # frontier + eval and train loss curves
    assert 'id="plot-parcoords"' in report and 'id="trials"' in report  # the interactive views
    assert "Pareto-optimal configuration per budget" in report and "adapter/effective_params ≤" in report
    assert (experiment / "frontier.png").stat().st_size > 10_000
    bad = run_cli("analyze", experiment, "--objectives", "eval/nope")
    assert bad.returncode == 2 and "eval/nope" in bad.stderr and "Traceback" not in bad.stderr


def test_export_best_trial_merged_from_the_cli(quickstart, tmp_path):
    _, experiment = quickstart
    proc = run_cli("export", experiment, "--best", "--merged", "--out", tmp_path / "best")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "best of 8 finished trial(s) by eval/loss (min)" in proc.stdout and "relative difference" in proc.stdout
    info = json.loads((tmp_path / "best" / "export.json").read_text())
    best = min(read_trials(experiment), key=lambda r: float(r["eval/loss"]))
    assert info["trial_id"] == best["trial_id"] and info["merged"] is True
    assert (tmp_path / "best" / "config.json").is_file() and (tmp_path / "best" / "tokenizer.json").is_file()
    again = run_cli("export", experiment, "--out", tmp_path / "x")  # an experiment needs --best
    assert again.returncode == 2 and "--best" in again.stderr and "Traceback" not in again.stderr


def test_quickstart_trials_keep_tune_logs_and_no_tensorboard_files_by_default(quickstart):
    """result.json and progress.csv (analysis and users read them) in every trial directory; TensorBoard event
    files only with --tensorboard (see test_failed_trial_is_reported_and_others_finish)."""
    _, experiment = quickstart
    for row in read_trials(experiment):
        trial_dir = Path(row["trial_path"])
        assert results_of(trial_dir) and (trial_dir / "progress.csv").is_file()
        assert not list(trial_dir.glob("events.out.tfevents*"))


def test_quickstart_reuses_actors_and_their_cached_base_model(quickstart):
    """auto -> actor executor for 1-worker trials: 8 trials share 2 processes; all but the first trial in
    each process get the base model from that process's cache."""
    _, experiment = quickstart
    rows = read_trials(experiment)
    pids = {r["sys/pid"] for r in rows}
    assert len(pids) == 2
    assert sum(r["sys/base_cached"] == "True" for r in rows) == 6


@pytest.mark.parametrize("executor", ["actor", "train"])
def test_resume_after_interruption_keeps_finished_trials(tmp_path, builtin_model_dir, builtin_task_files, executor):
    storage = tmp_path / "runs"
    args = ["run", "search_spaces/quickstart.yaml", "grid.train.seed=[0]", "train.max_steps=100",
            f"resources.executor={executor}", "--storage", storage, "--name", "rs"]
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
    checkpoints_before = {t: kept_checkpoints(first[t]) for t in finished}

    resumed = run_cli("resume", experiment)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = {r["trial_id"]: r for r in read_trials(experiment)}
    # trials not yet started at the interruption may not have been listed then
    assert len(rows) == 4 and set(first) <= set(rows)
    assert {r["status"] for r in rows.values()} == {"TERMINATED"}
    for t in finished:  # not re-run: same final metrics, no new checkpoints
        assert rows[t]["eval/loss"] == first[t]["eval/loss"]
        assert kept_checkpoints(rows[t]) == checkpoints_before[t]
    for r in rows.values():
        assert int(r["train/step"]) == 100 and float(r["eval/loss"]) < float(r["eval/initial_loss"])


def test_failed_trial_is_reported_and_others_finish(tmp_path, builtin_model_dir, builtin_task_files):
    grid = tmp_path / "nan.yaml"
    grid.write_text("""
name: nan
data: {max_seq_len: 32}
train: {max_steps: 20, eval_every: 10, max_grad_norm: null, schedule: constant}
grid:
  train.lr: [0.002, 1.0e+25]   # 1e25 overflows float32 at step 1 (tests/test_worker.py says why not less)
""")
    proc = run_cli("run", grid, "--storage", tmp_path / "runs", "--tensorboard")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["status"]: r for r in read_trials(tmp_path / "runs" / "nan")}
    for row in rows.values():  # --tensorboard: event files next to result.json
        assert list(Path(row["trial_path"]).glob("events.out.tfevents*")), row["trial_path"]
    assert set(rows) == {"TERMINATED", "ERROR"}
    assert "NonFiniteLossError" in rows["ERROR"]["error"] and "lower train.lr" in rows["ERROR"]["error"]
    assert "1 finished, 1 failed" in proc.stdout
    assert "NonFiniteLossError: train/loss is" in proc.stdout
    assert Path(rows["TERMINATED"]["checkpoint_path"]).is_dir()  # the finished trial kept its results


# the 2-worker DDP trial (and the same trial under DeepSpeed ZeRO-2): tests/test_integration_multiworker.py


def test_reused_actor_runs_trials_a_b_a_without_state_leaks(tmp_path, builtin_model_dir, builtin_task_files):
    """Trials A, B, A in one reused actor (actor executor, cached base model): A's two runs report identical
    eval losses at every eval step, to each other and to A run in a fresh Python process."""
    import ray
    from ray import tune

    from raysweep import config as C
    from raysweep.sweep import driver

    sweep_raw = {"name": "aba", "data": {"max_seq_len": 32, "max_eval_examples": 64},
                 "train": {"max_steps": 30, "eval_every": 10, "lr": 3e-3, "batch_size": 16},
                 "resources": {"executor": "actor"}}
    a, b = {"adapter.type": "dora", "train.seed": 1}, {"adapter.type": "lora", "train.seed": 0, "adapter.r": 4}
    fresh = subprocess.run([sys.executable, "-c", f"""
import json, sys, tempfile
from pathlib import Path
from raysweep.config import grid as G
from raysweep.trial.session import LocalSession
from raysweep.trial.loop import run_training
s = LocalSession(Path(tempfile.mkdtemp()))
run_training(G.trial_config({sweep_raw!r}, {a!r}), s)
print(json.dumps([[r["train/step"], r["eval/loss"]] for r in s.results if r["train/step"] % 10 == 0]))
"""], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    fresh_evals = {step: loss for step, loss in json.loads(fresh.stdout.strip().splitlines()[-1])}

    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"RAYSWEEP_CACHE": os.environ["RAYSWEEP_CACHE"]}})
    try:
        grid = tune.Tuner(
            driver.build_trainable(C.Sweep(**sweep_raw), sweep_raw, str(tmp_path / "aba")),
            param_space={"cell": tune.grid_search([a, b, a])},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="aba", verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not grid.errors
    runs = sorted((results_of(Path(r.path)) for r in grid), key=lambda rs: rs[0]["trial_id"])
    assert len({rs[-1]["sys/pid"] for rs in runs}) == 1  # one process ran all three
    assert [rs[-1]["sys/base_cached"] for rs in runs] == [False, True, True]
    # eval rows only (log-only rows repeat the last eval loss at time-dependent steps)
    evals = [{r["train/step"]: r["eval/loss"] for r in rs if r["train/step"] % 10 == 0} for rs in runs]
    assert sorted(evals[0]) == [0, 10, 20, 30]
    assert evals[0] == evals[2] == fresh_evals
    assert evals[1] != evals[0]


def test_adapters_grid_sparsity_rises_with_lambda_and_exports_reload(tmp_path, builtin_model_dir, builtin_task_files):
    """search_spaces/adapters.yaml end to end: LoRA, DoRA, SoRA at three λ, SDoRA; higher λ -> higher
    sparsity and fewer effective params; every gated trial has its per-layer sparsity log; every final
    adapter (the pruned, folded export for gated ones) reloads in plain peft with the trial's eval loss."""
    from raysweep.trial import checkpointing

    proc = run_cli("run", "search_spaces/adapters.yaml", "--storage", tmp_path / "runs", "--name", "ad")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sparsity" in proc.stdout and "eff. params" in proc.stdout  # the live table shows them
    rows = read_trials(tmp_path / "runs" / "ad")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"TERMINATED"}
    sora = sorted((float(json.loads(Path(r["trial_path"], "params.json").read_text())["cell"]["adapter.lambda"]), r)
                  for r in rows if r["adapter.type"] == "sora")
    sparsity = [float(r["adapter/sparsity"]) for _, r in sora]
    effective = [int(r["adapter/effective_params"]) for _, r in sora]
    assert [lam for lam, _ in sora] == [0.1, 0.3, 0.5]
    assert 0 < sparsity[0] < sparsity[1] < sparsity[2] < 1, sparsity
    assert effective[0] > effective[1] > effective[2], effective
    for r in rows:
        checkpoint = Path(r["checkpoint_path"])
        # every trial learns; DoRA at its lower lr (÷3) is the slowest: 6.01 → 0.84 on this machine's builtin
        # model (the same before and after the code was split into layers), the others end below 0.18
        assert float(r["eval/loss"]) < 0.2 * float(r["eval/initial_loss"]), r["adapter.type"]
        if r["adapter.type"] in ("sora", "sdora"):
            log = checkpointing.load_layer_log(checkpoint / "sparsity.csv")
            assert log[0]["step"] == 0 and log[-1]["step"] == 300 and len(log[-1]) == 2 + 14
            assert log[-1]["overall"] == pytest.approx(float(r["adapter/sparsity"]))
            assert json.loads((checkpoint / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
        assert eval_loss_of_saved_adapter(checkpoint) == pytest.approx(float(r["eval/loss"]), rel=1e-4), r["adapter.type"]
    # analysis: one per-layer sparsity heatmap per gated trial, the sora λ points on the frontier
    analyzed = run_cli("analyze", tmp_path / "runs" / "ad")
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert len(list((tmp_path / "runs" / "ad").glob("sparsity_*.png"))) == 4
    import pandas as pd

    pareto = pd.read_csv(tmp_path / "runs" / "ad" / "pareto.csv")
    assert set(pareto[pareto["on_front"]]["cell/adapter.type"]) <= {"sora", "sdora", "lora"}
    assert pareto[pareto["on_front"]]["adapter/effective_params mean"].min() == min(effective)
