"""Integration tier, multi-node: `raysweep run --address` on a Ray cluster of several nodes on this machine.

A head with no CPUs and two one-CPU worker nodes, so the two trial slots can only be filled one per worker
node: trials must spread, and their results (written by processes on different nodes) must all land in the
experiment directory on the storage every node shares (here the local disk). Each trial reports the Ray node
that ran it (`sys/node_id`; every node here has the same IP). Once with `ray.cluster_utils.Cluster` (actor
executor) and once with real `ray start` processes and token authentication (train executor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysweep.experiment import metrics as M
from tests.cluster_helpers import RayStartCluster, local_cluster, run_cli
from tests.test_integration import kept_checkpoints, read_trials, results_of

pytestmark = pytest.mark.integration

GRID = """
name: multi
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 30, eval_every: 10, log_every: 5, batch_size: 16, lr: 3.0e-3}
adapter: {r: 4}
grid:
  train.seed: %s
"""


def check_results_in_storage(experiment: Path, rows: list[dict]) -> None:
    """Every trial's reports (steps 0 to 30, evals at 0/10/20/30) and final checkpoint are in the shared
    experiment directory, reported from a single node per trial."""
    for row in rows:
        assert row["status"] == "TERMINATED" and int(row["train/step"]) == 30, row
        trial_dir, checkpoint = Path(row["trial_path"]), Path(row["checkpoint_path"])
        assert trial_dir.parent == experiment and experiment in checkpoint.parents
        results = results_of(trial_dir)
        assert {r[M.EVAL_STEP] for r in results} == {0, 10, 20, 30}
        assert results[-1][M.EVAL_LOSS] == pytest.approx(float(row[M.EVAL_LOSS]))
        assert {r[M.SYS_NODE_ID] for r in results} == {row[M.SYS_NODE_ID]}
        assert json.loads((checkpoint / "metrics.json").read_text())[M.TRAIN_STEP] == 30
        assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
        assert len(kept_checkpoints(row)) == 2


def test_trials_spread_over_the_worker_nodes_of_a_local_cluster(tmp_path, monkeypatch, builtin_model_dir,
                                                                 builtin_task_files):
    """ray.cluster_utils.Cluster, actor executor: 4 trials on 2 one-CPU workers, 2 reused actors."""
    grid = tmp_path / "multi.yaml"
    grid.write_text(GRID % "[0, 1, 2, 3]")
    storage = tmp_path / "shared"
    with local_cluster(monkeypatch) as (cluster, workers):
        proc = run_cli("run", grid, "--address", cluster.address, "--storage", storage, "--name", "multi")
        head = cluster.head_node.node_id
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 at once" in proc.stdout  # slots from the cluster's CPUs: 0 + 1 + 1
    rows = read_trials(storage / "multi")
    assert len(rows) == 4
    # both worker nodes ran trials, the CPU-less head none
    ran_on = {r[M.SYS_NODE_ID] for r in rows}
    assert ran_on == {w.node_id for w in workers} and head not in ran_on
    assert len({r[M.SYS_PID] for r in rows}) == 2  # one reused actor per node
    check_results_in_storage(storage / "multi", rows)


def test_trials_spread_over_ray_start_nodes_with_token_auth(tmp_path, builtin_model_dir, builtin_task_files):
    """`ray start` head + 2 nodes (token auth), train executor: each trial's TorchTrainer worker on its own
    node, Ray Train's checkpoints in the experiment's train_runs/ on the shared storage."""
    grid = tmp_path / "multi.yaml"
    grid.write_text(GRID % "[0, 1]")
    storage = tmp_path / "shared"
    cluster = RayStartCluster(tmp_path)
    try:
        cluster.start()
        nodes = cluster.raylet_node_ids()
        proc = run_cli("run", grid, "resources.executor=train", "--address", cluster.address, "--storage", storage,
                       "--name", "multi", env=cluster.env)
    finally:
        cluster.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 at once" in proc.stdout
    rows = read_trials(storage / "multi")
    assert len(rows) == 2
    assert sorted(r[M.SYS_NODE_ID] for r in rows) == sorted([nodes["worker0"], nodes["worker1"]]), nodes
    check_results_in_storage(storage / "multi", rows)
    for row in rows:  # Ray Train's run directory, named after the trial, under the experiment
        assert Path(row["checkpoint_path"]).parent == storage / "multi" / "train_runs" / f"train-{row['trial_id']}"
