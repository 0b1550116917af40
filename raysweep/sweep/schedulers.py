"""How Tune chooses and stops trials: the trial schedulers of `search.scheduler` (judging trials on their
evals only) and the searchers of `search.algorithm`."""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from raysweep.config import Sweep
from raysweep.experiment import metrics as M

# --------------------------------------------------------------------------------------------------
# trial schedulers (search.scheduler): they judge trials on their evals only


class _JudgeOnEvals:
    """Hands a Tune scheduler one result per eval, timed by `eval/step`.

    Every report of a trial carries its latest eval numbers, but log-only reports between evals repeat
    them (`eval/step` says when they were measured), and how many log reports fall between two evals
    depends on wall time (trial/loop.py MIN_REPORT_INTERVAL_S). So the scheduler's time attribute is `eval/step`
    (the metric and its time always belong together) and it sees only a result whose eval it has not
    seen: ASHA records a trial at a rung from the eval at that step (config/rules.py validate_scheduler
    keeps rungs on evals), and the median rule's running means weigh every eval once. A trial is never stopped
    at its last step (it is ending anyway) and never paused (the median rule pauses trials that lack
    comparisons while others wait; here they just continue).
    """

    def _init_evals(self, max_steps: int) -> None:
        self._max_steps = max_steps
        self._judged: dict[str, float] = {}  # trial id -> the eval step last passed to the scheduler

    def _new_eval(self, trial, result: dict) -> bool:
        step = result.get(M.EVAL_STEP)
        if step is None or step <= self._judged.get(trial.trial_id, -1):
            return False
        self._judged[trial.trial_id] = step
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._new_eval(trial, result):
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result[M.EVAL_STEP] < self._max_steps:
            return action
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        # Tune passes the last result again; the schedulers would count an eval they have seen twice
        if self._new_eval(trial, result):
            super().on_trial_complete(tune_controller, trial, result)


def build_scheduler(sweep: Sweep):
    """The Tune scheduler of `search.scheduler` (None: Tune's FIFO), deciding on `search.metric`."""
    search, train = sweep.search, sweep.train
    if search.scheduler == "fifo":
        return None
    grace = search.resolved_grace_period(train.max_steps, train.eval_every)
    common = {"time_attr": M.EVAL_STEP, "metric": search.metric, "mode": search.mode, "grace_period": grace}
    if search.scheduler == "asha":
        scheduler = _EvalASHA(max_t=train.max_steps, reduction_factor=search.reduction_factor, brackets=1,
                              stop_last_trials=False, **common)
    else:
        scheduler = _EvalMedianStopping(min_samples_required=search.min_samples_required, hard_stop=True, **common)
    scheduler._init_evals(train.max_steps)  # noqa: SLF001 - our own mixin
    return scheduler


class _EvalASHA(_JudgeOnEvals, ASHAScheduler):
    pass


class _EvalMedianStopping(_JudgeOnEvals, MedianStoppingRule):
    pass


# --------------------------------------------------------------------------------------------------
# search algorithms (search.algorithm)


def build_search_alg(sweep: Sweep):
    """The Tune searcher of `search.algorithm` (None: Tune's default grid/variant generator).

    random: Tune's variant generator with a seeded random state (the grid's cells in order, each range
    drawn per cell and sample). optuna: Optuna's TPE sampler through Tune's OptunaSearch, seeded, on
    search.metric/mode or on several search.objectives (multi-objective TPE); it is told each trial's last
    result, so it learns from finished trials and from trials an early-stopping scheduler ended.
    """
    search = sweep.search
    if search.algorithm == "grid":
        return None
    if search.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed)
    from ray.tune.search.optuna import OptunaSearch

    if search.objectives and len(search.objectives) > 1:
        metric, mode = list(search.objectives), list(search.objectives.values())
    else:
        metric, mode = next(iter((search.objectives or {search.metric: search.mode}).items()))
    return OptunaSearch(metric=metric, mode=mode, seed=search.seed)
