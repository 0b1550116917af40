"""The builtin fine-tuning task: a secret two-alphabet letter cipher, as chat JSONL.

The pretrained builtin model already copies and alphabet-shifts letter sequences,
but has never seen the "encode" mapping, so eval loss and exact-match start
near chance and fine-tuning has to learn two new 26-letter maps on top of the
pretrained alignment skill (see corpus.py for why rank matters).
"""

from __future__ import annotations

import json
from pathlib import Path

from raysweep.inputs.cache import build_once, default_cache_dir

from .corpus import Example, task_splits

# Part of the directory name: bump when the generator or sizes change.
TASK_VERSION = "v1"
N_TRAIN, N_VAL = 2000, 200


def _write_jsonl(path: Path, examples: list[Example]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for messages in examples:
            f.write(json.dumps({"messages": messages}) + "\n")


def _build(out: Path) -> None:
    train, val = task_splits(N_TRAIN, N_VAL)
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "validation.jsonl", val)


def ensure_builtin_task(cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(train.jsonl, validation.jsonl) of the builtin task, built once and cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    d = build_once(root / "tasks" / f"builtin-{TASK_VERSION}", _build)
    return d / "train.jsonl", d / "validation.jsonl"
