"""Pure analysis functions on hand-built tables: Pareto fronts and aggregation over seeds."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.aggregate import over_seeds
from analysis.pareto import pareto_front, parse_objectives

INF, NAN = math.inf, math.nan

# (points, directions, expected on-front flags, expected excluded positions)
PARETO = [
    ([[1], [2], [0.5]], ["min"], [False, False, True], []),  # one objective: the best only
    ([[1], [2], [2]], ["max"], [False, True, True], []),  # ties on the best are all on the front
    ([[1, 5], [2, 4], [3, 3], [2, 5], [4, 4]], ["min", "min"], [True, True, True, False, False], []),
    ([[1, 1], [1, 1], [2, 2]], ["min", "min"], [True, True, False], []),  # identical points: both kept
    ([[1, 5], [2, 4], [3, 3]], ["min", "max"], [True, False, False], []),  # mixed directions: (1, 5) wins both
    ([[1, 5], [2, 6], [3, 3]], ["min", "max"], [True, True, False], []),
    ([[1, NAN], [2, 2], [INF, 0], [3, 1]], ["min", "min"], [False, True, False, True], [0, 2]),  # non-finite out
    ([[-INF, 1], [1, 1]], ["min", "min"], [False, True], [0]),
    ([[1, 2, 3], [2, 1, 3], [2, 2, 2], [3, 3, 3]], ["min", "min", "min"], [True, True, True, False], []),
    ([[1, 2, 3], [1, 2, 4]], ["min", "min", "max"], [False, True], []),
]


@pytest.mark.parametrize(("points", "directions", "expected", "excluded"), PARETO)
def test_pareto_front(points, directions, expected, excluded):
    names = [f"o{i}" for i in range(len(directions))]
    frame = pd.DataFrame(points, columns=names, index=[f"t{i}" for i in range(len(points))])
    front = pareto_front(frame, dict(zip(names, directions, strict=True)))
    assert front.on_front.tolist() == expected
    assert list(front.excluded) == [f"t{i}" for i in excluded]


def test_pareto_errors_name_the_objective():
    frame = pd.DataFrame({"a": [1.0]})
    with pytest.raises(KeyError, match="'b' is not a column"):
        pareto_front(frame, {"b": "min"})
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto_front(frame, {"a": "lowest"})


def test_parse_objectives():
    assert parse_objectives(["adapter/effective_params:min", "eval/accuracy:max", "eval/loss"]) == {
        "adapter/effective_params": "min", "eval/accuracy": "max", "eval/loss": "min"}


def test_over_seeds_groups_every_axis_but_seed_and_marks_missing_seeds():
    frame = pd.DataFrame({
        "cell/adapter.type": ["lora", "lora", "lora", "dora", "dora", "sora"],
        "cell/adapter.lambda": [NAN, NAN, NAN, NAN, NAN, 0.3],
        "cell/train.seed": [0, 1, 2, 0, 1, 0],
        "eval/loss": [1.0, 2.0, 3.0, 4.0, "6.0", 5.0],
    })
    out = over_seeds(frame, ["eval/loss"]).set_index("cell/adapter.type")
    assert out.loc["lora", "n"] == 3 and out.loc["lora", "eval/loss mean"] == 2.0
    assert out.loc["lora", "eval/loss std"] == pytest.approx(1.0)
    assert out.loc["dora", "eval/loss mean"] == 5.0 and out.loc["dora", "eval/loss std"] == pytest.approx(math.sqrt(2))
    assert math.isnan(out.loc["sora", "eval/loss std"])  # one seed: no spread
    assert out["fewer_seeds"].to_dict() == {"dora": True, "lora": False, "sora": True}
    assert "cell/train.seed" not in out.reset_index().columns


def test_tables_bold_the_best_mean_per_column_and_mark_missing_seeds():
    from analysis.tables import to_latex, to_markdown

    frame = pd.DataFrame({
        "cell/adapter.type": ["lora", "lora", "dora", "dora", "sora"],
        "cell/train.seed": [0, 1, 0, 1, 0],
        "eval/loss": [0.5, 0.7, 0.4, 0.4, 0.9],
        "eval/accuracy": [0.9, 0.8, 0.7, 0.7, 0.95],
    })
    table = over_seeds(frame, ["eval/loss", "eval/accuracy"])  # rows sorted: dora, lora, sora
    md = to_markdown(table, ["eval/loss", "eval/accuracy"]).splitlines()
    assert md[0] == "| adapter.type | n | eval/loss | eval/accuracy |"
    assert md[2] == "| dora | 2 | **0.4 ± 0** | 0.7 ± 0 |"  # lowest loss
    assert md[3] == "| lora | 2 | 0.6 ± 0.1414 | 0.85 ± 0.07071 |"
    assert md[4] == "| sora | 1* | 0.9 | **0.95** |"  # highest accuracy; one seed: no ± and marked
    tex = to_latex(table, ["eval/loss", "eval/accuracy"], "cap_tion")
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\begin{tabular}{llrr}" in tex
    assert r"dora & 2 & \textbf{0.4 $\pm$ 0} & 0.7 $\pm$ 0 \\" in tex
    assert r"eval/loss & eval/accuracy" in tex and r"\caption{cap\_tion}" in tex


def test_recommendation_lists_the_front_by_budget():
    from analysis.report import recommendation

    table = pd.DataFrame({"cell/adapter.type": ["a", "b", "c"], "n": [2, 2, 1],
                          "params mean": [10.0, 20.0, 30.0], "loss mean": [0.5, 0.6, 0.2], "loss std": [0.1, 0.0, NAN]})
    front = pareto_front(table.rename(columns={"params mean": "params", "loss mean": "loss"}),
                         {"params": "min", "loss": "min"})
    assert front.on_front.tolist() == [True, False, True]
    lines = recommendation(table, front.on_front, {"params": "min", "loss": "min"})
    assert lines == ["params ≤ 10: type=a — loss 0.5 ± 0.1 over 2 seed(s)",
                     "params ≤ 30: type=c — loss 0.2 over 1 seed(s)"]


@pytest.mark.parametrize(("types", "metrics", "expected"), [
    (["masked", "masked"], {"mask/achieved_sparsity": [0.1, 0.5]}, "mask/achieved_sparsity"),
    (["lora", "masked"], {"mask/achieved_sparsity": [NAN, 0.5]}, "adapter/effective_params"),
    (["masked"], {}, "adapter/effective_params"),  # the family's metric is missing: the generic pair
    (["sublora"], {"bound/kl_bits": [9000.0], "bound/bpd_empirical": [2.0]}, "bound/kl_bits"),
])
def test_default_objectives_follow_the_family(types, metrics, expected):
    from analysis.families import default_objectives

    frame = pd.DataFrame({"adapter.type": types, "eval/loss": [1.0] * len(types), **metrics})
    assert next(iter(default_objectives(frame))) == expected


def test_sparsity_quality_plot_writes_a_paper_width_png(tmp_path):
    from analysis.plots import sparsity_quality

    rows = [{"cell/adapter.mask": kind, "mask/target_sparsity mean": s, "eval/loss mean": 1 + s + k,
             "eval/loss std": 0.1} for k, kind in enumerate(["unstructured", "structured"]) for s in (0.0, 0.5, 0.9)]
    path = sparsity_quality(pd.DataFrame(rows), tmp_path / "s.png")
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[1] > 500  # a real PNG at paper width
