"""Data: the builtin task, chat JSONL, plain text; tokenization with assistant-only labels; collation.

`check_files` is pure Python (no torch) so the CLI can reject a missing file or a malformed line
before Ray starts. `load_splits` runs inside the worker.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100  # label value ignored by the loss (prompt tokens, padding)

# Used when a tokenizer has no chat template (e.g. a GPT-2-style base model).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class DataError(ValueError):
    """A problem with a data file; the message names the file (and line) and the fix."""


def resolve_files(data: dict[str, Any]) -> tuple[Path, Path | None]:
    """(train, validation-or-None) paths for a data config; the builtin task is generated here."""
    if data["task"] == "builtin":
        from raysweep.builtin import ensure_builtin_task

        return ensure_builtin_task()
    train = Path(data["train_file"]).expanduser()
    val = Path(data["validation_file"]).expanduser() if data.get("validation_file") else None
    return train, val


def _read_chat(path: Path, key: str) -> list[list[dict[str, str]]]:
    conversations = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{key}: {where}: not valid JSON ({exc.msg}); each line is one JSON object") from None
            messages = obj.get("messages") if isinstance(obj, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DataError(f'{key}: {where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
            for m in messages:
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    raise DataError(f"{key}: {where}: every message needs string 'role' and 'content'")
            if not any(m["role"] == "assistant" for m in messages):
                raise DataError(f"{key}: {where}: no assistant message, so nothing to train on")
            conversations.append(messages)
    if not conversations:
        raise DataError(f"{key}: {path} has no examples; add JSONL lines or point to another file")
    return conversations


def _read_text(path: Path, key: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{key}: {path} is empty; point it to a non-empty text file")
    return [text]


def _read(path: Path, task: str, key: str):
    if not path.is_file():
        raise DataError(f"{key}: file {str(path)!r} does not exist; fix the path (relative paths are "
                        "relative to the directory you run raysweep from)")
    return _read_text(path, key) if task == "text" else _read_chat(path, key)


def check_files(data: dict[str, Any]) -> list[str]:
    """Every problem with the data files of a config, as messages (empty list: fine). No torch."""
    if data["task"] == "builtin":
        return []
    problems = []
    train, val = resolve_files(data)
    for path, key in ((train, "data.train_file"), (val, "data.validation_file")):
        if path is None:
            continue
        try:
            path = path.resolve()
            _read(path, data["task"], key)
        except DataError as exc:
            problems.append(str(exc))
    return problems


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def tokenize_chat(tokenizer, messages: list[dict[str, str]], max_len: int) -> Example | None:
    """Token ids with labels on assistant tokens only.

    For each assistant turn, the prompt rendering (messages before it + generation prompt) is a token
    prefix of the rendering that includes the turn; the tokens in between are that turn's labels.
    Returns None if truncation leaves no label.
    """
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = render(messages, False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer(render(messages[:i], True), add_special_tokens=False)["input_ids"])
        end = len(tokenizer(render(messages[: i + 1], False), add_special_tokens=False)["input_ids"])
        labels[start:end] = ids[start:end]
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return Example(ids, labels)


def chunk_text(tokenizer, texts: list[str], max_len: int) -> list[Example]:
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    blocks = [ids[i : i + max_len] for i in range(0, len(ids) - 1, max_len)]
    return [Example(b, list(b)) for b in blocks if len(b) > 1]


def prepare_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def load_splits(tokenizer, data: dict[str, Any], seed: int) -> tuple[list[Example], list[Example]]:
    """Tokenized (train, eval) examples for a trial's data config."""
    prepare_tokenizer(tokenizer)
    train_path, val_path = resolve_files(data)
    task = "text" if data["task"] == "text" else "chat"
    train_raw = _read(train_path, task, "data.train_file")
    val_raw = _read(val_path, task, "data.validation_file") if val_path else None

    def tokenize(raw) -> list[Example]:
        if task == "text":
            return chunk_text(tokenizer, raw, data["max_seq_len"])
        examples = [tokenize_chat(tokenizer, m, data["max_seq_len"]) for m in raw]
        return [e for e in examples if e is not None]

    train = tokenize(train_raw)
    if val_raw is None:
        # hold out a fixed fraction; the split depends only on the data, not on the trial seed,
        # so every trial of a sweep evaluates on the same examples
        random.Random(0).shuffle(train)
        n_val = max(1, int(len(train) * data["validation_split"]))
        train, evals = train[n_val:], train[:n_val]
    else:
        evals = tokenize(val_raw)
    if data.get("max_train_examples"):
        train = train[: data["max_train_examples"]]
    if data.get("max_eval_examples"):
        evals = evals[: data["max_eval_examples"]]
    for name, split in (("train", train), ("validation", evals)):
        if not split:
            raise DataError(f"data: the {name} split is empty after tokenization with max_seq_len="
                            f"{data['max_seq_len']}; raise data.max_seq_len or add examples")
    return train, evals


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
