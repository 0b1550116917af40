"""The builtin token corpus: nanoGPT-style train.bin / val.bin (+ end-of-text positions), made locally.

`data.task: builtin_tokens` resolves to this directory. Documents are a few lines of the builtin
cipher task written as plain text (" encode: a b c d = x y z w"), so language-model fine-tuning on
the stream has something new to learn, and train/val documents use disjoint inputs. Each document is
followed by the tokenizer's eos id, exactly as nanoGPT's prepare.py appends `eot_token`, and the
eos positions are stored in `<split>_eot.npy` (document boundaries for document-level bounds).
Token ids come from the builtin tokenizer, so pair this corpus with `model.name_or_path: builtin`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from raysweep.inputs.cache import build_once, default_cache_dir

from .corpus import Example, task_splits
from .model import MODEL_VERSION

# Part of the directory name (with MODEL_VERSION, which a tokenizer change bumps): bump when the
# documents or sizes change, so an old cache is never reused.
TOKENS_VERSION = "v3"
N_TRAIN_DOCS, N_VAL_DOCS = 100_000, 500  # m ≫ the KL of a d = 1000 SubLoRA message (~2,300 nats)
EXAMPLES_PER_DOC = (1, 6)  # documents of varied length, so document- and block-level views differ
SEED = 3
TOKEN_DTYPE = np.uint16  # nanoGPT's format: ids must fit 16 bits


def _line(example: Example) -> str:
    # leading space: the tokenizer's merges are " encode", " a", ... (see corpus.tokenizer_texts)
    return f" {example[0]['content']} = {example[1]['content']}\n"


def builtin_token_texts() -> tuple[list[str], list[str]]:
    """(train, val) documents as text, deterministic; no cipher input appears in both splits."""
    rng = random.Random(SEED)
    sizes = [rng.randint(*EXAMPLES_PER_DOC) for _ in range(N_TRAIN_DOCS + N_VAL_DOCS)]
    train_sizes, val_sizes = sizes[:N_TRAIN_DOCS], sizes[N_TRAIN_DOCS:]
    train_ex, val_ex = task_splits(sum(train_sizes), sum(val_sizes), seed=SEED)

    def group(examples: list[Example], doc_sizes: list[int]) -> list[str]:
        docs, i = [], 0
        for n in doc_sizes:
            docs.append("".join(_line(ex) for ex in examples[i : i + n]))
            i += n
        return docs

    return group(train_ex, train_sizes), group(val_ex, val_sizes)


def _write_split(out: Path, split: str, docs: list[list[int]], eos_id: int) -> int:
    stream: list[int] = []
    eot: list[int] = []
    for ids in docs:
        stream += ids
        stream.append(eos_id)
        eot.append(len(stream) - 1)
    np.asarray(stream, dtype=TOKEN_DTYPE).tofile(out / f"{split}.bin")
    np.save(out / f"{split}_eot.npy", np.asarray(eot, dtype=np.int64))
    return len(stream)


def _build(out: Path) -> None:
    from .corpus import tokenizer_texts
    from .tokenizer import train_tokenizer

    # The same deterministic fit the builtin model's _build does (~0.01 s), so building this corpus
    # never needs the model; a test checks the ids against the model's saved tokenizer.
    tok = train_tokenizer(tokenizer_texts())
    if len(tok) > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"builtin tokenizer has {len(tok)} tokens; uint16 token files hold at most 65536")
    sizes = {}
    for split, texts in zip(("train", "val"), builtin_token_texts(), strict=True):
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        sizes[split] = {"documents": len(texts), "tokens": _write_split(out, split, ids, tok.eos_token_id)}
    info = {"version": TOKENS_VERSION, "tokenizer": f"builtin-{MODEL_VERSION}", "vocab_size": len(tok),
            "eos_id": tok.eos_token_id, "dtype": "uint16", "splits": sizes}
    (out / "raysweep_builtin.json").write_text(json.dumps(info, indent=2))


def ensure_builtin_tokens(cache_dir: Path | None = None) -> Path:
    """Directory with train.bin, val.bin, train_eot.npy, val_eot.npy; built once (~1 s) and cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_once(root / "tasks" / f"builtin_tokens-{TOKENS_VERSION}-model-{MODEL_VERSION}", _build)
