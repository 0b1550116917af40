"""The one validation `plan`, `run`, `resume` and `masks` share, done before Ray starts and before anything is
written: the grid file (config/), then what needs the filesystem, the hub or the machine: model sources and
what the model's files say against each trial's adapter (cli/model_check.py), data files (chat roles the
model's template renders, token ids below its tokenizer's size), the problems each command finds in its own
options (the storage, --name, ...); and for a launch, that the cluster answers or one trial fits here. Every
problem is reported at once, one line each, exit code 2.
Also the grid loading, storage and name rules every command shares. The one place the CLI uses Ray's
private helpers (what `ray.init()` would detect)."""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import os
import socket
from collections.abc import Callable
from pathlib import Path

from raysweep import config as C
from raysweep.cli.console import BadInput, console
from raysweep.experiment import storage


def load_grid(grid: str, overrides: list[str]):
    try:
        return C.load(grid, overrides)
    except C.ConfigError as exc:
        # every problem at once: the files the grid's base sections name are checked too
        more = [C.ConfigIssue("", p) for p in _base_file_problems(grid, overrides)]
        raise BadInput(str(C.ConfigError(exc.source, exc.issues + more) if more else exc)) from None


def _base_file_problems(grid: str, overrides: list[str]) -> list[str]:
    """Data files and model source of a grid whose other keys are wrong (only sections that validate)."""
    from pydantic import ValidationError

    from raysweep.inputs import data, models

    try:
        raw = C.read_yaml(grid)
        if C.apply_overrides(raw, list(overrides)):
            return []
    except C.ConfigError:
        return []
    problems = []
    try:
        problems += data.check_files(C.DataConfig(**(raw.get("data") or {})).model_dump())
    except (ValidationError, TypeError):
        pass
    try:
        problems += [p for p in [models.check_source(C.ModelConfig(**(raw.get("model") or {})).name_or_path)] if p]
    except (ValidationError, TypeError):
        pass
    return problems


def preflight(raw: dict, trials, launch: bool = False, address: str | None = None,
              problems: list[str] | None = None, build_builtin: bool = False) -> list[str]:
    """Raise BadInput listing `problems` (the command's own, e.g. its options) and every problem of the
    inputs: model sources and files against each trial's adapter, data files; for a `launch`, that the
    cluster at `address` answers or (no address: Ray is started here) one trial fits here. `build_builtin`:
    create the builtin model and task (once all else is fine) and check the builtin model's files too.
    Returns notes on checks left for later (the builtin model before it is built)."""
    from raysweep.inputs import models
    from raysweep.sweep import trackers

    problems = list(problems or []) + trackers.problems(raw.get("tracking"))  # package, server, login
    names = sorted({t.config.model.name_or_path for t in trials})
    sources = {name: models.check_source(name) for name in names}
    problems += [p for p in sources.values() if p]
    if any(t.config.model.load_in_4bit for t in trials):
        problems += [p for p in [models.check_quantization({"load_in_4bit": True})] if p]
    facts = {name: None if sources[name] else models.facts(name) for name in names}
    problems += _model_problems(raw, trials, facts)
    # lm-eval task names against lm-eval's own task index (cached per lm-eval version: indexing takes ~9 s)
    task_lists = {tuple(t.config.evaluate.lm_eval.tasks): None for t in trials
                  if t.config.evaluate is not None and t.config.evaluate.lm_eval is not None}
    problems += task_name_problems([("evaluate.lm_eval.tasks", list(tasks)) for tasks in task_lists])
    if launch and address:
        problems += [p for p in [_address_problem(address)] if p]
    # RAY_ADDRESS: ray.init() joins that cluster instead of starting one here. Resources are not grid axes:
    # every trial asks for the same
    elif launch and trials and not os.environ.get("RAY_ADDRESS"):
        problems += _local_fit(trials[0].config.resources)
    _raise(problems)
    waiting = [n for n in names if n == models.BUILTIN and facts[n] is None]
    if build_builtin:
        ensure_builtin(trials)
        if waiting:  # built now: its files can be judged (a second look only on a fresh machine)
            _raise(_model_problems(raw, trials, {n: models.facts(n) for n in waiting}))
        return []
    return [f"model '{n}' is created on first use (`run`, or `plan --calibrate`); its checks against the "
            "adapter run then" for n in waiting]


def _raise(problems: list[str]) -> None:
    if problems:
        raise BadInput("\n".join(["input problem(s):"] + [f"  - {p}" for p in dict.fromkeys(problems)]))


def _model_problems(raw: dict, trials, facts: dict) -> list[str]:
    """The model files' own problems, each trial's adapter against its model, its data files against the
    model's chat roles and its token files against the tokenizer's size. `facts`: model name -> ModelFacts,
    or None where the files cannot be read (yet); trials of models not in it are left out."""
    from raysweep.cli import model_check
    from raysweep.inputs import data

    problems = [p for f in facts.values() if f is not None for p in f.problems]
    verdicts: dict[tuple, list[str]] = {}  # one per distinct question: grids repeat models, adapters, data

    def once(key: tuple, check: Callable[[], list[str]]) -> list[str]:
        if key not in verdicts:
            verdicts[key] = check()
        return verdicts[key]

    def adapter_check(trial) -> list[str]:
        name = trial.config.model.name_or_path
        found = facts.get(name)
        if found is None or found.problems:
            return []
        return [p for adapter in _adapter_configs(raw, trial)
                for p in once(("adapter", name, adapter.model_dump_json()),
                              lambda a=adapter: model_check.adapter_problems(found, a, name))]

    def data_check(trial) -> list[str]:
        name = trial.config.model.name_or_path
        if name not in facts:
            return []
        found, cfg, text = facts[name], trial.config.data.model_dump(), trial.config.data.model_dump_json()
        # the template decides whether 'tool' is a role (unknown before the model's files are read: allowed)
        roles = data.CHAT_ROLES if found is None or found.tool_role else tuple(r for r in data.CHAT_ROLES if r != "tool")
        out = once(("data", text, roles), lambda: data.check_files(cfg, roles))
        if found is not None and found.vocab_size and not out:
            out = once(("vocab", text, found.vocab_size),
                       lambda: data.check_token_vocab(cfg, found.vocab_size, model_check.cached_max_id))
        return out

    return problems + _per_trial(trials, adapter_check) + _per_trial(trials, data_check)


def _per_trial(trials, check: Callable) -> list[str]:
    """`check(trial)`'s problems; one that only some cells of the grid have names the first of them."""
    where: dict[str, list] = {}
    for t in trials:
        for problem in check(t):
            where.setdefault(problem, []).append(t)
    out = []
    for problem, hit in where.items():
        if len(hit) == len(trials) or not hit[0].cell:
            out.append(problem)
            continue
        # the axis values these cells share say what causes it (e.g. adapter.r=256 of a rank × seed grid)
        shared = {k: v for k, v in hit[0].cell.items() if all(k in t.cell and t.cell[k] == v for t in hit)}
        label = ", ".join(f"{k}={v}" for k, v in (shared or hit[0].cell).items())
        out.append(f"grid ({label}{f': {len(hit)} cells' if len(hit) > 1 else ''}) {problem}")
    return out


def _adapter_configs(raw: dict, trial) -> list:
    """The adapter of a trial; with ranges in its cell (random/optuna), the adapter at every corner of them,
    as config/grid.py validates them (capped: 8 ranges give 256 corners)."""
    from raysweep.config.ranges import Range

    ranged = [k for k, v in trial.cell.items() if isinstance(v, Range)]
    if not any(k.startswith("adapter.") for k in ranged):
        return [trial.config.adapter]
    middle = {k: (v.representative() if isinstance(v, Range) else v) for k, v in trial.cell.items()}
    out = [trial.config.adapter]
    for ends in itertools.islice(itertools.product(*(trial.cell[k].extremes() for k in ranged)), 256):
        config, _ = C.validate_trial(C.resolve(raw, middle | dict(zip(ranged, ends, strict=True))))
        if config is not None:
            out.append(config.adapter)
    return out


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
    from raysweep.sweep.resources import fit_problems

    return fit_problems(resources, cpus, gpus)


def unique_name(root: str, name: str) -> str:
    candidate, i = name, 2
    while storage.exists(storage.join(root, candidate)):
        candidate, i = f"{name}-{i}", i + 1
    return candidate


def ensure_builtin(trials) -> None:
    """Create the builtin model/task once, here, rather than racing in every trial."""
    from raysweep.inputs import sources

    tasks = {t.config.data.task for t in trials}
    models = {t.config.model.name_or_path for t in trials}
    if sources.needs_building(models, tasks):
        with console.status("builtin model and task (created on first use, ~1 minute)"):
            sources.build_generated(models, tasks)


def storage_root(args, sweep) -> str:
    """The experiments' storage root: a resolved local directory, or an object-store URI as given."""
    given = args.storage or sweep.storage or "~/ray_results"
    problem = storage_problem(given, "--storage" if args.storage else "storage")
    if problem:
        raise BadInput(problem)
    return storage.display(given)


def storage_problems(option: str | None, key_value: str | None) -> list[str]:
    """The storage a command would use: --storage (`option`) or the grid's `storage` key."""
    problem = storage_problem(option or key_value, "--storage" if option else "storage")
    return [problem] if problem else []


def storage_problem(given: str | None, key: str) -> str | None:
    """Why `given` cannot be the experiments' storage root (None: fine, created if missing)."""
    if not given:
        return None
    if storage.is_uri(given):
        return object_store_problem(given, key)
    if "://" in given:
        return (f"{key}: {given} is a file:// URI; give the directory as a path (or an object store such as "
                "s3://bucket/prefix)")
    directory = Path(os.path.expanduser(given)).resolve()
    if directory.exists() and not directory.is_dir():  # found here, not as a traceback from mkdir after Ray starts
        return (f"{key}: {directory} is a file, not a directory; give a directory for the experiments (it is "
                "created if missing)")
    return None


def object_store_problem(uri: str, key: str) -> str | None:
    """Why the object store at `uri` cannot hold experiments: a scheme pyarrow cannot open, no bucket, or a
    store that does not answer (checked here, before Ray starts, instead of failing in every trial)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if not parts.netloc:
        return f"{key}: {uri} names no bucket; write it as s3://<bucket>/<prefix>"
    try:
        bucket = storage.bucket_exists(uri)  # one request: credentials, endpoint and bucket
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ValueError or ArrowInvalid by cause
        reason = " ".join(str(exc).split())[:300]
        return (f"{key}: cannot reach {uri} ({type(exc).__name__}: {reason}); check the bucket name and the "
                "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; AWS_ENDPOINT_URL for MinIO or another "
                "S3-compatible server), see docs/cluster.md")
    if not bucket:
        return (f"{key}: the bucket {parts.netloc!r} of {uri} does not exist; create it (e.g. `aws s3 mb "
                f"s3://{parts.netloc}`) or fix the name")
    return None


def tensorboard_problem(args) -> str | None:
    if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        return "--tensorboard: tensorboardX is not installed; `pip install tensorboardX` or drop the flag"
    return None


def task_name_problems(pairs: list[tuple[str, list[str]]]) -> list[str]:
    """Every unknown lm-eval task name or missing task file of the (key, tasks) pairs, naming
    `evaluate.lm_eval.tasks[i]` (a command-line option: `--tasks NAME`) with the closest known names."""
    from raysweep.trial.task_eval import is_task_file

    problems = []
    names = [n for _, tasks in pairs for n in tasks if not is_task_file(n)]
    known = lm_eval_task_names() if names else []
    if names and known is None:
        return ["evaluate.lm_eval: lm-eval is not installed; install the eval extra (pip install -e '.[eval]'; "
                "make setup does) or remove evaluate.lm_eval"]
    known_set = set(known or [])
    for key, tasks in pairs:
        for i, task in enumerate(tasks):
            where = f"{key}[{i}]" if key.startswith("evaluate") else f"{key} {task}"
            if is_task_file(task):
                path = Path(task).expanduser()
                if not path.is_file():
                    problems.append(f"{where}: task file {str(path)!r} does not exist; give the path of an lm-eval "
                                    "task YAML (python -m raysweep.offline.cipher_tasks writes two local ones) "
                                    "or a task name lm-eval knows")
            elif task not in known_set:
                close = difflib.get_close_matches(task, known or [], n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                problems.append(f"{where}: {task!r} is not a task lm-eval {lm_eval_version()} knows; {hint}"
                                "see `lm-eval ls tasks`, or give the path of a local task YAML")
    return problems


def lm_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def lm_eval_task_names() -> list[str] | None:
    """The task, group and tag names lm-eval ships (None: not installed), cached per lm-eval version in
    <cache>/preflight/: building lm-eval's index reads ~14,000 YAML files (~9 s on 2 cores), once."""
    import json

    from raysweep.inputs.cache import default_cache_dir

    version = lm_eval_version()
    if version is None:
        return None
    path = default_cache_dir() / "preflight" / f"lm_eval_tasks-{version}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    with console.status("indexing lm-eval's tasks (once per lm-eval version)"):
        from lm_eval.tasks import TaskManager

        names = sorted(TaskManager(verbosity="ERROR").all_tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(names))
    partial.replace(path)  # a concurrent plan writes the same list: the rename keeps the file whole
    return names
