"""Every YAML under search_spaces/ loads, validates and expands."""

from __future__ import annotations

import pytest

from raysweep import config as C
from tests.conftest import ROOT

FILES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_there_are_search_spaces():
    assert any(f.name == "quickstart.yaml" for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_search_space_expands(path):
    raw, sweep, trials = C.load(path)
    assert trials, f"{path.name} expands to no trials"
    assert len({t.label() for t in trials}) == len(trials)
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), "the first line is a comment with the launch command"


def test_quickstart_is_lora_dora_two_ranks_two_seeds():
    _, _, trials = C.load(ROOT / "search_spaces" / "quickstart.yaml")
    combos = {(t.config.adapter.type, t.config.adapter.r, t.config.train.seed) for t in trials}
    assert len(trials) == 8 and len(combos) == 8
    assert {c[0] for c in combos} == {"lora", "dora"}
    assert len({c[1] for c in combos}) == 2 and len({c[2] for c in combos}) == 2
