"""λ schedules of the gated adapters (torch-free): a value of λ at a point p ∈ [0, 1] between `lambda` and
`lambda_final`, used two ways —

- continuous (`lambda_schedule` without `lambda_stages`): p = the fraction of training done at each step;
- staged (`lambda_stages: n`, the SoRA reference's sparsifying scheduler, "Algorithm 1"): the main run keeps
  λ_0 = lambda, then stage k = 1 … n−1 runs `stage_steps` more steps with λ_k at p = k/(n−1), i.e. the k-th
  entry of the reference's n-value list (np.linspace's spacing).

The names and formulas are the reference's (TsinghuaC3I/SoRA, its optimizer's lambda list), for a = lambda,
b = lambda_final:
  linear      a + (b − a)·p                                   (linspace(a, b))
  log_linear  log(e^a + (e^b − e^a)·p)                        (log of linspace(e^a, e^b))
  exp_linear  exp(log a + (log b − log a)·p), geometric       (exp of linspace(log a, log b))
and raysweep's own
  exp         a + (b − a)·(e^{5p} − 1)/(e^5 − 1)              (slow start, fast end).
raysweep's `log_linear` used to be the geometric schedule; that one is `exp_linear` now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "linear", "log_linear", "exp_linear", "exp")


def lambda_at(p: float, start: float, final: float | None, schedule: str) -> float:
    """λ at point p ∈ [0, 1] (clamped) of a schedule from `start` to `final` (`final` None: constant)."""
    p = min(max(p, 0.0), 1.0)
    if schedule == "constant" or final is None:
        return start
    if schedule == "linear":
        return start + (final - start) * p
    if schedule == "log_linear":
        return math.log(math.exp(start) + (math.exp(final) - math.exp(start)) * p)
    if schedule == "exp_linear":
        return math.exp(math.log(start) + (math.log(final) - math.log(start)) * p)
    if schedule == "exp":
        return start + (final - start) * (math.exp(5 * p) - 1) / (math.exp(5) - 1)
    raise ValueError(f"unknown lambda_schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def stage_lambdas(start: float, final: float, stages: int, schedule: str) -> list[float]:
    """The staged schedule's λ values: λ_0 (the main run) … λ_{n−1}, the reference's n-value list."""
    if stages == 1:
        return [start]
    return [lambda_at(k / (stages - 1), start, final, schedule) for k in range(stages)]


@dataclass(frozen=True)
class StagePlan:
    """A staged schedule laid over a trial's optimizer steps: the main run (λ_0), then one stage of
    `stage_steps` per further λ. The loop evaluates at every end and stops at the last."""

    main_steps: int
    stage_steps: int
    lambdas: tuple[float, ...]  # λ_0 (the main run) … λ_{n−1}

    @property
    def ends(self) -> list[int]:
        return [self.main_steps + k * self.stage_steps for k in range(len(self.lambdas))]

    def stage(self, step: int) -> int:
        """The stage of (0-based) optimizer step `step`: 0 for the main run, k for the k-th extra stage."""
        if step < self.main_steps:
            return 0
        return min(1 + (step - self.main_steps) // self.stage_steps, len(self.lambdas) - 1)
