# over 400 lines: one table of every bad input the CLI must stop, each case a row (optuna style)
"""Bad input, consolidated (issue 7, part 6): one table of malformed grids, overrides, data files, model paths
and resource requests, each run through the real command line. Every case must end with exit code 2 and one
error that names the key path (or file) and says how to fix it, with no traceback, before Ray starts, and with
the storage directory exactly as it was (a finished experiment is already in it).

`plan` and `run` share one validation: every case a grid or its files cause runs through both (the cases
marked `launch_only` are about where `run` runs: its options, this machine's CPUs). MODEL_CASES need the
builtin model's files: mistakes that used to reach the trials (target_modules that match nothing, a rank past
the layers' dimensions, a model directory without weights or tokenizer, token ids past the vocabulary, an
unknown chat role).

In-process calls of `raysweep.__main__.main` keep the table fast; a few subprocess runs check the same promise
end to end (exit status and stderr of `python -m raysweep`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray

from raysweep.__main__ import main
from tests.conftest import ROOT

T = "train: {max_steps: 10}\n"  # the smallest valid base: every case below breaks one thing on top of it
GOOD_CHAT = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}


def _write_fixtures(d: Path) -> None:
    """The data files and model directories the cases point at, under `d` (written once per test)."""
    (d / "good.jsonl").write_text(json.dumps(GOOD_CHAT) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n  \n\n")
    (d / "broken.jsonl").write_text(json.dumps(GOOD_CHAT) + "\n{broken\n")
    (d / "no_messages.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    (d / "no_content.jsonl").write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    (d / "no_assistant.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x01 not text\n")
    (d / "empty.txt").write_text("  \n")
    (d / "a_directory").mkdir()
    (d / "not_a_model").mkdir()
    (d / "not_a_model" / "README.md").write_text("no config.json here\n")
    (d / "model_file.bin").write_bytes(b"\0" * 8)
    ids = np.arange(64, dtype=np.uint16)
    for name, files in {"tok_no_train": {"val.bin": ids}, "tok_empty_val": {"train.bin": ids, "val.bin": None},
                        "tok_odd": {"train.bin": b"\0\0\0", "val.bin": ids},
                        "tok_bad_eot": {"train.bin": ids, "val.bin": ids, "train_eot.npy": np.array([5, 999])}}.items():
        (d / name).mkdir()
        for file, content in files.items():
            path = d / name / file
            if file.endswith(".npy"):
                np.save(path, content)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            elif content is None:
                path.write_bytes(b"")
            else:
                content.tofile(path)
    (d / "grid_latin1.yaml").write_bytes("name: caf\xe9\ntrain: {max_steps: 10}\n".encode("latin-1"))
    (d / "storage_file").write_text("a file where a directory is expected\n")


@dataclass(frozen=True)
class Case:
    id: str
    grid: str  # grid YAML; {d} is the fixtures directory, {storage} the storage root
    expected: tuple[str, ...]  # substrings of the error: the key path or file, then (part of) the fix
    args: tuple[str, ...] = ()  # overrides and options after the grid file
    command: str = "run"
    storage_option: bool = True  # pass --storage (else the grid names `storage:`, or the command has none)
    launch_only: bool = False  # `run` only: about where it runs (options, this machine), not the grid's inputs
    argv: Callable[[Path, Path, Path], list[str]] | None = None  # a whole command line (grid, fixtures, storage)


CASES = [
    # ---- the grid file itself
    Case("yaml-syntax", "train: {max_steps: 10\n  lr: 1\n", ("not valid YAML at line", "expected ',' or '}'")),
    Case("top-level-list", "- a\n- b\n", ("grid.yaml", "top level must be a mapping", "key: value lines")),
    Case("top-level-scalar", "42\n", ("top level must be a mapping", "key: value lines")),
    Case("grid-file-missing", "", ("missing.yaml", "does not exist", "give the path of a grid YAML file"),
         argv=lambda g, d, s: ["run", str(g.parent / "missing.yaml"), "--storage", str(s)]),
    Case("grid-file-is-a-directory", "", ("a_directory", "is a directory, not a file", "give the path of a grid"),
         argv=lambda g, d, s: ["run", str(d / "a_directory"), "--storage", str(s)]),
    Case("grid-file-not-utf8", "", ("grid_latin1.yaml", "cannot read the grid file", "save it as UTF-8"),
         argv=lambda g, d, s: ["run", str(d / "grid_latin1.yaml"), "--storage", str(s)]),
    Case("unknown-top-level-key", T + "modle: {name_or_path: builtin}\n",
         ("modle: unknown key", "did you mean 'model'?", "valid keys:")),
    Case("unknown-section-key", "train: {max_steps: 10, learning_rate: 0.1}\n",
         ("train.learning_rate: unknown key", "did you mean 'lr'?")),
    Case("unknown-nested-key", "train: {max_steps: 10, early_stopping: {patient: 3}}\n",
         ("train.early_stopping.patient: unknown key", "did you mean 'patience'?")),
    Case("duplicate-key", "train: {max_steps: 10, lr: 0.001, lr: 0.01}\n", ("train.lr: set twice", "keep one")),
    Case("duplicate-section", T + "adapter: {r: 4}\nadapter: {r: 8}\n", ("adapter: set twice (lines 2 and 3)", "keep one")),
    Case("duplicate-axis-in-sub-grid", T + "grid:\n  - {adapter.r: [4], adapter.r: [8]}\n",
         ("grid[0].adapter.r: set twice", "keep one")),
    # ---- wrong types and out-of-range values
    Case("section-not-a-mapping", "train: 5\n", ("train: must be a mapping of keys such as seed, lr", "indent its keys")),
    Case("empty-section", T + "adapter:\n", ("adapter: must be a mapping of keys", "remove the empty key")),
    Case("int-given-text", "train: {max_steps: ten}\n", ("train.max_steps", "valid integer", "expected: optimizer steps")),
    Case("int-given-fraction", "train: {max_steps: 10, batch_size: 2.5}\n",
         ("train.batch_size", "fractional part", "expected: examples per micro-batch")),
    Case("bool-given-text", "train: {max_steps: 10, bf16: maybe}\n", ("train.bf16", "valid boolean", "expected: bf16")),
    Case("union-wrong-type", T + "adapter: {target_modules: 5}\n",
         ("adapter.target_modules: wrong type (got 5)", "expected: 'all-linear' or a list")),
    Case("rank-zero", T + "adapter: {r: 0}\n", ("adapter.r", "greater than 0", "expected: adapter rank")),
    Case("negative-lr", "train: {max_steps: 10, lr: -1}\n", ("train.lr", "greater than 0", "expected: peak learning rate")),
    Case("dropout-above-one", T + "adapter: {dropout: 1.5}\n", ("adapter.dropout", "less than 1", "expected: dropout")),
    Case("validation-split-one", T + "data: {validation_split: 1}\n", ("data.validation_split", "less than 1")),
    Case("bad-literal", "train: {max_steps: 10, schedule: exponential}\n",
         ("train.schedule", "'cosine', 'linear' or 'constant'")),
    Case("no-budget", "train: {lr: 0.01}\n", ("train: set train.max_steps or train.epochs",)),
    Case("both-budgets", "train: {max_steps: 10, epochs: 2}\n", ("train.max_steps and train.epochs are both set", "keep one")),
    Case("num-samples-zero", T + "search: {num_samples: 0}\n", ("search.num_samples", "greater than 0")),
    Case("max-concurrent-zero", T + "resources: {max_concurrent: 0}\n",
         ("resources.max_concurrent", "greater than 0", "expected: trials at once")),
    Case("max-failures-negative", T + "resources: {max_failures: -1}\n",
         ("resources.max_failures", "greater than or equal to 0")),
    Case("unknown-executor", T + "resources: {executor: ray}\n", ("resources.executor", "'auto', 'train' or 'actor'")),
    # ---- grid axes
    Case("empty-axis", T + "grid: {adapter.r: []}\n", ("grid.adapter.r", "empty list of values", "give at least one")),
    Case("axis-values-a-mapping", T + "grid: {adapter.r: {four: 4, eight: 8}}\n", ("grid.adapter.r", "a list such as [4, 8, 16]", "need search.algorithm random or optuna")),
    Case("unknown-axis", T + "grid: {adapter.rank: [4, 8]}\n", ("grid.adapter.rank", "did you mean 'adapter.r'?")),
    Case("axis-under-search", T + "grid: {search.metric: [eval/loss]}\n",
         ("grid.search.metric", "axes live under model., data., train., adapter.")),
    Case("axis-under-resources", T + "grid: {resources.num_workers: [1, 2]}\n",
         ("grid.resources.num_workers", "axes live under")),
    Case("sub-grid-not-a-mapping", T + "grid: [{adapter.r: [4]}, 3]\n", ("grid[1]", "non-empty mapping of key.path")),
    Case("grid-a-scalar", T + "grid: 5\n", ("grid:", "non-empty mapping of key.path")),
    Case("bad-axis-value", T + "grid: {train.lr: [0.01, -1]}\n", ("grid (train.lr=-1) train.lr", "greater than 0")),
    # ---- adapters and their family options
    Case("unknown-adapter", "storage: {storage}\n" + T + "adapter: {type: lorax}\n",
         ("adapter.type", "unknown adapter 'lorax'", "use one of"), storage_option=False),
    Case("unknown-adapter-in-grid", T + "grid: {adapter.type: [lora, vera]}\n",
         ("grid (adapter.type=vera) adapter.type", "use one of")),
    Case("lambda-on-lora", T + "adapter: {type: lora, lambda: 0.3}\n",
         ("adapter.lambda", "not an option of adapter 'lora'", "it applies to: sdora, sora")),
    Case("gate-lr-on-dora", T + "adapter: {type: dora, gate_lr: 0.01}\n",
         ("adapter.gate_lr", "not an option of adapter 'dora'", "it applies to: sdora, sora")),
    Case("lambda-axis-with-dora", T + "grid: {adapter.type: [sora, dora], adapter.lambda: [0.1]}\n",
         ("adapter.type=dora", "adapter.lambda", "not an option of adapter 'dora'")),
    Case("sparsity-on-sora", T + "adapter: {type: sora, sparsity: 0.5}\n",
         ("adapter.sparsity", "not an option of adapter 'sora'", "it applies to: masked")),
    Case("mask-on-sublora", T + "adapter: {type: sublora, mask: random}\n",
         ("adapter.mask", "not an option of adapter 'sublora'", "it applies to: masked")),
    Case("intrinsic-dim-on-masked", T + "adapter: {type: masked, intrinsic_dim: 100}\n",
         ("adapter.intrinsic_dim", "not an option of adapter 'masked'", "it applies to: sublora")),
    Case("lambda-not-a-number", T + "adapter: {type: sora, lambda: abc}\n",
         ("adapter.lambda", "valid number", "expected:")),
    Case("masked-options-disagree", T + "adapter: {type: masked, mask: structured, mask_scope: global}\n",
         ("adapter: mask_scope 'global' applies to unstructured masks only", "use mask_scope 'layer'")),
    Case("n-m-mask-wrong-sparsity", T + "adapter: {type: masked, mask: '2:4', sparsity: 0.3}\n",
         ("adapter", "set adapter.sparsity to 0.5")),
    Case("lambda-final-without-schedule", T + "adapter: {type: sora, lambda_final: 0.5}\n", ("adapter", "has no effect")),
    Case("masked-on-4bit", T + "model: {load_in_4bit: true}\nadapter: {type: masked}\n",
         ("model.load_in_4bit", "set model.load_in_4bit: false")),
    # ---- trial schedulers
    Case("reduction-factor-on-median", "train: {max_steps: 100, eval_every: 10}\n"
         "search: {scheduler: median, reduction_factor: 2}\n",
         ("search.reduction_factor", "applies to search.scheduler 'asha', not 'median'", "remove it")),
    Case("grace-period-on-fifo", "train: {max_steps: 100}\nsearch: {grace_period: 50}\n",
         ("search.grace_period", "not 'fifo'", "set search.scheduler")),
    Case("min-samples-on-asha", "train: {max_steps: 100, eval_every: 10}\n"
         "search: {scheduler: asha, min_samples_required: 2}\n",
         ("search.min_samples_required", "applies to search.scheduler 'median'")),
    Case("unknown-scheduler", T + "search: {scheduler: hyperband}\n", ("search.scheduler", "'fifo', 'asha' or 'median'")),
    Case("asha-train-without-dashboard", "train: {max_steps: 100, eval_every: 10}\nsearch: {scheduler: asha}\n"
         "resources: {num_workers: 2, cpus_per_worker: 0.5}\n",
         ("search.scheduler 'asha' with resources.executor 'train' needs the Ray dashboard",
          "run without --no-dashboard"), args=("--no-dashboard",), launch_only=True),
    # ---- experiment name, storage
    Case("name-with-slash", "name: a/b\n" + T, ("name: String should match pattern", "letters, digits, _ . -")),
    Case("name-with-space", "name: 'my sweep'\n" + T, ("name:", "letters, digits, _ . -")),
    Case("name-option-escapes-storage", "storage: {storage}\n" + T, ("--name: '../escape' is not an experiment name", "letters, digits"),
         args=("--name", "../escape"), storage_option=False, launch_only=True),
    Case("storage-option-is-a-file", T, ("--storage:", "storage_file is a file, not a directory", "give a directory"),
         argv=lambda g, d, s: ["run", str(g), "--storage", str(d / "storage_file")], launch_only=True),
    Case("storage-key-is-a-file", T + "storage: {d}/storage_file\n", ("storage:", "is a file, not a directory"),
         storage_option=False),
    # ---- overrides
    Case("override-without-value", T, ("train.lr: an override is key.path=value", "e.g. train.max_steps=50"),
         args=("train.lr",)),
    Case("override-without-key", T, ("=5: an override is key.path=value",), args=("=5",)),
    Case("override-unknown-section", T, ("trian: unknown key", "did you mean 'train'?"), args=("trian.max_steps=5",)),
    Case("override-unknown-key", T, ("train.bogus: unknown key", "valid keys: seed, lr"), args=("train.bogus=5",)),
    Case("override-bad-value", T, ("train.lr", "valid number", "expected: peak learning rate"), args=("train.lr=fast",)),
    Case("override-unknown-axis", T, ("grid.adapter.rank", "did you mean 'adapter.r'?"), args=("grid.adapter.rank=[4]",)),
    # ---- data
    Case("chat-without-train-file", T + "data: {task: chat}\n", ("data: data.task 'chat' needs data.train_file", "set it")),
    Case("tokens-without-data-dir", T + "data: {task: tokens}\n", ("data.task 'tokens' needs data.data_dir", "set it")),
    Case("train-file-missing", T + "data: {task: chat, train_file: {d}/nope.jsonl}\n",
         ("data.train_file", "nope.jsonl' does not exist", "fix the path")),
    Case("validation-file-missing", T + "data: {task: chat, train_file: {d}/good.jsonl, validation_file: {d}/val.jsonl}\n",
         ("data.validation_file", "val.jsonl' does not exist", "fix the path")),
    Case("train-file-is-a-directory", T + "data: {task: chat, train_file: {d}/a_directory}\n",
         ("data.train_file", "a_directory' is a directory", "give the path of a file")),
    Case("jsonl-empty", T + "data: {task: chat, train_file: {d}/empty.jsonl}\n",
         ("data.train_file", "empty.jsonl has no examples", "add JSONL lines")),
    Case("jsonl-blank-lines", T + "data: {task: chat, train_file: {d}/blank.jsonl}\n",
         ("data.train_file", "blank.jsonl has no examples",)),
    Case("jsonl-broken-line", "storage: {storage}\n" + T + "data: {task: chat, train_file: {d}/broken.jsonl}\n",
         ("data.train_file", "broken.jsonl:2", "not valid JSON", "each line is one JSON object"), storage_option=False),
    Case("jsonl-no-messages", T + "data: {task: chat, train_file: {d}/no_messages.jsonl}\n",
         ("data.train_file", "no_messages.jsonl:1", 'expected {"messages"')),
    Case("jsonl-message-without-content", T + "data: {task: chat, train_file: {d}/no_content.jsonl}\n",
         ("no_content.jsonl:1", "every message needs string 'role' and 'content'")),
    Case("jsonl-no-assistant", T + "data: {task: chat, train_file: {d}/good.jsonl, validation_file: "
         "{d}/no_assistant.jsonl}\n", ("data.validation_file", "no_assistant.jsonl:1", "no assistant message")),
    Case("jsonl-not-utf8", T + "data: {task: chat, train_file: {d}/binary.jsonl}\n",
         ("data.train_file", "binary.jsonl is not UTF-8 text", "convert it to UTF-8")),
    Case("text-empty", T + "data: {task: text, train_file: {d}/empty.txt}\n",
         ("data.train_file", "empty.txt is empty", "non-empty text file")),
    Case("tokens-dir-missing", T + "data: {task: tokens, data_dir: {d}/no_tokens}\n",
         ("data.data_dir", "no_tokens' does not exist", "set it to the directory holding train.bin")),
    Case("tokens-no-train-bin", T + "data: {task: tokens, data_dir: {d}/tok_no_train}\n",
         ("data.data_dir", "tok_no_train/train.bin' does not exist", "must hold train.bin and val.bin")),
    Case("tokens-empty-val-bin", T + "data: {task: tokens, data_dir: {d}/tok_empty_val}\n",
         ("data.data_dir", "val.bin' is empty", "np.uint16")),
    Case("tokens-odd-size", T + "data: {task: tokens, data_dir: {d}/tok_odd}\n",
         ("data.data_dir", "train.bin' has an odd size", "rewrite it")),
    Case("tokens-eot-out-of-range", T + "data: {task: tokens, data_dir: {d}/tok_bad_eot}\n",
         ("data.data_dir", "train_eot.npy' has positions in [5, 999]", "regenerate it")),
    Case("builtin-task-with-train-file", T + "data: {task: builtin, train_file: {d}/good.jsonl}\n",
         ("data: data.task 'builtin' reads no files", "data.train_file would be ignored", "set data.task")),
    Case("tokens-task-with-train-file", T + "data: {task: tokens, data_dir: {d}/tok_odd, train_file: {d}/good.jsonl}\n",
         ("data.task 'tokens' reads data.data_dir", "data.train_file would be ignored")),
    Case("chat-task-with-data-dir", T + "data: {task: chat, train_file: {d}/good.jsonl, data_dir: {d}/tok_odd}\n",
         ("data.task 'chat' reads data.train_file and data.validation_file", "data.data_dir would be ignored")),
    # ---- model sources
    Case("model-path-missing", "storage: {storage}\n" + T + "model: {name_or_path: {d}/no_such_model}\n",
         ("model.name_or_path", "no_such_model' does not exist", "give a model directory"), storage_option=False),
    Case("model-relative-path-missing", T + "model: {name_or_path: ./no_such_model_here}\n",
         ("model.name_or_path", "does not exist", "or 'builtin'")),
    Case("model-dir-without-config", T + "model: {name_or_path: {d}/not_a_model}\n",
         ("model.name_or_path", "has no config.json", "written by save_pretrained")),
    Case("model-path-is-a-file", T + "model: {name_or_path: {d}/model_file.bin}\n",
         ("model.name_or_path", "has no config.json",)),
    Case("model-axis-one-missing", T + "grid: {model.name_or_path: [builtin, {d}/gone]}\n",
         ("model.name_or_path", "gone' does not exist")),
    # ---- resources this machine cannot give (Ray would wait forever with every trial PENDING), the cluster
    Case("cpus-beyond-machine", "storage: {storage}\n" + T + "resources: {cpus_per_worker: 100000}\n",
         ("resources.cpus_per_worker", "asks for 100000 CPU(s) but this machine has", "or run on a cluster"),
         storage_option=False, launch_only=True),
    Case("gpus-beyond-machine", T + "resources: {gpus_per_worker: 1024}\n",
         ("resources.gpus_per_worker", "asks for 1024 GPU(s)", "resources.gpus_per_worker: 0"), launch_only=True),
    Case("workers-beyond-machine", T + "resources: {num_workers: 100000}\n",
         ("resources.num_workers × resources.cpus_per_worker", "asks for 100000 CPU(s)"), launch_only=True),
    Case("address-nothing-listens", T, ("--address: nothing answers at 127.0.0.1:1", "start the cluster there"),
         args=("--address", "127.0.0.1:1"), launch_only=True),
    Case("address-not-host-port", T, ("--address: 'head-node' is not 'auto' or host:port", "--address 10.0.0.1:6379"),
         args=("--address", "head-node"), launch_only=True),
    Case("stall-timeout-zero", T + "resources: {stall_timeout_s: 0}\n",
         ("resources.stall_timeout_s", "greater than 0", "expected: end a trial that reports nothing")),
    Case("actor-with-two-workers", T + "resources: {executor: actor, num_workers: 2}\n",
         ("resources: executor 'actor' runs each trial in one process", "set resources.executor to 'train'")),
    Case("keep-last-axis-with-actor", T + "grid: {train.keep_last: [1, 3]}\n",
         ("train.keep_last", "set resources.executor: train")),
    # ---- the other commands that take a grid or an experiment
    Case("plan-bad-grid", T + "adapter: {r: -4}\n", ("adapter.r", "greater than 0"), command="plan",
         storage_option=False),
    Case("masks-without-masked-trials", T, ("no trial has adapter.type 'masked'", "set adapter.type: masked"),
         command="masks"),
    Case("masks-bad-override", T + "adapter: {type: masked}\n", ("adapter.sparsity", "less than 1"),
         args=("adapter.sparsity=1.5",), command="masks"),
    Case("resume-not-an-experiment", "", ("not a raysweep experiment directory", "give the path printed by"),
         argv=lambda g, d, s: ["resume", str(s / "earlier")], command="resume"),
    Case("resume-missing-directory", "", ("never-ran: no such directory", "give the experiment path printed by"),
         argv=lambda g, d, s: ["resume", str(s / "never-ran")], command="resume"),
]


# ---- the model itself and what the trials would read with it (need the builtin model's files; {m} is the
# directory of model fixtures made from them): these used to fail inside every trial, after Ray started
M = "model: {name_or_path: {m}/%s}\n"
MODEL_CASES = [
    Case("target-modules-unknown", T + "adapter: {target_modules: [no_such_proj]}\n",
         ("adapter.target_modules: 'no_such_proj' matches no layer of builtin", "did you mean", "q_proj",
          "or use 'all-linear'")),
    Case("target-modules-typo", T, ("adapter.target_modules: 'q_prj' matches no layer", "did you mean 'q_proj'"),
         args=("adapter.target_modules=[q_prj, v_proj]",)),
    Case("target-modules-a-norm", T + "adapter: {target_modules: [input_layernorm]}\n",
         ("adapter.target_modules: 'input_layernorm'", "no 2-D weight", "adapt layers such as")),
    Case("target-modules-pattern-matches-nothing", T + "adapter: {target_modules: '(q|v)_proj'}\n",
         ("adapter.target_modules: the pattern '(q|v)_proj' matches no layer", "whole module names")),
    Case("rank-above-every-layer", T, ("adapter.r: 100000 is above min(in, out) of every layer it adapts",
                                       "use adapter.r ≤ 128"), args=("adapter.r=100000",)),
    Case("adapter-larger-than-base", T + "adapter: {r: 100}\n",
         ("adapter.r: 100 gives an adapter of 435k parameters", "the whole base model's 368k", "lower adapter.r")),
    Case("rank-axis-one-too-big", T + "grid: {adapter.r: [4, 200], train.seed: [0, 1]}\n",
         ("grid (adapter.r=200: 2 cells) adapter.r: 200 is above min(in, out)",)),
    Case("model-dir-config-only", T + M % "config_only",
         ("config_only has config.json but no weights", "the directory is incomplete",
          "config_only has no tokenizer", "tokenizer.save_pretrained")),
    Case("model-config-not-json", T + M % "bad_json", ("bad_json/config.json:2: not valid JSON", "re-save")),
    Case("model-weights-truncated", T + M % "truncated",
         ("truncated/model.safetensors is not a readable safetensors file", "copy or download it again")),
    Case("model-without-tokenizer", T + M % "no_tokenizer", ("no_tokenizer has no tokenizer", "save it next to")),
    Case("model-tokenizer-broken", T + M % "bad_tokenizer",
         ("bad_tokenizer/tokenizer.json does not load as a tokenizer", "save the tokenizer again")),
    Case("model-shard-missing", T + M % "sharded",
         ("model.safetensors.index.json lists model-00002-of-00002.safetensors, which is missing",)),
    Case("model-axis-one-broken", T + "grid: {model.name_or_path: [builtin, {m}/config_only]}\n",
         ("config_only has config.json but no weights",)),
    Case("tokens-id-beyond-vocab", T + "data: {task: tokens, data_dir: {m}/tok_vocab, max_seq_len: 16}\n",
         ("data.data_dir", "tok_vocab/train.bin' holds token id 1000", "tokenizer has 307 tokens", "regenerate them")),
    Case("chat-role-unknown", T + "data: {task: chat, train_file: {m}/wizard.jsonl}\n",
         ("data.train_file", "wizard.jsonl:2: role 'wizard' is not one of system, user, assistant, tool")),
    Case("chat-role-typo", T + "data: {task: chat, train_file: {m}/good.jsonl, validation_file: {m}/asistant.jsonl}\n",
         ("data.validation_file", "asistant.jsonl:1: role 'asistant'", "did you mean 'assistant'?")),
    Case("chat-role-tool-not-in-template", T + M % "no_tool" + "data: {task: chat, train_file: {m}/tool.jsonl}\n",
         ("tool.jsonl:1: role 'tool' is not one of system, user, assistant", "does not render 'tool' messages")),
    # resume judges the files again: they may have changed since the sweep started
    Case("resume-model-broken-since", T + M % "config_only", ("config_only has config.json but no weights",),
         argv=lambda g, d, s: ["resume", str(_experiment(d, g))], command="resume"),
    Case("every-problem-at-once", "train: {max_steps: 10, lr: -1}\ndata: {task: chat, train_file: {m}/wizard.jsonl}\n"
         + M % "no_such_model", ("train.lr", "wizard.jsonl:2: role 'wizard'", "no_such_model' does not exist")),
    Case("every-model-problem-at-once", T + M % "no_tool" + "adapter: {target_modules: [q_prj], r: 2}\n"
         "data: {task: chat, train_file: {m}/tool.jsonl}\n",
         ("'q_prj' matches no layer", "tool.jsonl:1: role 'tool'")),
]


def _experiment(d: Path, grid: Path) -> Path:
    """An experiment directory as `run` leaves it (its raysweep.yaml: `grid`), for `resume`."""
    experiment = d / "experiment"
    experiment.mkdir()
    (experiment / "raysweep.yaml").write_text(grid.read_text())
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    return experiment


def _write_model_fixtures(d: Path, builtin: Path) -> None:
    """Broken copies of the builtin model, and data files that only the model can judge."""
    import shutil

    def copy(name: str, *files: str) -> Path:
        (d / name).mkdir()
        for f in files or [p.name for p in builtin.iterdir()]:
            shutil.copy(builtin / f, d / name / f)
        return d / name

    copy("config_only", "config.json")
    (copy("bad_json", "config.json") / "config.json").write_text('{"model_type": "llama",\n  "vocab_size": }\n')
    weights = (copy("truncated") / "model.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    copy("no_tokenizer", "config.json", "model.safetensors")
    (copy("bad_tokenizer") / "tokenizer.json").write_text("{not a tokenizer")
    sharded = copy("sharded", "config.json", "tokenizer.json", "tokenizer_config.json")
    shutil.copy(builtin / "model.safetensors", sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    # a template that, like many chat models', refuses roles it does not know
    (copy("no_tool") / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}"
        "{% endfor %}")
    (d / "tok_vocab").mkdir()
    np.array([1, 2, 3, 1000, 5] * 10, dtype=np.uint16).tofile(d / "tok_vocab" / "train.bin")
    np.arange(40, dtype=np.uint16).tofile(d / "tok_vocab" / "val.bin")
    (d / "good.jsonl").write_text(json.dumps(GOOD_CHAT) + "\n")
    wizard = {"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"},
                           {"role": "assistant", "content": "c"}]}
    (d / "wizard.jsonl").write_text(json.dumps(GOOD_CHAT) + "\n" + json.dumps(wizard) + "\n")
    asistant = {"messages": [{"role": "user", "content": "a"}, {"role": "asistant", "content": "b"},
                             {"role": "assistant", "content": "c"}]}
    (d / "asistant.jsonl").write_text(json.dumps(asistant) + "\n")
    tool = {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "42"},
                         {"role": "assistant", "content": "b"}]}
    (d / "tool.jsonl").write_text(json.dumps(tool) + "\n")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage root holding a finished-looking experiment that no bad input may touch."""
    root = tmp_path / "storage"
    trial = root / "earlier" / "actor_trial_fn_00000" / "checkpoint_000001"
    trial.mkdir(parents=True)
    (root / "earlier" / "raysweep.yaml").write_text("name: earlier\ntrain: {max_steps: 10}\n")
    (root / "earlier" / "trials.csv").write_text("trial_id,status\nactor_trial_fn_00000,TERMINATED\n")
    (trial / "metrics.json").write_text('{"eval/loss": 1.25}\n')
    return root


@pytest.fixture(scope="module")
def model_fixtures(builtin_model_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model_fixtures")
    _write_model_fixtures(d, builtin_model_dir)
    return d


@pytest.fixture(autouse=True)
def _ray_must_not_start(monkeypatch):
    # the promise is "refused before Ray starts"; should a case slip through, fail at once instead of starting a
    # cluster (and perhaps waiting forever on a trial this machine cannot hold)
    def refuse(*args, **kwargs):
        raise AssertionError("bad input reached ray.init")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # it would make `run` join a cluster instead of this machine


def _argv(case: Case, tmp_path: Path, storage: Path, command: str | None = None, models: Path | None = None) -> list[str]:
    """The command line of `case`, run as `command` (default: the case's own; "plan" for a case of `run`
    drops --storage, which `plan` does not take)."""
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    _write_fixtures(fixtures)
    grid = tmp_path / "grid.yaml"
    text = case.grid.replace("{d}", str(fixtures)).replace("{storage}", str(storage))
    grid.write_text(text.replace("{m}", str(models)) if models else text)
    command = command or case.command
    if case.argv:
        argv = case.argv(grid, fixtures, storage)
        if command == "plan":
            at = argv.index("--storage") if "--storage" in argv else len(argv)
            argv = ["plan", *argv[1:at], *argv[at + 2:]]
        return argv
    extra = ["--storage", str(storage)] if case.storage_option and command in ("run", "masks") else []
    return [command, str(grid), *case.args, *extra]


def _flat(text: str) -> str:
    return " ".join(text.split())  # the error console wraps long lines


def _both(cases: list[Case]) -> list:
    """(case, command) pairs: a case of `run` about the grid's inputs runs through `plan` too."""
    return [pytest.param(c, cmd, id=f"{c.id}-{cmd}") for c in cases
            for cmd in ([c.command, "plan"] if c.command == "run" and not c.launch_only else [c.command])]


def _refused(argv: list[str], case: Case, storage: Path, capsys) -> None:
    before = _snapshot(storage)
    assert not ray.is_initialized()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors also exit 2
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert out == "", out  # nothing was started or announced
    assert err.startswith("error ") and err.count("error ") == 1, err  # one error message
    for part in case.expected:
        assert part in _flat(err), f"{part!r} not in:\n{err}"
    assert not ray.is_initialized()
    assert _snapshot(storage) == before  # no new experiment directory, the old one byte for byte


@pytest.mark.parametrize(("case", "command"), _both(CASES))
def test_bad_input_is_refused_before_anything_runs(case: Case, command: str, tmp_path, storage, capsys):
    _refused(_argv(case, tmp_path, storage, command), case, storage, capsys)


@pytest.mark.parametrize(("case", "command"), _both(MODEL_CASES))
def test_bad_model_input_is_refused_before_anything_runs(case: Case, command: str, tmp_path, storage, model_fixtures,
                                                         capsys):
    _refused(_argv(case, tmp_path, storage, command, model_fixtures), case, storage, capsys)


def test_there_are_enough_cases():
    every = CASES + MODEL_CASES
    assert len(CASES) >= 45 and len(MODEL_CASES) >= 18 and len({c.id for c in every}) == len(every)
    assert len(_both(every)) >= 220  # most cases run through plan and run


# ---- end to end: the real process, its exit status and stderr (a few cases; each costs a Python start)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "raysweep", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def _refused_end_to_end(argv: list[str], case: Case, storage: Path) -> None:
    before = _snapshot(storage)
    proc = _cli(*argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    for part in case.expected:
        assert part in _flat(proc.stderr), f"{part!r} not in:\n{proc.stderr}"
    assert _snapshot(storage) == before


@pytest.mark.parametrize("case_id", ["duplicate-key", "jsonl-not-utf8", "cpus-beyond-machine",
                                     "builtin-task-with-train-file", "name-option-escapes-storage"])
def test_bad_input_end_to_end(case_id: str, tmp_path, storage):
    case = next(c for c in CASES if c.id == case_id)
    _refused_end_to_end(_argv(case, tmp_path, storage), case, storage)


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("case_id", ["target-modules-unknown", "model-dir-config-only", "chat-role-unknown"])
def test_bad_model_input_end_to_end(case_id: str, command: str, tmp_path, storage, model_fixtures):
    case = next(c for c in MODEL_CASES if c.id == case_id)
    _refused_end_to_end(_argv(case, tmp_path, storage, command, model_fixtures), case, storage)
