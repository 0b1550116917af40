"""Multi-node Ray clusters on this one machine, owned by a test.

Two kinds, both stopped by killing exactly the processes they started (never `ray stop`, which would
take other Ray users of the machine down too):
- `local_cluster`: `ray.cluster_utils.Cluster`, nodes started from the test process and removable one by one.
- `RayStartCluster`: `ray start --head --block` / `ray start --address … --block` processes, as a user
  starts a cluster; token authentication on (Ray's default for such clusters) with a token of its own.
Each keeps its files under a private RAY_TMPDIR, so Ray's "current cluster" file of other users in
/tmp/ray is neither read nor replaced. Paths stay short: Ray's unix sockets live there (107-byte limit).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.conftest import ROOT

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (all bound at once, so no two are the same)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(processes, timeout=30)


@contextlib.contextmanager
def private_tmpdir(monkeypatch) -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(monkeypatch, worker_cpus: tuple[int, ...] = (1, 1)):
    """A head with no CPUs (so every trial runs on a worker node) plus one node per `worker_cpus` entry.
    Yields (cluster, worker nodes); the test process itself does not connect to it."""
    from ray.cluster_utils import Cluster

    # Ray may switch token auth on for this process's environment (children inherit it): undone afterwards
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with private_tmpdir(monkeypatch):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            workers = [cluster.add_node(num_cpus=n) for n in worker_cpus]
            cluster.wait_for_nodes(timeout=120)
            yield cluster, workers
        finally:
            cluster.shutdown()


class RayStartCluster:
    """`ray start --head` (0 CPUs) and one `ray start --address` node per `worker_cpus` entry, on 127.0.0.1
    with explicit free ports (other clusters on this machine keep theirs). `env` is what a driver needs to
    connect (token included); `node_ids` maps 'head', 'worker0', … to Ray node ids once started."""

    def __init__(self, root: Path, worker_cpus: tuple[int, ...] = (1, 1)):
        self.root = Path(root)
        self.worker_cpus = worker_cpus
        self.tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_TMPDIR=self.tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str], timeout: float = 180) -> None:
        ports = free_ports(8)
        port_args = ["--node-manager-port", ports[0], "--object-manager-port", ports[1],
                     "--dashboard-agent-listen-port", ports[2], "--dashboard-agent-grpc-port", ports[3],
                     "--metrics-export-port", ports[4], "--runtime-env-agent-port", ports[5]]
        if "--head" in args:
            port_args += ["--ray-client-server-port", ports[6], "--dashboard-port", ports[7]]
        log = self.root / f"{name}.log"
        # --block: the `ray start` process lives as long as its node, in a process group of its own, so
        # stopping kills exactly this node's processes
        self.procs[name] = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args,
             *map(str, port_args)], env=self.env, cwd=ROOT, start_new_session=True,
            stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        # nodes start one at a time: two `ray start` joining at once left one raylet unregistered here
        while "Ray runtime started" not in log.read_text():
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def start(self) -> RayStartCluster:
        self._start("head", ["--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard", "false"])
        for i, cpus in enumerate(self.worker_cpus):
            self._start(f"worker{i}", ["--address", self.address, "--num-cpus", str(cpus)])
        return self

    def raylet_node_ids(self) -> dict[str, str]:
        """Each node's Ray node id, read from its raylet's command line."""
        ids = {}
        for name, proc in self.procs.items():
            for p in _descendants(proc.pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    cmd = p.cmdline()
                    if cmd and cmd[0].endswith("raylet"):
                        ids[name] = next(a.split("=", 1)[1] for a in cmd if a.startswith("--node_id="))
        return ids

    def stop(self) -> None:
        # every descendant first: a SIGTERMed `ray start` drains for up to 30 s, so kill outright
        processes = [p for proc in self.procs.values() for p in _descendants(proc.pid)]
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        _kill(processes)
        for proc in self.procs.values():
            proc.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_cli(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysweep", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(env or os.environ, COLUMNS="200"), timeout=timeout)
