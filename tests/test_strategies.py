"""resources.strategy / gpu_memory_fraction validation, data sharding, and two real ranks (gloo process group,
no Ray) training under DDP and DeepSpeed ZeRO-3 with an exact resume from a sharded checkpoint."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
from pathlib import Path

import pytest

from raysweep import config as C
from raysweep.config import grid as G
from raysweep.trial.loop import micro_batches


def load(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return C.load(path)


def problems(tmp_path, text: str) -> list[str]:
    with pytest.raises(C.ConfigError) as info:
        load(tmp_path, text)
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(("text", "path", "words"), [
    ("resources: {strategy: zero2}", "resources.strategy", "deepspeed_zero2"),
    ("resources: {strategy: deepspeed_zero2, executor: actor}", "resources",
     "resources.strategy 'deepspeed_zero2' runs in Ray Train's worker group"),
    ("adapter: {type: sora}\nresources: {strategy: deepspeed_zero2, num_workers: 2}", "adapter.type",
     "ZeRO writes its own fp32 copy"),
    ("adapter: {type: sdora}\nresources: {strategy: deepspeed_zero3, num_workers: 2}", "adapter.type",
     "use one of lora, dora"),
    ("adapter: {type: masked}\nresources: {strategy: deepspeed_zero3, num_workers: 2}", "adapter.type",
     "where ZeRO-3 holds only a partition"),
    ("model: {load_in_4bit: true}\nresources: {strategy: deepspeed_zero3, num_workers: 2}", "model.load_in_4bit",
     "cannot be partitioned by ZeRO-3"),
    ("resources: {gpus_per_worker: 0.5, gpu_memory_fraction: 0}", "resources.gpu_memory_fraction", "greater than 0"),
    ("resources: {gpus_per_worker: 0.5, gpu_memory_fraction: 1.5}", "resources.gpu_memory_fraction", "less than or equal to 1"),
    ("resources: {gpu_memory_fraction: 0.5}", "resources", "resources.gpus_per_worker is 0"),
    ("resources: {deepspeed_config: {zero_optimization: {offload_optimizer: {device: cpu}}}}", "resources",
     "resources.deepspeed_config applies to DeepSpeed strategies, not 'ddp'"),
    ("resources: {strategy: deepspeed_zero2, deepspeed_config: {gradient_clipping: 2}}", "resources",
     "resources.deepspeed_config.gradient_clipping is set by raysweep: use train.max_grad_norm"),
    ("resources: {strategy: deepspeed_zero2, deepspeed_config: {zero_optimization: {stage: 3}}}", "resources",
     "use resources.strategy instead"),
])
def test_bad_strategy_and_memory_settings_name_the_key_and_the_fix(tmp_path, text, path, words):
    found = problems(tmp_path, f"train: {{max_steps: 10}}\n{text}\n")
    assert any(p.startswith(f"{path}:") and words in p for p in found), found


def test_a_grid_axis_refused_by_the_strategy_names_its_sub_grid(tmp_path):
    found = problems(tmp_path, """
        train: {max_steps: 10}
        resources: {strategy: deepspeed_zero2, num_workers: 2}
        grid:
          - {adapter.type: [lora, dora]}
          - {adapter.type: sora}
    """)
    assert len(found) == 1 and found[0].startswith("grid[1]") and " adapter.type: adapter 'sora'" in found[0], found


@pytest.mark.parametrize(("resources", "executor", "fraction"), [
    ({}, "actor", None),
    ({"strategy": "deepspeed_zero2"}, "train", None),  # even with 1 worker: DeepSpeed needs Ray Train's group
    ({"num_workers": 2, "strategy": "deepspeed_zero3", "gpus_per_worker": 0.5}, "train", 0.5),
    ({"gpus_per_worker": 0.25}, "actor", 0.25),  # packed trials each capped at their share by default
    ({"gpus_per_worker": 0.25, "gpu_memory_fraction": 0.4}, "actor", 0.4),
    ({"gpus_per_worker": 1}, "actor", None),  # a whole GPU: no cap
    ({"gpus_per_worker": 2}, "actor", None),
])
def test_resolved_executor_and_memory_cap(tmp_path, resources, executor, fraction):
    _, sweep, trials = load(tmp_path, f"train: {{max_steps: 10}}\nresources: {json.dumps(resources)}\n")
    assert sweep.resources.resolved_executor() == executor
    assert sweep.resources.resolved_gpu_memory_fraction() == fraction
    assert trials[0].config.resources.strategy == resources.get("strategy", "ddp")


def test_deepspeed_config_is_merged_into_raysweeps():
    from raysweep.trial import engines

    config = G.trial_config({"train": {"max_steps": 10, "max_grad_norm": None, "grad_accum_steps": 2},
                                 "resources": {"strategy": "deepspeed_zero3", "deepspeed_config": {
                                     "zero_optimization": {"offload_optimizer": {"device": "cpu"}}}}}, {})
    ds = engines.build(config).ds_config(n_trainable=3 * 2**20)
    assert ds["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 3 * 2**20,
                                       "offload_optimizer": {"device": "cpu"}}
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (
        16, 2, 0.0)


def test_ranks_train_on_disjoint_shards_of_each_epoch():
    n, bs = 103, 8
    shards = [micro_batches(n, bs, seed=3, rank=r, world_size=2) for r in (0, 1)]
    per_epoch = (n // 2) // bs  # the same number of micro-batches on every rank (they step together)
    seen = [[i for _ in range(per_epoch) for i in next(s)[1]] for s in shards]
    assert len(seen[0]) == len(seen[1]) == per_epoch * bs
    assert not set(seen[0]) & set(seen[1])
    assert next(shards[0])[0] == next(shards[1])[0] == 1  # then both move to the next epoch's permutation


# ------------------------------------------------------------------------------------------------------------
# two real ranks: torch.multiprocessing + a gloo process group, the training loop as a Ray Train worker runs it


def _rank_main(rank: int, port: int, root: str, configs: dict) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    from raysweep.trial.loop import run_training
    from raysweep.trial.session import LocalSession

    class RankSession(LocalSession):
        """LocalSession as one of two ranks; DDP wrapping as Ray Train's prepare_model does it."""

        def prepare_model(self, model):
            self.model = model
            return torch.nn.parallel.DistributedDataParallel(model) if self.strategy == "ddp" else model

    dist.init_process_group("gloo", rank=rank, world_size=2)
    out = Path(root)

    def run(name: str, resume: Path | None = None) -> RankSession:
        session = RankSession(out / name / f"rank{rank}", resume_from=resume)
        session.world_rank, session.world_size, session.strategy = rank, 2, configs[name]["resources"]["strategy"]
        session.model = None
        run_training(configs[name], session)
        rows = [{k: r.get(k) for k in ("train/step", "train/loss", "eval/loss")} for r in session.results]
        (out / name / f"rank{rank}.json").write_text(json.dumps(rows))
        return session

    ddp = run("ddp")
    from safetensors.torch import save_file

    save_file({n: p.detach().contiguous() for n, p in ddp.model.named_parameters() if p.requires_grad},
              str(out / "ddp" / f"weights{rank}.safetensors"))
    run("zero3")
    dist.barrier()  # both ranks' shards of the step-5 checkpoint are written
    if rank == 0:  # one checkpoint directory holding every rank's files, as Ray Train assembles it
        for r in (0, 1):
            shutil.copytree(out / "zero3" / f"rank{r}" / "checkpoint_step000005", out / "merged", dirs_exist_ok=True)
    dist.barrier()
    run("resumed", resume=out / "merged")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_ranks_ddp_replicas_agree_and_zero3_resumes_exactly(tmp_path, builtin_model_dir, builtin_task_files):
    """DDP: the ranks train on different data (their local train losses differ) and end with bitwise equal
    weights. ZeRO-3 (every parameter partitioned over the two ranks, evals in lockstep over uneven shards)
    follows the DDP trajectory (tolerance as in test_integration_multiworker: float rounding only) and writes
    a plain peft adapter; resumed from its sharded step-5 checkpoint it reproduces steps 5–10 exactly."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from tests.helpers import trial_config
    from tests.test_integration import eval_loss_of_saved_adapter

    def cfg(strategy, **resources):
        return trial_config(adapter={"r": 4}, data={"max_seq_len": 32, "max_eval_examples": 65},
                            train={"max_steps": 10, "eval_every": 5, "eval_batch_size": 16, "batch_size": 8, "lr": 1e-2},
                            resources={"num_workers": 2, "strategy": strategy, "executor": "train", **resources})

    # DeepSpeed keeps parameters under 1e5 elements whole on every rank: all of this tiny model's would be
    partitioned = {"deepspeed_config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}
    configs = {"ddp": cfg("ddp"), "zero3": cfg("deepspeed_zero3", **partitioned),
               "resumed": cfg("deepspeed_zero3", **partitioned)}
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path), configs), nprocs=2)

    def rows(name, rank=0):
        return json.loads((tmp_path / name / f"rank{rank}.json").read_text())

    def evals(name):
        return {r["train/step"]: r["eval/loss"] for r in rows(name) if r["train/step"] % 5 == 0}

    w0, w1 = (load_file(str(tmp_path / "ddp" / f"weights{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all((w0[k] == w1[k]).all() for k in w0)
    local = [{r["train/step"]: r["train/loss"] for r in rows("ddp", rank) if r["train/loss"]} for rank in (0, 1)]
    assert local[0].keys() == local[1].keys() and all(local[0][s] != local[1][s] for s in local[0])

    ddp, zero3 = evals("ddp"), evals("zero3")
    assert sorted(zero3) == [0, 5, 10] and zero3[10] < 0.7 * zero3[0]
    assert zero3 == pytest.approx(ddp, rel=1e-4)
    final = tmp_path / "zero3" / "rank0" / "checkpoint_step000010"
    assert eval_loss_of_saved_adapter(final) == pytest.approx(zero3[10], rel=1e-4)
    resumed = {r["train/step"]: (r["train/loss"], r["eval/loss"]) for r in rows("resumed")}
    original = {r["train/step"]: (r["train/loss"], r["eval/loss"]) for r in rows("zero3")}
    assert min(resumed) == 5 and resumed[10] == original[10]
