"""The extraction job writing to object storage: a local S3-compatible server (moto) on 127.0.0.1."""

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
def s3_url(s3_server):
    return f"s3://features/job1{s3_server('features')}"


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


def test_training_and_eval_read_the_shards_from_the_object_store(s3_url, demo_manifest, ray_local, tmp_path):
    """`signfeat train data.shards=s3://...` (the output URL `extract --out` took): the same losses and the
    same translations as from a local copy of the same output, whose markers and index are read there too."""
    from tests.trainer.conftest import tiny_recipe
    from trainer.evaluate import evaluate_model
    from trainer.loop import train
    from trainer.recipe import recipe_from_dict

    run_extract(demo_manifest, s3_url, parse_job_config(CONFIG), progress=False)  # complete (skips what the test above left)
    fs, inner = pafs.FileSystem.from_uri(s3_url)
    local = tmp_path / "copy"
    pafs.copy_files(inner, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())

    def run(shards: str, out: Path) -> tuple[list[float], list[str]]:
        recipe = recipe_from_dict(tiny_recipe(shards, out, "t5", data={"streams": ["dinov2"], "crop_streams": ["dinov2"], "batch_size": 2, "num_workers": 1},
                                              adapter={"kind": "mlp", "stream_widths": {"dinov2": 32}},
                                              optim={"max_steps": 3}, eval={"max_new_tokens": 8}))
        summary = train(recipe)
        return summary["losses"], evaluate_model(summary["model"], recipe, "train", out / "eval")["predictions"]

    from_copy, from_store = run(str(local), tmp_path / "a"), run(s3_url, tmp_path / "b")
    assert from_store == from_copy and len(from_store[0]) == 3 and from_store[1]

    # the extraction's commit record is read on the store as on a disk: a tar without its marker is refused
    shard = min(s for s in Store(s3_url).done_shards() if s.startswith("train/"))
    fs.delete_file(f"{inner}/_signfeat/done/{shard}.json")
    try:
        with pytest.raises(SignfeatError, match="not a shard the extraction .* committed"):
            run(s3_url, tmp_path / "c")
    finally:
        run_extract(demo_manifest, s3_url, parse_job_config(CONFIG), progress=False)  # commits it again
