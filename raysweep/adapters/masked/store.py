"""Pruning masks computed once per key and shared by every trial that needs them.

A mask depends on (model, importance, mask kind, scope, sparsity, mask seed, pruned modules and, for
gradient/taylor importance, the data and calibration size) and never on the adapter's rank, learning rate
or training seed (`mask_key`), so a 360-trial sweep over 30 distinct masks computes 30. Masks live under
the sweeps' storage root (`<storage>/masks/`), which is shared storage on a cluster, so trials on any
node, and later sweeps of the same grid, find them; a file lock makes concurrent trials wait for the one
computing a key instead of computing it again. Outside a sweep (tests, notebooks) they go to the builtin
cache directory.

Layout of one entry, `masks/<importance>-<kind>-s<sparsity>-<hash>/`:
  masks.safetensors      keep-masks (uint8, 1 = keep), one tensor per module name, [out, in] layout
  stats.json             the key, global and per-layer sparsity, seconds it took
  importance_hist.json   histogram of log10 importance scores over all pruned weights
`masks/computations.log` gets one line per computation (what `raysweep masks` and tests count).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysweep.adapters.masked.options import MaskOptions
from raysweep.experiment.layout import MASKS_DIR  # <storage>/masks/, shared by every sweep there
from raysweep.inputs import data, model_cache
from raysweep.inputs.cache import build_once_shared

MASKS_FILE = "masks.safetensors"
STATS_FILE = "stats.json"
HISTOGRAM_FILE = "importance_hist.json"
COMPUTATIONS_LOG = "computations.log"


def reads_data(options: MaskOptions) -> bool:
    """Whether the mask scores weights on training data (gradient/taylor importance; a random mask never)."""
    return options.importance != "magnitude" and options.mask != "random"


def mask_key(options: MaskOptions, model_cfg: dict[str, Any], data_cfg: dict[str, Any],
             modules: Any) -> dict[str, Any]:
    """A mask's identity: everything it depends on, and nothing else (JSON-able; `entry_name` hashes it).

    `modules`: the names of the pruned layers (what the adapter prunes once the model is built); before the
    model exists (`raysweep masks` grouping trials) what chooses them, target_modules and prune_modules.
    Torch-free, like this whole module (torch is imported inside the functions that save and load masks)."""
    o = options
    # `structured_rows` is a new spelling of `structured`: one key, so masks stored under the old one stay found
    mask = "structured" if o.mask == "structured_rows" else o.mask
    key = {"model": model_cache.identity(model_cfg), "importance": o.importance, "mask": mask,
           "scope": o.mask_scope, "sparsity": o.sparsity, "seed": o.mask_seed, "modules": modules}
    if reads_data(o):
        files = [str(f) for f in data.resolve_files(data_cfg) if f]
        key["data"] = {"config": data_cfg, "files": [(f, model_cache.stamp(f)) for f in files],
                       "calibration_examples": o.calibration_examples}
    return key


def entry_name(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    kind = str(key["mask"]).replace(":", "of")
    return f"{key['importance']}-{kind}-s{key['sparsity']:g}-{digest}"


def get_or_compute(store: str | Path, key: dict[str, Any],
                   compute: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict[str, Any], bool]:
    """(keep-masks, stats, computed_now). `compute()` returns (masks, histogram) and runs at most once
    per key across processes sharing the storage root `store` (a directory, or an object-store URI whose
    entries each node keeps a local copy of: inputs/cache.build_once_shared)."""
    from safetensors.torch import load_file, save_file

    computed = []

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        masks, histogram = compute()
        save_file({n: m.to("cpu").contiguous().to(dtype=_uint8()) for n, m in masks.items()}, str(tmp / MASKS_FILE))
        from raysweep.adapters.masked.pruning import mask_stats

        stats = {"key": key, "seconds": round(time.perf_counter() - t0, 3), **mask_stats(masks)}
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2))
        (tmp / HISTOGRAM_FILE).write_text(json.dumps(histogram))
        with (tmp.parent / COMPUTATIONS_LOG).open("a") as log:  # tmp is built beside the entry's place
            log.write(json.dumps({"entry": entry_name(key), "time": time.time(), "seconds": stats["seconds"]}) + "\n")
        computed.append(True)

    directory = build_once_shared(store, f"{MASKS_DIR}/{entry_name(key)}", build)
    masks = {n: m.bool() for n, m in load_file(str(directory / MASKS_FILE)).items()}
    stats = json.loads((directory / STATS_FILE).read_text())
    return masks, stats, bool(computed)


def computations(root: Path) -> list[dict[str, Any]]:
    """Every computation recorded under `root` (one per key, unless entries were deleted)."""
    log = root / COMPUTATIONS_LOG
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def _uint8():
    import torch

    return torch.uint8
