"""A trial's adapter against the model it adapts, from the model's files alone (inputs/model_facts.py: module
names and weight shapes from the safetensors headers, no weight loaded, no torch): target_modules that match
no layer (with the closest names), a rank above the adapted layers' dimensions, an adapter larger than its
base; and the token files' ids against the tokenizer's size (their max cached per file).

Which layers `all-linear` adapts is judged from names and shapes (2-D weights, minus embeddings and the
output head, as peft's all-linear leaves them out); peft builds the exact set in the trial.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from raysweep import config as C
from raysweep.inputs.cache import default_cache_dir
from raysweep.inputs.model_facts import CACHE_DIR, ModelFacts, write_cache

_EMBEDDING_LEAVES = ("wte", "wpe", "lm_head", "embed_out")
_MAX_NAMES = 12  # layer names listed in one message


def adapter_problems(facts: ModelFacts, adapter: C.AdapterConfig, model: str) -> list[str]:
    """What is wrong with `adapter` on this model, one line each, naming the adapter key and the fix."""
    if not facts.weights_read:
        return []
    adapted, problems = _adapted(facts, adapter.target_modules, model)
    if problems or not adapted:
        return problems
    # judged on the widest layer: a rank above a few small layers' min(in, out) (a mixture-of-experts router
    # with 8 outputs) is harmless there, a rank above every layer's only adds parameters
    name, shape = max(adapted.items(), key=lambda item: min(item[1]))
    widest = min(shape)
    if adapter.r > widest:
        problems.append(
            f"adapter.r: {adapter.r} is above min(in, out) of every layer it adapts (at most {widest}, e.g. "
            f"{name}: {shape[0]}×{shape[1]}); ΔW = B·A cannot have a higher rank, so the extra rank only adds "
            f"parameters and time: use adapter.r ≤ {widest}")
        return problems
    lora_params = sum(adapter.r * (s[0] + s[1]) for s in adapted.values())
    if facts.params and lora_params > facts.params:
        problems.append(
            f"adapter.r: {adapter.r} gives an adapter of {_count(lora_params)} parameters on {model}, "
            f"{lora_params / facts.params:.1f}× the whole base model's {_count(facts.params)}: not "
            f"parameter-efficient (and as slow as full fine-tuning or slower); lower adapter.r (about "
            f"{max(1, adapter.r * facts.params // lora_params // 4)} gives a quarter of the base)")
    return problems


def _adapted(facts: ModelFacts, targets: str | list[str], model: str) -> tuple[dict[str, list[int]], list[str]]:
    """(module -> weight shape of every layer the adapter would wrap, problems with target_modules)."""
    shapes = _with_tied_head(facts)
    linear = {n: s for n, s in shapes.items() if not _is_embedding(n, s, facts.config.get("vocab_size"))}
    if targets == "all-linear":
        return linear, []
    names = sorted(set(facts.modules) | set(shapes))
    layers = sorted({n.rpartition(".")[2] for n in linear})
    listing = ", ".join(layers[:_MAX_NAMES]) + (", …" if len(layers) > _MAX_NAMES else "")
    if isinstance(targets, str):  # peft: one regular expression, matched against whole module names
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            return {}, [f"adapter.target_modules: {targets!r} is not a regular expression ({exc}); give "
                        "'all-linear', a list of layer names such as [q_proj, v_proj], or a valid pattern"]
        found = {n: shapes[n] for n in names if pattern.fullmatch(n) and n in shapes}
        if not found:
            return {}, [f"adapter.target_modules: the pattern {targets!r} matches no layer of {model} (peft "
                        f"matches whole module names such as {next(iter(linear), 'model.layers.0.q_proj')!r}); "
                        f"its layers are named: {listing}"]
        return found, []
    adapted, problems = {}, []
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target) or target.endswith("." + n)]
        weighted = {n: shapes[n] for n in hits if n in shapes}
        if not hits:
            close = difflib.get_close_matches(target, layers + sorted({n.rpartition(".")[2] for n in names}),
                                              n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in dict.fromkeys(close))}? " if close else ""
            problems.append(f"adapter.target_modules: {target!r} matches no layer of {model}; {hint}its layers "
                            f"are named: {listing} (or use 'all-linear')")
        elif not weighted:
            problems.append(f"adapter.target_modules: {target!r} names {hits[0]} of {model}, which has no 2-D "
                            f"weight (a norm or bias), so an adapter cannot wrap it; adapt layers such as {listing}")
        adapted |= weighted
    return adapted, problems


def _with_tied_head(facts: ModelFacts) -> dict[str, list[int]]:
    # a tied output head is stored once, as the input embedding; the model still has an lm_head module
    shapes = dict(facts.shapes)
    vocab = facts.config.get("vocab_size")
    if "lm_head" not in shapes and vocab:
        embedding = next((s for n, s in shapes.items() if vocab in s and _is_embedding(n, s, vocab)), None)
        if embedding:
            shapes["lm_head"] = embedding
    return shapes


def _is_embedding(name: str, shape: list[int], vocab: Any) -> bool:
    leaf = name.rpartition(".")[2]
    return "emb" in leaf or leaf in _EMBEDDING_LEAVES or (isinstance(vocab, int) and vocab in shape)


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


# --------------------------------------------------------------------------------------------- token files


def cached_max_id(path: Path, blocks) -> int:
    """The largest token id `blocks` covers, cached per (file, size, mtime, tokens covered): a
    multi-GB .bin is scanned once, not at every `plan`."""
    st = path.stat()
    what = [str(path.resolve()), st.st_size, st.st_mtime_ns, blocks.covered()]
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]
    entry = default_cache_dir() / CACHE_DIR / f"tokens-{key}.json"
    try:
        return int(json.loads(entry.read_text())["max_id"])
    except (OSError, ValueError, KeyError, TypeError):
        top = blocks.max_id()
        write_cache(entry, {"path": what[0], "max_id": top})
        return top
