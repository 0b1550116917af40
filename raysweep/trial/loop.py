# over 400 lines: one trial's loop read top to bottom (nanoGPT style); its setup_* helpers live beside it
"""The training loop of one trial, readable top to bottom.

`train_fn_per_worker(config)` is what Ray Train runs on every worker; it hands a `TrainSession` to
`run_training`, which knows nothing about the executor (trial/session.py). `config` is the resolved trial
config (config/schema.py TrialConfig as a dict) plus `_trial` metadata from the Tune driver (sweep/driver.py).
Besides its results, a trial reports how long its data set-up, evaluations, checkpoint writes and
on_train_end took (`timed`; sys/data_s, sys/eval_s, ...): `plan --calibrate` reads them back.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from raysweep.experiment import metrics as M
from raysweep.trial import checkpointing, engines
from raysweep.trial.session import Session

MIN_REPORT_INTERVAL_S = 3.0


def memory_mb() -> float:
    """GPU memory allocated by this process if on CUDA, else the process resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


@contextlib.contextmanager
def timed(timing: dict[str, float], seconds_key: str, count_key: str | None = None):
    """Add the block's wall time to timing[seconds_key] (and 1 to timing[count_key])."""
    t0 = time.perf_counter()
    yield
    timing[seconds_key] += time.perf_counter() - t0
    if count_key:
        timing[count_key] += 1


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf loss; ends the trial (retrying would repeat it)."""


def train_fn_per_worker(config: dict[str, Any]) -> None:
    from raysweep.trial.session import TrainSession

    run_training(config, TrainSession())


# --------------------------------------------------------------------------------------- setup_*


def setup_runtime(config: dict[str, Any]) -> None:
    import torch
    from transformers import set_seed

    # one torch thread per reserved CPU: oversubscribing cores slows concurrent trials down
    torch.set_num_threads(max(1, int(config["resources"]["cpus_per_worker"])))
    set_seed(config["train"]["seed"])


def setup_model(config: dict[str, Any], session: Session):
    """(adapted model, adapter, tokenizer, load metrics), on the session's device, not yet wrapped.

    The base comes from the process's cache when an earlier trial in this (reused) process loaded
    the same one (inputs/model_cache.py); it is a fresh module tree either way."""
    from raysweep import adapters
    from raysweep.inputs import model_cache

    base, tokenizer, hit, seconds = model_cache.base_model(config["model"], session.device())
    adapter = adapters.get(config["adapter"]["type"])(config["adapter"])
    model = adapter.build(base)
    if config["train"]["gradient_checkpointing"]:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model, adapter, tokenizer, {M.SYS_BASE_CACHED: hit, M.SYS_MODEL_LOAD_S: seconds}


def setup_data(config: dict[str, Any], tokenizer) -> tuple[Any, Any, bool]:
    """(train, eval) splits and whether this trial tokenized them: memory-mapped from the sweep's shared
    on-disk cache (the first trial that needs them builds it, inputs/tokenized.py), and kept open per process."""
    from raysweep.inputs import data, model_cache, tokenized

    files = [str(f) for f in data.resolve_files(config["data"]) if f]
    built: list[bool] = []
    # keyed without train.seed: the seed orders the examples (micro_batches), never tokenizes them, so a
    # seed sweep in a reused actor opens the cache once
    (train, evals), hit = model_cache.splits(
        config["model"], config["data"], files,
        build=lambda: tokenized.load(tokenizer, config["model"], config["data"], config.get("_store"),
                                     on_build=lambda: built.append(True)))
    if hit:
        data.prepare_tokenizer(tokenizer)  # what tokenized.load would have done to this trial's tokenizer
    return train, evals, bool(built)


CALIBRATION_BATCH = 8  # examples per calibration batch (fixed: a mask must not depend on train.batch_size)


def setup_context(config: dict[str, Any], session: Session, train_set, eval_set, pad_id: int):
    """What the adapter's prepare/on_train_end hooks may use: calibration batches, evaluation, shared storage."""
    import torch

    from raysweep.adapters.base import TrialContext
    from raysweep.inputs.cache import default_cache_dir
    from raysweep.inputs.data import collate

    device = session.device()

    def batches(n: int, seed: int):
        # the same examples on every rank and in every trial with this seed (masks must agree across ranks)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        for i in range(0, len(order), CALIBRATION_BATCH):
            chunk = [train_set[j] for j in order[i : i + CALIBRATION_BATCH]]
            yield {k: v.to(device) for k, v in collate(chunk, pad_id).items()}

    # the sweep's storage root (shared storage on a cluster); outside a sweep, the local cache
    store = str(config.get("_store") or default_cache_dir())  # a directory or an object-store URI
    return TrialContext(config=config, device=device, batches=batches, store=store, world_rank=session.world_rank,
                        train_set=train_set,
                        evaluate=lambda m: evaluate(m, eval_set, config, session, pad_id))


def total_steps(train_cfg: dict[str, Any], n_train: int, world_size: int) -> int:
    if train_cfg["max_steps"]:
        return int(train_cfg["max_steps"])
    per_step = train_cfg["batch_size"] * train_cfg["grad_accum_steps"] * world_size
    return max(1, math.ceil(train_cfg["epochs"] * n_train / per_step))


def setup_optimizer(config: dict[str, Any], model, adapter, steps: int):
    import torch
    from transformers import get_scheduler

    t = config["train"]
    optimizer = torch.optim.AdamW(adapter.param_groups(model, t))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t["schedule"]]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=t["warmup_steps"], num_training_steps=steps)
    return optimizer, scheduler


def micro_batches(n: int, batch_size: int, seed: int, rank: int, world_size: int, start: int = 0):
    """Endless stream of index lists: a fresh seeded permutation per epoch, sharded by rank.

    Deterministic in (seed, position), so a resumed trial skips `start` micro-batches by arithmetic.
    """
    import torch

    per_epoch = max(1, (n // world_size) // batch_size)
    epoch, pos = divmod(start, per_epoch)
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()[rank::world_size]
        for b in range(pos, per_epoch):
            yield epoch, order[b * batch_size : (b + 1) * batch_size]
        epoch, pos = epoch + 1, 0


# ------------------------------------------------------------------------------------------ eval


def evaluate(model, examples, config: dict[str, Any], session: Session, pad_id: int) -> dict[str, float]:
    """Token-level loss over the whole eval split (sharded over workers), and exact-match accuracy:
    an example counts as correct when every labelled token is the argmax under teacher forcing."""
    import torch

    from raysweep.inputs.data import collate

    device = session.device()
    bs = config["train"]["eval_batch_size"]
    mine = examples[session.world_rank :: session.world_size]
    sums = torch.zeros(4, dtype=torch.float64)  # loss sum, tokens, exact matches, examples
    was_training = model.training
    model.eval()
    # every worker runs as many forward passes as the one with the largest shard: under DeepSpeed ZeRO-3 each
    # forward gathers parameters from all workers, so one with a batch fewer would leave the others waiting
    rounds = math.ceil(math.ceil(len(examples) / session.world_size) / bs)
    with torch.no_grad():
        for i in range(0, rounds * bs, bs):
            if not mine[i : i + bs]:  # a forward in step with the others; its numbers are not counted
                batch = {k: v.to(device) for k, v in collate(examples[:1], pad_id).items()}
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                continue
            batch = {k: v.to(device) for k, v in collate(mine[i : i + bs], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            sums += eval_sums(logits, batch["labels"])
    model.train(was_training)
    if session.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    return eval_metrics(sums, config["data"]["task"])


def eval_sums(logits, labels):
    """[loss sum, labelled tokens, exactly matched examples, examples] of one eval batch (float64)."""
    import torch
    import torch.nn.functional as F

    from raysweep.inputs.data import IGNORE_INDEX

    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    valid = labels != IGNORE_INDEX
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = (logits.argmax(-1) == labels) | ~valid
    return torch.tensor([loss.item(), valid.sum().item(), correct.all(-1).sum().item(), len(labels)],
                        dtype=torch.float64)


def eval_metrics(sums, task: str) -> dict[str, float]:
    """eval/loss, eval/ppl (and eval/accuracy for tasks with answers) from summed `eval_sums`."""
    from raysweep.inputs.data import has_answers

    loss = (sums[0] / sums[1].clamp(min=1)).item()
    out = {M.EVAL_LOSS: loss, M.EVAL_PPL: math.exp(min(loss, 50.0))}
    if has_answers(task):  # only answers (chat/builtin) have a notion of correct
        out[M.EVAL_ACCURACY] = (sums[2] / sums[3]).item()
    return out


# ------------------------------------------------------------------------------------------ task metrics


def task_metrics(model, tokenizer, config: dict[str, Any], eval_set, device=None) -> dict[str, Any]:
    """The task metrics `config["evaluate"]` asks for, of `model` as it is (trial/task_eval.py; lm-eval is
    imported only when a trial has an evaluate section)."""
    from raysweep.trial import task_eval

    return task_eval.task_metrics(model, tokenizer, config, eval_set, device)


def baseline_metrics(model, tokenizer, config: dict[str, Any], eval_set, store: Path, device) -> dict[str, Any]:
    """Make sure the untuned base's task metrics exist (computed once per key, trial/task_baseline.py); the
    trial reports where they are (the driver copies them into the experiment) and what failed in them or
    why there are none (task/baseline_errors)."""
    from raysweep.trial import task_baseline

    try:
        found, path, _ = task_baseline.base_metrics(model, tokenizer, config, eval_set, store, device)
    except Exception as exc:  # noqa: BLE001 - e.g. an adapter that cannot be switched off: no baseline
        return {M.TASK_BASELINE_ERRORS: f"baseline: {type(exc).__name__}: {str(exc).strip()[:300]}"}
    out = {M.TASK_BASELINE_FILE: str(path)}
    if M.TASK_ERRORS in found:
        out[M.TASK_BASELINE_ERRORS] = f"baseline: {found[M.TASK_ERRORS]}"
    return out


# ------------------------------------------------------------------------------------------ loop


def run_training(config: dict[str, Any], session: Session) -> dict[str, Any]:
    import torch

    from raysweep.inputs.data import collate

    started_at, t_setup = time.time(), time.perf_counter()
    t = config["train"]
    setup_runtime(config)
    strategy = engines.build(config)  # ddp or a DeepSpeed ZeRO engine (resources.strategy)
    engines.limit_gpu_memory(config["resources"]["gpu_memory_fraction"], session.device())  # resolved by config.grid
    model, adapter, tokenizer, load_metrics = setup_model(config, session)
    # cumulative seconds (and counts) of the parts `plan --calibrate` prices one by one, in every report
    timing = {M.SYS_DATA_S: 0.0, M.SYS_EVAL_S: 0.0, M.SYS_EVALS: 0, M.SYS_CHECKPOINT_S: 0.0,
              M.SYS_CHECKPOINTS: 0, M.SYS_END_S: 0.0}
    with timed(timing, M.SYS_DATA_S):
        train_set, eval_set, tokenized_here = setup_data(config, tokenizer)
    load_metrics |= {M.TRAIN_EXAMPLES: len(train_set), M.SYS_DATA_TOKENIZED: tokenized_here}
    pad_id = tokenizer.pad_token_id
    context = setup_context(config, session, train_set, eval_set, pad_id)
    evaluate_cfg = config.get("evaluate") or {}
    if evaluate_cfg:  # task metrics (trial/task_eval.py): their time is reported apart from the eval split's
        timing |= {M.SYS_TASK_EVAL_S: 0.0, M.SYS_BASELINE_S: 0.0}
    if evaluate_cfg.get("baseline") and session.world_rank == 0:
        # before `prepare`: a masked adapter prunes the base there, and the baseline is the untuned base
        with timed(timing, M.SYS_BASELINE_S):
            load_metrics |= baseline_metrics(model, tokenizer, config, eval_set, context.store, session.device())
    load_metrics |= adapter.prepare(model, context)  # e.g. prune the base: before DDP sees the model
    steps = total_steps(t, len(train_set), session.world_size)
    optimizer, scheduler = setup_optimizer(config, model, adapter, steps)
    # stages after the main run (SoRA's staged λ schedule): an eval ends each, at the main run's final lr
    stage_ends = adapter.stage_ends(steps)
    main_steps, steps = steps, stage_ends[-1]
    # after the optimizer: DeepSpeed wraps model and optimizer together (DDP keeps the same parameters)
    wrapped = strategy.prepare(model, optimizer, session)
    device = session.device()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t["bf16"])
    ckpt_every = t["checkpoint_every"] or t["eval_every"]

    # state that a checkpoint carries across a restart
    state: dict[str, Any] = {"step": 0, "tokens": 0, "best_loss": math.inf, "best_step": 0,
                             "bad_evals": 0, "initial_loss": None, "early_stopped": False}
    best_adapter_state = None
    resumed_metrics: dict[str, Any] | None = None
    # per-module history (e.g. gate sparsity per layer), written into every checkpoint
    log_name = adapter.LAYER_LOG
    layer_rows: list[dict[str, float]] = []
    with session.latest_checkpoint() as ckpt:
        if ckpt is not None:  # resume: adapter weights, optimizer, schedule, data position, RNG
            saved = checkpointing.load_trainer_state(ckpt)
            strategy.restore(ckpt, saved, model, adapter, optimizer)  # adapter weights + optimizer state
            best_adapter_state = checkpointing.load_best_state(ckpt)
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng"])
            state = saved["state"]
            resumed_metrics = checkpointing.load_metrics(ckpt)
            if log_name:
                layer_rows = checkpointing.load_layer_log(ckpt / log_name)

    static = adapter.metrics(model) | load_metrics | {
        M.SYS_SETUP_S: time.perf_counter() - t_setup, M.SYS_STARTED_AT: started_at, M.SYS_PID: os.getpid(),
        M.SYS_NODE_ID: session.node_id()}
    last_eval: dict[str, float] = {}
    last_tasks: dict[str, Any] = {}  # the latest task metrics (evaluate:), repeated in every later report

    last_report_time = [time.monotonic()]

    def report(extra: dict[str, Any], with_checkpoint: bool, files: dict[str, Any] | None = None) -> None:
        last_report_time[0] = time.monotonic()
        row = static | last_eval | last_tasks | extra | {
            M.TRAIN_STEP: state["step"], M.TRAIN_TOKENS: state["tokens"], M.SYS_MEM_MB: memory_mb(),
            M.EVAL_BEST_LOSS: state["best_loss"], M.EVAL_INITIAL_LOSS: state["initial_loss"],
            M.TRAIN_EARLY_STOPPED: state["early_stopped"], M.SYS_TIME: time.time(),
        } | timing
        if not with_checkpoint:
            session.report(row)
            return
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / f"checkpoint_step{state['step']:06d}"
            with timed(timing, M.SYS_CHECKPOINT_S, M.SYS_CHECKPOINTS):
                # DeepSpeed: every worker writes its optimizer shard; the checkpoint directory gathers them all
                sharded = strategy.save_shard(directory)
                with strategy.gathered(model):  # ZeRO-3: whole adapter weights (every worker takes part)
                    if session.world_rank == 0:  # one copy of the (replicated) adapter is enough
                        trainer_state = {"optimizer": strategy.optimizer_state(optimizer),
                                         "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                                         "state": dict(state)}
                        # the best adapter is the current one when this step's eval was the best: copy its
                        # files instead of exporting the same weights twice
                        best = None if state["best_step"] == state["step"] else best_adapter_state
                        checkpointing.save(
                            directory, adapter=adapter, model=model,
                            best_state=best, trainer_state=trainer_state, config=config, metrics=row,
                            layer_log=(log_name, layer_rows) if log_name else None, reports=files)
            # this checkpoint's write is in the row reported with it (not in the copy saved inside it)
            session.report(row | timing, directory if session.world_rank == 0 or sharded else None)

    def run_eval() -> None:
        nonlocal best_adapter_state
        with timed(timing, M.SYS_EVAL_S, M.SYS_EVALS):
            last_eval.update(evaluate(model, eval_set, config, session, pad_id))
        last_eval[M.EVAL_STEP] = state["step"]  # reports between evals repeat these numbers: say from when
        loss = last_eval[M.EVAL_LOSS]
        if state["initial_loss"] is None:
            state["initial_loss"] = loss
        threshold = state["best_loss"] * (1 - t["early_stopping"]["min_rel_improvement"])
        if math.isinf(state["best_loss"]) or loss < threshold:
            state["best_loss"], state["best_step"], state["bad_evals"] = loss, state["step"], 0
            with strategy.gathered(model):
                best_adapter_state = adapter.state_dict(model)
        else:
            state["bad_evals"] += 1

    def run_task_eval(best: bool = False) -> None:
        """Task metrics of the weights now in the model (rank 0 only; `best`: of the best eval's weights)."""
        if session.world_rank != 0:
            return
        swapped = best and best_adapter_state is not None and state["best_step"] != state["step"]
        with timed(timing, M.SYS_TASK_EVAL_S):
            if swapped:  # evaluate the best eval's adapter, then put the final one back
                current = adapter.state_dict(model)
                adapter.load_state_dict(model, best_adapter_state)
            try:
                found = task_metrics(model, tokenizer, config, eval_set, device)
            finally:
                if swapped:
                    adapter.load_state_dict(model, current)
        last_tasks.clear()
        last_tasks.update(found | {M.TASK_STEP: state["best_step"] if swapped else state["step"]})

    def log_layers(overall: float) -> None:
        if log_name:
            layer_rows.append({"step": state["step"], "overall": overall} | adapter.layer_log(model))

    if state["step"] == 0:
        run_eval()  # the starting point, so every trial's improvement is measurable
        log_layers(static.get(M.ADAPTER_SPARSITY, 0.0))
        report({}, with_checkpoint=False)
    elif resumed_metrics is not None:
        # report once right after resuming: a trial interrupted after its last step has nothing left
        # to run, and Tune may have lost its earlier results
        last_eval.update({k: v for k, v in resumed_metrics.items() if k.startswith("eval/")})
        session.report(resumed_metrics | {k: v for k, v in static.items() if k.startswith("sys/")}
                       | {M.SYS_TIME: time.time(), M.SYS_MEM_MB: memory_mb()})

    batches = micro_batches(len(train_set), t["batch_size"], t["seed"], session.world_rank,
                            session.world_size, start=state["step"] * t["grad_accum_steps"])
    wrapped.train()
    window_tokens, window_time, window_loss, window_n = 0, 0.0, 0.0, 0
    while state["step"] < steps and not state["early_stopped"]:
        t0 = time.perf_counter()
        strategy.zero_grad(optimizer)
        for _ in range(t["grad_accum_steps"]):
            epoch, idx = next(batches)
            batch = {k: v.to(device) for k, v in collate([train_set[i] for i in idx], pad_id).items()}
            with autocast:
                loss = wrapped(**batch).loss
                penalty = adapter.loss_penalty(model)
                total = loss if penalty is None else loss + penalty
            if not torch.isfinite(total):
                raise NonFiniteLossError(
                    f"train/loss is {total.item()} at step {state['step']} (lr {scheduler.get_last_lr()[0]:.3g}); "
                    "lower train.lr, keep train.max_grad_norm set, or check the data for empty/odd examples")
            strategy.backward(total)
            window_loss += loss.item() / t["grad_accum_steps"]
            n_tokens = int(batch["attention_mask"].sum())
            window_tokens += n_tokens * session.world_size
            state["tokens"] += n_tokens * session.world_size
        lr = scheduler.get_last_lr()[0]
        strategy.step(model, optimizer)  # gradient clipping (train.max_grad_norm) included
        # before scheduler.step(): a proximal step must use the learning rate the gradient step just used
        adapter.after_optimizer_step(model, optimizer, (state["step"] + 1) / steps)
        if state["step"] < main_steps:
            scheduler.step()
        state["step"] += 1
        window_n += 1
        window_time += time.perf_counter() - t0

        is_last = state["step"] >= steps
        is_eval = state["step"] % t["eval_every"] == 0 or is_last or state["step"] in stage_ends
        if is_eval:
            run_eval()
            patience = t["early_stopping"]["patience"]
            state["early_stopped"] = bool(patience) and state["bad_evals"] >= patience and not is_last
        done = is_last or state["early_stopped"]  # both only happen on eval steps
        if evaluate_cfg and ((is_eval and evaluate_cfg.get("when") == "every_eval") or done):
            # before on_train_end: the model as trained (an adapter's end-of-training work may change it)
            run_task_eval(best=done and evaluate_cfg.get("when") == "best")
        wants_checkpoint = done or state["step"] % ckpt_every == 0
        # Ray Train holds one pending report per worker and its controller drains it every ~2 s, so
        # back-to-back reports stall the loop: log-only reports wait for MIN_REPORT_INTERVAL_S.
        # Ranks must make the same report calls, so they agree on the time-based decision.
        is_log = state["step"] % t["log_every"] == 0 and session.agree(
            time.monotonic() - last_report_time[0] >= MIN_REPORT_INTERVAL_S)
        if is_eval or wants_checkpoint or is_log:
            row = {M.TRAIN_LOSS: window_loss / window_n, M.TRAIN_LR: lr, M.TRAIN_EPOCH: epoch,
                   M.TRAIN_TOKENS_PER_S: window_tokens / max(window_time, 1e-9)}
            row |= adapter.metrics(model)
            files = None
            if done:  # e.g. validate the merged sparsity, compute bounds: into the final result and checkpoint
                with timed(timing, M.SYS_END_S):
                    end_metrics, files = adapter.on_train_end(model, context)
                row |= end_metrics
            log_layers(row.get(M.ADAPTER_SPARSITY, 0.0))
            report(row, with_checkpoint=wants_checkpoint, files=files)
            window_tokens, window_time, window_loss, window_n = 0, 0.0, 0.0, 0
    return {"state": state, "eval": last_eval}
