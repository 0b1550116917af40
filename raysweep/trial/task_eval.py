"""Task metrics of the model in memory: lm-evaluation-harness tasks and greedy generation of chat answers.

`task_metrics(model, tokenizer, config, eval_set)` is the one entry point (the training loop, the packed loop
for each member, `raysweep eval` and the baseline call it). It evaluates the model object it is given (the
trained adapter on the cached base, a 4-bit base as trained): lm-eval's HFLM wraps it, nothing is reloaded.
A task that fails (its dataset cannot be fetched, an unknown name) costs only its own metrics: the reason is
returned under `task/errors`, and the trial goes on. lm_eval is imported here, lazily (the eval extra).
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raysweep.experiment import metrics as M
from raysweep.trial.answer_scores import mean_scores

CHAT_TASKS = ("builtin", "chat")  # data whose examples are chats: prompts for generation, chat-template prompts


def task_metrics(model, tokenizer, config: dict[str, Any], eval_set: Sequence | None = None,
                 device=None) -> dict[str, Any]:
    """Every metric `config["evaluate"]` asks for, of `model` as it is now: `task/<task>/<metric>` (lm-eval),
    `gen/exact_match`, `gen/f1` (greedy answers to `eval_set`, the trial's tokenized chat validation
    examples), and `task/errors` (one line per part that failed; absent when all ran). Floats otherwise.
    The model is left in the mode (train/eval) and the torch RNG in the state it had."""
    import torch

    evaluate = config.get("evaluate") or {}
    if not evaluate:
        return {}
    device = device or next(model.parameters()).device
    out: dict[str, Any] = {}
    errors: list[str] = []
    was_training = model.training
    # lm-eval and generation must not move the trial's random streams: training after an eval (when:
    # every_eval) and a resumed trial continue exactly as without task metrics
    rng = torch.get_rng_state(), random.getstate()
    model.eval()
    try:
        if evaluate.get("generation"):
            try:
                out |= generation_metrics(model, tokenizer, eval_set or [], evaluate["generation"],
                                          config["train"]["eval_batch_size"], device)
            except Exception as exc:  # noqa: BLE001 - a failed part leaves its metrics missing, not the trial
                errors.append(f"generation: {one_line(exc)}")
        if evaluate.get("lm_eval"):
            chat = config["data"]["task"] in CHAT_TASKS
            found, failed = lm_eval_metrics(model, tokenizer, evaluate["lm_eval"], device, chat)
            out |= found
            errors += failed
    finally:
        model.train(was_training)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
    if errors:
        out[M.TASK_ERRORS] = "; ".join(errors)
    return out


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1][:300] if text else ''}"


# ------------------------------------------------------------------------------------------ generation


def answer_spans(example) -> tuple[list[int], list[int]] | None:
    """(prompt ids, reference ids) of a tokenized chat example: the tokens before its first labelled token,
    and that first labelled span (the first assistant turn). None when nothing is labelled."""
    from raysweep.inputs.data import IGNORE_INDEX

    labels = [int(x) for x in example.labels]
    first = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), None)
    if first is None or first == 0:
        return None
    end = first
    while end < len(labels) and labels[end] != IGNORE_INDEX:
        end += 1
    return [int(x) for x in example.input_ids[:first]], labels[first:end]


def generation_metrics(model, tokenizer, examples: Sequence, options: dict[str, Any], batch_size: int,
                       device) -> dict[str, float]:
    """Greedy answers (left-padded batches, `max_new_tokens`) to the first `max_examples` examples, scored
    against their reference answers (answer_scores.py)."""
    import torch

    limit = min(len(examples), options.get("max_examples") or len(examples))
    pairs = [p for p in (answer_spans(examples[i]) for i in range(limit)) if p is not None]
    if not pairs:
        raise ValueError("no chat example with an answer in the validation split")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    predictions, references = [], []
    with torch.no_grad():
        for at in range(0, len(pairs), batch_size):
            chunk = pairs[at : at + batch_size]
            width = max(len(p) for p, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (prompt, _) in enumerate(chunk):  # left padding: every prompt ends where generation starts
                ids[row, width - len(prompt):] = torch.tensor(prompt)
                mask[row, width - len(prompt):] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=options["max_new_tokens"], do_sample=False,
                                       pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True)
            for row, (_, reference) in enumerate(chunk):
                predictions.append(tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip())
                references.append(tokenizer.decode(reference, skip_special_tokens=True).strip())
    scores = mean_scores(predictions, references, options.get("metrics") or ["exact_match", "f1"])
    return {f"{M.GEN_PREFIX}{name}": value for name, value in scores.items()}


# ------------------------------------------------------------------------------------------ lm-eval


def is_task_file(task: str) -> bool:
    """A local task YAML (a path) rather than a task name lm-eval knows."""
    return task.endswith((".yaml", ".yml")) or "/" in task


def lm_eval_metrics(model, tokenizer, options: dict[str, Any], device, chat: bool) -> tuple[dict[str, float], list[str]]:
    """({task/<task>/<metric>: value}, [one-line failure per task]): each task is evaluated on its own, so one
    whose dataset cannot be fetched leaves the others' metrics."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        return {}, [f"lm_eval: not installed ({exc}); pip install -e '.[eval]'"]
    tasks = [str(Path(t).expanduser().resolve()) if is_task_file(t) else t for t in options["tasks"]]
    include = sorted({str(Path(t).parent) for t in tasks if is_task_file(t)})
    apply_chat = chat if options.get("apply_chat_template") is None else bool(options["apply_chat_template"])
    with _quiet():
        manager = TaskManager(include_path=include or None, include_defaults=True, verbosity="ERROR")
        # a copy: HFLM may set padding options on the tokenizer it is given
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=options["batch_size"],
                  device=str(device))
    found: dict[str, float] = {}
    errors: list[str] = []
    for name, task in zip(options["tasks"], tasks, strict=True):
        try:
            with _quiet():
                results = simple_evaluate(
                    model=lm, tasks=[task], num_fewshot=options.get("num_fewshot", 0), limit=options.get("limit"),
                    task_manager=manager, apply_chat_template=apply_chat, log_samples=False, bootstrap_iters=0,
                    verbosity="ERROR", random_seed=None, numpy_random_seed=None, torch_random_seed=None)
            found |= parse_results((results or {}).get("results", {}))
        except Exception as exc:  # noqa: BLE001 - e.g. no hub access: the metric is missing, the trial goes on
            errors.append(f"{name}: {one_line(exc)}")
    return found, errors


def parse_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's {task: {"acc,none": 0.5, "acc_stderr,none": ..., "alias": ...}} -> {task/<task>/acc: 0.5}."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                out[M.task_key(task, metric, filter_name)] = float(value)
    return out


@contextlib.contextmanager
def _quiet():
    """lm-eval and datasets log every step at INFO/WARNING; a trial's log should show its own lines."""
    import logging

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
