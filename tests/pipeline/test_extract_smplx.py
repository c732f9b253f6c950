"""SMPL-X parameter clips (source_kind smplx) through manifest build -> extract -> shards -> verify, on the
session's Ray: the smplx623 stream reads each file in its actor, video clips of the same manifest take the
MediaPipe path, a video-only stream fails parameter clips as ``needs_video``; every clip lands exactly once."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from extractors import build_extractor
from manifests.build import build_manifest
from motion.synthetic import smooth_random_params
from pipeline.config import parse_job_config
from pipeline.errors import SignfeatError
from pipeline.extract import run_extract
from shards.reader import read_samples
from shards.verify import verify
from tests.helpers import index_frame, write_video
from tests.manifests.test_smplx_rows import malicious_pickle, signavatars_pickle
from tests.motion.conftest import model_dir  # noqa: F401  (the synthetic SMPL-X model folder)

TARGET_FPS = 20.0


def _settings(model_dir):
    # small fits and 64 px frames: the video clips only have to reach MediaPipe (which finds no person in them)
    return {"model_dir": str(model_dir), "target_fps": TARGET_FPS, "image_size": 64, "fit_iterations": 10, "fit_orient_iterations": 3}


@pytest.fixture(scope="module")
def corpus(model_dir, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("smplx_corpus")
    clips = {}  # id -> (annotation fps, expected manifest status)
    for i, (frames, fps) in enumerate([(12, 25.0), (9, 30.0), (15, 20.0)]):  # fps recorded in the file
        signavatars_pickle(root / f"sa{i}.pkl", smooth_random_params(frames, seed=i), fps=fps)
        clips[f"sa{i}"] = ("", "ok")
    np.savez(root / "nz0.npz", **smooth_random_params(11, seed=10), fps=np.array(25.0))
    clips["nz0"] = ("", "ok")
    np.savez(root / "nz1.npz", **smooth_random_params(10, seed=11))  # no fps inside: the annotation's
    clips["nz1"] = ("30", "ok")
    np.savez(root / "nofps.npz", **smooth_random_params(10, seed=12))  # no fps anywhere: refused at probe
    clips["nofps"] = ("", "no_fps")
    np.savez(root / "short.npz", **smooth_random_params(1, seed=13), fps=np.array(25.0))  # one frame: no motion
    clips["short"] = ("", "ok")
    malicious_pickle(root / "evil.pkl", root / "pwned")  # refused at probe, never planned
    clips["evil"] = ("", "unsafe_pickle")
    # a file that probed fine and was swapped for a malicious pickle before extraction: a failures row
    signavatars_pickle(root / "swapped.pkl", smooth_random_params(8, seed=14), fps=25.0)
    clips["swapped"] = ("", "ok")
    for i in range(2):  # videos in the same manifest take smplx623's video path
        write_video(root / f"vid{i}.mp4", np.stack([index_frame(k) for k in range(6)]))
        clips[f"vid{i}"] = ("", "ok")
    paths = {c: next(root.glob(f"{c}.*")).name for c in clips}
    ann = root / "corpus.csv"
    ann.write_text("id,path,text,fps,split\n" + "".join(f"{c},{paths[c]},text of {c},{fps},train\n" for c, (fps, _) in clips.items()))
    manifest = root / "manifest.parquet"
    build_manifest([ann], manifest, root=root, progress=False)
    malicious_pickle(root / "swapped.pkl", root / "pwned")
    return {"root": root, "manifest": manifest, "clips": clips, "paths": paths}


@pytest.fixture(scope="module")
def smplx_job(corpus, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smplx_out") / "features"
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5, "settings": _settings(model_dir)}],
                            "shards": {"samples": 3, "prefix": "m"}, "clips_per_call": 4, "decode": {"backend": "pyav"}})
    summary = run_extract(corpus["manifest"], str(out), cfg, progress=False)
    return {"out": out, "summary": summary}


def test_manifest_rows_of_parameters(corpus):
    rows = {r["id"]: r for r in pq.read_table(corpus["manifest"]).to_pylist()}
    assert {c: rows[c]["status"] for c in corpus["clips"]} == {c: s for c, (_, s) in corpus["clips"].items()}
    assert rows["sa1"]["source_kind"] == "smplx" and (rows["sa1"]["num_frames"], rows["sa1"]["fps"]) == (9, 30.0)
    assert (rows["nz1"]["fps"], rows["nz1"]["duration_s"]) == (30.0, 10 / 30)
    assert rows["vid0"]["source_kind"] == "video" and rows["vid0"]["num_frames"] == 6
    assert not (corpus["root"] / "pwned").exists()


def test_every_clip_once_and_verify_accepts_the_shards(corpus, smplx_job):
    ok = sorted(c for c, (_, s) in corpus["clips"].items() if s == "ok")
    s = smplx_job["summary"]
    assert s["clips_planned"] == len(ok) and s["samples"] + s["failures"] == len(ok)
    samples = [row for path in sorted(smplx_job["out"].glob("train/*.tar")) for row in read_samples(str(path))]
    failures = {f["id"]: f for f in pq.read_table(smplx_job["out"] / "failures.parquet").to_pylist()}
    placed = sorted([x["json"]["id"] for x in samples] + list(failures))
    assert placed == ok
    assert {c: (f["stage"], f["error_class"]) for c, f in failures.items()} == {
        "short": ("extract:smplx623", "too_short"),
        "swapped": ("extract:smplx623", "unsafe_pickle"),
        "vid0": ("extract:smplx623", "no_person"),  # MediaPipe ran on the video's frames (the video path)
        "vid1": ("extract:smplx623", "no_person"),
    }
    assert not (corpus["root"] / "pwned").exists()
    report = verify(str(smplx_job["out"]))
    assert report["ok"], report["problems"]
    assert report["samples"] == 5


def _meta(sample):
    return sample["json"]


def test_shard_arrays_equal_the_extractor_on_the_files(corpus, smplx_job, model_dir):
    rows = {r["id"]: r for r in pq.read_table(corpus["manifest"]).to_pylist()}
    samples = {_meta(x)["id"]: x for path in sorted(smplx_job["out"].glob("train/*.tar")) for x in read_samples(str(path))}
    assert sorted(samples) == ["nz0", "nz1", "sa0", "sa1", "sa2"]
    direct = build_extractor({"name": "smplx623", "settings": _settings(model_dir)})  # independent of the pipeline
    ids = sorted(samples)
    expected = direct.extract_paths([corpus["root"] / corpus["paths"][c] for c in ids], fps=[rows[c]["fps"] for c in ids])
    for clip, want in zip(ids, expected):
        got = samples[clip]["smplx623"]
        assert got.dtype == np.float32 and got.shape == want.shape and got.shape[1] == 623
        np.testing.assert_allclose(got, want, atol=1e-5)
        meta = _meta(samples[clip])
        # the frames and rate the features are aligned to: resampled to target_fps (20), T frames -> T-1 rows
        assert meta["fps"] == TARGET_FPS and meta["num_frames"] == len(want) + 1, (clip, meta["fps"], meta["num_frames"])
        assert meta["source"]["kind"] == "smplx" and meta["source"]["path"] == str(corpus["root"] / corpus["paths"][clip])
        assert meta["streams"]["smplx623"]["settings"]["target_fps"] == TARGET_FPS
    # 12 frames at 25 fps (0 .. 0.44 s) -> 9 frames at 20 fps (instants 0, 0.05, ..., 0.40: none past the last frame,
    # motion/params_io.resample_params); 15 frames already at 20 fps stay 15
    assert (_meta(samples["sa0"])["num_frames"], _meta(samples["sa2"])["num_frames"]) == (9, 15)
    index = {r["id"]: r for r in pq.read_table(smplx_job["out"] / "index.parquet").to_pylist()}
    # duration_s: the source's 0.48 s, whatever rate the features were resampled to
    assert index["sa0"]["num_frames"] == 9 and index["sa0"]["len_smplx623"] == 8 and index["sa0"]["duration_s"] == pytest.approx(12 / 25)


def test_verify_checks_smplx623_rows_against_num_frames(smplx_job, tmp_path):
    """The T-1 rule is checked, not skipped: a sample whose JSON says one frame more is reported."""
    import io
    import shutil
    import tarfile

    copy = tmp_path / "features"
    shutil.copytree(smplx_job["out"], copy)
    shard = sorted(copy.glob("train/*.tar"))[0]
    buf = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".json"):
                meta = json.loads(data)
                meta["num_frames"] += 1
                data = json.dumps(meta).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    problems = verify(str(copy))["problems"]
    assert any("smplx623 has" in p and "rows, expected" in p for p in problems), problems


def _batch(rows):
    return {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_a_video_only_stream_fails_parameter_clips_as_needs_video(corpus):
    """decode_prepare, as the job runs it: with dinov2 in the job a parameters clip fails (once, before any
    extractor) as needs_video at dinov2's stage; a video clip of the same batch decodes. (A whole dinov2 job
    would build its model in an actor: too slow for this suite on 2 cores.)"""
    from pipeline.decode import DecodeOptions
    from pipeline.stages import decode_prepare

    rows = [dict(r, fps=float("nan") if r["fps"] is None else r["fps"])
            for r in pq.read_table(corpus["manifest"]).to_pylist() if r["id"] in ("sa0", "nz1", "vid0")]
    rows = [{k: r[k] for k in ("id", "key", "source_kind", "path", "start_s", "end_s", "fps", "num_frames")} for r in rows]
    for r in rows:
        r["start_s"] = r["end_s"] = float("nan")
    video_only = json.dumps([{"name": "dinov2", "tiny": True}], sort_keys=True)
    out = decode_prepare(_batch(rows), video_only, DecodeOptions(backend="pyav"))
    by_id = {out["id"][i]: i for i in range(len(rows))}
    for clip in ("sa0", "nz1"):
        i = by_id[clip]
        assert (out["error_stage"][i], out["error_class"][i]) == ("extract:dinov2", "needs_video")
        assert "smplx623" in out["error_message"][i]
    assert out["error_class"][by_id["vid0"]] == "" and out["decoded_frames"][by_id["vid0"]] == 6
    # with only smplx623 the parameter clips pass undecoded, with the manifest's (probed) frames and fps
    params_only = json.dumps([{"name": "smplx623", "settings": {"image_size": 64}}], sort_keys=True)
    out = decode_prepare(_batch(rows), params_only, DecodeOptions(backend="pyav"))
    i = by_id["nz1"]
    assert out["error_class"][i] == "" and (out["decoded_frames"][i], out["decoded_fps"][i]) == (10, 30.0)
    assert all(out[c][i].shape[0] == 0 for c in out if c.startswith("prep_"))


def test_the_shipped_smplx_config_parses():
    from pathlib import Path

    from pipeline.config import load_job_config

    cfg = load_job_config(Path(__file__).resolve().parents[2] / "configs" / "extract_smplx.yaml")
    assert [s.name for s in cfg.streams] == ["smplx623"] and cfg.streams[0].extractor["settings"]["target_fps"] == 20


def test_the_job_summary_calls_the_synthetic_body_model_what_it_is(model_dir, tmp_path):
    # the summary printed "pretrained" for signfeat's synthetic SMPL-X test model (the samples said random)
    from pipeline.cli import _weights_label

    assert _weights_label({"name": "smplx623", "settings": {"model_dir": str(model_dir)}}).startswith("SYNTHETIC")
    assert _weights_label({"name": "smplx623", "settings": {"model_dir": str(tmp_path / "nowhere")}}) == "SMPL-X model from model_dir"
    assert _weights_label({"name": "clip_s2", "tiny": True}).startswith("RANDOM") and _weights_label({"name": "clip_s2"}) == "pretrained"


def test_a_local_job_with_video_rows_and_no_mediapipe_stops_before_it_starts(corpus, model_dir, tmp_path, monkeypatch):
    """Every video row failed, the job exited 0, and a rerun after installing MediaPipe skipped those shards."""
    import motion.estimate

    def missing():
        raise SignfeatError("video estimation needs MediaPipe (No module named 'mediapipe'); pip install signfeat[estimate]")

    monkeypatch.setattr(motion.estimate, "import_mediapipe", missing)
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5, "settings": _settings(model_dir)}]})
    with pytest.raises(SignfeatError, match="needs MediaPipe"):
        run_extract(corpus["manifest"], str(tmp_path / "out"), cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_local_job_whose_retarget_file_is_missing_stops_before_it_starts(corpus, model_dir, tmp_path, monkeypatch):
    """Ray started, every actor died on the missing file (four tracebacks), then the right message: now one line
    before Ray is touched. (On a joined cluster the workers may hold the file: not checked there.)"""
    import pipeline.ray_runtime

    monkeypatch.setattr(pipeline.ray_runtime, "ensure_ray", lambda **kw: pytest.fail("Ray was started"))
    settings = {**_settings(model_dir), "retarget": str(tmp_path / "typo.npy")}
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5, "settings": settings}]})
    with pytest.raises(SignfeatError, match=f"retarget must be rest, none or a joints .npy file; no such file: {tmp_path / 'typo.npy'}"):
        run_extract(corpus["manifest"], str(tmp_path / "out"), cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_video_sample_records_the_frames_its_estimator_did_not_see(model_dir, ray_local, tmp_path):
    """Frames where MediaPipe found no person (or no hand) were filled in by the fit without a word: a sample of a
    clip with black frames read like one of a clip without gaps. The sample's smplx623 record now lists them
    (decoded frames, half-open ranges); the photo's person shows no hand in any frame."""
    pytest.importorskip("mediapipe")
    from tests.motion.test_estimate_real_person import shifted_frames

    frames = shifted_frames()  # 8 frames of a real person (tests/data/astronaut.jpg)
    frames[3:5] = 0  # two black frames: nobody to see
    write_video(tmp_path / "person.mp4", frames)
    (tmp_path / "corpus.csv").write_text("id,path,text,split\nperson,person.mp4,a person,train\n")
    build_manifest([tmp_path / "corpus.csv"], tmp_path / "m.parquet", root=tmp_path, progress=False)
    settings = {**_settings(model_dir), "image_size": 224}
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5, "settings": settings}], "decode": {"backend": "pyav"}})
    summary = run_extract(tmp_path / "m.parquet", str(tmp_path / "out"), cfg, progress=False)
    assert summary["samples"] == 1, pq.read_table(tmp_path / "out" / "failures.parquet").to_pylist()
    (sample,) = [s for tar in (tmp_path / "out").glob("train/*.tar") for s in read_samples(str(tar))]
    seen = sample["json"]["streams"]["smplx623"]["estimate"]
    assert seen.pop("fps") == pytest.approx(25.0)  # the decoded rate the frame numbers count at
    assert seen == {"frames": 8, "without_person": [[3, 5]], "without_left_hand": [[0, 8]], "without_right_hand": [[0, 8]]}
    assert sample["json"]["streams"]["smplx623"]["settings_hash"]  # the stream's own record is still there
    assert verify(str(tmp_path / "out"))["ok"]


def test_an_actor_that_cannot_start_on_a_cluster_node_is_one_line(corpus, model_dir, tmp_path):
    """On a cluster (--address) the driver does not check the files a setting names (the workers may hold files it
    lacks): an actor whose node lacks them died in its constructor, and the job ended in pages of ActorDiedError
    traceback. The session's Ray instance stands in for the cluster."""
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5,
                                            "settings": {**_settings(model_dir), "retarget": str(tmp_path / "no_such_joints.npy")}}]})
    with pytest.raises(SignfeatError) as info:
        run_extract(corpus["manifest"], str(tmp_path / "out"), cfg, progress=False, address="auto")
    said = str(info.value)
    assert said.startswith("an extractor actor could not start on node ") and "\n" not in said
    assert f"retarget must be rest, none or a joints .npy file; no such file: {tmp_path / 'no_such_joints.npy'}" in said
    assert "Traceback" not in said and "ActorDiedError" not in said


@pytest.mark.parametrize("model_dir_setting", ["/path/to/smplx_models", None])
def test_a_local_job_without_the_smplx_model_file_stops_before_claiming_its_output(corpus, tmp_path, model_dir_setting):
    """configs/extract_smplx.yaml as shipped (its placeholder model_dir) or no model_dir at all: every actor of a
    local job failed after Ray started, 245 lines of Ray logs and tracebacks, and OUT was already claimed."""
    settings = {"target_fps": TARGET_FPS} if model_dir_setting is None else {"model_dir": model_dir_setting, "target_fps": TARGET_FPS}
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5, "settings": settings}]})
    with pytest.raises(SignfeatError) as info:
        run_extract(corpus["manifest"], str(tmp_path / "out"), cfg, progress=False)
    said = str(info.value)
    assert said.startswith("smplx623: ") and "https://smpl-x.is.tue.mpg.de" in said and "\n" not in said
    assert ("no such folder: /path/to/smplx_models" in said) if model_dir_setting else ("model_dir is not set" in said)
    assert not (tmp_path / "out").exists()


def test_decode_max_frames_with_smplx623_is_refused_up_front():
    """max_frames: 16 next to smplx623 (target_fps 20) and dinov2: smplx623 fitted the 16 thinned frames (about
    4 fps) and interpolated them up to 72, dinov2 kept 16, and verify refused the shard the job wrote."""
    for streams in ([{"name": "smplx623", "settings": {"target_fps": 20}}],
                    [{"name": "smplx623", "settings": {"target_fps": 20}}, {"name": "dinov2", "tiny": True}]):
        with pytest.raises(SignfeatError, match="decode.max_frames 16 thins each video clip's frames, and smplx623 resamples"):
            parse_job_config({"extractors": streams, "decode": {"target_fps": 20, "max_frames": 16}})
        parse_job_config({"extractors": streams, "decode": {"target_fps": 20}})  # without it: fine


def test_parameter_files_with_more_betas_than_num_betas_stop_a_local_job_before_it_starts(model_dir, ray_local, tmp_path):
    """AMASS's SMPL-X files hold 16 betas: under the default num_betas 10 every clip failed in the job, one
    failures row each, after the whole corpus was read."""
    from extractors import ExtractorConfig
    from extractors.base import REGISTRY, parse_settings

    np.savez(tmp_path / "a.npz", **smooth_random_params(8, seed=1, num_betas=16), fps=np.array(30.0))
    (tmp_path / "ann.csv").write_text("id,path,text,split\na,a.npz,text of a,train\n")
    build_manifest([tmp_path / "ann.csv"], tmp_path / "m.parquet", root=tmp_path, progress=False)
    cfg = parse_job_config({"extractors": [{"name": "smplx623", "num_cpus": 0.5, "settings": {"model_dir": str(model_dir)}}]})
    with pytest.raises(SignfeatError) as info:
        run_extract(tmp_path / "m.parquet", str(tmp_path / "out"), cfg, progress=False)
    assert str(info.value) == (f"smplx623: {tmp_path / 'a.npz'} holds 16 betas a frame and num_betas is 10: its clips would fail "
                               "one by one; set num_betas: 16 (AMASS's SMPL-X files hold 16)")
    assert not (tmp_path / "out").exists()
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    for num_betas in (16, 20):  # enough: no refusal
        config = ExtractorConfig.from_dict({"name": "smplx623", "settings": {"model_dir": str(model_dir), "num_betas": num_betas}})
        REGISTRY["smplx623"].check_local_files(config, parse_settings(REGISTRY["smplx623"].Settings, config.settings, "smplx623"), rows)
