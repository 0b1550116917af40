"""The on-disk tokenized cache: the same examples as tokenizing in memory, built once per key, memory-mapped,
rebuilt when a file changes, never read half-written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from raysweep.inputs import data, examples, tokenized
from tests.helpers import trial_config

SYSTEM = {"role": "system", "content": "be brief"}


def conv(i: int, turns: int = 1, system: bool = False) -> dict:
    msgs = [SYSTEM] if system else []
    for t in range(turns):
        msgs += [{"role": "user", "content": f"encode: {'abcde'[i % 5]} {'xyz'[t % 3]} q"},
                 {"role": "assistant", "content": f"{'vwxyz'[(i + t) % 5]} k"}]
    return {"messages": msgs}


def write_chat(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(builtin_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_model_dir)
    data.prepare_tokenizer(tok)
    return tok


def pairs(split) -> list[tuple[list[int], list[int]]]:
    return [(list(e.input_ids), list(e.labels)) for e in split]


def test_batched_chat_tokenization_equals_one_conversation_at_a_time(tokenizer):
    """Multi-turn, system prompts, and a truncation that leaves no label (None) agree with tokenize_chat."""
    convs = [conv(i, turns=1 + i % 3, system=i % 2 == 0)["messages"] for i in range(40)]
    convs.append([{"role": "user", "content": "encode: " + "a " * 200}, {"role": "assistant", "content": "z"}])
    batched = examples.tokenize_chats(tokenizer, convs, max_len=24)
    assert batched == [examples.tokenize_chat(tokenizer, m, max_len=24) for m in convs]
    assert batched[-1] is None and sum(e is None for e in batched) == 1


@pytest.mark.parametrize("case", ["builtin", "held_out_chat", "chat_with_validation", "text", "limits"])
def test_the_cached_splits_are_the_examples_tokenized_in_memory(case, tmp_path, tokenizer, builtin_task_files):
    """Same examples, same order, same held-out split as data.load_splits (what trials used before)."""
    rows = [conv(i, turns=1 + i % 2) for i in range(50)]
    cfg = {"builtin": {},
           "held_out_chat": {"task": "chat", "train_file": write_chat(tmp_path / "t.jsonl", rows)},
           "chat_with_validation": {"task": "chat", "train_file": write_chat(tmp_path / "t.jsonl", rows),
                                    "validation_file": write_chat(tmp_path / "v.jsonl", rows[:7])},
           "text": {"task": "text", "train_file": str(tmp_path / "t.txt"), "max_seq_len": 16},
           "limits": {"max_train_examples": 11, "max_eval_examples": 3}}[case]
    (tmp_path / "t.txt").write_text("encode a b c d e f g h i j k l m n o p\n" * 30)
    config = trial_config(data=cfg)
    memory = data.load_splits(tokenizer, config["data"])
    cached = tokenized.load(tokenizer, config["model"], config["data"], tmp_path / "store")
    reopened = tokenized.load(tokenizer, config["model"], config["data"], tmp_path / "store")
    for mine, theirs, again in zip(cached, memory, reopened, strict=True):
        assert pairs(mine) == pairs(theirs) == pairs(again) and len(mine) > 0
    assert tokenized.builds(tmp_path / "store") == 1
    train = cached[0]
    assert isinstance(train.ids, np.memmap) or isinstance(train.ids.base, np.memmap)  # pages, not Python ints


def test_a_changed_data_file_or_setting_tokenizes_again_and_nothing_else_does(tmp_path, tokenizer):
    path = tmp_path / "t.jsonl"
    write_chat(path, [conv(i) for i in range(30)])
    store = tmp_path / "store"
    load = lambda **d: tokenized.load(tokenizer, config["model"], config["data"] | d, store)  # noqa: E731
    config = trial_config(data={"task": "chat", "train_file": str(path)}, train={"seed": 0})
    load()
    config["train"]["seed"] = 5  # orders examples, never tokenizes them
    load()
    load(max_train_examples=4)  # a data-size sweep opens the same entry
    assert tokenized.builds(store) == 1
    load(max_seq_len=9)
    assert tokenized.builds(store) == 2
    write_chat(path, [conv(i) for i in range(31)])
    os.utime(path, ns=(1, 1))  # a rewritten file (size and time change)
    train, _ = load()
    assert tokenized.builds(store) == 3 and len(train) == 31 - int(31 * 0.1)
    built, size = tokenized.state(tokenized.root_dir(store), tokenized.cache_key(config["model"], config["data"]))
    assert built and size > 0


def test_a_build_that_fails_leaves_nothing_behind_and_the_next_trial_builds(tmp_path, tokenizer, monkeypatch):
    config = trial_config()
    store = tmp_path / "store"

    def crash(*args):
        raise KeyboardInterrupt  # a trial killed mid-tokenization

    real = data.tokenize_files
    monkeypatch.setattr(data, "tokenize_files", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenized.load(tokenizer, config["model"], config["data"], store)
    root = tokenized.root_dir(store)
    assert [p.name for p in root.iterdir() if p.is_dir()] == []  # no entry, no temp dir left to read
    monkeypatch.setattr(data, "tokenize_files", real)
    train, _ = tokenized.load(tokenizer, config["model"], config["data"], store)
    assert len(train) and tokenized.builds(store) == 1


def test_token_files_need_no_cache_and_stay_memory_mapped(tmp_path, tokenizer):
    d = tmp_path / "tok"
    d.mkdir()
    for split, n in (("train", 1000), ("val", 100)):
        (np.arange(n) % 300).astype(np.uint16).tofile(d / f"{split}.bin")
    config = trial_config(data={"task": "tokens", "data_dir": str(d), "max_seq_len": 64})
    train, evals = tokenized.load(tokenizer, config["model"], config["data"], tmp_path / "store")
    assert isinstance(train.tokens, np.memmap) and len(train) == len(range(0, 999, 64))
    assert train[3].input_ids == list(range(192, 256)) and not (tmp_path / "store").exists()
