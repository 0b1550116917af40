"""The schema of grid.yaml: one pydantic model per concern, and `load(path, overrides)`.

Validation happens before Ray starts. Problems are collected (never the first one only) as
`ConfigIssue(path, message)` where `path` is the YAML key path a user edits, e.g. `train.lr` or
`grid[1].adapter.r`; the CLI prints them all and exits 2. Grid expansion lives in space.py.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysweep import adapters

SECTIONS_IN_TRIAL = ("model", "data", "train", "adapter")  # what a grid axis may change
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # experiment names: one directory level under storage


class _Section(BaseModel):
    # extra="forbid": a typo such as `adapter.rank` must be an error, not silently ignored
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = Field(
        "builtin",
        description="'builtin' (tiny local model), a Hugging Face id, or a local model directory",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the base weights are loaded in"
    )
    trust_remote_code: bool = Field(False, description="passed to transformers' from_pretrained")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base in 4-bit through bitsandbytes (the quant "
                               "extra), frozen, with peft's k-bit training preparation")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (QLoRA: nf4)")
    bnb_4bit_use_double_quant: bool = Field(True, description="also quantize the quantization constants (QLoRA)")
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype of the 4-bit layers' matmuls (empty: model.dtype)")


class DataConfig(_Section):
    task: Literal["builtin", "chat", "text", "tokens", "builtin_tokens"] = Field(
        "builtin",
        description="'builtin' (generated chat task), 'chat' (JSONL with messages), 'text' (plain text), "
        "'tokens' (nanoGPT train.bin/val.bin in data.data_dir) or 'builtin_tokens' (generated token files, "
        "builtin tokenizer)",
    )
    train_file: str | None = Field(None, description="path of the training file (chat JSONL or .txt)")
    data_dir: str | None = Field(
        None,
        description="task 'tokens': directory with train.bin and val.bin (flat uint16 token ids, nanoGPT "
        "format) and optionally train_eot.npy / val_eot.npy (end-of-text positions)",
    )
    validation_file: str | None = Field(
        None, description="path of the validation file; if empty, validation_split of train is held out"
    )
    validation_split: float = Field(0.1, gt=0, lt=1, description="held-out fraction when no validation_file")
    max_seq_len: int = Field(
        128, gt=0, description="examples are truncated to this many tokens (text/tokens: the block length)"
    )
    max_train_examples: int | None = Field(None, gt=0, description="use at most this many train examples")
    max_eval_examples: int | None = Field(None, gt=0, description="use at most this many eval examples")

    @model_validator(mode="after")
    def _files_match_task(self) -> DataConfig:
        if self.task in ("chat", "text") and not self.train_file:
            raise ValueError(f"data.task '{self.task}' needs data.train_file: set it to your training file")
        if self.task == "tokens" and not self.data_dir:
            raise ValueError("data.task 'tokens' needs data.data_dir: set it to the directory holding "
                             "train.bin and val.bin")
        # a file the task never reads is a contradiction (the user believes the sweep trains on it)
        reads = {"chat": ("train_file", "validation_file"), "text": ("train_file", "validation_file"),
                 "tokens": ("data_dir",)}.get(self.task, ())
        ignored = [k for k in ("train_file", "validation_file", "data_dir") if getattr(self, k) and k not in reads]
        if ignored:
            uses = " and ".join(f"data.{k}" for k in reads) if reads else "no files (it is generated)"
            raise ValueError(f"data.task '{self.task}' reads {uses}, so {', '.join(f'data.{k}' for k in ignored)} "
                             "would be ignored: remove it, or set data.task to the kind of data it holds "
                             "(chat, text or tokens)")
        return self


class EarlyStoppingConfig(_Section):
    patience: int | None = Field(
        None, gt=0, description="stop after this many evals without improvement (empty: never stop early)"
    )
    min_rel_improvement: float = Field(
        0.0, ge=0, description="an eval improves if eval/loss < best·(1 − this)"
    )


class TrainConfig(_Section):
    seed: int = Field(0, description="seed of weights init, data order and dropout")
    lr: float = Field(1e-3, gt=0, description="peak learning rate, e.g. 1e-3")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(16, gt=0, description="examples per micro-batch per worker")
    eval_batch_size: int = Field(64, gt=0, description="examples per eval batch")
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; or set train.epochs")
    epochs: float | None = Field(None, gt=0, description="passes over the train split; or set train.max_steps")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="lr schedule after warmup")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm (empty: no clipping)")
    eval_every: int = Field(50, gt=0, description="evaluate every N optimizer steps (and at start and end)")
    log_every: int = Field(10, gt=0, description="report train metrics every N steps (at most one report per 3 s: Ray Train stalls on faster ones)")
    checkpoint_every: int | None = Field(
        None, gt=0, description="checkpoint every N steps (empty: at every eval); always at the end"
    )
    keep_last: int = Field(2, gt=0, description="checkpoints kept per trial (each holds the best adapter too)")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    bf16: bool = Field(False, description="bf16 autocast (GPUs with bf16 support)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set train.max_steps or train.epochs")
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("train.max_steps and train.epochs are both set: keep one")
        return self


class AdapterConfig(BaseModel):
    # extra="allow": family-specific keys (e.g. a sparsity λ) are checked against the family's
    # Options model by `validate_adapter_options`, which knows the family from `type`.
    model_config = ConfigDict(extra="allow")

    type: str = Field("lora", description="adapter family: " + ", ".join(adapters.names()))
    r: int = Field(8, gt=0, description="adapter rank, e.g. 8")
    alpha: float | None = Field(None, gt=0, description="scale numerator (scale = alpha/r); empty: 2·r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module names such as [q_proj, v_proj]"
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in adapters.FAMILIES:
            raise ValueError(f"unknown adapter {value!r}; use one of: {', '.join(adapters.names())}")
        return value

    @model_validator(mode="after")
    def _default_alpha(self) -> AdapterConfig:
        if self.alpha is None:
            self.alpha = 2.0 * self.r
        return self


class SearchConfig(_Section):
    metric: str = Field("eval/loss", description="metric that ranks trials, e.g. eval/loss or eval/accuracy")
    mode: Literal["min", "max"] = Field("min", description="'min' or 'max' of search.metric")
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid",
        description="'grid' (every cell of the grid's lists), 'random' (every cell, ranges drawn at random, "
        "num_samples times) or 'optuna' (num_samples trials chosen by Optuna's TPE sampler from the lists "
        "and ranges, learning from finished trials)",
    )
    num_samples: int = Field(
        1, gt=0, description="grid/random: repeats of the whole grid (random draws new range values each time); "
        "optuna: trials in total"
    )
    seed: int = Field(0, description="random/optuna: seed of the draws (same seed, same grid file: same trials)")
    objectives: dict[str, Literal["min", "max"]] | None = Field(
        None,
        description="optuna: several metrics to optimise at once, e.g. {eval/best_loss: min, "
        "adapter/effective_params: min} (empty: search.metric and search.mode)",
    )
    scheduler: Literal["fifo", "asha", "median"] = Field(
        "fifo",
        description="'fifo' (run every trial to its end), 'asha' (stop trials outside the top 1/reduction_factor "
        "at rungs of grace_period·reduction_factor^k steps) or 'median' (stop a trial whose best search.metric is "
        "worse than the median of the other trials' running means at the same step); judged on evals only",
    )
    grace_period: int | None = Field(
        None, gt=0,
        description="asha/median: steps a trial runs before it can be stopped, a multiple of train.eval_every "
        "(empty: the first eval at or after a quarter of train.max_steps)",
    )
    reduction_factor: int = Field(
        3, ge=2, description="asha: rung k is at grace_period·reduction_factor^k steps; 1 in reduction_factor "
        "trials passes each rung"
    )
    min_samples_required: int = Field(
        3, gt=0, description="median: other trials that must have reached a step before a trial is judged there"
    )

    def resolved_grace_period(self, max_steps: int, eval_every: int) -> int:
        """grace_period, or the first eval step at or after max_steps / 4 (benchmarks/RESULTS.md (f): judging
        at the first eval, 1/8 of the steps there, stopped the grid's best trial in 3 of 6 ASHA sweeps)."""
        if self.grace_period:
            return self.grace_period
        return max(1, math.ceil(max_steps / 4 / eval_every)) * eval_every


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
    """search.algorithm against its keys (the grid's ranges are checked in space.py, cell by cell)."""
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
            if name not in known:
                issues.append(ConfigIssue(f"search.objectives.{name}", (
                    f"not a metric trials report{_suggest(name, known)}; e.g. eval/best_loss, "
                    "adapter/effective_params")))
    if "seed" in search.model_fields_set and search.algorithm == "grid":
        issues.append(ConfigIssue("search.seed", (
            "search.algorithm 'grid' draws nothing at random; remove search.seed (trial seeds are train.seed) "
            "or set search.algorithm: random or optuna")))
    return issues


def metric_names() -> list[str]:
    """The flat metric names of metrics.py (what search.objectives may name)."""
    from raysweep.experiment import metrics

    return sorted(v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and "/" in v)


class ResourcesConfig(_Section):
    num_workers: int = Field(1, gt=0, description="Ray Train workers (DDP ranks) per trial")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves (also its torch threads)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs each worker reserves (fractions allowed)")
    max_concurrent: int | None = Field(
        None, gt=0, description="trials at once (empty: as many as the cluster's CPUs/GPUs hold)"
    )
    max_failures: int = Field(0, ge=0, description="retries of a failed trial from its latest checkpoint")
    executor: Literal["auto", "train", "actor"] = Field(
        "auto",
        description="how a trial runs: 'train' (a Ray Train TorchTrainer per trial; needed for num_workers > 1), "
        "'actor' (in a reused Tune actor that keeps the base model loaded; 1 worker), 'auto' (actor for "
        "1-worker ddp trials, else train)",
    )
    strategy: Literal["ddp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp",
        description="how the workers of a trial share the training: 'ddp' (every worker holds the whole model, "
        "gradients averaged), 'deepspeed_zero2' (DeepSpeed ZeRO stage 2: optimizer state and gradients "
        "partitioned over the workers), 'deepspeed_zero3' (parameters partitioned too); deepspeed needs the "
        "deepspeed extra and executor 'train'",
    )
    deepspeed_config: dict[str, Any] = Field(
        default_factory=dict,
        description="more DeepSpeed config, merged into raysweep's (e.g. {zero_optimization: {offload_optimizer: "
        "{device: cpu}}}); batch size, accumulation, clipping and the ZeRO stage come from train.* and "
        "resources.strategy",
    )
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1,
        description="cap on the share of its GPU's memory one worker's process may allocate (a trial past it "
        "fails with CUDA out-of-memory instead of starving trials packed on the same GPU); empty: "
        "gpus_per_worker when that is a fraction below 1, else no cap",
    )

    @model_validator(mode="after")
    def _actor_has_one_worker(self) -> ResourcesConfig:
        if self.executor == "actor" and self.num_workers > 1:
            raise ValueError(f"executor 'actor' runs each trial in one process, but num_workers is {self.num_workers}; "
                             "set resources.executor to 'train' (or 'auto') for multi-worker trials")
        # DeepSpeed joins the process group that Ray Train's worker group sets up; a Tune actor has none
        if self.executor == "actor" and self.strategy != "ddp":
            raise ValueError(f"resources.strategy {self.strategy!r} runs in Ray Train's worker group: set "
                             "resources.executor to 'train' (or 'auto'), or use resources.strategy: ddp")
        if self.deepspeed_config:
            from raysweep.trial import engines  # no heavy imports

            problem = engines.deepspeed_config_problem(self.strategy, self.deepspeed_config)
            if problem:
                raise ValueError(problem)
        if self.gpu_memory_fraction is not None and not self.gpus_per_worker:
            raise ValueError("resources.gpu_memory_fraction caps GPU memory, but resources.gpus_per_worker is 0 "
                             "(CPU trials): set resources.gpus_per_worker, or remove resources.gpu_memory_fraction")
        return self

    def resolved_executor(self) -> str:
        """'actor' or 'train' (see docs/ARCHITECTURE.md, "Executors", for why auto picks actor)."""
        if self.executor != "auto":
            return self.executor
        return "actor" if self.num_workers == 1 and self.strategy == "ddp" else "train"

    def resolved_gpu_memory_fraction(self) -> float | None:
        """The per-process GPU memory cap: trials packed on one GPU by fractional gpus_per_worker each get
        their share (Ray's GPU fractions are bookkeeping only; nothing stops one trial taking all the memory)."""
        if self.gpu_memory_fraction is not None:
            return self.gpu_memory_fraction
        return self.gpus_per_worker if 0 < self.gpus_per_worker < 1 else None


class TrialConfig(_Section):
    """Everything one trial needs; what the worker receives (as a plain dict)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=200))
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)


class Sweep(TrialConfig):
    """A whole grid.yaml: the base trial plus experiment-level settings and the grid."""

    name: str = Field("sweep", pattern=NAME_PATTERN, description="experiment name: letters, digits, _ . - (first a "
                      "letter or digit), e.g. rank_study-2")
    storage: str | None = Field(None, description="experiment storage root (empty: ~/ray_results)")
    search: SearchConfig = Field(default_factory=SearchConfig)
    grid: Any = Field(default_factory=dict, description="axes: a mapping key.path -> [values], or a list of them")


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """All problems of a grid file; `str()` is what the CLI prints."""

    def __init__(self, source: str, issues: list[ConfigIssue]):
        self.source = source
        self.issues = issues
        lines = [f"{source}: {len(issues)} problem(s)"] + [f"  - {i}" for i in issues]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# reading the file and applying overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(str(path), [ConfigIssue("", f"grid file {str(path)!r} {what}; give the path of a grid "
                                                      "YAML file, e.g. search_spaces/quickstart.yaml")])
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"cannot read the grid file ({exc}); save it as UTF-8 "
                                                      "text you can read")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            str(path), [ConfigIssue("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}")]
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [ConfigIssue("", "the top level must be a mapping (key: value lines)")])
    duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    if duplicates:
        raise ConfigError(str(path), duplicates)
    raw.setdefault("name", path.stem)
    return raw


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[ConfigIssue]:
    """Keys given twice in one mapping. PyYAML silently keeps the last one, so `lr: 1e-3` ... `lr: 1e-2`
    would run a value the user may not have meant; duplicates are an error instead."""
    issues = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            child = f"{path}.{name}" if path else name
            line = key.start_mark.line + 1
            if name in first_line:
                issues.append(ConfigIssue(child, f"set twice (lines {first_line[name]} and {line}); keep one"))
            first_line.setdefault(name, line)
            issues += _duplicate_keys(value, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            issues += _duplicate_keys(item, f"{path}[{i}]")
    return issues


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[ConfigIssue]:
    """Apply `key.path=value` overrides in place (values parsed as YAML).

    `grid.<axis>=[..]` sets that axis in every sub-grid. Overriding a key that is a grid axis
    (e.g. `adapter.r=8` when the grid sweeps adapter.r) fixes it: the axis is removed.
    """
    issues = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(ConfigIssue(item, "an override is key.path=value, e.g. train.max_steps=50"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        grid = raw.get("grid")
        if key.startswith("grid."):
            axis = key[len("grid."):]
            if not grid:
                raw["grid"] = {axis: value}
            for sub in grid if isinstance(grid, list) else [grid] if isinstance(grid, dict) else []:
                if isinstance(sub, dict):
                    sub[axis] = value
            continue
        for sub in grid if isinstance(grid, list) else [grid]:
            if isinstance(sub, dict):
                sub.pop(key, None)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return issues


# ---------------------------------------------------------------------------------------------
# validation


def _loc_to_path(loc: tuple, prefix: str = "") -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    path = ".".join(parts)
    return f"{prefix}.{path}" if prefix and path else (prefix or path)


def _field_help(model: type[BaseModel], loc: tuple) -> str | None:
    """The description of the field at `loc` (used as the 'how to fix' part of a message)."""
    current: Any = model
    field = None
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        field = fields[part]
        current = field.annotation
    return field.description if field else None


def _model_at(model: type[BaseModel], loc: tuple) -> Any:
    """The annotation of the field at `loc` (the model itself for an empty loc), or None."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = fields[part].annotation
    return current


_TYPE_TAGS = ("str", "int", "float", "bool", "none", "dict", "list")


def _is_type_tag(part: Any) -> bool:
    # pydantic names the union member it tried, e.g. ('target_modules', 'list[str]', 0): a type, not a key
    text = str(part)
    return text.startswith("function-") or "[" in text or text in _TYPE_TAGS


# names researchers bring from other tools' configs
_ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
            "learning_rate": "lr", "steps": "max_steps", "num_epochs": "epochs", "seq_len": "max_seq_len",
            "model": "name_or_path", "path": "name_or_path", "target": "target_modules"}


def _suggest(name: str, candidates: list[str]) -> str:
    head, _, leaf = name.rpartition(".")
    alias = f"{head}.{_ALIASES[leaf]}" if head and leaf in _ALIASES else _ALIASES.get(leaf)
    if alias in candidates:
        return f"; did you mean {alias!r}?"
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8 if "." in name else 0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def pydantic_issues(model: type[BaseModel], exc: ValidationError, prefix: str = "") -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc_to_path(loc, prefix)
        if err["type"] == "extra_forbidden":
            parent = model
            for part in loc[:-1]:
                fields = getattr(parent, "model_fields", {})
                parent = fields[part].annotation if part in fields else None
            known = list(getattr(parent, "model_fields", {}))
            msg = f"unknown key{_suggest(str(loc[-1]), known)} (valid keys: {', '.join(known)})"
        elif err["type"] in ("model_type", "dict_type"):  # e.g. `train: 5`; pydantic names our class
            keys = list(getattr(_model_at(model, loc), "model_fields", {}))[:3]
            example = f" such as {', '.join(keys)}" if keys else ""
            fix = "remove the empty key or give its keys" if err.get("input") is None else "indent its keys under it"
            msg = f"must be a mapping of keys{example} (got {err.get('input')!r}); {fix}"
        else:
            union = err["type"] != "value_error" and any(_is_type_tag(p) and "function-" not in str(p) for p in loc)
            loc = tuple(p for p in loc if not _is_type_tag(p))
            path = _loc_to_path(loc, prefix)
            hint = _field_help(model, loc)
            msg = err["msg"].removeprefix("Value error, ")
            if union and hint:  # one message for the union, not one per member type tried
                msg = f"wrong type (got {err.get('input')!r}); expected: {hint}"
            elif err["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {err.get('input')!r})"
                if hint:
                    msg += f"; expected: {hint}"
        issues.append(ConfigIssue(path, msg))
    return list(dict.fromkeys(issues))


def option_keys(options: type[BaseModel]) -> list[str]:
    """The keys a user writes for a family's options (`lambda`, not the Python name `lambda_`)."""
    return [field.alias or name for name, field in options.model_fields.items()]


def validate_adapter_options(adapter: AdapterConfig, prefix: str = "adapter") -> list[ConfigIssue]:
    """Check family-specific keys under `adapter:` against the family's Options model."""
    family = adapters.get(adapter.type)
    extras = dict(adapter.model_extra or {})
    try:
        family.Options(**extras)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                owners = [n for n in adapters.names() if key in option_keys(adapters.get(n).Options)]
                where = f"it applies to: {', '.join(owners)}" if owners else "no adapter has it"
                common = _suggest(key, list(AdapterConfig.model_fields))
                issues.append(ConfigIssue(
                    f"{prefix}.{key}", f"not an option of adapter {adapter.type!r} ({where}{common})"
                ))
            else:
                msg = err["msg"].removeprefix("Value error, ")  # a model validator's message is the whole fix
                if err["type"] != "value_error":
                    fields = {f.alias or n: f for n, f in family.Options.model_fields.items()}
                    hint = fields[key].description if key in fields else None
                    msg += f" (got {err.get('input')!r})" + (f"; expected: {hint}" if hint else "")
                issues.append(ConfigIssue(f"{prefix}.{key}" if key else prefix, msg))
        return issues
    return []


def validate_trial(raw: dict[str, Any], prefix: str = "") -> tuple[TrialConfig | None, list[ConfigIssue]]:
    """Validate one fully-resolved trial dict (no grid)."""
    body = {k: v for k, v in raw.items() if k in TrialConfig.model_fields}
    try:
        trial = TrialConfig(**body)
    except ValidationError as exc:
        return None, pydantic_issues(TrialConfig, exc, prefix)
    issues = validate_adapter_options(trial.adapter, f"{prefix}.adapter" if prefix else "adapter")
    if trial.model.load_in_4bit and trial.adapter.type == "masked":
        issues.append(ConfigIssue(f"{prefix}.model.load_in_4bit" if prefix else "model.load_in_4bit",
                                  "adapter 'masked' prunes the base weights (W ⊙ M), which 4-bit loading stores "
                                  "quantized; set model.load_in_4bit: false, or use lora/dora/sora/sdora/sublora"))
    from raysweep.trial import engines  # no heavy imports: which adapters each DeepSpeed ZeRO stage runs

    for key, message in engines.problems(trial.resources.strategy, trial.adapter.type, trial.model.load_in_4bit):
        issues.append(ConfigIssue(f"{prefix}.{key}" if prefix else key, message))
    return (None if issues else trial), issues


def validate_sweep(raw: dict[str, Any]) -> tuple[Sweep | None, list[ConfigIssue]]:
    """Validate the experiment-level keys and the base trial (the grid is checked in space.py)."""
    try:
        sweep = Sweep(**raw)
    except ValidationError as exc:
        issues = pydantic_issues(Sweep, exc)
        try:  # still report adapter-option problems when only other sections are wrong
            issues += validate_adapter_options(AdapterConfig(**(raw.get("adapter") or {})))
        except (ValidationError, TypeError):
            pass
        return None, issues
    return sweep, (validate_adapter_options(sweep.adapter) + validate_scheduler(sweep, raw.get("grid"))
                   + validate_search(sweep, raw.get("grid")))


def axis_paths() -> list[str]:
    """Every dotted key a grid axis may sweep (used for 'did you mean' and axis validation)."""
    paths = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            else:
                paths.append(f"{prefix}{name}")

    for section in SECTIONS_IN_TRIAL:
        walk(TrialConfig.model_fields[section].annotation, f"{section}.")
    for name in adapters.names():
        paths += [f"adapter.{key}" for key in option_keys(adapters.get(name).Options)]
    return sorted(set(paths))
