"""The executor seam: how a training loop talks to whatever runs it.

`trial.loop.run_training` only uses this interface, so the same loop runs under a Ray Train TorchTrainer
worker (`TrainSession`), a plain Tune function trainable in a reused actor (`TuneSession`), or a
plain Python call in unit tests (`LocalSession`). See docs/ARCHITECTURE.md, "Executors".
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raysweep.experiment.metrics import CHECKPOINT_PATH


class Session:
    world_rank: int = 0
    world_size: int = 1

    def device(self):
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def prepare_model(self, model):
        return model.to(self.device())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        raise NotImplementedError

    def agree(self, flag: bool) -> bool:
        """`flag` OR-ed over all ranks, so every rank takes the same branch (e.g. whether to report)."""
        if self.world_size == 1:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(flag)], device=self.device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        yield None

    def node_id(self) -> str | None:
        """The Ray node running this process (hex id), None outside Ray: where a trial ran on a cluster
        (node IPs do not tell nodes apart when several run on one machine)."""
        import sys

        ray = sys.modules.get("ray")  # a Ray worker has imported it; a plain run need not pay for the import
        return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


class TrainSession(Session):
    """Inside a Ray Train worker (TorchTrainer): DDP over the worker group, Train checkpoints."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        # moves to the worker's device; wraps in DistributedDataParallel when world_size > 1
        return ray.train.torch.prepare_model(model)

    def report(self, metrics, checkpoint_dir=None):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=checkpoint_dir.name if checkpoint_dir else None)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        import ray.train

        with _opened(ray.train.get_checkpoint()) as directory:
            yield directory


@contextlib.contextmanager
def _opened(checkpoint) -> Iterator[Path | None]:
    """A Ray checkpoint (Train's or Tune's, or None) as a local directory while the block runs."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        yield Path(d)


class TuneSession(Session):
    """Inside a plain Tune function trainable (one process per trial, possibly a reused actor)."""

    def device(self):
        import ray
        import torch

        # Ray sets CUDA_VISIBLE_DEVICES only for actors it gave GPUs; an actor that asked for none must not
        # use one (it would share GPU 0 with other trials behind Ray's back)
        return torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")

    def report(self, metrics, checkpoint_dir=None):
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        from ray import tune

        with _opened(tune.get_checkpoint()) as directory:
            yield directory


class LocalSession(Session):
    """No Ray: results kept in memory, checkpoints copied under `root` (unit tests, debugging)."""

    def __init__(self, root: Path, resume_from: Path | None = None) -> None:
        self.root = Path(root)
        self.results: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []
        self.resume_from = resume_from

    def report(self, metrics, checkpoint_dir=None):
        metrics = dict(metrics)
        if checkpoint_dir is not None:
            dest = self.root / checkpoint_dir.name
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)
            metrics[CHECKPOINT_PATH] = str(dest)
        self.results.append(metrics)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        yield self.resume_from
