"""Base model and tokenizer: 'builtin', a Hugging Face id, or a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUILTIN = "builtin"


def _looks_like_path(name: str) -> bool:
    # a hub id is "org/name"; anything that exists on disk or starts like a path is a local path
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def check_source(name_or_path: str) -> str | None:
    """A problem with `model.name_or_path` found before Ray starts (None: looks usable)."""
    if name_or_path == BUILTIN:
        return None
    path = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path):
        if not path.exists():
            return (f"model.name_or_path: local path {name_or_path!r} does not exist; give a model directory "
                    "(with config.json), a Hugging Face id, or 'builtin'")
        if not (path / "config.json").is_file():
            return (f"model.name_or_path: {name_or_path!r} has no config.json; point it to a directory "
                    "written by save_pretrained")
        return None
    try:  # a hub id: fetch (or find cached) its config only, which is small
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name_or_path)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return (f"model.name_or_path: {name_or_path!r} is neither a local directory nor a reachable "
                f"Hugging Face id ({reason}); fix the id or path, or use 'builtin'")
    return None


def resolve(name_or_path: str) -> str:
    """The string to hand to from_pretrained (the builtin model is created on first use)."""
    if name_or_path == BUILTIN:
        from raysweep.builtin import ensure_builtin_model

        return str(ensure_builtin_model())
    path = Path(name_or_path).expanduser()
    return str(path) if path.exists() else name_or_path


def load(model_cfg: dict[str, Any]):
    """(model, tokenizer) on CPU in the configured dtype; the caller moves it to its device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(model_cfg["name_or_path"])
    dtype = getattr(torch, model_cfg.get("dtype", "float32"))
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.get("trust_remote_code", False))
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=model_cfg.get("trust_remote_code", False)
    )
    return model, tokenizer
