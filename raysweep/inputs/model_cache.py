"""Per-process caches of the frozen base model and the tokenized data, for trials in reused actors.

With the `actor` executor (docs/ARCHITECTURE.md, "Executors") one Python process runs trial after trial.
Loading the base weights from disk and tokenizing the data again for every trial is wasted work (for a
multi-billion-parameter model it dominates start-up), so the process keeps exactly one base model and
one tokenized dataset, keyed by everything that determines them, and evicts them when the key changes.

Each trial gets a *fresh view* of the cached base: a new module tree (its own config, hooks, adapter
layers and `requires_grad` flags) whose parameters share storage with the cache. Adapters train only
their own parameters and must never write into base weights in place; `fingerprint()` lets tests check
that the cache is unchanged after a trial. No library offers this (peft's `unload()` restores modules but
not flags, hooks or config edits made by a trial), hence the hand-written copy below.

`RAYSWEEP_BASE_CACHE=0` turns both caches off (each trial loads from disk, as a fresh process would).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_base: tuple[tuple, Any, Any] | None = None  # (key, model, tokenizer)
_splits: tuple[tuple, Any] | None = None  # (key, (train, eval))
_frozen = False  # release_trial_memory froze the heap (gc.freeze) since the last clear()


def enabled() -> bool:
    return os.environ.get("RAYSWEEP_BASE_CACHE", "1") not in ("0", "false", "no")


def stamp(path: str | Path) -> tuple:
    """(mtime, size) of a local file, or of a model directory's config and weight files, so rewriting any
    of them on disk invalidates the cache (hub ids: empty; the hub cache is content-addressed)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(
        f for pattern in ("config.json", "*.safetensors", "*.bin", "*.json") for f in p.glob(pattern)) if p.is_dir() else []
    stamp = []
    for f in dict.fromkeys(files):
        try:
            st = f.stat()
            stamp.append((f.name, st.st_mtime_ns, st.st_size))
        except OSError:
            continue
    return tuple(stamp)


QUANT_KEYS = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")


def _quant(model_cfg: dict[str, Any]) -> str:
    return json.dumps({k: model_cfg.get(k) for k in QUANT_KEYS} if model_cfg.get("load_in_4bit") else None,
                      sort_keys=True)


def _model_key(model_cfg: dict[str, Any], source: str, device) -> tuple:
    return (source, stamp(source), model_cfg.get("dtype", "float32"), bool(model_cfg.get("trust_remote_code")),
            _quant(model_cfg), str(device))


def identity(model_cfg: dict[str, Any]) -> list:
    """What determines a base model's weights, JSON-able (keys of results computed from the base, e.g. masks)."""
    from raysweep.inputs import models

    if model_cfg["name_or_path"] == models.BUILTIN:
        # the builtin model is generated deterministically per version: the same on every node, whatever its
        # cache path or file times (so nodes of a cluster share one mask)
        from raysweep.inputs import sources

        return ["builtin", sources.builtin_model_version(), model_cfg.get("dtype", "float32")]
    source = models.resolve(model_cfg["name_or_path"])
    return [source, [list(s) for s in stamp(source)], model_cfg.get("dtype", "float32"),
            _quant(model_cfg)]


def clear() -> None:
    """Drop both caches and give the memory back (also used when a key changes)."""
    global _base, _splits, _frozen
    _base, _splits = None, None
    gc.unfreeze()  # objects frozen by release_trial_memory (the old base among them) can be collected again
    _frozen = False
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def release_trial_memory() -> None:
    """After a trial in a reused process: collect its model/optimizer and return cached GPU blocks, so
    the next trial (and other processes sharing the GPU) start from the base model's footprint only."""
    global _frozen
    gc.collect()
    if not _frozen:
        # After the process's first trial, what is alive is its long-lived heap (torch, transformers, peft,
        # the cached base): move it to the permanent generation once, so every later collection (this one
        # after each trial, and the automatic ones) scans only what trials create. A full collection over
        # the whole heap took ~0.4 s per trial (RESULTS.md (j)). Only once: garbage frozen with it is never
        # collected, so freezing after every trial would keep each trial's leftovers. clear() unfreezes.
        gc.freeze()
        _frozen = True
    _trim_heap()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        # sys/mem_mb is the peak since the counter's reset: without this, a trial would report the peak of
        # the biggest trial this process ran before it
        torch.cuda.reset_peak_memory_stats()


def _trim_heap() -> None:
    """Give the heap pages the finished trial freed back to the OS (glibc only; elsewhere nothing to do).
    glibc keeps freed memory in its per-thread arenas: without this a reused actor's RSS grew ~15 MB per
    2-step builtin trial (640 → 1090 MB over 30 trials, RESULTS.md (j)) though no Python object leaked."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator returns memory its own way
        pass


def fresh_view(model):
    """A new module tree over the same weight storage: parameters become new `Parameter` objects sharing
    data (so flags and gradients are per trial), buffers are cloned (small, and some are updated in place),
    everything else (config, hooks, submodules) is deep-copied. Tied weights stay tied."""
    import torch

    memo: dict[int, Any] = {}
    for p in model.parameters():
        if id(p) not in memo:
            # quantized parameter subclasses carry extra state; they are frozen, so share them as they are
            plain = type(p) is torch.nn.Parameter
            memo[id(p)] = torch.nn.Parameter(p.data, requires_grad=p.requires_grad) if plain else p
    for b in model.buffers():
        memo.setdefault(id(b), b.clone())
    return copy.deepcopy(model, memo)


def base_model(model_cfg: dict[str, Any], device) -> tuple[Any, Any, bool, float]:
    """(fresh model view on `device`, tokenizer copy, cache hit?, seconds spent)."""
    global _base
    from raysweep.inputs import models

    t0 = time.perf_counter()
    source = models.resolve(model_cfg["name_or_path"])
    key = _model_key(model_cfg, source, device)
    if not enabled():
        model, tokenizer = models.load(model_cfg, device)
        return model.to(device), tokenizer, False, time.perf_counter() - t0
    hit = _base is not None and _base[0] == key
    if not hit:
        clear()  # one base per process: free the old one before loading the next
        model, tokenizer = models.load(model_cfg, device)
        model.to(device)
        model.requires_grad_(False)
        _base = (key, model, tokenizer)
    _, model, tokenizer = _base
    return fresh_view(model), copy.deepcopy(tokenizer), hit, time.perf_counter() - t0


def splits(model_cfg: dict[str, Any], data_cfg: dict[str, Any], data_files: list[str],
           build: Callable[[], Any]) -> tuple[Any, bool]:
    """The tokenized (train, eval) splits, built once per (tokenizer, data config, files and their stamps).
    Trials must not modify them (they are shared by every trial of this process)."""
    global _splits
    if not enabled():
        return build(), False
    from raysweep.inputs import models

    source = models.resolve(model_cfg["name_or_path"])  # the tokenizer's identity
    key = (source, stamp(source), json.dumps(data_cfg, sort_keys=True), tuple((f, stamp(f)) for f in data_files))
    if _splits is not None and _splits[0] == key:
        return _splits[1], True
    _splits = None
    _splits = (key, build())
    return _splits[1], False


def fingerprint(model) -> str:
    """A hash of every parameter's bytes and name (tests: the cached base is unchanged by a trial)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_base():
    """The cached base model (None if empty); for tests and benchmarks."""
    return _base[1] if _base else None
