"""Rules across sections: search.scheduler and search.algorithm against their keys, train and the grid;
4-bit loading against the adapter; resources.strategy (DeepSpeed ZeRO) against the adapter family, the
installed packages and resources.deepspeed_config. Imports nothing heavy: it runs before Ray starts."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from raysweep import adapters
from raysweep.config.issues import ConfigIssue, suggest

if TYPE_CHECKING:
    from raysweep.config.schema import Sweep, TrialConfig


# ---------------------------------------------------------------------------------------------
# search: schedulers and algorithms

# search keys that only one scheduler reads: setting one for another scheduler is a mistake
_SCHEDULER_KEYS = {"grace_period": ("asha", "median"), "reduction_factor": ("asha",),
                   "min_samples_required": ("median",)}
# with a scheduler, every trial must count the same steps and eval at the same ones (trials are compared
# at equal steps, on their evals)
_SCHEDULER_FIXED_AXES = ("train.max_steps", "train.epochs", "train.eval_every")


def validate_scheduler(sweep: Sweep, grid: Any) -> list[ConfigIssue]:
    """The search.scheduler keys against each other, train and the grid axes (all problems at once)."""
    search, train = sweep.search, sweep.train
    issues = []
    for key, owners in _SCHEDULER_KEYS.items():
        if key in search.model_fields_set and search.scheduler not in owners:
            issues.append(ConfigIssue(f"search.{key}", (
                f"applies to search.scheduler {' or '.join(repr(o) for o in owners)}, not {search.scheduler!r}: "
                f"remove it or set search.scheduler")))
    if search.scheduler == "fifo":
        return issues
    name = repr(search.scheduler)
    axes = {key for sub in (grid if isinstance(grid, list) else [grid]) if isinstance(sub, dict) for key in sub}
    for axis in _SCHEDULER_FIXED_AXES:
        if axis in axes:
            issues.append(ConfigIssue(f"grid.{axis}", (
                f"search.scheduler {name} compares trials at the same steps, so every trial needs the same "
                f"{axis}: set it outside the grid, or use search.scheduler: fifo")))
    if train.max_steps is None:
        issues.append(ConfigIssue("search.scheduler", (
            f"{name} measures trials in optimizer steps: set train.max_steps instead of train.epochs")))
        return issues
    grace = search.resolved_grace_period(train.max_steps, train.eval_every)
    if grace % train.eval_every:
        up = -(-grace // train.eval_every) * train.eval_every
        issues.append(ConfigIssue("search.grace_period", (
            f"{grace} is not a multiple of train.eval_every ({train.eval_every}): the scheduler judges trials "
            f"on their evals; use e.g. {up}")))
    if grace >= train.max_steps:
        what = f"{grace}" if search.grace_period else f"empty, so the first eval after max_steps/4 ({grace}), which"
        issues.append(ConfigIssue("search.grace_period", (
            f"{what} is not below train.max_steps ({train.max_steps}): no trial could be stopped; set "
            "search.grace_period to a smaller multiple of train.eval_every")))
    return issues


def validate_search(sweep: Sweep, grid: Any) -> list[ConfigIssue]:
    """search.algorithm against its keys (the grid's ranges are checked in config/grid.py, cell by cell)."""
    search = sweep.search
    issues = []
    if search.algorithm == "optuna":
        if "num_samples" not in search.model_fields_set:
            issues.append(ConfigIssue("search.num_samples", (
                "search.algorithm 'optuna' runs num_samples trials in total: set it, e.g. num_samples: 20")))
        if isinstance(grid, list) and len(grid) > 1:
            issues.append(ConfigIssue("grid", (
                "search.algorithm 'optuna' samples one space: give grid as one mapping of key.path: [values] or "
                "ranges (a list of sub-grids is for algorithm grid or random)")))
    elif search.objectives is not None:
        issues.append(ConfigIssue("search.objectives", (
            f"several objectives need search.algorithm 'optuna' (it is {search.algorithm!r}); rank trials with "
            "search.metric, or set search.algorithm: optuna")))
    if search.objectives is not None:
        known = metric_names()
        if not search.objectives:
            issues.append(ConfigIssue("search.objectives", "empty: give metric: min|max pairs, or remove it"))
        for name in search.objectives:
            if name not in known and not is_task_metric(name):  # task/<task>/<metric>: named by the tasks
                issues.append(ConfigIssue(f"search.objectives.{name}", (
                    f"not a metric trials report{suggest(name, known)}; e.g. eval/best_loss, "
                    "adapter/effective_params")))
    if is_task_metric(search.metric):  # task/<task>/<metric>, gen/*: only reported with an evaluate section
        if sweep.evaluate is None:
            issues.append(ConfigIssue("search.metric", (
                f"{search.metric!r} is a task metric, but the grid has no evaluate section: add evaluate.lm_eval / "
                "evaluate.generation, or rank by eval/loss")))
        elif search.scheduler != "fifo" and sweep.evaluate.when != "every_eval":
            issues.append(ConfigIssue("search.metric", (
                f"search.scheduler {search.scheduler!r} judges trials at every eval, but task metrics are computed "
                f"only at the end (evaluate.when {sweep.evaluate.when!r}): set evaluate.when: every_eval, or "
                "search.scheduler: fifo")))
    if "seed" in search.model_fields_set and search.algorithm == "grid":
        issues.append(ConfigIssue("search.seed", (
            "search.algorithm 'grid' draws nothing at random; remove search.seed (trial seeds are train.seed) "
            "or set search.algorithm: random or optuna")))
    return issues


def is_task_metric(name: str) -> bool:
    from raysweep.experiment import metrics

    return metrics.is_task_metric(name)


def metric_names() -> list[str]:
    """The flat metric names of metrics.py (what search.objectives may name)."""
    from raysweep.experiment import metrics

    return sorted(v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and "/" in v)


# ---------------------------------------------------------------------------------------------
# model × adapter


def quantization_problems(trial: TrialConfig) -> list[tuple[str, str]]:
    """(key path, message) for 4-bit loading with an adapter that cannot use it."""
    family = adapters.family(trial.adapter.type)
    if trial.model.load_in_4bit and family.rewrites_base:
        others = "/".join(name for name in adapters.FAMILIES if not adapters.family(name).rewrites_base)
        return [("model.load_in_4bit", f"adapter {family.name!r} {family.rewrites_base}, which 4-bit loading "
                                       f"stores quantized; set model.load_in_4bit: false, or use {others}")]
    return []


# ---------------------------------------------------------------------------------------------
# resources.strategy × adapter family (the engines themselves: trial/engines.py)

DEEPSPEED_MISSING = ("needs DeepSpeed, which is not installed: install the deepspeed extra (pip install -e "
                     "'.[deepspeed]'; scripts/setup.sh does), or use resources.strategy: ddp")


def zero_stage(strategy: str) -> int | None:
    """The DeepSpeed ZeRO stage of `resources.strategy` (None: ddp); resolved into the trial's run config."""
    return {"deepspeed_zero2": 2, "deepspeed_zero3": 3}.get(strategy)


def zero_families(stage: int) -> list[str]:
    """The adapter families checked under ZeRO `stage` (adapters.Family.zero_stages), in registry order.

    Checked: 2 gloo ranks, eval losses equal to DDP's to ~1e-7 relative (docs/ARCHITECTURE.md, "Multi-worker
    trials"; the tests run lora at stages 2 and 3). Each family's `zero_refusal` says why it is refused at the
    other stages (e.g. an optimizer-side edit of the weights that ZeRO's own fp32 copy undoes, or weights used
    outside their own module's forward, where ZeRO-3 holds only a partition)."""
    adapters.names()  # fills the registry
    return [f.name for f in adapters.FAMILIES.values() if stage in f.zero_stages]


def strategy_problems(strategy: str, adapter_type: str, load_in_4bit: bool) -> list[tuple[str, str]]:
    """(key path, message) for a strategy that cannot run this trial; no imports (runs before Ray starts)."""
    stage = zero_stage(strategy)
    if stage is None:
        return []
    out = []
    if importlib.util.find_spec("deepspeed") is None:
        out.append(("resources.strategy", f"{strategy!r} {DEEPSPEED_MISSING}"))
    family = adapters.family(adapter_type)
    if stage not in family.zero_stages:
        fix = ", ".join(zero_families(stage))
        out.append(("adapter.type", f"adapter {adapter_type!r} does not run under resources.strategy {strategy!r} "
                                    f"({family.zero_refusal}): use one of {fix}, or resources.strategy: ddp"))
    if load_in_4bit and stage == 3:  # 4-bit weights cannot be partitioned
        out.append(("model.load_in_4bit", "4-bit base weights cannot be partitioned by ZeRO-3: use "
                                          "resources.strategy: deepspeed_zero2 (or ddp), or model.load_in_4bit: false"))
    return out


# DeepSpeed keys raysweep sets from the grid file, so that a trial means the same under every strategy
OWNED_KEYS = {"train_batch_size": "train.batch_size", "train_micro_batch_size_per_gpu": "train.batch_size",
              "gradient_accumulation_steps": "train.grad_accum_steps", "gradient_clipping": "train.max_grad_norm",
              "optimizer": "train.lr / train.weight_decay (raysweep's AdamW, with the adapter's parameter groups)",
              "scheduler": "train.schedule / train.warmup_steps", "zero_optimization.stage": "resources.strategy"}


def deepspeed_config_problem(strategy: str, extra: dict[str, Any]) -> str | None:
    """Why `resources.deepspeed_config` cannot be used as given (None: fine)."""
    if zero_stage(strategy) is None:
        return (f"resources.deepspeed_config applies to DeepSpeed strategies, not {strategy!r}: set "
                "resources.strategy to deepspeed_zero2 or deepspeed_zero3, or remove resources.deepspeed_config")
    zero = extra.get("zero_optimization")
    keys = list(extra) + [f"zero_optimization.{k}" for k in (zero if isinstance(zero, dict) else {})]
    for key in keys:
        if key in OWNED_KEYS:
            return f"resources.deepspeed_config.{key} is set by raysweep: use {OWNED_KEYS[key]} instead"
    return None


# ---------------------------------------------------------------------------------------------
# evaluate × data and resources (task metrics: trial/task_eval.py)


def evaluate_problems(trial: TrialConfig) -> list[tuple[str, str]]:
    """(key path, message) for task metrics a trial cannot compute."""
    evaluate = trial.evaluate
    if evaluate is None:
        return []
    found = []
    # generation needs a prompt and a reference answer: only chat data (builtin is chat) has both
    if evaluate.generation is not None and trial.data.task not in ("builtin", "chat"):
        found.append(("evaluate.generation", f"generates the assistant's answer of chat examples, but data.task is "
                      f"{trial.data.task!r} (no answers): remove evaluate.generation, or use data.task chat"))
    # task metrics run on one worker over the whole model; ZeRO-3 holds only a shard of it there
    if trial.resources.strategy == "deepspeed_zero3":
        found.append(("evaluate", "task metrics evaluate the whole model in one process, which ZeRO-3 "
                      "partitions over the workers: use resources.strategy ddp or deepspeed_zero2, or remove "
                      "evaluate"))
    return found


def trial_problems(trial: TrialConfig, prefix: str = "") -> list[ConfigIssue]:
    """The cross-section rules of one validated trial, as issues under `prefix`."""
    found = quantization_problems(trial) + strategy_problems(
        trial.resources.strategy, trial.adapter.type, trial.model.load_in_4bit) + evaluate_problems(trial)
    return [ConfigIssue(f"{prefix}.{key}" if prefix else key, message) for key, message in found]
