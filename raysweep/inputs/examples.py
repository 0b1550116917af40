"""Tokenized examples: the chat template rule for labels, text blocks, and collation into tensors.

The bottom of inputs/: data.py (files → examples) and builtin/ (the generated task and the pretraining of
the builtin model) both encode with these, so they agree by construction. torch is imported by collate only.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    return tokenize_chats(tokenizer, [messages], max_len)[0]


CHAT_BATCH = 512  # conversations per tokenizer call: a fast tokenizer encodes a batch in parallel, in Rust


def tokenize_chats(tokenizer, conversations: list[list[dict[str, str]]], max_len: int) -> list[Example | None]:
    """`tokenize_chat` for many conversations, with one batched tokenizer call per CHAT_BATCH of them
    (the same ids and labels: only the lengths of the prompt renderings are needed, and they are the same
    whether a string is encoded alone or in a batch)."""
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    out: list[Example | None] = []
    for first in range(0, len(conversations), CHAT_BATCH):
        texts: list[str] = []
        layout: list[tuple[int, int]] = []  # per conversation: (index of its full rendering, assistant turns)
        for messages in conversations[first : first + CHAT_BATCH]:
            layout.append((len(texts), sum(m["role"] == "assistant" for m in messages)))
            texts.append(render(messages, False))
            for i, m in enumerate(messages):
                if m["role"] == "assistant":  # the prompt up to this turn, and the rendering through it
                    texts += [render(messages[:i], True), render(messages[: i + 1], False)]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for at, turns in layout:
            ids = list(encoded[at])
            labels = [IGNORE_INDEX] * len(ids)
            for k in range(turns):
                start, end = len(encoded[at + 1 + 2 * k]), len(encoded[at + 2 + 2 * k])
                labels[start:end] = ids[start:end]
            ids, labels = ids[:max_len], labels[:max_len]
            out.append(None if all(x == IGNORE_INDEX for x in labels) else Example(ids, labels))
    return out


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
