"""Builtin model, tokenizer and task: a sweep that runs offline, in seconds, on CPU.

`model.name_or_path: builtin` and `data.task: builtin` resolve to local
directories/files created on first use (see ensure_builtin_model/_task).
"""

from __future__ import annotations

from .cache import default_cache_dir
from .model import ensure_builtin_model
from .task import ensure_builtin_task

BUILTIN_MODEL = "builtin"  # the name users write as model.name_or_path
BUILTIN_TASK = "builtin"  # the name users write as data.task

__all__ = [
    "BUILTIN_MODEL",
    "BUILTIN_TASK",
    "default_cache_dir",
    "ensure_builtin_model",
    "ensure_builtin_task",
]
