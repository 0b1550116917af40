"""Experiments in object storage: `storage: s3://bucket/prefix` against a real S3-compatible server on
127.0.0.1 (moto's server mode, tests/s3_helpers.py). A sweep runs to s3://, its driver is SIGKILLed, `resume`
continues it from s3://, `analyze` and `export` read it from s3://, and nothing but caches is written to local
disk. On a two-node `ray start` cluster the nodes share the s3:// storage instead of a shared directory."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from raysweep.experiment import metrics as M
from raysweep.experiment import storage
from tests.cluster_helpers import RayStartCluster, run_cli
from tests.conftest import ROOT
from tests.s3_helpers import keys, make_bucket, moto_server, read, s3_env
from tests.test_fault_injection import kill_driver, saved_state, start_cli, wait_for

pytestmark = pytest.mark.integration

BUCKET = "sweeps"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint, pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(endpoint).items():
            mp.setenv(key, value)  # inherited by the CLI, its local Ray and every trial process
        make_bucket(endpoint, BUCKET)
        yield endpoint


def trials_in_s3(endpoint: str, prefix: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(read(endpoint, BUCKET, f"{prefix}/trials.csv").decode())))


def results_in_s3(endpoint: str, trial_prefix: str) -> list[dict]:
    text = read(endpoint, BUCKET, f"{trial_prefix}/result.json").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


KILLED = """
name: s3run
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 20, eval_every: 20, log_every: 10, checkpoint_every: 20, keep_last: 2, batch_size: 16,
        lr: 3.0e-3}
adapter: {r: 4}
grid:
  - {train.seed: 0}
  - {train.seed: 1, train.max_steps: 400}    # still running when the driver is killed
"""


@pytest.fixture(scope="module")
def killed_and_resumed(s3, tmp_path_factory, builtin_model_dir, builtin_task_files):
    root = tmp_path_factory.mktemp("s3run")
    grid, log = root / "s3run.yaml", root / "run.log"
    grid.write_text(KILLED)
    experiment, prefix = f"s3://{BUCKET}/runs/s3run", "runs/s3run"
    proc = start_cli(log, "run", grid, "--storage", f"s3://{BUCKET}/runs", "--name", "s3run")

    def mid_sweep():
        # what `resume` will start from: Tune's experiment state as uploaded to s3://
        local = storage.pull(experiment, root / "state")
        saved = saved_state(local)
        done = [t for t, (status, _) in saved.items() if status == "TERMINATED"]
        running = [t for t, (status, checkpointed) in saved.items() if status == "RUNNING" and checkpointed]
        return saved if done and running else None

    saved = wait_for(mid_sweep, proc, log, "the short trial finished and the long one checkpointed, in s3://")
    kill_driver(proc)
    before = {"saved": saved, "objects": keys(s3, BUCKET, prefix + "/"), "trials": trials_in_s3(s3, prefix)}
    resumed = run_cli("resume", experiment)
    evaluated = run_cli("eval", experiment, "--best", "--generation", "--limit", "8", "--no-baseline")
    analyzed = run_cli("analyze", experiment)
    exported = run_cli("export", experiment, "--best", "--out", root / "export")
    reported = run_cli("report", experiment)
    return {"root": root, "experiment": experiment, "prefix": prefix, "before": before, "resumed": resumed,
            "evaluated": evaluated, "analyzed": analyzed, "exported": exported, "reported": reported, "log": log}


def test_resume_from_s3_finishes_the_killed_sweep_with_nothing_lost(s3, killed_and_resumed):
    k = killed_and_resumed
    proc = k["resumed"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 finished, 0 failed, 0 unfinished" in proc.stdout
    rows = {r["trial_id"]: r for r in trials_in_s3(s3, k["prefix"])}
    assert len(rows) == 2 and {r["status"] for r in rows.values()} == {"TERMINATED"}
    finished = [t for t, (status, _) in k["before"]["saved"].items() if status == "TERMINATED"]
    running = [t for t, (status, _) in k["before"]["saved"].items() if status == "RUNNING"]
    for trial_id, row in rows.items():
        # trials.csv names the trial directory and checkpoint in the object store
        assert row["trial_path"].startswith(k["experiment"] + "/") and row[M.CHECKPOINT_PATH].startswith(
            row["trial_path"] + "/checkpoint_")
        trial_prefix = row["trial_path"].removeprefix(f"s3://{BUCKET}/")
        results = results_in_s3(s3, trial_prefix)
        steps = [r[M.TRAIN_STEP] for r in results]
        assert steps[-1] == int(row[M.TRAIN_STEP]) == (20 if trial_id in finished else 400)
        checkpoint = row[M.CHECKPOINT_PATH].removeprefix(f"s3://{BUCKET}/")
        assert json.loads(read(s3, BUCKET, f"{checkpoint}/metrics.json"))[M.TRAIN_STEP] == int(row[M.TRAIN_STEP])
        if trial_id in running:
            # went on from its own checkpoint in s3:// (a restart from scratch would report step 0 again)
            restarts = [i for i, s in enumerate(steps) if i and s <= steps[i - 1]]
            assert restarts, steps
            assert steps[restarts[0]] > 0, steps
    # the trial that had finished was not run again: its objects are the ones it had before the kill
    old = {k_: v for k_, v in k["before"]["objects"].items() if any(f"/{t}_" in k_ for t in finished)}
    assert old and all(keys(s3, BUCKET, k["prefix"] + "/").get(key) == size for key, size in old.items())
    earlier = {r["trial_id"]: r for r in k["before"]["trials"]}
    for trial_id in finished:
        assert rows[trial_id]["ended_at"] == earlier[trial_id]["ended_at"] != ""


def test_eval_analyze_export_and_report_read_the_experiment_from_s3(s3, killed_and_resumed):
    k = killed_and_resumed
    for step in ("evaluated", "analyzed", "reported"):
        assert k[step].returncode == 0, k[step].stdout[-3000:] + k[step].stderr[-3000:]
    objects = keys(s3, BUCKET, k["prefix"] + "/")
    # eval wrote the best checkpoint's task metrics into it, in the object store; analyze read them back
    evaluated = [key for key in objects if key.endswith("/task_metrics.json")]
    assert len(evaluated) == 1 and f"wrote s3://{BUCKET}/{evaluated[0]}" in " ".join(k["evaluated"].stdout.split())
    assert f"wrote {k['experiment']}/report.html" in k["reported"].stdout
    # analyze wrote its tables and report back beside the experiment, in the object store
    for name in ("summary.csv", "summary_table.md", "pareto.csv", "report.html"):
        assert f"{k['prefix']}/{name}" in objects, name
    summary = list(csv.DictReader(io.StringIO(read(s3, BUCKET, f"{k['prefix']}/summary.csv").decode())))
    assert {r["status"] for r in summary} == {"TERMINATED"} and len(summary) == 2
    assert sum(bool(r.get("gen/exact_match")) for r in summary) == 1
    proc = k["exported"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = k["root"] / "export"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    info = json.loads((out / "export.json").read_text())
    assert info["check"]["passed"] is True
    # it names where the adapter came from as the user does: in the object store, not the local mirror
    assert info["source_checkpoint"].startswith(k["experiment"] + "/") and info["selection"]["experiment"] == k["experiment"]


def test_nothing_but_caches_is_written_locally(killed_and_resumed):
    """raysweep's files of the experiment (its grid copy, trial table, trial directories) exist locally only in
    the cache's mirror, which analyze/export/eval/report read; not in the default storage, the working
    directory or anywhere else in the cache. (Ray's driver keeps its own staging copy in its session's
    temporary directory.)"""
    k = killed_and_resumed
    cache = Path(os.environ["RAYSWEEP_CACHE"]).resolve()
    mirror = storage.mirror_of(k["experiment"])
    assert mirror.is_relative_to(cache) and (mirror / "trials.csv").is_file()
    places = [cache, ROOT, Path.home() / "ray_results", k["root"]]
    found = [p for place in places if place.is_dir() for p in place.rglob("raysweep.yaml")
             if "s3run" in p.parent.name]
    assert found and all(p.is_relative_to(mirror) for p in found), found
    # the test's own directory holds its grid, the driver's log and what it pulled or exported itself
    local = [p for p in k["root"].rglob("*") if p.is_file() and "export" not in p.parts and "state" not in p.parts]
    assert sorted(p.name for p in local) == ["run.log", "s3run.yaml"]


GRID = """
name: shared
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 30, eval_every: 10, log_every: 5, batch_size: 16, lr: 3.0e-3}
adapter: {r: 4}
grid:
  train.seed: [0, 1]
"""


def test_two_ray_start_nodes_share_s3_storage_instead_of_a_directory(s3, tmp_path, builtin_model_dir,
                                                                     builtin_task_files):
    """`ray start` head (0 CPUs) + two 1-CPU nodes, no shared directory: each trial writes its checkpoints
    to s3:// from its own node, the driver its files, and the results are read back from s3://."""
    grid = tmp_path / "shared.yaml"
    grid.write_text(GRID)
    cluster = RayStartCluster(tmp_path)  # its environment (and so every node's) carries the s3 endpoint
    try:
        cluster.start()
        nodes = cluster.raylet_node_ids()
        proc = run_cli("run", grid, "--address", cluster.address, "--storage", f"s3://{BUCKET}/cluster",
                       "--name", "shared", env=cluster.env)
    finally:
        cluster.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = trials_in_s3(s3, "cluster/shared")
    assert len(rows) == 2
    assert sorted(r[M.SYS_NODE_ID] for r in rows) == sorted([nodes["worker0"], nodes["worker1"]]), nodes
    for row in rows:
        assert row["status"] == "TERMINATED" and int(row[M.TRAIN_STEP]) == 30
        checkpoint = row[M.CHECKPOINT_PATH].removeprefix(f"s3://{BUCKET}/")
        assert checkpoint.startswith("cluster/shared/")
        assert json.loads(read(s3, BUCKET, f"{checkpoint}/metrics.json"))[M.TRAIN_STEP] == 30
        results = results_in_s3(s3, row["trial_path"].removeprefix(f"s3://{BUCKET}/"))
        assert {r[M.EVAL_STEP] for r in results} == {0, 10, 20, 30}
        assert {r[M.SYS_NODE_ID] for r in results} == {row[M.SYS_NODE_ID]}
    analyzed = run_cli("analyze", f"s3://{BUCKET}/cluster/shared")
    assert analyzed.returncode == 0, analyzed.stdout[-3000:] + analyzed.stderr[-3000:]
    assert "cluster/shared/summary.csv" in keys(s3, BUCKET, "cluster/shared/")


def test_packed_trials_store_to_s3(s3, tmp_path, builtin_model_dir, builtin_task_files):
    """The packed trials' checkpoints, relayed from their pack worker, land in the object store too, and
    export's check reloads the best one from there. (The train executor's Ray Train runs go to
    <experiment>/train_runs/ in the store through Ray itself; that Ray records their checkpoints without the
    scheme, and trials.csv gets it back, is tests/test_storage.py's.)"""
    grid = tmp_path / "shared.yaml"
    grid.write_text(GRID)
    proc = run_cli("run", grid, "resources.pack=2", "resources.max_concurrent=1",
                   "--storage", f"s3://{BUCKET}/executors", "--name", "pack")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = trials_in_s3(s3, "executors/pack")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"TERMINATED"}
    for row in rows:
        assert row[M.CHECKPOINT_PATH].startswith(f"s3://{BUCKET}/executors/pack/"), row[M.CHECKPOINT_PATH]
        checkpoint = row[M.CHECKPOINT_PATH].removeprefix(f"s3://{BUCKET}/")
        assert json.loads(read(s3, BUCKET, f"{checkpoint}/metrics.json"))[M.TRAIN_STEP] == 30
    assert len({r[M.SYS_PACK] for r in rows}) == 1  # both trained in one pack worker (one slot)
    exported = run_cli("export", f"s3://{BUCKET}/executors/pack", "--best", "--out", tmp_path / "export")
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    assert "relative difference" in exported.stdout
