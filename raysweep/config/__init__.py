"""The grid file: schema, reading and overrides, grid expansion, validation issues and rules.

Imports no torch, peft, Ray or anything below the config layer except the adapters' option models.
The names below are the layer's public face; each lives in one module of this folder.
"""

from __future__ import annotations

from raysweep.config.schema import (
    NAME_PATTERN,
    SECTIONS_IN_TRIAL,
    AdapterConfig,
    ConfigError,
    ConfigIssue,
    DataConfig,
    ModelConfig,
    ResourcesConfig,
    SearchConfig,
    Sweep,
    TrainConfig,
    TrialConfig,
    _suggest,
    apply_overrides,
    axis_paths,
    read_yaml,
    validate_adapter_options,
    validate_sweep,
    validate_trial,
)
