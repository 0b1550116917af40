"""Per-step history of every trial, as one long table (trial_id, axes, step, metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from raysweep.experiment import metrics as M
from raysweep.experiment.layout import RESULT_FILE


def load_history(frame: pd.DataFrame) -> pd.DataFrame:
    """Every result each trial reported (Tune's result.json), joined with the trial's axes and status."""
    rows = []
    axes = [c for c in frame.columns if c.startswith("cell/") or c in ("adapter.type", "adapter.r", "status")]
    for _, trial in frame.iterrows():
        path = Path(trial["trial_path"]) / RESULT_FILE
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                result = json.loads(line)
                rows.append({"trial_id": trial["trial_id"], **{a: trial[a] for a in axes},
                             **{k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))}})
    history = pd.DataFrame(rows)
    if M.TRAIN_STEP in history:
        # a resumed trial re-reports steps it had reached: keep the latest report per step
        history = history.drop_duplicates(["trial_id", M.TRAIN_STEP], keep="last")
    return history
