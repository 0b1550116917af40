"""Packed trials on a ≥ 30M-parameter base: memory and time vs today (issue "Packed trials", case b, in-process).

    .venv/bin/python benchmarks/packing_memory.py [--steps 5] [--checkpointing] [--vocab 151936 --tied]

A Llama-shaped base with random weights made here (hidden 512, 8 layers, MLP 2048: 33.6M parameters, the
builtin tokenizer), 8 LoRA configurations (r 4/8/16/32 × seed 0/1, all-linear), batch 4 × 128 tokens of the
builtin token corpus, `--steps` steps each, evaluation at step 0 and at the end on 8 blocks:
1. today: 2 slots, each a process (1 torch thread) that loads the base once and runs its 4 trials one after
   another (the actor executor without Ray);
2. pack 8: one process with both CPUs (2 torch threads) that trains all 8 as one pack.
`--checkpointing` turns train.gradient_checkpointing on in both. `--vocab N` gives the model a real
tokenizer-sized output layer (151936: Qwen2.5's; `--tied`: tied to the embeddings, as Qwen2.5-0.5B), where the
logits, not the layers' activations, dominate a step's memory; then the pack also runs with its logits made
for the whole batch at once (the fallback, `pack 8, whole-batch logits`) to show what making them member by
member saves. Reported: wall time, and total peak RSS (sum over the processes running at once) with the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
threads, mode, model_dir, steps, cells, gc, seq, evals = (
    int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6] == "1",
    int(sys.argv[7]), int(sys.argv[8]))
torch.set_num_threads(threads)
if mode == "pack-whole":  # the fallback for models whose logits are not their output layer alone
    from raysweep.trial import packing
    packing.head_splits = lambda runner: False
from raysweep.config import grid as G
from raysweep.experiment import metrics as M
from raysweep.inputs import model_cache
from raysweep.trial.loop import run_training
from raysweep.trial.packed_loop import train_pack
from raysweep.trial.session import LocalSession

def config(r, seed):
    # resources.cpus_per_worker = this process's threads: a trial sets its torch threads from it (setup_runtime)
    raw = {"model": {"name_or_path": model_dir}, "resources": {"cpus_per_worker": threads}, "data": {"task": "builtin_tokens", "max_seq_len": seq,
           "max_eval_examples": evals}, "adapter": {"type": "lora", "r": r, "target_modules": "all-linear"},
           "train": {"max_steps": steps, "eval_every": 1000, "batch_size": 4, "eval_batch_size": 8, "lr": 1e-3,
                     "seed": seed, "log_every": 1000, "gradient_checkpointing": gc}}
    return G.trial_config(raw, {})

configs = [config(r, s) for r, s in cells]
t0 = time.perf_counter()
if mode == "alone":
    for cfg in configs:
        with tempfile.TemporaryDirectory() as tmp:
            run_training(cfg, LocalSession(Path(tmp)))
        model_cache.release_trial_memory()
else:
    train_pack(configs)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_model(directory: Path, vocab: int = 307, tied: bool = False, hidden: int = 512, layers: int = 8) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from raysweep.inputs.builtin import ensure_builtin_model

    builtin = ensure_builtin_model()
    # a vocabulary larger than the builtin tokenizer's 307 tokens: the ids stay < 307, the logits span it all
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    for f in builtin.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, directory / f.name)
    return directory


def run(children: list[tuple[int, str, list]], model_dir: Path, steps: int, checkpointing: bool,
        seq: int = 128, evals: int = 8) -> tuple[float, float]:
    """(wall seconds with the children in parallel, Σ of their peak RSS in MB)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(threads), mode, str(model_dir), str(steps),
                               json.dumps(cells), str(int(checkpointing)), str(seq), str(evals)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for threads, mode, cells in children]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return time.perf_counter() - t0, sum(o["peak_rss_mb"] for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--checkpointing", action="store_true", help="train.gradient_checkpointing on (both)")
    parser.add_argument("--vocab", type=int, default=307, help="output vocabulary (151936: Qwen2.5's)")
    parser.add_argument("--tied", action="store_true", help="output layer tied to the embeddings")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (MLP: 4×)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="tokens per example (batch 4)")
    parser.add_argument("--eval-examples", type=int, default=8, help="eval blocks (at step 0 and at the end)")
    parser.add_argument("--no-whole", action="store_true", help="skip the pack with whole-batch logits")
    args = parser.parse_args()
    cells = [[r, s] for r in (4, 8, 16, 32) for s in (0, 1)]
    from raysweep.inputs.builtin import ensure_builtin_tokens

    ensure_builtin_tokens()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "llama", args.vocab, args.tied, args.hidden, args.layers)
        today = run([(1, "alone", cells[:4]), (1, "alone", cells[4:])], model_dir, args.steps, args.checkpointing,
                    args.seq, args.eval_examples)
        packed = run([(2, "pack", cells)], model_dir, args.steps, args.checkpointing, args.seq, args.eval_examples)
        whole = (run([(2, "pack-whole", cells)], model_dir, args.steps, args.checkpointing, args.seq,
                     args.eval_examples)
                 if args.vocab > 307 and not args.no_whole else None)
    from transformers import AutoConfig, AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:  # the parameter count of the shape measured
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(
            make_model(Path(tmp) / "m", args.vocab, args.tied, args.hidden, args.layers))).parameters())
    report = {"steps": args.steps, "seq": args.seq, "gradient checkpointing": args.checkpointing, "vocab": args.vocab, "tied": args.tied,
              "parameters_m": round(params / 1e6, 1),
              "today (2 slots × 4 trials)": {"wall_s": round(today[0], 1), "peak_rss_mb": round(today[1])},
              "pack 8 (one process, 2 threads)": {"wall_s": round(packed[0], 1), "peak_rss_mb": round(packed[1]),
                                                  "speed-up": round(today[0] / packed[0], 2),
                                                  "memory ratio": round(packed[1] / today[1], 2)}}
    if whole:
        report["pack 8, whole-batch logits"] = {"wall_s": round(whole[0], 1), "peak_rss_mb": round(whole[1]),
                                                "speed-up": round(today[0] / whole[0], 2),
                                                "memory ratio": round(whole[1] / today[1], 2)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
