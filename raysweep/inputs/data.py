"""Data files → tokenized examples: chat JSONL, plain text, nanoGPT token files (paths from sources.py).

`check_files` is pure Python + numpy (no torch) so the CLI can reject a missing file or a malformed
line before Ray starts. `load_splits` tokenizes in memory (export, bounds, tests); a trial reads the same
examples through the shared on-disk cache of inputs/tokenized.py, which tokenizes with `tokenize_files`. `load_token_documents` /
`token_document_spans` give the documents of a token directory (for document-level bounds).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raysweep.inputs import sources
from raysweep.inputs.examples import (  # noqa: F401 - the loop and the families use them as data.*
    IGNORE_INDEX,
    Example,
    chunk_text,
    collate,
    prepare_tokenizer,
    tokenize_chat,
    tokenize_chats,
)
from raysweep.inputs.splits import TokenBlocks

ANSWER_TASKS = ("builtin", "chat")  # tasks whose examples have answers (eval/accuracy is defined)
TOKEN_TASKS = ("tokens", "builtin_tokens")  # tasks read from train.bin / val.bin
TOKEN_SPLITS = ("train", "val")
TOKEN_DTYPE = np.uint16  # nanoGPT's .bin format: flat uint16 token ids, no header
_TOKENS_KEY = "data.data_dir"

class DataError(ValueError):
    """A problem with a data file; the message names the file (and line) and the fix."""


def has_answers(task: str) -> bool:
    """Whether `task`'s examples have answers, so eval/accuracy means something (not text/tokens)."""
    return task in ANSWER_TASKS


def is_token_task(task: str) -> bool:
    return task in TOKEN_TASKS


def resolve_files(data: dict[str, Any]) -> tuple[Path, Path | None]:
    """(train, validation-or-None) paths for a data config; builtin data is generated here.

    For token tasks: (train.bin, val.bin) of the token directory.
    """
    if data["task"] in sources.GENERATED_TASKS:
        return sources.generated_files(data["task"])
    if is_token_task(data["task"]):
        directory = token_dir(data)
        return directory / "train.bin", directory / "val.bin"
    train = Path(data["train_file"]).expanduser()
    val = Path(data["validation_file"]).expanduser() if data.get("validation_file") else None
    return train, val


CHAT_ROLES = ("system", "user", "assistant", "tool")  # tool: only where the model's chat template renders it


def _read_chat(path: Path, key: str, roles: Sequence[str] = CHAT_ROLES) -> list[list[dict[str, str]]]:
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
                if m["role"] not in roles:  # a typo such as "asistant" would train as context, not as a target
                    raise DataError(f"{key}: {where}: {_role_problem(m['role'], roles)}")
            if not any(m["role"] == "assistant" for m in messages):
                raise DataError(f"{key}: {where}: no assistant message, so nothing to train on")
            conversations.append(messages)
    if not conversations:
        raise DataError(f"{key}: {path} has no examples; add JSONL lines or point to another file")
    return conversations


def _role_problem(role: str, roles: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(role, roles, n=1, cutoff=0.6)
    why = " (the model's chat template does not render 'tool' messages)" if role == "tool" else ""
    return (f"role {role!r} is not one of {', '.join(roles)}{why}; "
            + (f"did you mean {close[0]!r}? " if close else "") + "fix the role of that message")


def _read_text(path: Path, key: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{key}: {path} is empty; point it to a non-empty text file")
    return [text]


def _read(path: Path, task: str, key: str, roles: Sequence[str] = CHAT_ROLES):
    if path.is_dir():
        raise DataError(f"{key}: {str(path)!r} is a directory; give the path of a file "
                        f"({'plain text' if task == 'text' else 'JSONL, one conversation per line'})")
    if not path.is_file():
        raise DataError(f"{key}: file {str(path)!r} does not exist; fix the path (relative paths are "
                        "relative to the directory you run raysweep from)")
    try:
        return _read_text(path, key) if task == "text" else _read_chat(path, key, roles)
    except UnicodeDecodeError as exc:  # a binary or differently encoded file
        raise DataError(f"{key}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it to UTF-8 "
                        "or point to the right file") from None


def check_files(data: dict[str, Any], roles: Sequence[str] = CHAT_ROLES) -> list[str]:
    """Every problem with the data files of a config, as messages (empty list: fine); `roles`: the chat roles
    the model's template renders. No torch."""
    if data["task"] in sources.GENERATED_TASKS:  # generated by us
        return []
    if is_token_task(data["task"]):
        return _check_token_dir(data)
    problems = []
    train, val = resolve_files(data)
    for path, key in ((train, "data.train_file"), (val, "data.validation_file")):
        if path is None:
            continue
        try:
            path = path.resolve()
            _read(path, data["task"], key, roles)
        except DataError as exc:
            problems.append(str(exc))
    return problems


def tokenize_files(tokenizer, data: dict[str, Any]) -> tuple[list[Example], list[Example] | None]:
    """(train examples, validation examples or None) of a chat/text data config, in file order, before the
    held-out split and the limits (what inputs/tokenized.py stores). The tokenizer must be prepared."""
    train_path, val_path = resolve_files(data)
    task = "text" if data["task"] == "text" else "chat"

    def tokenize(path: Path, key: str) -> list[Example]:
        raw = _read(path, task, key)
        if task == "text":
            return chunk_text(tokenizer, raw, data["max_seq_len"])
        return [e for e in tokenize_chats(tokenizer, raw, data["max_seq_len"]) if e is not None]

    return (tokenize(train_path, "data.train_file"),
            tokenize(val_path, "data.validation_file") if val_path else None)


def held_out(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """(train positions, eval positions) when no validation file is given: a fixed fraction held out.
    The split depends only on the data, not on the trial seed, so every trial of a sweep evaluates on the
    same examples."""
    order = list(range(n))
    random.Random(0).shuffle(order)
    n_val = max(1, int(n * fraction))
    return order[n_val:], order[:n_val]


def load_splits(tokenizer, data: dict[str, Any]) -> tuple[Sequence[Example], Sequence[Example]]:
    """Tokenized (train, eval) examples for a data config, in memory (token tasks: views of the memory-mapped
    files). No seed: the tokenization and the held-out split depend on the data only. A trial reads them
    through the shared on-disk cache instead (inputs/tokenized.py), which gives the same examples."""
    prepare_tokenizer(tokenizer)
    if is_token_task(data["task"]):
        return _load_token_splits(tokenizer, data)
    train, evals = tokenize_files(tokenizer, data)
    if evals is None:
        train_idx, eval_idx = held_out(len(train), data["validation_split"])
        train, evals = [train[i] for i in train_idx], [train[i] for i in eval_idx]
    return limit_and_check(train, evals, data)


def limit_and_check(train: Sequence[Example], evals: Sequence[Example],
                    data: dict[str, Any]) -> tuple[Sequence[Example], Sequence[Example]]:
    """Apply data.max_train_examples / max_eval_examples; DataError if a split ends up empty."""
    if data.get("max_train_examples"):
        train = train[: data["max_train_examples"]]
    if data.get("max_eval_examples"):
        evals = evals[: data["max_eval_examples"]]
    for name, split in (("train", train), ("validation", evals)):
        if not len(split):
            raise DataError(f"data: the {name} split is empty after tokenization with max_seq_len="
                            f"{data['max_seq_len']}; raise data.max_seq_len or add examples")
    return train, evals


# ------------------------------------------------------------------------ nanoGPT token files
#
# A token directory holds train.bin and val.bin: flat uint16 token ids with no header, exactly what
# nanoGPT's prepare.py writes (np.memmap(path, dtype=np.uint16, mode="r") reads them). Optional
# train_eot.npy / val_eot.npy: 1-D integer arrays of the positions of the end-of-text tokens, i.e.
# document i ends at (and includes) position eot[i]. Training cuts the stream into blocks; the
# document structure is only for callers of load_token_documents (document-level bounds).


def token_dir(data: dict[str, Any]) -> Path:
    """The token directory of a token-task data config (the builtin corpus is generated here)."""
    if data["task"] in sources.GENERATED_TASKS:
        return sources.generated_token_dir(data["task"])
    if not data.get("data_dir"):
        raise DataError(f"{_TOKENS_KEY}: not set; data.task 'tokens' needs the directory holding "
                        "train.bin and val.bin")
    return Path(data["data_dir"]).expanduser()


def open_tokens(directory: Path, split: str) -> np.ndarray:
    """`<split>.bin` as a read-only uint16 memmap; DataError (naming the file and fix) if malformed."""
    _check_split(split)
    path = directory / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"{_TOKENS_KEY}: {str(path)!r} does not exist; the directory must hold train.bin and "
                        "val.bin (flat uint16 token ids, as nanoGPT's prepare.py writes them)")
    size = path.stat().st_size
    if size == 0:  # np.memmap cannot map an empty file, and there would be nothing to train on
        raise DataError(f"{_TOKENS_KEY}: {str(path)!r} is empty; write the token ids with "
                        "np.array(ids, dtype=np.uint16).tofile(path)")
    if size % np.dtype(TOKEN_DTYPE).itemsize:
        raise DataError(f"{_TOKENS_KEY}: {str(path)!r} has an odd size ({size} bytes), so it is not a flat "
                        "array of uint16 token ids (truncated copy, or another dtype?); rewrite it with "
                        "np.array(ids, dtype=np.uint16).tofile(path)")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def read_eot(directory: Path, split: str, n_tokens: int) -> np.ndarray | None:
    """`<split>_eot.npy` as int64 positions, None if absent; DataError if malformed or out of range."""
    _check_split(split)
    path = directory / f"{split}_eot.npy"
    if not path.exists():
        return None
    fix = "write it with np.save(path, np.flatnonzero(tokens == eot_id).astype(np.int64)) or delete it"
    try:
        eot = np.load(path, mmap_mode="r", allow_pickle=False)  # mmap: large corpora have millions of docs
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{_TOKENS_KEY}: {str(path)!r} is not a readable .npy array ({exc}); {fix}") from None
    if not isinstance(eot, np.ndarray) or eot.ndim != 1 or eot.dtype.kind not in "iu":
        what = f"shape {eot.shape}, dtype {eot.dtype}" if isinstance(eot, np.ndarray) else type(eot).__name__
        raise DataError(f"{_TOKENS_KEY}: {str(path)!r} must be a 1-D integer array of end-of-text positions, "
                        f"got {what}; {fix}")
    if eot.size:
        lo, hi = int(eot.min()), int(eot.max())
        if lo < 0 or hi >= n_tokens:
            raise DataError(f"{_TOKENS_KEY}: {str(path)!r} has positions in [{lo}, {hi}], but {split}.bin has "
                            f"{n_tokens} tokens (valid: 0..{n_tokens - 1}); regenerate it from this {split}.bin")
    eot = np.asarray(eot, dtype=np.int64)
    if eot.size > 1 and not bool(np.all(np.diff(eot) > 0)):
        raise DataError(f"{_TOKENS_KEY}: {str(path)!r}: positions must be strictly increasing (one per "
                        "document, in stream order); sort them with np.unique")
    return eot


def _check_split(split: str) -> None:
    if split not in TOKEN_SPLITS:
        raise ValueError(f"split must be one of {TOKEN_SPLITS}, got {split!r}")


def _check_token_dir(data: dict[str, Any]) -> list[str]:
    try:
        directory = token_dir(data).resolve()
    except DataError as exc:
        return [str(exc)]
    if not directory.is_dir():
        return [f"{_TOKENS_KEY}: directory {str(directory)!r} does not exist; set it to the directory holding "
                "train.bin and val.bin (relative paths are relative to the directory you run raysweep from)"]
    problems = []
    for split in TOKEN_SPLITS:
        try:
            tokens = open_tokens(directory, split)
            read_eot(directory, split, len(tokens))  # its range check needs a valid .bin
        except DataError as exc:
            problems.append(str(exc))
    return problems


def _positions_of(tokens: np.ndarray, value: int, chunk: int = 1 << 24) -> np.ndarray:
    # chunked: `tokens == value` on a multi-GB memmap would allocate a bool array of the same length
    if not 0 <= value <= np.iinfo(TOKEN_DTYPE).max:
        return np.zeros(0, dtype=np.int64)
    found = [np.flatnonzero(tokens[i : i + chunk] == value) + i for i in range(0, len(tokens), chunk)]
    return np.concatenate(found or [np.zeros(0, dtype=np.int64)]).astype(np.int64)


def token_document_spans(data: dict[str, Any], split: str, eos_id: int | None = None) -> np.ndarray:
    """Document boundaries of a token split, as an int64 array of [start, end) rows (n_docs × 2).

    Boundaries come from `<split>_eot.npy` if the directory has it (document i ends with, and
    includes, the token at eot[i]); otherwise from the positions of `eos_id` in `<split>.bin` (pass
    `tokenizer.eos_token_id`, as nanoGPT's prepare.py appends the eot token after each document);
    with neither (no eot file, `eos_id` None or absent from the stream) the split is one document.
    Tokens after the last end-of-text token form a final document. Every document is non-empty.
    """
    directory = token_dir(data)
    tokens = open_tokens(directory, split)
    eot = read_eot(directory, split, len(tokens))
    if eot is None:
        eot = _positions_of(tokens, eos_id) if eos_id is not None else np.zeros(0, dtype=np.int64)
    ends = eot + 1
    if not ends.size or ends[-1] < len(tokens):
        ends = np.append(ends, len(tokens))
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1).astype(np.int64)


def load_token_documents(data: dict[str, Any], split: str, eos_id: int | None = None) -> list[np.ndarray]:
    """The documents of a token split (`split` is "train" or "val"), as uint16 token-id arrays.

    `data` is a data config dict (task 'tokens' with data_dir, or 'builtin_tokens'). Documents are
    split as `token_document_spans` describes (eot file, else `eos_id`, else one document) and keep
    their end-of-text token. They are read-only views of the memory-mapped .bin (no copy); use
    `doc.astype(np.int64)` for arithmetic. For corpora with millions of documents, sample from
    `token_document_spans` instead of materialising the list.
    """
    tokens = open_tokens(token_dir(data), split)
    return [tokens[start:end] for start, end in token_document_spans(data, split, eos_id)]


def token_blocks(tokens: np.ndarray, max_len: int, limit: int | None = None) -> TokenBlocks:
    """Consecutive blocks of max_len tokens (labels = inputs), at most `limit`; cut like chunk_text.
    A view of the (memory-mapped) stream: a block is read when it is used."""
    blocks = TokenBlocks(tokens, max_len)
    return blocks[:limit] if limit else blocks


def _load_token_splits(tokenizer, data: dict[str, Any]) -> tuple[TokenBlocks, TokenBlocks]:
    directory = token_dir(data)
    splits = []
    for split, limit in (("train", data.get("max_train_examples")), ("val", data.get("max_eval_examples"))):
        blocks = token_blocks(open_tokens(directory, split), data["max_seq_len"], limit)
        _check_vocab(blocks, len(tokenizer), directory / f"{split}.bin")
        splits.append(blocks)
    train, evals = splits
    limit_and_check(train, evals, {k: data.get(k) for k in ("max_seq_len",)})
    return train, evals


def _check_vocab(blocks: TokenBlocks, vocab_size: int, path: Path) -> None:
    # .bin files carry no tokenizer identity; an id past the embedding table would fail deep in torch
    problem = _vocab_problem(blocks.max_id(), vocab_size, path)
    if problem:
        raise DataError(problem)


def _vocab_problem(top: int, vocab_size: int, path: Path) -> str | None:
    if top < vocab_size:
        return None
    return (f"{_TOKENS_KEY}: {str(path)!r} holds token id {top}, but the model's tokenizer has "
            f"{vocab_size} tokens, so the files were made with another tokenizer; regenerate them "
            "with this model's tokenizer or set model.name_or_path to the model they were made for")


def check_token_vocab(data: dict[str, Any], vocab_size: int,
                      max_id: Callable[[Path, TokenBlocks], int] | None = None) -> list[str]:
    """Before Ray starts: the token ids a trial would read (the same blocks, example limits applied) are below
    `vocab_size`. `max_id(path, blocks)` lets the caller cache the scan of a large file. No torch."""
    if data["task"] in sources.GENERATED_TASKS or not is_token_task(data["task"]):
        return []  # generated token files are made with the builtin tokenizer (and built on first use only)
    problems = []
    directory = token_dir(data)
    for split, limit in (("train", data.get("max_train_examples")), ("val", data.get("max_eval_examples"))):
        path = directory / f"{split}.bin"
        try:
            blocks = token_blocks(open_tokens(directory, split), data["max_seq_len"], limit)
        except DataError:
            continue  # check_files reports an unreadable file
        problem = _vocab_problem(max_id(path, blocks) if max_id else blocks.max_id(), vocab_size, path)
        problems += [problem] if problem else []
    return problems
