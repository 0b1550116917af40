"""The CLI's consoles, exit codes and the one exception for user errors."""

from __future__ import annotations

import os

from rich.console import Console

EXIT_OK, EXIT_TRIAL_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

console = Console()
if not console.is_terminal:  # logs and CI: wide enough that trial ids and numbers are not cut ($COLUMNS wins)
    console = Console(width=int(os.environ.get("COLUMNS", "0")) if os.environ.get("COLUMNS", "").isdigit() else 180)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


class BadInput(Exception):
    """One or more user errors; printed without a traceback, exit code 2."""
