# over 400 lines: the live table, trials.csv and the summary share one record per trial, read in one place
"""Live trial table while a sweep runs, the trials.csv record, and the end-of-sweep summary."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from raysweep.experiment import metrics as M
from raysweep.experiment import storage
from raysweep.experiment.layout import ERROR_FILE, SWEEP_FILE, TRIALS_FILE, merge_baselines
from raysweep.experiment.outcome import stopped_early

NO_ERROR_FILE = f"failed (see the trial's {ERROR_FILE})"
STATUS_STYLE = {"RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red", "PENDING": "dim", "PAUSED": "yellow",
                "INTERRUPTED": "yellow", "STOPPED": "magenta"}
STOPPED = "STOPPED"  # shown (never saved as a status) for a trial that a trial scheduler stopped early


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


class TrialRecord:
    """What we show and save per trial; filled from Tune callbacks (driver process only)."""

    stopped_by = ""  # the trial scheduler that stopped it before train.max_steps ('' if none did)

    def __init__(self, trial_id: str, cell: dict[str, Any], resolved: dict[str, Any]):
        self.trial_id = trial_id
        self.cell = cell
        self.resolved = resolved  # adapter type, rank, seed even when they are not grid axes
        self.status = "PENDING"
        self.finished = False
        self.last: dict[str, Any] = {}
        self.error = ""
        self.path = ""  # the trial's directory in the storage (a URI for object storage)
        self.local_path = ""  # ... and its driver-side copy (Tune writes error.txt there first)
        self.checkpoint_path = ""  # latest Tune checkpoint (actor executor; train trials report theirs)
        self.launched_at: float | None = None  # wall clock, this driver: Tune started the trial
        self.ended_at: float | None = None  # ... and saw it finish or fail

    @property
    def shown_status(self) -> str:
        """The status in tables and log lines: STOPPED for a scheduler-stopped trial (saved as TERMINATED)."""
        return STOPPED if self.stopped_by else self.status


class ProgressCallback(Callback):
    """A Ray Tune Callback running in the driver process.

    On a terminal: a live-updating table. Elsewhere (CI, nohup logs): a table every `every_s`
    seconds and one line per finished trial, so a log file stays readable.
    """

    def __init__(self, experiment_path: str, resolve, console: Console | None = None, every_s: float = 30.0):
        super().__init__()
        self.experiment_path = experiment_path
        self._resolve = resolve  # cell -> resolved trial config dict
        self.console = console or Console()
        self.every_s = every_s
        self.records: dict[str, TrialRecord] = {}
        self._live: Live | None = None
        self._last_print = 0.0
        self.started_at: float | None = None  # wall clock: this run of the sweep started (setup)
        self.total: int | None = None  # trials the sweep will run (None: read from raysweep.yaml when first shown)
        self._scheduler: str | None = None
        # launch/end times of an earlier run of this experiment (resume): Tune does not keep them, and a
        # trial that finished then is not started again
        self._earlier = earlier_times(storage.join(experiment_path, TRIALS_FILE))
        self._baselines_copied: set[str] = set()  # baseline files already in the experiment's (each read once)

    def __getstate__(self) -> dict:
        # Tune pickles the RunConfig (callbacks included) into the experiment dir; consoles and the
        # live display hold locks and are rebuilt after unpickling
        state = dict(self.__dict__)
        state["_live"] = None
        state["console"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.console = Console()
        self.__dict__.setdefault("started_at", None)  # pickled before the header showed timing
        self.__dict__.setdefault("total", None)
        self.__dict__.setdefault("_baselines_copied", set())

    # --- Tune Callback interface -------------------------------------------------------------
    def setup(self, **info) -> None:
        self.started_at = time.time()
        if self.console.is_terminal:
            self._live = Live(self.table(), console=self.console, refresh_per_second=1, transient=False)
            self._live.start()

    def on_step_begin(self, iteration, trials, **info) -> None:
        for trial in trials:
            self._record(trial)
        self._refresh()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._record(trial).launched_at = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._record(trial).last = dict(result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self._record(trial).checkpoint_path = checkpoint.path

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rec = self._record(trial)
        rec.status, rec.finished, rec.ended_at = "TERMINATED", True, time.time()
        self._mark_stopped(rec)
        self._line(rec)
        self.write_csv()  # a driver that dies (SIGKILL, OOM) still leaves every finished trial on record

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        rec = self._record(trial)
        rec.status, rec.ended_at = "ERROR", time.time()
        rec.error = read_error(getattr(trial, "local_path", None) or "", rec.path)
        self._line(rec)
        self.write_csv()

    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:
            self._record(trial)
        if self._live:
            self._live.update(self.table())
            self._live.stop()
        elif self.records:
            self.console.print(self.table())
        self.write_csv()

    # --- bookkeeping ---------------------------------------------------------------------------
    def _record(self, trial) -> TrialRecord:
        rec = self.records.get(trial.trial_id)
        status = str(trial.status)
        if rec is None:
            cell = trial.config.get("cell", {})
            rec = self.records[trial.trial_id] = TrialRecord(trial.trial_id, cell, self._resolve(cell))
            rec.finished = status == "TERMINATED"  # finished in an earlier run (resume)
            rec.launched_at, rec.ended_at = self._earlier.get(trial.trial_id, (None, None))
        if status == "TERMINATED" and not rec.finished:
            # Ctrl-C stops running trials as TERMINATED in memory, but Tune saves them as unfinished
            # and resumes them: only on_trial_complete (or an earlier run) means finished
            status = "INTERRUPTED"
        rec.status = status
        # a trial's directories never move: worked out once they are known, not at every step of Tune's loop
        rec.path = rec.path or trial_location(trial, self.experiment_path)
        rec.local_path = rec.local_path or getattr(trial, "local_path", "") or ""
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is not None:
            rec.checkpoint_path = checkpoint.path
        if not rec.last and getattr(trial, "last_result", None):
            rec.last = dict(trial.last_result)  # trials restored from a previous run
        if rec.finished:
            self._mark_stopped(rec)  # also a trial stopped in an earlier run (resume)
        if rec.status == "ERROR" and rec.error in ("", NO_ERROR_FILE):
            rec.error = read_error(rec.local_path, rec.path)  # Tune may write error.txt after on_trial_error
        return rec

    def _mark_stopped(self, rec: TrialRecord) -> None:
        max_steps = (rec.resolved.get("train") or {}).get("max_steps")
        rec.stopped_by = self.scheduler() if stopped_early(rec.status, rec.last, max_steps) else ""

    def scheduler(self) -> str:
        """search.scheduler of this experiment (from its raysweep.yaml), to say who stopped a trial."""
        if getattr(self, "_scheduler", None) is None:
            import yaml

            try:
                saved = yaml.safe_load(storage.read_text(storage.join(self.experiment_path, SWEEP_FILE))) or {}
                self._scheduler = str((saved.get("search") or {}).get("scheduler") or "scheduler")
            except (OSError, yaml.YAMLError):
                self._scheduler = "scheduler"
        return self._scheduler

    def _refresh(self) -> None:
        if self._live:
            self._live.update(self.table())
        elif time.monotonic() - self._last_print > self.every_s and self.records:
            self._last_print = time.monotonic()
            self.console.print(self.table())

    def _line(self, rec: TrialRecord) -> None:
        if self._live:
            return
        status = rec.shown_status
        text = Text(f"{status:<10} {rec.trial_id}  {describe(rec)}", style=STATUS_STYLE.get(status, ""))
        if rec.error:
            text.append(f"  {rec.error}")
        else:
            text.append(f"  eval/loss={_fmt(rec.last.get(M.EVAL_LOSS))}")
        if rec.stopped_by:
            text.append(f"  (stopped by {rec.stopped_by} at step {_fmt(rec.last.get(M.TRAIN_STEP))} of "
                        f"{rec.resolved['train']['max_steps']})")
        self.console.print(text)

    def table(self) -> Table:
        counts: dict[str, int] = {}
        for rec in self.records.values():
            counts[rec.shown_status] = counts.get(rec.shown_status, 0) + 1
        title = "  ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "starting"
        table = Table(title=f"raysweep · {title}  ·  {self.timing()}", title_justify="left")
        # family columns (e.g. λ and gate sparsity for sora, mask and violations for masked): the union over
        # the families in this sweep, option columns before the common metrics, metric columns after them
        family = _family_columns(self.records.values())
        options = [c for c in family if c[1] == "option"]
        metrics = [c for c in family if c[1] == "metric"]
        axes = _other_axes(self.records.values())
        tasks = _task_keys(self.records.values())[:TASK_COLUMNS]  # once the first task metrics arrive
        columns = ["trial", "status", "adapter", "rank", "seed"] + [k.split(".")[-1] for k in axes] + [
            c[0] for c in options] + ["step", "loss", "eval loss", "acc", "tok/s", "setup s"] + [c[0] for c in metrics] + [
            k.removeprefix(M.TASK_PREFIX) for k in tasks]
        for col in columns:
            table.add_column(col, justify="right" if col not in ("trial", "status", "adapter") else "left")
        for rec in self.records.values():
            last = rec.last
            row = [rec.trial_id, Text(rec.shown_status, style=STATUS_STYLE.get(rec.shown_status, "")),
                   str(rec.resolved["adapter"]["type"]), str(rec.resolved["adapter"]["r"]),
                   str(rec.resolved["train"]["seed"])]
            row += [_fmt(rec.cell.get(key)) for key in axes]
            row += [_fmt(_option(rec.resolved["adapter"], key)) for _, _, key in options]
            row += [_fmt(last.get(M.TRAIN_STEP)), _fmt(last.get(M.TRAIN_LOSS)), _fmt(last.get(M.EVAL_LOSS)),
                    _fmt(last.get(M.EVAL_ACCURACY), 3), _fmt(last.get(M.TRAIN_TOKENS_PER_S), 3),
                    _fmt(last.get(M.SYS_SETUP_S), 2)]  # model + data + optimizer: a trial's start-up
            row += [_fmt(last.get(key), 3) for _, _, key in metrics]
            row += [_fmt(last.get(key), 3) for key in tasks]
            table.add_row(*row)
        return table

    def timing(self, now: float | None = None) -> str:
        """'elapsed 3m 05s · 4/8 done · ETA 2m 10s': the ETA is the mean duration of the finished trials ×
        the trials left ÷ the trials running now ('ETA -' until one finishes). Rebuilt with every table, so
        it follows each finished trial."""
        now = time.time() if now is None else now
        done = [r for r in self.records.values() if r.status in ("TERMINATED", "ERROR")]
        total = max(self.total_trials(), len(self.records))
        elapsed = _duration(now - self.started_at) if self.started_at else "-"
        # durations observed here or in an earlier run of the experiment (resume keeps their times)
        took = [r.ended_at - r.launched_at for r in done if r.launched_at and r.ended_at and r.ended_at >= r.launched_at]
        running = sum(r.status == "RUNNING" for r in self.records.values())
        left = total - len(done)
        if not took:
            eta = "-"
        elif left <= 0:
            eta = "0s"
        else:
            eta = _duration(sum(took) / len(took) * left / max(running, 1))
        return f"elapsed {elapsed} · {len(done)}/{total} done · ETA {eta}"

    def total_trials(self) -> int:
        """Trials the sweep runs: `total`, else counted from its raysweep.yaml (Tune creates trials a few at a
        time, so its trial list is not the sweep), else the trials seen so far."""
        if self.total is None:
            try:
                from raysweep import config as C

                _, sweep, trials = C.load(storage.join(self.experiment_path, SWEEP_FILE))
                self.total = C.trial_count(sweep, trials)
            except Exception:  # noqa: BLE001 - only a count for the header: the trials seen so far will do
                self.total = 0
        return self.total

    def write_csv(self) -> str:
        path = storage.join(self.experiment_path, TRIALS_FILE)
        # task metrics are named by the tasks (task/<task>/<metric>): every one any trial reported
        metric_keys = list(M.ALL_METRICS) + [k for k in _task_keys(self.records.values()) if k not in M.ALL_METRICS]
        cell_keys = sorted({k for r in self.records.values() for k in r.cell})
        # written whole (storage.write_text): a driver killed mid-write leaves the previous complete file
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "stopped_by", "adapter.type", "adapter.r", "train.seed",
                    *[f"cell/{k}" for k in cell_keys], *metric_keys, M.CHECKPOINT_PATH, "error", "trial_path",
                    "launched_at", "ended_at"])
        for r in self.records.values():
            w.writerow([r.trial_id, r.status, r.stopped_by, r.resolved["adapter"]["type"], r.resolved["adapter"]["r"],
                        r.resolved["train"]["seed"], *[r.cell.get(k, "") for k in cell_keys],
                        *[r.last.get(k, "") for k in metric_keys], storage.in_store(checkpoint_of(r), self.experiment_path),
                        r.error, r.path, r.launched_at or "", r.ended_at or ""])
        storage.write_text(path, f.getvalue())
        self.write_baselines()
        return path

    def write_baselines(self) -> None:
        """The untuned bases' task metrics the trials computed (or found) in the storage's shared baselines,
        copied into the experiment's baseline file: the experiment keeps them if the storage's copy goes."""
        files = {str(r.last[M.TASK_BASELINE_FILE]) for r in self.records.values() if r.last.get(M.TASK_BASELINE_FILE)}
        copied = self._baselines_copied
        records = []
        for file in sorted(files - copied):
            try:
                records.append(json.loads(storage.read_text(file)))
                copied.add(file)
            except (OSError, json.JSONDecodeError):
                continue  # e.g. storage not mounted here: the trials' own numbers are all in trials.csv
        if records:
            merge_baselines(self.experiment_path, records)


def _task_keys(records) -> list[str]:
    """The task and generation metrics (task/<task>/<metric>, gen/...) the trials reported, sorted."""
    return sorted({k for r in records for k in r.last if M.is_task_metric(k)})


TASK_COLUMNS = 4  # task-metric columns at most in the live table (all are in trials.csv)


def _duration(seconds: float) -> str:
    """45s, 3m 05s, 2h 07m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def earlier_times(path: str | Path) -> dict[str, tuple[float | None, float | None]]:
    """trial id -> (launched_at, ended_at) recorded in a trials.csv, {} if there is none."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return {}
    times = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        launched, ended = row.get("launched_at"), row.get("ended_at")
        times[row["trial_id"]] = (float(launched) if launched else None, float(ended) if ended else None)
    return times


def checkpoint_of(rec: TrialRecord) -> str:
    """The trial's latest checkpoint: reported by Ray Train (train executor) or kept by Tune (actor)."""
    return rec.last.get(M.CHECKPOINT_PATH) or rec.checkpoint_path or ""


def _family_columns(records) -> list[tuple[str, str, str]]:
    """(header, 'option' | 'metric', key) of every adapter family present, without repeats, in order."""
    from raysweep import adapters

    columns: dict[str, tuple[str, str, str]] = {}
    for rec in records:
        for column in adapters.family(rec.resolved["adapter"]["type"]).progress_columns:
            columns.setdefault(column[0], column)
    return list(columns.values())


def _option(adapter_cfg: dict[str, Any], key: str) -> Any:
    """A family option as the trial runs it: the grid's value, else the family's default ('' if not its key)."""
    from raysweep import adapters

    if key in adapter_cfg:
        return adapter_cfg[key]
    return adapters.family(adapter_cfg["type"]).option_default(key)


def describe(rec: TrialRecord) -> str:
    """One line naming a trial: family, rank, seed and the family's option columns (λ, mask, sparsity, ...)."""
    from raysweep import adapters

    a, t = rec.resolved["adapter"], rec.resolved["train"]
    extra = "".join(f" {header}={_fmt(_option(a, key))}" for header, kind, key in
                    adapters.family(a["type"]).progress_columns if kind == "option")
    axes = "".join(f" {k.split('.')[-1]}={_fmt(rec.cell[k])}" for k in _other_axes([rec]))
    return f"{a['type']} r={a['r']}{extra} seed={t['seed']}{axes}"


def _other_axes(records) -> list[str]:
    """The grid axes (and drawn ranges) of these trials that the fixed columns (adapter, rank, seed) and the
    family option columns do not show already, e.g. train.lr of a learning-rate search."""
    from raysweep import adapters

    shown = {"adapter.type", "adapter.r", "train.seed"}
    records = list(records)
    for rec in records:
        family = adapters.family(rec.resolved["adapter"]["type"]).progress_columns
        shown |= {f"adapter.{key}" for _, kind, key in family if kind == "option"}
    return [k for k in dict.fromkeys(k for rec in records for k in rec.cell) if k not in shown]


def trial_location(trial, experiment_path: str) -> str:
    """Where a trial's directory is, as a user would give it: Ray keeps an object-store one as a path on its
    filesystem (no scheme); it is the experiment's location joined with the directory's name."""
    path = getattr(trial, "path", "") or ""
    if path and storage.is_uri(experiment_path):
        return storage.join(experiment_path, Path(path).name)
    return path


def read_error(*trial_paths: str) -> str:
    """The last line of a trial's error file: our TrialFailed reason. Tune writes it into the trial's
    driver-side directory and syncs it to the storage: the first of `trial_paths` (local, or in the store)
    that has one."""
    text = None
    for trial_path in (p for p in trial_paths if p):
        try:
            text = storage.read_text(storage.join(trial_path, ERROR_FILE))
            break
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
    if text is None:
        return NO_ERROR_FILE
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "TrialFailed:" in line:
            return line.split("TrialFailed:", 1)[1].strip()
    return lines[-1] if lines else "failed"


def print_summary(console: Console, records: dict[str, TrialRecord], experiment_path: str,
                  metric: str, mode: str) -> None:
    """Best trial per adapter (among trials that ran to their end: a trial a scheduler stopped early has
    its numbers from an earlier step), the experiment path and the commands to resume and analyze."""
    stopped = [r for r in records.values() if r.stopped_by]
    done = [r for r in records.values() if r.status == "TERMINATED" and not r.stopped_by and r.last.get(metric) is not None]
    failed = [r for r in records.values() if r.status == "ERROR"]
    unfinished = [r for r in records.values() if r.status not in ("TERMINATED", "ERROR")]
    table = Table(title=f"best trial per adapter by final {metric} ({mode}), trials that ran to their end",
                  title_justify="left")
    for col in ("adapter", "trial", "rank", "seed", metric, "eval/accuracy", "trainable params"):
        table.add_column(col)
    best: dict[str, TrialRecord] = {}
    sign = 1 if mode == "min" else -1
    for r in done:
        a = r.resolved["adapter"]["type"]
        if a not in best or sign * r.last[metric] < sign * best[a].last[metric]:
            best[a] = r
    for a, r in sorted(best.items()):
        table.add_row(a, r.trial_id, str(r.resolved["adapter"]["r"]), str(r.resolved["train"]["seed"]),
                      _fmt(r.last[metric]), _fmt(r.last.get(M.EVAL_ACCURACY), 3),
                      _fmt(r.last.get(M.ADAPTER_TRAINABLE_PARAMS)))
    console.print(table)
    by = ", ".join(sorted({r.stopped_by for r in stopped}))
    console.print(f"{len(done)} finished, " + (f"{len(stopped)} stopped early by {by}, " if stopped else "")
                  + f"{len(failed)} failed, {len(unfinished)} unfinished")
    for r in failed:
        console.print(Text(f"  ERROR {r.trial_id} ({describe(r)}): {r.error}", style="red"))
    for r in records.values():  # finished, every training result kept, but some task could not be evaluated
        if r.last.get(M.TASK_ERRORS):
            console.print(Text(f"  task metrics missing for {r.trial_id} ({describe(r)}): {r.last[M.TASK_ERRORS]}",
                               style="yellow"))
    console.print(f"experiment: {experiment_path}")
    console.print(f"trial table: {storage.join(experiment_path, TRIALS_FILE)}")
    console.print(f"resume:  python -m raysweep resume {experiment_path}")
    console.print(f"analyze: python -m raysweep analyze {experiment_path}")
