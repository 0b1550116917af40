"""Checks that need the filesystem, the hub or the machine, done before Ray starts (after the grid file
itself validated): model sources, data files, that a trial fits here or the cluster answers; and the
grid loading, storage and name rules every command shares. The one place the CLI uses Ray's private
helpers (what `ray.init()` would detect)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

from raysweep import config as C
from raysweep.cli.console import BadInput, console


def load_grid(grid: str, overrides: list[str]):
    try:
        return C.load(grid, overrides)
    except C.ConfigError as exc:
        raise BadInput(str(exc)) from None


def preflight(raw: dict, trials, launch: bool = False, address: str | None = None) -> None:
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
    from raysweep.sweep.resources import fit_problems

    return fit_problems(resources, cpus, gpus)


def unique_name(storage: Path, name: str) -> str:
    candidate, i = name, 2
    while (storage / candidate).exists():
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


def storage_root(args, sweep) -> Path:
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


def check_tensorboard(args) -> None:
    if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise BadInput("--tensorboard: tensorboardX is not installed; `pip install tensorboardX` or drop the flag")
