"""Data files: chat JSONL parsing, assistant-only labels, plain text, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from raysweep import data


def chat_file(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


CONV = {"messages": [{"role": "user", "content": "encode: a b c"}, {"role": "assistant", "content": "x y z"}]}


@pytest.fixture(scope="module")
def tokenizer(builtin_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_model_dir)
    data.prepare_tokenizer(tok)
    return tok


def test_labels_cover_exactly_the_assistant_turn(tokenizer):
    ex = data.tokenize_chat(tokenizer, CONV["messages"], max_len=128)
    labelled = [t for t, lab in zip(ex.input_ids, ex.labels, strict=False) if lab != data.IGNORE_INDEX]
    assert labelled == [lab for lab in ex.labels if lab != data.IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    assert "x" in text and "z" in text and "encode" not in text
    assert labelled[-1] == tokenizer.eos_token_id  # the model learns to stop
    prompt = tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=False) if lab == data.IGNORE_INDEX])
    assert "encode" in prompt


def test_two_assistant_turns_are_both_labelled(tokenizer):
    msgs = CONV["messages"] + [{"role": "user", "content": "again"}, {"role": "assistant", "content": "q"}]
    ex = data.tokenize_chat(tokenizer, msgs, max_len=256)
    text = tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=False) if lab != data.IGNORE_INDEX])
    assert "x" in text and "q" in text and "again" not in text


def test_truncation_that_removes_every_label_drops_the_example(tokenizer):
    assert data.tokenize_chat(tokenizer, CONV["messages"], max_len=2) is None


def test_chat_files_load_and_hold_out_validation(tmp_path, tokenizer):
    train = chat_file(tmp_path / "train.jsonl", [CONV] * 20)
    cfg = {"task": "chat", "train_file": str(train), "validation_file": None, "validation_split": 0.25,
           "max_seq_len": 64, "max_train_examples": None, "max_eval_examples": None}
    tr, ev = data.load_splits(tokenizer, cfg, seed=0)
    assert (len(tr), len(ev)) == (15, 5)


def test_plain_text_is_chunked_with_labels_equal_to_inputs(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("a b c d e f g h " * 50)
    cfg = {"task": "text", "train_file": str(path), "validation_file": str(path), "validation_split": 0.1,
           "max_seq_len": 16, "max_train_examples": None, "max_eval_examples": None}
    tr, ev = data.load_splits(tokenizer, cfg, seed=0)
    assert all(len(e.input_ids) <= 16 for e in tr) and len(tr) > 5
    assert all(e.labels == e.input_ids for e in tr)


@pytest.mark.parametrize("content,expected", [
    ('{"messages": [}\n', ["data.train_file", ":1:", "not valid JSON"]),
    (json.dumps(CONV) + "\n" + '{"text": "hi"}\n', ["data.train_file", ":2:", '"messages"']),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", [":1:", "no assistant message"]),
    (json.dumps({"messages": [{"role": "user"}]}) + "\n", [":1:", "'role' and 'content'"]),
    ("\n\n", ["data.train_file", "no examples"]),
])
def test_malformed_chat_file_names_file_and_line(tmp_path, content, expected):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    problems = data.check_files({"task": "chat", "train_file": str(path), "validation_file": None})
    assert len(problems) == 1
    assert all(s in problems[0] for s in expected + [str(path)]), problems


def test_missing_files_are_all_reported(tmp_path):
    problems = data.check_files({"task": "chat", "train_file": str(tmp_path / "a.jsonl"),
                                 "validation_file": str(tmp_path / "b.jsonl")})
    assert len(problems) == 2
    assert "data.train_file" in problems[0] and "a.jsonl" in problems[0] and "does not exist" in problems[0]
    assert "data.validation_file" in problems[1] and "b.jsonl" in problems[1]


def test_builtin_task_files_are_chat_jsonl(builtin_task_files):
    train, val = builtin_task_files
    assert data.check_files({"task": "chat", "train_file": str(train), "validation_file": str(val)}) == []
    train_rows = {line for line in train.read_text().splitlines()}
    val_rows = [line for line in val.read_text().splitlines()]
    assert val_rows and not any(row in train_rows for row in val_rows)  # no leakage into validation
