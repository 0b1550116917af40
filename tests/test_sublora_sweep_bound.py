"""The best bound of a SubLoRA sweep pays ln N nats for choosing one trial among N: it equals every trial's bound
recomputed at confidence δ/N (coding.py's own formula), may pick another trial than the per-trial minimum,
and `analyze` prints it beside the per-trial bounds."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from analysis import sweep_bounds as SB
from analysis.load import print_overview, ran_to_end
from raysweep.adapters.sublora import coding as B
from raysweep.experiment import metrics as M
from raysweep.experiment.layout import BOUNDS_REPORT

ALPHAS = (0.01, 0.1, 0.5)
VOCAB = 50


def _smoothed(p: float, m: int, n: int | None, delta: float) -> B.SmoothedBPD:
    probs = [np.full(5, p)] * (n or m)
    return B.smoothed_bpd_bound(probs, VOCAB, 50.0, m, delta, ALPHAS, n_sampled=n,
                                delta_split=B.delta_split("proportional", n, m))


def _report(p: float, m: int, n: int | None) -> dict:
    """A bounds.json with the fields the sweep bound reads (document level: bpd rows and a top-1 bound)."""
    smoothed = _smoothed(p, m, n, 0.05)
    top1 = B.topk_error_bound(50.0, m, error_rate=1 - p, delta=0.05, n_sampled=n,
                              delta_split=B.delta_split("proportional", n, m))
    rows = [{"alpha": r.alpha, "bound": dataclasses.asdict(r.bound)} for r in smoothed.rows]
    return {"levels": {"document": {"bpd": {"rows": rows, "bound": dataclasses.asdict(smoothed.best.bound)},
                                    "top_k": {"1": dataclasses.asdict(top1)}}}}


@pytest.mark.parametrize("n", [None, 200])
@pytest.mark.parametrize("n_configs", [1, 2, 53, 10**6])
def test_extra_nats_equal_the_bound_at_delta_over_n(n, n_configs):
    m, nats = 2000, math.log(n_configs)
    split = B.delta_split("proportional", n, m)
    for width, extra in ((1.0, 0.0), (9.3, math.log(9))):
        if n is None:
            own = B.pac_bayes_bound(0.4, 812.5, m, 0.05, width, extra)
            want = B.pac_bayes_bound(0.4, 812.5, m, 0.05 / n_configs, width, extra)
        else:
            own = B.subsampled_bound(0.4, 812.5, m, n, 0.05, width, extra, delta_split=split)
            want = B.subsampled_bound(0.4, 812.5, m, n, 0.05 / n_configs, width, extra, delta_split=split)
        got = SB.with_extra_nats(dataclasses.asdict(own), nats)
        assert abs(got - want.value) <= 1e-12
        assert got >= own.value and (got == own.value) == (n_configs == 1)


@pytest.fixture()
def sweep(tmp_path) -> pd.DataFrame:
    """Trial a: the best bound of its own (sub-sampled, n = 200 of 2000); trial b: a little worse, on all 2000
    units; 51 errored trials without bounds: N = 53 configurations."""
    rows = []
    for trial_id, p, n in (("a", 0.95, 200), ("b", 0.5, None)):
        ckpt = tmp_path / trial_id
        ckpt.mkdir()
        (ckpt / BOUNDS_REPORT).write_text(json.dumps(_report(p, 2000, n)))
        bound = _smoothed(p, 2000, n, 0.05).best.bound.value
        rows.append({"trial_id": trial_id, "status": "TERMINATED", "checkpoint_path": str(ckpt), M.BOUND_DOC_BPD: bound})
    rows += [{"trial_id": f"e{i}", "status": "ERROR", "checkpoint_path": None, M.BOUND_DOC_BPD: math.nan}
             for i in range(51)]
    return pd.DataFrame(rows)


def test_best_of_sweep_pays_ln_n_and_may_change_the_chosen_trial(sweep):
    own = {t: _smoothed(p, 2000, n, 0.05).best.bound.value for t, p, n in (("a", 0.95, 200), ("b", 0.5, None))}
    paid = {t: _smoothed(p, 2000, n, 0.05 / 53).best.bound.value for t, p, n in (("a", 0.95, 200), ("b", 0.5, None))}
    assert own["a"] < own["b"] and paid["b"] < paid["a"]  # a wins per trial, b once both pay ln 53
    best = SB.best_of_sweep(sweep, ran_to_end(sweep))
    assert (best.configurations, best.trials, best.trial_id) == (53, 2, "b")
    assert best.extra_nats == pytest.approx(math.log(53), rel=1e-15)
    assert abs(best.value - paid["b"]) <= 1e-12
    assert best.trial_bound == own["b"] and best.best_trial_bound == own["a"]
    assert best.alpha in ALPHAS
    top1 = SB.best_of_sweep(sweep, ran_to_end(sweep), "document", "top1_error")
    want = min(B.topk_error_bound(50.0, 2000, error_rate=1 - p, delta=0.05 / 53, n_sampled=n,
                                  delta_split=B.delta_split("proportional", n, 2000)).value
               for p, n in ((0.95, 200), (0.5, None)))
    assert abs(top1.value - want) <= 1e-12 and top1.alpha is None
    assert SB.best_of_sweep(sweep, ran_to_end(sweep), "sequence") is None  # no sequence level in these reports


def test_describe_names_the_ln_n_term(sweep):
    line = SB.describe(SB.best_of_sweep(sweep, ran_to_end(sweep)))
    assert "best of N = 53 configurations: + ln N = 3.970 nats" in line and "trial b" in line
    assert [ln.split(" bound")[0] for ln in SB.lines(sweep, ran_to_end(sweep))] == ["document bpd", "document top1_error"]


def test_analyze_overview_shows_per_trial_bounds_and_the_best_of_sweep(sweep, tmp_path):
    buffer = io.StringIO()
    print_overview(Console(file=buffer, width=300), sweep, "exp", tmp_path)
    text = buffer.getvalue()
    assert M.BOUND_DOC_BPD in text  # the per-trial column
    assert "document bpd bound, best of N = 53 configurations: + ln N = 3.970 nats" in text


def test_no_bounds_json_no_line(sweep, tmp_path):
    bare = sweep.assign(checkpoint_path=str(tmp_path / "missing"))
    assert SB.best_of_sweep(bare, ran_to_end(bare)) is None and SB.lines(bare, ran_to_end(bare)) == []
