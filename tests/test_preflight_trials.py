"""What can only fail inside a trial: the one-line reason in the summary and trials.csv, no worker traceback
on the console (it stays in the trial's error.txt), and a trial that makes no progress for
`resources.stall_timeout_s` ended with that reason (sweep/watchdog.py)."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from raysweep.cli.console import hide_trial_tracebacks
from raysweep.experiment.layout import ERROR_FILE, TRIALS_FILE
from raysweep.sweep.progress import read_error
from raysweep.sweep.watchdog import StallWatchdog
from tests.conftest import ROOT


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(path: Path, trial_id: str = "t1", status: str = "RUNNING"):
    path.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(trial_id=trial_id, status=status, local_path=str(path), path=str(path))


def test_a_trial_that_reports_nothing_for_the_timeout_is_ended_once_with_its_reason(tmp_path):
    clock, killed = _Clock(), []
    dog = StallWatchdog(30, clock=clock, kill=killed.append)
    trial, waiting = _trial(tmp_path / "t1"), _trial(tmp_path / "t2", "t2", status="PENDING")
    dog.on_trial_start(0, [trial], trial)
    clock.now = 25
    dog.on_trial_result(0, [trial], trial, {})
    clock.now = 50  # 25 s since its last report: fine
    dog.on_step_begin(0, [trial, waiting])
    assert killed == []
    clock.now = 56
    dog.on_step_begin(0, [trial, waiting])
    dog.on_step_begin(0, [trial, waiting])  # asked again before Tune saw the actor die: not killed twice
    assert killed == [trial]  # the pending trial holds no actor and is never judged
    reason = read_error(trial.path)  # what the live table, the summary and trials.csv show
    assert reason.startswith("no progress for 31 s") and "resources.stall_timeout_s is 30" in reason
    # retried (resources.max_failures): watched again from its restart
    dog.on_trial_recover(0, [trial], trial)
    clock.now = 80
    dog.on_step_begin(0, [trial])
    assert killed == [trial]
    clock.now = 90
    dog.on_step_begin(0, [trial])
    assert killed == [trial, trial]


def test_the_watchdog_survives_tunes_pickling():
    import pickle

    dog = pickle.loads(pickle.dumps(StallWatchdog(5)))
    assert dog.timeout_s == 5 and dog._last == {}


def test_failed_trials_tracebacks_are_kept_off_the_console(caplog):
    hide_trial_tracebacks()
    hide_trial_tracebacks()  # idempotent: `run` then `resume` in one process
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.ERROR):
        logger.error("Trial task failed for trial actor_trial_fn_00000", exc_info=ValueError("deep in a worker"))
        logger.error("something else Tune wants said")
    assert [r.getMessage() for r in caplog.records] == ["something else Tune wants said"]


@pytest.mark.integration
def test_a_stalled_trial_ends_with_its_reason_and_no_traceback(tmp_path, builtin_model_dir, builtin_task_files):
    # 2 s is less than a trial's imports take: it reports nothing in time, as a hung trial would
    grid = tmp_path / "stall.yaml"
    grid.write_text("name: stall\ndata: {max_seq_len: 32}\ntrain: {max_steps: 20}\n"
                    "resources: {stall_timeout_s: 2}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "raysweep", "run", grid, "--storage", tmp_path / "runs",
                           "--no-dashboard"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "Traceback" not in console and "Trial task failed" not in console
    assert "0 finished, 1 failed" in proc.stdout and "no progress for 2 s" in " ".join(proc.stdout.split())
    with (tmp_path / "runs" / "stall" / TRIALS_FILE).open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ERROR" and row["error"].startswith("no progress for 2 s")
    assert "killed by `ray.kill`" in (Path(row["trial_path"]) / ERROR_FILE).read_text()  # the details stay there
