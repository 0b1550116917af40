"""Reading grid.yaml: the YAML itself (keys given twice are an error), `key.path=value` overrides, and
`load(path, overrides)`, which validates everything and expands the grid."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raysweep.config.grid import Trial, expand, set_path
from raysweep.config.issues import ConfigError, ConfigIssue
from raysweep.experiment import storage

if TYPE_CHECKING:
    from raysweep.config.schema import Sweep


def load(path, overrides: list[str] | None = None) -> tuple[dict[str, Any], Sweep, list[Trial]]:
    """Read grid.yaml, apply overrides, validate everything. Returns (raw, sweep, trials)."""
    raw = read_yaml(path)
    issues = apply_overrides(raw, list(overrides or []))
    if issues:
        raise ConfigError(str(path), issues)
    try:
        sweep, trials = expand(raw)
    except ConfigError as exc:
        raise ConfigError(str(path), exc.issues) from None
    return raw, sweep, trials


def read_yaml(path: str | Path) -> dict[str, Any]:
    if storage.is_uri(path):  # an experiment's raysweep.yaml in object storage (resume s3://…)
        return _read_remote_yaml(str(path))
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(str(path), [ConfigIssue("", f"grid file {str(path)!r} {what}; give the path of a grid "
                                                      "YAML file, e.g. search_spaces/quickstart.yaml")])
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"cannot read the grid file ({exc}); save it as UTF-8 "
                                                      "text you can read")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            str(path), [ConfigIssue("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}")]
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [ConfigIssue("", "the top level must be a mapping (key: value lines)")])
    duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    if duplicates:
        raise ConfigError(str(path), duplicates)
    raw.setdefault("name", path.stem)
    return raw


def _read_remote_yaml(location: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(storage.read_text(location))
    except FileNotFoundError:
        raise ConfigError(location, [ConfigIssue("", f"{location} does not exist; give the experiment path "
                                                     "printed by `raysweep run`")]) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(location, [ConfigIssue("", f"cannot read it ({exc})")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(location, [ConfigIssue("", "the top level must be a mapping (key: value lines)")])
    return raw


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[ConfigIssue]:
    """Keys given twice in one mapping. PyYAML silently keeps the last one, so `lr: 1e-3` ... `lr: 1e-2`
    would run a value the user may not have meant; duplicates are an error instead."""
    issues = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            child = f"{path}.{name}" if path else name
            line = key.start_mark.line + 1
            if name in first_line:
                issues.append(ConfigIssue(child, f"set twice (lines {first_line[name]} and {line}); keep one"))
            first_line.setdefault(name, line)
            issues += _duplicate_keys(value, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            issues += _duplicate_keys(item, f"{path}[{i}]")
    return issues


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[ConfigIssue]:
    """Apply `key.path=value` overrides in place (values parsed as YAML).

    `grid.<axis>=[..]` sets that axis in every sub-grid. Overriding a key that is a grid axis
    (e.g. `adapter.r=8` when the grid sweeps adapter.r) fixes it: the axis is removed.
    """
    issues = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(ConfigIssue(item, "an override is key.path=value, e.g. train.max_steps=50"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        grid = raw.get("grid")
        if key.startswith("grid."):
            axis = key[len("grid."):]
            if not grid:
                raw["grid"] = {axis: value}
            for sub in grid if isinstance(grid, list) else [grid] if isinstance(grid, dict) else []:
                if isinstance(sub, dict):
                    sub[axis] = value
            continue
        for sub in grid if isinstance(grid, list) else [grid]:
            if isinstance(sub, dict):
                sub.pop(key, None)
        set_path(raw, key, value)
    return issues
