"""How many trials run at once: the one place that says it.

A trial asks for num_workers × (cpus_per_worker CPUs, gpus_per_worker GPUs); Tune runs as many as the
cluster holds, or resources.max_concurrent. GPU trials are counted by GPUs only (their CPUs are assumed to
be there). Callers supply the counts they know: the connected cluster's (the driver), what a local Ray would
detect (the CLI's preflight), or this machine's (plan, the time estimate).
"""

from __future__ import annotations

import math
from typing import Any


def per_trial(resources: Any) -> tuple[float, float]:
    """(CPUs, GPUs) one trial asks for, all its workers together."""
    n = resources.num_workers
    return resources.cpus_per_worker * n, resources.gpus_per_worker * n


def trials_at_once(resources: Any, cpus: float, gpus: float) -> int:
    """Trials that run at once on `cpus` CPUs and `gpus` GPUs (resources.max_concurrent wins); at least 1."""
    if resources.max_concurrent:
        return resources.max_concurrent
    cpu, gpu = per_trial(resources)
    if gpu:
        return max(1, math.floor(gpus / gpu))
    return max(1, math.floor(cpus / cpu))


def fit_problems(resources: Any, cpus: float, gpus: float) -> list[str]:
    """Why not even one trial fits `cpus` and `gpus` (a Ray started here would wait forever with every
    trial PENDING: Ray only logs a warning about an infeasible request)."""
    cpu, gpu = per_trial(resources)
    where = "resources.cpus_per_worker" if resources.num_workers == 1 else "resources.num_workers × resources.cpus_per_worker"
    problems = []
    if cpu > cpus:
        problems.append(f"{where}: a trial asks for {cpu:g} CPU(s) but this machine has {cpus:g}, so no trial could "
                        f"start; ask for at most {cpus:g} in all, or run on a cluster with --address")
    if gpu > gpus:
        where = where.replace("cpus_per_worker", "gpus_per_worker")
        problems.append(f"{where}: a trial asks for {gpu:g} GPU(s) but this machine has {gpus:g}, so no trial could "
                        "start; set resources.gpus_per_worker: 0 to train on CPU, ask for fewer, or run on a cluster "
                        "with GPUs (--address)")
    return problems
