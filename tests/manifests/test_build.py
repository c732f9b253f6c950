from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from manifests.build import build_manifest
from manifests.demo_corpus import Sentence
from manifests.keys import key_from_id
from manifests.schema import MANIFEST_SCHEMA, SCHEMA_VERSION, SCHEMA_VERSION_KEY, read_manifest
from pipeline.errors import SignfeatError


def _annotation_rows(paths) -> int:
    n = 0
    for p in paths:
        lines = [line for line in Path(p).read_text(encoding="utf-8").splitlines() if line.strip()]
        n += len(lines) - (0 if p.endswith(".jsonl") else 1)  # minus the header
    return n


def test_every_annotation_row_lands_in_the_manifest(demo_manifest, demo_corpus):
    table = pq.read_table(demo_manifest)
    assert table.num_rows == _annotation_rows(demo_corpus["annotations"])


def test_bad_items_get_the_right_status(demo_manifest, demo_corpus):
    rows = pq.read_table(demo_manifest).to_pylist()
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    for clip_id, truth in demo_corpus["truth"].items():
        first = by_id[clip_id][0]
        assert first["status"] == truth["status"], (clip_id, first["error"])
        if truth["status"] != "ok":
            assert first["error"], clip_id
    expected_bad = {"bad-truncated": "corrupt", "bad-empty": "empty_file", "bad-text": "unreadable", "bad-notext": "missing_text",
                    "bad-empty-folder": "empty_folder", "bad-past-end": "range_out_of_bounds"}
    for clip_id, status in expected_bad.items():
        assert by_id[clip_id][0]["status"] == status
    dup = [r for r in by_id["clip-0002"]]
    assert [r["status"] for r in dup] == ["ok", "duplicate_id"]
    # named by the file and line of the row it clashes with (it was "manifest row 2", a 0-based index)
    clips_csv = Path(demo_corpus["root"]) / "annotations" / "clips.csv"
    lines = clips_csv.read_text().splitlines()
    first_line = next(n for n, line in enumerate(lines, start=1) if line.startswith("clip-0002,"))
    assert dup[1]["error"] == f"id 'clip-0002' already used at {clips_csv}:{first_line}"


def test_probed_values_match_what_was_written(demo_manifest, demo_corpus):
    rows = {r["id"]: r for r in pq.read_table(demo_manifest).to_pylist() if r["status"] == "ok"}
    for clip_id, truth in demo_corpus["truth"].items():
        if truth["status"] != "ok":
            continue
        row = rows[clip_id]
        assert row["num_frames"] == Sentence(tuple(truth["words"]), truth["signer"]).num_frames, clip_id
        assert row["key"] == key_from_id(clip_id)
        expected_fps = 30.0 if truth["layout"] == "csl" else 25.0
        assert row["fps"] == pytest.approx(expected_fps)
        assert row["duration_s"] == pytest.approx(row["num_frames"] / expected_fps)
        assert row["bytes"] > 0 and len(row["content_hash"]) == 32
    assert rows["dup-of-clip-0003"]["content_hash"] == rows["clip-0003"]["content_hash"]
    hashes = [r["content_hash"] for k, r in rows.items() if k != "dup-of-clip-0003"]
    assert len(set(hashes)) == len(hashes)
    assert rows["gebärde-1"]["codec"] == "h264" and rows["gebärde-1"]["path"].endswith("Gebärde Nr 1.mkv")
    assert {r["codec"] for r in rows.values() if r["source_kind"] == "frames"} >= {"png", "jpeg", "jpeg+png"}


def test_written_parquet_has_the_declared_schema(demo_manifest):
    table = read_manifest(demo_manifest)
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert table.schema.metadata[SCHEMA_VERSION_KEY].decode() == SCHEMA_VERSION
    assert pq.read_schema(demo_manifest).field("num_frames").type == MANIFEST_SCHEMA.field("num_frames").type


def test_build_rejects_bad_arguments(tmp_path, demo_corpus):
    ann = [Path(demo_corpus["annotations"][0])]
    with pytest.raises(SignfeatError, match="unknown annotation format"):
        build_manifest(ann, tmp_path / "m.parquet", fmt="elan", root=tmp_path)
    with pytest.raises(SignfeatError, match="not found"):
        build_manifest([tmp_path / "nope.csv"], tmp_path / "m.parquet", root=tmp_path)
    with pytest.raises(SignfeatError, match="not a folder"):
        build_manifest(ann, tmp_path / "m.parquet", root=tmp_path / "nowhere")


def test_a_chunk_demuxes_and_hashes_a_long_video_once_for_all_its_ranges(tmp_path, monkeypatch):
    import manifests.probe as probe
    from tests.helpers import index_frame, write_video

    video = write_video(tmp_path / "long.mp4", np.stack([index_frame(i % 25) for i in range(30)]))
    rows = [{"_row": i, "source_kind": "range", "path": str(video), "start_s": s, "end_s": s + 0.4} for i, s in enumerate((0.0, 0.4, 0.8))]
    alone = [probe.probe_clip(r) for r in rows]
    calls = {"timeline": 0, "hash": 0}
    timeline, file_hash = probe.read_timeline, probe.file_hash
    monkeypatch.setattr(probe, "read_timeline", lambda p: calls.__setitem__("timeline", calls["timeline"] + 1) or timeline(p))
    monkeypatch.setattr(probe, "file_hash", lambda p, h=None: calls.__setitem__("hash", calls["hash"] + 1) or file_hash(p, h))
    chunk = probe.probe_chunk(rows).to_pylist()
    assert calls == {"timeline": 1, "hash": 1}
    assert [{k: v for k, v in r.items() if k != "_row"} for r in chunk] == alone
    assert [r["num_frames"] for r in chunk] == [10, 10, 10]


def test_ranges_that_select_the_same_frames_share_a_content_hash(tmp_path):
    """An open start and start 0.0 (the same frames) had two hashes, so curation kept both as distinct clips."""
    from manifests.probe import probe_clip
    from tests.helpers import index_frame, write_video

    video = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(25)]))  # 1 s at 25 fps
    def hash_of(**row):
        return probe_clip({"source_kind": "range", "path": str(video), "start_s": None, "end_s": None, **row})["content_hash"]

    first_half = hash_of(end_s=0.5)
    assert hash_of(start_s=0.0, end_s=0.5) == hash_of(start_s=0.0, end_s=0.49) == first_half  # frames 0-12 all
    assert hash_of(start_s=0.04, end_s=0.5) != first_half and hash_of(end_s=0.53) != first_half  # one frame less / more
    whole = probe_clip({"source_kind": "video", "path": str(video)})["content_hash"]
    assert hash_of(start_s=0.0, end_s=1.2) == whole != first_half  # a range over the whole video is the video


def test_a_ranges_last_frame_is_shown_until_the_next_frame_of_a_variable_rate_video(tmp_path):
    """10 fps for 2 s, then 30 fps: the range [1, 2) holds 10 frames 0.1 s apart. Its last frame took the whole
    video's median gap (1/30 s): duration 0.933 s, fps 10.71, where the frames last 1 s at 10 fps."""
    from manifests.probe import probe_clip
    from pipeline.decode import DecodeOptions, decode_clip
    from tests.helpers import index_frame, write_video

    pts_ms = [100 * i for i in range(20)] + [2000 + round(1000 * i / 30) for i in range(60)]
    video = write_video(tmp_path / "vfr.mp4", np.stack([index_frame(i % 25) for i in range(80)]), pts_ms=pts_ms)
    row = {"source_kind": "range", "path": str(video), "start_s": 1.0, "end_s": 2.0}
    probed = probe_clip(row)
    assert probed["num_frames"] == 10 and probed["duration_s"] == pytest.approx(1.0, abs=1e-6) and probed["fps"] == pytest.approx(10.0)
    clip = decode_clip(row)
    assert len(clip.frames) == 10 and clip.fps == pytest.approx(10.0) and clip.source_duration_s == pytest.approx(1.0, abs=1e-6)
    assert len(decode_clip(row, DecodeOptions(target_fps=5.0)).frames) == 5  # instants 0, 0.2, ..., 0.8 of a 1 s clip
    whole_end = probe_clip({"source_kind": "range", "path": str(video), "start_s": 2.5, "end_s": 4.0})
    assert whole_end["duration_s"] == pytest.approx(4.0 - 2.5, abs=2e-3)  # the video's last frame: 1/30 s, its last gaps


def test_a_clip_at_a_variable_rate_videos_end_and_a_range_before_a_freeze_keep_their_own_duration(tmp_path):
    """30 fps for 2 s, then 10 fps: the video's last frame was shown for the whole video's median gap (1/30 s), so
    the range [3, 4) was 0.933 s at 10.7 fps. A frame before a gap (a freeze) was shown until the next frame even
    past the range's end: [0, 2.5) of a video with nothing between 1.97 s and 6 s was 6 s at 10 fps."""
    from manifests.probe import probe_clip
    from pipeline.decode import DecodeOptions, decode_clip
    from tests.helpers import index_frame, write_video

    pts_ms = [round(1000 * i / 30) for i in range(60)] + [2000 + 100 * i for i in range(20)]
    video = write_video(tmp_path / "vfr.mp4", np.stack([index_frame(i % 25) for i in range(80)]), pts_ms=pts_ms)
    row = {"source_kind": "range", "path": str(video), "start_s": 3.0, "end_s": 4.0}
    probed = probe_clip(row)
    assert (probed["num_frames"], probed["duration_s"], probed["fps"]) == (10, pytest.approx(1.0, abs=1e-6), pytest.approx(10.0))
    assert len(decode_clip(row, DecodeOptions(target_fps=25.0)).frames) == 25
    pts_ms = [round(1000 * i / 30) for i in range(60)] + [6000 + round(1000 * i / 30) for i in range(30)]
    freeze = write_video(tmp_path / "freeze.mp4", np.stack([index_frame(i % 25) for i in range(90)]), pts_ms=pts_ms)
    row = {"source_kind": "range", "path": str(freeze), "start_s": 0.0, "end_s": 2.5}
    probed = probe_clip(row)
    assert (probed["num_frames"], probed["duration_s"]) == (60, pytest.approx(2.5, abs=1e-6))  # not 6 s
    clip = decode_clip(row, DecodeOptions(target_fps=10.0))
    assert len(clip.frames) == 25 and clip.source_duration_s == pytest.approx(2.5)  # instants 0 .. 2.4 s, none past the range
    assert probe_clip({"source_kind": "video", "path": str(freeze)})["duration_s"] == pytest.approx(7.0, abs=2e-3)  # whole: unchanged
    # a one-frame range before the freeze: its fps is its own frame's, as the manifest's (it was the video's 30)
    one = decode_clip({"source_kind": "range", "path": str(freeze), "start_s": 1.95, "end_s": 2.5})
    assert len(one.frames) == 1 and one.fps == pytest.approx(1 / (2.5 - 59 / 30), rel=1e-3)
    # a slideshow tail (frames 2 s apart after 1.6 s at 25 fps): the video lasts until its last frame's usual gap
    # ends, so a range ending after the last frame's time but inside that was not range_out_of_bounds
    pts_ms = [40 * i for i in range(40)] + [1600 + 2000 * i for i in range(10)]
    slides = write_video(tmp_path / "slides.mp4", np.stack([index_frame(i % 25) for i in range(50)]), pts_ms=pts_ms)
    tail = probe_clip({"source_kind": "range", "path": str(slides), "start_s": 19.0, "end_s": 21.2})
    assert (tail["num_frames"], tail["duration_s"]) == (1, pytest.approx(2.0, abs=1e-3))  # 19.6 s to 21.6 s: its usual gap
    # a constant-rate range whose end falls between two frames keeps whole frames: 8 frames of 0.1 s, 10 fps
    cfr = write_video(tmp_path / "cfr.mp4", np.stack([index_frame(i) for i in range(20)]), fps=10)
    probed = probe_clip({"source_kind": "range", "path": str(cfr), "start_s": 0.5, "end_s": 1.25})
    assert (probed["num_frames"], probed["duration_s"], probed["fps"]) == (8, pytest.approx(0.8), pytest.approx(10.0))




def test_a_video_that_fails_to_probe_is_read_once_for_all_its_ranges(tmp_path, monkeypatch):
    # 2000 ranges of one broken video demuxed it 2000 times (16 s for a tiny file)
    import manifests.probe as probe

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    rows = [{"_row": i, "source_kind": "range", "path": str(broken), "start_s": i * 0.1, "end_s": i * 0.1 + 0.1} for i in range(5)]
    calls = []
    timeline = probe.read_timeline
    monkeypatch.setattr(probe, "read_timeline", lambda p: calls.append(p) or timeline(p))
    chunk = probe.probe_chunk(rows).to_pylist()
    assert len(calls) == 1
    assert {r["status"] for r in chunk} == {"unreadable"} and len({r["error"] for r in chunk}) == 1


def _png_folder(folder: Path, n: int = 4) -> Path:
    from PIL import Image

    from tests.helpers import index_frame

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(index_frame(i)).save(folder / f"{i:03d}.png")
    return folder


def test_a_frame_file_name_that_is_not_utf8_gets_a_status_not_a_crash(tmp_path):
    """A Windows zip unpacked on Linux leaves latin-1 names ('m\\xfcde'): Python gives them surrogate escapes, which
    pyarrow cannot store; the error message naming the file crashed the whole build (no manifest written)."""
    import os

    import manifests.probe as probe

    folder = _png_folder(tmp_path / "clip")
    from PIL import Image

    with open(os.fsencode(str(folder)) + b"/003_m\xfcde.png", "wb") as f:  # the 4th frame, of another size
        Image.new("RGB", (32, 32)).save(f, format="PNG")
    (folder / "003.png").unlink()
    row = probe.probe_chunk([{"_row": 0, "source_kind": "frames", "path": str(folder)}]).to_pylist()[0]
    assert row["status"] == "mixed_sizes" and "003_m\\xfcde.png" in row["error"], row


def test_a_folder_of_frames_with_a_parameters_side_file_is_a_frame_folder(tmp_path):
    """Pose tools leave keypoints.npz next to the frames: the folder was taken for SMPL-X parameters (bad_params)."""
    from manifests.formats import _table_kind

    folder = _png_folder(tmp_path / "clip")
    np.savez(folder / "keypoints.npz", kp=np.zeros((4, 17, 2)))
    assert _table_kind(None, folder, None, None) == "frames"
    params = tmp_path / "params"
    params.mkdir()
    np.savez(params / "000000.npz", body_pose=np.zeros(63))
    assert _table_kind(None, params, None, None) == "smplx"


def test_probing_a_png_folder_reads_headers_only(tmp_path, monkeypatch):
    """PIL's getexif() on a PNG decoded the whole image (to look for an eXIf chunk after the pixels): 25x the cost
    of the headers over a PHOENIX folder. An orientation in an eXIf chunk before the pixels still counts."""
    from PIL import Image, PngImagePlugin

    import manifests.probe as probe

    plain = _png_folder(tmp_path / "plain", n=5)
    turned = _png_folder(tmp_path / "turned", n=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    for f in turned.iterdir():
        Image.open(f).save(f, exif=exif)
    decoded = []
    load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: decoded.append(self.filename) or load(self))
    row = probe.probe_chunk([{"_row": 0, "source_kind": "frames", "path": str(plain)}]).to_pylist()[0]
    assert row["status"] == "ok" and (row["width"], row["height"], row["num_frames"]) == (64, 48, 5)
    assert {Path(f).name for f in decoded} == {"000.png"}  # the first frame is decoded (a check that it reads), no other
    row = probe.probe_chunk([{"_row": 0, "source_kind": "frames", "path": str(turned)}]).to_pylist()[0]
    assert row["status"] == "ok" and (row["width"], row["height"], row["num_frames"]) == (48, 64, 3)


def test_demo_corpus_replaces_only_a_demo_corpus_and_is_byte_deterministic(tmp_path):
    """`demo-corpus OUT` deleted any OUT it was given (a user's corpus folder with it), and its Matroska clip
    differed in every run (a random segment UID), so its content hash, and the manifest, changed."""
    import hashlib

    from manifests.demo_corpus import make_demo_corpus
    from pipeline.errors import SignfeatError

    mine = tmp_path / "mycorpus"
    (mine / "videos").mkdir(parents=True)
    (mine / "videos" / "important.mp4").write_text("precious")
    with pytest.raises(SignfeatError, match="is not empty and is no demo corpus"):
        make_demo_corpus(mine, clips=16, size=32)
    assert (mine / "videos" / "important.mp4").read_text() == "precious"

    def digests(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != "demo_corpus.json"}

    first = make_demo_corpus(tmp_path / "d1", seed=3, clips=16, size=32)
    make_demo_corpus(tmp_path / "d2", seed=3, clips=16, size=32)
    assert digests(tmp_path / "d1") == digests(tmp_path / "d2") and any(k.endswith(".mkv") for k in digests(tmp_path / "d1"))
    again = make_demo_corpus(tmp_path / "d1", seed=3, clips=16, size=32)  # an earlier demo corpus is replaced
    assert again["annotations"] == first["annotations"]
    import multiprocessing
    import time

    interrupted = tmp_path / "d3"  # killed half-way: a rerun replaced nothing ("is no demo corpus")
    job = multiprocessing.get_context("spawn").Process(target=make_demo_corpus, args=(interrupted,), kwargs={"clips": 400, "size": 32})
    job.start()
    while not (interrupted / "annotations").exists() and job.is_alive():
        time.sleep(0.05)
    job.kill()
    job.join()
    make_demo_corpus(interrupted, seed=3, clips=16, size=32)
    assert digests(interrupted) == digests(tmp_path / "d1")


def test_a_file_name_that_is_not_utf8_is_a_bad_path_row_not_a_crash(tmp_path):
    """A How2Sign video in a folder named with a byte that is not UTF-8 (Linux allows it) crashed the build at
    its end (Parquet holds UTF-8 only): no manifest at all."""
    import os

    folder = os.path.join(os.fsencode(tmp_path), b"raw", b"bad\xffdir")
    os.makedirs(folder)
    open(os.path.join(folder, b"X-1-rgb_front.mp4"), "wb").close()
    ann = tmp_path / "how2sign_realigned_test.csv"
    ann.write_text("VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
                   "X\tX-1-rgb_front\tX_0\tX_0-1-rgb_front\t1.0\t2.0\thello\n", encoding="utf-8")
    build_manifest([ann], tmp_path / "m.parquet", root=tmp_path, progress=False)
    (row,) = read_manifest(tmp_path / "m.parquet").to_pylist()
    assert row["status"] == "bad_path" and "bad\\xffdir" in row["path"] and "not UTF-8" in row["error"], row
    assert row["text"] == "hello" and row["split"] == "test"


def test_a_folder_the_build_may_not_look_into_is_an_unreadable_row(tmp_path, monkeypatch):
    """A frame folder without search permission crashed the build (PermissionError while telling frames from
    SMPL-X parameters) before anything was probed. The file system's refusal is simulated (tests may run as root)."""
    from manifests.formats import parse_table

    (tmp_path / "locked").mkdir()
    (tmp_path / "open").mkdir()
    ann = tmp_path / "corpus_train.csv"
    ann.write_text("id,path,text\na,locked,hello\nb,open,world\n", encoding="utf-8")
    iterdir = Path.iterdir

    def refuse_locked(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse_locked)
    a, b = parse_table(ann, root=tmp_path)
    assert (a["status"], a["text"], a["split"]) == ("unreadable", "hello", "train") and "Permission denied" in a["error"]
    assert b["status"] is None and b["source_kind"] == "frames"


def test_a_name_found_twice_under_a_folder_that_is_not_utf8_and_such_a_root_are_no_crash(tmp_path):
    """The "found twice" message named a folder with a byte that is not UTF-8: the build died at its end. A root
    with such a byte died inside Ray's start with a traceback."""
    import os

    for folder in (b"raw", b"extra\xfe"):
        os.makedirs(os.path.join(os.fsencode(tmp_path), folder))
        open(os.path.join(os.fsencode(tmp_path), folder, b"X_0-1-rgb_front.mp4"), "wb").close()
    ann = tmp_path / "how2sign_realigned_test.csv"
    ann.write_text("VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
                   "X\tX-1-rgb_front\tX_0\tX_0-1-rgb_front\t1.0\t2.0\thello\n", encoding="utf-8")
    build_manifest([ann], tmp_path / "m.parquet", root=tmp_path, progress=False)
    (row,) = read_manifest(tmp_path / "m.parquet").to_pylist()
    assert row["status"] == "bad_annotation" and "extra\\xfe" in row["error"], row
    bad_root = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"root\xfe"))
    os.makedirs(bad_root)
    with pytest.raises(SignfeatError, match=r"root\\xfe: the path is not UTF-8"):
        build_manifest([ann], tmp_path / "m2.parquet", root=Path(bad_root), progress=False)


def test_a_frame_image_the_probe_may_not_open_is_unreadable_not_corrupt(tmp_path, monkeypatch):
    import PIL.Image

    from manifests.probe import probe_clip
    from tests.helpers import index_frame

    (tmp_path / "f").mkdir()
    PIL.Image.fromarray(index_frame(0)).save(tmp_path / "f" / "0.png")
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    got = probe_clip({"source_kind": "frames", "path": str(tmp_path / "f"), "fps": 25.0})
    assert got["status"] == "unreadable" and "Permission denied" in got["error"], got


def test_an_fps_a_video_overrules_is_noted_not_dropped_in_silence(tmp_path):
    """A table's fps column on a video row (50 for a 25 fps video) was replaced by the video's rate without a word."""
    from tests.helpers import write_video

    write_video(tmp_path / "v.mp4", np.zeros((5, 32, 32, 3), np.uint8), fps=25)
    ann = tmp_path / "t.csv"
    # 25.01 for 25: as 30 for an NTSC 29.97 fps video (0.1 % off), another rate than the video's
    ann.write_text("id,path,text,fps\nwrong,v.mp4,a,50\nright,v.mp4,b,25\nnone,v.mp4,c,\nclose,v.mp4,d,25.01\n", encoding="utf-8")
    summary = build_manifest([ann], tmp_path / "m.parquet", root=tmp_path, progress=False, num_cpus=1)
    assert summary["notes"] == ["2 row(s) give an fps that their video (or parameter file) overrules with its own rate, e.g. wrong, close: "
                                "the annotation's fps is used only for frame folders and files that record none"]
    assert read_manifest(tmp_path / "m.parquet").column("fps").to_pylist() == [25.0, 25.0, 25.0, 25.0]


def test_the_demo_corpus_keeps_each_how2sign_video_in_one_split(tmp_path):
    """Its How2Sign-style raw videos held sentences of train, dev and test at once: `make demo`'s curate warned that
    the demo's test split shares recordings with training (as How2Sign itself never does)."""
    import csv

    from manifests.demo_corpus import make_demo_corpus

    summary = make_demo_corpus(tmp_path / "corpus", seed=0, clips=64, size=16)
    splits_of: dict[str, set] = {}
    for path in (Path(summary["root"]) / "annotations").glob("how2sign_realigned_*.csv"):
        for row in csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"):
            splits_of.setdefault(row["VIDEO_NAME"], set()).add(path.stem.rsplit("_", 1)[1])
    assert len(splits_of) >= 3 and all(len(s) == 1 for s in splits_of.values()), splits_of
    assert set().union(*splits_of.values()) == {"train", "val", "test"}
