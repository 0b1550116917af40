"""Builtin model, tokenizer and task: a sweep that runs offline, in seconds, on CPU.

`model.name_or_path: builtin`, `data.task: builtin` and `data.task: builtin_tokens` resolve to local
directories/files created on first use (see ensure_builtin_model/_task/_tokens); only inputs/sources.py
calls them.
"""

from __future__ import annotations

from raysweep.inputs.cache import default_cache_dir  # noqa: F401 - where the artifacts live

from .model import ensure_builtin_model
from .task import ensure_builtin_task
from .tokens import ensure_builtin_tokens

__all__ = [
    "default_cache_dir",
    "ensure_builtin_model",
    "ensure_builtin_task",
    "ensure_builtin_tokens",
]
