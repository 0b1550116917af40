"""Load an experiment directory into a DataFrame, one row per trial.

Reads what Ray Tune writes per trial (params.json and progress.csv / result.json) rather than
`ResultGrid.get_dataframe()`, which misses trials whose result.json is empty after a crash and restore
(DESIGN.md pitfalls). The raysweep trials.csv adds each trial's status and failure reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SWEEP_FILE = "raysweep.yaml"


class ResultsError(ValueError):
    """The directory is not a readable raysweep experiment."""


def _last_result(trial_dir: Path) -> dict:
    result = trial_dir / "result.json"
    if result.is_file():
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            return json.loads(lines[-1])
    progress = trial_dir / "progress.csv"
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
    for params in sorted(root.glob("*/params.json")):
        trial_dir = params.parent
        cell = json.loads(params.read_text()).get("cell", {})
        last = _last_result(trial_dir)
        row = {"trial_id": last.get("trial_id", trial_dir.name.split("_")[0]), "trial_path": str(trial_dir)}
        row |= {f"cell/{k}": v for k, v in cell.items()}
        row |= {k: v for k, v in last.items() if "/" in k or k == "checkpoint_path"}
        rows.append(row)
    frame = pd.DataFrame(rows)
    status_file = root / "trials.csv"
    if len(frame) and status_file.is_file():
        status = pd.read_csv(status_file, dtype={"trial_id": str})
        keep = ["trial_id", "status", "adapter.type", "adapter.r", "train.seed", "error"]
        if "stopped_by" in status:  # the trial scheduler (asha, median) that stopped a trial early
            keep.append("stopped_by")
        if {"launched_at", "ended_at"} <= set(status):  # wall time from launch to end, as the driver saw it
            status["wall_time_s"] = pd.to_numeric(status["ended_at"], errors="coerce") - pd.to_numeric(
                status["launched_at"], errors="coerce")
            keep.append("wall_time_s")
        if "checkpoint_path" in status:  # actor-executor trials: Tune keeps the checkpoint, not the result
            keep.append("checkpoint_path")
            status = status.rename(columns={"checkpoint_path": "_checkpoint"})
            keep[-1] = "_checkpoint"
        frame = frame.merge(status[keep], on="trial_id", how="left")
        if "_checkpoint" in frame:
            reported = frame["checkpoint_path"] if "checkpoint_path" in frame else None
            frame["checkpoint_path"] = frame["_checkpoint"] if reported is None else reported.fillna(frame["_checkpoint"])
            frame = frame.drop(columns="_checkpoint")
    if len(frame):
        if "adapter.type" not in frame or frame["adapter.type"].isna().any():
            # a running experiment has no trials.csv yet: the family comes from the grid cell or the base config
            frame["adapter.type"] = _adapter_types(frame, root)
        frame["flag"] = frame.apply(_flag, axis=1)
        if "checkpoint_path" in frame:
            frame["checkpoint_path"] = frame["checkpoint_path"].map(lambda p: _relocate(p, _recorded_root(root), root))
    return frame


def _adapter_types(frame: pd.DataFrame, root: Path) -> pd.Series:
    import yaml

    base = ((yaml.safe_load((root / SWEEP_FILE).read_text()) or {}).get("adapter") or {}).get("type", "lora")
    known = frame["adapter.type"] if "adapter.type" in frame else pd.Series(index=frame.index, dtype=object)
    cell = frame["cell/adapter.type"] if "cell/adapter.type" in frame else pd.Series(index=frame.index, dtype=object)
    return known.fillna(cell).fillna(base)


def _recorded_root(root: Path) -> str | None:
    """Where the experiment was when it ran (storage/name in raysweep.yaml), to find moved files."""
    import yaml

    saved = yaml.safe_load((root / SWEEP_FILE).read_text()) or {}
    return str(Path(saved["storage"]) / saved["name"]) if saved.get("storage") and saved.get("name") else None


def _relocate(path, old_root: str | None, root: Path):
    """A recorded absolute path inside the experiment, rewritten under its current location when the
    experiment was copied or moved (e.g. to a laptop) and the recorded one no longer exists."""
    if not isinstance(path, str) or not path or not old_root or Path(path).exists():
        return path
    if path == old_root or path.startswith(old_root.rstrip("/") + "/"):
        return str(root / path[len(old_root):].lstrip("/"))
    return path

def _flag(row: pd.Series) -> str:
    """Why a trial's numbers need care: '' (finished normally), 'stopped by <scheduler>' (a trial scheduler
    such as asha ended it before train.max_steps: its numbers are from that step), early-stopped (its own
    patience), error, or unfinished."""
    status = row.get("status")
    if status == "ERROR":
        return "error"
    if isinstance(status, str) and status != "TERMINATED":
        return "unfinished"
    stopped_by = row.get("stopped_by")
    if isinstance(stopped_by, str) and stopped_by:
        return f"stopped by {stopped_by}"
    if row.get("train/early_stopped") in (True, "True", 1):
        return "early-stopped"
    return ""


def print_overview(console, frame: pd.DataFrame, experiment: str, out: Path | None = None) -> None:
    from rich.table import Table

    if frame.empty:
        console.print(f"{experiment}: no trials have reported yet")
        return
    cols = [c for c in ("trial_id", "status", "flag", "adapter.type", "adapter.r", "train.seed", "train/step",
                        "wall_time_s",
                        "eval/loss", "eval/accuracy", "adapter/trainable_params") if c in frame]
    table = Table(title=f"{experiment}: {len(frame)} trial(s)", title_justify="left")
    for c in cols:
        table.add_column(c)
    for _, row in frame[cols].iterrows():
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    out = (out or Path(experiment).expanduser()) / "summary.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    console.print(f"wrote {out}")
