"""Validation problems: `ConfigIssue(path, message)` where `path` is the YAML key path a user edits, e.g.
`train.lr` or `grid[1].adapter.r`, and `ConfigError` carrying all of them (the CLI prints them and exits 2);
pydantic's errors turned into issues, with the field's help as the fix and "did you mean" suggestions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """All problems of a grid file; `str()` is what the CLI prints."""

    def __init__(self, source: str, issues: list[ConfigIssue]):
        self.source = source
        self.issues = issues
        lines = [f"{source}: {len(issues)} problem(s)"] + [f"  - {i}" for i in issues]
        super().__init__("\n".join(lines))


def _loc_to_path(loc: tuple, prefix: str = "") -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    path = ".".join(parts)
    return f"{prefix}.{path}" if prefix and path else (prefix or path)


def field_help(model: type[BaseModel], loc: tuple) -> str | None:
    """The description of the field at `loc` (used as the 'how to fix' part of a message)."""
    current: Any = model
    field = None
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        field = fields[part]
        current = field.annotation
    return field.description if field else None


def _model_at(model: type[BaseModel], loc: tuple) -> Any:
    """The annotation of the field at `loc` (the model itself for an empty loc), or None."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = fields[part].annotation
    return current


_TYPE_TAGS = ("str", "int", "float", "bool", "none", "dict", "list")


def _is_type_tag(part: Any) -> bool:
    # pydantic names the union member it tried, e.g. ('target_modules', 'list[str]', 0): a type, not a key
    text = str(part)
    return text.startswith("function-") or "[" in text or text in _TYPE_TAGS


# names researchers bring from other tools' configs
_ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
            "learning_rate": "lr", "steps": "max_steps", "num_epochs": "epochs", "seq_len": "max_seq_len",
            "model": "name_or_path", "path": "name_or_path", "target": "target_modules"}


def suggest(name: str, candidates: list[str]) -> str:
    """'; did you mean ...?' for a misspelt or foreign key name ('' if nothing is close)."""
    head, _, leaf = name.rpartition(".")
    alias = f"{head}.{_ALIASES[leaf]}" if head and leaf in _ALIASES else _ALIASES.get(leaf)
    if alias in candidates:
        return f"; did you mean {alias!r}?"
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8 if "." in name else 0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def pydantic_issues(model: type[BaseModel], exc: ValidationError, prefix: str = "") -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc_to_path(loc, prefix)
        if err["type"] == "extra_forbidden":
            parent = model
            for part in loc[:-1]:
                fields = getattr(parent, "model_fields", {})
                parent = fields[part].annotation if part in fields else None
            known = list(getattr(parent, "model_fields", {}))
            msg = f"unknown key{suggest(str(loc[-1]), known)} (valid keys: {', '.join(known)})"
        elif err["type"] in ("model_type", "dict_type"):  # e.g. `train: 5`; pydantic names our class
            keys = list(getattr(_model_at(model, loc), "model_fields", {}))[:3]
            example = f" such as {', '.join(keys)}" if keys else ""
            fix = "remove the empty key or give its keys" if err.get("input") is None else "indent its keys under it"
            msg = f"must be a mapping of keys{example} (got {err.get('input')!r}); {fix}"
        else:
            union = err["type"] != "value_error" and any(_is_type_tag(p) and "function-" not in str(p) for p in loc)
            loc = tuple(p for p in loc if not _is_type_tag(p))
            path = _loc_to_path(loc, prefix)
            hint = field_help(model, loc)
            msg = err["msg"].removeprefix("Value error, ")
            if union and hint:  # one message for the union, not one per member type tried
                msg = f"wrong type (got {err.get('input')!r}); expected: {hint}"
            elif err["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {err.get('input')!r})"
                if hint:
                    msg += f"; expected: {hint}"
        issues.append(ConfigIssue(path, msg))
    return list(dict.fromkeys(issues))
