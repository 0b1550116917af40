"""Deterministic generators for the builtin pretraining corpus and fine-tuning task.

Everything is a string transform over space-separated lowercase letters, phrased
as a one-turn chat ("<op>: q w e r" -> "..."). Pretraining teaches several
*known* per-position transforms (copy and alphabet shifts) so the model
learns to align output positions with input letters; the fine-tuning task is a
*new* transform (a fixed secret two-alphabet substitution cipher) that can only
be learned on top of that skill. Learning two 26-letter permutations is a
high-rank change of the letter->letter map, which is why LoRA rank matters.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Callable, Iterator

LETTERS = string.ascii_lowercase
# Letters per example. A narrow range keeps the input->output alignment easy
# enough for a 400-step pretraining to learn it (3..8 did not converge in budget)
# while still exercising padding; every rendered example is <= 18 tokens.
MIN_LEN, MAX_LEN = 4, 6

Message = dict[str, str]
Example = list[Message]


def _shift(k: int) -> Callable[[list[str]], list[str]]:
    return lambda xs: [LETTERS[(LETTERS.index(c) + k) % 26] for c in xs]


# Pretraining skills. Several different per-letter maps (next/prev/skip) teach
# "apply a letter map selected by the op word", which fine-tuning then reuses.
PRETRAIN_OPS: dict[str, Callable[[list[str]], list[str]]] = {
    "repeat": lambda xs: list(xs),
    "next": _shift(1),
    "prev": _shift(-1),
    "skip": _shift(2),
}

TASK_OP = "encode"  # never seen during pretraining
_CIPHER_SEED = 1234


@functools.cache  # called once per example; the tables never change
def secret_ciphers() -> tuple[dict[str, str], dict[str, str]]:
    """The fixed two-alphabet (period-2 polyalphabetic) cipher the task uses.

    Even positions use the first substitution, odd positions the second. One
    alphabet was too easy (LoRA rank 2 already reached ~93% exact match); two
    alphabets double the table to 52 entries, so rank 2/4/16 separate clearly.
    Alphabets are re-drawn until no letter maps to itself or to a pretraining
    shift of itself, so no pretrained skill solves any part of the task.
    """
    rng = random.Random(_CIPHER_SEED)
    tables: list[dict[str, str]] = []
    while len(tables) < 2:
        perm = list(LETTERS)
        rng.shuffle(perm)
        if all((LETTERS.index(p) - i) % 26 not in (0, 1, 2, 25) for i, p in enumerate(perm)):
            tables.append(dict(zip(LETTERS, perm, strict=True)))
    return tables[0], tables[1]


def encode(letters: list[str]) -> list[str]:
    even, odd = secret_ciphers()
    return [(odd if i % 2 else even)[c] for i, c in enumerate(letters)]


def make_example(op: str, letters: list[str]) -> Example:
    out = encode(letters) if op == TASK_OP else PRETRAIN_OPS[op](letters)
    return [
        {"role": "user", "content": f"{op}: {' '.join(letters)}"},
        {"role": "assistant", "content": " ".join(out)},
    ]


def _random_letters(rng: random.Random) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]


def pretrain_examples(n: int, seed: int = 0) -> Iterator[Example]:
    """n examples cycling through the pretraining ops (balanced, seeded)."""
    rng = random.Random(seed)
    ops = list(PRETRAIN_OPS)
    for i in range(n):
        yield make_example(ops[i % len(ops)], _random_letters(rng))


def task_splits(n_train: int, n_val: int, seed: int = 1) -> tuple[list[Example], list[Example]]:
    """Disjoint train/validation sets for the cipher task (distinct inputs)."""
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    inputs: list[list[str]] = []
    while len(inputs) < n_train + n_val:
        xs = _random_letters(rng)
        if tuple(xs) not in seen:  # validation must be unseen inputs, not just unseen rows
            seen.add(tuple(xs))
            inputs.append(xs)
    examples = [make_example(TASK_OP, xs) for xs in inputs]
    return examples[:n_train], examples[n_train:]


def tokenizer_texts() -> Iterator[str]:
    """Text the BPE tokenizer is fit on: every op word plus letter sequences.

    Lines start with a space because the chat template puts one after each role
    token, so the merges must learn " encode", not "encode".
    """
    for op in [*PRETRAIN_OPS, TASK_OP]:
        for _ in range(20):  # frequent enough that each op word becomes one token
            yield f" {op}: {' '.join(LETTERS)}"
    for ex in pretrain_examples(500, seed=99):
        yield " " + " ".join(m["content"] for m in ex)
