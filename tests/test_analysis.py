"""Pure analysis functions on hand-built tables: Pareto fronts and aggregation over seeds."""

from __future__ import annotations

import json
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
    (["sublora"], {"bound/kl_nats": [9000.0], "bound/doc_bpd_empirical": [2.0]}, "bound/kl_nats"),
    (["sublora"], {"bound/kl_bits": [9000.0], "bound/bpd_empirical": [2.0]}, "adapter/effective_params"),  # old names
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


def test_sublora_default_objectives_are_kl_against_empirical_bpd():
    from analysis.families import METRICS, default_objectives

    frame = pd.DataFrame({"adapter.type": ["sublora"] * 2, "eval/loss": [1.0, 2.0], "bound/kl_nats": [2300.0, 2700.0],
                          "bound/doc_bpd_empirical": [5.9, 5.8], "bound/doc_bpd": [8.7, 8.9]})
    assert default_objectives(frame) == {"bound/kl_nats": "min", "bound/doc_bpd_empirical": "min"}
    assert {"bound/kl_nats", "bound/compressed_bits", "bound/doc_bpd", "bound/doc_bpd_empirical"} <= set(
        METRICS["sublora"])


# ---------------------------------------------------------------- SubLoRA figures

MODULES = [f"model.layers.{b}.{part}.{kind}_proj" for b in (0, 1)
           for part, kind in [("self_attn", "q"), ("self_attn", "v"), ("mlp", "up")]]


def _checkpoint(root, name, allocation=None, gamma=None, vocab=307, mode="learned", d=1000):
    path = root / name / "checkpoint_000002"
    path.mkdir(parents=True)
    bounds = {"hypothesis": {"intrinsic_dim": d, "allocation_mode": mode, "vocab_size": vocab}}
    if gamma is not None:
        bounds["gamma"] = dict(zip(MODULES, gamma, strict=True))
    (path / "bounds.json").write_text(json.dumps(bounds))
    if allocation is not None:
        rows = ["step,overall," + ",".join(MODULES)]
        rows += [",".join(map(str, [step, sum(g) / len(g), *g])) for step, g in allocation]
        (path / "allocation.csv").write_text("\n".join(rows) + "\n")
    return str(path)


def _sublora_frame(tmp_path):
    """Five learned trials (d = 1000: seeds 0-2 and an errored seed 3 / d = 2000: seed 0 without files) and a
    uniform one: seed 0 logs allocation.csv (its last row counts), seed 1 only bounds.json's γ."""
    last = [0.4, 0.5, 0.6, 0.3, 0.55, 0.7]
    rows = [
        ("t0", 1000, "learned", 0, "TERMINATED", _checkpoint(tmp_path, "t0", [(0, [0.5] * 6), (100, last)])),
        ("t1", 1000, "learned", 1, "TERMINATED", _checkpoint(tmp_path, "t1", gamma=[0.2, 0.5, 0.6, 0.5, 0.45, 0.3])),
        ("t2", 1000, "learned", 3, "ERROR", _checkpoint(tmp_path, "t2", [(100, [0.9] * 6)])),
        ("t3", 2000, "learned", 0, "TERMINATED", None),
        ("t4", 1000, "uniform", 0, "TERMINATED", _checkpoint(tmp_path, "t4", mode="uniform")),
    ]
    return pd.DataFrame(rows, columns=["trial_id", "cell/adapter.intrinsic_dim", "cell/adapter.allocation_mode",
                                       "cell/train.seed", "status", "checkpoint_path"]).assign(**{"adapter.type": "sublora"})


def test_final_gammas_reads_the_last_logged_row_else_bounds_json_and_says_what_it_skipped(tmp_path):
    from analysis.sublora_plots import final_gammas

    gammas, skipped = final_gammas(_sublora_frame(tmp_path))
    assert gammas["trial_id"].tolist() == ["t0", "t1"] and gammas["seed"].tolist() == [0, 1]
    assert list(gammas.columns[3:]) == MODULES  # model order
    assert gammas[MODULES].to_numpy().tolist() == [[0.4, 0.5, 0.6, 0.3, 0.55, 0.7], [0.2, 0.5, 0.6, 0.5, 0.45, 0.3]]
    assert gammas["intrinsic_dim"].tolist() == [1000.0, 1000.0]
    assert len(skipped) == 2 and skipped[0].startswith("t2: ERROR") and skipped[1].startswith("t3: no allocation.csv")


@pytest.mark.parametrize(("name", "block", "kind"), [
    ("model.layers.0.self_attn.q_proj", 0, "q"), ("model.layers.11.mlp.down_proj", 11, "down"),
    ("transformer.h.3.attn.c_attn", 3, "c_attn"), ("lm_head", None, "lm_head"),
])
def test_module_block_and_kind(name, block, kind):
    from analysis.sublora_plots import module_block, module_kind

    assert (module_block(name), module_kind(name)) == (block, kind)


def test_gamma_by_depth_is_mean_and_std_over_seeds_per_kind_and_block(tmp_path):
    from analysis.sublora_plots import final_gammas, gamma_by_depth

    depth = gamma_by_depth(final_gammas(_sublora_frame(tmp_path))[0]).set_index(["kind", "block"])
    assert len(depth) == 6 and set(depth["n"]) == {2}
    assert depth.loc[("q", 0), "mean"] == pytest.approx(0.3) and depth.loc[("q", 0), "std"] == pytest.approx(0.1 * 2**0.5)
    assert depth.loc[("v", 1), "mean"] == pytest.approx(0.5) and depth.loc[("up", 1), "mean"] == pytest.approx(0.5)


def _sublora_table(seeds=3):
    """Per-configuration table as over_seeds builds it: 2 d × {uniform, fixed .2/.8, learned}; one seed: std NaN."""
    rows = []
    for d in (1000, 2000):
        for k, (mode, ratio) in enumerate([("learned", NAN), ("uniform", NAN), ("fixed", 0.8), ("fixed", 0.2)]):
            for seed in range(seeds):
                rows.append({"cell/adapter.intrinsic_dim": d, "cell/adapter.allocation_mode": mode,
                             "cell/adapter.allocation_ratio": ratio, "cell/train.seed": seed,
                             "bound/kl_nats": 2000 + d + 100 * k + seed, "bound/compressed_bits": 3000 + d + 140 * k,
                             "bound/doc_bpd": 7.9 + 0.2 * k + 0.01 * seed, "bound/doc_bpd_empirical": 5.9 - 0.01 * k,
                             "eval/loss": 4.1 - 0.01 * k + 0.001 * seed})
    metrics = ["bound/kl_nats", "bound/compressed_bits", "bound/doc_bpd", "bound/doc_bpd_empirical", "eval/loss"]
    return over_seeds(pd.DataFrame(rows), metrics)


def test_allocation_table_labels_and_orders_configurations():
    from analysis.sublora_plots import allocation_label, allocation_table

    table = allocation_table(_sublora_table())
    assert table["allocation"].tolist() == ["uniform", "fixed 0.2", "fixed 0.8", "learned"] * 2
    assert table["d"].tolist() == [1000] * 4 + [2000] * 4
    assert allocation_table(_sublora_table()[["bound/kl_nats mean"]].assign(**{"adapter/effective_params mean": 50.0})
                            )["allocation"].tolist() == ["sublora"] * 8  # no allocation axis, d from the params
    assert allocation_label("fixed", NAN) == "fixed" and allocation_label("fixed", 0.5) == "fixed 0.5"


@pytest.mark.parametrize("seeds", [3, 1])  # one seed: std NaN, no error bars
@pytest.mark.parametrize("draw", ["complexity_vs_empirical", "complexity_vs_bound", "size_vs_performance",
                                  "allocation_grid"])
def test_sublora_configuration_figures_write_pngs(tmp_path, draw, seeds):
    import matplotlib.image

    from analysis import sublora_plots

    function = getattr(sublora_plots, draw)
    extra = {"vocab_size": 307} if draw in ("complexity_vs_bound", "allocation_grid") else {}
    path = function(_sublora_table(seeds), tmp_path / f"{draw}.png", **extra, skipped=["t9: ERROR (not finished)"])
    assert matplotlib.image.imread(path).shape[1] > 500


def test_sublora_gamma_figures_write_pngs(tmp_path):
    import matplotlib.image

    from analysis.sublora_plots import final_gammas, gamma_by_depth, gamma_depth, gamma_heatmap

    gammas, skipped = final_gammas(_sublora_frame(tmp_path))
    for path in (gamma_heatmap(gammas, tmp_path / "h.png", skipped),
                 gamma_depth(gamma_by_depth(gammas), tmp_path / "d.png", skipped)):
        assert matplotlib.image.imread(path).shape[1] > 500


def test_family_figures_for_sublora_tolerate_a_partial_experiment(tmp_path):
    from analysis.families import figures, sublora_figures

    frame = _sublora_frame(tmp_path)
    paths = figures(frame, _sublora_table(1), tmp_path)
    assert sorted(p.name for p in paths) == sorted([
        "frontier_compressed_vs_bound.png", "sublora_gamma_heatmap.png", "sublora_gamma_depth.png",
        "sublora_kl_vs_empirical_bpd.png", "sublora_kl_vs_bpd_bound.png", "sublora_size_vs_eval_loss.png",
        "sublora_allocation_grid.png"])
    assert all(p.is_file() for p in paths)
    # nothing finished with bounds and no learned trial: no figure, no crash, notes say why
    bare = frame.assign(status="ERROR")
    paths, notes = sublora_figures(bare, _sublora_table(1)[["cell/adapter.intrinsic_dim", "n", "eval/loss mean"]],
                                   tmp_path / "bare")
    assert paths == [] and any("bound/compressed_bits" in n for n in notes) and any("γ figures" in n for n in notes)


def test_frontier_keys_name_only_the_axes_that_vary(tmp_path):
    import matplotlib.image

    from analysis.plots import frontier, varying

    table = pd.DataFrame({"cell/adapter.intrinsic_dim": [1000, 2000], "adapter.type": ["sublora"] * 2, "adapter.r": [8, 8],
                          "kl mean": [1.0, 2.0], "kl std": [0.1, NAN], "bpd mean": [6.0, 5.0], "bpd std": [NAN, NAN]})
    assert varying(table, ["cell/adapter.intrinsic_dim", "adapter.type", "adapter.r"]) == ["cell/adapter.intrinsic_dim"]
    assert varying(table.iloc[:1], ["adapter.type", "adapter.r"]) == ["adapter.type", "adapter.r"]  # none varies: all
    path = frontier(table, "kl", "bpd", pd.Series([True, True]), tmp_path / "f.png")
    assert matplotlib.image.imread(path).shape[1] > 500


def test_eval_curves_use_only_the_reports_where_the_eval_ran(tmp_path, monkeypatch):
    from analysis import plots

    history = pd.DataFrame({"trial_id": ["a"] * 4, "train/step": [0, 10, 20, 30], "eval/step": [0, 0, 20, 20],
                            "eval/loss": [5.0, 5.0, 2.0, 2.0]})
    seen = {}
    real = plots._save

    def spy(plt, fig, ax, *args, **kwargs):
        seen["x"] = list(ax.lines[0].get_xdata())
        return real(plt, fig, ax, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", spy)
    plots.curves(history, "eval/loss", tmp_path / "c.png")
    assert seen["x"] == [0, 20]  # not the stale repeats at steps 10 and 30


def test_a_running_experiment_without_trials_csv_still_knows_its_family(tmp_path):
    import json as _json

    from analysis.families import family_of
    from analysis.load import load_trials

    (tmp_path / "raysweep.yaml").write_text("adapter: {type: masked}\n")
    for i in range(2):
        trial = tmp_path / f"t{i}_x"
        trial.mkdir()
        (trial / "params.json").write_text(_json.dumps({"cell": {"adapter.sparsity": 0.1 * i}}))
        (trial / "result.json").write_text(_json.dumps({"trial_id": f"t{i}", "eval/loss": 1.0}) + "\n")
    frame = load_trials(tmp_path)
    assert list(frame["adapter.type"]) == ["masked", "masked"] and family_of(frame) == "masks"


def test_analysis_imports_no_ray_or_torch():
    import subprocess
    import sys

    code = ("import sys, analysis.load, analysis.summary, analysis.families, analysis.sublora_plots, "
            "analysis.plots; bad = [m for m in ('ray', 'torch', 'raysweep.trial.loop') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
