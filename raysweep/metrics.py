"""Metric names (flat, '/'-namespaced) and the accounting helpers that produce them.

Every metric key reported by a trial is a constant here, so analysis, the progress table and tests
agree on names without importing the worker.
"""

from __future__ import annotations

import os

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
SYS_MEM_MB = "sys/mem_mb"
SYS_SETUP_S = "sys/setup_s"  # run_training entry -> training loop ready (model, data, optimizer, resume)
SYS_STARTED_AT = "sys/started_at"  # unix time the trial's training code started (start-up benchmarks)
SYS_MODEL_LOAD_S = "sys/model_load_s"  # base model (+ tokenizer) load, or fresh view of the cached one
SYS_BASE_CACHED = "sys/base_cached"  # the base came from this process's cache (a reused actor)
SYS_PID = "sys/pid"  # process running the training loop (rank 0)
SYS_TIME = "sys/time"  # unix time of this report (wall-clock curves, start-up/shutdown benchmarks)
ADAPTER_TRAINABLE_PARAMS = "adapter/trainable_params"
ADAPTER_EFFECTIVE_PARAMS = "adapter/effective_params"
ADAPTER_TOTAL_PARAMS = "adapter/base_params"
ADAPTER_SPARSITY = "adapter/sparsity"  # gated adapters: fraction of gates exactly zero
ADAPTER_NEAR_ZERO_GATES = "adapter/near_zero_gates"  # gates with |g| < 1e-6 (zero included)
ADAPTER_LIVE_RANKS = "adapter/live_ranks"  # gates not exactly zero, summed over modules
MASK_TARGET_SPARSITY = "mask/target_sparsity"  # masked adapter: requested fraction of pruned weights
MASK_ACHIEVED_SPARSITY = "mask/achieved_sparsity"  # fraction of positions the mask prunes (over pruned layers)
MASK_VIOLATIONS = "mask/violations"  # merged weights nonzero where the mask prunes (must be 0), at the end
MASK_MERGED_ZERO_FRACTION = "mask/merged_zero_fraction"  # exact zeros in the merged weights, at the end
MASK_COMPUTED = "mask/computed"  # this trial computed its mask (False: reused one computed before)
MASK_SETUP_S = "mask/setup_s"  # seconds to compute or load and apply the mask
CHECKPOINT_PATH = "checkpoint_path"  # added by Ray's TuneReportCallback when a checkpoint is reported

ALL_METRICS = (
    TRAIN_LOSS, TRAIN_LR, TRAIN_TOKENS_PER_S, TRAIN_STEP, TRAIN_EPOCH, TRAIN_TOKENS, TRAIN_EARLY_STOPPED,
    EVAL_LOSS, EVAL_PPL, EVAL_ACCURACY, EVAL_BEST_LOSS, EVAL_INITIAL_LOSS, SYS_MEM_MB, SYS_SETUP_S,
    SYS_STARTED_AT, SYS_MODEL_LOAD_S, SYS_BASE_CACHED, SYS_PID, SYS_TIME,
    ADAPTER_TRAINABLE_PARAMS, ADAPTER_EFFECTIVE_PARAMS, ADAPTER_TOTAL_PARAMS, ADAPTER_SPARSITY,
    ADAPTER_NEAR_ZERO_GATES, ADAPTER_LIVE_RANKS, MASK_TARGET_SPARSITY, MASK_ACHIEVED_SPARSITY, MASK_VIOLATIONS,
    MASK_MERGED_ZERO_FRACTION, MASK_COMPUTED, MASK_SETUP_S,
)


def memory_mb() -> float:
    """GPU memory allocated by this process if on CUDA, else the process resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts of a torch module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
