"""Memory a trial process spends on its data: in-memory tokenized lists (before) vs the memory-mapped cache.

    .venv/bin/python benchmarks/data_cache.py [--conversations 100000]

Writes a chat JSONL of N one-turn conversations in the builtin task's alphabet, tokenizes it once into the
on-disk cache (inputs/tokenized.py; the seconds it takes are printed), then in two fresh processes each:
imports the stack and loads the builtin tokenizer, measures RSS, gets the (train, eval) splits — either
`data.load_splits` (Python lists of Example, what every trial process held before the cache) or
`tokenized.load` (memory-mapped .npy) — reads every training example once (an epoch touches every page),
and measures again. Reported: the RSS growth and the USS growth (memory unique to the process: the cache's
pages are shared by every process that maps the file, and the OS can drop them, so they are not counted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, psutil
from transformers import AutoTokenizer
from raysweep.inputs import data, models, tokenized
from tests.helpers import trial_config

how, path, store = sys.argv[1:4]
config = trial_config(data={"task": "chat", "train_file": path, "max_seq_len": 32, "max_eval_examples": None})
tok = AutoTokenizer.from_pretrained(models.resolve("builtin"))
me = psutil.Process()
before = me.memory_full_info()
if how == "lists":
    train, evals = data.load_splits(tok, config["data"])
else:
    train, evals = tokenized.load(tok, config["model"], config["data"], store)
tokens = sum(len(e.input_ids) for e in train)  # one epoch's worth of reads
after = me.memory_full_info()
print(json.dumps({"rss_mb": (after.rss - before.rss) / 2**20, "uss_mb": (after.uss - before.uss) / 2**20,
                  "examples": len(train), "tokens": tokens}))
"""


def child(how: str, path: Path, store: Path) -> dict:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CHILD, how, str(path), str(store)], capture_output=True,
                          text=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=100_000)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from raysweep.inputs import models, tokenized
    from raysweep.inputs.builtin import ensure_builtin_model
    from tests.helpers import trial_config, write_cipher_chats

    ensure_builtin_model()
    with tempfile.TemporaryDirectory() as tmp:
        path, store = Path(tmp) / "chat.jsonl", Path(tmp) / "store"
        write_cipher_chats(path, args.conversations)
        config = trial_config(data={"task": "chat", "train_file": str(path), "max_seq_len": 32,
                                    "max_eval_examples": None})
        t0 = time.perf_counter()
        tokenized.load(AutoTokenizer.from_pretrained(models.resolve("builtin")), config["model"], config["data"], store)
        build_s = time.perf_counter() - t0
        _, size = tokenized.state(tokenized.root_dir(store), tokenized.cache_key(config["model"], config["data"]))
        lists, mapped = child("lists", path, store), child("mapped", path, store)
    assert lists["tokens"] == mapped["tokens"] and lists["examples"] == mapped["examples"]
    print(json.dumps({"conversations": args.conversations, "tokenize once (s)": round(build_s, 1),
                      "cache on disk (MiB)": round(size / 2**20, 1), "lists (before)": lists, "memory-mapped": mapped,
                      "USS ratio": round(mapped["uss_mb"] / lists["uss_mb"], 3),
                      "RSS ratio": round(mapped["rss_mb"] / lists["rss_mb"], 3)}, indent=1))


if __name__ == "__main__":
    main()
