"""Shared fixtures: one local Ray instance and one small demo corpus (and its manifest) per test session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Fault injection (pipeline/stages.py): a decode worker dies with SIGSEGV on any path containing this
# marker, as a decoder crashing in native code on a hostile file would. Set before Ray starts so every
# Ray worker inherits it.
from tests.helpers import CRASH_MARKER

os.environ.setdefault("SIGNFEAT_TEST_CRASH_ON", CRASH_MARKER)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from pipeline.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> dict:
    from manifests.demo_corpus import make_demo_corpus

    root = tmp_path_factory.mktemp("demo") / "corpus"
    return make_demo_corpus(root, seed=3, clips=16)


@pytest.fixture(scope="session")
def demo_manifest(demo_corpus, ray_local, tmp_path_factory) -> Path:
    from manifests.build import build_manifest

    out = tmp_path_factory.mktemp("manifest") / "manifest.parquet"
    build_manifest([Path(a) for a in demo_corpus["annotations"]], out, root=Path(demo_corpus["root"]), progress=False)
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) on 127.0.0.1 and the AWS environment pyarrow reads: yields a
    function that makes a bucket and returns the query an ``s3://`` URL needs to reach it."""
    boto3 = pytest.importorskip("boto3")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = pytest.MonkeyPatch()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        env.setenv(name, value)
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")

    def bucket(name: str) -> str:
        client.create_bucket(Bucket=name)
        return f"?endpoint_override={host}:{port}&scheme=http&region=us-east-1"

    yield bucket
    server.stop()
    env.undo()
