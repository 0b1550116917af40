"""Which cells share a pack and why a sweep or a cell runs unpacked (sweep/packs.py; no Ray, no torch)."""

from __future__ import annotations

import pytest

from raysweep.config import expand, run_config
from raysweep.sweep.packs import groups, packing


def sweep_of(**sections):
    raw = {"train": {"max_steps": 20}, "grid": {"adapter.type": ["lora", "dora", "sublora"], "train.seed": [0, 1]}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return expand(raw)


@pytest.mark.parametrize(("resources", "search", "size", "why"), [
    ({"pack": 1}, {}, 1, None),
    ({"pack": 4}, {}, 4, None),
    ({"pack": 4, "num_workers": 2}, {}, 1, "num_workers > 1"),
    ({"pack": 4, "executor": "train"}, {}, 1, "executor 'train'"),
    ({"pack": 4}, {"algorithm": "optuna", "num_samples": 2}, 1, "optuna"),
    ({"pack": "auto"}, {}, 1, "pack: auto is 1 on CPUs"),
    ({"pack": "auto", "gpus_per_worker": 0.5}, {}, 1, "pack: auto is 1 on GPUs"),
])
def test_the_sweep_packs_or_says_why_not(resources, search, size, why):
    sweep, _ = sweep_of(resources=resources, search=search)
    decision = packing(sweep)
    assert decision.size == size
    assert (decision.why_not is None) if why is None else why in decision.why_not


def test_cells_group_by_what_the_base_sees_and_sublora_runs_alone():
    sweep, trials = sweep_of(resources={"pack": 4}, grid={"data.max_seq_len": [32, 64]})
    packed, alone = groups(trials, run_config)
    # lora and dora of both seeds share a key per max_seq_len; sublora cells run one per worker
    assert sorted(len(cells) for cells in packed.values()) == [4, 4]
    assert [len(cells) for cells in alone.values()] == [4] and "sublora" in next(iter(alone))
    for cells in packed.values():
        assert len({t.config.data.max_seq_len for t in cells}) == 1
