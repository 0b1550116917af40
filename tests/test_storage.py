"""The filesystem layer for experiments in object storage (raysweep/experiment/storage.py), against a real
S3-compatible server on 127.0.0.1 (moto's server mode): locations on hand inputs, files written and read
back, incremental mirrors, shared store entries built once across nodes, and the checks `plan` runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raysweep.experiment import storage
from tests.conftest import ROOT
from tests.s3_helpers import keys, make_bucket, moto_server, read, s3_env


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server's endpoint, with this process's environment pointing pyarrow at it."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint, pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(endpoint).items():
            mp.setenv(key, value)
        make_bucket(endpoint, "sweeps")
        yield endpoint


@pytest.mark.parametrize(("location", "parts", "joined"), [
    ("s3://sweeps/runs", ("exp", "trials.csv"), "s3://sweeps/runs/exp/trials.csv"),
    ("s3://sweeps/runs/", ("exp",), "s3://sweeps/runs/exp"),
    ("s3://sweeps", ("exp",), "s3://sweeps/exp"),
    # pyarrow's URI options stay at the end, where pyarrow reads them
    ("s3://sweeps/runs?endpoint_override=127.0.0.1:9000&scheme=http", ("exp",),
     "s3://sweeps/runs/exp?endpoint_override=127.0.0.1:9000&scheme=http"),
    ("/data/runs", ("exp", "trials.csv"), "/data/runs/exp/trials.csv"),
])
def test_join_keeps_scheme_and_query(location, parts, joined):
    assert storage.join(location, *parts) == joined


@pytest.mark.parametrize(("location", "uri", "name"), [
    ("s3://sweeps/runs/exp", True, "exp"), ("gs://b/p/exp/", True, "exp"), ("/data/runs/exp", False, "exp"),
    ("file:///data/runs/exp", False, "exp"), ("runs/exp", False, "exp"),
])
def test_uri_and_name(location, uri, name):
    assert storage.is_uri(location) is uri
    assert storage.name_of(location) == name


@pytest.mark.parametrize(("recorded", "root", "expected"), [
    # Ray records object-store checkpoints without the scheme; raysweep's trials.csv with it
    ("sweeps/runs/exp/t0/checkpoint_000002", "s3://sweeps/runs/exp", "MIRROR/t0/checkpoint_000002"),
    ("s3://sweeps/runs/exp/t0/checkpoint_000002", "s3://sweeps/runs/exp", "MIRROR/t0/checkpoint_000002"),
    ("s3://sweeps/runs/exp/t0/checkpoint_000002", "s3://sweeps/runs/exp?scheme=http", "MIRROR/t0/checkpoint_000002"),
    ("/gone/runs/exp/t0/checkpoint_000001", "/gone/runs/exp", "MIRROR/t0/checkpoint_000001"),
    ("s3://elsewhere/t0/checkpoint_000002", "s3://sweeps/runs/exp", "s3://elsewhere/t0/checkpoint_000002"),
    ("", "s3://sweeps/runs/exp", ""),
])
def test_relocate_maps_recorded_checkpoints_under_the_local_copy(tmp_path, recorded, root, expected):
    mirror = tmp_path / "exp"
    assert storage.relocate(recorded, root, mirror) == expected.replace("MIRROR", str(mirror))


@pytest.mark.parametrize(("path", "location", "expected"), [
    ("sweeps/runs/exp/train_runs/train-t0/checkpoint_step000040", "s3://sweeps/runs/exp",
     "s3://sweeps/runs/exp/train_runs/train-t0/checkpoint_step000040"),
    ("s3://sweeps/runs/exp/t0/checkpoint_000001", "s3://sweeps/runs/exp", "s3://sweeps/runs/exp/t0/checkpoint_000001"),
    ("other/runs/exp/t0", "s3://sweeps/runs/exp", "other/runs/exp/t0"),
    ("/data/runs/exp/t0/checkpoint_000001", "/data/runs/exp", "/data/runs/exp/t0/checkpoint_000001"),
])
def test_paths_ray_reports_without_a_scheme_become_uris(path, location, expected):
    assert storage.in_store(path, location) == expected


def test_mirror_is_under_the_cache_and_drops_the_query(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSWEEP_CACHE", str(tmp_path))
    assert storage.mirror_of("s3://sweeps/runs/exp?scheme=http") == tmp_path / "storage" / "s3" / "sweeps" / "runs" / "exp"
    assert storage.mirror_of(str(tmp_path / "x")) == tmp_path / "x"


def test_files_round_trip_through_the_object_store(s3):
    where = "s3://sweeps/roundtrip/exp"
    assert not storage.exists(storage.join(where, "trials.csv")) and not storage.is_dir(where)
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(where, "trials.csv"))
    storage.write_text(storage.join(where, "trials.csv"), "trial_id,status\nt0,TERMINATED\n")
    assert read(s3, "sweeps", "roundtrip/exp/trials.csv") == b"trial_id,status\nt0,TERMINATED\n"
    assert storage.is_file(storage.join(where, "trials.csv")) and storage.is_dir(where)
    storage.write_text(storage.join(where, "trials.csv"), "replaced whole")
    assert storage.read_text(storage.join(where, "trials.csv")) == "replaced whole"
    assert storage.bucket_exists(where) and not storage.bucket_exists("s3://no-such-bucket/x")


def test_pull_downloads_only_what_changed_and_opened_pushes_what_the_block_wrote(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSWEEP_CACHE", str(tmp_path / "cache"))
    where = "s3://sweeps/mirror/exp"
    storage.write_text(storage.join(where, "a.txt"), "one")
    storage.write_text(storage.join(where, "t0", "checkpoint_000001", "metrics.json"), "{}")
    local = storage.pull(where)
    assert (local / "a.txt").read_text() == "one" and (local / "t0/checkpoint_000001/metrics.json").is_file()
    stamp = (local / "t0/checkpoint_000001/metrics.json").stat().st_ino, (local / "a.txt").stat().st_ino
    storage.write_text(storage.join(where, "a.txt"), "two!")
    storage.pull(where)
    assert (local / "a.txt").read_text() == "two!"
    # the unchanged file was not downloaded again (a download replaces the file: a new inode)
    assert (local / "t0/checkpoint_000001/metrics.json").stat().st_ino == stamp[0]
    assert (local / "a.txt").stat().st_ino != stamp[1]
    with storage.opened(where) as directory:
        assert directory == local
        (directory / "summary.csv").write_text("x\n")
    assert read(s3, "sweeps", "mirror/exp/summary.csv") == b"x\n"
    assert set(keys(s3, "sweeps", "mirror/exp/")) == {f"mirror/exp/{k}" for k in
                                                     ("a.txt", "t0/checkpoint_000001/metrics.json", "summary.csv")}


def test_a_shared_store_entry_is_built_once_and_downloaded_by_other_nodes(s3, monkeypatch, tmp_path):
    """Two nodes (two local caches) share masks through the object store: the first builds and uploads the
    entry, the second downloads it instead of building."""
    from raysweep.inputs.cache import build_once_shared

    built = []

    def build(tmp):
        built.append(tmp)
        (tmp / "masks.safetensors").write_bytes(b"\x01\x02")

    for node in ("node-a", "node-b", "node-b"):
        monkeypatch.setenv("RAYSWEEP_CACHE", str(tmp_path / node))
        entry = build_once_shared("s3://sweeps/store", "masks/magnitude-unstructured-s0.5-abc", build)
        assert (entry / "masks.safetensors").read_bytes() == b"\x01\x02"
        assert str(entry).startswith(str(tmp_path / node))
    assert len(built) == 1
    assert set(keys(s3, "sweeps", "store/masks/")) == {"store/masks/magnitude-unstructured-s0.5-abc/masks.safetensors",
                                                       f"store/masks/magnitude-unstructured-s0.5-abc/{storage.COMPLETE_MARKER}"}


def test_a_grid_reads_back_from_the_object_store(s3):
    from raysweep import config as C

    storage.write_text("s3://sweeps/grids/exp/raysweep.yaml", "name: exp\ngrid:\n  adapter.r: [4, 8]\n")
    raw, sweep, trials = C.load("s3://sweeps/grids/exp/raysweep.yaml")
    assert raw["name"] == "exp" and len(trials) == 2


def _plan(grid, *args, env=None):
    return subprocess.run([sys.executable, "-m", "raysweep", "plan", str(grid), *args], capture_output=True,
                          text=True, cwd=ROOT, env=dict(env or os.environ, COLUMNS="200"), timeout=300)


def test_plan_stops_a_missing_bucket_and_an_unreachable_store(s3, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nstorage: s3://no-such-bucket/runs\n")
    proc = _plan(grid)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "storage: the bucket 'no-such-bucket' of s3://no-such-bucket/runs does not exist" in proc.stderr + proc.stdout
    dead = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens on port 9
    grid.write_text("name: g\nstorage: s3://sweeps/runs\n")
    proc = _plan(grid, env=dead)
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2 and "Traceback" not in out
    assert "storage: cannot reach s3://sweeps/runs" in out and "AWS_ENDPOINT_URL" in out
    proc = _plan(grid)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(("command", "expected"), [
    (["resume"], "s3://sweeps/nothing/here: no such directory; give the experiment path printed by `raysweep run`"),
    (["analyze"], "s3://sweeps/nothing/here: nothing stored there"),
    (["export", "--best", "--out", "OUT"], "s3://sweeps/nothing/here: nothing stored there"),
])
def test_commands_name_an_empty_object_store_location(s3, tmp_path, command, expected):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    proc = subprocess.run([sys.executable, "-m", "raysweep", args[0], "s3://sweeps/nothing/here", *args[1:]],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, COLUMNS="200"), timeout=300)
    out = " ".join((proc.stderr + proc.stdout).split())
    assert proc.returncode == 2 and "Traceback" not in out and expected in out, out


def test_a_taken_experiment_name_in_the_bucket_gets_a_suffix(s3):
    from raysweep.cli.preflight import unique_name

    storage.write_text("s3://sweeps/names/exp/raysweep.yaml", "name: exp\n")
    assert unique_name("s3://sweeps/names", "exp") == "exp-2"
    assert unique_name("s3://sweeps/names", "other") == "other"
