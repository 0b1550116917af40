"""Metric names (flat, '/'-namespaced): constants only.

Every metric key reported by a trial is a constant here, so analysis, the progress table and tests
agree on names without importing the training loop.
"""

from __future__ import annotations

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_TOKENS_PER_S = "train/tokens_per_s"
TRAIN_STEP = "train/step"
TRAIN_EPOCH = "train/epoch"
TRAIN_TOKENS = "train/tokens"
TRAIN_EARLY_STOPPED = "train/early_stopped"
EVAL_LOSS = "eval/loss"
EVAL_PPL = "eval/ppl"
EVAL_ACCURACY = "eval/accuracy"
EVAL_BEST_LOSS = "eval/best_loss"
EVAL_INITIAL_LOSS = "eval/initial_loss"
EVAL_STEP = "eval/step"  # the step the eval/* numbers of a report were measured at (reports between evals repeat them)
SYS_MEM_MB = "sys/mem_mb"
SYS_SETUP_S = "sys/setup_s"  # run_training entry -> training loop ready (model, data, optimizer, resume)
SYS_STARTED_AT = "sys/started_at"  # unix time the trial's training code started (start-up benchmarks)
SYS_MODEL_LOAD_S = "sys/model_load_s"  # base model (+ tokenizer) load, or fresh view of the cached one
SYS_BASE_CACHED = "sys/base_cached"  # the base came from this process's cache (a reused actor)
SYS_PID = "sys/pid"  # process running the training loop (rank 0)
SYS_TIME = "sys/time"  # unix time of this report (wall-clock curves, start-up/shutdown benchmarks)
SYS_NODE_ID = "sys/node_id"  # Ray node that ran the training loop (rank 0): where trials ran on a cluster
SYS_PACK = "sys/pack"  # packed trials: the pack worker this trial trained in (members of one pack share it)
# the trial's own timing, cumulative since run_training started (a resumed trial counts from its resume);
# `plan --calibrate` reads the single calls' durations back from consecutive reports (offline/estimate)
SYS_DATA_S = "sys/data_s"  # data set-up: tokenization, or the splits this process cached before
SYS_DATA_TOKENIZED = "sys/data_tokenized"  # this trial tokenized the data (else it read the shared on-disk cache)
SYS_EVAL_S = "sys/eval_s"  # seconds in the loop's evaluations of the eval split (not the adapter's own)
SYS_EVALS = "sys/evals"  # how many evaluations those were
SYS_CHECKPOINT_S = "sys/checkpoint_s"  # seconds writing checkpoints (not the session's copy into storage)
SYS_CHECKPOINTS = "sys/checkpoints"  # how many checkpoints those were
SYS_END_S = "sys/end_s"  # seconds in adapter.on_train_end (SubLoRA bounds, masked validation)
TRAIN_EXAMPLES = "train/examples"  # examples in the train split (one epoch)
ADAPTER_TRAINABLE_PARAMS = "adapter/trainable_params"
ADAPTER_EFFECTIVE_PARAMS = "adapter/effective_params"
ADAPTER_TOTAL_PARAMS = "adapter/base_params"
ADAPTER_SPARSITY = "adapter/sparsity"  # gated adapters: fraction of gates exactly zero
ADAPTER_NEAR_ZERO_GATES = "adapter/near_zero_gates"  # gates with |g| < 1e-6 (zero included)
ADAPTER_LIVE_RANKS = "adapter/live_ranks"  # gates not exactly zero, summed over modules
ADAPTER_STAGE = "adapter/stage"  # staged gate schedule (lambda_stages): 0 = the main run, k = stage k
ADAPTER_LAMBDA = "adapter/lambda"  # staged gate schedule: the λ in effect at the reported step
MASK_TARGET_SPARSITY = "mask/target_sparsity"  # masked adapter: requested fraction of pruned weights
MASK_ACHIEVED_SPARSITY = "mask/achieved_sparsity"  # fraction of positions the mask prunes (over pruned layers)
MASK_VIOLATIONS = "mask/violations"  # merged weights nonzero where the mask prunes (must be 0), at the end
MASK_MERGED_ZERO_FRACTION = "mask/merged_zero_fraction"  # exact zeros in the merged weights, at the end
MASK_COMPUTED = "mask/computed"  # this trial computed its mask (False: reused one computed before)
MASK_SETUP_S = "mask/setup_s"  # seconds to compute or load and apply the mask
# SubLoRA (θ = θ₀ + P·α): the adapter's size, and its PAC-Bayes bounds computed at the end of training
ADAPTER_PROJECTED_PARAMS = "adapter/projected_params"  # D: the LoRA parameters P maps α onto
ADAPTER_PROJECTOR_BYTES = "adapter/projector_bytes"  # memory the seeded projector(s) hold (grows like sqrt(D·d))
ADAPTER_GAMMA_MEAN = "adapter/gamma_mean"  # learned allocation: mean over modules of γ (share of α given to A)
BOUND_COMPRESSED_BITS = "bound/compressed_bits"  # prefix-free message length of the quantized α (+ split logits)
BOUND_KL_NATS = "bound/kl_nats"  # compressed_bits · ln 2, the KL term of every bound
BOUND_QUANT_LEVELS = "bound/quant_levels"  # quantization levels α actually uses
BOUND_SECONDS = "bound/seconds"  # time spent computing the bounds
# per level of i.i.d. unit: "doc" (documents; examples for chat data) or "seq" (training sequences)
BOUND_LEVELS = {"document": "doc", "sequence": "seq"}


def bound_key(level: str, what: str) -> str:
    """`bound/<doc|seq>_<what>`, e.g. bound_key("document", "bpd") == "bound/doc_bpd"."""
    return f"bound/{BOUND_LEVELS.get(level, level)}_{what}"


def bound_topk_key(level: str, k: int, empirical: bool = False) -> str:
    """`bound/<doc|seq>_top<k>_error` (the bound) or `..._error_empirical` (the quantized model's error)."""
    return bound_key(level, f"top{k}_error" + ("_empirical" if empirical else ""))


# what each level reports: bound on smoothed bits per token (best prediction-smoothing α), the quantized and
# unquantized models' empirical bits per token, the chosen α, whether the bound is vacuous (> log2 V),
# the number of units m and how many were evaluated n (n < m: sub-sampled bound)
BOUND_DOC_BPD = bound_key("document", "bpd")
BOUND_DOC_BPD_EMPIRICAL = bound_key("document", "bpd_empirical")
BOUND_DOC_BPD_UNQUANTIZED = bound_key("document", "bpd_unquantized")
BOUND_DOC_ALPHA = bound_key("document", "alpha_smoothing")
BOUND_DOC_VACUOUS = bound_key("document", "vacuous_bpd")
BOUND_DOC_UNITS = bound_key("document", "units")
BOUND_DOC_SAMPLED = bound_key("document", "sampled")
BOUND_SEQ_BPD = bound_key("sequence", "bpd")
BOUND_SEQ_BPD_EMPIRICAL = bound_key("sequence", "bpd_empirical")
BOUND_SEQ_BPD_UNQUANTIZED = bound_key("sequence", "bpd_unquantized")
BOUND_SEQ_ALPHA = bound_key("sequence", "alpha_smoothing")
BOUND_SEQ_VACUOUS = bound_key("sequence", "vacuous_bpd")
BOUND_SEQ_UNITS = bound_key("sequence", "units")
BOUND_SEQ_SAMPLED = bound_key("sequence", "sampled")
BOUND_DEFAULT_TOP_K = (1, 5)  # top-k error bounds reported by default (adapter.bound_top_k)
BOUND_TOPK_METRICS = tuple(bound_topk_key(level, k, emp) for level in BOUND_LEVELS for k in BOUND_DEFAULT_TOP_K
                           for emp in (False, True))
# task metrics (evaluate: in grid.yaml; trial/task_eval.py): lm-evaluation-harness tasks and greedy generation
TASK_PREFIX = "task/"  # task/<task>/<metric>, e.g. task/boolq/acc (names come from lm-eval: see task_key)
GEN_PREFIX = "gen/"
GEN_EXACT_MATCH = "gen/exact_match"  # greedy generation of the assistant turn vs the reference, SQuAD-normalised
GEN_F1 = "gen/f1"  # token F1 of the same, SQuAD-style
TASK_ERRORS = "task/errors"  # one line per task that could not be evaluated ("boolq: ConnectionError: ...")
TASK_STEP = "task/step"  # the step the task metrics were measured at (when: best: the best eval's step)
TASK_BASELINE_FILE = "task/baseline_file"  # where the trial found the untuned base's metrics (copied by the driver)
TASK_BASELINE_ERRORS = "task/baseline_errors"  # why the untuned base has no (complete) metrics, one line
SYS_TASK_EVAL_S = "sys/task_eval_s"  # seconds in task-metric evaluations (lm-eval + generation)
SYS_BASELINE_S = "sys/baseline_s"  # seconds this trial spent evaluating the untuned base (0: read it)
BASELINE_DELTA_SUFFIX = " Δbase"  # analyze: column of a metric's difference to the baseline


def task_key(task: str, metric: str, filter_name: str = "none") -> str:
    """`task/<task>/<metric>` (lm-eval's filter appended when it is not the default `none`)."""
    return f"{TASK_PREFIX}{task}/{metric}" + ("" if filter_name in ("none", "") else f"_{filter_name}")


def is_task_metric(name: str) -> bool:
    """A task or generation metric (numbers only: not task/errors, task/step or task/baseline_file)."""
    return (name.startswith(TASK_PREFIX) or name.startswith(GEN_PREFIX)) and name not in (
        TASK_ERRORS, TASK_STEP, TASK_BASELINE_FILE, TASK_BASELINE_ERRORS)


CHECKPOINT_PATH = "checkpoint_path"  # added by Ray's TuneReportCallback when a checkpoint is reported

ALL_METRICS = (
    TRAIN_LOSS, TRAIN_LR, TRAIN_TOKENS_PER_S, TRAIN_STEP, TRAIN_EPOCH, TRAIN_TOKENS, TRAIN_EARLY_STOPPED,
    EVAL_LOSS, EVAL_PPL, EVAL_ACCURACY, EVAL_BEST_LOSS, EVAL_INITIAL_LOSS, EVAL_STEP, SYS_MEM_MB, SYS_SETUP_S,
    SYS_STARTED_AT, SYS_MODEL_LOAD_S, SYS_BASE_CACHED, SYS_PID, SYS_TIME, SYS_NODE_ID, SYS_PACK,
    ADAPTER_TRAINABLE_PARAMS, ADAPTER_EFFECTIVE_PARAMS, ADAPTER_TOTAL_PARAMS, ADAPTER_SPARSITY,
    ADAPTER_NEAR_ZERO_GATES, ADAPTER_LIVE_RANKS, ADAPTER_STAGE, ADAPTER_LAMBDA,
    MASK_TARGET_SPARSITY, MASK_ACHIEVED_SPARSITY, MASK_VIOLATIONS,
    MASK_MERGED_ZERO_FRACTION, MASK_COMPUTED, MASK_SETUP_S,
    ADAPTER_PROJECTED_PARAMS, ADAPTER_PROJECTOR_BYTES, ADAPTER_GAMMA_MEAN, BOUND_COMPRESSED_BITS, BOUND_KL_NATS,
    BOUND_QUANT_LEVELS, BOUND_SECONDS, BOUND_DOC_BPD, BOUND_DOC_BPD_EMPIRICAL, BOUND_DOC_BPD_UNQUANTIZED,
    BOUND_DOC_ALPHA, BOUND_DOC_VACUOUS, BOUND_DOC_UNITS, BOUND_DOC_SAMPLED, BOUND_SEQ_BPD, BOUND_SEQ_BPD_EMPIRICAL,
    BOUND_SEQ_BPD_UNQUANTIZED, BOUND_SEQ_ALPHA, BOUND_SEQ_VACUOUS, BOUND_SEQ_UNITS, BOUND_SEQ_SAMPLED,
    *BOUND_TOPK_METRICS,
    SYS_DATA_S, SYS_DATA_TOKENIZED, SYS_EVAL_S, SYS_EVALS, SYS_CHECKPOINT_S, SYS_CHECKPOINTS, SYS_END_S, TRAIN_EXAMPLES,
    GEN_EXACT_MATCH, GEN_F1, TASK_ERRORS, TASK_STEP, TASK_BASELINE_ERRORS, SYS_TASK_EVAL_S, SYS_BASELINE_S,
)
