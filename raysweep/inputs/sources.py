"""Where a trial's model and data come from: the names users write, turned into files on disk.

`model.name_or_path: builtin`, `data.task: builtin` and `data.task: builtin_tokens` name artifacts that
raysweep generates deterministically on first use (builtin/). This module is the one caller of builtin/:
data.py and models.py parse the paths it gives them, and the CLI asks it to build the artifacts once before
Ray starts rather than racing in every trial.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODEL = "builtin"  # model.name_or_path of the tiny local model
BUILTIN_TASK = "builtin"  # data.task of the generated chat task
BUILTIN_TOKENS = "builtin_tokens"  # data.task of the generated nanoGPT-style token corpus
GENERATED_TASKS = (BUILTIN_TASK, BUILTIN_TOKENS)


def generated_files(task: str) -> tuple[Path, Path]:
    """(train, validation) files of a generated task (created on first use)."""
    if task == BUILTIN_TOKENS:
        directory = generated_token_dir(task)
        return directory / "train.bin", directory / "val.bin"
    from raysweep.inputs.builtin import ensure_builtin_task

    return ensure_builtin_task()


def generated_token_dir(task: str) -> Path:
    """The token directory (train.bin, val.bin, eot indices) of the generated token corpus."""
    if task != BUILTIN_TOKENS:
        raise ValueError(f"data.task {task!r} has no generated token directory")
    from raysweep.inputs.builtin import ensure_builtin_tokens

    return ensure_builtin_tokens()


def builtin_model_dir() -> Path:
    from raysweep.inputs.builtin import ensure_builtin_model

    return ensure_builtin_model()


def builtin_model_version() -> int:
    """The builtin model is generated deterministically per version: its identity on every node."""
    from raysweep.inputs.builtin.model import MODEL_VERSION

    return MODEL_VERSION


def needs_building(model_names: set[str], tasks: set[str]) -> bool:
    return BUILTIN_MODEL in model_names or bool(tasks & set(GENERATED_TASKS))


def build_generated(model_names: set[str], tasks: set[str]) -> None:
    """Create the generated model and data these trials use (the builtin model's tokenizer is needed by
    every generated task, so it is built whenever anything generated is used)."""
    if not needs_building(model_names, tasks):
        return
    builtin_model_dir()
    generated_files(BUILTIN_TASK)
    if BUILTIN_TOKENS in tasks:
        generated_token_dir(BUILTIN_TOKENS)
