"""Integration tier, fault injection: a sweep survives what kills processes and nodes, and fails clearly
where it must.

- a trial's process is SIGKILLed (`resources.max_failures: 1`): the trial goes on from its latest checkpoint
  in a new process, losing less than one checkpoint interval (both executors);
- the driver (`python -m raysweep run`) is SIGKILLed mid-sweep: `resume` finishes the sweep; trials that
  Tune had recorded as finished are not touched again, and no reported result is lost;
- a trial diverges (a real one: lr 1e25 gives a NaN loss after one step): only that trial fails, naming the
  non-finite loss; `resume` leaves it failed, `resume --retry-errored` runs it again;
- a worker node of a 3-node cluster is removed mid-sweep: every trial finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from raysweep.experiment import metrics as M
from tests.cluster_helpers import local_cluster
from tests.conftest import ROOT
from tests.test_integration import (
    eval_loss_of_saved_adapter,
    kept_checkpoints,
    read_trials,
    results_of,
    run_cli,
)

pytestmark = pytest.mark.integration

BASE = """
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 150, eval_every: 25, log_every: 5, batch_size: 16, lr: 3.0e-3}
adapter: {r: 4}
"""


def start_cli(log: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raysweep", *map(str, args)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, COLUMNS="200"))


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 600):
    """Poll `condition()` until it returns something truthy (returned); the sweep must still be running.
    A JSON file the sweep is writing at that moment (Tune's params.json, result.json) reads as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except json.JSONDecodeError:
            found = None
        if found:
            return found
        assert proc.poll() is None, f"the sweep ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def restart_index(results: list[dict], pid) -> int:
    """Index of the first result reported after the process `pid` stopped reporting."""
    ran = [i for i, r in enumerate(results) if r[M.SYS_PID] == pid]
    assert ran and ran[-1] + 1 < len(results), [(r[M.TRAIN_STEP], r[M.SYS_PID]) for r in results]
    return ran[-1] + 1


def checkpoint_step(result: dict) -> int | None:
    """The step of the checkpoint reported with this result, if one was."""
    if result.get("checkpoint_dir_name"):  # Tune (actor executor): checkpoint_NNNNNN counts checkpoints
        return result[M.TRAIN_STEP]
    if result.get(M.CHECKPOINT_PATH):  # Ray Train (train executor): checkpoint_stepNNNNNN
        return int(Path(result[M.CHECKPOINT_PATH]).name.removeprefix("checkpoint_step"))
    return None


def check_resumed_from_latest_checkpoint(results: list[dict], restart: int, every: int) -> None:
    """The first report after a restart comes from the latest checkpoint recorded before it: not step 0, on a
    checkpoint step, and less than one checkpoint interval behind the last step reported before."""
    before, first = [r[M.TRAIN_STEP] for r in results[:restart]], results[restart][M.TRAIN_STEP]
    checkpointed = [s for s in map(checkpoint_step, results[:restart]) if s is not None]
    assert first > 0 and first % every == 0 and first >= max(checkpointed), (before, checkpointed, first)
    assert max(before) - first < every, (before, first)


# ------------------------------------------------------------------------------- a trial's process dies


@pytest.mark.parametrize("executor", ["actor", "train", "packed"])
def test_killed_trial_process_is_retried_from_its_latest_checkpoint(tmp_path, builtin_model_dir, builtin_task_files,
                                                                    executor):
    """resources.max_failures under both executors and for packed trials: SIGKILL the process running the
    training loop (its pid is in every report; packed: the pack worker); the trial restarts from its latest
    checkpoint (not from step 0) in a new process and finishes, and its checkpoints and reported metrics look
    like those of an uninterrupted trial."""
    packed = ["resources.pack=2"] if executor == "packed" else []
    executor = "actor" if executor == "packed" else executor
    storage, log = tmp_path / "runs", tmp_path / "run.log"
    proc = start_cli(log, "run", "search_spaces/quickstart.yaml", "grid.train.seed=[0]", "grid.adapter.type=[lora]",
                     "adapter.r=4", "train.max_steps=200", "train.checkpoint_every=25", "resources.max_failures=1",
                     f"resources.executor={executor}", *packed, "--storage", storage, "--name", "kill")

    def past_two_checkpoints():
        for trial_dir in (storage / "kill").glob("*/"):
            results = results_of(trial_dir)
            if results and results[-1][M.TRAIN_STEP] >= 50:
                return results[-1][M.SYS_PID]
        return None

    killed_pid = wait_for(past_two_checkpoints, proc, log, "step 50")
    os.kill(killed_pid, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

    [row] = read_trials(storage / "kill")
    assert row["status"] == "TERMINATED" and int(row["train/step"]) == 200
    results = results_of(Path(row["trial_path"]))
    restart = restart_index(results, killed_pid)
    check_resumed_from_latest_checkpoint(results, restart, every=25)
    assert int(row["sys/pid"]) != killed_pid
    assert float(row["eval/loss"]) < 0.8 * float(row["eval/initial_loss"])
    assert len(kept_checkpoints(row)) == 2
    assert eval_loss_of_saved_adapter(Path(row["checkpoint_path"])) == pytest.approx(float(row["eval/loss"]), rel=1e-4)


# ------------------------------------------------------------- the driver dies; a trial diverges; resume

CHAOS = BASE + """
name: chaos
grid:
  - {train.lr: 1.0e+25}                    # diverges: NaN loss after one step
  - {train.seed: [0, 1]}
  - {train.seed: 2, train.max_steps: 400}  # still running when the driver is killed
"""


def saved_state(experiment: Path) -> dict[str, tuple[str, bool]]:
    """trial id -> (status, whether a checkpoint is recorded) in Tune's latest saved experiment state: what
    `resume` starts from. (Tune pickles its checkpoint manager; the checkpoint's directory name shows.)"""
    files = sorted(experiment.glob("experiment_state-*.json"))
    try:
        state = json.loads(files[-1].read_text()) if files else {"trial_data": []}
    except json.JSONDecodeError:  # being written
        return {}
    saved = {}
    for trial, metadata in state["trial_data"]:
        trial, manager = json.loads(trial), json.loads(metadata)["checkpoint_manager"]
        saved[trial["trial_id"]] = (trial["status"], b"checkpoint_0" in bytes.fromhex(manager.get("value", "")))
    return saved


def trial_id_of(dirname: str) -> str:
    return "_".join(dirname.split("_")[:2])  # <experiment>_<index>_<cell>


def cell_of(trial_dir: Path) -> dict:
    return json.loads((trial_dir / "params.json").read_text())["cell"]


def files_of(trial_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under a trial directory: (size, mtime in ns)."""
    return {str(p.relative_to(trial_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(trial_dir.rglob("*")) if p.is_file()}


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL a `raysweep run` driver and the local Ray it started. Ray's dashboard and runtime-env agents
    outlive a SIGKILLed driver (Ray 2.60 here); trial processes linger a few seconds. None may touch the
    experiment while `resume` runs."""
    driver = psutil.Process(proc.pid)
    ray_processes = driver.children(recursive=True)  # the driver's local Ray: gone with it, or killed below
    driver.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    for p in ray_processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(ray_processes, timeout=30)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, builtin_model_dir, builtin_task_files):
    """A sweep whose driver is SIGKILLed once Tune has saved a finished trial and the diverged one, while the
    long trial runs; then `resume`, then `resume --retry-errored`. What each step left, for the tests."""
    root = tmp_path_factory.mktemp("chaos")
    grid, storage, log = root / "chaos.yaml", root / "runs", root / "run.log"
    grid.write_text(CHAOS)
    experiment = storage / "chaos"
    proc = start_cli(log, "run", grid, "--storage", storage, "--name", "chaos")

    def mid_sweep():
        saved = saved_state(experiment)
        statuses = {status for status, _ in saved.values()}
        long_trial = next((trial_id_of(d.parent.name) for d in experiment.glob("*/params.json")
                           if cell_of(d.parent).get("train.max_steps") == 400), None)
        ready = {"ERROR", "TERMINATED"} <= statuses and saved.get(long_trial) == ("RUNNING", True)
        return saved if ready else None

    saved = wait_for(mid_sweep, proc, log, "a finished and a failed trial saved, the long one running")
    kill_driver(proc)

    trial_paths = {d.parent.name: d.parent for d in experiment.glob("*/params.json")}
    before = {
        "saved": saved,
        "results": {name: results_of(path) for name, path in trial_paths.items()},
        "files": {name: files_of(path) for name, path in trial_paths.items()},
        "trials_csv": {r["trial_id"]: r for r in read_trials(experiment)},
    }
    resumed = run_cli("resume", experiment)
    after_resume = {"results": {n: results_of(p) for n, p in trial_paths.items()},
                    "files": {n: files_of(p) for n, p in trial_paths.items()},
                    "trials": {r["trial_id"]: r for r in read_trials(experiment)}}
    retry_started = time.time()
    retried = run_cli("resume", experiment, "--retry-errored")
    return {"experiment": experiment, "paths": trial_paths, "before": before, "resumed": resumed,
            "after_resume": after_resume, "retried": retried, "retry_started": retry_started}


def _by_name(chaos, trial_id: str) -> str:
    return next(name for name in chaos["paths"] if name.startswith(trial_id))


def test_killed_driver_resume_finishes_every_trial(chaos):
    proc = chaos["resumed"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the diverged trial is still failed
    assert "3 finished, 1 failed, 0 unfinished" in proc.stdout
    trials = chaos["after_resume"]["trials"]
    assert len(trials) == 4
    for trial_id, row in trials.items():
        cell = cell_of(chaos["paths"][_by_name(chaos, trial_id)])
        if "train.lr" in cell:
            assert row["status"] == "ERROR"
        else:
            assert row["status"] == "TERMINATED" and int(row["train/step"]) == cell.get("train.max_steps", 150)


def test_trials_finished_before_the_kill_are_untouched(chaos):
    """Trials Tune had saved as finished are not started again: every file in their directories (results,
    checkpoints) is byte-for-byte and mtime the same, and trials.csv keeps their launch and end times."""
    saved_finished = [t for t, (status, _) in chaos["before"]["saved"].items() if status == "TERMINATED"]
    assert saved_finished
    for trial_id in saved_finished:
        name = _by_name(chaos, trial_id)
        assert chaos["after_resume"]["files"][name] == chaos["before"]["files"][name]
        earlier, now = chaos["before"]["trials_csv"][trial_id], chaos["after_resume"]["trials"][trial_id]
        assert (now["launched_at"], now["ended_at"]) == (earlier["launched_at"], earlier["ended_at"]) != ("", "")
        assert now["eval/loss"] == earlier["eval/loss"]


def test_no_reported_result_is_lost_and_interrupted_trials_go_on_from_a_checkpoint(chaos):
    """Every result reported before the kill is still there, in order, followed by the resumed run's, which
    starts from the checkpoint Tune had saved (the long trial: past step 0). A trial with no saved checkpoint
    starts over: Tune then replaces its log with the new run's, from step 0."""
    before, after = chaos["before"]["results"], chaos["after_resume"]["results"]
    for name, rows in before.items():
        cell = cell_of(chaos["paths"][name])
        # (a trial started after Tune last saved the state is not in it: resumed as pending)
        status, saved_checkpoint = chaos["before"]["saved"].get(trial_id_of(name), ("PENDING", False))
        if status in ("TERMINATED", "ERROR"):  # not started again by a plain resume
            assert after[name] == rows, name
            continue
        if saved_checkpoint:
            assert after[name][: len(rows)] == rows, name
            new = after[name][len(rows):]
        else:
            new = after[name]
            assert new[0][M.TRAIN_STEP] == 0 and all(r["timestamp"] >= rows[-1]["timestamp"] for r in new if rows)
        steps = [r[M.TRAIN_STEP] for r in new]
        assert steps[0] in {0, *filter(None, map(checkpoint_step, rows))} and steps == sorted(steps), (name, steps)
        assert steps[-1] == cell.get("train.max_steps", 150)
        if cell.get("train.max_steps") == 400:
            assert saved_checkpoint and steps[0] > 0, [r[M.TRAIN_STEP] for r in rows]


def test_diverging_trial_fails_with_a_clear_reason_and_the_others_finish(chaos):
    trials = chaos["after_resume"]["trials"]
    [failed] = [r for r in trials.values() if r["status"] == "ERROR"]
    assert "train.lr" in cell_of(Path(failed["trial_path"]))
    assert re.match(r"NonFiniteLossError: train/loss is (nan|inf) at step \d+ \(lr 1e\+25\)", failed["error"]), failed
    assert "lower train.lr" in failed["error"]
    assert f"ERROR {failed['trial_id']}" in chaos["resumed"].stdout and "NonFiniteLossError" in chaos["resumed"].stdout
    assert {r["status"] for r in trials.values() if r is not failed} == {"TERMINATED"}


def test_retry_errored_runs_the_failed_trial_again_and_nothing_else(chaos):
    """`resume --retry-errored` runs the failed trial again as itself (same id and directory; from its latest
    checkpoint, here none: from step 0, its log replaced by the new run's); it diverges again, the same way."""
    proc = chaos["retried"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # lr 1e25 diverges again
    assert "3 finished, 1 failed, 0 unfinished" in proc.stdout
    rows = {r["trial_id"]: r for r in read_trials(chaos["experiment"])}
    assert rows.keys() == chaos["after_resume"]["trials"].keys()
    assert sorted(p.parent.name for p in chaos["experiment"].glob("*/params.json")) == sorted(chaos["paths"])
    for trial_id, row in rows.items():
        name = _by_name(chaos, trial_id)
        if row["status"] == "TERMINATED":  # finished ones untouched
            assert files_of(chaos["paths"][name]) == chaos["after_resume"]["files"][name]
            continue
        assert row["status"] == "ERROR" and row["error"] == chaos["after_resume"]["trials"][trial_id]["error"]
        results = results_of(chaos["paths"][name])
        assert results and results[0][M.TRAIN_STEP] == 0
        assert all(r["timestamp"] >= int(chaos["retry_started"]) for r in results)
        assert float(row["launched_at"]) >= chaos["retry_started"]


# ------------------------------------------------------------------------------------ a node goes away


def test_removed_worker_node_its_trial_finishes_on_another(tmp_path, monkeypatch, builtin_model_dir,
                                                           builtin_task_files):
    """Head (no CPUs) + 2 one-CPU nodes, one trial on each; the node of one of them is removed (its processes
    killed) after its first checkpoints: with max_failures 1 that trial continues from its latest
    checkpoint on the remaining node once it is free, and both finish."""
    grid, storage, log = tmp_path / "grid.yaml", tmp_path / "shared", tmp_path / "run.log"
    grid.write_text(BASE + "resources: {max_failures: 1}\ngrid:\n  train.seed: [0, 1]\n")
    experiment = storage / "node"
    with local_cluster(monkeypatch) as (cluster, workers):
        proc = start_cli(log, "run", grid, "--address", cluster.address, "--storage", storage, "--name", "node")
        try:
            def both_checkpointed():
                runs = [results_of(d.parent) for d in experiment.glob("*/params.json")]
                if len(runs) == 2 and all(any(r.get("checkpoint_dir_name") for r in rs) for rs in runs):
                    return runs[0][-1]
                return None

            victim = wait_for(both_checkpointed, proc, log, "both trials past a checkpoint")
            [node] = [w for w in workers if w.node_id == victim[M.SYS_NODE_ID]]
            cluster.remove_node(node, allow_graceful=False)
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
        [survivor] = [w.node_id for w in workers if w is not node]

    rows = {r["trial_id"]: r for r in read_trials(experiment)}
    assert {r["status"] for r in rows.values()} == {"TERMINATED"} and {int(r["train/step"]) for r in rows.values()} == {150}
    results = results_of(Path(rows[victim["trial_id"]]["trial_path"]))
    restart = restart_index(results, victim[M.SYS_PID])
    assert {r[M.SYS_NODE_ID] for r in results[:restart]} == {node.node_id}
    assert {r[M.SYS_NODE_ID] for r in results[restart:]} == {survivor}
    check_resumed_from_latest_checkpoint(results, restart, every=25)
    [other] = [r for t, r in rows.items() if t != victim["trial_id"]]
    assert {r[M.SYS_NODE_ID] for r in results_of(Path(other["trial_path"]))} == {survivor}  # never interrupted

