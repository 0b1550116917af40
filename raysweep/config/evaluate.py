"""The `evaluate:` section of grid.yaml: task metrics of every trial (lm-evaluation-harness tasks and greedy
generation of the chat answers), and the untuned base's same metrics as the baseline.

Pydantic only (no torch, no lm_eval): plan validates it before anything heavy is imported. Whether the task
names exist is a question for lm-eval's task index, asked by the CLI's preflight (cli/preflight.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GENERATION_METRICS = ("exact_match", "f1")


class _Options(BaseModel):
    # extra="forbid": a typo such as `evaluate.lm_eval.task` must be an error, not silently ignored
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationOptions(_Options):
    max_new_tokens: int = Field(64, gt=0, description="tokens generated per answer (greedy)")
    max_examples: int | None = Field(200, gt=0, description="validation examples generated for (empty: all)")
    metrics: list[Literal["exact_match", "f1"]] = Field(
        default_factory=lambda: list(GENERATION_METRICS),
        description="exact_match and/or f1 against the reference answer, SQuAD-style normalisation")

    @field_validator("metrics")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("empty: give exact_match and/or f1, or remove evaluate.generation")
        return list(dict.fromkeys(value))


class LmEvalOptions(_Options):
    tasks: list[str] = Field(
        ..., description="lm-evaluation-harness task names (e.g. [boolq, hellaswag]) or paths of local task "
        "YAML files")
    num_fewshot: int = Field(0, ge=0, description="few-shot examples per prompt")
    limit: int | None = Field(None, gt=0, description="examples per task (empty: the whole test split)")
    batch_size: int = Field(16, gt=0, description="lm-eval's batch size")
    apply_chat_template: bool | None = Field(
        None, description="render prompts with the chat template the trials train with (empty: for chat data, "
        "data.task builtin or chat)")

    @field_validator("tasks")
    @classmethod
    def _some_tasks(cls, value: list[str]) -> list[str]:
        if not value or any(not str(t).strip() for t in value):
            raise ValueError("give one or more task names or task YAML paths, e.g. tasks: [boolq]")
        return value


class EvaluateConfig(_Options):
    when: Literal["end", "every_eval", "best"] = Field(
        "end", description="which weights get task metrics: 'end' (the final ones), 'every_eval' (at every eval "
        "after step 0: costs an evaluation each time) or 'best' (the best eval loss's, at the end)")
    # annotated without `| None` (the default None is never validated): a misspelt key under these sections
    # is then reported with the section's valid keys (config/issues.py follows plain model annotations)
    generation: GenerationOptions = Field(
        None, description="greedy generation of the assistant turn on the chat validation split: gen/exact_match, "
        "gen/f1")
    lm_eval: LmEvalOptions = Field(None, description="lm-evaluation-harness tasks: task/<task>/<metric>")
    baseline: bool = Field(True, description="also evaluate the untuned base once (per distinct model and "
                           "settings, shared by every trial and sweep on the storage): analyze shows deltas to it")

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> EvaluateConfig:
        if self.generation is None and self.lm_eval is None:
            raise ValueError("evaluate needs evaluate.generation or evaluate.lm_eval (or both); remove the "
                             "evaluate section to skip task metrics")
        return self
