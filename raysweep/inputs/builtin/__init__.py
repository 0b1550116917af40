"""Builtin model, tokenizer and task: a sweep that runs offline, in seconds, on CPU.

`model.name_or_path: builtin`, `data.task: builtin` and `data.task: builtin_tokens` resolve to local
directories/files created on first use (see ensure_builtin_model/_task/_tokens).
"""

from __future__ import annotations

from .cache import default_cache_dir
from .model import ensure_builtin_model
from .task import ensure_builtin_task
from .tokens import ensure_builtin_tokens

BUILTIN_MODEL = "builtin"  # the name users write as model.name_or_path
BUILTIN_TASK = "builtin"  # the name users write as data.task
BUILTIN_TOKENS = "builtin_tokens"  # data.task of the builtin nanoGPT-style token corpus

__all__ = [
    "BUILTIN_MODEL",
    "BUILTIN_TASK",
    "BUILTIN_TOKENS",
    "default_cache_dir",
    "ensure_builtin_model",
    "ensure_builtin_task",
    "ensure_builtin_tokens",
]
