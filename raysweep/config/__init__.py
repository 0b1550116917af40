"""The grid file: schema, reading and overrides, grid expansion, validation issues and rules.

Imports no torch, peft, Ray or anything below the config layer except the adapters' registry and option
models. The names below are the layer's public face; each lives in one module of this folder:
schema.py (the sections, validation of a trial and a sweep), issues.py (ConfigIssue, ConfigError),
rules.py (rules across sections), loading.py (reading the file, overrides), grid.py (expansion, trial configs).
"""

from __future__ import annotations

from raysweep.config.grid import Trial, expand, resolve, run_config, trial_config, trial_count
from raysweep.config.issues import ConfigError, ConfigIssue, pydantic_issues, suggest
from raysweep.config.loading import apply_overrides, load, read_yaml
from raysweep.config.rules import validate_scheduler, validate_search, zero_stage
from raysweep.config.schema import (
    NAME_PATTERN,
    SECTIONS_IN_TRIAL,
    AdapterConfig,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    ResourcesConfig,
    SearchConfig,
    Sweep,
    TrainConfig,
    TrialConfig,
    axis_paths,
    validate_adapter_options,
    validate_sweep,
    validate_trial,
)

__all__ = [
    "NAME_PATTERN", "SECTIONS_IN_TRIAL", "AdapterConfig", "ConfigError", "ConfigIssue", "DataConfig",
    "EarlyStoppingConfig", "ModelConfig", "ResourcesConfig", "SearchConfig", "Sweep", "TrainConfig", "Trial",
    "TrialConfig", "apply_overrides", "axis_paths", "expand", "load", "pydantic_issues", "read_yaml", "resolve",
    "run_config", "suggest", "trial_config", "trial_count", "validate_adapter_options", "validate_scheduler",
    "validate_search", "validate_sweep", "validate_trial", "zero_stage",
]
