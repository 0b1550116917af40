"""The local Ray a sweep starts and stops: warm imports in trial actors, Tune's loggers, a prompt shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT


def run_python(code: str, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_warmup_hook_returns_at_once_and_wait_finishes_every_import():
    """`start` is run by Ray before a worker takes work: it must hand the imports to a thread (else it would
    only move the wait), and `wait` must leave every module of the list imported."""
    out = run_python("""
        import json, sys
        from raysweep.sweep import warmup
        warmup.start()
        alive_after_start = warmup._thread.is_alive()   # torch alone takes over a second to import
        warmup.wait()
        print(json.dumps({"alive_after_start": alive_after_start, "alive_after_wait": warmup._thread.is_alive(),
                          "missing": [m for m in warmup.MODULES if m not in sys.modules]}))
    """)
    assert out == {"alive_after_start": True, "alive_after_wait": False, "missing": []}


@pytest.mark.parametrize("tensorboard, expected", [
    (False, ["ProgressProbe", "CSVLoggerCallback", "JsonLoggerCallback"]),
    (True, ["ProgressProbe", "CSVLoggerCallback", "JsonLoggerCallback", "TBXLoggerCallback"]),
])
def test_tune_loggers_are_csv_and_json_and_tensorboard_only_when_asked(tensorboard, expected, monkeypatch):
    """Tune would append its TensorBoard logger (which imports torch into the driver) to any callback list
    unless told not to: the env switch is set, and our list names the loggers we keep."""
    from raysweep.sweep import driver

    class ProgressProbe:
        pass

    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    callbacks = driver._with_loggers([ProgressProbe()], tensorboard)
    assert [type(c).__name__ for c in callbacks] == expected
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"


@pytest.mark.integration
def test_local_ray_runs_the_warmup_hook_in_actors_and_shuts_down_fully():
    """init_ray(warm_imports=True) makes Ray run raysweep.sweep.warmup.start in each worker process; shutdown_ray
    stops every process of that Ray, the autoscaler monitor included. A Ray the caller started itself is
    left running."""
    out = run_python("""
        import json, os, psutil, ray
        from raysweep.sweep import driver

        driver.init_ray(None, dashboard=False, warm_imports=True)

        @ray.remote(num_cpus=1)
        class Probe:
            def state(self):
                from raysweep.sweep import warmup
                started = warmup._thread is not None
                warmup.wait()
                import sys
                return {"pid": os.getpid(), "started": started, "torch": "torch" in sys.modules}

        state = ray.get(Probe.remote().state.remote())
        node = ray._private.worker._global_node
        pids = [info.process.pid for infos in node.all_processes.values() for info in infos]
        had_monitor = "monitor" in node.all_processes
        driver.shutdown_ray()
        import time
        def alive():
            out = []
            for p in pids + [state["pid"]]:
                try:
                    if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                        out.append(p)
                except psutil.NoSuchProcess:
                    pass
            return out
        deadline = time.monotonic() + 20  # workers exit when they see their raylet gone
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = alive()
        ours = {"state": state, "had_monitor": had_monitor, "alive": alive, "initialized": ray.is_initialized()}

        ray.init(num_cpus=1, include_dashboard=False)         # someone else's Ray
        driver.init_ray(None, dashboard=False, warm_imports=True)
        driver.shutdown_ray()
        ours["foreign_still_running"] = ray.is_initialized()
        ray.shutdown()
        print(json.dumps(ours))
    """)
    assert out["state"]["started"] and out["state"]["torch"], out
    assert out["had_monitor"] and out["alive"] == [] and not out["initialized"], out
    assert out["foreign_still_running"], out


def test_tensorboard_flag_without_tensorboardx_is_refused_before_ray_starts(monkeypatch, tmp_path, capsys):
    import importlib.util

    import ray

    from raysweep.__main__ import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # tensorboardX not installed (ray[tune] brings it here)
                        lambda name, *a: None if name == "tensorboardX" else real_find_spec(name, *a))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    rc = main(["run", "search_spaces/quickstart.yaml", "--storage", str(tmp_path), "--tensorboard"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tensorboard: tensorboardX is not installed" in err and "pip install tensorboardX" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
