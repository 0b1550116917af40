"""Load an experiment directory into a DataFrame, one row per trial.

Reads what Ray Tune writes per trial (params.json and progress.csv / result.json) rather than
`ResultGrid.get_dataframe()`, which misses trials whose result.json is empty after a crash and restore
(seen after a SIGKILLed driver). The raysweep trials.csv adds each trial's status and failure reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.baseline import load_baselines, task_metrics, with_deltas
from raysweep.experiment import metrics as M
from raysweep.experiment import outcome, storage
from raysweep.experiment.layout import (
    PARAMS_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    SUMMARY_CSV,
    SWEEP_FILE,
    TASK_METRICS_FILE,
    TRIALS_FILE,
    recorded_root,
)
from raysweep.experiment.metrics import CHECKPOINT_PATH, TRAIN_EARLY_STOPPED


class ResultsError(ValueError):
    """The directory is not a readable raysweep experiment."""


def _last_result(trial_dir: Path) -> dict:
    result = trial_dir / RESULT_FILE
    if result.is_file():
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            return json.loads(lines[-1])
    progress = trial_dir / PROGRESS_FILE
    if progress.is_file() and progress.stat().st_size:
        frame = pd.read_csv(progress)
        if len(frame):
            return frame.iloc[-1].to_dict()
    return {}


def load_trials(experiment: str | Path) -> pd.DataFrame:
    """One row per trial: cell axes (`cell/<key>`), final metrics, status, paths."""
    root = Path(experiment).expanduser()
    if not (root / SWEEP_FILE).is_file():
        raise ResultsError(f"{experiment}: not a raysweep experiment directory (no {SWEEP_FILE}); "
                           "give the path printed by `raysweep run`")
    rows = []
    for params in sorted(root.glob(f"*/{PARAMS_FILE}")):
        trial_dir = params.parent
        cell = json.loads(params.read_text()).get("cell", {})
        last = _last_result(trial_dir)
        row = {"trial_id": last.get("trial_id", trial_dir.name.split("_")[0]), "trial_path": str(trial_dir)}
        row |= {f"cell/{k}": v for k, v in cell.items()}
        row |= {k: v for k, v in last.items() if "/" in k or k == CHECKPOINT_PATH}
        rows.append(row)
    frame = pd.DataFrame(rows)
    status_file = root / TRIALS_FILE
    if len(frame) and status_file.is_file():
        status = pd.read_csv(status_file, dtype={"trial_id": str})
        keep = ["trial_id", "status", "adapter.type", "adapter.r", "train.seed", "error"]
        if "stopped_by" in status:  # the trial scheduler (asha, median) that stopped a trial early
            keep.append("stopped_by")
        if {"launched_at", "ended_at"} <= set(status):  # wall time from launch to end, as the driver saw it
            status["wall_time_s"] = pd.to_numeric(status["ended_at"], errors="coerce") - pd.to_numeric(
                status["launched_at"], errors="coerce")
            keep.append("wall_time_s")
        if CHECKPOINT_PATH in status:  # actor-executor trials: Tune keeps the checkpoint, not the result
            keep.append(CHECKPOINT_PATH)
            status = status.rename(columns={CHECKPOINT_PATH: "_checkpoint"})
            keep[-1] = "_checkpoint"
        frame = frame.merge(status[keep], on="trial_id", how="left")
        if "_checkpoint" in frame:
            reported = frame[CHECKPOINT_PATH] if CHECKPOINT_PATH in frame else None
            frame[CHECKPOINT_PATH] = frame["_checkpoint"] if reported is None else reported.fillna(frame["_checkpoint"])
            frame = frame.drop(columns="_checkpoint")
    if len(frame):
        if "adapter.type" not in frame or frame["adapter.type"].isna().any():
            # a running experiment has no trials.csv yet: the family comes from the grid cell or the base config
            frame["adapter.type"] = _adapter_types(frame, root)
        stopped_by = frame["stopped_by"] if "stopped_by" in frame else pd.Series("", index=frame.index)
        early = frame[TRAIN_EARLY_STOPPED] if TRAIN_EARLY_STOPPED in frame else pd.Series(False, index=frame.index)
        status = frame["status"] if "status" in frame else pd.Series(None, index=frame.index, dtype=object)
        frame["flag"] = [outcome.flag(s, b, e) for s, b, e in zip(status, stopped_by, early, strict=True)]
        if CHECKPOINT_PATH in frame:
            old_root = recorded_root(root)
            frame[CHECKPOINT_PATH] = frame[CHECKPOINT_PATH].map(lambda p: storage.relocate(p, old_root, root))
        frame = _evaluated_later(frame)
        # each task metric's difference to the untuned base (`<metric> Δbase`), where the experiment has one
        frame = with_deltas(frame, load_baselines(root))
    return frame


def _evaluated_later(frame: pd.DataFrame) -> pd.DataFrame:
    """Task metrics `raysweep eval` wrote beside a trial's checkpoint, over what the trial reported."""
    if CHECKPOINT_PATH not in frame:
        return frame
    frame = frame.copy()
    for index, checkpoint in frame[CHECKPOINT_PATH].items():
        path = Path(checkpoint) / TASK_METRICS_FILE if isinstance(checkpoint, str) and checkpoint else None
        if path is None or not path.is_file():
            continue
        try:
            found = json.loads(path.read_text()).get("metrics", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        for key, value in found.items():
            if key not in frame:
                frame[key] = pd.Series(index=frame.index, dtype=object if isinstance(value, str) else float)
            frame.at[index, key] = value
    return frame


def _adapter_types(frame: pd.DataFrame, root: Path) -> pd.Series:
    import yaml

    base = ((yaml.safe_load((root / SWEEP_FILE).read_text()) or {}).get("adapter") or {}).get("type", "lora")
    known = frame["adapter.type"] if "adapter.type" in frame else pd.Series(index=frame.index, dtype=object)
    cell = frame["cell/adapter.type"] if "cell/adapter.type" in frame else pd.Series(index=frame.index, dtype=object)
    return known.fillna(cell).fillna(base)


def ran_to_end(frame: pd.DataFrame) -> pd.Series:
    """Per trial, whether its numbers are final (raysweep.experiment.outcome.ran_to_end: the one rule that
    the tables, export --best and the SubLoRA plots use). Without a trial table (a sweep still starting)
    nothing says a trial stopped short, so all count."""
    if "status" not in frame:
        return pd.Series(True, index=frame.index)
    stopped_by = frame["stopped_by"] if "stopped_by" in frame else pd.Series("", index=frame.index)
    return pd.Series([outcome.ran_to_end(s, b) for s, b in zip(frame["status"], stopped_by, strict=True)],
                     index=frame.index, dtype=bool)


def print_overview(console, frame: pd.DataFrame, experiment: str, out: Path | None = None,
                   shown=str) -> None:
    """The trials table, and summary.csv written into `out` (`shown`: how to name a path to the user)."""
    from rich.table import Table

    if frame.empty:
        console.print(f"{experiment}: no trials have reported yet")
        return
    cols = [c for c in ("trial_id", "status", "flag", "adapter.type", "adapter.r", "train.seed", M.TRAIN_STEP,
                        "wall_time_s",
                        M.EVAL_LOSS, M.EVAL_ACCURACY, M.ADAPTER_TRAINABLE_PARAMS, M.BOUND_DOC_BPD) if c in frame]
    cols += task_metrics(frame)[:4]  # the first task metrics (all, with their baseline deltas, in summary.csv)
    table = Table(title=f"{experiment}: {len(frame)} trial(s)", title_justify="left")
    for c in cols:
        table.add_column(c)
    for _, row in frame[cols].iterrows():
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    if M.TASK_ERRORS in frame:  # a task that could not be evaluated (e.g. its dataset was unreachable)
        for _, row in frame[frame[M.TASK_ERRORS].notna() & (frame[M.TASK_ERRORS].astype(str) != "")].iterrows():
            console.print(f"task metrics missing for {row['trial_id']}: {row[M.TASK_ERRORS]}", markup=False,
                          highlight=False)
    if M.BOUND_DOC_BPD in frame:  # SubLoRA: the per-trial bounds above, and the sweep's best with its ln N
        from analysis.sweep_bounds import lines

        for line in lines(frame, ran_to_end(frame)):
            console.print(line, markup=False, highlight=False)
    out = (out or Path(experiment).expanduser()) / SUMMARY_CSV
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    console.print(f"wrote {shown(out)}")
