"""Ending trials that make no progress (`resources.stall_timeout_s`): a Tune callback in the driver process.

A trial that reports nothing — no train step, no eval — for the timeout (counted from its start, its last
report or its restart) is ended from outside: its reason is appended to the trial's error file as a
`TrialFailed:` line (what sweep/progress.py shows in the live table, the summary and trials.csv), then its
trial actor is killed. Tune sees the actor die and handles it like any failed trial: retried from its
latest checkpoint under `resources.max_failures`, else ERROR. Nothing in the training loop is involved, so
a trial stuck anywhere (a hung collective, a dead lock holder, a step that never ends) is caught.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback

from raysweep.experiment.layout import ERROR_FILE


def _kill(trial) -> None:
    import ray

    actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
    if actor is not None:
        ray.kill(actor, no_restart=True)


def stall_reason(seconds: float, timeout_s: float) -> str:
    return (f"no progress for {seconds:.0f} s (no step or eval reported; resources.stall_timeout_s is "
            f"{timeout_s:g}): ended; see the trial's logs for where it hung, or raise resources.stall_timeout_s")


class StallWatchdog(Callback):
    """Kills the actor of a RUNNING trial whose last report (or start) is older than `timeout_s`."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[object], None] = _kill):
        super().__init__()
        self.timeout_s = timeout_s
        self._clock, self._kill = clock, kill
        self._last: dict[str, float] = {}
        self._ended: set[str] = set()

    def __getstate__(self) -> dict:
        # Tune pickles the RunConfig's callbacks into the experiment; the clock and actor-kill are rebuilt
        return {"timeout_s": self.timeout_s, "_last": {}, "_ended": set()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._clock, self._kill = time.monotonic, _kill

    def _alive(self, trial) -> None:
        self._last[trial.trial_id] = self._clock()
        self._ended.discard(trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._alive(trial)

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self._alive(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._alive(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._alive(trial)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._last.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._last.pop(trial.trial_id, None)

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = self._clock()
        for trial in trials:
            if str(trial.status) != "RUNNING" or trial.trial_id in self._ended:
                continue
            since = now - self._last.setdefault(trial.trial_id, now)
            if since <= self.timeout_s:
                continue
            self._ended.add(trial.trial_id)
            path = getattr(trial, "local_path", None) or getattr(trial, "path", None)
            if path:  # before the kill: Tune appends its own failure record after this line
                try:
                    with (Path(path) / ERROR_FILE).open("a") as f:
                        f.write(f"TrialFailed: {stall_reason(since, self.timeout_s)}\n")
                except OSError:
                    pass
            self._kill(trial)
