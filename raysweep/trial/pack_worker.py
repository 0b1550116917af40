"""A pack worker: the process that holds one slot's resources and one base model, and trains the members
that join it (sweep/packs.py makes it a Ray actor; each member's Tune trial is a relay that joins it).

Its training runs in a thread of its own, so the actor keeps answering `join`, `take` and `leave` while a
step runs. Members join and leave between steps (trial/packed_loop.py); a member's reports and
checkpoints wait in its outbox until its relay takes them (checkpoints travel as tar bytes through Ray's
object store, so the relay may run on another node). A worker of capacity 1 that receives a trial which
cannot be packed runs it alone with the ordinary training loop (trial/loop.py), through the same outbox.
"""

from __future__ import annotations

import io
import queue
import shutil
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from raysweep.trial.session import Session

# a new pack waits this long for more members after the first joins (their relays start within a second or so
# of each other): members that start together share their first evaluation and every step from the first
JOIN_WINDOW_S = 1.0

# outbox messages: ("result", (metrics, checkpoint tar bytes or None)), ("done", None), ("error", reason)


def pack_dir(directory: Path) -> bytes:
    """A checkpoint directory as tar bytes (what crosses the object store)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=directory.name)
    return buffer.getvalue()


def unpack_dir(data: bytes, into: Path) -> Path:
    """Tar bytes from `pack_dir` extracted under `into`; returns the checkpoint directory."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(into, filter="data")
        top = tar.getnames()[0].split("/")[0]
    return into / top


class StopMember(Exception):
    """Raised inside a trial run alone when its relay left (Tune stopped the trial)."""


class OutboxSession(Session):
    """A member's Session: its reports (and checkpoint bytes) go to its outbox for the relay to take."""

    def __init__(self, outbox: queue.Queue, checkpoint: Path | None, device, stopped: threading.Event):
        self.outbox = outbox
        self.checkpoint = checkpoint
        self._device = device
        self.stopped = stopped

    def device(self):
        return self._device

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        if self.stopped.is_set():
            raise StopMember
        self.outbox.put(("result", (dict(metrics), pack_dir(checkpoint_dir) if checkpoint_dir else None)))

    def latest_checkpoint(self):
        import contextlib

        return contextlib.nullcontext(self.checkpoint)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


class PackWorker:
    """Members of one pack key train here together (up to `capacity`); see the module docstring."""

    def __init__(self, name: str, device_kind: str = "auto"):
        self.name = name
        self.device_kind = device_kind
        self.commands: queue.Queue = queue.Queue()
        self.outboxes: dict[str, queue.Queue] = {}
        self.stopped: dict[str, threading.Event] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="raysweep-packworker-"))
        self.thread = threading.Thread(target=self._run, name="raysweep-pack", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- called by relays (other threads)

    def join(self, trial_id: str, config: dict[str, Any], checkpoint: bytes | None) -> str:
        self.outboxes[trial_id] = queue.Queue()
        self.stopped[trial_id] = threading.Event()
        self.commands.put(("join", trial_id, config, checkpoint))
        return self.name

    def take(self, trial_id: str, timeout: float = 1.0) -> list[tuple[str, Any]]:
        """This member's messages so far (waits up to `timeout` for the first)."""
        box = self.outboxes.get(trial_id)
        if box is None:
            return [("error", f"RuntimeError: trial {trial_id} is not a member of pack {self.name}")]
        try:
            out = [box.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(box.get_nowait())
            except queue.Empty:
                return out

    def leave(self, trial_id: str) -> None:
        if trial_id in self.stopped:
            self.stopped[trial_id].set()
        self.commands.put(("leave", trial_id))

    # ---------------------------------------------------------------- the training thread

    def _device(self):
        import torch

        if self.device_kind == "cpu":
            return torch.device("cpu")
        import ray

        return torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")

    def _checkpoint_dir(self, trial_id: str, data: bytes | None) -> Path | None:
        if data is None:
            return None
        into = self.tmp / f"resume-{trial_id}"
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        return unpack_dir(data, into)

    def _run(self) -> None:
        from raysweep.trial.pack_key import unpacked_reason

        engine = None
        by_trial: dict[str, Any] = {}  # trial id -> its MemberRun
        while True:
            running = engine.running() if engine is not None else []
            joins, leaves = [], []
            try:  # block only when nothing trains
                command = self.commands.get(timeout=1.0) if not running else self.commands.get_nowait()
                while True:
                    (joins if command[0] == "join" else leaves).append(command)
                    command = self.commands.get_nowait()
            except queue.Empty:
                pass
            if joins and not running:  # a new pack: members whose relays start together begin together
                deadline = time.monotonic() + JOIN_WINDOW_S
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        command = self.commands.get(timeout=left)
                    except queue.Empty:
                        break
                    (joins if command[0] == "join" else leaves).append(command)
            gone = {trial_id for _, trial_id in leaves}
            joins = [j for j in joins if j[1] not in gone]
            for _, trial_id in leaves:
                run = by_trial.pop(trial_id, None)
                if run is not None and engine is not None:
                    engine.remove(run)
                self.outboxes.pop(trial_id, None)
            for _, trial_id, config, data in joins:
                if unpacked_reason(config) is not None:
                    self._run_alone(trial_id, config, data)
                    joins = [j for j in joins if j[1] != trial_id]
            if joins:
                try:
                    if engine is None or not engine.running():
                        engine = self._engine(joins[0][2])
                        by_trial = {}
                    items = []
                    for _, trial_id, config, data in joins:
                        session = OutboxSession(self.outboxes[trial_id], None, engine.device, self.stopped[trial_id])
                        items.append((config, session, self._checkpoint_dir(trial_id, data)))
                    for (_, trial_id, _, _), run in zip(joins, engine.admit(items), strict=True):
                        by_trial[trial_id] = run
                except Exception as exc:  # noqa: BLE001 - every joining member fails with the reason
                    traceback.print_exc()
                    for _, trial_id, _, _ in joins:
                        self._send(trial_id, ("error", _reason(exc)))
                    engine = None if engine is not None and not engine.running() else engine
            if engine is None or not engine.running():
                self._finish(by_trial)
                continue
            try:
                engine.step()
            except Exception as exc:  # noqa: BLE001 - a failed packed step fails its members; Tune retries them
                traceback.print_exc()
                for trial_id in list(by_trial):
                    self._send(trial_id, ("error", _reason(exc)))
                by_trial, engine = {}, None
                self._release_memory()
                continue
            self._finish(by_trial)

    def _engine(self, config: dict[str, Any]):
        from raysweep.trial.packed_loop import PackEngine

        self._release_memory()
        return PackEngine(config, self._device(), name=self.name)

    def _finish(self, by_trial: dict[str, Any]) -> None:
        """Members that ended send their last message and leave the worker's books."""
        for trial_id, run in list(by_trial.items()):
            if run.status == "TERMINATED":
                self._send(trial_id, ("done", None))
            elif run.status == "ERROR":
                self._send(trial_id, ("error", run.error))
            elif run.status != "REMOVED":
                continue
            del by_trial[trial_id]

    def _send(self, trial_id: str, message: tuple[str, Any]) -> None:
        box = self.outboxes.get(trial_id)
        if box is not None:
            box.put(message)

    def _run_alone(self, trial_id: str, config: dict[str, Any], data: bytes | None) -> None:
        """A trial that cannot be packed: the ordinary loop, in this thread (the worker's capacity is 1)."""
        from raysweep.trial.loop import run_training

        self._release_memory()
        session = OutboxSession(self.outboxes[trial_id], self._checkpoint_dir(trial_id, data), self._device(),
                                self.stopped[trial_id])
        try:
            run_training(config, session)
            self._send(trial_id, ("done", None))
        except StopMember:
            pass
        except Exception as exc:  # noqa: BLE001 - the relay raises it as the trial's one-line reason
            traceback.print_exc()
            self._send(trial_id, ("error", _reason(exc)))
        finally:
            self._release_memory()

    def _release_memory(self) -> None:
        from raysweep.inputs.model_cache import release_trial_memory

        release_trial_memory()
