"""`ray up` / `ray exec` / `ray dashboard` / `ray down` with cluster/local.yaml, for real, and a sweep on it.

The cluster's one machine is this one, reached over SSH: Debian's openssh-server (installed with
apt-get if missing) on 127.0.0.1:22, key authentication only. The SSH server, and so everything `ray up`
starts through it, runs in fresh Linux namespaces (`unshare`):
- PID: `ray stop` (in the start commands and in `ray down`) stops every Ray process it can see; here
  it sees only this cluster's, never another Ray running on the machine (CI runners, other users).
  Stopping the SSH server (PID 1 there) ends every process left in it.
- network: its own loopback, so Ray's default ports (6379, 8265, ...) and SSH's 22 are free whatever
  runs on the machine; `ray up` and the other client commands join it with `nsenter --net`.
- mount: a private /tmp/ray, so this head's session files and `ray_current_cluster` never mix with
  another local Ray's (which `--address auto` reads).
The SSH server gives the remote side a HOME of its own (sshd's SetEnv), so `ray up` writes its
bootstrap files, ~/.bashrc lines and the token there, not in the real home directory. The client side
runs with a throwaway HOME too: its ~/.ray/auth_token is made with `ray get-auth-token --generate`,
exactly as docs/cluster.md says.

Needs root (apt-get, sshd, namespaces) and the `unshare`/`nsenter`/`ip` tools (util-linux, iproute2).
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent  # the venv running the tests: `ray` and raysweep on the "cluster" too
RAY = str(VENV_BIN / "ray")
SSHD = "/usr/sbin/sshd"
APT_PACKAGES = ["openssh-server", "openssh-client", "rsync", "iproute2"]
DASHBOARD_LOCAL_PORT = 18265  # the head's own dashboard has 8265 in the shared network namespace


# sshd, ip and mount live in sbin directories that a CI job's PATH may lack
SYSTEM_PATH = f"{VENV_BIN}:{os.environ.get('PATH', '')}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"


def _missing_tools() -> list[str]:
    return [tool for tool in ("sshd", "ssh", "ssh-keygen", "rsync", "ip")
            if not shutil.which(tool, path=SYSTEM_PATH)]


def _namespaces_problem() -> str | None:
    """Why this machine cannot create the namespaces (an unprivileged container), or None."""
    try:
        proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"],
                              capture_output=True, text=True, timeout=30, env=dict(os.environ, PATH=SYSTEM_PATH))
    except FileNotFoundError as e:
        return str(e)
    return None if proc.returncode == 0 else proc.stderr.strip()


def _ensure_packages() -> None:
    """Install the SSH server, rsync (Ray's file sync) and ip with apt-get if any is missing."""
    if not _missing_tools():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SYSTEM_PATH)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
                   check=True, env=env, timeout=600, capture_output=True)
    assert not _missing_tools(), _missing_tools()


class SSHServer:
    """sshd on 127.0.0.1:22 inside new PID, network and mount namespaces; see the module docstring."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"  # the remote HOME
        self.key = root / "id_ed25519"
        self.log = root / "sshd.log"
        self.ray_tmp = root / "ray_tmp"  # the head's /tmp/ray
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.home.mkdir()
        self.ray_tmp.mkdir()
        (self.home / ".bashrc").touch()  # Ray sources it before every command
        for key in (self.root / "host_key", self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                           env=dict(os.environ, PATH=SYSTEM_PATH))
        shutil.copy(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        (self.root / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1",
            "Port 22",
            f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",  # pytest's temp dirs are not laid out as sshd wants a home
            "PidFile none",
            f"SetEnv HOME={self.home}",
            "",
        ]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        mount_point = Path("/tmp/ray")  # Ray's default temp dir: the mount point of the head's private one
        if not mount_point.exists():
            mount_point.mkdir()
            mount_point.chmod(0o777)  # as Ray leaves it, for other users' Ray on this machine
        inside = (f"ip link set lo up && mount --bind {self.ray_tmp} /tmp/ray && "
                  f"exec {SSHD} -D -e -f {self.root / 'sshd_config'}")
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", inside],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ, PATH=SYSTEM_PATH))
        deadline = time.monotonic() + 30
        while "Server listening" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def client(self, *args: str) -> list[str]:
        """A command line run here but in the server's network namespace (127.0.0.1 is the server's)."""
        assert self.proc is not None
        return ["nsenter", f"--target={self.proc.pid}", "--net", "--", *args]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # unshare ignores SIGTERM while it waits; its child is sshd, PID 1 of the namespace, and when
        # that exits the kernel kills every process still in the namespace (Ray's included)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # --kill-child: the namespace goes with it
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: installs openssh-server, runs sshd and Linux namespaces")
    if problem := _namespaces_problem():
        pytest.skip(f"cannot create PID/network/mount namespaces here: {problem}")
    _ensure_packages()
    server = SSHServer(tmp_path_factory.mktemp("ray-up"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _out(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _test_config(server: SSHServer) -> dict:
    """cluster/local.yaml with this test's SSH login, and no pip installs (the test's venv is used)."""
    cfg = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert len(installs) == 2, cfg["setup_commands"]  # torch, then ray + raysweep
    cfg["cluster_name"] = f"raysweep-test-{uuid.uuid4().hex[:8]}"  # its own SSH control path and state
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(server.key)}
    # the rest runs as written: `test -x ~/raysweep-venv/bin/python` finds the venv linked below, the
    # ~/.bashrc lines activate it and turn token mode on; the start commands are untouched
    cfg["setup_commands"] = [c for c in cfg["setup_commands"] if c not in installs]
    cfg["setup_commands"].append("grep -q RAY_USAGE_STATS_ENABLED ~/.bashrc || "
                                 "echo 'export RAY_USAGE_STATS_ENABLED=0' >> ~/.bashrc")
    assert (VENV_BIN / "activate").is_file(), f"run the tests with the project's venv, not {sys.executable}"
    (server.home / "raysweep-venv").symlink_to(VENV_BIN.parent)
    return cfg


def test_ray_up_exec_dashboard_down_with_a_sweep(ssh_server, builtin_model_dir):
    server = ssh_server
    root = server.root
    config = root / "local.yaml"
    cfg = _test_config(server)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    client_home = root / "client_home"  # the laptop's HOME: where the token is made and mounted from
    client_home.mkdir()
    env = dict(os.environ, HOME=str(client_home), RAY_TMPDIR=str(root / "client_tmp"),
               RAY_USAGE_STATS_ENABLED="0", PATH=SYSTEM_PATH)
    (root / "client_tmp").mkdir()
    # docs/cluster.md step 0: the cluster's token, on the laptop
    proc = _run([RAY, "get-auth-token", "--generate"], env, timeout=60)
    token_file = client_home / ".ray" / "auth_token"
    assert proc.returncode == 0 and token_file.is_file(), _out(proc)
    token = token_file.read_text().strip()

    try:
        started = time.monotonic()
        up = _run(server.client(RAY, "up", "-y", "--no-config-cache", str(config)), env, timeout=300)
        up_s = time.monotonic() - started
        assert up.returncode == 0, _out(up) + _head_logs(server)
        # the file mounts arrived: the token (the same secret) and the grid files
        assert (server.home / ".ray" / "auth_token").read_text().strip() == token
        assert (server.home / "search_spaces" / "quickstart.yaml").is_file()

        # `ray status` on the head reaches the GCS only with the token (RAY_AUTH_MODE=token from ~/.bashrc);
        # the dashboard listens on the head's loopback only
        status = _run(server.client(RAY, "exec", str(config), "ray status && ss -ltn"), env, timeout=120)
        assert status.returncode == 0 and "Active:" in status.stdout, _out(status)
        assert "127.0.0.1:8265" in status.stdout and not re.search(r"(\*|0\.0\.0\.0|\[::\]):8265", status.stdout), \
            status.stdout

        _check_dashboard(server, config, env, token)

        # the sweep: the Tune driver on the head (`--address auto`: the cluster `ray up` started),
        # results on a path the test can read
        storage = root / "runs"
        sweep = (f"cd {root} && RAYSWEEP_CACHE={os.environ['RAYSWEEP_CACHE']} HF_HUB_OFFLINE=1 COLUMNS=200 "
                 "python -m raysweep run ~/search_spaces/quickstart.yaml adapter.type=lora adapter.r=4 "
                 f"train.max_steps=20 train.eval_every=10 --address auto --storage {storage} --name on-cluster")
        sweep_started = time.monotonic()
        run = _run(server.client(RAY, "exec", str(config), sweep), env, timeout=420)
        sweep_s = time.monotonic() - sweep_started
        assert run.returncode == 0, _out(run) + _head_logs(server)
        experiment = storage / "on-cluster"
        with (experiment / "trials.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and {r["status"] for r in rows} == {"TERMINATED"}, rows
        assert {r["train.seed"] for r in rows} == {"0", "1"}
        for r in rows:
            assert int(r["train/step"]) == 20, r
            checkpoint = Path(r["checkpoint_path"])
            assert (checkpoint / "adapter" / "adapter_config.json").is_file(), r
            assert json.loads((checkpoint / "trial_config.json").read_text())["adapter"]["r"] == 4
        # the driver ran in the cluster's Ray session (the head's private /tmp/ray), not a new local Ray
        sessions = [p for p in server.ray_tmp.glob("session_2*") if p.is_dir()]
        assert len(sessions) == 1, sessions
        assert list((sessions[0] / "logs").glob("python-core-driver-*.log")), \
            sorted(p.name for p in (sessions[0] / "logs").iterdir())
    finally:
        down_started = time.monotonic()
        down = _run(server.client(RAY, "down", "-y", str(config)), env, timeout=180)
        down_s = time.monotonic() - down_started
        control_dir = _ssh_control_dir(cfg["cluster_name"])
        shutil.rmtree(control_dir, ignore_errors=True)
        try:
            control_dir.parent.rmdir()  # only if no other cluster of this user has sockets there
        except OSError:
            pass
    assert down.returncode == 0, _out(down)
    # `ray down` stopped Ray on the head: no Ray process left in the namespace (only sshd and its sessions)
    left = _run(server.client("ssh", "-i", str(server.key), "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", "ps -eo args"), env, timeout=60)
    assert "gcs_server" not in left.stdout and "raylet" not in left.stdout, left.stdout
    print(f"ray up {up_s:.0f} s, sweep {sweep_s:.0f} s, ray down {down_s:.0f} s")


def _ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH runner keeps a cluster's ControlMaster sockets (as command_runner.py names it);
    Ray leaves the directory behind, and this test's cluster name is used once."""
    from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:HASH_MAX_LENGTH]
    return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(cluster_name.encode()).hexdigest()[:HASH_MAX_LENGTH]


def _check_dashboard(server: SSHServer, config: Path, env: dict[str, str], token: str) -> None:
    """`ray dashboard` tunnels to the head's loopback-only dashboard, which wants the token."""
    tunnel = subprocess.Popen(
        server.client(RAY, "dashboard", "--port", str(DASHBOARD_LOCAL_PORT), str(config)),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True)
    probe = (
        "import os, time, urllib.request, urllib.error\n"
        f"url = 'http://127.0.0.1:{DASHBOARD_LOCAL_PORT}/api/version'\n"
        "def get(headers):\n"
        "    try:\n"
        "        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "deadline = time.time() + 120\n"
        "while True:\n"
        "    try:\n"
        "        anonymous = get({})\n"
        "        break\n"
        "    except OSError:\n"
        "        if time.time() > deadline: raise\n"
        "        time.sleep(1)\n"
        "print(anonymous, get({'Authorization': 'Bearer ' + os.environ['PROBE_TOKEN']}))\n"
    )
    try:
        proc = _run(server.client(sys.executable, "-c", probe), dict(env, PROBE_TOKEN=token), timeout=150)
    finally:
        os.killpg(tunnel.pid, signal.SIGTERM)  # `ray dashboard` and its ssh
        tunnel.wait(timeout=30)
    assert proc.returncode == 0, _out(proc)
    anonymous, with_token = proc.stdout.split()
    assert (anonymous, with_token) == ("401", "200"), proc.stdout


def _head_logs(server: SSHServer) -> str:
    """The tail of the head's Ray logs, for a failure message (session_latest points inside the namespace)."""
    parts = []
    for path in sorted(server.ray_tmp.glob("session_2*/logs/*.err"))[:12]:
        parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)
