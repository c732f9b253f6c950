"""The extraction job end to end on the demo corpus (tiny random-weight extractors), on the session's Ray."""

import collections
import glob
import io
import json
import re
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import parse_job_config
from pipeline.errors import SignfeatError
from pipeline.extract import run_extract
from shards.reader import read_samples
from shards.verify import stats, verify
from tests.helpers import CRASH_MARKER

CONFIG = {
    "decode_retries": 1,
    "extractors": [
        {"name": "clip_s2", "tiny": True, "num_cpus": 0.25},
        {"name": "videomae", "tiny": True, "num_cpus": 0.25, "settings": {"window": 8, "stride": 4}},
    ],
    "shards": {"samples": 4, "prefix": "t"},
    "clips_per_call": 4,
}


@pytest.fixture(scope="module")
def job(demo_manifest, ray_local, tmp_path_factory):
    table = pq.read_table(demo_manifest)
    rows = table.to_pylist()
    # one clip that probed fine but whose file has gone by extraction time: it must land in failures
    victim = next(r for r in rows if r["status"] == "ok" and r["source_kind"] == "video")
    victim["path"] = victim["path"] + ".gone.mp4"
    # one clip whose decoder kills its worker process every time (fault injection, see conftest.py)
    hostile = next(r for r in rows if r["status"] == "ok" and r["source_kind"] == "video" and r is not victim)
    hostile_copy = tmp_path_factory.mktemp("hostile") / f"{CRASH_MARKER}.mp4"
    shutil.copyfile(hostile["path"], hostile_copy)
    hostile["path"] = str(hostile_copy)
    import pyarrow as pa

    manifest = tmp_path_factory.mktemp("m") / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)
    out = tmp_path_factory.mktemp("out") / "features"
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.max_errored_blocks)
    summary = run_extract(manifest, str(out), parse_job_config(CONFIG), progress=False)
    # the job's settings do not outlive it: a caller's own pipelines kept max_errored_blocks=-1 (failed blocks
    # dropped in silence)
    assert (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.max_errored_blocks) == before
    return {"manifest": manifest, "out": out, "summary": summary, "victim": victim, "hostile": hostile, "rows": rows}


def test_every_ok_clip_lands_exactly_once(job):
    ok = [r for r in job["rows"] if r["status"] == "ok"]
    s = job["summary"]
    assert s["clips_planned"] == len(ok) and s["samples"] + s["failures"] == len(ok)
    # the demo manifest's bad rows are counted per status in job.json, not dropped without a word
    not_ok = collections.Counter(r["status"] for r in job["rows"] if r["status"] != "ok")
    assert len(not_ok) >= 3 and s["manifest_rows_not_ok"] == dict(not_ok)
    assert json.loads((job["out"] / "job.json").read_text())["manifest_rows_not_ok"] == dict(not_ok)
    # the run that owns OUT is the one job.json records last: stats reads the run as finished
    assert json.loads((job["out"] / "job.json").read_text())["runs"][-1]["run_id"] == json.loads((job["out"] / "_signfeat" / "run.json").read_text())["run_id"]
    failures = {f["id"]: f for f in pq.read_table(job["out"] / "failures.parquet").to_pylist()}
    assert sorted(failures) == sorted([job["victim"]["id"], job["hostile"]["id"]])
    assert failures[job["victim"]["id"]]["error_class"] == "missing_file"
    # the worker died on every retry: the clip is recorded as lost and the job went on
    assert failures[job["hostile"]["id"]]["error_class"] == "lost"
    # job.json's clips per node and stage count the clips each stage worked on: the missing file failed at decode,
    # so the extractors never saw it (it was counted for them too); the lost clip arrived nowhere
    (node, by_stage), = s["clips_by_node"].items()
    assert by_stage == {"decode": s["samples"] + 1, "clip_s2": s["samples"], "videomae": s["samples"]}
    report = verify(str(job["out"]))
    assert report["ok"], report["problems"]
    assert stats(str(job["out"]))["samples"] == s["samples"]


def test_shards_read_the_same_with_webdataset_and_tarfile(job, monkeypatch):
    monkeypatch.setenv("WDS_SECURE", "1")
    import webdataset as wds

    tars = sorted(glob.glob(str(job["out"] / "*" / "*.tar")))
    ours = {s["key"]: s for t in tars for s in read_samples(t)}
    theirs = {}
    for s in wds.WebDataset(tars, shardshuffle=False):
        theirs[s["__key__"]] = {k: np.load(io.BytesIO(v), allow_pickle=False) for k, v in s.items() if k.endswith(".npy")}
    assert set(ours) == set(theirs) and len(ours) == job["summary"]["samples"]
    for key, sample in ours.items():
        assert sample["clip_s2"].dtype == np.float16 and sample["clip_s2"].shape == (sample["json"]["num_frames"], 64)
        np.testing.assert_array_equal(sample["clip_s2"], theirs[key]["clip_s2.npy"])
        np.testing.assert_array_equal(sample["videomae"], theirs[key]["videomae.npy"])
        assert sample["json"]["streams"]["clip_s2"]["weights"] == "random"
        # which frames the streams saw, and the source's own rate: a reader holding only the tars can tell them
        assert sample["json"]["decode"] == {"target_fps": None, "max_frames": None}
        assert sample["json"]["source"]["fps"] == pytest.approx(sample["json"]["fps"]) and sample["json"]["fps"] > 0
    with tarfile.open(tars[0]) as tar:  # plain tarfile: keys have no dots, members are key.suffix
        names = tar.getnames()
    assert all(n.count(".") in (1, 2) for n in names)


def test_ray_data_read_webdataset_reads_the_same_arrays(job):
    import ray

    tars = sorted(glob.glob(str(job["out"] / "*" / "*.tar")))
    ours = {s["key"]: s for t in tars for s in read_samples(t)}
    # no decoder: members arrive as bytes, decoded here with allow_pickle=False
    rows = ray.data.read_webdataset(tars, decoder=None).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(ours)
    for r in rows:
        mine = ours[r["__key__"]]
        for stream in ("clip_s2", "videomae"):
            np.testing.assert_array_equal(np.load(io.BytesIO(r[f"{stream}.npy"]), allow_pickle=False), mine[stream])


def test_rerun_skips_complete_shards_and_other_config_is_refused(job):
    again = run_extract(job["manifest"], str(job["out"]), parse_job_config(CONFIG), progress=False)
    assert again["shards_skipped_as_complete"] == again["shards"] and again["samples"] == job["summary"]["samples"]
    # the job's failures (a vanished file, a crashing decoder) are not retried by a rerun, and it says so
    assert again["failures_kept_from_earlier_runs"] == job["summary"]["failures"] > 0
    assert job["summary"]["failures_kept_from_earlier_runs"] == 0
    other = {**CONFIG, "extractors": [CONFIG["extractors"][0]]}
    with pytest.raises(SignfeatError, match="config hash"):
        run_extract(job["manifest"], str(job["out"]), parse_job_config(other), progress=False)


def test_an_output_that_lost_its_job_record_resumes_or_can_be_overwritten(job, tmp_path):
    """Without _signfeat/identity.json the rerun said "use --overwrite", and --overwrite then refused (no job
    record): the user was left deleting files by hand, though every marker recorded this very config."""
    out = tmp_path / "features"
    shutil.copytree(job["out"], out)
    (out / "_signfeat" / "identity.json").unlink()
    again = run_extract(job["manifest"], str(out), parse_job_config(CONFIG), progress=False)
    assert again["shards_skipped_as_complete"] == again["shards"] and (out / "_signfeat" / "identity.json").is_file()
    (out / "_signfeat" / "identity.json").unlink()
    other = {**CONFIG, "shards": {**CONFIG["shards"], "prefix": "u"}}  # another job: refused, and --overwrite clears it
    with pytest.raises(SignfeatError, match="--overwrite to replace it"):
        run_extract(job["manifest"], str(out), parse_job_config(other), progress=False)
    from shards.store import Store

    Store(str(out)).clear()
    assert not list(out.rglob("*.tar")) and not (out / "_signfeat").exists()


def test_a_lost_shard_is_redone_on_rerun(job):
    """A driver killed between shards: the shards without a marker are redone (and those whose tar or part is
    gone or damaged), the rest skipped."""
    from shards.store import Store

    store = Store(str(job["out"]))
    done = sorted(store.done_shards())
    store.delete(Store.marker(done[0]))
    # and a half-written file, as a driver killed inside a write leaves one
    half_written = job["out"] / f"{done[0]}.tar.tmp-0123abcd"
    half_written.write_bytes(b"partial")
    # a committed shard whose tar was deleted, and one whose index part is damaged: redone too, no traceback
    (job["out"] / f"{done[1]}.tar").unlink()
    (job["out"] / "_signfeat" / "parts" / f"{done[2]}.index.parquet").write_bytes(b"damaged")
    before = {r["key"] for r in pq.read_table(job["out"] / "index.parquet").to_pylist()}
    again = run_extract(job["manifest"], str(job["out"]), parse_job_config(CONFIG), progress=False)
    assert not half_written.exists() and (job["out"] / f"{done[1]}.tar").exists()
    assert again["shards_skipped_as_complete"] == again["shards"] - 3
    assert again["clips_skipped_as_complete"] + again["clips_this_run"] == again["clips_planned"]
    assert {r["key"] for r in pq.read_table(job["out"] / "index.parquet").to_pylist()} == before
    assert verify(str(job["out"]))["ok"]


@pytest.mark.parametrize("bad", [
    {"extractors": []},
    {"extractors": [{"name": "nope"}]},
    {"extractors": [{"name": "clip_s2", "settings": {"scale": 1}}]},
    {"extractors": [{"name": "clip_s2"}], "shards": {"samples": 0}},
    {"extractors": [{"name": "clip_s2"}], "decode": {"backend": "opencv"}},
    {"extractors": [{"name": "clip_s2"}], "colour": "red"},
    {"extractors": [{"name": "clip_s2", "resources": {"CPU": 1}}]},
    {"extractors": [{"name": "clip_s2", "resources": {"slot": -1}}]},
    {"extractors": [{"name": "clip_s2", "resources": ["slot"]}]},
    {"extractors": [{"name": "clip_s2", "accelerator_type": 3}]},
    {"extractors": [{"name": "clip_s2", "random_weights": "false"}]},
    {"extractors": [{"name": "clip_s2"}], "decode": {"max_frames": 2.5}},
    {"extractors": [{"name": "clip_s2"}], "decode": {"frame_limit": True}},
    {"extractors": [{"name": "clip_s2"}], "decode": "pyav"},
    {"extractors": [{"name": "clip_s2"}], "shards": {"prefix": 5}},
    {"extractors": [{"name": "clip_s2"}], "decode_retries": 1.5},
    {"extractors": [{"name": "clip_s2"}], "worker_env": ["MALLOC_ARENA_MAX=1"]},
    {"extractors": [{"name": "clip_s2"}], "worker_env": {"A=B": "1"}},
    {"extractors": [{"name": "clip_s2"}], "worker_env": {"A": True}},
    {"extractors": [{"name": "clip_s2"}], "worker_env": {"A": {"b": 1}}},
    # falsy non-mappings were read as {} (worker_env: false dropped the allocator defaults without a word)
    {"extractors": [{"name": "clip_s2"}], "worker_env": False},
    {"extractors": [{"name": "clip_s2"}], "worker_env": []},
    {"extractors": [{"name": "clip_s2", "resources": 0}]},
    {"extractors": [{"name": "clip_s2", "resources": []}]},
    # non-finite numbers pass every comparison check (`nan < 0` is False)
    {"extractors": [{"name": "clip_s2", "num_cpus": float("nan")}]},
    {"extractors": [{"name": "clip_s2", "num_cpus": float("inf")}]},
    {"extractors": [{"name": "clip_s2", "num_gpus": float("nan")}]},
    {"extractors": [{"name": "clip_s2", "resources": {"slot": float("nan")}}]},
    {"extractors": [{"name": "clip_s2"}], "decode": {"target_fps": float("inf")}},
    {"extractors": [{"name": "clip_s2"}], "decode": {"target_fps": float("nan")}},
    {"extractors": [{"name": "clip_s2"}], "decode": {"max_clip_mib": float("inf")}},
    {"extractors": [{"name": "clip_s2"}], "decode": {"frame_fps": float("nan")}},
    {"extractors": [{"name": "smplx623", "settings": {"target_fps": float("inf")}}]},  # an extractor's own float setting
    # a layer the model does not have, when the config alone tells its depth (tiny / random weights)
    {"extractors": [{"name": "videomae", "tiny": True, "settings": {"layer": 7}}]},
    {"extractors": [{"name": "videomae", "tiny": True, "settings": {"layer": -4}}]},
    {"extractors": [{"name": "clip_s2", "tiny": True, "settings": {"layer": 3}}]},
    {"extractors": [{"name": "clip_s2", "tiny": True, "backend": "open_clip", "settings": {"layer": 3}}]},
    {"extractors": [{"name": "clip_s2", "random_weights": True, "settings": {"layer": 25}}]},
])
def test_bad_job_configs_fail_before_anything_starts(bad):
    with pytest.raises(SignfeatError):
        parse_job_config(bad)


@pytest.mark.parametrize("bad,needle", [
    ({"decode": {"target_fps": "25"}}, "C.yaml: decode.target_fps must be a number > 0, got '25'"),
    ({"decode": ["pyav"]}, "C.yaml: decode must be a mapping"),
    ({"shards": "big"}, "C.yaml: shards must be a mapping"),
    ({"worker_env": {"OMP_NUM_THREADS": None}}, "C.yaml: worker_env.OMP_NUM_THREADS must be a string or a number, got None"),
    ({"extractors": [{"name": "clip_s2"}, {"name": "dinov2", "dtype": "fp64"}]}, "C.yaml: extractors[1]: dinov2: dtype must be"),
    ({"extractors": [{"name": "dinov2", "num_cpus": float("nan")}]}, "C.yaml: extractors[0].num_cpus must be a finite number >= 0, got nan"),
    ({"decode": {"target_fps": float("inf")}}, "C.yaml: decode.target_fps must be a finite number > 0, got inf"),
    ({"extractors": [{"name": "videomae", "tiny": True, "settings": {"layer": 7}}]},
     "C.yaml: extractors[0]: videomae setting layer=7: the model has 2 layers (hidden states 0..2, or -1..-3 from the end)"),
])
def test_job_config_errors_name_the_key(bad, needle):
    """The message names the file and key at fault, not a Python TypeError or the letters of a string."""
    with pytest.raises(SignfeatError) as err:
        parse_job_config({"extractors": [{"name": "clip_s2"}], **bad}, "C.yaml")
    assert needle in str(err.value)


def test_layers_a_tiny_model_has_pass_validation():
    for layer in (0, 2, -1, -3):
        parse_job_config({"extractors": [{"name": "videomae", "tiny": True, "settings": {"layer": layer}},
                                         {"name": "clip_s2", "tiny": True, "settings": {"layer": layer}}]})
    parse_job_config({"extractors": [{"name": "videomae", "settings": {"layer": 30}}]})  # a checkpoint's depth: known when it loads


@pytest.mark.parametrize("field", ["id", "key", "text", "signer", "dataset", "split", "path", "source_kind", "start_s", "end_s", "fps",
                                   "content_hash"])
def test_plan_hash_covers_every_field_a_sample_is_made_from(field):
    """A rerun with a corrected text (or any field written into a sample or deciding its content) is another job:
    were it a resume, the complete shards would keep the old values."""
    from pipeline.config import ShardConfig
    from pipeline.plan import plan_hash, plan_shards

    row = {"id": "a", "key": "a", "dataset": "d", "split": "train", "signer": "s", "text": "hello", "source_kind": "range",
           "path": "/v.mp4", "start_s": 1.0, "end_s": 2.0, "fps": 25.0, "num_frames": 25, "content_hash": "c0", "status": "ok"}
    changed = {**row, field: {"start_s": 1.5, "end_s": 2.5, "fps": 30.0}.get(field, f"{row[field]}-changed")}
    assert plan_hash(plan_shards([row], ShardConfig())) != plan_hash(plan_shards([changed], ShardConfig()))


def test_where_actors_run_does_not_change_the_output_hash():
    base = parse_job_config({"extractors": [{"name": "clip_s2", "dtype": "bf16"}]})
    placed = parse_job_config({"extractors": [{"name": "clip_s2", "dtype": "bf16", "actors": 4, "num_gpus": 1, "resources": {"sf_extract": 1},
                                                "accelerator_type": "L40S"}]})
    assert placed.streams[0].resources == {"sf_extract": 1.0} and placed.streams[0].accelerator_type == "L40S"
    assert placed.output_hash() == base.output_hash()
    assert parse_job_config({"extractors": [{"name": "clip_s2", "dtype": "bf16", "settings": {"scales": [224]}}]}).output_hash() != base.output_hash()


def test_dtype_auto_hashes_as_the_dtype_the_actor_s_device_gets():
    # auto computes in bf16 on a GPU and fp32 on a CPU: the same config resumed on the other kind of machine
    # would mix the two in one output
    def job(**entry):
        return parse_job_config({"extractors": [{"name": "clip_s2", **entry}]}).output_hash()

    assert job(num_gpus=1) == job(num_gpus=1, dtype="bf16") != job() == job(dtype="fp32")


@pytest.mark.parametrize("same", [{"random_weights": True}, {"settings": {}}, {"settings": {"window": 16, "stride": 8}}, {"dtype": "auto"},
                                  {"model": None}, {"compile": False, "batch_size": 4}])
def test_configs_that_mean_the_same_hash_the_same(same):
    """A resume with an explicit default (or `settings: {}`) was refused as another config."""
    base = parse_job_config({"extractors": [{"name": "videomae", "tiny": True}]})
    assert parse_job_config({"extractors": [{"name": "videomae", "tiny": True, **same}]}).output_hash() == base.output_hash()
    assert parse_job_config({"extractors": [{"name": "videomae", "tiny": True, "settings": {"stride": 4}}]}).output_hash() != base.output_hash()


def test_worker_env_defaults_replaces_and_leaves_the_output_hash_alone():
    from pipeline.config import DEFAULT_WORKER_ENV

    base = parse_job_config({"extractors": [{"name": "clip_s2"}]})
    assert base.worker_env == DEFAULT_WORKER_ENV and base.worker_env is not DEFAULT_WORKER_ENV
    given = parse_job_config({"extractors": [{"name": "clip_s2"}], "worker_env": {"OMP_NUM_THREADS": 2, "X": "y"}})
    assert given.worker_env == {"OMP_NUM_THREADS": "2", "X": "y"}  # replaces the defaults, numbers as written
    assert parse_job_config({"extractors": [{"name": "clip_s2"}], "worker_env": None}).worker_env == {}
    assert given.output_hash() == base.output_hash()  # how fast, not what


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variable, retries", [("SIGNFEAT_TEST_CRASH_ON", {"decode_retries": 0}),
                                               # the three clips in one call: the other two were lost with the killed actor
                                               ("SIGNFEAT_TEST_KILL_EXTRACTOR_ON", {"extract_retries": 1, "clips_per_call": 3})])
def test_a_worker_that_dies_on_one_clip_every_time_loses_that_clip_and_the_job_goes_on(demo_manifest, ray_local, tmp_path, variable, retries):
    """The config's worker_env is set in the job's Ray workers, over what they inherit: a fault-injection variable
    names a single clip's file, and the worker handling it dies on every try, while the others go through:
    - a decode task that crashes in native code (SIGSEGV), retried decode_retries times;
    - an extractor actor killed (SIGKILL, as the memory monitor kills one whose clip does not fit), restarted
      and its call retried extract_retries times (Ray Data's default retried it forever: the job never ended);
      the other clips of its call (and of calls queued on it) then go through again one at a time.
    Then the clip alone is recorded lost (stage worker) and the job completes."""
    import pyarrow as pa

    table = pq.read_table(demo_manifest)
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["source_kind"] == "video"]
    by_path: dict[str, list] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    picked = [group[0] for group in by_path.values() if len(group) == 1][:3]
    assert len(picked) == 3
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(picked, schema=table.schema), manifest)
    config = {**CONFIG, "extractors": CONFIG["extractors"][:1], **retries, "worker_env": {variable: picked[1]["path"]}}
    summary = run_extract(manifest, str(tmp_path / "out"), parse_job_config(config), progress=False)
    failures = pq.read_table(tmp_path / "out" / "failures.parquet").to_pylist()
    assert [(f["id"], f["error_class"], f["stage"]) for f in failures] == [(picked[1]["id"], "lost", "worker")]
    assert summary["samples"] == 2


def test_decode_stage_reads_a_range_with_only_an_end_from_the_start(tmp_path):
    """The job's rows carry a missing start as NaN (extract._ray_rows); the decode stage must read it as the
    probe did (from the start), not fail the clip as bad_range after the manifest said ok."""
    import json

    from pipeline.decode import DecodeOptions
    from pipeline.extract import _ray_rows
    from pipeline.plan import ShardPlan
    from pipeline.stages import decode_prepare
    from tests.helpers import index_frame, write_video

    path = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(10)]))
    clip = {"id": "a", "key": "a", "dataset": "d", "split": "train", "signer": None, "text": "t", "source_kind": "range",
            "path": str(path), "start_s": None, "end_s": 0.2, "fps": None, "num_frames": 5}
    rows = _ray_rows([ShardPlan(name="s", split="train", rows=[clip])])
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = decode_prepare(batch, json.dumps([{"name": "dinov2", "tiny": True}]), DecodeOptions(backend="pyav"))
    assert out["error_class"][0] == "", out["error_message"][0]
    assert out["decoded_frames"][0] == 5


def test_a_source_changed_since_the_manifest_is_a_failure_not_a_sample_under_the_old_row(tmp_path):
    """A video replaced (by another clip's file) or a frame folder that gained an image after the manifest was
    built was extracted under the old row's id and text, and verify said OK."""
    import json
    import os
    import shutil

    from PIL import Image

    from pipeline.decode import DecodeOptions
    from pipeline.extract import _ray_rows
    from pipeline.plan import ShardPlan
    from pipeline.stages import decode_prepare
    from tests.helpers import index_frame, write_video

    a = write_video(tmp_path / "a.mp4", np.stack([index_frame(i) for i in range(10)]))
    b = write_video(tmp_path / "b.mp4", np.stack([index_frame(i) for i in range(20)]))
    (tmp_path / "f").mkdir()
    for i in range(4):
        Image.fromarray(index_frame(i)).save(tmp_path / "f" / f"{i:03d}.png")
    base = {"dataset": "d", "split": "train", "signer": None, "text": "t", "start_s": None, "end_s": None, "fps": None, "content_hash": "h"}
    folder_bytes = sum(f.stat().st_size for f in (tmp_path / "f").iterdir())
    clips = [{**base, "id": "a", "key": "a", "source_kind": "video", "path": str(a), "num_frames": 10, "bytes": os.path.getsize(a)},
             {**base, "id": "f", "key": "f", "source_kind": "frames", "path": str(tmp_path / "f"), "fps": 25.0, "num_frames": 4,
              "bytes": folder_bytes},
             {**base, "id": "old", "key": "old", "source_kind": "video", "path": str(b), "num_frames": 20, "bytes": None}]  # no size: not checked

    def decode():
        rows = _ray_rows([ShardPlan(name="s", split="train", rows=clips)])
        batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
        return decode_prepare(batch, json.dumps([{"name": "dinov2", "tiny": True}]), DecodeOptions(backend="pyav"))

    assert list(decode()["error_class"]) == ["", "", ""]
    shutil.copyfile(b, a)
    Image.fromarray(index_frame(9)).save(tmp_path / "f" / "004.png")
    out = decode()
    assert list(out["error_class"]) == ["changed", "changed", ""], list(out["error_message"])
    assert "changed since" in out["error_message"][0] and "Rebuild the manifest" in out["error_message"][1]


def test_frame_folders_and_images_without_permission_are_unreadable(tmp_path, monkeypatch):
    """A folder without search permission failed the clip with the class "PermissionError", an image without read
    permission as "corrupt". The file system's refusal is simulated (tests may run as root, who reads anyway)."""
    from pathlib import Path

    import PIL.Image
    from PIL import Image

    from pipeline.decode import DecodeOptions, decode_clip
    from pipeline.errors import ClipError
    from tests.helpers import index_frame

    (tmp_path / "f").mkdir()
    for i in range(2):
        Image.fromarray(index_frame(i)).save(tmp_path / "f" / f"{i}.png")
    row = {"source_kind": "frames", "path": str(tmp_path / "f"), "fps": 25.0, "start_s": None, "end_s": None}
    denied = PermissionError(13, "Permission denied")
    with monkeypatch.context() as m:
        m.setattr(PIL.Image, "open", lambda *a, **k: (_ for _ in ()).throw(denied))
        with pytest.raises(ClipError, match="Permission denied") as err:
            decode_clip(row, DecodeOptions())
        assert err.value.kind == "unreadable"
    with monkeypatch.context() as m:
        m.setattr(Path, "iterdir", lambda self: (_ for _ in ()).throw(denied))
        with pytest.raises(ClipError, match="cannot list frame folder") as err:
            decode_clip(row, DecodeOptions())
        assert err.value.kind == "unreadable"


def test_decode_stage_resizes_chunk_by_chunk_and_limits_the_prepared_frames(tmp_path, monkeypatch):
    """The decode task resizes each chunk of full-size frames as it is decoded, so max_clip_mib limits what the
    task holds: the prepared frames. A 640x480 clip over the limit at full size (8.8 MiB) but not prepared
    (224-pixel crops, 1.4 MiB) is extracted; one whose prepared frames are over it is too_long."""
    import json

    import pipeline.decode as decode
    from extractors import ExtractorConfig
    from extractors.dinov2 import Dinov2Extractor
    from pipeline.decode import DecodeOptions, decode_clip
    from pipeline.extract import _ray_rows
    from pipeline.plan import ShardPlan
    from pipeline.stages import decode_prepare, stream_geometries
    from tests.helpers import index_frame, write_video

    frames = np.stack([np.kron(index_frame(i), np.ones((10, 10, 1), np.uint8)) for i in range(10)])  # 480x640
    path = write_video(tmp_path / "big.mp4", frames)
    clip = {"id": "a", "key": "a", "dataset": "d", "split": "train", "signer": None, "text": "t", "source_kind": "video",
            "path": str(path), "start_s": None, "end_s": None, "fps": None, "num_frames": 10}
    rows = _ray_rows([ShardPlan(name="s", split="train", rows=[clip])])
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    entry = {"name": "dinov2", "tiny": True, "settings": {"resolution": 224}}  # 224-pixel crops, as the numbers below say
    streams = json.dumps([entry])
    column = stream_geometries([type("S", (), {"name": "dinov2", "extractor": entry})()])["dinov2"]
    chunks_seen = []
    chunked = decode._video_chunks
    monkeypatch.setattr(decode, "DECODE_CHUNK_MIB", 3 * 640 * 480 * 3 / 2**20)  # 3 frames a chunk
    monkeypatch.setattr(decode, "_video_chunks", lambda *a: (chunks_seen.append(len(c)) or c for c in chunked(*a)))

    out = decode_prepare(batch, streams, DecodeOptions(backend="pyav", max_clip_mib=4))
    assert out["error_class"][0] == "", out["error_message"][0]
    assert chunks_seen == [3, 3, 3, 1]
    transform = Dinov2Extractor.transform_for(ExtractorConfig.from_dict(entry))
    whole = decode_clip(clip, DecodeOptions(backend="pyav", max_clip_mib=100)).frames
    assert np.array_equal(out[column][0], transform.resize_crop(whole).numpy())  # resizing by chunk changes nothing

    chunks_seen.clear()
    out = decode_prepare(batch, streams, DecodeOptions(backend="pyav", max_clip_mib=0.5))
    assert out["error_class"][0] == "too_long" and "10 frames make 1.44 MiB of prepared frames" in out["error_message"][0]
    assert chunks_seen == []  # refused before a frame was decoded


@pytest.mark.parametrize("split", ["..", ".", ".hidden", "a/b", "_signfeat", "a\\b",
                                   # named like the output's files: the job crashed at its very end (IsADirectoryError)
                                   "index.parquet", "job.json", "Failures.parquet",
                                   # glob / brace characters: OUT/tr*in/*.tar also matched train's shards
                                   "tr*in", "te?t", "[dev]", "{a,b}"])
def test_a_split_that_is_not_a_plain_folder_name_is_refused(split):
    """A split comes from the annotation as written; ".." would write shards outside OUT."""
    from pipeline.config import ShardConfig
    from pipeline.plan import plan_shards

    row = {"id": "a", "key": "a", "split": split, "status": "ok", "num_frames": 3}
    with pytest.raises(SignfeatError, match="cannot be a folder of the output"):
        plan_shards([row], ShardConfig())
    assert [p.name for p in plan_shards([{**row, "split": "train"}], ShardConfig(prefix="x"))] == ["train/x-000000"]


@pytest.mark.parametrize("entry,total,needle", [
    ({"num_gpus": 1}, {"CPU": 2.0}, "num_gpus need 1 GPU"),  # a GPU config on a machine without one
    ({"num_cpus": 1, "actors": 2}, {"CPU": 2.0}, "num_cpus need 3 CPU"),  # two actors + the decode task
    ({"resources": {"sf_extract": 1}}, {"CPU": 2.0}, "resources.sf_extract need 1"),
    ({"num_gpus": 1, "accelerator_type": "L40S"}, {"CPU": 2.0, "GPU": 1.0, "accelerator_type:H100": 1.0},
     r"accelerator_type L40S \(dinov2 \(1 actor\)\): the local Ray instance has GPUs of type H100; drop accelerator_type"),
    ({"memory_gb": 8, "actors": 2}, {"CPU": 3.0, "memory": 12 * 2**30}, "memory_gb need 16 GiB of memory .* has 12"),
])
def test_actors_a_local_ray_instance_cannot_place_are_refused(entry, total, needle):
    """Ray Data would wait forever for such actors ("No available node types can fulfill resource request")."""
    from pipeline.extract import check_local_resources

    cfg = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, **entry}]})
    with pytest.raises(SignfeatError, match=needle):
        check_local_resources(cfg, total)
    check_local_resources(cfg, {**total, "CPU": 3.0, "GPU": 1.0, "sf_extract": 1.0, "accelerator_type:L40S": 1.0, "memory": 16 * 2**30})  # enough


def test_a_local_instance_for_far_more_cpus_than_the_machine_has_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """actors: 100000 sized the local Ray instance to match, and Ray started workers until it was killed;
    run_extract now refuses before Ray starts (and before the manifest is read); --num-cpus runs it anyway."""
    import os

    from pipeline.extract import refuse_oversized_local_instance, run_extract

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for entry in ({"actors": 100000}, {"num_cpus": 1000}):
        cfg = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, **entry}]})
        with pytest.raises(SignfeatError, match="on a machine with 2 cores: the local Ray instance would start that many workers.*--num-cpus"):
            run_extract(tmp_path / "no_manifest_needed.parquet", str(tmp_path / "out"), cfg)
    assert not (tmp_path / "out").exists()
    for entry in ({"actors": 2}, {"actors": 7}):  # a few actors more than cores still run oversubscribed, as before
        refuse_oversized_local_instance(parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, **entry}]}))


def test_decode_rates_written_as_integers_hash_as_the_same_job(tmp_path):
    """target_fps: 10 and 10.0 (or an explicit default frame_fps: 25 / max_clip_mib: 4096) were other config hashes:
    a resume of the same job was refused, and only --overwrite (losing complete shards) went on."""
    base = {"extractors": [{"name": "dinov2", "tiny": True}], "decode": {"target_fps": 10.0}}
    same = [{"target_fps": 10}, {"target_fps": 10, "frame_fps": 25, "max_clip_mib": 4096, "frame_limit": 20000}]
    for decode in same:
        assert parse_job_config({**base, "decode": decode}).output_hash() == parse_job_config(base).output_hash(), decode
    assert parse_job_config({**base, "decode": {"target_fps": 12}}).output_hash() != parse_job_config(base).output_hash()


@pytest.mark.parametrize("config, needle", [
    ({"shards": {"prefix": "p" * 201}}, "shards.prefix is 201 bytes long; at most 200"),
    ({"shards": {"prefix": "é" * 101}}, "shards.prefix is 202 bytes long"),
    ({"decode": {"backend": "ffmpeg"}}, "decode.backend must be one of .*, got 'ffmpeg'"),
])
def test_config_values_that_would_fail_late_are_refused_up_front(config, needle):
    """A 220-character prefix ran the whole job, then died writing its files (name too long), and left an OUT
    that even --overwrite could not clear."""
    with pytest.raises(SignfeatError, match=needle):
        parse_job_config({"extractors": [{"name": "dinov2", "tiny": True}], **config})
    parse_job_config({"extractors": [{"name": "dinov2", "tiny": True}], "shards": {"prefix": "p" * 200}})


def test_a_split_name_longer_than_a_folder_name_may_be_is_refused_when_planning():
    from manifests.schema import split_name_problem

    assert "201 bytes long" in split_name_problem("s" * 201)
    assert split_name_problem("s" * 200) is None


def test_an_out_url_that_cannot_be_written_is_a_one_line_error(tmp_path):
    """A file:// URL naming a file, and an s3:// URL without a bucket, were pyarrow tracebacks."""
    from shards.store import Store

    (tmp_path / "afile").write_text("x")
    with pytest.raises(SignfeatError, match="is a file, not a folder"):
        Store(f"file://{tmp_path / 'afile'}").make_writable()
    with pytest.raises(SignfeatError, match="names no bucket"):
        Store("s3://")
    Store(f"file://{tmp_path / 'new'}").make_writable()
    assert (tmp_path / "new").is_dir()


def test_decode_stage_reports_the_source_span_under_max_frames(tmp_path):
    """index.parquet's duration_s comes from it: frames / fps of the subsampled clip overstates the length."""
    import json

    from pipeline.decode import DecodeOptions
    from pipeline.extract import _ray_rows
    from pipeline.plan import ShardPlan
    from pipeline.stages import decode_prepare
    from tests.helpers import index_frame, write_video

    path = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(22)]))
    clip = {"id": "a", "key": "a", "dataset": "d", "split": "train", "signer": None, "text": "t", "source_kind": "video",
            "path": str(path), "start_s": None, "end_s": None, "fps": 25.0, "num_frames": 22}
    rows = _ray_rows([ShardPlan(name="s", split="train", rows=[clip])])
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = decode_prepare(batch, json.dumps([{"name": "dinov2", "tiny": True}]), DecodeOptions(backend="pyav", max_frames=2))
    assert out["error_class"][0] == "", out["error_message"][0]
    assert out["decoded_frames"][0] == 2 and out["decoded_fps"][0] == pytest.approx(25 / 21)
    assert out["decoded_duration_s"][0] == pytest.approx(22 / 25)


def test_an_out_that_is_a_file_is_a_one_line_error(demo_manifest, tmp_path):
    """It was a pyarrow NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "sub", "cannot create the output folder")):
        with pytest.raises(SignfeatError, match=needle):
            run_extract(demo_manifest, str(out), parse_job_config(CONFIG), progress=False)


def test_a_manifest_without_an_ok_clip_is_a_one_line_error(demo_manifest, tmp_path):
    """It 'succeeded' with 0 shards and no word."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(demo_manifest)
    bad = table.filter(pa.compute.not_equal(table.column("status"), "ok"))
    assert bad.num_rows > 0
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SignfeatError, match=r"no clip has status ok \(\d+ rows: \{.*'empty_file': 1"):
        run_extract(tmp_path / "bad.parquet", str(tmp_path / "out"), parse_job_config(CONFIG), progress=False)
    assert not (tmp_path / "out").exists()


def test_memory_gb_is_a_resource_not_part_of_the_output():
    base = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True}]})
    with_memory = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, "memory_gb": 6}]})
    assert with_memory.streams[0].memory_gb == 6 and with_memory.output_hash() == base.output_hash()
    with pytest.raises(SignfeatError, match="memory_gb"):
        parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, "memory_gb": -1}]})


def test_a_model_folder_that_does_not_exist_stops_the_job_in_one_line_before_ray_starts(demo_manifest, tmp_path):
    """transformers' 'Repo id must be in the form...' traceback came from the driver ~12 s in, after Ray started."""
    (tmp_path / "empty_model").mkdir()  # there, but no checkpoint in it (as an uncached or mistyped Hub id)
    for model in ("no_such_model", "empty_model"):
        for resolution in (224, 336):  # 336 px reads no image processor: the model was first looked for by the actors
            config = parse_job_config({"extractors": [{"name": "dinov2", "model": str(tmp_path / model), "settings": {"resolution": resolution}}]})
            with pytest.raises(SignfeatError, match=rf"extractor dinov2: cannot load the model or image processor of .*{model}.*every node"):
                run_extract(demo_manifest, str(tmp_path / "out"), config, progress=False)
            assert not (tmp_path / "out").exists()


def test_shard_frame_limits_count_the_frames_the_job_decodes():
    """With decode.max_frames 12 and target_fps 10, clips of 34-46 source frames hold 12 rows: shards of 30 frames
    held one clip each (planned from the source counts)."""
    from pipeline.config import ShardConfig
    from pipeline.decode import DecodeOptions
    from pipeline.plan import plan_shards

    rows = [{"id": f"c{i}", "key": f"c{i}", "split": "train", "status": "ok", "num_frames": 34 + i, "fps": 25.0, "source_kind": "video"}
            for i in range(12)]
    shards = ShardConfig(samples=100, max_frames=30)
    assert len(plan_shards(rows, shards)) == 12  # source frames: one clip per shard
    thinned = plan_shards(rows, shards, DecodeOptions(target_fps=10, max_frames=12))
    assert [len(p.rows) for p in thinned] == [2] * 6  # 12 (resampled 14-18, capped at 12) + 12 <= 30 < 36
    resampled = plan_shards(rows[:2], ShardConfig(samples=100, max_frames=14), DecodeOptions(target_fps=5))
    assert [len(p.rows) for p in resampled] == [2]  # ceil(34 / 25 * 5) = 7 and ceil(35 / 25 * 5) = 7
    params = [{**r, "source_kind": "smplx"} for r in rows[:2]]
    assert len(plan_shards(params, ShardConfig(samples=100, max_frames=40), DecodeOptions(max_frames=12))) == 2  # not decoded


def test_a_relative_out_under_ray_job_submit_with_a_working_dir_is_refused(tmp_path, monkeypatch):
    """`ray job submit --working-dir .` runs the command in Ray's copy of the folder: a relative --out landed in
    Ray's session folder (deleted with it, and unpacked anew when a node joined), its log naming only `out3rel`."""
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}))
    cfg = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True}]})
    with pytest.raises(SignfeatError, match=r"--out out3rel is relative, and this command runs as a Ray job in Ray's copy of its working_dir"):
        run_extract(tmp_path / "no-manifest-needed.parquet", "out3rel", cfg)
    assert not (tmp_path / "out3rel").exists()
    # an absolute path or a URL is where the user says; without a working_dir the job runs where `ray start` ran
    for out in (str(tmp_path / "abs"), "s3://bucket/features"):
        with pytest.raises(SignfeatError, match="manifest"):  # it goes on to read the manifest (missing here)
            run_extract(tmp_path / "no-manifest-needed.parquet", out, cfg)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}, "metadata": {}}))
    with pytest.raises(SignfeatError, match="manifest"):
        run_extract(tmp_path / "no-manifest-needed.parquet", "out3rel", cfg)
    # a relative manifest Ray did not upload (make demo's demo_out/ is git-ignored, which Ray's upload follows): said why
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}))
    with pytest.raises(SignfeatError, match=r"manifest not found: demo_out/curated.parquet: this command runs as a Ray job in Ray's copy "
                                            r"of its working_dir .* leaves out files .gitignore names"):
        run_extract("demo_out/curated.parquet", str(tmp_path / "abs"), cfg)
    # a quoted "~/feat" passes as absolute (the user's home), and is written there, not in a folder named "~"
    from shards.store import Store

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Store("~/feat").where == str(tmp_path / "home" / "feat")


def test_the_output_is_named_by_its_absolute_path_and_a_deleted_one_is_said_as_such(tmp_path, monkeypatch):
    from pipeline.extract import RUN_FILE, check_run
    from shards.store import Store

    monkeypatch.chdir(tmp_path)
    store = Store("features")
    assert store.where == str(tmp_path / "features") and Store("file:///x/y").where == "file:///x/y"
    (tmp_path / "features").mkdir()
    store.write_json(RUN_FILE, {"run_id": "mine"})
    check_run(store, "mine")
    shutil.rmtree(tmp_path / "features")  # what Ray did to a working_dir copy: not another driver taking over
    with pytest.raises(SignfeatError, match=r"features was deleted while this run wrote it"):
        check_run(store, "mine")


def test_an_out_deleted_mid_job_stops_the_job_before_its_first_shard_commit(demo_manifest, ray_local, tmp_path, monkeypatch):
    """A deleted OUT was noticed only at the next shard commit: with one big shard, after all of its compute."""
    import pyarrow as pa

    import pipeline.extract as extract

    table = pq.read_table(demo_manifest)
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["source_kind"] == "video"][:3]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)
    out = tmp_path / "out"
    arrived, clean_row = [], extract._clean_row

    def delete_out_at_the_first_clip(row):
        if not arrived:
            shutil.rmtree(out)
        arrived.append(row)
        return clean_row(row)

    monkeypatch.setattr(extract, "_clean_row", delete_out_at_the_first_clip)
    monkeypatch.setattr(extract, "write_shard", lambda *a, **k: pytest.fail("a shard was committed into a deleted OUT"))
    monkeypatch.setenv("SIGNFEAT_OWNER_CHECK_S", "0")
    config = {**CONFIG, "extractors": CONFIG["extractors"][:1], "shards": {"samples": 10, "prefix": "t"}, "clips_per_call": 1}
    with pytest.raises(SignfeatError, match="was deleted while this run wrote it"):
        run_extract(manifest, str(out), parse_job_config(config), progress=False)
    assert len(arrived) == 1 and not out.exists()


def test_an_out_that_fills_up_mid_job_is_a_one_line_error_with_what_to_do(demo_manifest, ray_local, tmp_path, monkeypatch):
    """A full disk (or OUT made read-only) mid-job ended in a traceback; the rerun already recovers."""
    import errno

    import pyarrow as pa

    import pipeline.extract as extract

    table = pq.read_table(demo_manifest)
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["source_kind"] == "video"][:2]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "t-000000.tar"))

    monkeypatch.setattr(extract, "write_shard", disk_full)
    config = {**CONFIG, "extractors": CONFIG["extractors"][:1]}
    with pytest.raises(SignfeatError, match=r"out failed: No space left on device \(.*t-000000.tar\)\. .*rerun the same command"):
        run_extract(manifest, str(tmp_path / "out"), parse_job_config(config), progress=False)


def test_a_job_that_stands_still_says_why():
    """Two jobs on one cluster whose actors held every CPU waited forever for their decode tasks, the bar standing
    still, without a word from signfeat. The watch names what Ray has free against what the job asks."""
    from pipeline.extract import StallWatch

    now = [0.0]
    free = [[{"CPU": 0.0}]]
    cfg = parse_job_config({"extractors": [{"name": "clip_s2", "tiny": True, "num_cpus": 0.5, "actors": 2}, {"name": "dinov2", "tiny": True}]})
    watch = StallWatch(cfg, after_s=300, resources=lambda: (free[0], {"CPU": 4.0}), clock=lambda: now[0])
    now[0] = 299
    assert watch.check() is None
    now[0] = 301
    message = watch.check()
    assert "no clip has come back for 301 s; Ray has 0 of 4 CPUs free" in message and "clip_s2 2 x 0.5 CPU, dinov2 1 x 1 CPU" in message
    assert "decode tasks cannot start" in message
    now[0] = 400
    assert watch.check() is None  # said once per after_s while it lasts
    now[0] = 602
    assert "for 602 s" in watch.check()
    watch.progress()  # a clip came back: quiet again
    now[0] = 800
    assert watch.check() is None
    free[0] = [{"CPU": 2.0}]
    now[0] = 903
    message = watch.check()
    assert "Ray has 2 of 4 CPUs free" in message and "cannot start" not in message
    free[0] = [{"CPU": 0.5}, {"CPU": 0.5}]  # two nodes with half a CPU each: one CPU in all, none whole on a node
    now[0] = 1204
    message = watch.check()
    assert "Ray has 1 of 4 CPUs free (at most 0.5 on one node)" in message and "decode tasks cannot start" in message
    free[0] = [{"CPU": 0.5}, {"CPU": 1.0}]
    now[0] = 1505
    assert "cannot start" not in watch.check()
    # a cluster without the GPU or the accelerator type the config asks for: named (it said "a long clip?", and left a
    # cluster of 0 GPUs and the accelerator type unsaid)
    for stream, lacking, asked in [({"num_gpus": 1}, "dinov2's GPU", "dinov2 1 x 1 CPU + 1 GPU"),
                                   ({"accelerator_type": "L40S"}, "dinov2's accelerator_type L40S", "dinov2 1 x 1 CPU on an L40S node"),
                                   ({"resources": {"sf_big": 1}}, "dinov2's resource sf_big", "dinov2 1 x 1 CPU + 1 sf_big")]:
        cfg = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, **stream}]})
        now[0] = 0.0
        watch = StallWatch(cfg, after_s=300, resources=lambda: ([{"CPU": 4.0}], {"CPU": 4.0}), clock=lambda: now[0])
        now[0] = 301.0
        message = watch.check()
        assert f"no node of the cluster has {lacking}, so those actors cannot start until one joins" in message, message
        assert asked in message and "a long clip" not in message, message
        if "num_gpus" in stream:
            assert "Ray has 4 of 4 CPUs and 0 of 0 GPUs free" in message


def test_a_checkpoint_the_actors_could_not_load_stops_the_job_in_one_line_before_ray_starts(demo_manifest, tmp_path):
    """Another family's folder, a layer past the checkpoint's depth, a folder without weights and a weights file cut
    short were found by the actors after Ray had started: exit 1 with pages of ActorDiedError tracebacks."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from extractors import ExtractorConfig, build_extractor
    from extractors.clip_s2 import TINY
    from extractors.dinov2 import PROCESSOR

    clip = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(clip)
    dino = tmp_path / "dino"
    build_extractor(ExtractorConfig(name="dinov2", tiny=True)).model.save_pretrained(dino)
    from transformers.models.bit import BitImageProcessorPil

    BitImageProcessorPil(**PROCESSOR).save_pretrained(dino)
    no_weights, cut, torch_bin, cut_bin = tmp_path / "no_weights", tmp_path / "cut", tmp_path / "torch_bin", tmp_path / "cut_bin"
    for folder in (no_weights, cut, torch_bin, cut_bin):
        shutil.copytree(clip, folder)
    (no_weights / "model.safetensors").unlink()
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    for folder in (torch_bin, cut_bin):  # the older format: torch.save's zip archive
        (folder / "model.safetensors").unlink()
        torch.save(CLIPVisionModel.from_pretrained(clip).state_dict(), folder / "pytorch_model.bin")
    data = (cut_bin / "pytorch_model.bin").read_bytes()
    (cut_bin / "pytorch_model.bin").write_bytes(data[: len(data) * 9 // 10])

    def refused(entry, needle):
        config = parse_job_config({"extractors": [entry]})
        with pytest.raises(SignfeatError, match=needle) as info:
            run_extract(demo_manifest, str(tmp_path / "out"), config, progress=False)
        assert not (tmp_path / "out").exists()
        assert "every node" not in str(info.value)  # the folder is there: advice on where models must lie would mislead

    refused({"name": "clip_s2", "model": str(dino)}, "is a 'dinov2' model, not one clip_s2 loads")
    refused({"name": "videomae", "model": str(clip)}, "is a 'clip_vision_model' model, not one videomae loads")
    refused({"name": "clip_s2", "model": str(clip), "settings": {"layer": 5}}, "clip_s2 setting layer=5: the model has 2 layers")
    refused({"name": "clip_s2", "model": str(no_weights)}, "holds no weights file")
    refused({"name": "clip_s2", "model": str(cut)}, r"model.safetensors is damaged or cut short \(SafetensorError")
    refused({"name": "clip_s2", "model": str(cut_bin)}, r"pytorch_model.bin is damaged or cut short \(BadZipFile")
    # the whole folders pass, and the .bin one loads
    build_extractor(ExtractorConfig(name="clip_s2", model=str(torch_bin), device="cpu"))
    for entry in ({"name": "clip_s2", "model": str(clip)}, {"name": "dinov2", "model": str(dino)}, {"name": "clip_s2", "model": str(torch_bin)}):
        from extractors.base import REGISTRY

        REGISTRY[entry["name"]].check_loadable(ExtractorConfig.from_dict(entry))


def test_a_hub_model_is_pinned_to_its_commit_and_a_moved_tag_is_refused(demo_manifest, ray_local, tmp_path, monkeypatch):
    """A Hub id's branch or tag was recorded and hashed as written: moved on the Hub between a cut-off run and its
    rerun, the rerun's actors loaded the new commit into the same output, under the same config hash, and verify
    passed. Now the driver resolves it to a commit (from the cache's refs here, offline) that the actors load,
    the samples record and the config hash covers. The cache is a Hugging Face cache as the Hub client lays it
    out: refs/TAG holding a commit, snapshots/COMMIT holding the files."""
    import huggingface_hub.constants
    import pyarrow as pa
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit import BitImageProcessorPil

    from extractors.dinov2 import PROCESSOR
    from pipeline.config import DEFAULT_WORKER_ENV

    hub = tmp_path / "hub"
    repo = hub / "models--signfeat-test--dino"
    first, second = "1" * 40, "2" * 40
    for seed, commit in ((0, first), (1, second)):
        torch.manual_seed(seed)
        Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 patch_size=14, image_size=112)).save_pretrained(repo / "snapshots" / commit)
        BitImageProcessorPil(**{**PROCESSOR, "size": {"shortest_edge": 128}, "crop_size": {"height": 112, "width": 112}}
                             ).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(first)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # the driver's; the workers' below
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    table = pq.read_table(demo_manifest)
    picked = [r for r in table.to_pylist() if r["status"] == "ok" and r["source_kind"] == "video"][:2]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(picked, schema=table.schema), manifest)

    def config(revision):
        return parse_job_config({"extractors": [{"name": "dinov2", "model": "signfeat-test/dino", "revision": revision}],
                                 "worker_env": {**DEFAULT_WORKER_ENV, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}})

    out = str(tmp_path / "out")
    summary = run_extract(manifest, out, config("v1"), progress=False)
    assert summary["samples"] == 2 and summary["failures"] == 0
    assert summary["config"]["extractors"][0]["revision"] == first
    assert summary["hub_commits"] == {"dinov2": {"model": "signfeat-test/dino", "revision": "v1", "commit": first}}
    records = [s["json"]["streams"]["dinov2"] for t in sorted(glob.glob(f"{out}/*/*.tar")) for s in read_samples(t)]
    assert [r["revision"] for r in records] == [first, first] and verify(out)["ok"]

    (repo / "refs" / "v1").write_text(second)  # the tag moves
    with pytest.raises(SignfeatError, match=f"dinov2's signfeat-test/dino at v1 was commit {first} for that output and is {second} now"):
        run_extract(manifest, out, config("v1"), progress=False)
    # the same job with the old commit named: every shard is complete, nothing is redone
    again = run_extract(manifest, out, config(first), progress=False)
    assert again["shards_skipped_as_complete"] == again["shards"] and again["config_hash"] == summary["config_hash"]

    # an output an older signfeat made (hashed by the tag) is told apart from another job
    store_identity = tmp_path / "out" / "_signfeat" / "identity.json"
    identity = json.loads(store_identity.read_text())
    store_identity.write_text(json.dumps({**identity, "config_hash": config("v1").output_hash()}))
    (tmp_path / "out" / "_signfeat" / "hub_commits.json").unlink()  # older versions wrote none
    with pytest.raises(SignfeatError, match=f"recorded a Hub model by its branch or tag, not by the commit it loaded "
                                            f"\\(dinov2's signfeat-test/dino at v1 is now commit {second}"):
        run_extract(manifest, out, config("v1"), progress=False)


def test_a_job_that_stops_before_its_first_shard_leaves_no_job_record_behind(demo_manifest, ray_local, tmp_path):
    """Unplaceable actors (a GPU config on this CPU machine) were refused after OUT was claimed: _signfeat/ stayed in
    the user's folder, and verify advised rerunning a command that fails again."""
    config = parse_job_config({"extractors": [{"name": "dinov2", "tiny": True, "num_gpus": 1}]})
    new = tmp_path / "new"
    with pytest.raises(SignfeatError, match="num_gpus need 1 GPU"):
        run_extract(demo_manifest, str(new), config, progress=False)
    assert not new.exists()
    nested = tmp_path / "a" / "b" / "out"  # the folders made for it go too
    with pytest.raises(SignfeatError, match="num_gpus need 1 GPU"):
        run_extract(demo_manifest, str(nested), config, progress=False)
    assert not (tmp_path / "a").exists()
    # a folder of the user's, or shards copied without their job record (_signfeat/): only what this run wrote goes
    # (the first version of this cleanup cleared the output: shards, index.parquet and job.json)
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    kept = {"notes.txt": b"keep", "job.json": b"{}", "index.parquet": b"mine", "failures.parquet": b"mine",
            "train/shard-000000.tar": b"features"}
    for name, data in kept.items():
        (mine / name).write_bytes(data)
    with pytest.raises(SignfeatError, match="num_gpus need 1 GPU"):
        run_extract(demo_manifest, str(mine), config, progress=False)
    assert {str(p.relative_to(mine)): p.read_bytes() for p in mine.rglob("*") if p.is_file()} == kept
    assert sorted(p.name for p in mine.iterdir()) == ["failures.parquet", "index.parquet", "job.json", "notes.txt", "train"]


def test_a_clip_missing_only_where_it_was_decoded_is_said_with_its_node_and_fails_the_command(tmp_path, capsys, monkeypatch):
    """A cluster node without the videos' mount failed its clips as missing_file: exit 0, verify OK, and a rerun
    skipped their complete shards, so the clips were lost without a word. The decode failure now names the node;
    the driver, which reads the file, tells such failures from a file gone since the manifest, and the command
    exits 1 saying what to redo."""
    from pipeline.cli import main
    from pipeline.decode import DecodeOptions
    from pipeline.extract import _ray_rows, missing_where_decoded
    from pipeline.plan import ShardPlan
    from pipeline.stages import decode_prepare

    gone = tmp_path / "gone.mp4"
    clip = {"id": "a", "key": "a", "dataset": "d", "split": "train", "signer": None, "text": "t", "source_kind": "video",
            "path": str(gone), "start_s": None, "end_s": None, "fps": None, "num_frames": 3}
    rows = _ray_rows([ShardPlan(name="train/s-000000", split="train", rows=[clip])])
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = decode_prepare(batch, json.dumps([{"name": "dinov2", "tiny": True}]), DecodeOptions(backend="pyav"))
    row = {k: v[0] for k, v in out.items()}
    assert row["error_class"] == "missing_file" and re.search(r" \(on node [^)]+\)$", str(row["error_message"]))  # an IP under Ray
    assert missing_where_decoded(row) is None  # gone here too: the clip's own failure
    gone.write_bytes(b"here on the driver")
    assert missing_where_decoded(row) == {"id": "a", "shard": "train/s-000000", "message": row["error_message"]}
    import pipeline.extract

    summary = {"output": str(tmp_path / "o"), "clips_planned": 1, "manifest_rows_not_ok": {}, "samples": 0, "failures": 1,
               "failures_by_class": {"missing_file": 1}, "shards": 1, "shards_skipped_as_complete": 0, "wall_s": 1.0, "clips_per_s": 1.0,
               "tars_not_in_plan": [], "missing_on_a_node": [missing_where_decoded(row)]}
    monkeypatch.setattr(pipeline.extract, "run_extract", lambda *a, **k: summary)
    config = tmp_path / "c.yaml"
    config.write_text("extractors: [{name: dinov2, tiny: true}]\n")
    assert main(["extract", "--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o"), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "1 clip(s) failed as missing_file on a Ray node although this machine reads them" in err and "delete the tars of the 1 shard(s)" in err
