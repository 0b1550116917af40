"""Early stopping across trials (search.scheduler: asha | median).

Unit tier (no Ray cluster): the schedulers judge trials on their evals only, and stopped trials are told
apart from finished ones. Integration tier (real local Ray, the CLI): ASHA and the median rule stop the
worse trials of a small builtin grid under both executors, and every record marks them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from raysweep import config as C
from tests.test_integration import read_trials, run_cli

MAX_STEPS = 120


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class _Controller:
    def get_live_trials(self):
        return []


def _result(step: int, eval_step: int, loss: float) -> dict:
    return {"train/step": step, "eval/step": eval_step, "eval/loss": loss}


def _scheduler(**search):
    from raysweep.sweep import schedulers

    raw = {"train": {"max_steps": 100, "eval_every": 10}, "search": search}
    return schedulers.build_scheduler(C.Sweep(**raw))


def test_fifo_is_tunes_default_scheduler():
    assert _scheduler() is None


def test_asha_decides_at_a_rung_on_the_eval_measured_there():
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler(scheduler="asha", grace_period=10, reduction_factor=3)  # rungs at 10, 30, 90
    ctl, good, bad = _Controller(), _Trial("good"), _Trial("bad")
    for t in (good, bad):
        sched.on_trial_add(ctl, t)
    for result in (_result(0, 0, 5.0), _result(5, 0, 5.0), _result(10, 10, 1.0)):
        assert sched.on_trial_result(ctl, good, result) == TrialScheduler.CONTINUE
    # a log report repeats the last eval's numbers: judged neither before nor after the rung
    assert sched.on_trial_result(ctl, good, _result(15, 10, 1.0)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, bad, _result(0, 0, 5.0)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, bad, _result(5, 0, 5.0)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, bad, _result(10, 10, 3.0)) == TrialScheduler.STOP  # worse than good at 10


def test_asha_never_stops_a_trial_at_its_last_step():
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler(scheduler="asha", grace_period=50, reduction_factor=2)  # rungs at 50 and 100 = max_steps
    ctl, a, b = _Controller(), _Trial("a"), _Trial("b")
    for t in (a, b):
        sched.on_trial_add(ctl, t)
    for step, loss in ((50, 1.0), (100, 0.5)):
        sched.on_trial_result(ctl, a, _result(step, step, loss))
    assert sched.on_trial_result(ctl, b, _result(50, 50, 0.9)) == TrialScheduler.CONTINUE
    # worse than `a` at the rung at 100, but the trial is ending anyway: not a stop (it ran to the end)
    assert sched.on_trial_result(ctl, b, _result(100, 100, 0.8)) == TrialScheduler.CONTINUE


def test_median_rule_weighs_every_eval_once_however_many_log_reports_repeat_it():
    """`a`'s running mean up to step 20 is mean(3.0, 1.0) = 2.0, so `b` (best 2.4) is stopped there; counting
    the nine log reports that repeat `a`'s step-10 eval would make that mean 2.8 and let `b` run on."""
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler(scheduler="median", grace_period=10, min_samples_required=1)
    ctl, a, b = _Controller(), _Trial("a"), _Trial("b")
    for t in (a, b):
        sched.on_trial_add(ctl, t)
    sched.on_trial_result(ctl, a, _result(10, 10, 3.0))
    for step in range(11, 20):
        sched.on_trial_result(ctl, a, _result(step, 10, 3.0))
    sched.on_trial_result(ctl, a, _result(20, 20, 1.0))
    sched.on_trial_complete(ctl, a, _result(20, 20, 1.0))  # Tune passes the last result once more
    assert sched.on_trial_result(ctl, b, _result(10, 10, 2.5)) == TrialScheduler.CONTINUE  # 2.5 < 3.0
    assert sched.on_trial_result(ctl, b, _result(20, 20, 2.4)) == TrialScheduler.STOP  # 2.4 > 2.0


def test_a_valid_scheduler_config_loads(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("train: {max_steps: 120, eval_every: 20}\nsearch: {scheduler: asha, grace_period: 40}\n")
    _, sweep, _ = C.load(grid)
    assert (sweep.search.scheduler, sweep.search.grace_period, sweep.search.reduction_factor) == ("asha", 40, 3)
    assert sweep.search.resolved_grace_period(120, 20) == 40
    default = sweep.search.model_copy(update={"grace_period": None})
    assert [default.resolved_grace_period(m, e) for m, e in ((160, 20), (200, 50), (120, 50), (100, 10))] == [40, 50, 50, 30]


def test_stopped_trials_are_told_apart_from_finished_ones():
    from raysweep.experiment.outcome import flag, ran_to_end, stopped_early

    assert stopped_early("TERMINATED", {"train/step": 40}, 120)
    assert not stopped_early("TERMINATED", {"train/step": 120}, 120)
    assert not stopped_early("TERMINATED", {"train/step": 40, "train/early_stopped": True}, 120)  # patience
    assert not stopped_early("ERROR", {"train/step": 40}, 120)
    assert not stopped_early("TERMINATED", {"train/step": 40}, None)  # epochs: no scheduler
    # the one "ran to its end" rule that analysis, export --best and the SubLoRA plots use
    assert ran_to_end("TERMINATED", "") and ran_to_end("TERMINATED", float("nan"))
    assert not ran_to_end("TERMINATED", "asha") and not ran_to_end("ERROR", "") and not ran_to_end("RUNNING", "")
    assert [flag("TERMINATED", "asha", False), flag("TERMINATED", "", True), flag("ERROR", "", False),
            flag("PENDING", "", False), flag("TERMINATED", "", False)] == [
        "stopped by asha", "early-stopped", "error", "unfinished", ""]


def test_analysis_flags_stopped_trials_and_leaves_them_out_of_tables():
    from analysis.load import ran_to_end
    from raysweep.experiment.outcome import flag

    frame = pd.DataFrame({"status": ["TERMINATED", "TERMINATED", "TERMINATED", "ERROR"],
                          "stopped_by": [None, "asha", None, None],
                          "train/early_stopped": [False, False, True, False]})
    flags = [flag(*row) for row in frame[["status", "stopped_by", "train/early_stopped"]].itertuples(index=False)]
    assert flags == ["", "stopped by asha", "early-stopped", "error"]
    assert list(ran_to_end(frame)) == [True, False, True, False]
    assert list(ran_to_end(frame.drop(columns="stopped_by"))) == [True, True, True, False]  # older trials.csv


def test_train_executor_schedulers_need_the_dashboard():
    from raysweep.sweep import driver

    def setup_problem(raw, **kwargs):
        return driver.setup_problem(C.Sweep(**raw), **kwargs)

    raw = {"train": {"max_steps": 100}, "search": {"scheduler": "asha"}, "resources": {"executor": "train"}}
    assert "--no-dashboard" in setup_problem(raw, dashboard=False)
    assert setup_problem(raw, dashboard=True) is None
    assert setup_problem(raw, dashboard=False, address="auto") is None  # a cluster's own dashboard
    assert setup_problem(raw | {"resources": {"executor": "actor"}}, dashboard=False) is None
    assert setup_problem(raw | {"search": {}}, dashboard=False) is None


# ------------------------------------------------------------------------------------------ integration

# lr 3e-3 learns the builtin task fast; the smaller ones are clearly behind at every eval. One trial at a
# time, in grid order, so the decisions are deterministic: the first trial sets every cutoff.
GRID = textwrap.dedent(f"""
    name: sched
    data: {{max_seq_len: 32}}
    train: {{lr: 3.0e-3, batch_size: 32, eval_batch_size: 200, max_steps: {MAX_STEPS}, schedule: constant,
             eval_every: 20, log_every: 10}}
    adapter: {{r: 16}}
    resources: {{max_concurrent: 1}}
    grid:
      train.lr: [3.0e-3, 1.0e-4, 3.0e-5]
""")


def _sweep(tmp_path: Path, name: str, *overrides: str):
    grid = tmp_path / "sched.yaml"
    grid.write_text(GRID)
    proc = run_cli("run", grid, *overrides, "--storage", tmp_path / "runs", "--name", name, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, tmp_path / "runs" / name


def _assert_worse_trials_stopped(proc, experiment: Path, scheduler: str, n_stopped: int) -> list[dict]:
    rows = read_trials(experiment)
    assert {r["status"] for r in rows} == {"TERMINATED"}  # a stop is not a failure: exit code 0, as checked
    stopped = [r for r in rows if r["stopped_by"]]
    assert len(stopped) == n_stopped and {r["stopped_by"] for r in stopped} == {scheduler}, rows
    for r in stopped:
        assert int(r["train/step"]) < MAX_STEPS and int(r["eval/step"]) == int(r["train/step"])
        assert r["train/early_stopped"] == "False"
    best = min(rows, key=lambda r: float(r["eval/loss"]))
    assert int(best["train/step"]) == MAX_STEPS and not best["stopped_by"]
    # the live log and the summary say so too
    assert f"STOPPED    {stopped[0]['trial_id']}" in proc.stdout and f"(stopped by {scheduler} at step" in proc.stdout
    assert f"{n_stopped} stopped early by {scheduler}" in proc.stdout
    # analysis: flagged, and the tables keep the trials that ran to the end only
    from analysis.load import load_trials
    from analysis.summary import write_summaries

    frame = load_trials(experiment)
    assert sorted(frame["flag"]) == sorted([""] * (len(rows) - n_stopped) + [f"stopped by {scheduler}"] * n_stopped)
    written = write_summaries(frame, experiment / "analysis")
    assert written["stopped"] == n_stopped
    assert len(pd.read_csv(experiment / "analysis" / "summary_table.csv")) == len(rows) - n_stopped
    return rows


@pytest.mark.integration
def test_asha_stops_the_worse_trials_actor_executor(tmp_path, builtin_model_dir, builtin_task_files):
    proc, experiment = _sweep(tmp_path, "asha", "search.scheduler=asha", "search.grace_period=20")
    rows = _assert_worse_trials_stopped(proc, experiment, "asha", n_stopped=2)
    assert {int(r["train/step"]) for r in rows if r["stopped_by"]} == {20}  # the first rung


@pytest.mark.integration
def test_median_rule_stops_the_worse_trials(tmp_path, builtin_model_dir, builtin_task_files):
    proc, experiment = _sweep(tmp_path, "median", "search.scheduler=median", "search.grace_period=20",
                              "search.min_samples_required=1")
    _assert_worse_trials_stopped(proc, experiment, "median", n_stopped=2)


@pytest.mark.integration
def test_asha_stops_a_train_executor_trial_and_its_torch_trainer(tmp_path, builtin_model_dir, builtin_task_files):
    """A stopped trial's TorchTrainer ends with it (its workers release their CPUs, so the sweep goes on)
    a few steps later at most: its Ray Train run never reaches the last step."""
    proc, experiment = _sweep(tmp_path, "train", "search.scheduler=asha", "search.grace_period=20",
                              "resources.executor=train", "grid.train.lr=[3.0e-3, 3.0e-5]")
    [stopped] = [r for r in _assert_worse_trials_stopped(proc, experiment, "asha", n_stopped=1) if r["stopped_by"]]
    run_dir = experiment / "train_runs" / f"train-{stopped['trial_id']}"
    steps = [int(p.name.removeprefix("checkpoint_step")) for p in run_dir.glob("checkpoint_step*")]
    assert steps and max(steps) < MAX_STEPS, steps
