"""`raysweep plan`: the trial table, the count and what each trial asks of the cluster; with a calibration
(`--calibrate`, or one cached earlier for every trial shape on this machine) also each trial's estimated
seconds and the sweep's wall time and device-hours (offline/estimate)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from raysweep import config as C
from raysweep.config.grid import Trial, trial_count
from raysweep.sweep.packs import describe_packs, packing
from raysweep.sweep.resources import trials_at_once

if TYPE_CHECKING:
    from raysweep.offline.estimate import Estimate


def print_plan(console: Console, sweep: C.Sweep, trials: list[Trial], estimate: Estimate | None = None,
               source: str | None = None) -> None:
    """The plan; `estimate` adds the est. column and the total, `source` says where its numbers come from
    (or, without an estimate, why there is none)."""
    axes = list(dict.fromkeys(k for t in trials for k in t.cell))
    what = "trial(s)" if sweep.search.algorithm == "grid" and sweep.search.num_samples == 1 else "cell(s)"
    table = Table(title=f"{sweep.name}: {len(trials)} {what}", title_justify="left")
    table.add_column("#", justify="right")
    if any(t.subgrid for t in trials):
        table.add_column("sub-grid", justify="right")
    for key in axes:
        table.add_column(key)
    # adapter, rank and seed are shown even when they are not axes
    fixed = [k for k in ("adapter.type", "adapter.r", "train.seed") if k not in axes]
    for col in (*fixed, "steps", "workers", "CPU", "GPU") + (("est.",) if estimate else ()):
        table.add_column(col, justify="right")
    seconds = estimate.cell_seconds() if estimate else {}
    for t in trials:
        c = t.config
        steps = c.train.max_steps if c.train.max_steps else f"{c.train.epochs} ep"
        res = c.resources
        row = [str(t.index)] + ([str(t.subgrid)] if any(x.subgrid for x in trials) else [])
        row += [str(t.cell.get(k, "")) for k in axes]
        values = {"adapter.type": c.adapter.type, "adapter.r": c.adapter.r, "train.seed": c.train.seed}
        row += [str(values[k]) for k in fixed] + [str(steps), str(res.num_workers),
                f"{res.cpus_per_worker * res.num_workers:g}", f"{res.gpus_per_worker * res.num_workers:g}"]
        if estimate:  # seconds the trial holds its slot (start-up included), first sample
            row.append(f"{seconds[t.index]:.0f} s")
        table.add_row(*row)
    console.print(table)
    n = trial_count(sweep, trials)
    res = sweep.resources
    per_trial = (f"{res.num_workers} worker(s) × ({res.cpus_per_worker:g} CPU"
                 + (f", {res.gpus_per_worker:g} GPU" if res.gpus_per_worker else "") + ")")
    console.print(f"trials: {n} ({describe_search(sweep.search, len(trials))})")
    console.print(f"each trial asks for: {per_trial}")
    console.print(f"executor: {describe_executor(res)}")
    for line in describe_packs(sweep, trials):
        console.print(line, markup=False, highlight=False)
    size = packing(sweep).size

    def at_once(n: int) -> str:
        return f"{n} trial(s)" if size == 1 else f"{n} pack worker(s) of up to {size} trials"

    if res.max_concurrent:
        console.print(f"at most {at_once(res.max_concurrent)} at once (resources.max_concurrent)")
    elif not res.gpus_per_worker:
        cpus = os.cpu_count() or 1
        console.print(f"on this machine ({cpus} CPUs): {at_once(trials_at_once(res, cpus, 0))} at once; on a cluster: its CPUs ÷ "
                      f"{res.cpus_per_worker * res.num_workers:g}")
    else:
        console.print(f"trials at once: the cluster's GPUs ÷ {res.gpus_per_worker * res.num_workers:g}")
    console.print(f"ranked by: {sweep.search.metric} ({sweep.search.mode})")
    for line in describe_data_cache(sweep, trials):
        console.print(line, markup=False, highlight=False)
    if line := describe_evaluate(sweep.evaluate):
        console.print(line, markup=False, highlight=False)
    if estimate:
        print_estimate(console, sweep, estimate, source)
    elif source:
        console.print(source, markup=False, highlight=False)


def print_estimate(console: Console, sweep: C.Sweep, est: Estimate, source: str | None) -> None:
    from raysweep.offline.estimate import hours_text, human

    console.print(f"[bold]estimated total: ~{human(est.wall_s)} wall[/bold] ({len(est.trials)} trial(s) on "
                  f"{est.slots} slot(s): {human(est.makespan_s)} of trials + {human(est.overhead_s)} Ray start/stop), "
                  f"[bold]{hours_text(est.device_hours)}[/bold] reserved; executor {est.executor}"
                  + (f", ×{est.contention:g} for trials sharing the CPU" if est.contention != 1 else ""))
    if source:
        console.print(f"  {source}", markup=False, highlight=False)
    stops = sweep.search.scheduler != "fifo" or sweep.train.early_stopping.patience
    for note in est.notes + (["an upper bound: trials may stop early (search.scheduler / "
                              "train.early_stopping)"] if stops else []):
        console.print(f"  note: {note}")


def describe_data_cache(sweep: C.Sweep, trials: list[Trial]) -> list[str]:
    """One line per distinct tokenized dataset of the sweep: built already (its size), or built by the first
    trial that needs it; every other trial memory-maps it (inputs/tokenized.py). No torch."""
    from raysweep.inputs import tokenized

    root = tokenized.root_dir(sweep.storage)
    users: dict[str, list[int]] = {}
    keys: dict[str, dict] = {}
    seen: dict[str, str | None] = {}  # (model, data) as JSON -> entry directory: stat the files once per dataset
    for t in trials:
        model, data = t.config.model.model_dump(mode="json"), t.config.data.model_dump(mode="json")
        if not tokenized.uses_cache(data):
            continue
        pair = json.dumps([model, data], sort_keys=True)
        if pair not in seen:
            try:
                key = tokenized.cache_key(model, data)
            except Exception:  # noqa: BLE001 - a bad path is the data check's to report, not the plan's
                key = None
            seen[pair] = str(tokenized.entry_dir(root, key)) if key else None
            if key:
                keys[seen[pair]] = key
        if seen[pair]:
            users.setdefault(seen[pair], []).append(t.index)
    lines = []
    for directory, indices in users.items():
        built, size = tokenized.state(root, keys[directory])
        what = (f"built ({size / 2**20:.1f} MiB), read memory-mapped by every trial" if built
                else "to build: the first trial tokenizes it, the others wait and read it")
        lines.append(f"tokenized data ({len(indices)} trial(s)): {what}; {directory}")
    return lines


def describe_evaluate(evaluate) -> str | None:
    """One line on the task metrics (the `evaluate:` section), or None without one."""
    if evaluate is None:
        return None
    parts = []
    if evaluate.lm_eval is not None:
        e = evaluate.lm_eval
        parts.append(f"lm-eval {', '.join(e.tasks)} ({e.num_fewshot}-shot, "
                     f"{f'{e.limit} examples' if e.limit else 'all examples'} each)")
    if evaluate.generation is not None:
        g = evaluate.generation
        parts.append(f"generation {'/'.join(g.metrics)} on {g.max_examples or 'all'} validation answers "
                     f"(≤ {g.max_new_tokens} tokens)")
    base = "; untuned base once per model (delta in analyze)" if evaluate.baseline else ""
    return f"task metrics at {evaluate.when.replace('_', ' ')}: " + " + ".join(parts) + base


def describe_executor(res) -> str:
    """One line for plan/run headers: which executor runs the trials and what that means."""
    name = res.resolved_executor()
    how = ("reused Tune actors, base model cached per process" if name == "actor"
           else "a Ray Train TorchTrainer per trial")
    return f"{name} ({how}; resources.executor={res.executor})"


def describe_search(search: C.SearchConfig, cells: int) -> str:
    """How the trial count comes about, in the words of the grid file."""
    if search.algorithm == "optuna":
        what = (" and ".join(f"{m} ({d})" for m, d in search.objectives.items()) if search.objectives
                else f"{search.metric} ({search.mode})")
        return (f"optuna: num_samples {search.num_samples} trials chosen by TPE (seed {search.seed}) from "
                f"{cells} cell(s) of the lists, with ranges, optimising {what}")
    drawn = f", ranges drawn at random (seed {search.seed})" if search.algorithm == "random" else ""
    return f"{cells} cell(s) × num_samples {search.num_samples}{drawn}"
