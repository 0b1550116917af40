"""Pruning masks: importance scores, mask construction at an exact sparsity, statistics.

Pure tensor functions (no model, no Ray): `importance` turns a weight (and the mean calibration
gradient) into scores, `make_masks` turns scores into keep-masks, `mask_stats`/`score_histogram`
describe them. Weights are always given in [out_features, in_features] layout (callers transpose
Conv1D-style layers), so "structured_rows" (or "structured") means whole output rows and
"structured_cols" whole input columns everywhere.

A mask is a bool tensor, True = keep. Sparsity = fraction of False. No library implements these
exact-count variants (torch.nn.utils.prune rounds differently per method and prunes in place on the
module), and the masks must be shared across trials, so they are written here.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside the functions: grid validation uses the constants without it
    import torch

IMPORTANCE = ("magnitude", "gradient", "taylor")
MASK_KINDS = ("unstructured", "structured", "structured_rows", "structured_cols", "random")  # plus N:M such as "2:4"
STRUCTURED_ALIASES = {"structured": "structured_rows"}  # the first structured kind: whole output rows
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_nm(kind: str) -> tuple[int, int] | None:
    """(N, M) for an 'N:M' mask kind (keep N of every M consecutive inputs), else None."""
    match = NM_PATTERN.match(kind)
    if not match:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    return (n, m) if 0 < n < m else None


def check_mask_options(kind: str, sparsity: float, scope: str) -> str | None:
    """The problem with a (mask, sparsity, mask_scope) combination, as a message; None if fine."""
    nm = parse_nm(kind)
    if kind not in MASK_KINDS and nm is None:
        return (f"mask {kind!r} is not known; use one of {', '.join(MASK_KINDS)} or an N:M pattern "
                "such as '2:4' (keep N of every M inputs)")
    if nm is not None and not math.isclose(sparsity, 1 - nm[0] / nm[1]):
        return (f"mask {kind!r} prunes exactly {1 - nm[0] / nm[1]:g} of each group, but sparsity is {sparsity:g}; "
                f"set adapter.sparsity to {1 - nm[0] / nm[1]:g} for this mask")
    if scope == "global" and kind != "unstructured":
        return f"mask_scope 'global' applies to unstructured masks only (mask is {kind!r}); use mask_scope 'layer'"
    return None


def importance(weight: torch.Tensor, grad: torch.Tensor | None, kind: str) -> torch.Tensor:
    """Per-weight importance: |W| (magnitude), |G| (gradient) or |W·G| (taylor).

    G is the mean loss gradient over the calibration batches. Taylor is the first-order estimate of
    the loss change when a weight is set to zero: ΔL ≈ G·(0 − W), so |W·G|."""
    if kind == "magnitude":
        return weight.detach().abs().float()
    if grad is None:
        raise ValueError(f"importance {kind!r} needs calibration gradients")
    if kind == "gradient":
        return grad.detach().abs().float()
    if kind == "taylor":
        return (weight.detach().float() * grad.detach().float()).abs()
    raise ValueError(f"unknown importance {kind!r}; use one of {', '.join(IMPORTANCE)}")


def _prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (flat) that drops exactly the k lowest scores; ties broken by position (stable)."""
    import torch

    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(scores.reshape(-1).cpu(), stable=True)
        keep[order[:k]] = False
    return keep


def _count(sparsity: float, n: int) -> int:
    # round half up, so e.g. 0.5 of 5 rows prunes 3 on every platform (Python's round is half-even)
    return min(n, int(math.floor(sparsity * n + 0.5)))


def layer_mask(scores: torch.Tensor, sparsity: float, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Keep-mask for one [out, in] layer.

    unstructured: exactly round(s·numel) weights pruned; structured_rows (= structured): round(s·rows)
    whole output rows (sparsity exact to one row); structured_cols: round(s·columns) whole input columns;
    N:M: in each group of M consecutive inputs of a row the M−N lowest are pruned (needs in_features % M
    == 0); random: round(s·numel) positions drawn from `generator`."""
    import torch

    out_f, in_f = scores.shape
    kind = STRUCTURED_ALIASES.get(kind, kind)
    if kind == "unstructured":
        return _prune_lowest(scores, _count(sparsity, scores.numel())).reshape(out_f, in_f)
    if kind == "random":
        keep = torch.ones(scores.numel(), dtype=torch.bool)
        keep[torch.randperm(scores.numel(), generator=generator)[: _count(sparsity, scores.numel())]] = False
        return keep.reshape(out_f, in_f)
    if kind == "structured_rows":
        # a row's importance is its total importance (L1 of the scores): a row of many medium weights
        # can matter more than a row with one large one
        rows = _prune_lowest(scores.float().sum(dim=1), _count(sparsity, out_f))
        return rows[:, None].expand(out_f, in_f).clone()
    if kind == "structured_cols":
        # the same over input columns: a pruned column removes one input feature from the layer
        cols = _prune_lowest(scores.float().sum(dim=0), _count(sparsity, in_f))
        return cols[None, :].expand(out_f, in_f).clone()
    nm = parse_nm(kind)
    if nm is None:
        raise ValueError(f"unknown mask kind {kind!r}")
    n, m = nm
    if in_f % m:
        raise ValueError(f"mask {kind!r} needs in_features divisible by {m}, but a layer has {in_f}")
    groups = scores.float().reshape(out_f, in_f // m, m).cpu()
    order = torch.argsort(groups, dim=-1, stable=True)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., : m - n], False)
    return keep.reshape(out_f, in_f)


def make_masks(scores: dict[str, torch.Tensor], sparsity: float, kind: str, scope: str = "layer",
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, CPU) for every layer, in the order of `scores` (sorted by name for stability).

    scope 'global' (unstructured only) ranks all weights of all layers together: the total pruned is
    exactly round(s·N) while single layers may be pruned more or less than s."""
    import torch

    problem = check_mask_options(kind, sparsity, scope)
    if problem:
        raise ValueError(problem)
    names = sorted(scores)
    if scope == "global":
        flat = torch.cat([scores[n].reshape(-1).float().cpu() for n in names])
        keep = _prune_lowest(flat, _count(sparsity, flat.numel()))
        out, start = {}, 0
        for n in names:
            size = scores[n].numel()
            out[n] = keep[start : start + size].reshape(scores[n].shape)
            start += size
        return out
    generator = torch.Generator().manual_seed(seed)
    return {n: layer_mask(scores[n].cpu(), sparsity, kind, generator) for n in names}


def mask_stats(masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Global and per-layer sparsity of keep-masks."""
    layers = {n: {"numel": m.numel(), "pruned": int((~m).sum()), "sparsity": float((~m).sum()) / m.numel()}
              for n, m in masks.items()}
    numel = sum(v["numel"] for v in layers.values())
    pruned = sum(v["pruned"] for v in layers.values())
    return {"numel": numel, "pruned": pruned, "sparsity": pruned / numel if numel else 0.0, "layers": layers}


def score_histogram(scores: dict[str, torch.Tensor], bins: int = 40) -> dict[str, Any]:
    """Histogram of log10 importance over all layers (scores span decades; zeros counted apart)."""
    import torch

    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores.values()])
    zeros = int((flat == 0).sum())
    logs = torch.log10(flat[flat > 0])
    if logs.numel() == 0:
        return {"log10_edges": [], "counts": [], "zeros": zeros}
    lo, hi = float(logs.min()), float(logs.max())
    hi = hi if hi > lo else lo + 1.0
    counts = torch.histc(logs, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"log10_edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts], "zeros": zeros}
