"""How a trial ended: the one rule for "ran to its end", used by the live table, analysis and export.

A trial's numbers are final when Tune ended it as TERMINATED and no trial scheduler (asha, median) stopped
it before its last step. A trial that stopped itself by its own patience (train.early_stopping) counts as
finished: it ended where its own rule said its numbers would not improve.
"""

from __future__ import annotations

from typing import Any

from raysweep.experiment.metrics import TRAIN_EARLY_STOPPED, TRAIN_STEP

FINISHED = "TERMINATED"  # Tune's status of a trial that returned (finished, stopped itself, or was stopped)
FAILED = "ERROR"


def _true(value: Any) -> bool:
    return value in (True, "True", "true", 1, 1.0)


def stopped_early(status: str, last: dict[str, Any], max_steps: int | None) -> bool:
    """A trial that Tune ended (TERMINATED) before its last step without stopping itself (patience).

    Tune reports a scheduler's stop like a finished trial (`on_trial_complete`), so the trial's own numbers
    tell them apart: a trial that runs to its end always reports its last step (train.max_steps; schedulers
    require it), and one that stops itself by patience says so (train/early_stopped)."""
    step = last.get(TRAIN_STEP)
    if status != FINISHED or not max_steps or step is None:
        return False
    return int(step) < int(max_steps) and not _true(last.get(TRAIN_EARLY_STOPPED))


def ran_to_end(status: Any, stopped_by: Any) -> bool:
    """The trial's numbers are final: TERMINATED, and no trial scheduler stopped it early."""
    return status == FINISHED and not (isinstance(stopped_by, str) and stopped_by)


def flag(status: Any, stopped_by: Any, early_stopped: Any) -> str:
    """Why a trial's numbers need care: '' (finished normally), 'stopped by <scheduler>' (its numbers are
    from the step it was stopped at), 'early-stopped' (its own patience), 'error' or 'unfinished'."""
    if status == FAILED:
        return "error"
    if isinstance(status, str) and status != FINISHED:
        return "unfinished"
    if isinstance(stopped_by, str) and stopped_by:
        return f"stopped by {stopped_by}"
    if _true(early_stopped):
        return "early-stopped"
    return ""
