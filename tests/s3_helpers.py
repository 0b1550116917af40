"""A real S3-compatible server on 127.0.0.1 for the object-storage tests: moto's server mode, started by the
test as its own process (never a mock inside the process under test). The credentials are moto's dummies;
AWS_ENDPOINT_URL points pyarrow (and so Ray and raysweep) and boto3 at it, and every process the tests start
(CLI drivers, `ray start` nodes, Ray workers) inherits them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from tests.cluster_helpers import free_ports

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_server(log_dir) -> Iterator[str]:
    """Start `moto_server` on a free port; yield its endpoint URL; kill it afterwards."""
    port = free_ports(1)[0]
    log = open(os.path.join(log_dir, "moto.log"), "w")  # noqa: SIM115 - closed below, after the server
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: see {log.name}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def s3_env(endpoint: str) -> dict[str, str]:
    return dict(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                         if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")


def make_bucket(endpoint: str, name: str) -> str:
    client(endpoint).create_bucket(Bucket=name)
    return name


def keys(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object under `prefix`: key -> size."""
    out, token = {}, None
    s3 = client(endpoint)
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def read(endpoint: str, bucket: str, key: str) -> bytes:
    return client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
