"""Grid validation: every malformed grid gives an error naming the key path and the fix."""

from __future__ import annotations

import textwrap

import pytest

from raysweep import config as C

GOOD = """
name: t
train: {max_steps: 10}
grid:
  adapter.type: [lora, dora]
  adapter.r: [4, 8]
  train.seed: [0, 1]
"""


def write(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path, text: str, overrides=()) -> list[str]:
    with pytest.raises(C.ConfigError) as info:
        C.load(write(tmp_path, text), list(overrides))
    return [str(i) for i in info.value.issues]


def test_good_grid_expands_to_the_cartesian_product(tmp_path):
    _, sweep, trials = C.load(write(tmp_path, GOOD))
    assert len(trials) == 8
    assert {(t.config.adapter.type, t.config.adapter.r, t.config.train.seed) for t in trials} == {
        (a, r, s) for a in ("lora", "dora") for r in (4, 8) for s in (0, 1)
    }
    assert trials[0].config.adapter.alpha == 2 * trials[0].config.adapter.r  # alpha defaults to 2·r
    assert sweep.name == "t"


def test_union_of_subgrids(tmp_path):
    _, _, trials = C.load(write(tmp_path, """
        train: {max_steps: 10}
        grid:
          - {adapter.type: [lora, dora], adapter.r: 16}
          - {adapter.type: lora, adapter.r: [4, 16], train.seed: [0]}
    """))
    cells = [t.cell for t in trials]
    assert cells[:2] == [{"adapter.type": "lora", "adapter.r": 16}, {"adapter.type": "dora", "adapter.r": 16}]
    # (lora, 16, seed 0) of the second sub-grid is the first cell again (seed 0 is the default): run once
    assert cells[2] == {"adapter.type": "lora", "adapter.r": 4, "train.seed": 0}
    assert len(trials) == 3
    assert [t.subgrid for t in trials] == [0, 0, 1]


def test_identical_cells_in_two_subgrids_run_once(tmp_path):
    _, _, trials = C.load(write(tmp_path, """
        train: {max_steps: 10}
        grid:
          - {adapter.r: [4, 8]}
          - {adapter.r: [8, 16]}
    """))
    assert [t.config.adapter.r for t in trials] == [4, 8, 16]


def test_overrides_fix_an_axis_and_set_values(tmp_path):
    _, _, trials = C.load(write(tmp_path, GOOD), ["adapter.r=16", "train.max_steps=5", "grid.train.seed=[7]"])
    assert {t.config.adapter.r for t in trials} == {16}
    assert {t.config.train.seed for t in trials} == {7}
    assert {t.config.train.max_steps for t in trials} == {5}
    assert len(trials) == 2


def test_no_grid_is_one_trial(tmp_path):
    _, _, trials = C.load(write(tmp_path, "train: {max_steps: 3}\n"))
    assert len(trials) == 1 and trials[0].cell == {}


# (yaml, overrides, substrings the message must contain — the key path first)
BAD = [
    ("train: {max_steps: 10}\nresources: {executor: actor, num_workers: 2}", [],
     ["resources", "executor 'actor'", "set resources.executor to 'train'"]),
    ("train: {max_steps: 10}\nresources: {executor: ray}", [], ["resources.executor", "'auto', 'train' or 'actor'"]),
    ("train: {max_steps: 10, lr: -1}", [], ["train.lr", "greater than 0"]),
    ("train: {max_steps: 10, learning_rate: 0.1}", [], ["train.learning_rate", "did you mean 'lr'"]),
    ("train: {max_steps: 10}\nadapter: {type: lorax}", [], ["adapter.type", "lorax", "lora"]),
    ("train: {max_steps: 10}\nadapter: {rank: 4}", [], ["adapter.rank", "not an option of adapter 'lora'"]),
    ("train: {max_steps: 10}\nadapter: {r: 0}", [], ["adapter.r", "greater than 0"]),
    ("train: {max_steps: 10}\nadapter: {dropout: 1.5}", [], ["adapter.dropout", "less than 1"]),
    ("train: {}", [], ["train", "train.max_steps or train.epochs"]),
    ("train: {max_steps: 10, epochs: 2}", [], ["train", "keep one"]),
    ("train: {max_steps: 10, schedule: exponential}", [], ["train.schedule", "cosine"]),
    ("train: {max_steps: ten}", [], ["train.max_steps", "valid integer"]),
    ("train: {max_steps: 10}\ndata: {task: chat}", [], ["data", "data.train_file"]),
    ("train: {max_steps: 10}\ndata: {task: csv}", [], ["data.task", "builtin"]),
    ("train: {max_steps: 10}\nresources: {num_workers: 0}", [], ["resources.num_workers", "greater than 0"]),
    ("train: {max_steps: 10}\nsearch: {mode: maximize}", [], ["search.mode", "'min' or 'max'"]),
    ("train: {max_steps: 10}\nmodle: {name_or_path: x}", [], ["modle", "unknown key"]),
    ("name: 'has space'\ntrain: {max_steps: 10}", [], ["name", "pattern"]),
    ("train: {max_steps: 10}\ngrid: {adapter.rank: [4, 8]}", [], ["grid.adapter.rank", "did you mean 'adapter.r'"]),
    ("train: {max_steps: 10}\ngrid: {adapter.r: []}", [], ["grid.adapter.r", "empty list"]),
    ("train: {max_steps: 10}\ngrid: {search.metric: [a]}", [], ["grid.search.metric", "axes live under"]),
    ("train: {max_steps: 10}\ngrid: [{adapter.r: [4]}, 3]", [], ["grid[1]", "non-empty mapping"]),
    ("train: {max_steps: 10}\ngrid: {adapter.r: [4, -8]}", [], ["grid (adapter.r=-8) adapter.r", "greater than 0"]),
    ("train: {max_steps: 10}\ngrid: {adapter.type: [lora, vera]}", [], ["grid (adapter.type=vera) adapter.type", "unknown adapter 'vera'"]),
    # λ belongs to the gated adapters only
    ("train: {max_steps: 10}\nadapter: {type: lora, lambda: 0.3}", [],
     ["adapter.lambda", "not an option of adapter 'lora'", "it applies to: sdora, sora"]),
    ("train: {max_steps: 10}\ngrid: {adapter.type: [sora, dora], adapter.lambda: [0.1, 0.3]}", [],
     ["adapter.type=dora", "adapter.lambda", "not an option of adapter 'dora'"]),
    ("train: {max_steps: 10}\nadapter: {type: sora, lambda: -1}", [], ["adapter.lambda", "greater than or equal to 0"]),
    ("train: {max_steps: 10}\nadapter: {type: sdora, lambda_schedule: linear}", [],
     ["adapter", "needs adapter.lambda_final"]),
    ("train: {max_steps: 10}\nadapter: {type: sora, lambda_final: 0.5}", [], ["adapter", "has no effect"]),
    # pruning keys belong to the masked adapter; its mask options must agree
    ("train: {max_steps: 10}\ngrid: {adapter.sparsity: [0.1, 0.5]}", [],
     ["grid (adapter.sparsity=0.1) adapter.sparsity", "it applies to: masked"]),
    ("train: {max_steps: 10}\nadapter: {type: masked, mask: '2:4', sparsity: 0.3}", [],
     ["adapter", "set adapter.sparsity to 0.5"]),
    ("train: {max_steps: 10}\nadapter: {type: masked, mask: blocks}", [], ["adapter", "N:M pattern"]),
    ("train: {max_steps: 10}\nadapter: {type: masked, sparsity: 1.0}", [], ["adapter.sparsity", "less than 1"]),
    ("train: {max_steps: 10}\nadapter: {type: masked, importance: fisher}", [], ["adapter.importance", "magnitude"]),
    ("train: {max_steps: 10}\nmodel: {load_in_4bit: true}\nadapter: {type: masked}", [],
     ["model.load_in_4bit", "4-bit loading stores quantized"]),
    ("train: {max_steps: 10}\nmodel: {load_in_4bit: true, bnb_4bit_quant_type: int4}", [],
     ["model.bnb_4bit_quant_type", "nf4"]),
    ("train: {max_steps: 10}\ngrid: {train.keep_last: [1, 3]}", [], ["train.keep_last", "resources.executor: train"]),
    # trial schedulers (search.scheduler): keys of one scheduler, steps, evals
    ("train: {max_steps: 10}\nsearch: {scheduler: hyperband}", [], ["search.scheduler", "'fifo', 'asha' or 'median'"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha, grace_period: 15}", [],
     ["search.grace_period", "not a multiple of train.eval_every (10)", "use e.g. 20"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha, grace_period: 100}", [],
     ["search.grace_period", "not below train.max_steps (100)"]),
    ("train: {max_steps: 50, eval_every: 50}\nsearch: {scheduler: median}", [],
     ["search.grace_period", "empty, so the first eval after max_steps/4 (50)", "not below train.max_steps"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha, reduction_factor: 1}", [],
     ["search.reduction_factor", "greater than or equal to 2"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha, grace_period: 0}", [],
     ["search.grace_period", "greater than 0"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: median, reduction_factor: 2}", [],
     ["search.reduction_factor", "applies to search.scheduler 'asha', not 'median'"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha, min_samples_required: 2}", [],
     ["search.min_samples_required", "applies to search.scheduler 'median', not 'asha'"]),
    ("train: {max_steps: 100}\nsearch: {grace_period: 50}", [],
     ["search.grace_period", "not 'fifo'", "set search.scheduler"]),
    ("train: {epochs: 2}\nsearch: {scheduler: asha}", [],
     ["search.scheduler", "set train.max_steps instead of train.epochs"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha}\ngrid: {train.max_steps: [50, 100]}", [],
     ["grid.train.max_steps", "every trial needs the same train.max_steps"]),
    ("train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: median}\ngrid: [{adapter.r: [4]}, {train.eval_every: [20]}]",
     [], ["grid.train.eval_every", "search.scheduler 'median'"]),
    ("train: {max_steps: 10}", ["train.lr"], ["train.lr", "key.path=value"]),
    ("train: {max_steps: 10\n  lr: 1", [], ["not valid YAML", "line"]),
    ("- a\n- b", [], ["top level must be a mapping"]),
]


@pytest.mark.parametrize("text,overrides,expected", BAD, ids=[b[2][0] for b in BAD])
def test_malformed_grid_names_the_key(tmp_path, text, overrides, expected):
    messages = problems(tmp_path, text, overrides)
    assert any(all(s in m for s in expected) for m in messages), messages


def test_all_problems_are_reported_at_once(tmp_path):
    messages = problems(tmp_path, """
        train: {max_steps: 10, lr: -1, batch_size: 0}
        adapter: {type: lora}
        grid: {adapter.r: [0, 4], adapter.rnk: [1]}
    """)
    paths = " ".join(messages)
    for key in ("train.lr", "train.batch_size", "grid.adapter.rnk", "grid (adapter.r=0) adapter.r"):
        assert key in paths, messages


def test_base_error_is_not_repeated_per_cell(tmp_path):
    messages = problems(tmp_path, "train: {max_steps: 10, lr: -1}\ngrid: {adapter.r: [4, 8, 16]}")
    assert sum("train.lr" in m for m in messages) == 1, messages


def test_missing_grid_file_names_the_file(tmp_path):
    with pytest.raises(C.ConfigError) as info:
        C.load(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "does not exist" in str(info.value)


def test_every_registered_adapter_is_a_valid_type(tmp_path):
    from raysweep import adapters

    for name in adapters.names():
        _, _, trials = C.load(write(tmp_path, f"train: {{max_steps: 1}}\nadapter: {{type: {name}}}\n"))
        assert trials[0].config.adapter.type == name
