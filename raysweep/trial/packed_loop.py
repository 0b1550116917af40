"""The training loop of a pack (trial/packing.py): K members stepped together, each exactly as run_training
would step it alone — its own seed and data order, optimizer, lr schedule, gradient clipping on its own
gradient norm, proximal gate step, eval cadence, early stopping and NaN check.

One packed step: every member still training draws its next micro-batch; the batches are concatenated and
run through the shared base once; each member's loss (+ its adapter's penalty) is checked and summed, and
one backward gives every member its own gradient; then each member steps its own optimizer and schedule.
A member that finishes, stops early or produces a non-finite loss leaves the pack with its own status; the
others go on unchanged. Evaluations of members due at the same step share their base passes too.

Step 1 of the issue "Packed trials": in-process (no Ray, no checkpoints yet); `train_pack` returns every
member's reports. The same per-member rules as trial/loop.py, which stays the reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from raysweep.experiment import metrics as M
from raysweep.trial import loop
from raysweep.trial.packing import Member, Pack, concat_batches

# what members of one pack must share: everything the base computes with (the rest may differ per member)
PACK_KEY = ("model", "data", "train.bf16", "train.gradient_checkpointing", "train.grad_accum_steps",
            "train.eval_batch_size")


def pack_key(config: dict[str, Any]) -> str:
    import json

    def get(path: str):
        section, _, key = path.partition(".")
        return config[section][key] if key else config[section]

    return json.dumps({p: get(p) for p in PACK_KEY}, sort_keys=True, default=str)


@dataclass
class Running:
    """A member's training state: what run_training keeps in local variables for one trial."""

    index: int  # the member's position in the pack (its rows' place in every concatenated batch)
    config: dict[str, Any]
    member: Member
    optimizer: Any
    scheduler: Any
    steps: int
    batches: Any
    state: dict[str, Any] = field(default_factory=lambda: {
        "step": 0, "tokens": 0, "best_loss": math.inf, "best_step": 0, "bad_evals": 0, "initial_loss": None,
        "early_stopped": False})
    reports: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    status: str = "RUNNING"  # RUNNING | TERMINATED | ERROR
    error: str | None = None
    window: list[float] = field(default_factory=lambda: [0.0, 0])  # loss sum, steps since the last report
    lr: float = 0.0  # the learning rate of the latest step (as run_training reports it)


def build(configs: list[dict[str, Any]], device) -> tuple[Pack, Any, list[Member]]:
    """The runner and the members, each built as run_training builds it alone (seeded, fresh base view)."""
    from raysweep import adapters
    from raysweep.inputs import model_cache

    keys = {pack_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError("members of a pack must share " + ", ".join(PACK_KEY))
    members = []
    for config in configs:
        loop.setup_runtime(config)  # set_seed(train.seed): the adapter's init draws as it would alone
        view, tokenizer, _, _ = model_cache.base_model(config["model"], device)
        adapter = adapters.get(config["adapter"]["type"])(config["adapter"])
        model = adapter.build(view)
        model.config.use_cache = False
        members.append(Member(model=model, adapter=adapter, rng=torch.get_rng_state()))
    runner, tokenizer, _, _ = model_cache.base_model(configs[0]["model"], device)
    runner.config.use_cache = False
    if configs[0]["train"]["gradient_checkpointing"]:
        runner.enable_input_require_grads()
        runner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Pack(runner, members), tokenizer, members


def evaluate_members(pack: Pack, due: list[Running], eval_set, pad_id: int, device) -> None:
    """Every member in `due` evaluated on the whole eval split, their base passes shared: each eval batch is
    repeated once per member, and each member's rows get `loop.evaluate`'s arithmetic, as alone."""
    from raysweep.inputs.data import collate

    bs = due[0].config["train"]["eval_batch_size"]  # part of the pack key
    sums = {r.index: torch.zeros(4, dtype=torch.float64) for r in due}
    training = [pack.runner.training] + [r.member.model.training for r in due]
    for module in [pack.runner] + [r.member.model for r in due]:
        module.eval()
    with torch.no_grad():
        for i in range(0, len(eval_set), bs):
            batch = {k: v.to(device) for k, v in collate(eval_set[i : i + bs], pad_id).items()}
            full, slices = concat_batches([batch if k in sums else None for k in range(len(pack.members))], pad_id)
            logits = pack(full, slices)
            for k in sums:
                start, end, _ = slices[k]
                sums[k] += loop.eval_sums(logits[start:end], full["labels"][start:end])
    for module, mode in zip([pack.runner] + [r.member.model for r in due], training, strict=True):
        module.train(mode)
    for r in due:
        r.last_eval = loop.eval_metrics(sums[r.index], r.config["data"]["task"]) | {M.EVAL_STEP: r.state["step"]}
        loss, state, t = r.last_eval[M.EVAL_LOSS], r.state, r.config["train"]
        if state["initial_loss"] is None:
            state["initial_loss"] = loss
        if math.isinf(state["best_loss"]) or loss < state["best_loss"] * (1 - t["early_stopping"]["min_rel_improvement"]):
            state["best_loss"], state["best_step"], state["bad_evals"] = loss, state["step"], 0
        else:
            state["bad_evals"] += 1


def train_pack(configs: list[dict[str, Any]], device=None) -> list[Running]:
    """Train every member of a pack to its end; each member's reports are in `Running.reports`."""
    from raysweep.inputs.data import collate

    device = device or torch.device("cpu")
    pack, tokenizer, members = build(configs, device)
    train_set, eval_set, _ = loop.setup_data(configs[0], tokenizer)
    pad_id = tokenizer.pad_token_id
    running = []
    for index, (config, member) in enumerate(zip(configs, members, strict=True)):
        t = config["train"]
        steps = loop.total_steps(t, len(train_set), 1)
        optimizer, scheduler = loop.setup_optimizer(config, member.model, member.adapter, steps)
        batches = loop.micro_batches(len(train_set), t["batch_size"], t["seed"], 0, 1)
        running.append(Running(index, config, member, optimizer, scheduler, steps, batches))

    def report(r: Running, extra: dict[str, Any]) -> None:
        r.reports.append(r.member.adapter.metrics(r.member.model) | r.last_eval | extra | {
            M.TRAIN_STEP: r.state["step"], M.TRAIN_TOKENS: r.state["tokens"], M.EVAL_BEST_LOSS: r.state["best_loss"],
            M.EVAL_INITIAL_LOSS: r.state["initial_loss"], M.TRAIN_EARLY_STOPPED: r.state["early_stopped"],
            M.SYS_TIME: time.time()})

    evaluate_members(pack, running, eval_set, pad_id, device)  # step 0: every member's starting point
    for r in running:
        report(r, {})
    pack.runner.train()
    for r in running:
        r.member.model.train()
    accum = configs[0]["train"]["grad_accum_steps"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=configs[0]["train"]["bf16"])
    while active := [r for r in running if r.status == "RUNNING"]:
        for r in active:
            r.optimizer.zero_grad(set_to_none=True)
        losses: dict[int, float] = {}
        for _ in range(accum):
            stepping = [r for r in active if r.status == "RUNNING"]
            drawn: list[dict[str, torch.Tensor] | None] = [None] * len(pack.members)
            for r in stepping:
                _, idx = next(r.batches)
                drawn[r.index] = {k: v.to(device) for k, v in collate([train_set[i] for i in idx], pad_id).items()}
            full, slices = concat_batches(drawn, pad_id)
            with autocast:
                logits = pack(full, slices)
                totals = []
                for r in stepping:
                    rows = slices[r.index]
                    loss = pack.member_loss(logits, full["labels"], rows)
                    penalty = r.member.adapter.loss_penalty(r.member.model)
                    total = loss if penalty is None else loss + penalty
                    if not torch.isfinite(total):  # this member leaves; the others' sum stays finite
                        r.status, r.error = "ERROR", (f"NonFiniteLossError: train/loss is {total.item()} at step "
                                                      f"{r.state['step']}")
                        continue
                    totals.append(total)
                    losses[r.index] = losses.get(r.index, 0.0) + loss.item() / accum
                    r.state["tokens"] += int(full["attention_mask"][rows[0] : rows[1]].sum())
            if totals:  # one backward: the members' parameters are disjoint, so each gets its own gradient
                sum(totals).backward()
        for r in active:
            if r.status != "RUNNING":
                continue
            t, state = r.config["train"], r.state
            lr = r.scheduler.get_last_lr()[0]
            if t["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_([p for p in r.member.model.parameters() if p.requires_grad],
                                               t["max_grad_norm"])
            r.optimizer.step()
            r.member.adapter.after_optimizer_step(r.member.model, r.optimizer, (state["step"] + 1) / r.steps)
            r.scheduler.step()
            state["step"] += 1
            r.window[0] += losses[r.index]
            r.window[1] += 1
            r.lr = lr
        due = [r for r in active if r.status == "RUNNING" and (
            r.state["step"] % r.config["train"]["eval_every"] == 0 or r.state["step"] >= r.steps)]
        if due:
            evaluate_members(pack, due, eval_set, pad_id, device)
        for r in active:
            if r.status != "RUNNING":
                continue
            t, state = r.config["train"], r.state
            is_last, is_eval = state["step"] >= r.steps, r in due
            if is_eval:
                patience = t["early_stopping"]["patience"]
                state["early_stopped"] = bool(patience) and state["bad_evals"] >= patience and not is_last
            if is_eval or state["step"] % t["log_every"] == 0:
                report(r, {M.TRAIN_LOSS: r.window[0] / r.window[1], M.TRAIN_LR: r.lr})
                r.window = [0.0, 0]
            if is_last or state["early_stopped"]:
                r.status = "TERMINATED"
    return running
