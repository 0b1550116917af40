"""Command line: run | plan | resume | analyze | masks | bounds | export. Thin: parses arguments and dispatches.

Exit codes: 0 success, 1 some trial failed, 2 bad input (nothing launched), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
from pathlib import Path

from rich.console import Console

from raysweep import config as C

EXIT_TRIAL_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130

console = Console()
if not console.is_terminal:  # logs and CI: wide enough that trial ids and numbers are not cut ($COLUMNS wins)
    console = Console(width=int(os.environ.get("COLUMNS", "0")) if os.environ.get("COLUMNS", "").isdigit() else 180)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


class BadInput(Exception):
    """One or more user errors; printed without a traceback, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysweep", description="Ray Tune sweeps of adapter fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep")
    run.add_argument("grid", help="grid YAML file")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.max_steps=50")
    run.add_argument("--address", default=None, help="existing Ray cluster ('auto' or host:port); default: start a local one")
    run.add_argument("--storage", default=None, help="experiment storage root (default: grid 'storage' or ~/ray_results)")
    run.add_argument("--name", default=None, help="experiment name (default: grid 'name', made unique)")
    run.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    run.add_argument("--verbose", action="store_true", help="show Ray and worker logs")
    run.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files in each "
                     "trial directory (`tensorboard --logdir <experiment>`; needs tensorboardX)")

    plan = sub.add_parser("plan", help="expand and validate a grid; print the trials, resources and (once "
                          "calibrated) estimated wall time and device-hours")
    plan.add_argument("grid")
    plan.add_argument("overrides", nargs="*")
    plan.add_argument("--calibrate", action="store_true", help="run a few steps of one trial per distinct "
                      "model/adapter shape here (no Ray; ~5 s each) and cache them, for the time estimate")

    resume = sub.add_parser("resume", help="continue an interrupted sweep (finished trials are kept)")
    resume.add_argument("experiment", help="experiment directory, e.g. ~/ray_results/quickstart")
    resume.add_argument("--address", default=None)
    resume.add_argument("--retry-errored", action="store_true", help="also retry trials that failed (from "
                        "their latest checkpoint)")
    resume.add_argument("--no-dashboard", action="store_true")
    resume.add_argument("--verbose", action="store_true")
    resume.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")

    masks = sub.add_parser("masks", help="precompute the pruning masks of a grid's masked trials (optional: "
                           "trials compute missing ones on demand)")
    masks.add_argument("grid")
    masks.add_argument("overrides", nargs="*")
    masks.add_argument("--storage", default=None, help="storage root the sweep will use (default: grid 'storage' "
                       "or ~/ray_results); masks go to <storage>/masks/")

    bounds = sub.add_parser("bounds", help="PAC-Bayes bounds of sublora trials (recomputed from checkpoints)")
    bounds.add_argument("path", help="an experiment directory, a trial directory or a checkpoint directory")
    bounds.add_argument("--levels", type=int, default=None, help="quantization levels of α (default: the trial's, 11)")
    bounds.add_argument("--quantizer", choices=["uniform", "kmeans"], default=None)
    bounds.add_argument("--sample", type=int, default=None, help="units evaluated for the empirical risk")
    bounds.add_argument("--delta", type=float, default=None, help="confidence δ (default: the trial's, 0.05)")

    exp = sub.add_parser("export", help="export a trial's adapter (peft format) or merged model, checked against "
                         "the trial's eval loss")
    exp.add_argument("path", help="a checkpoint or trial directory, or an experiment directory with --best")
    exp.add_argument("--out", required=True, help="where to write (a new or empty directory)")
    exp.add_argument("--best", action="store_true", help="PATH is an experiment: export its best finished trial "
                     "(by the experiment's search.metric and search.mode)")
    exp.add_argument("--metric", default=None, help="with --best: rank the trials by this metric instead")
    exp.add_argument("--mode", choices=["min", "max"], default=None, help="with --best: direction of --metric")
    exp.add_argument("--merged", action="store_true", help="merge the adapter into the base model "
                     "(merge_and_unload) and save the whole model with its tokenizer")
    exp.add_argument("--weights", choices=["best", "final"], default="best", help="best: the trial's best eval "
                     "loss (best_adapter/, default); final: the checkpoint's last step (adapter/)")
    exp.add_argument("--tolerance", type=float, default=None, help="relative eval-loss difference allowed "
                     "(default 1e-3; 5e-3 for bfloat16/float16 models)")
    exp.add_argument("--no-check", action="store_true", help="do not evaluate the export")

    analyze = sub.add_parser("analyze", help="summarise a finished (or partial) experiment")
    analyze.add_argument("experiment")
    analyze.add_argument("--out", default=None, help="where tables go (default: the experiment directory)")
    analyze.add_argument("--objectives", nargs="+", default=None, metavar="METRIC[:min|max]",
                         help="Pareto objectives (default per family: adapter/effective_params:min eval/loss:min; "
                         "masked: mask/achieved_sparsity:max eval/loss:min; sublora: bound/kl_bits:min "
                         "bound/bpd_empirical:min)")
    return p


def _load(grid: str, overrides: list[str]):
    from raysweep.config import grid as G

    try:
        return G.load(grid, overrides)
    except C.ConfigError as exc:
        raise BadInput(str(exc)) from None


def _preflight(raw: dict, trials, launch: bool = False, address: str | None = None) -> None:
    """Checks that need the filesystem (or hub), done before Ray starts: model sources, data files, and for a
    `launch`, that the cluster at `address` answers or (no address: Ray is started here) one trial fits here."""
    from raysweep.inputs import data, models

    problems: list[str] = []
    for name in sorted({t.config.model.name_or_path for t in trials}):
        problem = models.check_source(name)
        if problem:
            problems.append(problem)
    if any(t.config.model.load_in_4bit for t in trials):
        problems += [p for p in [models.check_quantization({"load_in_4bit": True})] if p]
    seen = set()
    for t in trials:
        key = t.config.data.model_dump_json()
        if key not in seen:
            seen.add(key)
            problems += data.check_files(t.config.data.model_dump())
    if launch and address:
        problems += [p for p in [_address_problem(address)] if p]
    # RAY_ADDRESS: ray.init() joins that cluster instead of starting one here. Resources are not grid axes:
    # every trial asks for the same
    elif launch and trials and not os.environ.get("RAY_ADDRESS"):
        problems += _local_fit(trials[0].config.resources)
    if problems:
        raise BadInput("\n".join(["input problem(s):"] + [f"  - {p}" for p in dict.fromkeys(problems)]))


def _address_problem(address: str) -> str | None:
    """A host:port nothing listens on: `ray.init` would retry its GCS connection for minutes before failing."""
    if address == "auto" or "://" in address:  # found (or refused quickly) by Ray itself; ray:// is Ray Client
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"--address: {address!r} is not 'auto' or host:port; give e.g. --address 10.0.0.1:6379"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return (f"--address: nothing answers at {address} ({exc.strerror or exc}); start the cluster there "
                "(`ray start --head`, port 6379 by default) or fix the address")
    return None


def _local_fit(resources: C.ResourcesConfig) -> list[str]:
    """Why one trial cannot fit this machine (for a Ray started here): Ray only logs a warning about an
    infeasible request and the sweep would wait forever with every trial PENDING. On a cluster (--address)
    nodes can be added, so Ray judges there."""
    import ray

    if ray.is_initialized():  # a Ray already started in this process (a notebook, a test) has its own resources
        return []
    try:  # the counts `ray.init()` itself would detect (cgroup CPU limits, CUDA_VISIBLE_DEVICES); starts nothing
        from ray._private import utils
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        cpus = utils.get_num_cpus()
        manager, accelerators = ResourceAndLabelSpec._get_current_node_accelerator(None, {})
        gpus = accelerators if manager is not None and manager.get_resource_name() == "GPU" else 0
    except Exception:  # noqa: BLE001 - a private Ray API that moved: let Ray judge, as on a cluster
        return []
    n = resources.num_workers
    where = "resources.cpus_per_worker" if n == 1 else "resources.num_workers × resources.cpus_per_worker"
    problems = []
    if resources.cpus_per_worker * n > cpus:
        problems.append(f"{where}: a trial asks for {resources.cpus_per_worker * n:g} CPU(s) but this machine has "
                        f"{cpus:g}, so no trial could start; ask for at most {cpus:g} in all, or run on a cluster "
                        "with --address")
    if resources.gpus_per_worker * n > gpus:
        where = where.replace("cpus_per_worker", "gpus_per_worker")
        problems.append(f"{where}: a trial asks for {resources.gpus_per_worker * n:g} GPU(s) but this machine has "
                        f"{gpus:g}, so no trial could start; set resources.gpus_per_worker: 0 to train on CPU, ask "
                        "for fewer, or run on a cluster with GPUs (--address)")
    return problems


def cmd_plan(args) -> int:
    from raysweep.cli.plan import print_plan
    from raysweep.offline import estimate

    raw, sweep, trials = _load(args.grid, args.overrides)
    if args.calibrate:  # needs the model and data, like `run`
        _preflight(raw, trials)
        _ensure_builtin(trials)
    with console.status("calibrating") if args.calibrate else contextlib.nullcontext():
        est, source = estimate.for_sweep(sweep, trials, calibrate_now=args.calibrate,
                                         log=lambda m: console.print(m, markup=False, highlight=False))
    print_plan(console, sweep, trials, est, source)
    return 0


def _unique_name(storage: Path, name: str) -> str:
    candidate, i = name, 2
    while (storage / candidate).exists():
        candidate, i = f"{name}-{i}", i + 1
    return candidate


def _ensure_builtin(trials) -> None:
    """Create the builtin model/task once, here, rather than racing in every trial."""
    tasks = {t.config.data.task for t in trials}
    if any(t.config.model.name_or_path == "builtin" for t in trials) or tasks & {"builtin", "builtin_tokens"}:
        from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task, ensure_builtin_tokens

        with console.status("builtin model and task (created on first use, ~1 minute)"):
            ensure_builtin_model()
            ensure_builtin_task()
            if "builtin_tokens" in tasks:
                ensure_builtin_tokens()


def _storage(args, sweep) -> Path:
    given = args.storage or sweep.storage or "~/ray_results"
    if "://" in given:  # trials.csv, raysweep.yaml and the mask store are written with plain file I/O
        key = "--storage" if args.storage else "storage"
        raise BadInput(f"{key}: {given} is a URI; raysweep needs a directory, on a cluster one every node mounts "
                       "at the same path (NFS, EFS, a shared disk): see docs/cluster.md")
    storage = Path(os.path.expanduser(given)).resolve()
    if storage.exists() and not storage.is_dir():  # found here, not as a traceback from mkdir after Ray starts
        key = "--storage" if args.storage else "storage"
        raise BadInput(f"{key}: {storage} is a file, not a directory; give a directory for the experiments "
                       "(it is created if missing)")
    return storage


def _finish(callback, raw, experiment_path: str) -> int:
    from raysweep.sweep.progress import print_summary

    search = C.SearchConfig(**(raw.get("search") or {}))
    print_summary(console, callback.records, experiment_path, search.metric, search.mode)
    statuses = {r.status for r in callback.records.values()}
    if statuses - {"TERMINATED", "ERROR"}:
        return EXIT_INTERRUPTED
    return EXIT_TRIAL_FAILED if "ERROR" in statuses else 0


def _check_tensorboard(args) -> None:
    import importlib.util

    if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise BadInput("--tensorboard: tensorboardX is not installed; `pip install tensorboardX` or drop the flag")


def cmd_run(args) -> int:
    import yaml

    raw, sweep, trials = _load(args.grid, args.overrides)
    _preflight(raw, trials, launch=True, address=args.address)
    if args.name is not None and not re.fullmatch(C.NAME_PATTERN, args.name):  # it becomes one directory
        raise BadInput(f"--name: {args.name!r} is not an experiment name; use letters, digits, _ . - (first a "
                       "letter or digit), e.g. --name rank_study-2")
    _check_tensorboard(args)
    storage = _storage(args, sweep)
    name = _unique_name(storage, args.name or sweep.name)
    experiment_path = str(storage / name)

    from raysweep.cli.plan import describe_search
    from raysweep.config import grid as G
    from raysweep.sweep import driver
    from raysweep.sweep.progress import ProgressCallback

    problem = driver.setup_problem(raw, dashboard=not args.no_dashboard, address=args.address)
    if problem:  # before anything is written, built (the builtin model) or Ray starts
        raise BadInput(problem)
    _ensure_builtin(trials)
    try:  # before the experiment directory is written: a sweep that cannot start leaves nothing behind
        driver.init_ray(args.address, dashboard=not args.no_dashboard, verbose=args.verbose,
                             warm_imports=sweep.resources.resolved_executor() == "actor")
    except ConnectionError as exc:  # e.g. --address auto with no cluster running
        raise BadInput(f"--address {args.address}: {exc}; start the cluster (`ray start --head`) or fix "
                       "the address") from None
    Path(experiment_path).mkdir(parents=True, exist_ok=True)
    # the resolved executor is part of the experiment: `resume` must rebuild the same trainable even if
    # what `auto` means changes in a later version
    saved = dict(raw, name=name, storage=str(storage),
                 resources={**(raw.get("resources") or {}), "executor": sweep.resources.resolved_executor()})
    (Path(experiment_path) / driver.SWEEP_FILE).write_text(yaml.safe_dump(saved, sort_keys=False))
    at_once = driver.slots(saved)
    console.print(f"[bold]{G.trial_count(sweep, trials)} trial(s)[/bold] "
                  f"({describe_search(sweep.search, len(trials))}), "
                  f"{at_once} at once, executor {sweep.resources.resolved_executor()} → {experiment_path}")
    from raysweep.offline.estimate import header_line  # cached calibrations only: `run` never calibrates

    if line := header_line(sweep, trials, at_once):
        console.print(line)
    callback = ProgressCallback(experiment_path, lambda cell: G.trial_config(saved, cell), console)
    try:
        driver.run(saved, trials, str(storage), name, [callback], at_once, tensorboard=args.tensorboard)
    except KeyboardInterrupt:
        callback.write_csv()
        console.print(f"interrupted; resume with: python -m raysweep resume {experiment_path}")
        return EXIT_INTERRUPTED
    finally:
        driver.shutdown_ray()
    return _finish(callback, saved, experiment_path)


def cmd_resume(args) -> int:
    from raysweep.config import grid as G
    from raysweep.sweep import driver
    from raysweep.sweep.progress import ProgressCallback

    experiment_path = str(Path(os.path.expanduser(args.experiment)).resolve())
    sweep_file = Path(experiment_path) / driver.SWEEP_FILE
    if not Path(experiment_path).is_dir():
        raise BadInput(f"{args.experiment}: no such directory; give the experiment path printed by `raysweep run` "
                       "(<storage>/<name>)")
    if not sweep_file.is_file() or not driver.experiment_exists(experiment_path):
        raise BadInput(f"{args.experiment}: not a raysweep experiment directory (no {driver.SWEEP_FILE} "
                       "or Tune experiment state); give the path printed by `raysweep run`")
    _check_tensorboard(args)
    raw, sweep, trials = _load(str(sweep_file), [])
    _preflight(raw, trials, launch=True, address=args.address)
    problem = driver.setup_problem(raw, dashboard=not args.no_dashboard, address=args.address)
    if problem:
        raise BadInput(problem)
    _ensure_builtin(trials)
    driver.init_ray(args.address, dashboard=not args.no_dashboard, verbose=args.verbose,
                         warm_imports=driver.executor(raw) == "actor")
    callback = ProgressCallback(experiment_path, lambda cell: G.trial_config(raw, cell), console)
    try:
        driver.resume(experiment_path, raw, [callback], retry_errored=args.retry_errored,
                           tensorboard=args.tensorboard)
    except KeyboardInterrupt:
        callback.write_csv()
        console.print(f"interrupted; resume with: python -m raysweep resume {experiment_path}")
        return EXIT_INTERRUPTED
    finally:
        driver.shutdown_ray()
    return _finish(callback, raw, experiment_path)


def cmd_masks(args) -> int:
    from rich.table import Table

    from raysweep.adapters.masked.store import MASKS_DIR
    from raysweep.offline.masks import precompute_masks

    raw, sweep, trials = _load(args.grid, args.overrides)
    configs = [t.config.model_dump(mode="json") for t in trials]  # ranges at their representative values
    if not any(c["adapter"]["type"] == "masked" for c in configs):
        raise BadInput(f"{args.grid}: no trial has adapter.type 'masked', so there are no masks to compute; "
                       "set adapter.type: masked (or sweep it in the grid)")
    _preflight(raw, trials)
    _ensure_builtin(trials)
    store = _storage(args, sweep)
    with console.status("computing masks"):
        results = precompute_masks(configs, store)
    table = Table(title=f"masks in {store / MASKS_DIR}")
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
    import json

    from raysweep.trial import checkpointing

    path = Path(args.path).expanduser()
    if not path.exists():
        raise BadInput(f"{args.path}: no such directory; give an experiment, trial or checkpoint directory")
    checkpoints = [c for c in checkpointing.find_checkpoints(path)
                   if json.loads((c / checkpointing.TRIAL_CONFIG).read_text())["adapter"]["type"] == "sublora"]
    if not checkpoints:
        raise BadInput(f"{args.path}: no checkpoint of a sublora trial found there; bounds apply to "
                       "adapter.type sublora (give its experiment, trial or checkpoint directory)")
    from raysweep.adapters.sublora.bounds import bounds_for_checkpoint, summary, write_report

    overrides = {k: v for k, v in {"bound_levels": args.levels, "bound_quantizer": args.quantizer,
                                   "bound_sample": args.sample, "bound_delta": args.delta}.items() if v is not None}
    for checkpoint in checkpoints:
        with console.status(f"bounds of {checkpoint}"):
            report = bounds_for_checkpoint(checkpoint, **overrides)
        written = write_report(checkpoint, report)
        console.print(f"[bold]{checkpoint}[/bold]\n{summary(report)}\nwrote {written}")
    return 0


def cmd_export(args) -> int:
    from raysweep.offline.export import ExportError, export

    try:
        with console.status(f"exporting to {args.out}"):
            result = export(args.path, args.out, best=args.best, merged=args.merged, weights=args.weights,
                            metric=args.metric, mode=args.mode, check=not args.no_check, tolerance=args.tolerance)
    except ExportError as exc:
        raise BadInput(str(exc)) from None
    what = "merged model" if result.merged else "peft adapter"
    console.print(f"{what} of trial {result.trial_id or '?'} ({result.weights} weights of {result.checkpoint}) "
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
        err_console.print("; ".join(result.problems()) + f"; the files are kept in {result.out} (export.json)",
                          markup=False, highlight=False)
        return EXIT_TRIAL_FAILED
    return 0


def cmd_analyze(args) -> int:
    from analysis.load import ResultsError, load_trials, print_overview
    from analysis.pareto import parse_objectives
    from analysis.summary import write_summaries

    try:
        frame = load_trials(args.experiment)
    except ResultsError as exc:
        raise BadInput(str(exc)) from None
    out = Path(args.out).expanduser() if args.out else Path(args.experiment).expanduser()
    print_overview(console, frame, args.experiment, out)
    if frame.empty:
        return 0
    try:
        objectives = parse_objectives(args.objectives) if args.objectives else None
        written = write_summaries(frame, out, objectives)
    except (KeyError, ValueError) as exc:
        raise BadInput(f"analyze: {exc.args[0] if exc.args else exc}; name metrics as in trials.csv, "
                       "e.g. --objectives adapter/effective_params:min eval/loss:min") from None
    front = written["front"]
    console.print(f"Pareto front ({', '.join(f'{k} {v}' for k, v in written['objectives'].items())}): "
                  f"{len(front)} of {written['configurations']} configuration(s) are non-dominated; "
                  f"wrote {written['summary_table']} and {written['pareto']}")
    if len(written["excluded"]):
        console.print(f"left out of the front (missing or non-finite objective): {len(written['excluded'])}")
    if written["unfinished"]:
        console.print(f"{written['unfinished']} trial(s) not finished: not in the tables")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow the options (`run grid.yaml --address auto train.lr=1e-3`): argparse stops
    # filling a positional list at the first option, so the rest arrive here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = {"run": cmd_run, "plan": cmd_plan, "resume": cmd_resume, "analyze": cmd_analyze,
               "masks": cmd_masks, "bounds": cmd_bounds, "export": cmd_export}[args.command]
    try:
        return handler(args)
    except BadInput as exc:
        err_console.print("[bold red]error[/bold red] ", end="")
        err_console.print(str(exc), markup=False, highlight=False)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
