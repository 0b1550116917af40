"""Train-step time: the raysweep worker loop vs a bare peft + torch loop, same model, data and batch.

    .venv/bin/python benchmarks/step_time.py [--steps 60 120] [--rank 16] [--adapter lora]

Both loops run in this process on 1 torch thread (what a 1-CPU trial gets). The per-step time is
(wall(N2 steps) − wall(N1 steps)) / (N2 − N1), so start-up, the step-0 and final evaluations and
checkpoint writing cancel out; what remains is everything the loop does per optimizer step
(collation, forward/backward, clipping, optimizer, scheduler, adapter hooks, metric reports).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def raysweep_loop(steps: int, adapter: str, rank: int, seed: int) -> float:
    from raysweep import config as G
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    raw = G.read_yaml(Path(__file__).parents[1] / "search_spaces" / "quickstart.yaml")
    cfg = G.trial_config(raw, {"adapter.type": adapter, "adapter.r": rank, "train.seed": seed,
                                   "train.max_steps": steps, "train.eval_every": 10**6})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_training(cfg, LocalSession(Path(tmp)))
        return time.perf_counter() - t0


def bare_loop(steps: int, adapter: str, rank: int, seed: int) -> float:
    """What a researcher's finetune.py does: load, wrap with peft, AdamW, loop over fixed batches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysweep.inputs import data
    from raysweep.inputs.builtin import ensure_builtin_model, ensure_builtin_task

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    path = ensure_builtin_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                      use_dora=adapter == "dora"))
    train, val = ensure_builtin_task()
    cfg = {"task": "chat", "train_file": str(train), "validation_file": str(val), "validation_split": 0.1,
           "max_seq_len": 32, "max_train_examples": None, "max_eval_examples": None}
    examples, evals = data.load_splits(tok, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = model(**data.collate(evals, tok.pad_token_id)).loss.item()
        model.train()
        return loss

    eval_loss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(examples), (32,), generator=g).tolist()
        loss = model(**data.collate([examples[i] for i in idx], tok.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    eval_loss()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, nargs=2, default=[60, 160])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--adapter", default="lora")
    p.add_argument("--rank", type=int, default=16)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    n1, n2 = args.steps
    rows = {}
    for name, fn in (("bare peft + torch loop", bare_loop), ("raysweep worker (run_training)", raysweep_loop)):
        fn(5, args.adapter, args.rank, 0)  # warm caches and imports
        per_step = []
        for r in range(args.repeats):
            per_step.append((fn(n2, args.adapter, args.rank, r) - fn(n1, args.adapter, args.rank, r)) / (n2 - n1))
        rows[name] = statistics.median(per_step)
        print(f"{name}: {1000 * rows[name]:.2f} ms/step  (runs: {', '.join(f'{1000 * x:.2f}' for x in per_step)})",
              flush=True)
    base = rows["bare peft + torch loop"]
    print(f"\n| loop ({args.adapter} r={args.rank}, batch 32, 1 thread) | ms/step | ÷ bare |\n|---|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {1000 * value:.2f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
