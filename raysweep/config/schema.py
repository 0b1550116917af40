# over 400 lines: every section of grid.yaml and its validation in one schema (the README reference mirrors it)
"""The schema of grid.yaml: one pydantic model per concern, the validation of one trial and of a whole sweep,
and the key paths a grid axis may sweep.

Validation happens before Ray starts. Problems are collected (never the first one only) as ConfigIssues
(config/issues.py); the rules across sections are in config/rules.py, reading the file in config/loading.py,
grid expansion in config/grid.py.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysweep import adapters
from raysweep.config import rules
from raysweep.config.evaluate import EvaluateConfig
from raysweep.config.issues import ConfigIssue, pydantic_issues, suggest

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


class ResourcesConfig(_Section):
    num_workers: int = Field(1, gt=0, description="Ray Train workers (DDP ranks) per trial")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves (also its torch threads)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs each worker reserves (fractions allowed)")
    max_concurrent: int | None = Field(
        None, gt=0, description="trials at once (empty: as many as the cluster's CPUs/GPUs hold)"
    )
    max_failures: int = Field(0, ge=0, description="retries of a failed trial from its latest checkpoint")
    stall_timeout_s: float | None = Field(
        None, gt=0,
        description="end a trial that reports nothing (no step, no eval) for this many seconds, with that reason "
        "(counted from its start too: leave room for loading the model); empty: never",
    )
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
    pack: int | Literal["auto"] = Field(
        1,
        description="up to this many grid cells train together in one worker over one shared frozen base "
        "(packed trials; each keeps the results it would get alone); 'auto': as many as the measured default "
        "allows; 1: one cell per worker",
    )
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1,
        description="cap on the share of its GPU's memory one worker's process may allocate (a trial past it "
        "fails with CUDA out-of-memory instead of starving trials packed on the same GPU); empty: "
        "gpus_per_worker when that is a fraction below 1, else no cap",
    )

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_is_positive_or_auto(cls, value: Any) -> Any:
        # bool is an int to Python; 2.0 would pass int parsing: both are typos, not pack sizes
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be a whole number ≥ 1 or 'auto', not {value!r}: e.g. pack: 4 "
                         "(four cells share one worker) or pack: 1 (no packing)")

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
            problem = rules.deepspeed_config_problem(self.strategy, self.deepspeed_config)
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


class WandbConfig(_Section):
    project: str = Field("raysweep", description="W&B project; each trial is one run in it")
    group: str | None = Field(None, description="W&B group of the sweep's runs (empty: the experiment name)")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="'online' (needs a W&B login), 'offline' (runs written locally, `wandb sync` "
        "uploads them later) or 'disabled' (no W&B at all)")


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI, e.g. http://127.0.0.1:5000 (empty: a local sqlite store in the "
        "experiment directory)")
    experiment: str | None = Field(None, description="MLflow experiment of the sweep's runs (empty: the experiment name)")


class TrackingConfig(_Section):
    """Experiment trackers fed by Ray Tune's own logger callbacks (sweep/trackers.py): one run per trial."""

    wandb: WandbConfig | None = Field(None, description="log every trial to Weights & Biases (empty: off)")
    mlflow: MlflowConfig | None = Field(None, description="log every trial to MLflow (empty: off)")


class TrialConfig(_Section):
    """Everything one trial needs; what the worker receives (as a plain dict)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=200))
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    # no `| None`, default None: misspelt keys under it are reported with the valid ones (config/evaluate.py)
    evaluate: EvaluateConfig = Field(
        None, description="task metrics of every trial (lm-eval tasks, generation) against the untuned base; "
        "empty: none")


class Sweep(TrialConfig):
    """A whole grid.yaml: the base trial plus experiment-level settings and the grid."""

    name: str = Field("sweep", pattern=NAME_PATTERN, description="experiment name: letters, digits, _ . - (first a "
                      "letter or digit), e.g. rank_study-2")
    storage: str | None = Field(None, description="experiment storage root (empty: ~/ray_results)")
    search: SearchConfig = Field(default_factory=SearchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    grid: Any = Field(default_factory=dict, description="axes: a mapping key.path -> [values], or a list of them")


def validate_adapter_options(adapter: AdapterConfig, prefix: str = "adapter") -> list[ConfigIssue]:
    """Check family-specific keys under `adapter:` against the family's Options model."""
    family = adapters.family(adapter.type)
    extras = dict(adapter.model_extra or {})
    try:
        family.Options(**extras)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                owners = [n for n in adapters.names() if key in adapters.family(n).option_keys()]
                where = f"it applies to: {', '.join(owners)}" if owners else "no adapter has it"
                common = suggest(key, list(AdapterConfig.model_fields))
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
    issues += rules.trial_problems(trial, prefix)
    return (None if issues else trial), issues


def validate_sweep(raw: dict[str, Any]) -> tuple[Sweep | None, list[ConfigIssue]]:
    """Validate the experiment-level keys and the base trial (the grid is checked in config/grid.py)."""
    try:
        sweep = Sweep(**raw)
    except ValidationError as exc:
        issues = pydantic_issues(Sweep, exc)
        try:  # still report adapter-option problems when only other sections are wrong
            issues += validate_adapter_options(AdapterConfig(**(raw.get("adapter") or {})))
        except (ValidationError, TypeError):
            pass
        return None, issues
    return sweep, (validate_adapter_options(sweep.adapter) + rules.validate_scheduler(sweep, raw.get("grid"))
                   + rules.validate_search(sweep, raw.get("grid")))


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
        paths += [f"adapter.{key}" for key in adapters.family(name).option_keys()]
    return sorted(set(paths))
