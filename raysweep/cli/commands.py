"""The commands: plan | run | resume | masks | bounds | export | eval | analyze. Each takes the parsed arguments and
returns an exit code (cli/console.py); user errors raise BadInput."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from raysweep import config as C
from raysweep.cli.console import (
    EXIT_INTERRUPTED,
    EXIT_TRIAL_FAILED,
    BadInput,
    console,
    err_console,
    hide_trial_tracebacks,
)
from raysweep.cli.preflight import (
    load_grid,
    object_store_problem,
    preflight,
    storage_problems,
    storage_root,
    tensorboard_problem,
    unique_name,
)
from raysweep.config import grid as G
from raysweep.experiment import storage as S
from raysweep.experiment.layout import EXPORT_INFO, SWEEP_FILE, TRIALS_FILE


def cmd_plan(args) -> int:
    from raysweep.cli.plan import print_plan
    from raysweep.offline import estimate

    raw, sweep, trials = load_grid(args.grid, args.overrides)
    # what `run` validates, but where it runs (the storage `run --storage` may replace, whether a trial fits
    # this machine): `plan` may describe a sweep meant for a cluster. --calibrate builds the builtin model
    notes = preflight(raw, trials, problems=storage_problems(None, sweep.storage), build_builtin=args.calibrate)
    with console.status("calibrating") if args.calibrate else contextlib.nullcontext():
        est, source = estimate.for_sweep(sweep, trials, calibrate_now=args.calibrate,
                                         log=lambda m: console.print(m, markup=False, highlight=False))
    print_plan(console, sweep, trials, est, source)
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    return 0


def _finish(callback, search: C.SearchConfig, experiment_path: str) -> int:
    from raysweep.sweep.progress import print_summary

    print_summary(console, callback.records, experiment_path, search.metric, search.mode)
    statuses = {r.status for r in callback.records.values()}
    if statuses - {"TERMINATED", "ERROR"}:
        return EXIT_INTERRUPTED
    return EXIT_TRIAL_FAILED if "ERROR" in statuses else 0


def cmd_run(args) -> int:
    import yaml

    from raysweep.cli.plan import describe_search
    from raysweep.sweep import driver
    from raysweep.sweep.progress import ProgressCallback

    raw, sweep, trials = load_grid(args.grid, args.overrides)
    problems = []
    if args.name is not None and not re.fullmatch(C.NAME_PATTERN, args.name):  # it becomes one directory
        problems.append(f"--name: {args.name!r} is not an experiment name; use letters, digits, _ . - (first a "
                        "letter or digit), e.g. --name rank_study-2")
    problems += storage_problems(args.storage, sweep.storage)
    problems += [p for p in [tensorboard_problem(args),
                             driver.setup_problem(sweep, dashboard=not args.no_dashboard, address=args.address)] if p]
    # every problem at once, before anything is written, built (the builtin model: once all else is fine)
    # or Ray starts
    preflight(raw, trials, launch=True, address=args.address, problems=problems, build_builtin=True)
    storage = storage_root(args, sweep)
    name = unique_name(storage, args.name or sweep.name)
    experiment_path = S.join(storage, name)
    if not args.verbose:
        hide_trial_tracebacks()
    try:  # before the experiment directory is written: a sweep that cannot start leaves nothing behind
        driver.init_ray(args.address, dashboard=not args.no_dashboard, verbose=args.verbose,
                        warm_imports=driver.warm_imports(sweep))
    except ConnectionError as exc:  # e.g. --address auto with no cluster running
        raise BadInput(f"--address {args.address}: {exc}; start the cluster (`ray start --head`) or fix "
                       "the address") from None
    S.make_dirs(experiment_path)
    # the resolved executor is part of the experiment: `resume` must rebuild the same trainable even if
    # what `auto` means changes in a later version
    saved = dict(raw, name=name, storage=storage,
                 resources={**(raw.get("resources") or {}), "executor": sweep.resources.resolved_executor()})
    S.write_text(S.join(experiment_path, SWEEP_FILE), yaml.safe_dump(saved, sort_keys=False))
    at_once = driver.slots(sweep)
    console.print(f"[bold]{G.trial_count(sweep, trials)} trial(s)[/bold] "
                  f"({describe_search(sweep.search, len(trials))}), "
                  f"{at_once} at once, executor {sweep.resources.resolved_executor()} → {experiment_path}")
    from raysweep.offline.estimate import header_line  # cached calibrations only: `run` never calibrates

    if line := header_line(sweep, trials, at_once):
        console.print(line)
    callback = ProgressCallback(experiment_path, lambda cell: G.trial_config(saved, cell), console)
    return _watch(lambda: driver.run(sweep, saved, trials, storage, name, _callbacks(callback, sweep),
                                     at_once, tensorboard=args.tensorboard), callback, sweep, experiment_path)


def _callbacks(progress, sweep: C.Sweep) -> list:
    """The driver's Tune callbacks: the live table and trials.csv, and the stall watchdog when asked for."""
    if not sweep.resources.stall_timeout_s:
        return [progress]
    from raysweep.sweep.watchdog import StallWatchdog

    return [StallWatchdog(sweep.resources.stall_timeout_s), progress]


def _watch(fit, callback, sweep, experiment_path: str) -> int:
    """Run the sweep (`fit`); on Ctrl-C keep trials.csv and say how to resume; always shut Ray down."""
    from raysweep.sweep import driver

    try:
        fit()
    except KeyboardInterrupt:
        callback.write_csv()
        console.print(f"interrupted; resume with: python -m raysweep resume {experiment_path}")
        return EXIT_INTERRUPTED
    finally:
        driver.shutdown_ray()
    return _finish(callback, sweep.search, experiment_path)


def cmd_resume(args) -> int:
    from raysweep.sweep import driver
    from raysweep.sweep.progress import ProgressCallback

    experiment_path = S.display(args.experiment)
    sweep_file = S.join(experiment_path, SWEEP_FILE)
    if S.is_uri(experiment_path) and (problem := object_store_problem(experiment_path, args.experiment)):
        raise BadInput(problem)
    if not S.is_dir(experiment_path):
        raise BadInput(f"{args.experiment}: no such directory; give the experiment path printed by `raysweep run` "
                       "(<storage>/<name>)")
    if not S.is_file(sweep_file) or not driver.experiment_exists(experiment_path):
        raise BadInput(f"{args.experiment}: not a raysweep experiment directory (no {SWEEP_FILE} "
                       "or Tune experiment state); give the path printed by `raysweep run`")
    raw, sweep, trials = load_grid(sweep_file, [])
    # the model and data files may have changed since the sweep started: the same validation as `run`
    problems = [p for p in [tensorboard_problem(args),
                            driver.setup_problem(sweep, dashboard=not args.no_dashboard, address=args.address)] if p]
    preflight(raw, trials, launch=True, address=args.address, problems=problems, build_builtin=True)
    if not args.verbose:
        hide_trial_tracebacks()
    driver.init_ray(args.address, dashboard=not args.no_dashboard, verbose=args.verbose,
                    warm_imports=driver.warm_imports(sweep))
    callback = ProgressCallback(experiment_path, lambda cell: G.trial_config(raw, cell), console)
    return _watch(lambda: driver.resume(experiment_path, sweep, raw, _callbacks(callback, sweep),
                                        retry_errored=args.retry_errored,
                                        tensorboard=args.tensorboard), callback, sweep, experiment_path)


def cmd_masks(args) -> int:
    from rich.table import Table

    from raysweep.experiment.layout import MASKS_DIR
    from raysweep.offline.masks import precompute_masks

    raw, sweep, trials = load_grid(args.grid, args.overrides)
    configs = [G.run_config(t.config) for t in trials]  # ranges at their representative values
    if not any(c["adapter"]["type"] == "masked" for c in configs):
        raise BadInput(f"{args.grid}: no trial has adapter.type 'masked', so there are no masks to compute; "
                       "set adapter.type: masked (or sweep it in the grid)")
    preflight(raw, trials, problems=storage_problems(args.storage, sweep.storage), build_builtin=True)
    store = storage_root(args, sweep)
    with console.status("computing masks"):
        results = precompute_masks(configs, store)
    table = Table(title=f"masks in {S.join(store, MASKS_DIR)}")
    for column in ("mask", "importance", "sparsity", "achieved", "trials", "", "seconds"):
        table.add_column(column, justify="left" if column in ("mask", "importance", "") else "right")
    for r in results:
        table.add_row(r.mask, r.importance, f"{r.sparsity:g}", f"{r.achieved:.4f}", str(r.trials),
                      "computed" if r.computed else "already there", f"{r.seconds:.1f}")
    console.print(table)
    console.print(f"{sum(r.computed for r in results)} computed, {sum(not r.computed for r in results)} reused; "
                  f"`raysweep run {args.grid}` with the same storage loads them")
    return 0


def cmd_bounds(args) -> int:
    with _opened(args.path) as where:
        return _bounds(args, where)


def _bounds(args, where: _Where) -> int:
    import json

    from raysweep.experiment.layout import TRIAL_CONFIG, find_checkpoints

    checkpoints = [c for c in find_checkpoints(where.local)
                   if json.loads((c / TRIAL_CONFIG).read_text())["adapter"]["type"] == "sublora"]
    if not checkpoints:
        raise BadInput(f"{args.path}: no checkpoint of a sublora trial found there; bounds apply to "
                       "adapter.type sublora (give its experiment, trial or checkpoint directory)")
    from raysweep.offline.bounds import bounds_for_checkpoint, summary, write_report

    overrides = {k: v for k, v in {"bound_levels": args.levels, "bound_quantizer": args.quantizer,
                                   "bound_sample": args.sample, "bound_delta": args.delta}.items() if v is not None}
    for checkpoint in checkpoints:
        with console.status(f"bounds of {where.show(checkpoint)}"):
            report = bounds_for_checkpoint(checkpoint, **overrides)
        written = write_report(checkpoint, report)
        console.print(f"[bold]{where.show(checkpoint)}[/bold]\n{summary(report)}\nwrote {where.show(written)}")
    return 0


def cmd_export(args) -> int:
    from raysweep.offline.export import ExportError, export

    try:
        with console.status(f"exporting to {args.out}"), _opened(args.path, write_back=False) as where:
            result = export(where.local, args.out, best=args.best, merged=args.merged, weights=args.weights,
                            metric=args.metric, mode=args.mode, check=not args.no_check, tolerance=args.tolerance)
    except ExportError as exc:
        raise BadInput(str(exc)) from None
    if S.is_uri(args.path):  # export.json names the source as the user does: in the object store
        _name_sources_in_store(Path(result.out) / EXPORT_INFO, where)
    what = "merged model" if result.merged else "peft adapter"
    console.print(f"{what} of trial {result.trial_id or '?'} ({result.weights} weights of {where.show(result.checkpoint)}) "
                  f"→ {result.out}", markup=False)
    if result.selection:
        s = result.selection
        console.print(f"best of {s['trials_considered']} finished trial(s) by {s['metric']} ({s['mode']}): "
                      f"{s['value']:.6g}")
    if result.mask_violations is not None:
        console.print(f"mask check: {result.mask_violations} of {result.masked_positions} masked weights are "
                      "not 0 after merging")
    if result.exported_loss is not None:
        console.print(f"eval loss: export {result.exported_loss:.6g}, trial {result.reference_metric} "
                      f"{result.reference_loss:.6g} (relative difference {result.rel_diff:.1e}, "
                      f"tolerance {result.tolerance:g})", markup=False)
        if result.note:
            console.print(result.note, markup=False)
    elif result.note:
        console.print(f"eval loss {result.note}", markup=False)
    if result.passed is False:
        err_console.print("[bold red]export check failed[/bold red] ", end="")
        err_console.print("; ".join(result.problems()) + f"; the files are kept in {result.out} ({EXPORT_INFO})",
                          markup=False, highlight=False)
        return EXIT_TRIAL_FAILED
    return 0


def _name_sources_in_store(info_file: Path, where: _Where) -> None:
    import json

    info = json.loads(info_file.read_text())
    info["source_checkpoint"] = where.show(info["source_checkpoint"])
    if info.get("selection"):
        info["selection"]["experiment"] = where.show(info["selection"]["experiment"])
    info_file.write_text(json.dumps(info, indent=2, default=float))


def cmd_eval(args) -> int:
    from raysweep.offline.evaluate import EvalError, evaluate_path

    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit: {args.limit} is not a number of examples; give a whole number ≥ 1")
    problems = _task_problems(args.tasks or [])
    if problems:
        raise BadInput("\n".join(["input problem(s):"] + [f"  - {p}" for p in problems]))
    try:
        with console.status("task metrics"), _opened(args.path) as where:
            results = evaluate_path(where.local, best=args.best, tasks=args.tasks, generation=args.generation,
                                    limit=args.limit, weights=args.weights,
                                    baseline=False if args.no_baseline else None,
                                    log=lambda m: console.print(m, markup=False, highlight=False))
    except EvalError as exc:
        raise BadInput(str(exc)) from None
    from raysweep.experiment import metrics as M

    for result in results:
        if result.selection:
            s = result.selection
            console.print(f"best of {s['trials_considered']} finished trial(s) by {s['metric']} ({s['mode']}): "
                          f"{s['value']:.6g}")
        shown = {k: v for k, v in result.metrics.items() if M.is_task_metric(k)}
        console.print(f"[bold]{result.trial_id or where.show(result.checkpoint)}[/bold] " + ", ".join(
            f"{k} {v:.4g}" + (f" (base {result.baseline[k]:.4g})" if k in result.baseline else "")
            for k, v in shown.items()))
        if result.metrics.get(M.TASK_ERRORS):
            console.print(f"missing: {result.metrics[M.TASK_ERRORS]}", markup=False, highlight=False)
        console.print(f"wrote {where.show(result.written)}", markup=False)
    return 0


@dataclass(frozen=True)
class _Where:
    """What the user named (`given`) and the local directory a command reads: itself, or its mirror."""

    local: Path
    given: str

    def show(self, path) -> str:
        """A path as the user names it: inside an object-store experiment's mirror, its place in the store."""
        return S.shown(path, self.local, self.given)


@contextlib.contextmanager
def _opened(given: str, write_back: bool = True) -> Iterator[_Where]:
    """An experiment, trial or checkpoint the user named, as a local directory: itself, or the local mirror
    of its object-store copy (files the command writes there go back to the store: experiment/storage.py)."""
    if S.is_uri(given):
        if problem := object_store_problem(given, given):
            raise BadInput(problem)
        if not S.is_dir(given):
            raise BadInput(f"{given}: nothing stored there; give an experiment, trial or checkpoint location "
                           "(the experiment path `raysweep run` printed)")
    elif not Path(given).expanduser().exists():
        raise BadInput(f"{given}: no such directory; give an experiment, trial or checkpoint directory")
    with S.opened(given, write_back=write_back) as local:
        yield _Where(local, given)


def _task_problems(tasks: list[str]) -> list[str]:
    from raysweep.cli.preflight import task_name_problems

    return task_name_problems([("--tasks", tasks)])


def cmd_analyze(args) -> int:
    with _opened(args.experiment) as where:
        return _analyze(args, where)


def _analyze(args, where: _Where) -> int:
    from analysis.load import ResultsError, load_trials, print_overview
    from analysis.pareto import parse_objectives
    from analysis.summary import write_summaries

    try:
        frame = load_trials(where.local)
    except ResultsError as exc:
        raise BadInput(str(exc).replace(str(where.local), args.experiment)) from None
    # written into the experiment (its object store copy too: _opened uploads them) unless --out says where
    out = Path(args.out).expanduser() if args.out else where.local
    print_overview(console, frame, args.experiment, out, shown=where.show)
    if frame.empty:
        return 0
    try:
        objectives = parse_objectives(args.objectives) if args.objectives else None
        written = write_summaries(frame, out, objectives, regression=args.regression)
    except (KeyError, ValueError) as exc:
        raise BadInput(f"analyze: {exc.args[0] if exc.args else exc}; name metrics as in {TRIALS_FILE}, "
                       "e.g. --objectives adapter/effective_params:min eval/loss:min") from None
    front = written["front"]
    console.print(f"Pareto front ({', '.join(f'{k} {v}' for k, v in written['objectives'].items())}): "
                  f"{len(front)} of {written['configurations']} configuration(s) are non-dominated; "
                  f"wrote {where.show(written['summary_table'])} and {where.show(written['pareto'])}")
    if len(written["excluded"]):
        console.print(f"left out of the front (missing or non-finite objective): {len(written['excluded'])}")
    if written["unfinished"]:
        console.print(f"{written['unfinished']} trial(s) not finished: not in the tables")
    return 0
