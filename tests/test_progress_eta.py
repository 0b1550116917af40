"""The live table's header: elapsed time, trials done / total and the sweep's ETA from observed trial
durations (ProgressCallback with fake trial records; no Ray)."""

from __future__ import annotations

import yaml

from raysweep.sweep.progress import ProgressCallback, TrialRecord, _duration

RESOLVED = {"adapter": {"type": "lora", "r": 4}, "train": {"seed": 0, "max_steps": 10}}


def callback(tmp_path, statuses: list[str], total: int | None = 8) -> ProgressCallback:
    cb = ProgressCallback(str(tmp_path), lambda cell: RESOLVED)
    cb.total, cb.started_at = total, 1000.0
    for i, status in enumerate(statuses):
        rec = cb.records[f"t{i}"] = TrialRecord(f"t{i}", {}, RESOLVED)
        rec.status = status
    return cb


def test_eta_is_unknown_until_a_trial_finishes(tmp_path):
    cb = callback(tmp_path, ["RUNNING", "RUNNING", "PENDING"])
    for rec in cb.records.values():
        rec.launched_at = 1000.0
    assert cb.timing(now=1065.0) == "elapsed 1m 05s · 0/8 done · ETA -"
    assert "ETA -" in str(cb.table().title)


def test_eta_is_mean_duration_times_remaining_over_running(tmp_path):
    cb = callback(tmp_path, ["TERMINATED", "TERMINATED", "ERROR", "RUNNING", "RUNNING"])
    # finished trials took 60 s, 100 s and 20 s: mean 60 s; 5 of 8 left, 2 running at once -> 150 s
    for rec, took in zip(cb.records.values(), [60, 100, 20, None, None], strict=True):
        rec.launched_at = 1000.0
        rec.ended_at = 1000.0 + took if took else None
    assert cb.timing(now=1130.0) == "elapsed 2m 10s · 3/8 done · ETA 2m 30s"
    # refreshed as trials finish: a fourth one (40 s) -> mean 55 s × 4 left ÷ 1 running
    rec = cb.records["t3"]
    rec.status, rec.ended_at = "TERMINATED", 1040.0
    assert cb.timing(now=1140.0) == "elapsed 2m 20s · 4/8 done · ETA 3m 40s"
    assert "4/8 done · ETA 3m 40s" in str(cb.table().title)


def test_all_done_and_no_start_time(tmp_path):
    cb = callback(tmp_path, ["TERMINATED"], total=1)
    cb.started_at = None  # e.g. a table printed before Tune called setup
    rec = cb.records["t0"]
    rec.launched_at, rec.ended_at = 1000.0, 1010.0
    assert cb.timing(now=2000.0) == "elapsed - · 1/1 done · ETA 0s"


def test_total_comes_from_the_saved_sweep(tmp_path):
    # Tune creates trials a few at a time: the total is the sweep's, read from its raysweep.yaml
    (tmp_path / "raysweep.yaml").write_text(yaml.safe_dump({
        "name": "eta", "train": {"max_steps": 10},
        "grid": {"adapter.r": [4, 8, 16], "train.seed": [0, 1]}}))
    cb = callback(tmp_path, ["RUNNING"], total=None)
    assert cb.total_trials() == 6
    assert "0/6 done" in cb.timing(now=1001.0)
    # no raysweep.yaml: the trials seen so far
    assert callback(tmp_path / "none", ["RUNNING", "PENDING"], total=None).timing(now=1001.0).endswith(
        "0/2 done · ETA -")


def test_durations_read_well():
    assert [_duration(s) for s in (0, 45.4, 185, 7620)] == ["0s", "45s", "3m 05s", "2h 07m"]
