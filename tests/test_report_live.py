"""The report while a sweep runs: the Tune callback that rewrites report.html at most once per interval (its
hooks called directly, no Ray), and `raysweep report` (once, and --watch serving the page on 127.0.0.1 and
rewriting it when the results change)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raysweep.experiment import layout as L
from raysweep.experiment import metrics as M
from tests.test_report_support import make_experiment

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_live_callback_rewrites_at_most_once_per_interval():
    from raysweep.sweep.live_report import LiveReportCallback

    clock, written = Clock(), []
    callback = LiveReportCallback("/exp", interval_s=30, clock=clock, background=False,
                                  write=lambda path, refresh: written.append((path, refresh, clock.now)))
    for step in range(200):  # Tune's loop steps many times a second
        clock.now = 100.0 + step * 0.5
        callback.on_step_end(iteration=step, trials=[])
    # 0 .. 99.5 s of sweep: rewrites at 30, 60 and 90 s (nothing to show at 0), each page reloading every 30 s
    assert [(t - 100.0, refresh) for _, refresh, t in written] == [(30.0, 30), (60.0, 30), (90.0, 30)]
    callback.on_experiment_end(trials=[])
    assert written[-1][:2] == ("/exp", None) and callback.writes == 4  # the last page: no reload any more


def test_a_failing_rewrite_is_reported_once_and_never_stops_the_sweep(capsys):
    from raysweep.sweep.live_report import LiveReportCallback

    def broken(path, refresh):
        raise ValueError("half-written result")

    clock = Clock()
    callback = LiveReportCallback("/exp", interval_s=1, clock=clock, background=False, write=broken)
    for step in range(6):
        clock.now += 1
        callback.on_step_end(iteration=step, trials=[])
    callback.on_experiment_end(trials=[])
    assert callback.writes == 6 and capsys.readouterr().err.count("live report could not be written") == 1


def test_the_live_callback_writes_the_page_in_the_background_and_pickles(tmp_path):
    import pickle

    from raysweep.sweep.live_report import LiveReportCallback

    root = make_experiment(tmp_path / "exp", running=1)
    clock = Clock()
    callback = LiveReportCallback(str(root), interval_s=30, clock=clock)
    assert not callback.maybe_write()  # the sweep starts
    clock.now += 30
    assert callback.maybe_write() and not callback.maybe_write()  # the second is within the interval
    callback._thread.join(timeout=60)
    page = (root / L.REPORT_FILE).read_text()
    assert "location.reload" in page and "reloads every 30 s" in page and "18 trial(s), 16 finished" in page
    callback.clock = time.monotonic  # Tune pickles its callbacks into the experiment directory
    pickle.loads(pickle.dumps(callback))
    callback.on_experiment_end(trials=[])
    callback._thread.join(timeout=60)
    assert "location.reload" not in (root / L.REPORT_FILE).read_text()


def test_report_writes_the_page_once_and_refuses_a_directory_that_is_no_experiment(tmp_path):
    from raysweep.cli.console import BadInput
    from raysweep.cli.report_cmd import cmd_report

    root = make_experiment(tmp_path / "exp")
    assert cmd_report(argparse.Namespace(experiment=str(root), watch=False, port=None, interval=None)) == 0
    page = (root / L.REPORT_FILE).read_text()
    assert 'id="plot-parcoords"' in page and "location.reload" not in page
    with pytest.raises(BadInput, match="not a raysweep experiment"):
        cmd_report(argparse.Namespace(experiment=str(tmp_path), watch=False, port=None, interval=None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := condition():
                return found
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_report_watch_serves_the_page_and_rewrites_it_when_results_change(tmp_path):
    root = make_experiment(tmp_path / "exp", running=1)
    port = _free_port()
    code = ("import argparse, sys; from raysweep.cli.report_cmd import cmd_report; "
            f"sys.exit(cmd_report(argparse.Namespace(experiment={str(root)!r}, watch=True, port={port}, "
            "interval=0.5)))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        first = _wait_for(lambda: _get(url), 60, "the served page")
        assert "18 trial(s), 16 finished" in first and "location.reload" in first and 'id="plot-pareto"' in first
        with pytest.raises(urllib.error.HTTPError, match="404"):  # the page only, never the experiment's files
            _get(url + L.SWEEP_FILE)
        # the running trial reports its last step and finishes: the next check rewrites the page
        trial = next(root.glob("t17_*"))
        with (trial / L.RESULT_FILE).open("a") as f:
            f.write(json.dumps({"trial_id": "t17", M.TRAIN_STEP: 30, M.EVAL_STEP: 30, M.EVAL_LOSS: 0.5}) + "\n")
        trials = (root / L.TRIALS_FILE).read_text().replace("t17,RUNNING", "t17,TERMINATED")
        (root / L.TRIALS_FILE).write_text(trials)
        _wait_for(lambda: "18 trial(s), 17 finished" in _get(url), 30, "the rewritten page")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving {root / L.REPORT_FILE} at {url}" in out.replace("\n", "")
    with pytest.raises(urllib.error.URLError):  # stopped: nothing listens any more
        _get(url)


@pytest.mark.parametrize(("value", "expected"), [("", 30.0), ("5", 5.0), ("0", None), ("soon", 30.0)])
def test_the_live_interval_comes_from_the_environment(monkeypatch, value, expected):
    from raysweep.sweep.live_report import INTERVAL_ENV, interval_from_env

    monkeypatch.setenv(INTERVAL_ENV, value)
    assert interval_from_env() == expected


@pytest.mark.skipif(os.name != "posix", reason="binds a port twice")
def test_report_watch_on_a_taken_port_is_a_clear_error(tmp_path):
    from raysweep.cli.console import BadInput
    from raysweep.cli.report_cmd import cmd_report

    root = make_experiment(tmp_path / "exp")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BadInput, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            cmd_report(argparse.Namespace(experiment=str(root), watch=True, port=port, interval=1))


def test_the_driver_gets_one_live_report_callback_unless_switched_off(monkeypatch):
    from raysweep.sweep.live_report import INTERVAL_ENV, LiveReportCallback, callbacks

    monkeypatch.setenv(INTERVAL_ENV, "7")
    [callback] = callbacks("/exp")
    assert isinstance(callback, LiveReportCallback) and callback.interval_s == 7 and callback.experiment_path == "/exp"
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert callbacks("/exp") == []
