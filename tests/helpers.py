"""Small builders shared by tests: a resolved trial config and a GPT-2-style local model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysweep.config import grid as G


def trial_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """A resolved trial config: defaults + the given sections (tiny budgets for tests)."""
    raw: dict[str, Any] = {
        "train": {"max_steps": 20, "eval_every": 10, "log_every": 5, "batch_size": 16, "lr": 3e-3},
        "data": {"max_eval_examples": 64},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return G.trial_config(raw, {})


def make_gpt2_model(directory: Path, builtin_dir: Path) -> Path:
    """A tiny GPT-2 (Conv1D `c_attn`/`c_proj` layers, no chat template) saved to `directory`."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(builtin_dir)
    tok.chat_template = None  # exercise the default chat template path
    import torch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def write_cipher_chats(path: Path, n: int) -> Path:
    """n one-turn chat conversations in the builtin task's alphabet (the builtin tokenizer covers it), seeded."""
    import json
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with Path(path).open("w") as f:
        for _ in range(n):
            word = " ".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
            reply = " ".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"encode: {word}"},
                                             {"role": "assistant", "content": reply}]}) + "\n")
    return Path(path)
