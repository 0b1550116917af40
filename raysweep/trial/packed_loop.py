"""The training loop of a pack (trial/packing.py): members stepped together, each exactly as run_training
(trial/loop.py, the reference) would step it alone — its own seed and data order, optimizer, lr schedule and
stages, gradient clipping on its own gradient norm, proximal gate step, eval cadence, best adapter, early
stopping, NaN check, checkpoints (the same files as alone) and resume from them.

One packed step: every running member draws its next micro-batch; the batches are concatenated and run
through the shared base once; each member's loss (+ its adapter's penalty) is checked, and one backward of
the sum gives every member its own gradient; then each member steps its own optimizer and schedule.
Evaluations of members due at the same step share their base passes too.

Members join (`PackEngine.admit`, also from a checkpoint) and leave (finished, stopped early, NaN, or
`remove`d when Tune stops their trial) between steps; the others go on unchanged. Each member reports
through its own Session (trial/session.py), so its results and checkpoints are those of a trial alone.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raysweep.experiment import metrics as M
from raysweep.trial import checkpointing, loop
from raysweep.trial.pack_key import PACK_KEY, pack_key, unpacked_reason
from raysweep.trial.packing import Member, Pack, concat_batches
from raysweep.trial.session import Session


class MemberRun:
    """One member: what run_training keeps in local variables for one trial, and its per-member half."""

    def __init__(self, engine: PackEngine, config: dict[str, Any], session: Session, checkpoint: Path | None):
        from raysweep import adapters
        from raysweep.inputs import model_cache

        started_at, t_setup = time.time(), time.perf_counter()
        self.config, self.session, t = config, session, config["train"]
        loop.setup_runtime(config)  # set_seed(train.seed): the adapter's init draws as it would alone
        view, _, _, _ = model_cache.base_model(config["model"], engine.device)
        self.adapter = adapters.get(config["adapter"]["type"])(config["adapter"])
        self.model = self.adapter.build(view)
        self.model.config.use_cache = False
        self.member = Member(model=self.model, adapter=self.adapter, rng=torch.get_rng_state())
        steps = loop.total_steps(t, len(engine.train_set), 1)
        self.optimizer, self.scheduler = loop.setup_optimizer(config, self.model, self.adapter, steps)
        self.stage_ends = self.adapter.stage_ends(steps)
        self.main_steps, self.steps = steps, self.stage_ends[-1]
        self.state: dict[str, Any] = {"step": 0, "tokens": 0, "best_loss": math.inf, "best_step": 0,
                                      "bad_evals": 0, "initial_loss": None, "early_stopped": False}
        self.best_state: dict | None = None
        self.layer_rows: list[dict[str, float]] = []
        self.resumed: dict[str, Any] | None = None
        if checkpoint is not None:  # as run_training resumes: weights, optimizer, schedule, data position, RNG
            saved = checkpointing.load_trainer_state(checkpoint)
            self.adapter.load_state_dict(self.model, checkpointing.load_adapter_state(checkpoint))
            self.optimizer.load_state_dict(saved["optimizer"])
            self.best_state = checkpointing.load_best_state(checkpoint)
            self.scheduler.load_state_dict(saved["scheduler"])
            self.member.rng = saved["rng"]
            self.state = saved["state"]
            self.resumed = checkpointing.load_metrics(checkpoint)
            if self.adapter.LAYER_LOG:
                self.layer_rows = checkpointing.load_layer_log(checkpoint / self.adapter.LAYER_LOG)
        self.batches = loop.micro_batches(len(engine.train_set), t["batch_size"], t["seed"], 0, 1,
                                          start=self.state["step"] * t["grad_accum_steps"])
        self.timing = {M.SYS_DATA_S: 0.0, M.SYS_EVAL_S: 0.0, M.SYS_EVALS: 0, M.SYS_CHECKPOINT_S: 0.0,
                       M.SYS_CHECKPOINTS: 0, M.SYS_END_S: 0.0}
        self.static = self.adapter.metrics(self.model) | engine.load_metrics | {
            M.SYS_SETUP_S: time.perf_counter() - t_setup, M.SYS_STARTED_AT: started_at, M.SYS_PID: os.getpid(),
            M.SYS_NODE_ID: session.node_id(), M.SYS_PACK: engine.name}
        self.last_eval: dict[str, float] = {}
        self.status = "RUNNING"  # RUNNING | TERMINATED | ERROR | REMOVED
        self.error: str | None = None
        self.index = -1  # its place in the pack (its rows of every concatenated batch); set by the engine
        self.epoch = 0.0
        self.window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
        self.lr = 0.0
        self.last_report = time.monotonic()
        self.reports: list[dict[str, Any]] = []  # every row reported (tests and benchmarks read them)
        self.engine = engine
        self.evaluate_cfg = config.get("evaluate") or {}  # task metrics (trial/task_eval.py), as run_training
        self.last_tasks: dict[str, Any] = {}
        if self.evaluate_cfg:
            self.timing |= {M.SYS_TASK_EVAL_S: 0.0, M.SYS_BASELINE_S: 0.0}

    # ------------------------------------------------------------------ what run_training does per trial

    def after_eval(self, metrics: dict[str, float]) -> None:
        self.last_eval.update(metrics)
        self.last_eval[M.EVAL_STEP] = self.state["step"]
        loss, state, t = metrics[M.EVAL_LOSS], self.state, self.config["train"]
        if state["initial_loss"] is None:
            state["initial_loss"] = loss
        if math.isinf(state["best_loss"]) or loss < state["best_loss"] * (1 - t["early_stopping"]["min_rel_improvement"]):
            state["best_loss"], state["best_step"], state["bad_evals"] = loss, state["step"], 0
            self.best_state = self.adapter.state_dict(self.model)
        else:
            state["bad_evals"] += 1

    def baseline(self) -> None:
        """The untuned base's task metrics exist (once per key, as run_training; needs the pack's layers)."""
        if self.evaluate_cfg.get("baseline") and self.state["step"] == 0:
            from raysweep.inputs.cache import default_cache_dir

            store = str(self.config.get("_store") or default_cache_dir())
            with loop.timed(self.timing, M.SYS_BASELINE_S), self.engine.pack.alone(self.member):
                self.static |= loop.baseline_metrics(self.model, self.engine.tokenizer, self.config,
                                                     self.engine.eval_set, store, self.engine.device)

    def task_eval(self, best: bool) -> None:
        """Task metrics of this member's own adapter (`best`: of its best eval's weights), as run_training."""
        swapped = best and self.best_state is not None and self.state["best_step"] != self.state["step"]
        with loop.timed(self.timing, M.SYS_TASK_EVAL_S), self.engine.pack.alone(self.member):
            if swapped:
                current = self.adapter.state_dict(self.model)
                self.adapter.load_state_dict(self.model, self.best_state)
            try:
                found = loop.task_metrics(self.model, self.engine.tokenizer, self.config, self.engine.eval_set,
                                          self.engine.device)
            finally:
                if swapped:
                    self.adapter.load_state_dict(self.model, current)
        self.last_tasks = found | {M.TASK_STEP: self.state["best_step"] if swapped else self.state["step"]}

    def log_layers(self, overall: float) -> None:
        if self.adapter.LAYER_LOG:
            self.layer_rows.append({"step": self.state["step"], "overall": overall} | self.adapter.layer_log(self.model))

    def report(self, extra: dict[str, Any], with_checkpoint: bool, files: dict[str, Any] | None = None) -> None:
        self.last_report = time.monotonic()
        state = self.state
        row = self.static | self.last_eval | self.last_tasks | extra | {
            M.TRAIN_STEP: state["step"], M.TRAIN_TOKENS: state["tokens"], M.SYS_MEM_MB: loop.memory_mb(),
            M.EVAL_BEST_LOSS: state["best_loss"], M.EVAL_INITIAL_LOSS: state["initial_loss"],
            M.TRAIN_EARLY_STOPPED: state["early_stopped"], M.SYS_TIME: time.time()} | self.timing
        self.reports.append(row)
        if not with_checkpoint:
            self.session.report(row)
            return
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / f"checkpoint_step{state['step']:06d}"
            with loop.timed(self.timing, M.SYS_CHECKPOINT_S, M.SYS_CHECKPOINTS):
                trainer_state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                 "rng": self.member.rng, "state": dict(state)}
                best = None if state["best_step"] == state["step"] else self.best_state
                log_name = self.adapter.LAYER_LOG
                checkpointing.save(directory, adapter=self.adapter, model=self.model, best_state=best,
                                   trainer_state=trainer_state, config=self.config, metrics=row,
                                   layer_log=(log_name, self.layer_rows) if log_name else None, reports=files)
            self.session.report(row | self.timing, directory)

    def start(self) -> None:
        """After the member's first evaluation (a new member) or right after resuming: its first report."""
        if self.state["step"] == 0:
            self.log_layers(self.static.get(M.ADAPTER_SPARSITY, 0.0))
            self.report({}, with_checkpoint=False)
        elif self.resumed is not None:
            # as run_training: a trial interrupted after its last step has nothing left to run
            self.last_eval.update({k: v for k, v in self.resumed.items() if k.startswith("eval/")})
            self.session.report(self.resumed | {k: v for k, v in self.static.items() if k.startswith("sys/")}
                                | {M.SYS_TIME: time.time(), M.SYS_MEM_MB: loop.memory_mb()})
        if self.state["step"] >= self.steps or self.state["early_stopped"]:
            self.status = "TERMINATED"

    def optimizer_step(self, step_time: float) -> None:
        t, state = self.config["train"], self.state
        lr = self.scheduler.get_last_lr()[0]
        if t["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           t["max_grad_norm"])
        self.optimizer.step()
        # before scheduler.step(): a proximal step must use the learning rate the gradient step just used
        self.adapter.after_optimizer_step(self.model, self.optimizer, (state["step"] + 1) / self.steps)
        if state["step"] < self.main_steps:
            self.scheduler.step()
        state["step"] += 1
        self.window["n"] += 1
        self.window["time"] += step_time
        self.lr = lr

    def eval_due(self) -> bool:
        step = self.state["step"]
        return step % self.config["train"]["eval_every"] == 0 or step >= self.steps or step in self.stage_ends

    def after_step(self, evaluated: bool) -> None:
        """Early stopping, reports, checkpoints and the end of training, as run_training after a step."""
        t, state = self.config["train"], self.state
        is_last = state["step"] >= self.steps
        if evaluated:
            patience = t["early_stopping"]["patience"]
            state["early_stopped"] = bool(patience) and state["bad_evals"] >= patience and not is_last
        done = is_last or state["early_stopped"]
        when = self.evaluate_cfg.get("when")
        if self.evaluate_cfg and ((evaluated and when == "every_eval") or done):
            self.task_eval(best=done and when == "best")
        wants_checkpoint = done or state["step"] % (t["checkpoint_every"] or t["eval_every"]) == 0
        is_log = state["step"] % t["log_every"] == 0 and (
            time.monotonic() - self.last_report >= loop.MIN_REPORT_INTERVAL_S)
        if evaluated or wants_checkpoint or is_log:
            w = self.window
            row = {M.TRAIN_LOSS: w["loss"] / w["n"], M.TRAIN_LR: self.lr, M.TRAIN_EPOCH: self.epoch,
                   M.TRAIN_TOKENS_PER_S: w["tokens"] / max(w["time"], 1e-9)}
            row |= self.adapter.metrics(self.model)
            files = None
            if done:
                with loop.timed(self.timing, M.SYS_END_S):
                    end_metrics, files = self.adapter.on_train_end(self.model, None)
                row |= end_metrics
            self.log_layers(row.get(M.ADAPTER_SPARSITY, 0.0))
            self.report(row, with_checkpoint=wants_checkpoint, files=files)
            self.window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
        if done:
            self.status = "TERMINATED"


class PackEngine:
    """One shared base, its data, and the members training over it now (see the module docstring)."""

    def __init__(self, config: dict[str, Any], device=None, name: str = "pack"):
        from raysweep.inputs import model_cache

        self.device = device or torch.device("cpu")
        self.name = name
        self.key = pack_key(config)
        self.first = config
        loop.setup_runtime(config)
        runner, tokenizer, _, _ = model_cache.base_model(config["model"], self.device)
        runner.config.use_cache = False
        if config["train"]["gradient_checkpointing"]:
            runner.enable_input_require_grads()
            runner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pack = Pack(runner, [])
        t0 = time.perf_counter()
        self.train_set, self.eval_set, tokenized_here = loop.setup_data(config, tokenizer)
        self.load_metrics = {M.TRAIN_EXAMPLES: len(self.train_set), M.SYS_DATA_TOKENIZED: tokenized_here,
                             M.SYS_DATA_S: time.perf_counter() - t0}
        self.pad_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        self.members: list[MemberRun] = []

    def _rewire(self) -> None:
        self.members = [m for m in self.members if m.status == "RUNNING"]
        for index, m in enumerate(self.members):
            m.index = index
        self.pack.set_members([m.member for m in self.members])

    def admit(self, items: list[tuple[dict[str, Any], Session, Path | None]]) -> list[MemberRun]:
        """New members (a checkpoint: resume from it). Members new from step 0 are evaluated together first."""
        runs = []
        for config, session, checkpoint in items:
            if pack_key(config) != self.key:
                raise ValueError("members of a pack must share " + ", ".join(PACK_KEY))
            reason = unpacked_reason(config)
            if reason:
                raise ValueError(reason)
            runs.append(MemberRun(self, config, session, checkpoint))
        self.members += runs
        self._rewire()
        for r in runs:
            r.baseline()
        fresh = [r for r in runs if r.state["step"] == 0]
        if fresh:
            self.evaluate(fresh)
        for r in runs:
            r.start()
        self.pack.runner.train()
        for r in runs:
            r.model.train()
        self._rewire()  # members resumed after their last step end here
        return runs

    def remove(self, run: MemberRun) -> None:
        """A member leaves between steps (Tune stopped its trial); the others go on unchanged."""
        if run.status == "RUNNING":
            run.status = "REMOVED"
        self._rewire()

    def evaluate(self, due: list[MemberRun]) -> None:
        """Every member in `due` evaluated on the whole eval split, their base passes shared: each eval batch
        is repeated once per member, and each member's rows get `loop.evaluate`'s arithmetic, as alone."""
        from raysweep.inputs.data import collate

        t0 = time.perf_counter()
        bs = due[0].config["train"]["eval_batch_size"]  # part of the pack key
        sums = {r.index: torch.zeros(4, dtype=torch.float64) for r in due}
        modules = [self.pack.runner] + [r.model for r in due]
        training = [m.training for m in modules]
        for module in modules:
            module.eval()
        with torch.no_grad():
            for i in range(0, len(self.eval_set), bs):
                batch = {k: v.to(self.device) for k, v in collate(self.eval_set[i : i + bs], self.pad_id).items()}
                full, slices = concat_batches([batch if k in sums else None for k in range(len(self.members))],
                                              self.pad_id)
                for k, logits in self.pack.member_logits(full, slices):
                    start, end, _ = slices[k]
                    sums[k] += loop.eval_sums(logits, full["labels"][start:end])
        for module, mode in zip(modules, training, strict=True):
            module.train(mode)
        seconds = time.perf_counter() - t0  # the shared pass: each member waited for all of it
        for r in due:
            r.after_eval(loop.eval_metrics(sums[r.index], r.config["data"]["task"]))
            r.timing[M.SYS_EVAL_S] += seconds
            r.timing[M.SYS_EVALS] += 1

    def step(self) -> None:
        """One optimizer step of every running member (their micro-batches through the base together)."""
        from raysweep.inputs.data import collate

        active = [m for m in self.members if m.status == "RUNNING"]
        if not active:
            return
        t0 = time.perf_counter()
        for r in active:
            r.optimizer.zero_grad(set_to_none=True)
        accum = self.first["train"]["grad_accum_steps"]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.first["train"]["bf16"])
        losses: dict[int, float] = {}
        for _ in range(accum):
            stepping = [r for r in active if r.status == "RUNNING"]
            if not stepping:
                break
            drawn: list[dict[str, torch.Tensor] | None] = [None] * len(self.members)
            for r in stepping:
                r.epoch, idx = next(r.batches)
                drawn[r.index] = {k: v.to(self.device)
                                  for k, v in collate([self.train_set[i] for i in idx], self.pad_id).items()}
            full, slices = concat_batches(drawn, self.pad_id)
            with autocast:
                member_losses = self.pack.member_losses(full, slices)
                totals = []
                for r in stepping:
                    rows = slices[r.index]
                    loss = member_losses[r.index]
                    penalty = r.adapter.loss_penalty(r.model)
                    total = loss if penalty is None else loss + penalty
                    if not torch.isfinite(total):  # this member leaves; the others' sum stays finite
                        r.status = "ERROR"
                        r.error = (f"NonFiniteLossError: train/loss is {total.item()} at step {r.state['step']} "
                                   f"(lr {r.scheduler.get_last_lr()[0]:.3g}); lower train.lr, keep "
                                   "train.max_grad_norm set, or check the data for empty/odd examples")
                        continue
                    totals.append(total)
                    losses[r.index] = losses.get(r.index, 0.0) + loss.item() / accum
                    n_tokens = int(full["attention_mask"][rows[0] : rows[1]].sum())
                    r.state["tokens"] += n_tokens
                    r.window["tokens"] += n_tokens
            if totals:  # one backward: the members' parameters are disjoint, so each gets its own gradient
                (sum(totals) / accum).backward()  # / accum: as DDPStrategy.backward averages micro-batches
        step_time = time.perf_counter() - t0
        for r in active:
            if r.status == "RUNNING":
                r.window["loss"] += losses[r.index]
                r.optimizer_step(step_time)
        due = [r for r in active if r.status == "RUNNING" and r.eval_due()]
        if due:
            self.evaluate(due)
        for r in active:
            if r.status == "RUNNING":
                r.after_step(r in due)
        if any(r.status != "RUNNING" for r in active):
            self._rewire()

    def running(self) -> list[MemberRun]:
        return [m for m in self.members if m.status == "RUNNING"]


def train_pack(configs: list[dict[str, Any]], device=None, sessions: list[Session] | None = None,
               checkpoints: list[Path | None] | None = None) -> list[MemberRun]:
    """Train every member of one pack to its end, in this process (tests, benchmarks, calibration)."""
    from raysweep.trial.session import LocalSession

    if sessions is None:
        tmp = Path(tempfile.mkdtemp(prefix="raysweep-pack-"))
        sessions = [LocalSession(tmp / f"member{k}") for k in range(len(configs))]
    engine = PackEngine(configs[0], device)
    runs = engine.admit(list(zip(configs, sessions, checkpoints or [None] * len(configs), strict=True)))
    while engine.running():
        engine.step()
    return runs
