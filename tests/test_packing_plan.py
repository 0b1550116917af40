"""Which cells share a pack and why a sweep or a cell runs unpacked (sweep/packs.py; no Ray, no torch)."""

from __future__ import annotations

import pytest

from raysweep.config import expand, run_config
from raysweep.sweep.packs import Place, describe_packs, first_wave, groups, packing, placement
from raysweep.trial.pack_key import unpacked_reason


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


def places(*workers):
    return [Place(key, members, capacity) for key, members, capacity in workers]


@pytest.mark.parametrize(("workers", "slots", "key", "where"), [
    ((), 2, "a", ("new", None)),  # an empty cluster: a worker on a free slot
    ((("a", 1, 4),), 2, "a", ("new", None)),  # spread: a free slot before a second member
    ((("a", 1, 4), ("a", 2, 4)), 2, "a", ("join", 0)),  # then fill, the least-filled first
    ((("a", 4, 4), ("a", 3, 4)), 2, "a", ("join", 1)),
    ((("a", 4, 4), ("a", 4, 4)), 2, "a", None),  # every place taken: ask again
    ((("b", 1, 4), ("a", 0, 4)), 2, "a", ("join", 1)),  # a worker of its base whose members left takes it back
    ((("b", 1, 4), ("c", 0, 4)), 2, "a", ("replace", 1)),  # another base's idle worker makes way
    ((("b", 1, 4), ("c", 2, 4)), 2, "a", None),  # other bases' busy workers: wait
    ((("alone:m", 1, 1),), 1, "alone:m", None),  # a cell alone never shares its worker
])
def test_placement_spreads_over_free_slots_then_fills(workers, slots, key, where):
    assert placement(places(*workers), slots, key) == where


def test_the_first_wave_of_8_cells_with_pack_8_on_2_slots_is_2_workers_of_4():
    wave, waiting = first_wave([("a", 8)] * 8, 2)
    assert wave == [("a", [0, 2, 4, 6]), ("a", [1, 3, 5, 7])] and waiting == []
    wave, waiting = first_wave([("a", 2)] * 5 + [("alone:m", 1)], 2)
    assert wave == [("a", [0, 2]), ("a", [1, 3])] and waiting == [4, 5]


def test_plan_lists_the_workers_a_sweep_starts_with():
    sweep, trials = sweep_of(resources={"pack": 2, "max_concurrent": 2})
    lines = describe_packs(sweep, trials)
    # lora/dora × seed 0/1 (cells 0-3) share one base and spread over the 2 slots; sublora (4, 5) runs alone
    assert "on this machine 2 worker(s) at once" in lines[0]
    assert [line.strip() for line in lines[1:]] == [
        "pack 1: trials 0, 2", "pack 2: trials 1, 3",
        f"alone (one per worker), trials 4, 5: {unpacked_reason(run_config(trials[4].config))}"]
