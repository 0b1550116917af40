"""Integration tier, packed trials through the CLI (`resources.pack`): members of a pack share one worker
process and still get, each, the results, checkpoints, exports and resume of a trial alone."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from raysweep.experiment import metrics as M
from raysweep.inputs import model_cache
from raysweep.trial.loop import run_training
from raysweep.trial.session import LocalSession
from tests.test_fault_injection import files_of, kill_driver, saved_state, start_cli, trial_id_of, wait_for
from tests.test_integration import eval_loss_of_saved_adapter, read_trials, results_of, run_cli

pytestmark = pytest.mark.integration

GRID = """
name: packed
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 60, eval_every: 20, log_every: 10, batch_size: 16, lr: 3.0e-3}
resources: {pack: 4, max_concurrent: 1}  # one slot: the four packable cells fill its worker, whatever the CPUs
grid:
  - {adapter.type: [lora, sora], adapter.r: [4, 8]}
  - {adapter.type: [masked]}
"""


def evals(rows: list[dict]) -> dict[int, float]:
    return {r[M.EVAL_STEP]: r[M.EVAL_LOSS] for r in rows if M.EVAL_LOSS in r}


def alone(trial_config: dict) -> dict[int, float]:
    """The trial's eval losses trained alone, in this process (today's loop, no pack)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = LocalSession(Path(tmp))
        run_training(trial_config, session)
    model_cache.release_trial_memory()
    return evals(session.results)


def trial_dirs(experiment: Path) -> dict[str, Path]:
    return {json.loads((d / "params.json").read_text())["cell"].get("adapter.type", "") + str(
        json.loads((d / "params.json").read_text())["cell"].get("adapter.r", "")): d
        for d in (p.parent for p in experiment.glob("*/params.json"))}


@pytest.fixture(scope="module")
def packed(tmp_path_factory, builtin_model_dir, builtin_task_files):
    root = tmp_path_factory.mktemp("packed")
    (root / "grid.yaml").write_text(GRID)
    plan = run_cli("plan", root / "grid.yaml")
    proc = run_cli("run", root / "grid.yaml", "--storage", root / "runs")
    return plan, proc, root / "runs" / "packed"


def test_plan_shows_the_packs_and_why_a_cell_runs_alone(packed):
    plan, _, _ = packed
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "packed trials: up to 4 per worker" in plan.stdout
    assert "pack 1: trials 0, 1, 2, 3" in plan.stdout
    assert "alone (one per worker), trials 4: masked adapters prune the base weights" in plan.stdout


def test_members_share_one_worker_and_get_their_results_alone(packed):
    """Four cells (lora and sora, r 4 and 8) train in one pack worker (one process, one sys/pack), the masked
    cell in a worker of its own once the pack's members have all left (one slot); every member's eval loss at every eval equals its run alone (float32:
    the pack pads batches to the widest member, so the last bits may differ: ≤ 1e-4 relative)."""
    _, proc, experiment = packed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 finished, 0 failed, 0 unfinished" in proc.stdout
    dirs = trial_dirs(experiment)
    packs = {name: results_of(d)[-1].get(M.SYS_PACK) for name, d in dirs.items()}
    pids = {name: results_of(d)[-1][M.SYS_PID] for name, d in dirs.items()}
    members = ["lora4", "lora8", "sora4", "sora8"]
    assert len({packs[m] for m in members}) == 1 and packs["lora4"] and len({pids[m] for m in members}) == 1
    assert packs["masked"] is None and pids["masked"] != pids["lora4"]
    for name, d in dirs.items():
        rows = results_of(d)
        assert rows[-1][M.TRAIN_STEP] == 60 and sorted(evals(rows)) == [0, 20, 40, 60]
        if name in ("lora4", "sora8"):  # two members, two families: alone costs a few seconds each
            config = json.loads(next(d.glob("checkpoint_*/trial_config.json")).read_text())
            assert evals(rows) == pytest.approx(alone(config), rel=1e-4), name
    assert len({evals(results_of(dirs[m]))[60] for m in members}) == 4


def test_a_members_checkpoint_exports_and_reloads_with_peft(packed, tmp_path):
    """A member's checkpoint is a plain trial checkpoint: `export` checks it against the trial's eval loss,
    and peft's PeftModel.from_pretrained on the base reproduces the reported eval loss."""
    _, _, experiment = packed
    trial = trial_dirs(experiment)["sora8"]
    out = run_cli("export", trial, "--out", tmp_path / "export", "--weights", "final")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    last = max(trial.glob("checkpoint_*"))
    assert eval_loss_of_saved_adapter(last) == pytest.approx(results_of(trial)[-1][M.EVAL_LOSS], rel=1e-4)
    rows = {r["trial_id"]: r for r in read_trials(experiment)}
    assert {r["status"] for r in rows.values()} == {"TERMINATED"} and len(rows) == 5


RESUME_GRID = """
name: packresume
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 40, eval_every: 20, log_every: 10, batch_size: 16, lr: 3.0e-3}
resources: {pack: 2, max_concurrent: 1}
grid:
  train.max_steps: [40, 400]
"""


def test_killed_driver_resume_continues_each_member_from_its_own_checkpoint(tmp_path, builtin_model_dir,
                                                                           builtin_task_files):
    """SIGKILL the driver while a pack runs (one member finished, the other past a checkpoint); `resume`
    leaves the finished member untouched and the other goes on from its own latest checkpoint, losing no
    reported result, and finishes."""
    grid, storage, log = tmp_path / "grid.yaml", tmp_path / "runs", tmp_path / "run.log"
    grid.write_text(RESUME_GRID)
    experiment = storage / "packresume"
    proc = start_cli(log, "run", grid, "--storage", storage)

    def mid_sweep():
        saved = saved_state(experiment)
        statuses = sorted(status for status, _ in saved.values())
        return saved if statuses == ["RUNNING", "TERMINATED"] and all(c for s, c in saved.values()) else None

    saved = wait_for(mid_sweep, proc, log, "the short member finished, the long one checkpointed")
    kill_driver(proc)

    dirs = {trial_id_of(p.parent.name): p.parent for p in experiment.glob("*/params.json")}
    before = {t: results_of(d) for t, d in dirs.items()}
    files_before = {t: files_of(d) for t, d in dirs.items()}
    resumed = run_cli("resume", experiment)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 finished, 0 failed, 0 unfinished" in resumed.stdout
    for trial_id, (status, _) in saved.items():
        d = dirs[trial_id]
        if status == "TERMINATED":
            assert files_of(d) == files_before[trial_id]
            continue
        after = results_of(d)
        assert after[: len(before[trial_id])] == before[trial_id]  # nothing reported before the kill is lost
        new = after[len(before[trial_id]):]
        assert new[0][M.TRAIN_STEP] > 0 and new[-1][M.TRAIN_STEP] == 400  # from its checkpoint, to its end
        # (that a resumed member equals its run alone is proven in float64 by tests/test_packing.py)
        assert evals(after)[400] < evals(after)[0]


ASHA_GRID = """
name: packasha
data: {max_seq_len: 32, max_eval_examples: 64}
train: {max_steps: 60, eval_every: 20, log_every: 10, batch_size: 16}
resources: {pack: 2, max_concurrent: 1}
search: {scheduler: asha, grace_period: 20, reduction_factor: 2}
grid:
  train.lr: [3.0e-3, 2.0e-3, 1.0e-7, 2.0e-7]
"""


def test_asha_stops_members_inside_a_pack_and_the_next_cell_takes_the_place(tmp_path, builtin_model_dir,
                                                                            builtin_task_files):
    """One pack worker with 2 places (max_concurrent 1 × pack 2): the two learning cells run first; the two
    that barely learn (lr ~1e-7) join as places free up and are stopped by ASHA at its first rung (step 20),
    judged against every trial of the sweep that reached it; the learning ones finish unaffected."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(ASHA_GRID)
    proc = run_cli("run", grid, "--storage", tmp_path / "runs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = tmp_path / "runs" / "packasha"
    rows = {float(r["cell/train.lr"]): r for r in read_trials(experiment)}
    for lr in (1e-7, 2e-7):
        assert rows[lr]["stopped_by"] == "asha" and int(rows[lr]["train/step"]) == 20, rows[lr]
    assert any(not rows[lr]["stopped_by"] and int(rows[lr]["train/step"]) == 60 for lr in (3e-3, 2e-3))
    assert {r["status"] for r in rows.values()} == {"TERMINATED"}  # (a scheduler-stopped trial is saved so)
    packs = {results_of(Path(r["trial_path"]))[-1].get(M.SYS_PACK) for r in rows.values()}
    assert len(packs) == 1 and None not in packs  # every cell trained in the one pack worker, one after another


def test_the_registry_spreads_members_over_free_slots_before_filling_a_worker():
    """The sweep's registry (real Ray, real pack worker actors): 4 cells of one base, pack 2 × 2 slots → two
    workers of 2, the second slot used before a worker takes its second member; a 5th waits while every place is taken; one that leaves
    frees its place for the next."""
    import ray

    from raysweep.sweep.packs import Registry

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        registry = Registry(slots=2, capacity=2, resources={"CPU": 1}, name="spread")
        names = [registry.assign("base", False, f"t{i}")[1] for i in range(4)]
        assert names == ["spread-pack1", "spread-pack2", "spread-pack1", "spread-pack2"]
        assert registry.assign("base", False, "t4") is None
        registry.release("t1")
        assert registry.assign("base", False, "t4")[1] == "spread-pack2"
        assert [len(w["members"]) for w in registry.workers] == [2, 2]
    finally:
        ray.shutdown()
