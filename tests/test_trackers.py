"""Trackers (`tracking:`): the validation `plan`/`run` share (fast), and one 2-trial sweep through the CLI
logging to W&B in offline mode and to a real local MLflow server (integration)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

QUICK = ["train.max_steps=4", "train.eval_every=2", "train.log_every=2", "adapter.type=lora", "train.seed=0",
         "grid.adapter.r=[4, 8]", "train.warmup_steps=0"]


def run_cli(*args, env: dict | None = None, timeout=600):
    env = dict(os.environ, COLUMNS="400", **(env or {}))
    return subprocess.run([sys.executable, "-m", "raysweep", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def problem_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "tracking." in line]


# --- validation (no Ray, no sweep) --------------------------------------------------------------------------

def test_unknown_wandb_mode_is_one_line_exit_2():
    proc = run_cli("plan", "search_spaces/quickstart.yaml", "tracking.wandb.mode=sometimes", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = problem_lines(proc)
    assert len(lines) == 1 and "tracking.wandb.mode" in lines[0] and "offline" in lines[0], lines


def test_unreachable_mlflow_server_is_one_line_exit_2():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_cli("plan", "search_spaces/quickstart.yaml", f"tracking.mlflow.tracking_uri={uri}", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = problem_lines(proc)
    assert len(lines) == 1 and "tracking.mlflow.tracking_uri" in lines[0] and uri in lines[0], lines
    assert "mlflow server" in " ".join((proc.stdout + proc.stderr).split())  # the fix (rich may wrap the line)


def test_problems_name_the_key_and_the_fix(monkeypatch):
    from raysweep.sweep import trackers

    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name: None if name in ("wandb", "mlflow") else real(name))
    found = trackers.problems({"wandb": {"mode": "offline"}, "mlflow": {}})
    assert len(found) == 2
    assert found[0].startswith("tracking.wandb: wandb is not installed") and "[track]" in found[0]
    assert found[1].startswith("tracking.mlflow: mlflow is not installed")
    assert trackers.problems({"wandb": {"mode": "disabled"}}) == []  # disabled: nothing needed
    assert trackers.problems(None) == []


def test_online_wandb_without_login_is_a_problem(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    from raysweep.sweep import trackers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    [problem] = trackers.problems({"wandb": {"mode": "online"}})
    assert "tracking.wandb.mode 'online'" in problem and "offline" in problem


def test_a_failing_tracker_never_stops_the_sweep(capsys):
    from raysweep.sweep.trackers import _Guarded

    class Broken:
        def log_trial_result(self, iteration, trial, result):
            raise ConnectionError("server gone")

    class Tracker(_Guarded, Broken):
        _tracker = "MLflow"

    tracker = Tracker()
    tracker.log_trial_result(1, None, {})
    tracker.log_trial_result(2, None, {})  # left out after the first failure: reported once
    err = capsys.readouterr().err
    assert err.count("MLflow tracking stopped (ConnectionError: server gone)") == 1


def test_callbacks_default_to_the_experiment(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # set by callbacks(): undone
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    from raysweep.config.schema import TrackingConfig
    from raysweep.sweep import trackers

    path = str(tmp_path / "my-sweep")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    wandb, mlflow = trackers.callbacks(TrackingConfig(wandb={"mode": "offline"}, mlflow={}), path)
    assert type(wandb).__name__ == "WandbTracker" and wandb.group == "my-sweep"
    assert wandb.kwargs == {"mode": "offline", "dir": path}  # runs in <experiment>/wandb/ (no WANDB_DIR)
    assert type(mlflow).__name__ == "MlflowTracker" and mlflow.experiment_name == "my-sweep"
    assert mlflow.tracking_uri == f"sqlite:///{tmp_path / 'my-sweep' / 'mlflow.db'}"
    mlflow.setup()  # the local store: created in the experiment directory, artifacts beside it
    assert not mlflow._failed and (tmp_path / "my-sweep" / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    found = MlflowClient(mlflow.tracking_uri).get_experiment_by_name("my-sweep")
    assert found.artifact_location.endswith(str(tmp_path / "my-sweep" / "mlflow-artifacts"))
    assert trackers.callbacks(TrackingConfig(wandb={"mode": "disabled"}), path) == []
    assert trackers.callbacks(TrackingConfig(), path) == []


# --- a real sweep -------------------------------------------------------------------------------------------

@pytest.fixture()
def mlflow_server(tmp_path):
    pytest.importorskip("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def wandb_records(run_dir: Path):
    """The records of an offline run's transaction log (run-<id>.wandb), parsed with wandb's own protobuf.
    wandb >= 0.2x ships no Python reader for the file; its framing is LevelDB's log format after a 7-byte
    ':W&B' header: 32 KiB blocks of (crc32, length, type) chunks, type 1 a whole record, 2/3/4 its parts."""
    import struct

    from wandb.proto import wandb_internal_pb2

    [log] = run_dir.glob("run-*.wandb")
    data, pos, chunks = log.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(run_dir: Path) -> tuple[dict, str, list[dict]]:
    """(config at wandb.init, group, every wandb.log row) of an offline run."""
    config, group, rows = {}, "", []

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {key(i): json.loads(i.value_json) for i in record.run.config.update if key(i) != "_wandb"}
            group = record.run.run_group
        elif kind == "history":
            rows.append({key(i): json.loads(i.value_json) for i in record.history.item})
    return config, group, rows


@pytest.mark.integration
def test_sweep_logs_each_trial_to_wandb_offline_and_mlflow(tmp_path, mlflow_server, builtin_model_dir,
                                                            builtin_task_files):
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    env = {"WANDB_DIR": str(wandb_dir), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
           "WANDB_SILENT": "true"}
    proc = run_cli("run", "search_spaces/quickstart.yaml", "--storage", tmp_path / "exp", "--name", "tracked",
                   *QUICK, "tracking.wandb={project: raysweep-test, mode: offline}",
                   f"tracking.mlflow={{tracking_uri: '{mlflow_server}', experiment: tracked-sweep}}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tracking stopped" not in proc.stderr
    assert "2/2 done · ETA 0s" in proc.stdout  # the table's header at the end (progress.py)
    cells = {4, 8}

    # W&B: one offline run per trial, in the sweep's group, config = the cell, eval/loss history
    runs = sorted(wandb_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 2, runs
    ranks = set()
    for run in runs:
        config, group, history = wandb_run(run)
        assert group == "tracked"  # the sweep (its experiment name)
        ranks.add(config["adapter.r"])
        evals = [(row["train/step"], row["eval/loss"]) for row in history if "eval/loss" in row]
        assert len(evals) >= 2 and all(loss > 0 for _, loss in evals), history
        assert evals[-1][0] == 4
    assert ranks == cells

    # MLflow: one run per trial in the named experiment, params = the cell, eval/loss per optimizer step
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked-sweep")
    assert experiment is not None
    mlruns = client.search_runs([experiment.experiment_id])
    assert len(mlruns) == 2
    assert {int(r.data.params["adapter.r"]) for r in mlruns} == cells
    for r in mlruns:
        assert set(r.data.params) == {"adapter.r"}
        assert r.info.status == "FINISHED"
        history = client.get_metric_history(r.info.run_id, "eval/loss")
        assert len(history) >= 2 and max(m.step for m in history) == 4
