"""The command line as a user runs it: real subprocesses, the steps of ``make demo`` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SIGNFEAT = Path(sys.executable).parent / "signfeat"


def run(*args, cwd=None):
    cmd = [str(SIGNFEAT)] if SIGNFEAT.exists() else [sys.executable, "-m", "pipeline.cli"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["manifest", "build", "--annotations", "/no/such/file.csv", "--out", "m.parquet"], "annotation file not found"),
        (["manifest", "build", "--format", "elan", "--annotations", "a.csv", "--out", "m.parquet"], "invalid choice"),
        (["manifest", "curate", "/no/manifest.parquet", "--out", "c.parquet", "--report", "r"], "manifest not found"),
        (["manifest", "curate", ".", "--out", "c.parquet", "--report", "r"], "manifest . is a folder; give the manifest's .parquet file"),
        (["manifest", "curate", "m.parquet", "--out", "c.parquet", "--report", "r", "--min-frames", "ten"], "expected an integer"),
        (["manifest", "curate", "m.parquet", "--out", "c.parquet", "--report", "r", "--split-ratios", "train:0.5"], "bad --split-ratios"),
        (["frobnicate"], "invalid choice"),
        # a bad --set is said before the clip is decoded (a 1080p clip: seconds and GBs first), here before the path is looked at
        (["features", "/no/video.mp4", "--extractor", "dinov2", "--tiny", "--random-weights", "--set", "bogus=1", "--out", "x.npy"],
         "unknown dinov2 settings ['bogus']"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    (tmp_path / "m.parquet").write_bytes(b"")  # exists but is not a manifest
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signfeat: error:"), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_make_demo_steps_end_to_end(tmp_path):
    corpus, manifest, curated, report = tmp_path / "corpus", tmp_path / "m.parquet", tmp_path / "c.parquet", tmp_path / "report"
    res = run("demo-corpus", corpus, "--clips", "16", "--seed", "1")
    assert res.returncode == 0, res.stderr
    summary = json.loads((corpus / "demo_corpus.json").read_text())
    res = run("manifest", "build", "--annotations", *summary["annotations"], "--root", corpus, "--out", manifest, "--num-cpus", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    built = json.loads(res.stdout)
    assert built["rows"] == pq.read_metadata(manifest).num_rows
    ok_truth = sum(1 for t in summary["truth"].values() if t["status"] == "ok")
    assert built["status"]["ok"] == ok_truth
    res = run("manifest", "curate", manifest, "--out", curated, "--report", report, "--group-by-signer")
    assert res.returncode == 0, res.stderr
    rep = json.loads((report / "report.json").read_text())
    assert rep["kept"] == ok_truth - 1  # the byte-identical copy is dropped
    assert pq.read_metadata(curated).num_rows == rep["kept"]
    assert (report / "overview.png").exists()


def test_features_command_writes_the_array_the_shards_would_hold(demo_manifest, tmp_path):
    import numpy as np

    from extractors import ExtractorConfig, build_extractor
    from pipeline.cli import main
    from pipeline.decode import decode_clip

    row = next(r for r in pq.read_table(demo_manifest).to_pylist() if r["status"] == "ok" and r["source_kind"] == "frames")
    import torch

    out = tmp_path / "f.npy"
    torch.manual_seed(0)
    assert main(["features", row["path"], "--extractor", "videomae", "--tiny", "--set", "window=13", "--set", "stride=4", "--fps", "25", "--out", str(out)]) == 0
    arr = np.load(out, allow_pickle=False)
    frames = decode_clip({"source_kind": "frames", "path": row["path"]}).frames
    n_windows = (max(len(frames), 13) - 13) // 4 + 1
    assert arr.dtype == np.float16 and arr.shape == (n_windows, 32)
    torch.manual_seed(0)  # the same random weights -> the library call gives the same array
    same = build_extractor(ExtractorConfig(name="videomae", tiny=True, settings={"window": 13, "stride": 4}))
    np.testing.assert_array_equal(same.extract([frames])[0], arr)
    res = run("features", row["path"], "--extractor", "dinov2", "--tiny", "--set", "resolution=300", "--out", tmp_path / "g.npy")
    assert res.returncode == 2 and "resolution must be 224 or 336" in res.stderr and "Traceback" not in res.stderr


def test_features_refuses_a_bad_out_before_the_model_runs(tmp_path, capsys):
    """--out under a file was a FileExistsError traceback, after the model had loaded and run."""
    import numpy as np

    from pipeline.cli import main
    from tests.helpers import index_frame, write_video

    video = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(4)]))
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "afile" / "f.npy", "cannot create its folder"), (tmp_path, "is a folder")):
        assert main(["features", str(video), "--extractor", "dinov2", "--tiny", "--out", str(out)]) == 2
        assert needle in capsys.readouterr().err


def test_features_of_a_frame_folder_without_fps_says_the_rate_it_assumed(tmp_path, capsys):
    """A 30 fps folder read at 25 without a word gave other features than its shard's (whose manifest has 30)."""
    import numpy as np
    from PIL import Image

    from pipeline.cli import main
    from tests.helpers import index_frame

    (tmp_path / "frames").mkdir()
    for i in range(4):
        Image.fromarray(index_frame(i)).save(tmp_path / "frames" / f"{i:04d}.png")
    args = ["features", str(tmp_path / "frames"), "--extractor", "dinov2", "--tiny", "--random-weights", "--out", str(tmp_path / "f.npy")]
    assert main(args) == 0
    assert "is a frame folder and no --fps was given: read at 25 fps" in capsys.readouterr().err
    assert main([*args, "--fps", "30"]) == 0
    assert "no --fps" not in capsys.readouterr().err
    assert np.load(tmp_path / "f.npy").shape[0] == 4


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_on_the_command_line_are_refused(value, capsys):
    """"nan" passed the bound check (every comparison with NaN is False)."""
    from pipeline.cli import main

    assert main(["manifest", "build", "--annotations", "a.csv", "--out", "m.parquet", "--frame-fps", value]) == 2
    assert f"expected a finite number, got '{value}'" in capsys.readouterr().err


def test_features_takes_the_job_s_decode_options(demo_manifest, tmp_path):
    # without them, the array of a job run with decode.target_fps / max_frames could not be reproduced for one clip
    import numpy as np

    from extractors import ExtractorConfig, build_extractor
    from pipeline.cli import main
    from pipeline.decode import DecodeOptions, decode_clip

    row = next(r for r in pq.read_table(demo_manifest).to_pylist() if r["status"] == "ok" and r["source_kind"] == "video")
    out = tmp_path / "f.npy"
    assert main(["features", row["path"], "--extractor", "dinov2", "--tiny", "--target-fps", "10", "--max-frames", "5", "--out", str(out)]) == 0
    frames = decode_clip({"source_kind": "video", "path": row["path"]}, DecodeOptions(target_fps=10, max_frames=5)).frames
    assert len(frames) == 5
    expected = build_extractor(ExtractorConfig(name="dinov2", tiny=True)).extract([frames])[0]  # random weights are seeded
    np.testing.assert_array_equal(np.load(out, allow_pickle=False), expected)


def test_verify_of_an_unfinished_output_exits_1_every_time(tmp_path):
    """pyarrow aborted at interpreter exit now and then after verify's reads of missing files: exit 134, not 1."""
    import pyarrow as pa

    out = tmp_path / "out"
    (out / "_signfeat").mkdir(parents=True)
    (out / "_signfeat" / "identity.json").write_text(json.dumps({"config_hash": "0123456789abcdef", "plan_hash": "x", "streams": ["dinov2"]}))
    pq.write_table(pa.table({"shard": ["train/s-000000"], "key": ["k"], "id": ["k"]}), out / "_signfeat" / "plan.parquet")
    for _ in range(8):  # it aborted in about 1 run of 4
        result = run("verify", out)
        assert result.returncode == 1 and "index.parquet" in result.stdout + result.stderr, (result.returncode, result.stderr[-500:])


def test_a_build_or_curate_output_path_that_cannot_be_written_fails_before_any_work(tmp_path):
    """A folder given as --out was an IsADirectoryError after all the probing; a file as --report a traceback after
    the curated manifest was written."""
    (tmp_path / "outdir").mkdir()
    (tmp_path / "a.csv").write_text("id,path,text\na,v.mp4,x\n")
    result = run("manifest", "build", "--annotations", tmp_path / "a.csv", "--root", tmp_path, "--out", tmp_path / "outdir")
    assert result.returncode == 2 and "is a folder" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "rep_file").write_text("x")
    result = run("manifest", "curate", tmp_path / "m.parquet", "--out", tmp_path / "c.parquet", "--report", tmp_path / "rep_file")
    assert result.returncode == 2 and "is a file; give a folder" in result.stderr and not (tmp_path / "c.parquet").exists()


def test_output_folders_that_cannot_be_made_are_refused_before_the_work(tmp_path, capsys):
    """build probed the whole corpus, then died with FileNotFoundError on an --out whose folder cannot be made."""
    from pipeline.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    annotations = tmp_path / "a.csv"
    annotations.write_text("id,path,text\nc1,nope.mp4,hello\n")
    assert main(["manifest", "build", "--annotations", str(annotations), "--out", "/proc/signfeat/m.parquet"]) == 2
    assert "cannot create the folder /proc/signfeat" in capsys.readouterr().err
    assert main(["demo-corpus", str(blocker)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["demo-corpus", "x", "--seed", "-1"], "expected a number >= 0"),
    (["extract", "--manifest", "m", "--out", "o", "--config", "c", "--num-cpus", "0"], "expected a number > 0"),
])
def test_argument_values_that_meant_something_else_are_refused(argv, needle, capsys):
    from pipeline.cli import main

    assert main(argv) == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("field, value, needle", [("dtype", ["fp32"], "dtype must be"), ("device", "gpu", "device must be"),
                                                  ("backend", {"a": 1}, "backend must be")])
def test_extractor_fields_of_the_wrong_kind_are_one_line(field, value, needle):
    """A YAML list or mapping where a name goes raised TypeError (unhashable) as a traceback; --device gpu failed in torch after decoding."""
    from extractors import ExtractorConfig
    from pipeline.errors import SignfeatError

    with pytest.raises(SignfeatError, match=needle):
        ExtractorConfig.from_dict({"name": "dinov2", "tiny": True, field: value})


def test_num_cpus_too_small_for_the_config_is_said_before_ray_starts(demo_manifest, tmp_path):
    """The demo config needs 3 CPUs (its actors plus a decode task); --num-cpus 2 was refused only once a local
    Ray was up (80 s on a busy machine), where the default (all, or the need when more) runs."""
    ray_dir = tmp_path / "ray"  # where a local Ray started by this command would keep its session
    cmd = [str(SIGNFEAT)] if SIGNFEAT.exists() else [sys.executable, "-m", "pipeline.cli"]
    res = subprocess.run(cmd + ["extract", "--manifest", str(demo_manifest), "--out", str(tmp_path / "out"), "--config", "configs/extract_demo.yaml",
                                "--num-cpus", "2"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=600,
                         env={**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_dir)})
    assert res.returncode == 2 and "need 3 CPU in all" in res.stderr and "raise --num-cpus" in res.stderr, res.stderr[-800:]
    assert "Traceback" not in res.stderr and not ray_dir.exists() and not (tmp_path / "out").exists()  # nor OUT half-claimed


def test_verify_of_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    res = run("verify", tmp_path / "m.parquet")
    assert res.returncode == 2 and "m.parquet is a file; give the folder `signfeat extract --out` wrote" in res.stderr
    # a path with nothing there is a user error as for `stats` (exit 2), not a damaged output (exit 1)
    for command in ("verify", "stats"):
        res = run(command, tmp_path / "nope")
        assert res.returncode == 2 and "no such folder" in res.stderr and "Traceback" not in res.stderr, (command, res.returncode, res.stderr)


def test_an_output_that_is_the_command_s_own_input_is_refused_and_the_input_kept(tmp_path, capsys):
    """`--out` naming the input overwrote it, exit 0: an annotation table replaced by its manifest, a video by its
    features, a manifest by its curated subset, a features file by its rendering."""
    import numpy as np

    from pipeline.cli import main
    from tests.helpers import index_frame, write_video

    video = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(4)]))
    annotations = tmp_path / "ann.csv"
    annotations.write_text("id,path,text,split\na,v.mp4,hello,train\n")
    manifest = tmp_path / "m.parquet"
    assert main(["manifest", "build", "--annotations", str(annotations), "--root", str(tmp_path), "--out", str(manifest), "--no-progress"]) == 0
    features = tmp_path / "f.npy"
    np.save(features, np.zeros((3, 623), np.float32))
    (tmp_path / "link.csv").symlink_to(annotations)  # the same file by another name
    kept = {p: p.read_bytes() for p in (video, annotations, manifest, features)}
    capsys.readouterr()
    for argv, given in [
        (["manifest", "build", "--annotations", str(annotations), "--root", str(tmp_path), "--out", str(annotations)], annotations),
        (["manifest", "build", "--annotations", str(tmp_path / "link.csv"), "--root", str(tmp_path), "--out", str(annotations)], tmp_path / "link.csv"),
        (["manifest", "curate", str(manifest), "--out", str(manifest), "--report", str(tmp_path / "report")], manifest),
        (["manifest", "curate", str(manifest), "--out", str(annotations), "--report", str(tmp_path / "report"), "--config",
          str(annotations)], annotations),  # its --config (any file will do for this check)
        (["features", str(video), "--extractor", "dinov2", "--tiny", "--out", str(video)], video),
        (["motion-render", str(features), "--out", str(features)], features),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is the input {given}: writing there would overwrite it" in err[0], (argv, err)
    assert {p: p.read_bytes() for p in kept} == kept
    assert not (tmp_path / "report").exists()
    # a video the annotations name, as --out of the build: a row's path, or its source (the raw video of a clip)
    assert main(["manifest", "build", "--annotations", str(annotations), "--root", str(tmp_path), "--out", str(video)]) == 2
    assert f"--out {video} is {video}, a file the annotations name" in capsys.readouterr().err
    raw = tmp_path / "raw.mp4"
    raw.write_bytes(video.read_bytes())
    (tmp_path / "with_source.csv").write_text("id,path,text,split,source\na,v.mp4,hello,train,raw.mp4\n")
    assert main(["manifest", "build", "--annotations", str(tmp_path / "with_source.csv"), "--root", str(tmp_path), "--out", str(raw)]) == 2
    assert f"--out {raw} is {raw}, a file the annotations name" in capsys.readouterr().err
    assert video.read_bytes() == kept[video] == raw.read_bytes()


def test_motion_outputs_are_checked_before_the_work(tmp_path, capsys):
    """motion-render / motion-stats with --out an existing file ended in a FileExistsError traceback after every frame
    was drawn or every shard read; `--out clip.avi` silently made a folder of that name full of PNGs."""
    import numpy as np

    from pipeline.cli import main

    features = tmp_path / "f.npy"
    np.save(features, np.zeros((3, 623), np.float32))
    afile = tmp_path / "afile"
    afile.write_text("mine")
    folder_gif = tmp_path / "d.gif"
    folder_gif.mkdir()
    for argv, needle in [
        (["motion-render", str(features), "--out", str(afile)], f"--out {afile} is a file; give a folder"),
        (["motion-render", str(features), "--out", str(tmp_path / "clip.avi")], "motion-render writes .gif or .mp4 (one animation) or a folder"),
        (["motion-render", str(features), "--out", str(folder_gif)], f"--out {folder_gif} is a folder; give a file name (e.g. {folder_gif / 'skeleton.gif'})"),
        (["motion-stats", str(tmp_path / "no_shards"), "--out", str(afile)], f"--out {afile} is a file; give a folder"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
    assert afile.read_text() == "mine" and not (tmp_path / "clip.avi").exists()
    assert main(["motion-render", str(features), "--out", str(tmp_path / "frames")]) == 0  # a folder of PNG frames
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 3


def test_a_curation_config_error_names_the_file_and_leaves_no_folders(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "m.parquet").write_bytes(b"")
    config = tmp_path / "curate.yaml"
    config.write_text('min_frames: "8"\n')
    assert main(["manifest", "curate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o" / "c.parquet"), "--report",
                 str(tmp_path / "r"), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"signfeat: error: {config}: ") and "min_frames" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_extract_exits_non_zero_when_every_clip_failed(demo_manifest, tmp_path, capsys):
    """`decode: {frame_limit: 1}` failed every clip as too_long, and extract exited 0: a pipeline went on to train."""
    import pyarrow as pa

    from pipeline.cli import main

    table = pq.read_table(demo_manifest)
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["source_kind"] == "video"][:2]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "m.parquet")
    config = tmp_path / "c.yaml"
    config.write_text("extractors:\n  - {name: dinov2, tiny: true}\ndecode: {frame_limit: 1}\n")
    out = tmp_path / "out"
    assert main(["extract", "--manifest", str(tmp_path / "m.parquet"), "--out", str(out), "--config", str(config), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"signfeat: error: every clip failed (2 failures; too_long: 2): see {out}/failures.parquet" in err
    assert len(pq.read_table(out / "failures.parquet")) == 2 and (out / "job.json").is_file()  # the output is whole
    from shards.verify import verify

    report = verify(str(out))
    assert report["ok"] and "no samples: every one of the 2 clips failed; failures.parquet says why" in report["notes"]


def test_a_header_only_annotation_table_builds_an_empty_manifest_with_a_note(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "ann.csv").write_text("id,path,text\n")
    assert main(["manifest", "build", "--annotations", str(tmp_path / "ann.csv"), "--root", str(tmp_path), "--out",
                 str(tmp_path / "m.parquet"), "--no-progress"]) == 0
    assert f"note: the annotation file(s) hold no rows: {tmp_path / 'm.parquet'} is an empty manifest" in capsys.readouterr().err
    assert pq.read_table(tmp_path / "m.parquet").num_rows == 0


def test_an_extract_run_with_overwrite_that_stops_says_to_rerun_it_without(tmp_path, capsys, monkeypatch):
    """A run with --overwrite (make demo's) stopped by SIGTERM advised "rerun the same command to go on": with
    --overwrite that deleted the shards it had completed and started again."""
    import pipeline.extract
    import pipeline.ray_runtime
    from pipeline.cli import main
    from pipeline.errors import SignfeatError, Terminated

    monkeypatch.setattr(pipeline.ray_runtime, "LEAVING_NOTE", "")  # put back after the test: the CLI sets it
    config = tmp_path / "c.yaml"
    config.write_text("extractors: [{name: dinov2, tiny: true}]\n")
    for stop, code in [(Terminated(), 143), (KeyboardInterrupt(), 130),
                       (SignfeatError("the cluster went away; rerun the same command when it is back (complete shards are kept)"), 2)]:
        def stopped(*args, stop=stop, **kwargs):
            raise stop
        monkeypatch.setattr(pipeline.extract, "run_extract", stopped)
        for overwrite in (True, False):
            argv = ["extract", "--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o"), "--config", str(config)]
            assert main(argv + ["--overwrite"] * overwrite) == code
            said = "rerun it without --overwrite to keep the shards completed so far" in capsys.readouterr().err
            assert said == overwrite, (stop, overwrite)
    # a second SIGTERM leaves at once (os._exit), past that note: its own line says it
    assert pipeline.ray_runtime.LEAVING_NOTE == " without --overwrite (with it, the shards completed so far are deleted)"
    monkeypatch.setattr(pipeline.extract, "run_extract", lambda *a, **k: (_ for _ in ()).throw(SignfeatError("a bad setting")))
    assert main(["extract", "--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o"), "--config", str(config), "--overwrite"]) == 2
    assert "without --overwrite" not in capsys.readouterr().err  # nothing was kept to lose


def test_features_of_a_hub_id_load_and_name_the_commit_its_tag_is(tmp_path, capsys, monkeypatch):
    """`signfeat features --model ID --revision TAG` loaded and printed the tag as given, where a job's samples record
    the commit it resolves to: the array could not be matched to a shard's revision."""
    import huggingface_hub.constants
    import numpy as np
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit import BitImageProcessorPil

    from extractors.dinov2 import PROCESSOR
    from pipeline.cli import main
    from tests.helpers import index_frame, write_video

    repo = tmp_path / "hub" / "models--signfeat-test--dino"
    commit = "3" * 40
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14,
                             image_size=112)).save_pretrained(repo / "snapshots" / commit)
    BitImageProcessorPil(**PROCESSOR).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    video = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(3)]))
    capsys.readouterr()
    assert main(["features", str(video), "--extractor", "dinov2", "--model", "signfeat-test/dino", "--revision", "v1",
                 "--out", str(tmp_path / "f.npy")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == "signfeat-test/dino" and printed["revision"] == commit and printed["shape"] == [3, 32]
