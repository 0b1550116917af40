"""GPU truth: raysweep's GPU-only paths measured on one GPU by raysweep's own trial loop, without Ray.

One file (over ~400 lines) because it is one device command that must travel and run on its own.

What it checks (issue "GPU truth"), on a Qwen2.5-0.5B-shaped model with random weights built here from a
config (no hub), sequences of 512 tokens, batch 8, LoRA r 16 on all linear layers, bf16 autocast:
  1. tokens/s of `run_training` (through a LocalSession, the path `plan --calibrate` uses) vs a bare
     peft + torch loop on the same model, data and batch; target: raysweep ≥ 0.95 × bare.
  2. the same with gradient checkpointing on: tokens/s of both, and peak `sys/mem_mb` against step 1.
  3. DoRA, SoRA, SDoRA, SubLoRA (d = 50k), masked (50 % unstructured): 50 steps each, loss falls,
     step time ÷ LoRA's, peak `sys/mem_mb` (GPU versions of benchmarks/RESULTS.md (b), (d), (e)).
  4. the memory cap behind `gpus_per_worker: 0.25`: two processes on the GPU, each a trial capped at 25 %;
     one asks for ~45 % of the card (a batch that would fit without the cap) and must fail with CUDA
     out-of-memory while the other finishes within its 25 %.
  5. packed trials (case c of the issue "Packed trials"): 8 LoRA configurations (r × lr × seed) as one pack of 8
     (trial/packed_loop.py) vs one trial at a time vs four processes at gpus_per_worker 0.25 (CUDA only):
     trials/hour ratios from per-step times, a member's tokens/s in the pack vs step 1's bare loop.
Per step time = (wall(N2 steps) − wall(N1 steps)) / (N2 − N1) in one warm process, as in
benchmarks/step_time.py, so start-up, the two evaluations and the final checkpoint cancel out.
Every step is guarded: a failing one records its error and traceback, and the rest go on. Results go to
<out>/results.json (written after every step, so a killed run keeps what it measured) and <out>/results.md.

No Ray, optuna or bitsandbytes is needed. raysweep's trial path does import pydantic (adapters/family.py,
the adapters' options models, and config.trial_config, which builds the trial config here exactly as the
sweep does). The GPU machine has no pydantic, so five small wheels (~3 MB) travel with the run: pydantic,
annotated_types, typing_inspection, typing_extensions are pure Python; pydantic_core is a compiled cp312
manylinux x86-64 wheel, which the device README allows to travel (its Python is 3.12):
    # here, once (build/ is git-ignored):
    .venv/bin/python benchmarks/gpu_check.py --fetch-wheels build/gpu_wheels
    # device tool `run`, carry ["build/gpu_wheels"], timeout_s 540:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site build/gpu_wheels/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu 2>&1 | tee $OUT/log.txt
    (the run stops starting steps after --budget-s 450 s; results.json, results.md and log.txt come back)
CPU smoke test (tests/test_gpu_check.py, seconds): python benchmarks/gpu_check.py --device cpu --tiny --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ASSET_VERSION = 1  # bump when the model or data recipe changes (assets are cached under --work)
# the GPU machine lacks these and cannot get them: nothing on the checked path may import them
ABSENT_ON_GPU = ("ray", "optuna", "bitsandbytes", "deepspeed")
WHEELS = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")
TARGET_RATIO = 0.95  # raysweep tokens/s ÷ bare tokens/s (the target)

# Qwen2.5-0.5B's shape (its config.json); rope/window settings do not change a step's cost
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True)


@dataclass
class Settings:
    device: str
    tiny: bool
    out: Path
    work: Path
    budget_s: float
    inject_error: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    seq: int = 512
    batch: int = 8
    rank: int = 16
    lr: float = 1e-3
    steps: tuple[int, int] = (10, 50)  # step 3: N1, N2 of the per-step difference; N2 = the 50 steps
    throughput_steps: tuple[int, int] = (10, 110)  # steps 1-2: 100 steps (~5 s) against ~0.2 s of set-up jitter
    repeats: int = 2
    sublora_d: int = 50_000
    eval_examples: int = 8
    train_blocks: int = 256
    cap_ok: tuple[int, int] = (4, 30)  # step 4, the trial that fits its 25 %: (batch, steps)
    cap_hog: tuple[int, int] = (0, 3)  # the one that asks for more: its batch is sized on the device (hog_batch)

    @classmethod
    def make(cls, args: argparse.Namespace) -> Settings:
        s = cls(device=args.device, tiny=args.tiny, out=Path(args.out), budget_s=args.budget_s,
                work=Path(args.work or Path(tempfile.gettempdir()) / "raysweep_gpu_check"),
                inject_error=args.inject_error, model=dict(TINY if args.tiny else QWEN_05B))
        if args.tiny:  # seconds on 2 CPU cores; the same code paths
            s.seq, s.batch, s.steps, s.throughput_steps, s.repeats, s.sublora_d = 32, 2, (2, 4), (2, 4), 1, 1000
            s.eval_examples, s.train_blocks, s.cap_ok, s.cap_hog = 2, 32, (2, 3), (8, 2)
            s.lr = 1e-2  # 4 steps: a loss that clearly falls, so the CPU test's "loss falls" is no coin toss
        return s

    @property
    def assets(self) -> Path:
        return self.work / f"{'tiny' if self.tiny else 'qwen2.5-0.5b'}-v{ASSET_VERSION}"


class Budget:
    """Wall-clock budget of the whole run: a step that would start too late is skipped, not half-run."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)


# ------------------------------------------------------------------------------------ assets


def build_assets(s: Settings) -> tuple[Path, Path]:
    """(model dir, token dir): random-weight model + word-level tokenizer, and a learnable token stream.

    The stream is pairs (a, perm[a]) with a drawn Zipf-like from 1024 ids: a random model starts near
    ln(vocab) and an adapter can learn both the unigram and the pair map, so "loss falls" means something."""
    import numpy as np

    model_dir, data_dir = s.assets / "model", s.assets / "data"
    if (s.assets / "done.json").is_file():
        return model_dir, data_dir
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    s.assets.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Qwen2Config(**s.model, bos_token_id=2, eos_token_id=2, pad_token_id=1)
    with torch.device(s.device):  # initialise on the device: 0.5B random weights on one CPU thread are slow
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(model_dir)
    del model
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2} | {f"t{i}": i for i in range(3, s.model["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(model_dir)

    data_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    n_ids = min(1024, s.model["vocab_size"] - 3, 2**16 - 3)  # .bin files hold uint16 ids
    p = 1.0 / (np.arange(n_ids) + 10.0)
    perm = rng.permutation(n_ids)
    for split, blocks in (("train", s.train_blocks), ("val", s.eval_examples)):
        n = blocks * s.seq + 1  # whole blocks only: every example is exactly seq tokens
        a = rng.choice(n_ids, size=(n + 1) // 2, p=p / p.sum())
        pairs = np.stack([a, perm[a]], axis=1).reshape(-1)[:n] + 3
        pairs.astype(np.uint16).tofile(data_dir / f"{split}.bin")
    (s.assets / "done.json").write_text(json.dumps({"model": s.model, "seq": s.seq}))
    return model_dir, data_dir


def trial_config(s: Settings, steps: int, **cell: Any) -> dict[str, Any]:
    """The resolved trial config, built by raysweep.config exactly as a sweep builds each trial's."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from raysweep import config as G

    model_dir, data_dir = s.assets / "model", s.assets / "data"
    base = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "data": {"task": "tokens", "data_dir": str(data_dir), "max_seq_len": s.seq,
                 "max_eval_examples": s.eval_examples},
        "train": {"lr": s.lr, "batch_size": s.batch, "eval_batch_size": s.eval_examples, "schedule": "constant",
                  "bf16": True, "eval_every": 10**6, "log_every": 10**6, "max_steps": steps},
        "adapter": {"type": "lora", "r": s.rank, "target_modules": "all-linear"},
        "resources": {"cpus_per_worker": 1},
    }
    config = G.trial_config(base, cell)
    config["_store"] = str(s.work / "store")  # masks (and any tokenized data) of this check, not ~/.cache
    return config


# ------------------------------------------------------------------------------------ the two loops


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raysweep_run(s: Settings, config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(wall seconds, last reported row) of run_training in this process, on s.device, without Ray."""
    import torch

    from raysweep.inputs import model_cache
    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    class DeviceSession(LocalSession):  # LocalSession takes CUDA when present; --device cpu must hold
        def device(self):
            return torch.device(s.device)

    model_cache.release_trial_memory()  # what a reused actor does between trials: sys/mem_mb is this run's peak
    with tempfile.TemporaryDirectory(dir=s.work) as tmp:
        session = DeviceSession(Path(tmp))
        sync(s.device)
        t0 = time.perf_counter()
        run_training(config, session)
        sync(s.device)
        return time.perf_counter() - t0, session.results[-1]


def bare_run(s: Settings, steps: int, checkpointing: bool, seed: int = 0) -> tuple[float, dict[str, Any]]:
    """What a researcher's finetune.py does on a GPU: load, wrap with peft, AdamW, bf16 autocast, loop."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    device, cuda = torch.device(s.device), s.device.startswith("cuda")
    torch.set_num_threads(1)  # what run_training sets for cpus_per_worker 1
    sync(s.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(s.assets / "model", dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(r=s.rank, lora_alpha=2 * s.rank, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    if checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False

    def blocks(split: str, n: int) -> torch.Tensor:
        ids = np.fromfile(s.assets / "data" / f"{split}.bin", dtype=np.uint16)[: n * s.seq].astype(np.int64)
        return torch.from_numpy(ids).view(n, s.seq)

    train, evals = blocks("train", s.train_blocks), blocks("val", s.eval_examples).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=evals, attention_mask=torch.ones_like(evals), labels=evals).loss.item()
        model.train()
        return loss

    first = eval_loss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = train[torch.randint(len(train), (s.batch,), generator=g)].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):  # the same model call as raysweep's loop
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    last = eval_loss()
    sync(s.device)
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
    return wall, {"eval/initial_loss": first, "eval/loss": last, "peak_mem_mb": peak}


def per_step(run: Callable[[int], tuple[float, dict[str, Any]]], n1: int, n2: int) -> tuple[float, dict[str, Any]]:
    """(seconds per step, last row of the N2 run): the N1 run's set-up, evals and checkpoint cancel out."""
    w1, _ = run(n1)
    w2, row = run(n2)
    return (w2 - w1) / (n2 - n1), row


# ------------------------------------------------------------------------------------ steps


def throughput(s: Settings, ctx: dict[str, Any], checkpointing: bool) -> dict[str, Any]:
    """Steps 1 and 2: raysweep's loop vs the bare loop, interleaved per repeat (a slow phase hits both)."""
    tokens = s.batch * s.seq
    loops: dict[str, Callable[[int], tuple[float, dict[str, Any]]]] = {
        "bare peft + torch": lambda n: bare_run(s, n, checkpointing),
        "raysweep run_training": lambda n: raysweep_run(
            s, trial_config(s, n, **{"train.gradient_checkpointing": checkpointing})),
    }
    for run in loops.values():
        run(2)  # warm-up: imports, CUDA context, kernel autotuning, the process's cached base
    times: dict[str, list[float]] = {name: [] for name in loops}
    last: dict[str, dict[str, Any]] = {}
    for _ in range(s.repeats):
        for name, run in loops.items():
            step_s, last[name] = per_step(run, *s.throughput_steps)
            times[name].append(step_s)
    rows = []
    for name, values in times.items():
        step_s = statistics.median(values)
        row = last[name]
        rows.append({"loop": name, "ms_per_step": 1000 * step_s, "tokens_per_s": tokens / step_s,
                     "runs_ms": [round(1000 * v, 2) for v in values],
                     "peak_mem_mb": row.get("sys/mem_mb", row.get("peak_mem_mb")),
                     "loop_reported_tokens_per_s": row.get("train/tokens_per_s"),
                     "eval_loss_initial": row.get("eval/initial_loss"), "eval_loss_final": row.get("eval/loss")})
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    out: dict[str, Any] = {"rows": rows, "ratio_raysweep_to_bare": ratio, "target": TARGET_RATIO,
                           "meets_target": ratio >= TARGET_RATIO, "tokens_per_step": tokens,
                           "steps_differenced": s.throughput_steps, "gradient_checkpointing": checkpointing}
    key = "mem_gc" if checkpointing else "mem_plain"
    ctx[key] = rows[1]["peak_mem_mb"]
    if not checkpointing:
        ctx["step1_rows"] = rows  # step 5 compares a packed member's tokens/s with the bare loop
    if checkpointing and ctx.get("mem_plain") is not None:
        out["raysweep_mem_mb_without_checkpointing"] = ctx["mem_plain"]
        if s.device.startswith("cuda"):  # on CPU sys/mem_mb is the process RSS: no activation memory to see
            out["memory_falls"] = rows[1]["peak_mem_mb"] < ctx["mem_plain"]
    return out


def adapters_step(s: Settings, budget: Budget) -> dict[str, Any]:
    """Step 3: every family's step time against LoRA's, loss falling over N2 steps, peak sys/mem_mb."""
    cells: dict[str, dict[str, Any]] = {
        "lora": {},
        "dora": {"adapter.type": "dora"},
        "sora": {"adapter.type": "sora"},
        "sdora": {"adapter.type": "sdora"},
        # lr 0.1 as in benchmarks/sublora_step.py: α is a few numbers spread over every LoRA weight
        f"sublora d={s.sublora_d}": {"adapter.type": "sublora", "adapter.intrinsic_dim": s.sublora_d,
                                     "adapter.bounds": False, "train.lr": 0.1},
        "masked 50% unstructured": {"adapter.type": "masked", "adapter.sparsity": 0.5, "adapter.mask": "unstructured"},
    }
    rows: list[dict[str, Any]] = []
    tracebacks: dict[str, str] = {}
    lora_s = None
    for name, cell in cells.items():
        if budget.left() < 30:
            rows.append({"adapter": name, "status": "skipped: out of time"})
            continue
        try:
            def run(n: int, cell: dict[str, Any] = cell) -> tuple[float, dict[str, Any]]:
                return raysweep_run(s, trial_config(s, n, **cell))

            run(1)  # warm-up: a mask computed or a projector built once is not counted in a step
            step_s, row = per_step(run, *s.steps)
        except Exception as exc:  # noqa: BLE001 - one family failing must not hide the others
            rows.append({"adapter": name, "status": f"error: {type(exc).__name__}: {exc}"[:500]})
            tracebacks[name] = traceback.format_exc()[-3000:]
            continue
        lora_s = step_s if name == "lora" else lora_s
        initial, final = row.get("eval/initial_loss"), row.get("eval/loss")
        rows.append({"adapter": name, "status": "ok", "ms_per_step": 1000 * step_s,
                     "step_ratio_to_lora": step_s / lora_s if lora_s else None,
                     "tokens_per_s": s.batch * s.seq / step_s, "peak_mem_mb": row.get("sys/mem_mb"),
                     "eval_loss_initial": initial, "eval_loss_final": final,
                     "loss_falls": final is not None and initial is not None and final < initial,
                     "trainable_params": row.get("adapter/trainable_params"),
                     "mask_violations": row.get("mask/violations"), "gate_sparsity": row.get("adapter/sparsity")})
    ok = [r for r in rows if r.get("status") == "ok"]
    return {"rows": rows, "steps_differenced": s.steps, "all_ran": len(ok) == len(rows),
            "all_losses_fall": bool(ok) and all(r["loss_falls"] for r in ok)} | (
        {"tracebacks": tracebacks} if tracebacks else {})


def cap_child(s: Settings, role: str, batch: int, steps: int, result: Path) -> None:
    """One process of step 4: a trial at gpus_per_worker 0.25 (→ gpu_memory_fraction 0.25, set by run_training)."""
    import torch

    out: dict[str, Any] = {"role": role, "pid": os.getpid(), "batch": batch, "steps": steps}
    config = trial_config(s, steps, **{"resources.gpus_per_worker": 0.25, "train.batch_size": batch})
    out["gpu_memory_fraction"] = config["resources"]["gpu_memory_fraction"]
    if s.device.startswith("cuda"):
        out["total_mb"] = torch.cuda.get_device_properties(0).total_memory / 2**20
    out["t_start"] = time.time()
    try:
        _, row = raysweep_run(s, config)
        out |= {"status": "ok", "sys/mem_mb": row.get("sys/mem_mb"), "eval/loss": row.get("eval/loss")}
    except Exception as exc:  # noqa: BLE001 - the failure is the measurement
        message = str(exc)
        out |= {"status": "error", "error_type": type(exc).__name__, "error": message[:1500],
                "out_of_memory": isinstance(exc, torch.OutOfMemoryError) or "out of memory" in message.lower(),
                # torch's caching allocator says "<size> allowed" when the per-process fraction is what ran out
                "error_names_cap": "allowed" in message}
    out["t_end"] = time.time()
    result.write_text(json.dumps(out))


def hog_batch(s: Settings, ctx: dict[str, Any], total_mb: float) -> tuple[int, dict[str, Any]]:
    """A batch whose peak is ~45 % of the GPU: over its 25 % cap, yet it would fit beside the other trial
    without one, so an out-of-memory error is the cap's doing and not the card's size."""
    base_mb = sum(f.stat().st_size for f in (s.assets / "model").glob("*.safetensors")) / 2**20  # fp32 on disk
    measured = ctx.get("mem_plain")  # step 1's peak sys/mem_mb at s.batch, when it ran
    per_example = max(64.0, (measured - base_mb) / s.batch) if measured else 1536.0
    batch = max(2 * s.batch, math.ceil((0.45 * total_mb - base_mb) / per_example))
    return batch, {"hog_per_example_mb_estimate": per_example, "hog_peak_mb_estimate": base_mb + batch * per_example}


def memory_cap_step(s: Settings, ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """Step 4: two trial processes on one device, both capped at 25 %; the hog must OOM, the other finish."""
    import torch

    from raysweep.inputs import model_cache

    out: dict[str, Any] = {}
    jobs = {"ok": s.cap_ok, "hog": s.cap_hog}
    if s.device.startswith("cuda"):
        model_cache.clear()  # this process's cached base and allocator pool must not crowd the two trials
        torch.cuda.empty_cache()
        batch, estimate = hog_batch(s, ctx, torch.cuda.get_device_properties(0).total_memory / 2**20)
        jobs["hog"] = (batch, s.cap_hog[1])
        out |= estimate
    children = {}
    timeout = max(30.0, min(300.0, budget.left() - 10))
    for role, (batch, steps) in jobs.items():
        result = s.work / f"cap_{role}.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-cap", f"{role},{batch},{steps}",
               "--child-result", str(result), "--device", s.device, "--work", str(s.work), "--out", str(s.out)]
        cmd += ["--tiny"] if s.tiny else []
        with (s.work / f"cap_{role}.log").open("w") as log:  # a file, not a pipe: neither child can block on output
            children[role] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), result)
    rows, logs = [], {}
    for role, (proc, result) in children.items():
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logs[role] = (s.work / f"cap_{role}.log").read_text(errors="replace")[-1500:]
        rows.append(json.loads(result.read_text()) if result.is_file() else {
            "role": role, "status": f"no result (exit code {proc.returncode})"})
    ok, hog = rows
    if ok.get("t_start") and hog.get("t_start"):  # did the hog fail while the other trial was running?
        out["overlap_s"] = min(ok["t_end"], hog["t_end"]) - max(ok["t_start"], hog["t_start"])
        t0 = min(ok["t_start"], hog["t_start"])
        for r in rows:
            r["start_s"], r["end_s"] = r.pop("t_start") - t0, r.pop("t_end") - t0
    if s.device.startswith("cuda"):
        cap_mb = 0.25 * ok.get("total_mb", 0)
        out |= {"cap_mb": cap_mb, "hog_out_of_memory": bool(hog.get("out_of_memory")),
                "hog_error_names_cap": bool(hog.get("error_names_cap")), "ok_finished": ok.get("status") == "ok",
                "ok_within_cap": ok.get("sys/mem_mb") is not None and ok["sys/mem_mb"] <= cap_mb}
        out["passed"] = out["hog_out_of_memory"] and out["ok_finished"] and out["ok_within_cap"]
    else:  # the cap is torch.cuda.set_per_process_memory_fraction: only the two processes' plumbing runs here
        out |= {"note": "cap not enforced on cpu (CUDA only): checks that both trial processes ran",
                "passed": all(r.get("status") == "ok" for r in rows)}
    if not all(r.get("status") in ("ok", "error") for r in rows) or not out["passed"]:
        out["child_logs"] = logs
    return out | {"rows": rows}


# step 5: 8 LoRA configurations (r × lr × seed), the grid researchers run on one base
PACK_CELLS = [{"adapter.r": r, "train.lr": lr, "train.seed": seed}
              for r in (8, 16) for lr in (1e-3, 2e-3) for seed in (0, 1)]


def pack_run(s: Settings, configs: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """(wall seconds, last report of the first member) of one pack trained to its end in this process."""
    import torch

    from raysweep.inputs import model_cache
    from raysweep.trial.packed_loop import train_pack

    model_cache.release_trial_memory()
    sync(s.device)
    t0 = time.perf_counter()
    runs = train_pack(configs, device=torch.device(s.device))
    sync(s.device)
    wall = time.perf_counter() - t0
    if any(r.status != "TERMINATED" for r in runs):
        raise RuntimeError(f"a member did not finish: {[(r.status, r.error) for r in runs]}")
    return wall, runs[0].reports[-1]


def quarter_round(s: Settings, steps: int, budget: Budget) -> float:
    """Wall seconds of 4 trials run at once as 4 processes at gpus_per_worker 0.25 (step 4's child), from the
    first start to the last end of their training (model loads included: the N1/N2 difference cancels them)."""
    children = []
    for k in range(4):
        result = s.work / f"quarter_{k}.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-cap", f"quarter{k},{s.batch},{steps}",
               "--child-result", str(result), "--device", s.device, "--work", str(s.work), "--out", str(s.out)]
        with (s.work / f"quarter_{k}.log").open("w") as log:
            children.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), result))
    rows = []
    for proc, result in children:
        proc.wait(timeout=max(30.0, budget.left() - 5))
        rows.append(json.loads(result.read_text()))
    if any(r.get("status") != "ok" for r in rows):
        raise RuntimeError(f"a 0.25-GPU trial failed: {[r.get('error', r.get('status')) for r in rows]}")
    return max(r["t_end"] for r in rows) - min(r["t_start"] for r in rows)


def packed_step(s: Settings, ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """Step 5 (case c of the issue "Packed trials"): 8 configurations as a pack of 8 vs one at a time vs four at
    gpus_per_worker 0.25; trials/hour of each from per-step times (N2 − N1 steps), and a member's tokens/s in
    the pack against the bare peft loop of step 1."""
    n1, n2 = s.steps
    alone_s, _ = per_step(lambda n: raysweep_run(s, trial_config(s, n, **PACK_CELLS[-1])), n1, n2)
    pack_s, row = per_step(lambda n: pack_run(s, [trial_config(s, n, **c) for c in PACK_CELLS]), n1, n2)
    k, tokens = len(PACK_CELLS), s.batch * s.seq
    out: dict[str, Any] = {
        "alone_ms_per_step": 1000 * alone_s, "pack8_ms_per_step": 1000 * pack_s,
        # trial-steps per second: one trial at a time does 1/alone_s; the pack advances 8 trials per step
        "pack8_vs_one_at_a_time": (k / pack_s) / (1 / alone_s),
        "member_tokens_per_s_in_pack": tokens / pack_s, "tokens_per_s_alone": tokens / alone_s,
        "pack_peak_mem_mb": row.get("sys/mem_mb"), "target_vs_one_at_a_time": 3.0}
    bare = next((r["tokens_per_s"] for r in ctx.get("step1_rows", []) if r["loop"].startswith("bare")), None)
    if bare:
        out["member_tokens_per_s_vs_bare"] = out["member_tokens_per_s_in_pack"] / bare
    if s.device.startswith("cuda") and budget.left() > 120:
        from raysweep.inputs import model_cache

        model_cache.clear()  # the four processes need the device's memory, not this process's cached base
        import torch

        torch.cuda.empty_cache()
        quarter_s = (quarter_round(s, n2, budget) - quarter_round(s, n1, budget)) / (n2 - n1)  # 4 trials per "step"
        out |= {"quarter4_ms_per_step": 1000 * quarter_s,
                "pack8_vs_quarter4": (k / pack_s) / (4 / quarter_s)}
    else:
        out["quarter4"] = "not run: CUDA only (the 0.25 share is a GPU memory cap), or out of time"
    return out


STEPS: dict[str, str] = {
    "1": "raysweep loop vs bare peft loop: tokens/s (LoRA r16, bf16 autocast)",
    "2": "the same with gradient checkpointing: tokens/s and memory",
    "3": "DoRA, SoRA, SDoRA, SubLoRA, masked on the device: loss, step time ÷ LoRA, peak sys/mem_mb",
    "4": "memory cap behind gpus_per_worker 0.25: two processes, one out of memory",
    "5": "packed trials vs one at a time vs 0.25 GPU",
}


def run_steps(steps: dict[str, Callable[[], dict[str, Any]]], record: dict[str, Any], budget: Budget,
              save: Callable[[], None], inject_error: str | None = None, min_left: float = 20.0) -> None:
    """Run each step guarded: an exception is recorded (type, message, traceback) and the next step runs."""
    for key, fn in steps.items():
        entry: dict[str, Any] = {"title": STEPS.get(key, key)}
        record["steps"][key] = entry
        if budget.left() < min_left:
            entry["status"] = "skipped: out of time"
            save()
            continue
        print(f"[gpu_check] step {key}: {entry['title']}", flush=True)
        t0 = time.perf_counter()
        try:
            if inject_error == key:
                raise RuntimeError(f"injected error in step {key} (--inject-error)")
            result = fn()
            entry["status"] = result.pop("status", "ok")
            entry |= result
        except Exception as exc:  # noqa: BLE001 - the point: record it and go on
            entry |= {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc()[-4000:]}
            print(f"[gpu_check] step {key} failed: {entry['error']}", flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        save()


# ------------------------------------------------------------------------------------ output


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def markdown(record: dict[str, Any]) -> str:
    env = record["env"]
    lines = [f"# gpu_check ({'tiny' if record['settings']['tiny'] else 'Qwen2.5-0.5B shape'}, device "
             f"{env.get('device_name', record['settings']['device'])})", "",
             " · ".join(f"{k} {fmt(v)}" for k, v in env.items()), ""]
    for key, entry in record["steps"].items():
        lines += [f"## step {key}: {entry['title']} — {entry.get('status')}", ""]
        summary = {k: v for k, v in entry.items()
                   if k not in ("title", "status", "rows", "traceback", "tracebacks", "child_logs")}
        if summary:
            lines += [" · ".join(f"{k}: {fmt(v)}" for k, v in summary.items()), ""]
        rows = entry.get("rows") or []
        cols = list(dict.fromkeys(k for r in rows for k in r if k not in ("error",)))
        if rows:
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "/") for c in cols) + " |" for r in rows]
            lines += [f"- {r['role']}: {r['error_type']}: {r['error'][:400]}" for r in rows if r.get("error")]
            lines.append("")
    lines.append(f"modules absent on the GPU machine that this run imported: {record.get('imported_absent', [])}")
    return "\n".join(lines) + "\n"


def environment(s: Settings) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda}
    for name in ("transformers", "peft", "pydantic"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    if s.device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.init()  # the peak-memory counters are reset before every measured run
        props = torch.cuda.get_device_properties(0)
        env |= {"device_name": props.name, "total_mb": round(props.total_memory / 2**20),
                "bf16": torch.cuda.is_bf16_supported()}
    return env


def fetch_wheels(directory: Path) -> int:
    """Download the pydantic wheels this environment uses, for the GPU machine's Python 3.12 (x86-64)."""
    import importlib.metadata as md

    pins = [f"{name}=={md.version(name)}" for name in WHEELS]
    platforms = [f for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for f in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", str(directory), *pins]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny model and few steps (CPU smoke test)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out" / "gpu_check"), help="results directory")
    p.add_argument("--work", default=None, help="model, data and masks (default: <tmp>/raysweep_gpu_check)")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip steps that would start after this")
    p.add_argument("--only", default=None, help="comma-separated steps to run, e.g. 1,4 (default: all)")
    p.add_argument("--inject-error", default=None, help="make step N raise (tests the guard)")
    p.add_argument("--fetch-wheels", default=None, metavar="DIR", help="download the wheels to carry, then exit")
    p.add_argument("--child-cap", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(Path(args.fetch_wheels))
    s = Settings.make(args)
    s.out.mkdir(parents=True, exist_ok=True)
    s.work.mkdir(parents=True, exist_ok=True)
    if str(ROOT) not in sys.path:  # run as a script from the repository, raysweep not installed (GPU machine)
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # one progress bar per model load otherwise
    if args.child_cap:
        role, batch, steps = args.child_cap.split(",")
        cap_child(s, role, int(batch), int(steps), Path(args.child_result))
        return 0
    record: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
                              "steps": {}}

    def save() -> None:
        record["imported_absent"] = [m for m in ABSENT_ON_GPU if m in sys.modules]
        (s.out / "results.json").write_text(json.dumps(record, indent=1, default=str))
        (s.out / "results.md").write_text(markdown(record))

    if importlib.util.find_spec("pydantic") is None:
        record |= {"env": {}, "fatal": "pydantic is not importable: raysweep's adapters and config need it. Carry "
                   "the wheels (see this script's docstring: --fetch-wheels build/gpu_wheels, carry build/gpu_wheels, "
                   "pip install --target /tmp/site, PYTHONPATH=/tmp/site)"}
        save()
        print(record["fatal"], file=sys.stderr)
        return 3
    budget = Budget(args.budget_s)
    try:  # without the model and data no step can run: say why in the results, not only in a traceback
        record["env"] = environment(s)
        t0 = time.perf_counter()
        build_assets(s)
        record["env"]["assets_s"] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # noqa: BLE001
        record.setdefault("env", {})
        record |= {"fatal": f"building the model and data failed: {type(exc).__name__}: {exc}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
        save()
        print(record["traceback"], file=sys.stderr)
        return 4
    ctx: dict[str, Any] = {}
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "1": lambda: throughput(s, ctx, checkpointing=False),
        "2": lambda: throughput(s, ctx, checkpointing=True),
        "3": lambda: adapters_step(s, budget),
        "4": lambda: memory_cap_step(s, ctx, budget),
        "5": lambda: packed_step(s, ctx, budget),
    }
    if args.only:
        keep = set(args.only.split(","))
        steps = {k: v for k, v in steps.items() if k in keep}
    run_steps(steps, record, budget, save, inject_error=args.inject_error)
    record["seconds"] = round(time.monotonic() - budget.t0, 1)
    save()
    print(markdown(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
