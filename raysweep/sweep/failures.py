"""A failed trial's one-line reason: what the live table, the summary and trials.csv show (the full
traceback stays in the trial's error.txt). Shared by the executors' trainables (driver.py, packs.py)."""

from __future__ import annotations


class TrialFailed(RuntimeError):
    """The one-line reason a trial failed (the full traceback stays in the trial's error.txt)."""


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None:
            errors = getattr(exc, "worker_failures", None) or {}
            inner = next(iter(errors.values()), None) if isinstance(errors, dict) else None
        if inner is None:
            break
        exc = inner
    return exc


def _reason(exc: BaseException) -> str:
    cause = _root_cause(exc)
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"
