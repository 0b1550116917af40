"""The builtin model: a tiny Llama, pretrained locally in well under a minute.

It exists so a sweep can run end to end with no hub access, while still being a
*standard* transformers checkpoint (LlamaForCausalLM + fast tokenizer with a
chat template) that the normal loading / peft code paths handle unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from raysweep.inputs.cache import build_once, default_cache_dir

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

# torch/transformers are imported inside the builders: the sweep driver calls ensure_builtin_model()
# on every run and must not pay ~3 s of imports when the model is already cached

# Bump whenever anything below (or in corpus/tokenizer) changes the weights:
# the version is part of the directory name, so old caches are never reused.
MODEL_VERSION = "v1"

SEED = 0
# Build on exactly one thread. Float reductions depend on how work is split
# across threads, so a fixed count keeps the weights bit-identical whether the
# builder is a driver or a Ray worker (OMP_NUM_THREADS=1). And it must be *one*:
# with 2 OpenMP threads on a 2-core node where another trial holds a core, a
# step went from ~50 ms to ~4 s (spin-waiting threads), blowing the budget.
BUILD_THREADS = 1

ARCH = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,  # 2 layers learn copying faster than 4 and halve step time
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,  # keeps lm_head out of peft's "all-linear" too
)
# lr matters a lot here: at 2e-3+ the tiny model stays on the "uniform letter"
# plateau (loss ~2.7) for the whole budget; at 1e-3 copying/shifting is learned
# (loss < 0.1, ~100% exact match) in ~400 steps, ~22 s on one thread.
PRETRAIN = dict(examples=32_000, steps=400, batch_size=64, lr=1e-3, warmup=30, weight_decay=0.0)


def _pretrain(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast) -> float:
    import torch

    from raysweep.inputs.examples import collate

    from .corpus import pretrain_examples
    from .encoding import encode_many

    cfg = PRETRAIN
    rows = encode_many(tok, list(pretrain_examples(cfg["examples"], seed=SEED)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # Short linear warmup, then cosine decay to 10% so the last steps settle.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / cfg["warmup"]) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg["steps"])))
        ),
    )
    model.train()
    bs, loss = cfg["batch_size"], torch.tensor(float("nan"))
    for step in range(cfg["steps"]):
        start = (step * bs) % len(rows)  # fixed data order -> deterministic
        batch = collate(rows[start : start + bs] or rows[:bs], tok.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


def _build(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .corpus import tokenizer_texts
    from .tokenizer import train_tokenizer

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):  # don't disturb the caller's RNG
            torch.manual_seed(SEED)
            tok = train_tokenizer(tokenizer_texts())
            config = LlamaConfig(
                vocab_size=len(tok),
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                **ARCH,
            )
            model = LlamaForCausalLM(config)
            final_loss = _pretrain(model, tok)
    finally:
        torch.set_num_threads(prev_threads)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)  # safetensors
    tok.save_pretrained(out)
    info = {"version": MODEL_VERSION, "arch": ARCH, "pretrain": PRETRAIN, "final_pretrain_loss": final_loss}
    (out / "raysweep_builtin.json").write_text(json.dumps(info, indent=2))


def ensure_builtin_model(cache_dir: Path | None = None) -> Path:
    """Local dir loadable by AutoModelForCausalLM/AutoTokenizer.from_pretrained."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / "models" / f"builtin-{MODEL_VERSION}", _build)
