"""Tokenized datasets on disk: built once per sweep (and per storage), memory-mapped by every trial.

A chat or text dataset is tokenized by the first trial that needs it, under a file lock (inputs/cache.py
build_once: other trials wait, a crashed build leaves nothing half-written), into
`<storage>/tokenized/<task>-<hash>/` next to the sweep's experiments (shared storage on a cluster, so
every node reads the one copy; outside a sweep the user cache). Every later trial, process and node, and
every later sweep with the same key, opens it memory-mapped: the OS shares its pages between processes,
a trial holds no Python copy of the data.

The key (`cache_key`) is everything the tokens depend on: the tokenizer's files (the builtin tokenizer's
version), the data config except the example limits, every data file's path, size and modification time,
this module's FORMAT_VERSION and the default chat template. `train.seed` is not in it: the seed only
orders the training examples. Token tasks (nanoGPT .bin) need no cache: they are memory-mapped already.

Format: numpy `.npy` files (ids and labels as flat int32, offsets int64) opened with mmap_mode="r": no
dependency beyond numpy in a trial process (HF `datasets`' Arrow files would add a ~1 s import to every
trial process and a fingerprint over pickled tokenizer objects), slices are zero-copy, and anyone can read
them (np.load). Layout of one entry:
  train_ids.npy / train_labels.npy / train_offsets.npy   the training file's examples, in file order
  validation_*.npy                                        the validation file's, if data.validation_file
  meta.json                                               the key, counts, token counts, seconds it took
`<storage>/tokenized/builds.log` gets one line per tokenization (what tests and `plan` count).
Torch-free (`plan` reads `state`).
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raysweep.experiment import storage
from raysweep.experiment.layout import TOKENIZED_DIR
from raysweep.inputs import data, examples, sources
from raysweep.inputs.cache import build_once, default_cache_dir
from raysweep.inputs.examples import Example
from raysweep.inputs.splits import ExampleArrays

FORMAT_VERSION = 1  # bump when the tokenization rule changes (labels, truncation, text blocks)
META_FILE = "meta.json"
BUILDS_LOG = "builds.log"
LIMIT_KEYS = ("max_train_examples", "max_eval_examples")  # applied when opened: a data-size sweep shares one entry
TOKENIZER_FILES = ("config.json", "tokenizer*", "special_tokens_map.json", "vocab*", "merges.txt", "*.model",
                   "*.tiktoken", "chat_template*")


def root_dir(store: str | Path | None) -> Path:
    """Where the entries live: <storage>/tokenized/ (the sweep's storage root), else the user cache. An
    object-store root (s3://) keeps them in each node's local mirror of it: they are memory-mapped."""
    if storage.is_uri(store):
        return storage.mirror_of(storage.join(str(store), TOKENIZED_DIR))
    return Path(store or default_cache_dir()) / TOKENIZED_DIR


def uses_cache(data_cfg: dict[str, Any]) -> bool:
    """Whether this data is tokenized (chat, text, builtin); token files are read as they are."""
    return not data.is_token_task(data_cfg["task"])


def _tokenizer_identity(model_cfg: dict[str, Any]) -> list:
    from raysweep.inputs import models

    if model_cfg["name_or_path"] == models.BUILTIN:  # generated per version, the same on every node
        return ["builtin", sources.builtin_model_version()]
    source = models.resolve(model_cfg["name_or_path"])
    directory = Path(source)
    if not directory.is_dir():  # a hub id: its cache is content-addressed per revision
        return [source]
    files = sorted({f for pattern in TOKENIZER_FILES for f in directory.glob(pattern) if f.is_file()})
    return [source, [[f.name, *_stamp(f)] for f in files]]


def _stamp(path: Path) -> list[int]:
    """[modification time in ns, size] of a file ([] if it cannot be read: the trial will say why)."""
    try:
        st = path.stat()
    except OSError:
        return []
    return [st.st_mtime_ns, st.st_size]


def cache_key(model_cfg: dict[str, Any], data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything the tokenized examples depend on, JSON-able (the entry's name hashes it). No torch."""
    files = [f.resolve() for f in data.resolve_files(data_cfg) if f]
    return {"format": FORMAT_VERSION,
            "template": hashlib.sha256(examples.DEFAULT_CHAT_TEMPLATE.encode()).hexdigest()[:12],
            "tokenizer": _tokenizer_identity(model_cfg),
            "data": {k: v for k, v in sorted(data_cfg.items()) if k not in LIMIT_KEYS},
            "files": [[str(f), *_stamp(f)] for f in files]}


def entry_dir(root: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{key['data']['task']}-{digest}"


def state(root: Path, key: dict[str, Any]) -> tuple[bool, int]:
    """(built?, bytes on disk) of the entry for `key`."""
    directory = entry_dir(root, key)
    if not directory.is_dir():
        return False, 0
    return True, sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def _write(directory: Path, name: str, rows: list[Example]) -> int:
    ids, labels, offsets = array("i"), array("i"), array("q", [0])
    for e in rows:
        ids.extend(e.input_ids)
        labels.extend(e.labels)
        offsets.append(len(ids))
    for suffix, values, dtype in (("ids", ids, np.int32), ("labels", labels, np.int32),
                                  ("offsets", offsets, np.int64)):
        np.save(directory / f"{name}_{suffix}.npy", np.frombuffer(values, dtype=dtype) if len(values) else
                np.zeros(0, dtype=dtype))
    return len(ids)


def _open(directory: Path, name: str) -> ExampleArrays | None:
    if not (directory / f"{name}_offsets.npy").is_file():
        return None
    ids, labels, offsets = (np.load(directory / f"{name}_{s}.npy", mmap_mode="r")
                            for s in ("ids", "labels", "offsets"))
    return ExampleArrays(ids, labels, offsets)


def build(tokenizer, data_cfg: dict[str, Any], directory: Path, key: dict[str, Any]) -> None:
    """Tokenize the data files of `data_cfg` into `directory` (a fresh temp dir that build_once renames)."""
    t0 = time.perf_counter()
    train, validation = data.tokenize_files(tokenizer, data_cfg)
    meta: dict[str, Any] = {"key": key, "examples": {}, "tokens": {}}
    for name, rows in (("train", train), ("validation", validation)):
        if rows is not None:
            meta["tokens"][name] = _write(directory, name, rows)
            meta["examples"][name] = len(rows)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


def load(tokenizer, model_cfg: dict[str, Any], data_cfg: dict[str, Any], store: str | Path | None,
         on_build: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """The (train, eval) splits of a trial, memory-mapped from the shared cache, built first if missing.

    The same examples in the same order as `data.load_splits` (the held-out split and the limits are applied
    to the opened arrays the same way). `on_build` is called when this call tokenized the data."""
    data.prepare_tokenizer(tokenizer)
    if not uses_cache(data_cfg):
        return data.load_splits(tokenizer, data_cfg)
    key = cache_key(model_cfg, data_cfg)
    root = root_dir(store)
    built_here = []

    def build_entry(tmp: Path) -> None:
        build(tokenizer, data_cfg, tmp, key)
        built_here.append(True)

    directory = build_once(entry_dir(root, key), build_entry)
    if built_here:
        with (root / BUILDS_LOG).open("a") as log:  # appends of one short line are atomic enough to count
            log.write(json.dumps({"entry": directory.name, "time": time.time()}) + "\n")
        if on_build:
            on_build()
    train, validation = _open(directory, "train"), _open(directory, "validation")
    if validation is None:
        train_idx, eval_idx = data.held_out(len(train), data_cfg["validation_split"])
        train, validation = train.take(train_idx), train.take(eval_idx)
    return data.limit_and_check(train, validation, data_cfg)


def builds(store: str | Path | None) -> int:
    """How many tokenizations the cache under `store` has recorded (tests, benchmarks)."""
    log = root_dir(store) / BUILDS_LOG
    return len(log.read_text().splitlines()) if log.is_file() else 0
