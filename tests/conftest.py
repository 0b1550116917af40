"""Shared fixtures. The builtin model/task cache is per test session (never the user's cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Files with integration tests first, each file's tests in their own order: `make test` spreads whole files
    over two processes (pytest-xdist, --dist loadfile) in this order, so the minutes-long Ray files start at
    once and the quick unit files fill the gaps instead of one long file running alone at the end."""
    heavy = {item.path for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.path not in heavy)  # stable: each file keeps its order


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # RAYSWEEP_CACHE may be preset (CI reuses one cache across test files); otherwise a temp dir
    if "RAYSWEEP_CACHE" not in os.environ:
        os.environ["RAYSWEEP_CACHE"] = str(tmp_path_factory.mktemp("raysweep-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the live report.html rewrite (sweep/live_report.py) costs 0.4-2 s per sweep: on only where a test asks
    os.environ.setdefault("RAYSWEEP_REPORT_INTERVAL_S", "0")
    yield


@pytest.fixture(scope="session")
def builtin_model_dir(_isolated_cache) -> Path:
    from raysweep.inputs.builtin import ensure_builtin_model

    return ensure_builtin_model()


@pytest.fixture(scope="session")
def builtin_task_files(_isolated_cache) -> tuple[Path, Path]:
    from raysweep.inputs.builtin import ensure_builtin_task

    return ensure_builtin_task()
