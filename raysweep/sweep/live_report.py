"""report.html rewritten while `run` goes on, so a sweep can be followed in a browser without the Ray
dashboard: a Tune callback in the driver process that rewrites `<experiment>/report.html` at most once every
`interval_s` (the first one interval after the sweep starts, when there is something to show; once more,
without the reload, when the sweep ends). The page reloads itself at the same interval.
`RAYSWEEP_REPORT_INTERVAL_S` sets the interval; 0 switches the live report off (`interval_from_env`).

A rewrite reads the experiment directory (analysis.report_build), never Tune's objects, so it shows what
`analyze` would. It runs in a background thread: building the page (fANOVA, ~5 MB of HTML with plotly's
JavaScript) takes a second or two, which would otherwise stall Tune's event loop. A rewrite that fails is
reported once and never stops the sweep: the experiment directory is the record, the page only a view of it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from ray.tune import Callback

DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "RAYSWEEP_REPORT_INTERVAL_S"


def interval_from_env() -> float | None:
    """The live report's interval: $RAYSWEEP_REPORT_INTERVAL_S, else 30 s; None when set to 0 (off)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        print(f"raysweep: {INTERVAL_ENV}={raw!r} is not a number of seconds; using {DEFAULT_INTERVAL_S:g}",
              file=sys.stderr)
        value = DEFAULT_INTERVAL_S
    return value if value > 0 else None


def _write(experiment: str, refresh_s: float | None) -> None:
    from analysis.report_build import write_experiment_report  # pandas, plotly: imported when first written
    from raysweep.experiment import storage

    # an experiment in object storage: built from its local mirror (pulled: only what changed is downloaded)
    # and the page uploaded beside it
    with storage.opened(experiment) as local:
        write_experiment_report(local, refresh_s=refresh_s)


class LiveReportCallback(Callback):
    """Rewrites report.html every `interval_s` seconds of the sweep (checked at each step of Tune's loop).

    `clock`, `background` and `write` exist for tests: time is `time.monotonic`, rewrites run in a thread,
    and `write(experiment, refresh_s)` builds the page."""

    def __init__(self, experiment_path: str, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, background: bool = True,
                 write: Callable[[str, float | None], None] | None = None):
        super().__init__()
        self.experiment_path = str(experiment_path)
        self.interval_s = float(interval_s)
        self.clock = clock
        self.background = background
        self._write = write or _write
        self._last: float | None = None  # clock time of the last rewrite started
        self._thread: threading.Thread | None = None
        self._failed = False
        self.writes = 0  # rewrites started (tests and the end-of-sweep message read it)

    def __getstate__(self) -> dict:
        # Tune pickles the RunConfig (callbacks included) into the experiment directory: no thread
        state = dict(self.__dict__)
        state["_thread"] = None
        return state

    @property
    def path(self) -> str:
        from raysweep.experiment import storage
        from raysweep.experiment.layout import REPORT_FILE

        return storage.join(self.experiment_path, REPORT_FILE)

    def _run(self, refresh_s: float | None) -> None:
        try:
            self._write(self.experiment_path, refresh_s)
        except Exception as exc:  # noqa: BLE001 - a view of the results must never end the sweep
            if not self._failed:
                print(f"raysweep: the live report could not be written ({type(exc).__name__}: {exc}); the sweep "
                      "goes on, `raysweep report` writes it later", file=sys.stderr)
            self._failed = True

    def maybe_write(self) -> bool:
        """Start a rewrite when `interval_s` has passed since the last one (or since the first call) and none is
        still running."""
        now = self.clock()
        if self._last is None:
            self._last = now  # the sweep starts: nothing reported yet, the first page one interval later
            return False
        if now - self._last < self.interval_s:
            return False
        if self._thread is not None and self._thread.is_alive():
            return False  # a slow rewrite: skip this turn rather than pile threads up
        self._last = now
        self.writes += 1
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(self.interval_s,), daemon=True,
                                            name="raysweep-live-report")
            self._thread.start()
        else:
            self._run(self.interval_s)
        return True

    # --- Tune Callback interface -------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info) -> None:
        self.maybe_write()

    def on_experiment_end(self, trials, **info) -> None:
        """The last page: everything the sweep reported, and no reload any more. Written in a thread that the
        interpreter waits for at exit (not a daemon), so it overlaps Ray's shutdown instead of delaying it."""
        previous = self._thread
        self.writes += 1

        def last() -> None:
            if previous is not None:
                previous.join()
            self._run(None)

        if self.background:
            self._thread = threading.Thread(target=last, name="raysweep-final-report")
            self._thread.start()
        else:
            last()


def callbacks(experiment_path: str) -> list[Callback]:
    """The driver's live-report callback (none when $RAYSWEEP_REPORT_INTERVAL_S is 0). Goes after the
    progress callback, which writes trials.csv in the same hooks."""
    interval = interval_from_env()
    return [] if interval is None else [LiveReportCallback(experiment_path, interval)]
