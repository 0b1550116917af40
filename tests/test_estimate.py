"""Time estimates (offline/estimate/): scheduling arithmetic, device-hours, shape keys, the calibration cache on
hand-made numbers; one real calibration of the builtin quickstart shape; `plan --calibrate` on the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysweep import config as G
from raysweep.offline import estimate as E
from tests.conftest import ROOT

QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def quickstart(*overrides: str):
    _, sweep, trials = G.load(QUICKSTART, list(overrides))
    return sweep, trials, [t.config.model_dump(mode="json") for t in trials]


def calibration(shape: str, **numbers) -> E.Calibration:
    values = dict(step_s=0.05, eval_s=0.5, ckpt_s=0.25, fixed_s=1.0, end_s=0.0, torch_import_s=1.0, import_s=2.0,
                  model_load_s=0.5, data_s=0.5, train_examples=1000, calibrated_at=1_700_000_000.0, seconds=3.0)
    return E.Calibration(shape=shape, device="cpu", threads=1, **(values | numbers))


# ------------------------------------------------------------------------------- arithmetic


def test_greedy_list_scheduling_by_hand():
    # 2 slots: 10 → slot 0 [0, 10), 20 → slot 1 [0, 20), 30 → slot 0 [10, 40), 40 → slot 1 [20, 60),
    # 50 → slot 0 [40, 90): makespan 90
    placed = E.schedule([10, 20, 30, 40, 50], 2)
    assert placed == [(0, 0.0, 10.0), (1, 0.0, 20.0), (0, 10.0, 30.0), (1, 20.0, 40.0), (0, 40.0, 50.0)]
    assert E.makespan(placed) == 90
    assert E.makespan(E.schedule([10, 20, 30, 40, 50], 1)) == 150
    assert E.makespan(E.schedule([10, 20, 30, 40, 50], 8)) == 50  # more slots than jobs
    assert E.makespan(E.schedule([], 2)) == 0


def test_device_hours():
    cpu = {"num_workers": 1, "cpus_per_worker": 2, "gpus_per_worker": 0}
    gpu = {"num_workers": 2, "cpus_per_worker": 4, "gpus_per_worker": 0.5}
    # 3600 s × 2 CPUs + 1800 s × 2 CPUs = 3 CPU-hours; 3600 s × 0.5 GPU × 2 workers = 1 GPU-hour (CPUs of
    # GPU trials are not counted: a GPU trial is priced in GPU-hours)
    assert E.device_hours([3600, 1800], [cpu, cpu]) == pytest.approx({"CPU": 3.0})
    assert E.device_hours([3600, 3600], [cpu, gpu]) == pytest.approx({"CPU": 2.0, "GPU": 1.0})


def test_trial_counts():
    train = {"max_steps": 200, "eval_every": 50, "checkpoint_every": None, "batch_size": 32}
    assert E.trial_counts(train, 2000) == (200, 5, 4)  # evals at 0, 50, 100, 150, 200
    assert E.trial_counts(train | {"max_steps": 120}, 2000) == (120, 4, 3)  # 0, 50, 100, 120 (last)
    assert E.trial_counts(train | {"checkpoint_every": 25}, 2000) == (200, 5, 8)
    epochs = {"max_steps": None, "epochs": 2, "batch_size": 10, "grad_accum_steps": 2, "eval_every": 1000}
    assert E.trial_counts(epochs, 1000) == (100, 2, 1)  # 2 × 1000 / (10 × 2)
    assert E.trial_counts(epochs, 1000, world_size=2) == (50, 2, 1)


def test_shape_keys():
    _, _, configs = quickstart()
    by_cell = {(c["adapter"]["type"], c["adapter"]["r"], c["train"]["seed"]): c for c in configs}
    lora4 = by_cell["lora", 4, 0]
    assert E.shape_key(lora4) == E.shape_key(by_cell["lora", 4, 1])  # seed only
    changed_lr = json.loads(json.dumps(lora4))
    changed_lr["train"]["lr"] = 1e-5
    changed_lr["train"]["max_steps"] = 7  # counts are multiplied, not part of the shape
    assert E.shape_key(changed_lr) == E.shape_key(lora4)
    assert E.shape_key(by_cell["lora", 16, 0]) != E.shape_key(lora4)  # rank
    assert E.shape_key(by_cell["dora", 4, 0]) != E.shape_key(lora4)  # adapter type
    for section, key, value in (("model", "dtype", "bfloat16"), ("data", "max_seq_len", 64),
                                ("train", "batch_size", 8), ("resources", "cpus_per_worker", 2)):
        other = json.loads(json.dumps(lora4))
        other[section][key] = value
        assert E.shape_key(other) != E.shape_key(lora4), key
    # a sparsity penalty λ changes values, not compute; the gated family's rank does
    _, _, sora = quickstart("adapter.type=sora", "grid.adapter.lambda=[0.1, 0.5]", "grid.adapter.r=[4]",
                            "grid.train.seed=[0]")
    assert len(sora) == 2 and E.shape_key(sora[0]) == E.shape_key(sora[1])


# -------------------------------------------------------------------------------- estimate


def test_estimate_by_hand():
    """4 trials of one shape (seeds 0, 1, 0, 1), actor executor, 2 slots, contention 1.08.

    warm work per trial: fixed 1 + 100 steps × 0.05 + 3 evals × 0.5 + 2 checkpoints × 0.25 = 8 s, × 1.08.
    First trial on each slot: ACTOR_START_S + (torch 1 + imports 2 + load 0.5 + data 0.5) × 1.08 + ACTOR_END_S.
    Trials 2 and 3 follow a trial with the same seed on their slot (0 → slot 0, 1 → slot 1): reset only."""
    _, _, configs = quickstart("train.max_steps=100", "grid.adapter.type=[lora]", "grid.adapter.r=[4]")
    configs = configs * 2
    assert [c["train"]["seed"] for c in configs] == [0, 1, 0, 1]
    cal = calibration(E.shape_key(configs[0]))
    est = E.estimate(configs, {cal.shape: cal}, slots=2, executor="actor", overhead_s=5.0)
    work = (1 + 100 * 0.05 + 3 * 0.5 + 2 * 0.25) * E.CONTENTION
    first = E.ACTOR_START_S + 4 * E.CONTENTION + E.ACTOR_END_S + work
    later = E.ACTOR_REUSE_S + E.ACTOR_END_S + work
    assert [t.seconds for t in est.trials] == pytest.approx([first, first, later, later])
    assert [t.slot for t in est.trials] == [0, 1, 0, 1]
    assert est.makespan_s == pytest.approx(first + later)
    assert est.wall_s == pytest.approx(first + later + 5.0)
    assert est.device_hours == pytest.approx({"CPU": 2 * (first + later) / 3600})

    # the same trials in another order: a reused actor re-tokenizes when the seed changes
    swapped = [configs[0], configs[1], configs[3], configs[2]]
    est = E.estimate(swapped, {cal.shape: cal}, slots=2, executor="actor", overhead_s=0)
    assert est.trials[2].seconds == pytest.approx(later + 0.5 * E.CONTENTION)

    # one slot: no contention; train executor: fresh processes every trial
    est = E.estimate(configs, {cal.shape: cal}, slots=1, executor="train", overhead_s=0)
    one = E.TRAIN_START_S + 3.0 + E.TRAIN_END_S + 8.0  # imports 2 + load 0.5 + data 0.5
    assert est.contention == 1.0 and est.makespan_s == pytest.approx(4 * one)
    assert est.overhead_s == 0 and E.estimate(configs, {cal.shape: cal}, 1, "actor").overhead_s == pytest.approx(
        E.RUN_START_S + E.RUN_STOP_S)


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSWEEP_CACHE", str(tmp_path))
    sweep, trials, configs = quickstart()
    found, missing = E.cached_for(configs)
    assert not found and len(missing) == 4  # lora/dora × r 4/16
    assert E.for_sweep(sweep, trials)[0] is None
    assert E.header_line(sweep, trials, 2) is None
    shapes = list(dict.fromkeys(E.shape_key(c) for c in configs))
    E.save_cache({E.cache_key(s): calibration(s) for s in shapes[:3]})
    found, missing = E.cached_for(configs)
    assert len(found) == 3 and missing == shapes[3:]
    E.save_cache({E.cache_key(shapes[3]): calibration(shapes[3])})  # merged into the file
    found, missing = E.cached_for(configs)
    assert len(found) == 4 and not missing
    est, source = E.for_sweep(sweep, trials, slots=2)
    assert est is not None and len(est.trials) == 8 and "cached calibration of" in source
    assert E.header_line(sweep, trials, 2).startswith("estimated: ~")
    # another machine (or another thread count) does not use these numbers
    other = E.hardware() | {"cpu": "some other CPU"}
    assert E.cached_for(configs, hw=other)[1] == shapes
    assert E.cache_key(shapes[0]) != E.cache_key(shapes[0], other)
    # an older file format is ignored, a broken file is an empty cache
    path = tmp_path / E.CALIBRATION_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | {"version": 0}))
    assert E.load_cache() == {}
    path.write_text("{not json")
    assert E.load_cache() == {}


def test_calibrate_the_quickstart_shape(tmp_path, builtin_model_dir, builtin_task_files):
    from raysweep import adapters
    from raysweep.trial import checkpointing, loop
    from raysweep.trial.session import LocalSession

    before = (loop.evaluate, loop.setup_data, checkpointing.save, LocalSession.report)
    _, _, configs = quickstart("train.max_steps=40")
    cal = E.calibrate(configs[0], target_s=0.3)
    # the timing patches are gone again
    assert (loop.evaluate, loop.setup_data, checkpointing.save, LocalSession.report) == before
    assert "on_train_end" not in vars(adapters.get("lora"))
    assert cal.step_s > 0 and cal.eval_s > 0 and cal.ckpt_s > 0
    assert cal.train_examples > 0 and cal.import_s > 0 and cal.torch_import_s > 0
    assert cal.threads == 1 and cal.device == "cpu"
    est = E.estimate(configs[:2], {cal.shape: cal}, slots=2, executor="actor")
    assert est.wall_s > est.makespan_s > 40 * cal.step_s
    path = E.save_cache({E.cache_key(cal.shape): cal}, tmp_path / "c.json")
    assert E.load_cache(path)[E.cache_key(cal.shape)] == cal


def test_plan_calibrate_prints_a_total_then_uses_the_cache(tmp_path, builtin_model_dir, builtin_task_files):
    # a cache directory of its own (so the calibration file starts empty) that shares the builtin model
    cache = tmp_path / "cache"
    cache.mkdir()
    for built in (builtin_model_dir, builtin_task_files[0]):
        top = Path(os.environ["RAYSWEEP_CACHE"])
        part = Path(built).relative_to(top).parts[0]
        (cache / part).symlink_to(top / part)

    def cli(*extra):
        env = dict(os.environ, COLUMNS="200", RAYSWEEP_CACHE=str(cache))
        return subprocess.run([sys.executable, "-m", "raysweep", "plan", QUICKSTART, "grid.adapter.type=[lora]",
                               "grid.adapter.r=[4]", "train.max_steps=30", *extra], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=300)

    before = cli()
    assert before.returncode == 0, before.stderr
    assert "no time estimate" in before.stdout and "est." not in before.stdout
    proc = cli("--calibrate")
    assert proc.returncode == 0, proc.stderr
    assert "estimated total: ~" in proc.stdout and "CPU-hours" in proc.stdout, proc.stdout
    assert "calibrated now: 1 trial shape(s)" in proc.stdout and "est." in proc.stdout
    assert (cache / E.CALIBRATION_FILE).is_file()
    after = cli()
    assert "estimated total: ~" in after.stdout and "cached calibration of" in after.stdout
