"""The CLI's consoles, exit codes, the one exception for user errors, and what Ray may print there."""

from __future__ import annotations

import logging
import os

from rich.console import Console

EXIT_OK, EXIT_TRIAL_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

console = Console()
if not console.is_terminal:  # logs and CI: wide enough that trial ids and numbers are not cut ($COLUMNS wins)
    console = Console(width=int(os.environ.get("COLUMNS", "0")) if os.environ.get("COLUMNS", "").isdigit() else 180)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


class BadInput(Exception):
    """One or more user errors; printed without a traceback, exit code 2."""


class _NoTrialTracebacks(logging.Filter):
    # Tune logs every failed trial's whole worker traceback (~60 lines) at ERROR; the one-line reason is in
    # the live table, the summary and trials.csv, the traceback in the trial's error.txt
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial task failed")


def hide_trial_tracebacks() -> None:
    """Keep failed trials' worker tracebacks off the console (`--verbose` shows them)."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _NoTrialTracebacks) for f in logger.filters):
        logger.addFilter(_NoTrialTracebacks())
