"""SubLoRA PAC-Bayes bounds of a trained model: quantize α, run the quantized model on the training data,
turn code length and per-token probabilities into bounds (the arithmetic lives in coding.py). The adapter
calls `compute_bounds` at the end of training; raysweep/offline/bounds.py calls it on a checkpoint.

The hypothesis whose risk is bounded is the model with the *quantized* α plugged in (θ = θ₀ + P·α̂),
exactly the one the message describes. The prior is everything fixed before seeing data: the base model,
θ₀ (LoRA init from train.seed), the projector (projector_seed), d, the quantizer and the α-grid. The message
is the prefix-free code of α̂ (coding.message_length: header, counts, float32 or float16 codebook
(`bound_codebook_bits`), arithmetic-coded symbols), plus, in learned mode, the split logits θ_split as
float32 (32 bits each, their number is known from the architecture). KL ≤ total bits · ln 2.

Units (what the bound treats as i.i.d.):
  document  token tasks: the documents of train.bin that the training blocks cover (eot file or eos id),
            every token after the first predicted once, on windows of max_seq_len tokens: `sliding`
            (each window advances by the stride and predicts only its new tokens, the rest of it is
            context, as the reference evaluates long documents) or `restart` (windows overlapping by one
            token: the context restarts at each window); other tasks: one training example = one document.
  sequence  the training examples exactly as the loop trains on them (blocks of max_seq_len for token
            tasks), predicting the tokens the training loss counts.
When `bound_sample` < m units, n of them are drawn with a fixed seed (independent of training) and the
sub-sampled bound is used, δ split between its two terms by `bound_delta_split`; otherwise the plain bound
over all m. Every bound holds at confidence 1 − bound_delta on its own (they are separate statements, not
simultaneous).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raysweep.adapters.sublora import coding as B
from raysweep.adapters.sublora.subspace import subspace
from raysweep.experiment import metrics as M
from raysweep.inputs import data

SAMPLE_SEED = 0  # the sub-sample of units: fixed, never derived from the data or the training run
SPLIT_BITS = 32  # per split logit (learned mode), stored as float32


@dataclasses.dataclass
class Units:
    """m units; `get(i)` gives unit i as a list of Examples (windows) whose labelled tokens are its tokens."""

    level: str
    m: int
    get: Callable[[int], list]
    description: str
    key: Any  # units with equal keys are the same (their statistics are computed once)


def _windows(doc: np.ndarray, max_len: int) -> list:
    """Windows of ≤ max_len tokens with stride max_len − 1, labels = inputs: every token after the first is
    predicted exactly once, with up to max_len − 1 tokens of context from the same document."""
    ids = np.asarray(doc, dtype=np.int64).tolist()
    stride = max(1, max_len - 1)
    out = []
    for s in range(0, len(ids) - 1, stride):
        w = ids[s : s + max(2, max_len)]
        if len(w) > 1:
            out.append(data.Example(w, list(w)))
    return out


def _sliding_windows(doc: np.ndarray, max_len: int, stride: int) -> list:
    """Windows of ≤ max_len tokens whose ends advance by `stride`: the first predicts every token after the
    first, each later one only the tokens past the previous window's end, with the rest of the window (at
    least max_len − stride tokens of the same document) as context. Every token after the first is predicted
    exactly once; stride max_len − 1 gives `_windows`' windows except for a longer last one."""
    ids = np.asarray(doc, dtype=np.int64).tolist()
    size = max(2, max_len)
    stride = min(max(1, stride), size - 1)
    end = min(len(ids), size)
    out = [data.Example(ids[:end], ids[:end])] if end > 1 else []
    while end < len(ids):
        new_end = min(len(ids), end + stride)
        start = max(0, new_end - size)
        out.append(data.Example(ids[start:new_end], [data.IGNORE_INDEX] * (end - start) + ids[end:new_end]))
        end = new_end
    return out


def window_stride(opts, max_len: int) -> int | None:
    """The document windows' stride: None for restart windows, else the sliding stride (≤ max_seq_len − 1)."""
    if opts.bound_doc_window == "restart":
        return None
    stride = max_len // 2 if opts.bound_window_stride is None else opts.bound_window_stride
    return max(1, min(stride, max_len - 1))


def units_for(config: dict[str, Any], train_examples: list, eos_id: int | None,
              stride: int | None = None) -> list[Units]:
    """Document- and sequence-level units of a trial's training data (documents on sliding windows of
    `stride` when given, else on restart windows)."""
    d = config["data"]
    seq = Units("sequence", len(train_examples), lambda i: [train_examples[i]],
                f"training example ({'block of max_seq_len tokens' if data.is_token_task(d['task']) else d['task']})",
                ("examples",))
    if not data.is_token_task(d["task"]):
        doc = dataclasses.replace(seq, level="document", description="training example (the task's documents)")
        return [doc, seq]
    # the training blocks cover the first `used` tokens of train.bin (max_train_examples may stop early)
    used = sum(len(e.input_ids) for e in train_examples)
    spans = data.token_document_spans(d, "train", eos_id)
    spans = spans[spans[:, 0] < used]
    spans[:, 1] = np.minimum(spans[:, 1], used)
    spans = spans[spans[:, 1] - spans[:, 0] >= 2]  # a one-token document has nothing to predict
    tokens = data.open_tokens(data.token_dir(d), "train")
    max_len = d["max_seq_len"]
    if stride is None:
        doc = Units("document", len(spans), lambda i: _windows(tokens[spans[i, 0] : spans[i, 1]], max_len),
                    "document of train.bin (within the trained tokens, ≥ 2 tokens)", ("documents",))
    else:
        doc = Units("document", len(spans),
                    lambda i: _sliding_windows(tokens[spans[i, 0] : spans[i, 1]], max_len, stride),
                    "document of train.bin (within the trained tokens, ≥ 2 tokens)", ("documents", stride))
    return [doc, seq]


def sample(m: int, n: int | None) -> np.ndarray:
    """Indices of the evaluated units: all (n None or ≥ m) or n drawn without replacement, fixed seed."""
    if n is None or n >= m:
        return np.arange(m)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(m, size=n, replace=False))


def token_stats(model, units: list[list], ks: list[int], batch_size: int, device, pad_id: int):
    """Per unit: the probabilities the model gives each true next token (float64 array), and per k the
    fraction of its tokens whose true token is in the top k. Also the vocabulary size (logit width)."""
    items = [(u, ex) for u, exs in enumerate(units) for ex in exs]
    probs: list[list[np.ndarray]] = [[] for _ in units]
    hits: dict[int, list[list[np.ndarray]]] = {k: [[] for _ in units] for k in ks}
    vocab = None
    kmax = max(ks)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                chunk = items[i : i + batch_size]
                batch = {k: v.to(device) for k, v in data.collate([ex for _, ex in chunk], pad_id).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
                vocab = logits.shape[-1]
                valid = labels != data.IGNORE_INDEX
                safe = labels.clamp(min=0)
                p = torch.log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1).double().exp()
                top = logits.topk(min(kmax, vocab), dim=-1).indices == safe.unsqueeze(-1)
                for row, (u, _) in enumerate(chunk):
                    v = valid[row]
                    probs[u].append(p[row][v].cpu().numpy())
                    for k in ks:
                        hits[k][u].append(top[row, :, :k].any(-1)[v].cpu().numpy())
    finally:
        model.train(was_training)
    unit_probs = [np.concatenate(x) if x else np.zeros(0) for x in probs]
    empty = [i for i, x in enumerate(unit_probs) if x.size == 0]
    if empty:
        raise ValueError(f"{len(empty)} bound unit(s) have no predicted token; check data.max_seq_len")
    fractions = {k: np.array([np.concatenate(h).mean() for h in hits[k]]) for k in ks}
    return unit_probs, fractions, vocab


def bits_per_token(unit_probs: list[np.ndarray]) -> float:
    """Mean over units of the unit's mean −log2 p (the same averaging as the bound's empirical risk)."""
    return float(np.mean([np.mean(-np.log2(np.clip(p, 1e-300, 1.0))) for p in unit_probs]))


def _bound_dict(b: B.Bound) -> dict[str, Any]:
    return dataclasses.asdict(b)


def quantized_message(alpha: np.ndarray, levels: int, method: str, n_split: int,
                      codebook_bits: int = B.CODEBOOK_BITS_PER_LEVEL) -> tuple[B.Quantized, dict]:
    q = B.quantize(alpha, levels, method, codebook_bits=codebook_bits)
    ml = B.message_length(q)
    split_bits = SPLIT_BITS * n_split
    total = ml.total_bits + split_bits
    message = dataclasses.asdict(ml) | {"split_bits": split_bits, "alpha_bits": ml.total_bits,
                                        "total_bits": total, "kl_nats": total * B.LN2}
    return q, message


def compute_bounds(model, adapter, config: dict[str, Any], train_examples: list, *, device=None,
                   eos_id: int | None = None, pad_id: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flat bound/* metrics, the full JSON report) for a SubLoRA model; α is restored afterwards."""
    t0 = time.perf_counter()
    opts = adapter.options
    state = subspace(model)
    device = device if device is not None else state.alpha.device
    cfg_model = getattr(model, "config", None)
    if eos_id is None:
        eos = getattr(cfg_model, "eos_token_id", None)
        eos_id = eos[0] if isinstance(eos, list | tuple) else eos
    if pad_id is None:  # padding sits after the real tokens under a causal mask and is never a label
        pad_id = getattr(cfg_model, "pad_token_id", None) or 0

    alpha = state.alpha.detach().cpu().double().numpy()
    n_split = state.theta_split.numel() if opts.allocation_mode == "learned" else 0
    q, message = quantized_message(alpha, opts.bound_levels, opts.bound_quantizer, n_split, opts.bound_codebook_bits)
    alpha_q = torch.from_numpy(B.dequantize(q).astype(np.float32)).to(state.alpha)
    kl = message["kl_nats"]

    stride = window_stride(opts, config["data"]["max_seq_len"])
    levels = units_for(config, train_examples, eos_id, stride)
    batch_size = config["train"]["eval_batch_size"]
    cache: dict[Any, Any] = {}
    report_levels: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    vocab = None
    for units in levels:
        idx = sample(units.m, opts.bound_sample)
        key = (units.key, units.m, len(idx))
        if key not in cache:
            chosen = [units.get(int(i)) for i in idx]
            saved = state.alpha.detach().clone()
            try:
                with torch.no_grad():
                    state.alpha.copy_(alpha_q)
                qp, fractions, vocab = token_stats(model, chosen, opts.bound_top_k, batch_size, device, pad_id)
            finally:
                with torch.no_grad():
                    state.alpha.copy_(saved)
            up, _, _ = token_stats(model, chosen, [1], batch_size, device, pad_id)
            cache[key] = (qp, fractions, up, vocab, sum(len(p) for p in qp))
        qp, fractions, up, vocab, n_tokens = cache[key]
        n = len(idx)
        n_sampled = n if n < units.m else None
        split = B.delta_split(opts.bound_delta_split, n_sampled, units.m)
        smoothed = B.smoothed_bpd_bound(qp, vocab, kl, units.m, opts.bound_delta, opts.bound_alphas,
                                        n_sampled=n_sampled, level=units.level, delta_split=split)
        topk = {k: B.topk_error_bound(kl, units.m, correct=fractions[k], k=k, delta=opts.bound_delta,
                                      n_sampled=n_sampled, level=units.level, delta_split=split)
                for k in opts.bound_top_k}
        bpd_q, bpd_u = bits_per_token(qp), bits_per_token(up)
        best = smoothed.best
        report_levels[units.level] = {
            "unit": units.description, "units": units.m, "sampled": n, "subsampled": n_sampled is not None,
            "tokens": n_tokens, "bpd_empirical": bpd_q, "bpd_unquantized": bpd_u,
            "quantization_error_bpd": bpd_q - bpd_u,
            "bpd": {"alpha": best.alpha, "bound": _bound_dict(best.bound), "grid_nats": smoothed.grid_nats,
                    "rows": [{"alpha": r.alpha, "bound": _bound_dict(r.bound)} for r in smoothed.rows]},
            "top_k": {str(k): _bound_dict(b) for k, b in topk.items()},
        }
        metrics |= {
            M.bound_key(units.level, "bpd"): best.bound.value,
            M.bound_key(units.level, "bpd_empirical"): bpd_q,
            M.bound_key(units.level, "bpd_unquantized"): bpd_u,
            M.bound_key(units.level, "alpha_smoothing"): best.alpha,
            M.bound_key(units.level, "vacuous_bpd"): bool(best.bound.vacuous),
            M.bound_key(units.level, "units"): units.m,
            M.bound_key(units.level, "sampled"): n,
        }
        for k, b in topk.items():
            metrics[M.bound_topk_key(units.level, k)] = b.value
            metrics[M.bound_topk_key(units.level, k, empirical=True)] = b.empirical

    seconds = time.perf_counter() - t0
    metrics |= {M.BOUND_COMPRESSED_BITS: message["total_bits"], M.BOUND_KL_NATS: kl,
                M.BOUND_QUANT_LEVELS: int(q.centroids.size), M.BOUND_SECONDS: seconds}
    counts = np.bincount(np.asarray(q.symbols).ravel(), minlength=q.centroids.size)
    report = {
        "hypothesis": {
            "intrinsic_dim": state.d, "projected_params": state.projected_params(),
            "allocation_mode": opts.allocation_mode, "projector": opts.projector,
            "projector_seed": opts.projector_seed, "train_seed": config["train"]["seed"],
            "vocab_size": vocab,
        },
        "quantization": {
            "method": opts.bound_quantizer, "codebook_bits": q.codebook_bits,
            "levels_requested": opts.bound_levels, "levels_used": int(q.centroids.size),
            "centroids": q.centroids.astype(float).tolist(), "counts": counts.tolist(),
            "max_abs_error": float(np.max(np.abs(alpha - B.dequantize(q)))),
            "rms_error": float(np.sqrt(np.mean((alpha - B.dequantize(q)) ** 2))),
            "alpha_rms": float(np.sqrt(np.mean(alpha**2))),
        },
        "message": message,
        "delta": opts.bound_delta,
        "delta_split": opts.bound_delta_split,
        # documents are windowed only in token tasks (elsewhere a document is one training example)
        "doc_window": {"kind": opts.bound_doc_window, "stride": stride}
        if data.is_token_task(config["data"]["task"]) else None,
        "alphas": list(opts.bound_alphas),
        "levels": report_levels,
        "metrics": metrics,
        "seconds": seconds,
        "notes": "bound = empirical + sampling + complexity (coding.py); each bound holds on its own with "
                 "probability ≥ 1 − delta; choosing among several trials costs ln(#trials) nats more.",
    }
    if opts.allocation_mode == "learned":
        report["gamma"] = adapter.gammas(model)  # A's share per module, whatever the convention
        report["allocation"] = adapter.split_report(model)
    return metrics, report
