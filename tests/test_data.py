"""Data files: chat JSONL parsing, assistant-only labels, plain text, and errors that name file and line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from raysweep.inputs import data


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
    tr, ev = data.load_splits(tokenizer, cfg)
    assert (len(tr), len(ev)) == (15, 5)


def test_plain_text_is_chunked_with_labels_equal_to_inputs(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("a b c d e f g h " * 50)
    cfg = {"task": "text", "train_file": str(path), "validation_file": str(path), "validation_split": 0.1,
           "max_seq_len": 16, "max_train_examples": None, "max_eval_examples": None}
    tr, ev = data.load_splits(tokenizer, cfg)
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


# ------------------------------------------------------------------------ nanoGPT token files


def token_dir(path, train, val, train_eot=None, val_eot=None):
    """A token directory as nanoGPT writes it: flat uint16 .bin files (+ optional eot positions)."""
    path.mkdir(exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(path / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(path / "val.bin")
    for name, eot in (("train_eot.npy", train_eot), ("val_eot.npy", val_eot)):
        if eot is not None:
            np.save(path / name, np.asarray(eot))
    return path


def tokens_cfg(directory, max_seq_len=4, **extra):
    return {"task": "tokens", "data_dir": str(directory), "train_file": None, "validation_file": None,
            "validation_split": 0.1, "max_seq_len": max_seq_len, "max_train_examples": None,
            "max_eval_examples": None} | extra


def test_token_files_are_cut_into_blocks_with_labels_equal_to_inputs(tmp_path, tokenizer):
    d = token_dir(tmp_path / "tok", train=range(10, 20), val=[5, 6, 7, 8, 9])
    assert data.check_files(tokens_cfg(d)) == []
    assert data.resolve_files(tokens_cfg(d)) == (d / "train.bin", d / "val.bin")
    tr, ev = data.load_splits(tokenizer, tokens_cfg(d))
    # 10 tokens, blocks of 4: the last block keeps 2 tokens (one prediction), as chunk_text cuts text
    assert [e.input_ids for e in tr] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
    assert all(e.labels == e.input_ids for e in [*tr, *ev])
    assert [e.input_ids for e in ev] == [[5, 6, 7, 8]]  # a 1-token tail predicts nothing: dropped
    tr, ev = data.load_splits(tokenizer, tokens_cfg(d, max_train_examples=2, max_eval_examples=1))
    assert [e.input_ids for e in tr] == [[10, 11, 12, 13], [14, 15, 16, 17]] and len(ev) == 1


def test_token_ids_beyond_the_tokenizer_are_rejected_when_loading(tmp_path, tokenizer):
    d = token_dir(tmp_path / "tok", train=[1, 2, len(tokenizer)], val=[1, 2, 3])
    with pytest.raises(data.DataError, match=r"data\.data_dir.*train\.bin.*another tokenizer"):
        data.load_splits(tokenizer, tokens_cfg(d))


def test_token_documents_split_by_eot_file(tmp_path):
    # eos id 2 ends documents in the stream, but the eot file wins: it says where documents end
    d = token_dir(tmp_path / "tok", train=[7, 8, 2, 9, 2, 4, 5], val=[3, 3],
                  train_eot=np.array([1, 4], dtype=np.int64))
    docs = data.load_token_documents(tokens_cfg(d), "train", eos_id=2)
    assert [doc.tolist() for doc in docs] == [[7, 8], [2, 9, 2], [4, 5]]  # trailing tokens: a last document
    assert all(doc.dtype == np.uint16 for doc in docs)
    assert data.token_document_spans(tokens_cfg(d), "train").tolist() == [[0, 2], [2, 5], [5, 7]]


def test_token_documents_split_at_eos_without_eot_file(tmp_path):
    d = token_dir(tmp_path / "tok", train=[7, 8, 2, 9, 2], val=[3, 4, 5])
    cfg = tokens_cfg(d)
    assert [doc.tolist() for doc in data.load_token_documents(cfg, "train", eos_id=2)] == [[7, 8, 2], [9, 2]]
    assert [doc.tolist() for doc in data.load_token_documents(cfg, "train")] == [[7, 8, 2, 9, 2]]  # no eos id
    assert [doc.tolist() for doc in data.load_token_documents(cfg, "val", eos_id=2)] == [[3, 4, 5]]  # absent
    with pytest.raises(ValueError, match="split"):
        data.load_token_documents(cfg, "validation")


def _odd_bin(d):
    (d / "train.bin").write_bytes(b"\x01\x00\x02")


@pytest.mark.parametrize("damage,expected", [
    (lambda d: (d / "train.bin").unlink(), ["train.bin", "does not exist"]),
    (lambda d: (d / "val.bin").write_bytes(b""), ["val.bin", "is empty"]),
    (_odd_bin, ["train.bin", "odd size (3 bytes)", "np.uint16"]),
    (lambda d: np.save(d / "train_eot.npy", np.array([[1, 2]])), ["train_eot.npy", "1-D integer", "(1, 2)"]),
    (lambda d: np.save(d / "train_eot.npy", np.array([1.0, 3.0])), ["train_eot.npy", "1-D integer", "float64"]),
    (lambda d: np.save(d / "val_eot.npy", np.array([1, 5])), ["val_eot.npy", "[1, 5]", "valid: 0..4"]),
    (lambda d: np.save(d / "val_eot.npy", np.array([-1, 2])), ["val_eot.npy", "[-1, 2]"]),
    (lambda d: np.save(d / "train_eot.npy", np.array([3, 1])), ["train_eot.npy", "strictly increasing"]),
    (lambda d: (d / "train_eot.npy").write_text("positions"), ["train_eot.npy", "not a readable .npy"]),
])
def test_malformed_token_dir_names_key_and_file(tmp_path, damage, expected):
    d = token_dir(tmp_path / "tok", train=range(10), val=range(5))
    damage(d)
    problems = data.check_files(tokens_cfg(d))
    assert len(problems) == 1, problems
    assert all(s in problems[0] for s in ["data.data_dir", *expected]), problems


def test_missing_token_dir_is_one_problem(tmp_path):
    problems = data.check_files(tokens_cfg(tmp_path / "nope"))
    assert len(problems) == 1 and "data.data_dir" in problems[0] and "does not exist" in problems[0]


def test_check_files_of_token_dirs_does_not_import_torch(tmp_path):
    d = token_dir(tmp_path / "tok", train=range(10), val=range(5), train_eot=[3, 9])
    code = ("import sys; from raysweep.inputs import data; "
            f"assert data.check_files({tokens_cfg(d)!r}) == []; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokens_task_needs_data_dir():
    from pydantic import ValidationError

    from raysweep.config import DataConfig

    with pytest.raises(ValidationError, match=r"data\.task 'tokens' needs data\.data_dir"):
        DataConfig(task="tokens")
    assert DataConfig(task="tokens", data_dir="data/owt").data_dir == "data/owt"
    assert DataConfig(task="builtin_tokens").data_dir is None


def test_only_answer_tasks_report_accuracy():
    assert data.has_answers("builtin") and data.has_answers("chat")
    assert not any(data.has_answers(t) for t in ("text", "tokens", "builtin_tokens"))


def test_builtin_token_corpus_round_trips_through_the_builtin_tokenizer(tokenizer):
    from raysweep.inputs.builtin import ensure_builtin_tokens
    from raysweep.inputs.builtin.tokens import N_TRAIN_DOCS, N_VAL_DOCS, builtin_token_texts

    d = ensure_builtin_tokens()
    cfg = {"task": "builtin_tokens", "max_seq_len": 64, "max_train_examples": None, "max_eval_examples": None}
    assert data.check_files(cfg) == [] and data.check_files(tokens_cfg(d)) == []
    assert len(tokenizer) <= 2**16 and (d / "train.bin").stat().st_size % 2 == 0
    train_docs = data.load_token_documents(cfg, "train")
    val_docs = data.load_token_documents(cfg, "val")
    assert (len(train_docs), len(val_docs)) == (N_TRAIN_DOCS, N_VAL_DOCS)
    texts, _ = builtin_token_texts()
    for doc, text in zip(train_docs[:5], texts, strict=False):
        assert doc.dtype == np.uint16 and doc[-1] == tokenizer.eos_token_id  # each document ends with eos
        # ids are the builtin *model's* tokenizer's: decode and re-encode both round-trip
        assert tokenizer.decode(doc[:-1].tolist()) == text
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == doc[:-1].tolist()
    # the eot file and splitting at eos agree
    assert data.token_document_spans(cfg, "val").tolist() == data.token_document_spans(
        tokens_cfg(d), "val", eos_id=None).tolist()
    assert [x.tolist() for x in data.load_token_documents(tokens_cfg(d), "val", eos_id=None)] == [
        x.tolist() for x in val_docs]
    (d / "val_eot.npy").rename(d / "val_eot.bak")  # the cache is per test session: restore it below
    try:
        by_eos = data.load_token_documents(tokens_cfg(d), "val", eos_id=tokenizer.eos_token_id)
    finally:
        (d / "val_eot.bak").rename(d / "val_eot.npy")
    assert [x.tolist() for x in by_eos] == [x.tolist() for x in val_docs]
    tr, ev = data.load_splits(tokenizer, cfg)
    assert tr and ev and all(len(e.input_ids) <= 64 and e.labels == e.input_ids for e in tr + ev)
