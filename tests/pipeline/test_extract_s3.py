"""The extraction job writing to object storage: a local S3-compatible server (moto) on 127.0.0.1."""

import logging
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from manifests.schema import read_manifest
from pipeline.errors import SignfeatError

from pipeline.config import parse_job_config
from pipeline.extract import run_extract
from shards.store import Store
from shards.verify import verify

CONFIG = {
    "extractors": [{"name": "dinov2", "tiny": True, "num_cpus": 0.25}],
    "shards": {"samples": 5, "prefix": "s3t"},
    "clips_per_call": 4,
}


@pytest.fixture(scope="module")
def s3_url(monkeypatch_module):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch_module.setenv(name, value)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="features")
    yield f"s3://features/job1?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_extract_to_s3_verifies_and_resumes(s3_url, demo_manifest, ray_local):
    first = run_extract(demo_manifest, s3_url, parse_job_config(CONFIG), progress=False)
    assert first["samples"] > 0 and first["shards_skipped_as_complete"] == 0
    report = verify(s3_url)
    assert report["ok"], report["problems"]

    store = Store(s3_url)
    tars = store.list_files("", ".tar")
    assert len(tars) == first["shards"] and all(t.count("/") == 1 and t.split("/")[1].startswith("s3t-") for t in tars)
    # a driver killed after committing all but one shard: that shard's marker and tar are gone
    victim = sorted(store.done_shards())[-1]
    store.delete(Store.marker(victim))
    store.delete(f"{victim}.tar")
    assert not verify(s3_url)["ok"]  # the hole is noticed
    # the rerun reads its manifest from the object store too (--manifest s3://..., as on a cluster)
    fs, inner = pafs.FileSystem.from_uri(s3_url.replace("/job1?", "/manifests/m.parquet?"))
    with fs.open_output_stream(inner) as f:
        f.write(Path(demo_manifest).read_bytes())
    manifest_url = s3_url.replace("/job1?", "/manifests/m.parquet?")
    assert read_manifest(manifest_url).equals(read_manifest(demo_manifest))
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(s3_url.replace("/job1?", "/manifests/none.parquet?"))
    again = run_extract(manifest_url, s3_url, parse_job_config(CONFIG), progress=False)
    assert again["shards_skipped_as_complete"] == first["shards"] - 1
    assert again["samples"] == first["samples"] and again["failures"] == first["failures"]
    report = verify(s3_url)
    assert report["ok"], report["problems"]
    assert sorted(store.list_files("", ".tar")) == sorted(tars)


def test_an_output_bucket_that_does_not_exist_is_one_line(s3_url):
    with pytest.raises(SignfeatError, match="bucket 'nobucket' does not exist"):
        Store(s3_url.replace("s3://features/", "s3://nobucket/")).make_writable()
    Store(s3_url).make_writable()  # the bucket the fixture made


def test_an_unreachable_store_is_said_as_such(s3_url):
    """With the endpoint down, a running job said "another signfeat extract has taken over" (its run record
    unreadable), and verify / stats ended in a pyarrow traceback; s3://bkt//job was a traceback too."""
    from pipeline.extract import check_run
    from shards.verify import stats

    down = "s3://features/job1?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"  # port 9: nothing listens
    with pytest.raises(SignfeatError, match="cannot reach the output location to check that this run still owns it"):
        check_run(Store(down), "some-run")
    for read in (verify, stats):
        with pytest.raises(SignfeatError, match="cannot reach the object store"):
            read(down)
    with pytest.raises(SignfeatError, match="empty path component"):
        Store(s3_url.replace("s3://features/job1", "s3://features//job1"))
