"""A fast batched encoder for the builtin pretraining corpus (32k one-turn chats).

Rendering the Jinja chat template per example dominated build time; this splices the special
tokens around batch-tokenized contents and checks a sample against `raysweep.inputs.examples.tokenize_chat`
(the trainer's encoder), so the two cannot drift apart.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from raysweep.inputs.examples import IGNORE_INDEX, Example, tokenize_chat


def encode_many(tok: PreTrainedTokenizerFast, examples: list[list[dict[str, str]]]) -> list[Example]:
    """Batched equivalent of `tokenize_chat` for one-turn user/assistant chats."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    user, asst = tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("<|assistant|>")
    users = tok([" " + ex[0]["content"].strip() for ex in examples], add_special_tokens=False)["input_ids"]
    replies = tok([" " + ex[1]["content"].strip() for ex in examples], add_special_tokens=False)["input_ids"]
    rows = []
    for u, r in zip(users, replies, strict=True):
        prompt = [bos, user, *u, asst]
        rows.append(Example(prompt + r + [eos], [IGNORE_INDEX] * len(prompt) + r + [eos]))
    for ex, row in zip(examples[:8], rows[:8], strict=True):
        assert tokenize_chat(tok, ex, max_len=10**6) == row, "fast encoder disagrees with the chat template"
    return rows
