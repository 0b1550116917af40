"""Task metrics (`evaluate:`): generation exact match / F1 on hand examples, lm-eval's results parsed into
task/<task>/<metric>, bad input naming its key, the baseline arithmetic of analyze; and one real sweep
(integration): a local multiple-choice and a local generate-until lm-eval task over the builtin cipher,
the trained r = 16 adapter against the untuned base, an unreachable dataset recorded as a reason on a
TERMINATED trial, then `raysweep eval --best` and `analyze` with the baseline's delta."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raysweep import config as C
from raysweep.trial.answer_scores import exact_match, f1, mean_scores, normalize
from raysweep.trial.task_eval import answer_spans, parse_results
from tests.conftest import ROOT

# ------------------------------------------------------------------------------ generation scores, by hand


@pytest.mark.parametrize(("prediction", "references", "em", "f1_score"), [
    ("The Cat!", "cat", 1.0, 1.0),  # case, punctuation and articles are normalised away
    ("  paris  ", "Paris.", 1.0, 1.0),
    ("red green blue", "green blue yellow", 0.0, 2 / 3),  # 2 shared tokens of 3 each: P = R = 2/3
    ("red red", "red", 0.0, 2 / 3),  # counts, not sets: P = 1/2, R = 1
    ("", "", 1.0, 1.0),  # SQuAD v2: no answer to an unanswerable question is right
    ("something", "", 0.0, 0.0),
    ("", "an answer", 0.0, 0.0),
    ("the", "a", 1.0, 1.0),  # both normalise to empty
    ("green", ["blue", "Green", "red green"], 1.0, 1.0),  # several references: the best one counts
    ("red green", ["blue", "red green blue yellow"], 0.0, 2 / 3),  # P = 1, R = 1/2
    ("x", [], 0.0, 0.0),
])
def test_exact_match_and_f1_on_hand_examples(prediction, references, em, f1_score):
    assert exact_match(prediction, references) == em
    assert f1(prediction, references) == pytest.approx(f1_score)


def test_normalisation_and_means():
    assert normalize("  The  quick, brown fox's  ") == "quick brown foxs"
    scores = mean_scores(["a b", "c"], ["a b", "d"], ["exact_match", "f1"])
    assert scores == {"exact_match": 0.5, "f1": 0.5}


def test_answer_spans_cut_prompt_and_first_answer():
    from raysweep.inputs.examples import IGNORE_INDEX, Example

    example = Example([1, 2, 3, 4, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX, 6])
    assert answer_spans(example) == ([1, 2], [3, 4])
    assert answer_spans(Example([1, 2], [IGNORE_INDEX, IGNORE_INDEX])) is None


def test_lm_eval_results_become_flat_task_metrics():
    results = {"boolq": {"alias": "boolq", "acc,none": 0.625, "acc_stderr,none": "N/A", "sample_len": 8},
               "gsm8k": {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.5,
                         "exact_match_stderr,strict-match": 0.1}}
    assert parse_results(results) == {"task/boolq/acc": 0.625, "task/gsm8k/exact_match_strict-match": 0.25,
                                      "task/gsm8k/exact_match_flexible-extract": 0.5}


# ------------------------------------------------------------------------------ bad input


def _plan(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    return subprocess.run([sys.executable, "-m", "raysweep", "plan", str(grid)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, COLUMNS="300"), timeout=300)


def test_generation_on_a_text_task_is_refused_naming_the_key(tmp_path):
    (tmp_path / "t.txt").write_text("some text " * 50)
    proc = _plan(tmp_path, f"""
data: {{task: text, train_file: {tmp_path / 't.txt'}}}
train: {{max_steps: 5}}
evaluate: {{generation: {{max_new_tokens: 8}}}}
""")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "evaluate.generation" in proc.stderr and "data.task is 'text'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("section", "key"), [
    ("{lm_eval: {tasks: [x], limt: 3}}", "evaluate.lm_eval.limt"),  # a typo: the valid keys are listed
    ("{when: always, generation: {}}", "evaluate.when"),
    ("{}", "evaluate"),  # nothing to evaluate
    ("{generation: {metrics: [bleu]}}", "evaluate.generation.metrics"),
])
def test_malformed_evaluate_sections_name_their_key(section, key):
    _, issues = C.validate_sweep({"train": {"max_steps": 5}, "evaluate": __import__("yaml").safe_load(section)})
    assert any(i.path.startswith(key) for i in issues), issues


def test_unknown_task_name_names_its_index_and_suggests(monkeypatch, tmp_path):
    # lm-eval's real index (~14,000 names, built once per version and cached) is replaced by a few of its names
    from raysweep.cli import preflight

    monkeypatch.setattr(preflight, "lm_eval_task_names", lambda: ["boolq", "hellaswag", "hellaswag_de", "gsm8k"])
    problems = preflight.task_name_problems([("evaluate.lm_eval.tasks", ["boolq", "hellaswg", str(tmp_path / "no.yaml")])])
    assert len(problems) == 2
    assert problems[0].startswith("evaluate.lm_eval.tasks[1]: 'hellaswg' is not a task") and "'hellaswag'" in problems[0]
    assert problems[1].startswith("evaluate.lm_eval.tasks[2]: task file") and "does not exist" in problems[1]


def test_objectives_may_name_task_metrics():
    _, issues = C.validate_sweep({"train": {"max_steps": 5}, "search": {
        "algorithm": "optuna", "num_samples": 2, "objectives": {"task/boolq/acc": "max", "gen/f1": "max"}}})
    assert issues == []


# ------------------------------------------------------------------------------ baseline arithmetic


def test_deltas_and_below_baseline():
    from analysis.baseline import baseline_row, below_baseline, with_deltas

    frame = pd.DataFrame({"trial_id": ["a", "b"], "task/x/acc": [0.9, 0.4], "gen/f1": [0.5, 0.7]})
    out = with_deltas(frame, {"builtin": {"task/x/acc": 0.5, "gen/f1": 0.6}})
    assert out["task/x/acc Δbase"].tolist() == pytest.approx([0.4, -0.1])
    assert out["gen/f1 Δbase"].tolist() == pytest.approx([-0.1, 0.1])
    table = pd.DataFrame({"cell/adapter.r": [4, 16], "n": [2, 2], "fewer_seeds": [False, False],
                          "task/x/acc mean": [0.48, 0.9]})
    assert below_baseline(table, {"task/x/acc": 0.5}).tolist() == [True, False]
    assert below_baseline(table, {"task/x/acc": 0.5}, threshold=0.05).tolist() == [False, False]
    row = baseline_row(table, {"task/x/acc": 0.5})
    assert row.iloc[0]["cell/adapter.r"].startswith("baseline") and row.iloc[0]["task/x/acc mean"] == 0.5


# ------------------------------------------------------------------------------ a real sweep


def run_cli(*args, timeout=600):
    env = dict(os.environ, COLUMNS="250", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "raysweep", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def task_sweep(tmp_path_factory, builtin_model_dir, builtin_task_files):
    """One r = 16 LoRA trial at the quickstart's settings with task metrics on two local tasks and one whose
    dataset is on the hub (unreachable: offline)."""
    from raysweep.offline.cipher_tasks import write_cipher_tasks

    root = tmp_path_factory.mktemp("tasks")
    tasks = write_cipher_tasks(root / "eval_tasks", n=40)
    unreachable = root / "eval_tasks" / "unreachable.yaml"
    unreachable.write_text("task: unreachable_qa\ndataset_path: raysweep-tests/no-such-dataset\ntest_split: test\n"
                           "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n")
    grid = root / "grid.yaml"
    grid.write_text(f"""
name: tasks
data: {{max_seq_len: 32}}
train: {{lr: 2.0e-3, batch_size: 32, eval_batch_size: 200, max_steps: 200, warmup_steps: 10, schedule: constant,
         eval_every: 100, log_every: 50}}
adapter: {{type: lora, r: 16}}
evaluate:
  generation: {{max_new_tokens: 16, max_examples: 40}}
  lm_eval: {{tasks: [{tasks['cipher_mc']}, {tasks['cipher_gen']}, {unreachable}], limit: 40, batch_size: 40}}
""")
    proc = run_cli("run", grid, "--storage", root / "runs")
    return proc, root / "runs" / "tasks", tasks


@pytest.mark.integration
def test_trained_adapter_beats_the_untuned_base_and_an_unreachable_task_is_a_reason(task_sweep):
    proc, experiment, _ = task_sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    with (experiment / "trials.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "TERMINATED" and Path(row["checkpoint_path"]).is_dir()
    assert "unreachable.yaml: ConnectionError" in row["task/errors"] and "\n" not in row["task/errors"]
    assert "unreachable.yaml: ConnectionError" in proc.stdout  # the sweep's summary names the reason too
    (record,) = json.loads((experiment / "baseline.json").read_text())["baselines"]
    base = record["metrics"]
    trained = {k: float(row[k]) for k in ("task/cipher_mc/acc", "task/cipher_gen/exact_match", "gen/exact_match",
                                           "gen/f1")}
    # the untuned base never saw the cipher: chance among 4 choices, no exact answer; rank 16 learns it
    assert base["task/cipher_mc/acc"] < 0.5 and base["task/cipher_gen/exact_match"] < 0.1
    assert trained["task/cipher_mc/acc"] > 0.9 > base["task/cipher_mc/acc"] + 0.4
    assert trained["task/cipher_gen/exact_match"] > 0.8 > base["task/cipher_gen/exact_match"] + 0.7
    assert trained["gen/exact_match"] > 0.8 and trained["gen/f1"] > base["gen/f1"] + 0.5
    assert float(row["sys/task_eval_s"]) > 0 and float(row["task/step"]) == 200


@pytest.mark.integration
def test_eval_best_writes_metrics_that_analyze_shows_with_the_baseline_delta(task_sweep, monkeypatch):
    from raysweep.__main__ import main

    proc, experiment, tasks = task_sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # in this process (the CLI's own entry point): a second interpreter would pay torch's import again
    assert main(["eval", str(experiment), "--best", "--tasks", str(tasks["cipher_mc"]), "--limit", "20"]) == 0
    with (experiment / "trials.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    written = json.loads((Path(row["checkpoint_path"]) / "task_metrics.json").read_text())["metrics"]
    assert written["task/cipher_mc/acc"] > 0.9
    baselines = json.loads((experiment / "baseline.json").read_text())["baselines"]
    assert len(baselines) == 2  # the sweep's, and the one for eval's settings (20 examples of one task)
    base = next(b for b in baselines if b["evaluate"]["lm_eval"]["limit"] == 20)["metrics"]["task/cipher_mc/acc"]
    assert main(["analyze", str(experiment)]) == 0
    summary = pd.read_csv(experiment / "summary.csv")
    assert summary["task/cipher_mc/acc"].iloc[0] == pytest.approx(written["task/cipher_mc/acc"])
    assert summary["task/cipher_mc/acc Δbase"].iloc[0] == pytest.approx(written["task/cipher_mc/acc"] - base)
    table = pd.read_csv(experiment / "summary_table.csv")
    assert table.iloc[0].astype(str).str.contains("baseline").any() and table["n"].iloc[0] == 0
    assert table["task/cipher_mc/acc Δbase mean"].iloc[1] > 0.4
    assert "Δbase" in (experiment / "summary_table.md").read_text()


# ------------------------------------------------------------------------------ in the training loop (no Ray)


def _run(tmp_path: Path, name: str, evaluate: dict | None, store: Path, **train) -> list[dict]:
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession
    from tests.helpers import trial_config

    sections = {"data": {"max_seq_len": 32, "max_eval_examples": 16},
                "train": {"max_steps": 6, "eval_every": 3, "log_every": 3, "batch_size": 8, "eval_batch_size": 16,
                          "lr": 2e-3} | train,
                "adapter": {"type": "lora", "r": 4, "dropout": 0.1}}  # dropout: the RNG stream must not move
    config = trial_config(**sections)
    if evaluate is not None:
        config = trial_config(**sections, evaluate=evaluate)
    session = LocalSession(tmp_path / name)
    run_training(config | {"_store": str(store)}, session)
    return session.results


def test_every_eval_and_best_in_the_loop_leave_training_unchanged(tmp_path, builtin_model_dir, builtin_task_files):
    store = tmp_path / "store"
    plain = _run(tmp_path, "plain", None, store)
    generation = {"generation": {"max_new_tokens": 8, "max_examples": 8}}
    every = _run(tmp_path, "every", generation | {"when": "every_eval"}, store)
    # task metrics at steps 3 and 6 (not at step 0: that is the baseline's job), repeated in later reports
    measured = [(r["train/step"], r["task/step"]) for r in every if "task/step" in r]
    assert measured[0] == (3, 3) and measured[-1] == (6, 6)
    assert all(0 <= r["gen/f1"] <= 1 and 0 <= r["gen/exact_match"] <= 1 for r in every if "gen/f1" in r)
    # generation and the baseline did not move the trial's random streams: dropout, data order, losses equal
    assert [r["eval/loss"] for r in every] == [r["eval/loss"] for r in plain]
    assert every[-1]["train/loss"] == plain[-1]["train/loss"]
    baseline_file = Path(every[-1]["task/baseline_file"])
    assert every[-1]["sys/baseline_s"] > 0 and baseline_file.is_file()
    # `best`: the best eval's adapter is evaluated and the final one put back. A 90 % improvement is asked of
    # every eval, so step 0 stays the best: its adapter (LoRA's B = 0) is the base, whose metrics are the baseline's
    best = _run(tmp_path, "best", generation | {"when": "best"}, store,
                early_stopping={"patience": None, "min_rel_improvement": 0.9})
    final, base = best[-1], json.loads(baseline_file.read_text())["metrics"]
    assert final["task/step"] == 0 and final["train/step"] == 6
    assert (final["gen/f1"], final["gen/exact_match"]) == (base["gen/f1"], base["gen/exact_match"])
    # the baseline was read from the store, not computed again
    assert final["task/baseline_file"] == str(baseline_file) and final["sys/baseline_s"] < every[-1]["sys/baseline_s"]
    # ... and the checkpoint written after the swap holds the trained (final) adapter, not the step-0 one
    from safetensors.torch import load_file

    state = load_file(Path(final["checkpoint_path"]) / "adapter_state.safetensors")
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


@pytest.mark.parametrize(("extra", "fragment"), [
    ({}, "no evaluate section"),
    ({"evaluate": {"generation": {}}, "search": {"metric": "gen/f1", "mode": "max", "scheduler": "asha"}},
     "evaluate.when: every_eval"),
])
def test_ranking_by_a_task_metric_needs_it_reported(extra, fragment):
    raw = {"train": {"max_steps": 20, "eval_every": 5}, "search": {"metric": "gen/f1", "mode": "max"}} | extra
    _, issues = C.validate_sweep(raw)
    assert [i.path for i in issues] == ["search.metric"] and fragment in issues[0].message, issues


def test_live_table_and_trials_csv_show_task_metrics_once_they_arrive(tmp_path):
    from rich.console import Console

    from raysweep.sweep.progress import ProgressCallback, TrialRecord

    resolved = {"adapter": {"type": "lora", "r": 4}, "train": {"seed": 0, "max_steps": 10}}
    cb = ProgressCallback(str(tmp_path / "exp"), lambda cell: resolved, Console(width=300, record=True))
    cb.total = 2
    for name in ("a", "b"):
        cb.records[name] = TrialRecord(name, {}, resolved)
    width = len(cb.table().columns)
    base = tmp_path / "baselines" / "k1" / "baseline.json"
    base.parent.mkdir(parents=True)
    base.write_text(json.dumps({"key": "k1", "model": "builtin", "metrics": {"task/x/acc": 0.25}}))
    cb.records["a"].last = {"task/x/acc": 0.75, "gen/f1": 0.5, "task/errors": "y.yaml: ConnectionError: offline",
                            "task/baseline_file": str(base)}
    table = cb.table()
    assert len(table.columns) == width + 2 and [c.header for c in table.columns[-2:]] == ["gen/f1", "x/acc"]
    cb.write_csv()
    with (tmp_path / "exp" / "trials.csv").open() as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert rows["a"]["task/x/acc"] == "0.75" and rows["b"]["task/x/acc"] == ""
    assert rows["a"]["task/errors"] == "y.yaml: ConnectionError: offline"
    copied = json.loads((tmp_path / "exp" / "baseline.json").read_text())["baselines"]
    assert copied == [json.loads(base.read_text())]


def test_eval_settings_from_the_trial_and_the_command_line():
    from raysweep.offline.evaluate import EvalError, evaluate_settings

    with pytest.raises(EvalError, match="nothing to evaluate"):
        evaluate_settings(None, None, False, None)
    got = evaluate_settings(None, ["boolq"], True, 20)
    assert got["lm_eval"]["tasks"] == ["boolq"] and got["lm_eval"]["limit"] == 20
    assert got["generation"]["max_examples"] == 20 and got["baseline"] is True
    # the trial's section is kept where the command says nothing: its few-shot count, its generation
    saved = {"when": "best", "lm_eval": {"tasks": ["x"], "num_fewshot": 5}, "generation": {"max_new_tokens": 8},
             "baseline": False}
    got = evaluate_settings(saved, ["y"], False, None)
    assert got["lm_eval"]["tasks"] == ["y"] and got["lm_eval"]["num_fewshot"] == 5
    assert got["generation"]["max_new_tokens"] == 8 and got["baseline"] is False
