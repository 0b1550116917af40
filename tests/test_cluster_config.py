"""cluster.yaml (AWS) and cluster/local.yaml: Ray's own validation, offline, and the safety rules.

Ray's cluster-config validation (`prepare_config`: defaults merged as `ray up` does; `validate_config`:
Ray's JSON schema and node-type checks) is a private API, used through `ray_validated` only. The
safety rules are read from the configs as `ray up` would run them: token authentication on every node,
the dashboard on loopback only and no port open to the outside but SSH, a CPU head that runs the Tune
driver and no trials, raysweep installed after torch, shared storage mounted on every node.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import itertools
import re
from pathlib import Path

import pytest
import ray
import yaml

from tests.conftest import ROOT

AWS = ROOT / "cluster.yaml"
AWS_S3 = ROOT / "cluster" / "aws-s3.yaml"  # the same AWS cluster with an S3 bucket instead of EFS
LOCAL = ROOT / "cluster" / "local.yaml"
SHARED_MOUNT = "/mnt/shared"


def ray_validated(cfg: dict) -> dict:
    """The config as `ray up` fills it out (node-type defaults, merged setup commands), after Ray's checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module", params=[AWS, AWS_S3, LOCAL], ids=["aws", "aws-s3", "local"])
def config(request) -> tuple[Path, dict, dict]:
    raw = load(request.param)
    return request.param, raw, ray_validated(raw)


def start_commands(prepared: dict) -> list[str]:
    return prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]


def node_setup(prepared: dict) -> dict[str, list[str]]:
    """The setup commands each kind of node runs (prepare_config puts setup_commands in front of both)."""
    return {"head": prepared["head_setup_commands"], "worker": prepared["worker_setup_commands"]}


# --------------------------------------------------------------------------------------------------
# both files


def test_ray_validation_is_real():
    """The validator rejects what `ray up` would reject (so passing it means something)."""
    from jsonschema import ValidationError

    typo = load(AWS) | {"head_start_commands": ["ray start --head"]}  # not head_start_ray_commands
    with pytest.raises(ValidationError):
        ray_validated(typo)
    too_few = load(AWS)
    too_few["available_node_types"]["ray.worker.gpu"]["min_workers"] = too_few["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        ray_validated(too_few)


def test_every_ray_start_has_token_auth(config):
    path, _, prepared = config
    starts = [c for c in start_commands(prepared) if "ray start" in c]
    assert any("--head" in c for c in starts) and any("--address" in c for c in starts), starts
    for command in starts:
        assert re.search(r"(^|[ ;])RAY_AUTH_MODE=token ray start ", command), (path.name, command)


def test_token_mode_for_every_command_on_every_node(config):
    """Drivers, `ray status`, `ray exec` and `ray attach` shells read ~/.bashrc (Ray's `bash --login -i`)."""
    path, _, prepared = config
    for kind, commands in node_setup(prepared).items():
        assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in commands), (path.name, kind)


def test_token_is_distributed_from_the_home_not_the_repository(config):
    path, raw, _ = config
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token", path.name
    # the other mounts are repository files (relative, so nothing of this machine is committed)
    for remote, local in raw["file_mounts"].items():
        if remote != "~/.ray/auth_token":
            assert not Path(local).is_absolute() and (ROOT / local).exists(), (remote, local)


def test_dashboard_listens_on_loopback_only(config):
    path, _, prepared = config
    [head_start] = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start, head_start
    for command in start_commands(prepared):
        assert "0.0.0.0" not in command, (path.name, command)


def test_setup_installs_torch_then_raysweep_with_the_same_ray(config):
    path, _, prepared = config
    for kind, commands in node_setup(prepared).items():
        installs = [c for c in commands if "pip install" in c]
        torch_at = next(i for i, c in enumerate(installs) if '"torch==' in c)
        raysweep_at = next(i for i, c in enumerate(installs) if "raysweep" in c and "git+" in c)
        assert torch_at < raysweep_at, (path.name, kind, installs)
        # `ray up` here and Ray on the nodes must be one version: the config pins the one installed here
        assert f"]=={ray.__version__}" in installs[raysweep_at], (path.name, kind, installs[raysweep_at])
        activate = [i for i, c in enumerate(commands) if "raysweep-venv/bin/activate" in c]
        assert activate, (path.name, kind)


def test_every_placeholder_is_marked(config):
    """A value a user must change says so on its line or in the comment block right above it."""
    path, _, _ = config
    lines = path.read_text().splitlines()
    placeholders = [i for i, line in enumerate(lines) if "CHANGE_ME" in line.split("#")[0]]
    assert placeholders, path.name
    for i in placeholders:
        above = itertools.takewhile(lambda s: s.lstrip().startswith("#"), reversed(lines[:i]))
        assert "CHANGE ME" in lines[i] or any("CHANGE ME" in s for s in above), (path.name, i + 1, lines[i])


# --------------------------------------------------------------------------------------------------
# cluster.yaml (AWS)


def ray_default_inbound_rules(security_group_ids: set[str], extra_rules: list[dict]) -> list[dict]:
    """The inbound rules `ray up` authorizes on the security group it manages, from Ray's own code.

    ray.autoscaler._private.aws.config imports boto3 at module level (not installed here, and not
    needed offline): its three pure rule-building functions are compiled from the installed source.
    """
    names = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
             "_create_default_ssh_inbound_rules"}
    origin = importlib.util.find_spec("ray.autoscaler._private.aws.config").origin
    functions = [node for node in ast.parse(Path(origin).read_text()).body
                 if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {f.name for f in functions} == names, "Ray changed its security group code: re-check cluster.yaml"
    namespace = {"itertools": itertools}
    exec(compile(ast.Module(body=functions, type_ignores=[]), origin, "exec"), namespace)
    return namespace["_create_default_inbound_rules"](security_group_ids, extra_rules)


@pytest.mark.parametrize("aws", [AWS, AWS_S3], ids=["efs", "s3"])
def test_aws_only_ssh_is_open_to_the_outside(aws):
    raw = load(aws)
    prepared = ray_validated(raw)
    for name, node_type in prepared["available_node_types"].items():
        # no user-made group: Ray's managed group (with the rules checked below) is what nodes get
        assert "SecurityGroupIds" not in node_type["node_config"], name
        assert "NetworkInterfaces" not in node_type["node_config"], name
    extra = raw["provider"]["security_group"]["IpPermissions"]
    assert extra == []  # never a dashboard / GCS / client port
    rules = ray_default_inbound_rules({"sg-raysweep"}, extra)
    from_outside = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")]
    assert from_outside and all((r["IpProtocol"], r["FromPort"], r["ToPort"]) == ("tcp", 22, 22)
                                for r in from_outside), rules
    within = [r for r in rules if r not in from_outside]
    assert all(set(r["UserIdGroupPairs"][0]) == {"GroupId"} for r in within), within  # node to node only


@pytest.mark.parametrize("aws", [AWS, AWS_S3], ids=["efs", "s3"])
def test_aws_cpu_head_runs_the_driver_and_no_trials(aws):
    prepared = ray_validated(load(aws))
    head = prepared["available_node_types"][prepared["head_node_type"]]
    # CPU 0 and no GPU: Ray places no trial on the head; the Tune driver (`raysweep run` on the head,
    # not a Ray task) needs none. On-demand: a spot reclaim never takes the driver or the autoscaler.
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p", "inf", "trn", "dl"))
    assert head.get("max_workers", 0) == 0 and head.get("min_workers", 0) == 0


@pytest.mark.parametrize("aws", [AWS, AWS_S3], ids=["efs", "s3"])
def test_aws_gpu_spot_workers_scale_from_zero(aws):
    raw = load(aws)
    prepared = ray_validated(raw)
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    assert len(workers) == 1
    [(name, worker)] = workers.items()
    assert worker["node_config"]["InstanceType"].startswith(("g", "p")), name  # GPU instance families
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert worker["min_workers"] == 0 < worker["max_workers"] <= raw["max_workers"]
    assert raw["provider"]["cache_stopped_nodes"] is False  # spot instances cannot be stopped
    assert worker["node_config"]["ImageId"] == prepared["available_node_types"]["ray.head.cpu"]["node_config"]["ImageId"]


def test_aws_storage_is_shared_by_every_node():
    prepared = ray_validated(load(AWS))
    for kind, commands in node_setup(prepared).items():
        mounts = [c for c in commands if "mount -t nfs4" in c]
        assert len(mounts) == 1, (kind, commands)
        assert re.search(rf":/ {SHARED_MOUNT}\)", mounts[0]) and f"{SHARED_MOUNT}/ray_results" in mounts[0]
    # the guide's sweep command writes there
    assert f"--storage {SHARED_MOUNT}/ray_results" in AWS.read_text()
    assert f"--storage {SHARED_MOUNT}/ray_results" in (ROOT / "docs" / "cluster.md").read_text()


def test_aws_s3_cluster_shares_a_bucket_not_a_file_system():
    """cluster/aws-s3.yaml: no NFS mount anywhere; workers get an instance role (they upload checkpoints
    themselves), the head Ray's own; the guide's sweep command stores to s3://."""
    prepared = ray_validated(load(AWS_S3))
    for kind, commands in node_setup(prepared).items():
        assert not [c for c in commands if "mount" in c or "nfs" in c], (kind, commands)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]["node_config"]
    assert "IamInstanceProfile" not in head  # `ray up` gives the head its own (EC2 + S3) role
    for name, node_type in types.items():
        if name != prepared["head_node_type"]:
            assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    assert "--storage s3://" in AWS_S3.read_text()
    assert "--storage s3://" in (ROOT / "docs" / "cluster.md").read_text()


@pytest.mark.parametrize("aws", [AWS, AWS_S3], ids=["efs", "s3"])
def test_aws_head_can_launch_workers(aws):
    prepared = ray_validated(load(aws))
    assert any("boto3" in c for c in prepared["head_setup_commands"])  # the autoscaler calls EC2
    [head_start] = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


# --------------------------------------------------------------------------------------------------
# local.yaml


def test_local_is_one_head_on_loopback_by_default():
    raw = load(LOCAL)
    prepared = ray_validated(raw)
    assert raw["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == 0
    assert raw["auth"]["ssh_user"] == "CHANGE_ME"  # the test fills in its own login
