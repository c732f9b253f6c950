import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from manifests.demo_corpus import Sentence, render_sentence
from pipeline.decode import BACKENDS, DecodeOptions, decode_clip, read_timeline, resample_indices
from pipeline.errors import ClipError
from tests.helpers import frame_index, index_frame, psnr, write_video


def _decode_all(clip, **kw):
    return {b: decode_clip(clip, DecodeOptions(backend=b, **kw)) for b in BACKENDS}


def _assert_same(results):
    ref = results["pyav"]
    for name, got in results.items():
        assert got.frames.shape == ref.frames.shape, name
        assert np.array_equal(got.frames, ref.frames), f"{name} differs from pyav"
        assert got.fps == pytest.approx(ref.fps)
        np.testing.assert_allclose(got.timestamps, ref.timestamps)


def _ok_rows(manifest):
    return [r for r in pq.read_table(manifest).to_pylist() if r["status"] == "ok"]


def test_backends_identical_on_demo_videos_and_ranges(demo_manifest):
    rows = [r for r in _ok_rows(demo_manifest) if r["source_kind"] in ("video", "range")]
    assert {r["source_kind"] for r in rows} == {"video", "range"}
    for row in rows:
        results = _decode_all(row)
        _assert_same(results)
        assert results["decord"].frames.shape[0] == row["num_frames"]


def test_decoded_frames_match_what_the_demo_corpus_wrote(demo_manifest, demo_corpus):
    truth = demo_corpus["truth"]
    seen = set()
    for row in _ok_rows(demo_manifest):
        t = truth[row["id"]]
        rendered = render_sentence(Sentence(tuple(t["words"]), t["signer"]), row["width"], row["height"])
        got = decode_clip(row, DecodeOptions(backend="decord")).frames
        assert got.shape == rendered.shape, row["id"]
        if t["layout"] == "phoenix":  # PNG: lossless
            assert np.array_equal(got, rendered), row["id"]
        else:  # H.264 / JPEG: lossy but close, and frame-aligned (a shift by one frame would fail this)
            assert psnr(got, rendered) > 30, row["id"]
            assert psnr(got[1:], rendered[:-1]) < psnr(got, rendered) - 3
        seen.add(t["layout"])
    assert seen == {"clips", "how2sign", "phoenix", "csl"}


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_videos_are_turned_upright_by_every_backend(tmp_path, rotation):
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    frames = np.stack([index_frame(i) for i in range(6)])
    plain = write_video(tmp_path / "plain.mp4", frames)
    rotated = tmp_path / f"rot{rotation}.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotation}", str(rotated)], check=True)
    results = _decode_all({"source_kind": "video", "path": str(rotated)})
    _assert_same(results)
    upright = decode_clip({"source_kind": "video", "path": str(plain)}).frames
    # FFmpeg's rotate=R means "turn R degrees counter-clockwise to display"
    expected = np.rot90(upright, k=rotation // 90, axes=(1, 2))
    assert np.array_equal(results["decord"].frames, expected)
    assert read_timeline(str(rotated)).width == expected.shape[2]


def test_variable_frame_rate_resampling_uses_timestamps(tmp_path):
    pts = [0, 40, 80, 200, 240, 480, 520, 560]  # ms: gaps of 40, 120 and 240 ms
    frames = np.stack([index_frame(i) for i in range(len(pts))])
    path = write_video(tmp_path / "vfr.mp4", frames, pts_ms=pts)
    tl = read_timeline(str(path))
    np.testing.assert_allclose(tl.times_s, np.array(pts) / 1000, atol=1e-6)
    results = _decode_all({"source_kind": "video", "path": str(path)}, target_fps=10)
    _assert_same(results)
    got = [frame_index(f) for f in results["decord"].frames]
    # the clip lasts 600 ms (last frame at 560 + the median gap of 40, as the manifest's duration_s): 10 fps
    # instants 0, 100, ..., 500 ms lie in it -> the last frame shown at or before each:
    # 0->f0 (0 ms), 100->f2 (80), 200->f3 (200), 300->f4 (240), 400->f4 (240), 500->f5 (480)
    assert got == [0, 2, 3, 4, 4, 5]
    assert results["decord"].fps == 10


def test_range_is_half_open_on_frame_timestamps(tmp_path):
    frames = np.stack([index_frame(i) for i in range(20)])
    path = write_video(tmp_path / "long.mp4", frames, fps=10)
    clip = {"source_kind": "range", "path": str(path), "start_s": 0.5, "end_s": 1.2}
    results = _decode_all(clip)
    _assert_same(results)
    assert [frame_index(f) for f in results["torchcodec"].frames] == [5, 6, 7, 8, 9, 10, 11]
    np.testing.assert_allclose(results["pyav"].timestamps, np.arange(7) / 10, atol=1e-6)
    with pytest.raises(ClipError) as err:
        decode_clip({**clip, "start_s": 5.0, "end_s": 6.0})
    assert err.value.kind == "range_out_of_bounds"
    # a one-frame range records the stream's rate and the frame's length as digits tell them (24.99999999999998 and
    # 0.040000000000000036 at 25 fps)
    longer = write_video(tmp_path / "25fps.mp4", np.zeros((75, 32, 32, 3), np.uint8), fps=25)
    one = decode_clip({"source_kind": "range", "path": str(longer), "start_s": 1.0, "end_s": 1.02})
    assert (len(one.frames), one.fps, one.source_duration_s) == (1, 25.0, 0.04)
    # the end as given, and why: rounded to 3 decimals it read [1.900, 2.500), which is allowed
    with pytest.raises(ClipError, match=r"range \[1.9, 2.5001\) s ends more than 0.5 s after its end: .*long.mp4 lasts 2 s"):
        decode_clip({**clip, "start_s": 1.9, "end_s": 2.5001})
    with pytest.raises(ClipError) as err:
        decode_clip({**clip, "start_s": 1.0, "end_s": 1.0})
    assert err.value.kind == "bad_range"
    # between two frames: the range as given (it was rounded to 3 decimals) and the frames around it
    with pytest.raises(ClipError, match=r"range \[0.5101, 0.5901\) s of .* holds no frame \(the frames around it: 0.5 s, 0.6 s\)"):
        decode_clip({**clip, "start_s": 0.5101, "end_s": 0.5901})


@pytest.mark.parametrize("suffix,codec", [(".mkv", "libx264"), (".webm", "libvpx-vp9"), (".avi", "mpeg4"), (".mov", "libx264")])
def test_other_containers_decode_the_same_everywhere(tmp_path, suffix, codec):
    frames = np.stack([index_frame(i) for i in range(8)])
    path = write_video(tmp_path / f"Gebärde mit Leerzeichen{suffix}", frames, codec=codec)
    results = _decode_all({"source_kind": "video", "path": str(path)})
    _assert_same(results)
    assert [frame_index(f) for f in results["decord"].frames] == list(range(8))


def test_frame_folder_natural_order_mixed_formats_odd_size(tmp_path):
    folder = tmp_path / "手语 clip"
    folder.mkdir()
    for i in range(12):  # images1.png .. images12: lexical order would put 10, 11 before 2
        img = index_frame(i, height=47, width=65)
        name = f"images{i + 1}.png" if i % 3 else f"images{i + 1}.jpg"
        Image.fromarray(img).save(folder / name, quality=98)
    (folder / "notes.txt").write_text("not a frame")
    clip = decode_clip({"source_kind": "frames", "path": str(folder), "fps": 12.0})
    assert clip.frames.shape == (12, 47, 65, 3)
    assert [frame_index(f) for f in clip.frames] == list(range(12))
    assert clip.fps == 12.0
    np.testing.assert_allclose(clip.timestamps, np.arange(12) / 12)


def test_frame_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipError) as err:
        decode_clip({"source_kind": "frames", "path": str(empty)})
    assert err.value.kind == "empty_folder"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(index_frame(0)).save(mixed / "0001.png")
    Image.fromarray(index_frame(1, height=30)).save(mixed / "0002.png")
    with pytest.raises(ClipError) as err:
        decode_clip({"source_kind": "frames", "path": str(mixed)})
    assert err.value.kind == "mixed_sizes"
    with pytest.raises(ClipError) as err:
        decode_clip({"source_kind": "frames", "path": str(tmp_path / "nope")})
    assert err.value.kind == "missing_file"


def test_limits_fail_before_decoding(tmp_path):
    frames = np.stack([index_frame(i) for i in range(20)])
    path = write_video(tmp_path / "c.mp4", frames)
    with pytest.raises(ClipError) as err:
        decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(frame_limit=19))
    assert err.value.kind == "too_long"
    with pytest.raises(ClipError) as err:  # 20 x 48 x 64 x 3 bytes = 0.18 MiB
        decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(max_clip_mib=0.1))
    assert err.value.kind == "too_long"
    # max_frames subsamples instead, so the limit then applies to what is kept
    clip = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(frame_limit=5, max_frames=5))
    assert [frame_index(f) for f in clip.frames] == [0, 5, 10, 14, 19]


def test_resample_indices_reference_cases():
    times = np.arange(10) / 25.0
    pos, fps = resample_indices(times, None, None)
    assert list(pos) == list(range(10)) and fps == pytest.approx(25)
    # the rate of exact k / fps times is that fps, not 29.999999999999996 (the sample JSON recorded it so)
    assert [resample_indices(np.arange(n) / r, None, None)[1] for n, r in ((34, 30.0), (47, 25.0), (9, 24.0))] == [30.0, 25.0, 24.0]
    assert resample_indices(np.arange(300) * (1001 / 30000), None, None)[1] == pytest.approx(30000 / 1001, rel=1e-9)
    pos, fps = resample_indices(times, 50.0, None)  # upsampling repeats frames
    assert list(pos) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9] and fps == 50
    pos, _ = resample_indices(times, 12.5, None)
    assert list(pos) == [0, 2, 4, 6, 8]
    # every instant inside the clip: 22 frames at 25 fps last 0.88 s, so 0.8 s is one (floor(8.8) dropped it);
    # 61 frames at 60 fps to 20 fps: HumanML3D's poses[::3], 21 frames
    pos, _ = resample_indices(np.arange(22) / 25.0, 10.0, None)
    assert list(pos) == [0, 2, 5, 7, 10, 12, 15, 17, 20]
    assert list(resample_indices(np.arange(61) / 60.0, 20.0, None)[0]) == list(range(0, 61, 3))
    # 150 frames at 29.97 fps last 5.005 s: the instant 5.0 s is inside the last frame, whatever float error says
    counts = {len(resample_indices(np.arange(150) * (1001 / 30000) + offset, 10.0, None)[0]) for offset in (0.0, 1e-15, 0.1, 7.3)}
    assert counts == {51}
    # 26 frames at 25 fps last 1.04 s: instants 0 and 1.0 s (frame 25 is shown at 1.00 s), as HumanML3D's poses[::25]
    assert list(resample_indices(np.arange(26) / 25.0, 1.0, None)[0]) == [0, 25]
    # Matroska's millisecond timestamps: 29.97 fps frames at 0, 33, 67, 100 ms... resampled to their own rate are each
    # frame once (frame 2, at 67 ms after the instant 66.73 ms, was skipped and frame 1 taken twice), and to half of
    # it every other frame, as on the exact times
    ms = np.round(np.arange(90) * 1001 / 30000, 3)
    assert list(resample_indices(ms, 30000 / 1001, None)[0]) == list(range(90))
    assert list(resample_indices(ms, 15000 / 1001, None)[0]) == list(range(0, 90, 2))
    assert list(resample_indices(np.round(np.arange(60) / 30, 3), 15.0, None)[0]) == list(range(0, 60, 2))
    # millisecond timestamps: a 4 s clip at 10 fps whose last frame ends at 4.0003 s has 40 instants, not 41
    assert len(resample_indices(np.round(np.arange(100) / 25.0 + 0.0003 * np.arange(100) / 99, 4), 10.0, None, 0.04)[0]) == 40
    # the clip's end is its last frame's end at the video's median frame duration (as the manifest's duration_s), not
    # its mean gap: a pause does not stretch the last frame (10 frames at 0.04 s, one 0.5 s pause: 0.36 + 0.5 + 0.04 s)
    paused = np.concatenate([np.arange(5) * 0.04, 0.16 + 0.5 + np.arange(1, 6) * 0.04])
    assert len(resample_indices(paused, 25.0, None, 0.04)[0]) == int(np.ceil((paused[-1] + 0.04) * 25 - 1e-9))


def test_bad_files_are_clip_errors(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello")
    for name, kind in [("zero.mp4", "empty_file"), ("text.mp4", "unreadable"), ("missing.mp4", "missing_file")]:
        for backend in BACKENDS:
            with pytest.raises(ClipError) as err:
                decode_clip({"source_kind": "video", "path": str(tmp_path / name)}, DecodeOptions(backend=backend))
            assert err.value.kind == kind


def test_options_are_validated():
    with pytest.raises(ValueError):
        DecodeOptions(backend="opencv")
    with pytest.raises(ValueError):
        DecodeOptions(target_fps=0)


def test_frame_folder_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    # PIL's convert("RGB") clips 16-bit values to 255 (a white clip); the frames must keep their content.
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (3, 48, 64), dtype=np.uint8)
    for i, g in enumerate(grey8):
        Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / f"{i}.png")  # 16-bit PNG, mode I;16
    assert Image.open(tmp_path / "0.png").mode.startswith("I")
    clip = decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    assert np.array_equal(clip.frames, np.repeat(grey8[..., None], 3, axis=3))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_frame_folder_transparency_is_composited_onto_white_as_the_hf_processors_do(tmp_path, mode):
    # convert("RGB") dropped the alpha and showed the colours under transparent pixels; the models' Hugging
    # Face processors (transformers' convert_to_rgb) put them onto white
    from transformers.image_transforms import convert_to_rgb

    rng = np.random.default_rng(1)
    for i in range(2):
        rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
        rgba[..., 3] = rng.choice([0, 128, 255], (30, 40))
        img = Image.fromarray(rgba if mode == "RGBA" else rgba[..., [0, 3]], "RGBA" if mode == "RGBA" else "LA")
        if mode == "P":  # a palette image with one transparent palette entry (tRNS)
            img = Image.fromarray(rgba[..., :3]).quantize(16)
            img.info["transparency"] = 3
        img.save(tmp_path / f"{i}.png", **({"transparency": 3} if mode == "P" else {}))
    clip = decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    for i in range(2):
        with Image.open(tmp_path / f"{i}.png") as img:
            assert img.mode == mode
            want = np.asarray(convert_to_rgb(img))
        assert np.array_equal(clip.frames[i], want)
    # the transparent pixels (a third of them; one palette entry of 16 for P) are white, not what lay under them
    assert (clip.frames == 255).all(axis=-1).mean() > (0.04 if mode == "P" else 0.3)


def _cli_rgba_onto_white(video, decoder: list[str], height: int, width: int) -> np.ndarray:
    """The ffmpeg CLI's RGBA frames of ``video`` (read with the ``decoder`` arguments), put onto white by PIL."""
    rgba = subprocess.run(["ffmpeg", "-v", "error", *decoder, "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgba", "-"],
                          check=True, capture_output=True).stdout
    white = Image.new("RGBA", (width, height), (255, 255, 255))
    return np.stack([np.asarray(Image.alpha_composite(white, Image.fromarray(f, "RGBA")).convert("RGB"))
                     for f in np.frombuffer(rgba, np.uint8).reshape(-1, height, width, 4)])


# VP8 / VP9 WebM keeps the alpha plane beside each frame (alpha_mode=1), which only libvpx's decoders read: the CLI
# needs -c:v libvpx-vp9 before -i to see it
_ALPHA_VIDEOS = {"png": ("mov", []), "qtrle": ("mov", []), "ffv1": ("mkv", []),
                 "libvpx-vp9": ("webm", ["-c:v", "libvpx-vp9"]), "libvpx": ("webm", ["-c:v", "libvpx"])}


@pytest.mark.parametrize("codec, pix_fmt", [("png", "rgba"), ("qtrle", "argb"), ("ffv1", "yuva420p"), ("libvpx-vp9", "yuva420p"),
                                            ("libvpx", "yuva420p")])
def test_a_video_with_an_alpha_channel_is_put_onto_white_as_its_frames_as_images_are(tmp_path, codec, pix_fmt):
    """A video decoded to RGBA (PNG or QuickTime RLE in MOV, FFV1 with alpha) lost its alpha on every backend:
    transparent pixels showed the colour under them (up to 179 levels off the same frames read as PNGs). VP8 /
    VP9 WebM with alpha lost it too: FFmpeg's own decoders, which every backend used, drop its alpha plane."""
    rng = np.random.default_rng(2)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        rgba = rng.integers(0, 256, (32, 48, 4), dtype=np.uint8)
        rgba[..., 3] = rng.choice([0, 77, 255], (32, 48))
        Image.fromarray(rgba, "RGBA").save(frames / f"{i:03d}.png")
    ext, decoder = _ALPHA_VIDEOS[codec]
    video = tmp_path / f"alpha_{codec}.{ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-framerate", "25", "-i", str(frames / "%03d.png"), "-c:v", codec, "-pix_fmt", pix_fmt,
                    *(["-b:v", "1M", "-auto-alt-ref", "0"] if codec == "libvpx" else []), str(video)], check=True)
    assert read_timeline(str(video)).pix_fmt == pix_fmt
    as_images = decode_clip({"source_kind": "frames", "path": str(frames), "fps": 25.0}).frames
    assert (as_images == 255).all(axis=-1).mean() > 0.3  # a third of the pixels are fully transparent
    for backend, clip in _decode_all({"source_kind": "video", "path": str(video)}).items():
        if pix_fmt == "yuva420p":  # subsampled colour: compared to the CLI's RGBA put onto white by PIL
            assert np.array_equal(clip.frames, _cli_rgba_onto_white(video, decoder, 32, 48)), backend
            if codec.startswith("libvpx"):  # lossy: the transparent third still comes out (nearly) white
                assert (clip.frames >= 250).all(axis=-1).mean() > 0.25, backend
        else:
            assert np.array_equal(clip.frames, as_images), backend


def test_a_vp9_alpha_range_after_a_key_frame_keeps_its_alpha(tmp_path):
    """A range that starts after a key frame is decoded from that key frame (a seek): through libvpx as well."""
    rng = np.random.default_rng(3)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(20):
        rgba = np.zeros((32, 48, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 256, 3, dtype=np.uint8)  # one colour per frame
        rgba[:, :24, 3] = 255  # left half opaque, right half transparent
        Image.fromarray(rgba, "RGBA").save(frames / f"{i:03d}.png")
    video = tmp_path / "alpha.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-framerate", "10", "-i", str(frames / "%03d.png"), "-c:v", "libvpx-vp9",
                    "-pix_fmt", "yuva420p", "-g", "5", str(video)], check=True)
    timeline = read_timeline(str(video))
    assert timeline.alpha_decoder == "libvpx-vp9" and len(timeline.keyframe_pts) >= 3
    want = _cli_rgba_onto_white(video, ["-c:v", "libvpx-vp9"], 32, 48)[12:17]
    for backend, clip in _decode_all({"source_kind": "range", "path": str(video), "start_s": 1.2, "end_s": 1.7}).items():
        assert np.array_equal(clip.frames, want), backend
        assert (clip.frames[:, :, 28:] >= 250).all(), backend  # the transparent half is white


def test_frame_folder_skips_hidden_files(tmp_path):
    # macOS writes "._NAME" AppleDouble files (not images) beside every file it copies to a foreign disk
    for i in range(3):
        Image.fromarray(index_frame(i)).save(tmp_path / f"{i}.png")
        (tmp_path / f"._{i}.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    clip = decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    assert [frame_index(f) for f in clip.frames] == [0, 1, 2]


@pytest.mark.parametrize("height,width", [(48, 16), (16, 48), (200, 2)])
def test_small_and_thin_frames_decode_with_every_backend(tmp_path, height, width):
    # decord 0.6.0 fails on these sizes (DECORDArrayCopyFromTo); the clip is not corrupt
    frames = np.stack([index_frame(i, height=height, width=width) for i in range(5)])
    path = write_video(tmp_path / "small.mp4", frames, pix_fmt="yuv444p")
    _assert_same(_decode_all({"source_kind": "video", "path": str(path)}))


@pytest.mark.parametrize("name,codec,pix_fmt,height,width", [("c.mp4", "libx264", "yuv420p10le", 48, 64), ("c.avi", "mpeg4", "yuv420p", 49, 65)])
def test_pyav_converts_to_rgb_as_ffmpeg_does(tmp_path, name, codec, pix_fmt, height, width):
    # PyAV's own rgb24 conversion was several levels off FFmpeg's on 10-bit and odd-sized 4:2:0 frames
    # (mean 7.8, max 116 on a 10-bit clip); the ffmpeg CLI is the independent reference
    path = tmp_path / name
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=25", "-frames:v", "4",
                    "-pix_fmt", pix_fmt, "-c:v", codec, str(path)], check=True)
    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(4, height, width, 3)
    for backend in ("pyav", "torchcodec"):
        got = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(backend=backend)).frames
        assert np.array_equal(got, reference), f"{backend}: max difference {np.abs(got.astype(int) - reference).max()}"


def test_stream_copied_cut_with_edit_list_skips_the_pre_roll(tmp_path):
    # "ffmpeg -ss T -c copy" keeps the packets back to the previous keyframe, flagged discard behind an edit
    # list; decoders drop them. Counting them shifted every frame (decord returned wrong frames, the others
    # failed the clip as corrupt).
    src = write_video(tmp_path / "src.mp4", np.stack([index_frame(i) for i in range(20)]))
    cut = tmp_path / "cut.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", "0.2", "-i", str(src), "-c", "copy", str(cut)], check=True)
    results = _decode_all({"source_kind": "video", "path": str(cut)})
    _assert_same(results)
    assert [frame_index(f) for f in results["decord"].frames] == list(range(5, 20))
    assert read_timeline(str(cut)).times_s[0] == pytest.approx(0.0)


def test_range_times_count_from_the_file_start_when_the_video_starts_late(tmp_path):
    # Audio from 0 s, video from 0.4 s: a range is in the file's time (players, "ffmpeg -ss", annotations),
    # so [0.8, 1.0) holds video frames 10..14 (shown at 0.8..0.96 s), not frames 20..24.
    src = write_video(tmp_path / "src.mp4", np.stack([index_frame(i) for i in range(25)]))
    late = tmp_path / "late.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-itsoffset", "0.4", "-i", str(src), "-f", "lavfi", "-i", "sine=d=1.4",
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(late)], check=True)
    results = _decode_all({"source_kind": "range", "path": str(late), "start_s": 0.8, "end_s": 1.0})
    _assert_same(results)
    assert [frame_index(f) for f in results["decord"].frames] == [10, 11, 12, 13, 14]
    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-ss", "0.8", "-i", str(late), "-t", "0.2", "-map", "0:v", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    assert [frame_index(f) for f in np.frombuffer(raw, np.uint8).reshape(-1, 48, 64, 3)] == [10, 11, 12, 13, 14]


def test_frame_folder_jpeg_exif_orientation_is_applied(tmp_path):
    # phone photos: pixels as captured + EXIF Orientation 6 ("turn 90 degrees clockwise to display")
    from manifests.probe import probe_clip

    for i in range(3):
        img = Image.fromarray(index_frame(i))
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(tmp_path / f"{i}.jpg", quality=95, exif=exif)
    clip = decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    assert clip.frames.shape == (3, 64, 48, 3)
    for i, frame in enumerate(clip.frames):
        assert psnr(frame, np.rot90(index_frame(i), k=-1)) > 30
    probed = probe_clip({"source_kind": "frames", "path": str(tmp_path), "fps": None})
    assert probed["status"] == "ok" and (probed["width"], probed["height"]) == (48, 64)


def test_frame_order_does_not_depend_on_the_listing_order(tmp_path, monkeypatch):
    from pipeline.decode import list_frame_files

    for name in ["1.png", "01.png", "001.jpg", "2.png"]:
        Image.fromarray(index_frame(0)).save(tmp_path / name)
    first = [f.name for f in list_frame_files(str(tmp_path))]
    listing = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(sorted(listing(self))))
    again = [f.name for f in list_frame_files(str(tmp_path))]
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(listing(self))))
    assert first == again == [f.name for f in list_frame_files(str(tmp_path))]
    assert first[-1] == "2.png"


def test_decord_backend_reads_mpegts_and_gif_right(tmp_path):
    # decord returned wrong frames from an MPEG-TS without an error (12..19, then 19 repeated) and failed
    # on a GIF ("Failed to measure duration/frame-count"); both decode through PyAV. (torchcodec 0.17 fails
    # on this TS: "Requested next frame while there are no more frames left to decode".)
    frames = np.stack([index_frame(i) for i in range(20)])
    ts = write_video(tmp_path / "broadcast.ts", frames, codec="mpeg2video")
    gif = tmp_path / "sign.gif"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(write_video(tmp_path / "src.mp4", frames[:8])), str(gif)], check=True)
    for path, count in [(ts, 20), (gif, 8)]:
        clip = {"source_kind": "video", "path": str(path)}
        got = decode_clip(clip, DecodeOptions(backend="decord")).frames
        assert np.array_equal(got, decode_clip(clip, DecodeOptions(backend="pyav")).frames), path.name
        assert [frame_index(f) for f in got] == list(range(count)), path.name


def test_audio_with_cover_art_and_raw_h264_say_what_they_are(tmp_path):
    cover, audio, raw = tmp_path / "cover.png", tmp_path / "song.mp4", tmp_path / "clip.h264"
    Image.fromarray(index_frame(0)).save(cover)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=d=0.5", "-i", str(cover), "-map", "0", "-map", "1",
                    "-c:a", "aac", "-c:v", "png", "-disposition:v", "attached_pic", str(audio)], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(5)]))),
                    "-c", "copy", "-f", "h264", str(raw)], check=True)
    with pytest.raises(ClipError, match="only a cover picture") as err:
        read_timeline(str(audio))
    assert err.value.kind == "no_video_stream"
    with pytest.raises(ClipError, match="none of its .* video packets has a timestamp") as err:
        read_timeline(str(raw))
    assert err.value.kind == "no_frames"


# ---- clips where decord or torchcodec returned wrong frames without an error: each is checked against the ffmpeg CLI

_FF = ["ffmpeg", "-loglevel", "error", "-y"]


def _cli_frames(path: Path, *extra: str) -> np.ndarray:
    """Every frame of the first video stream as the ffmpeg CLI decodes it (the independent reference), sized by ffprobe."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "json", str(path)],
                           check=True, capture_output=True, text=True).stdout
    stream = json.loads(probe)["streams"][0]
    width, height = int(stream["width"]), int(stream["height"])
    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-map", "0:v:0", *extra, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def _open_gop_videos(tmp_path: Path) -> dict[str, Path]:
    src = "testsrc2=size=64x48:rate=30:duration=4"
    x264 = tmp_path / "open_gop.mp4"  # x264 with open GOPs: key frames every 30, B-frames before them reference the previous GOP
    subprocess.run(_FF + ["-f", "lavfi", "-i", src, "-c:v", "libx264", "-x264-params", "open-gop=1:keyint=30:min-keyint=30:scenecut=0:bframes=3", str(x264)], check=True)
    x265 = tmp_path / "open_gop_hevc.mkv"  # x265's default GOPs are open
    subprocess.run(_FF + ["-f", "lavfi", "-i", src, "-c:v", "libx265", "-x265-params", "log-level=error:keyint=30:min-keyint=30:open-gop=1:bframes=4:scenecut=0",
                          str(x265)], check=True)
    cut = tmp_path / "cut_hevc.mkv"  # a stream-copied cut of it: starts with frames the decoder never shows
    subprocess.run(_FF + ["-ss", "1.5", "-i", str(x265), "-c", "copy", str(cut)], check=True)
    return {"x264": x264, "x265": x265, "cut": cut}


def test_ranges_and_resampling_in_open_gop_and_cut_videos_match_the_ffmpeg_cli(tmp_path):
    # decord seeks to the key frame of a range's first frame; in an open GOP that decoded the frames after it
    # with broken references (x264: ~1 level off, some frames one late; the HEVC cut: frames 1-15 for 30-44).
    # torchcodec counted 93 frames in the 90-frame cut and returned frames 1-4 early.
    for name, path in _open_gop_videos(tmp_path).items():
        reference = _cli_frames(path)
        tl = read_timeline(str(path))
        assert len(tl.times_s) == len(reference), name
        for backend in BACKENDS:
            got = decode_clip({"source_kind": "range", "path": str(path), "start_s": 1.0, "end_s": 1.5}, DecodeOptions(backend=backend)).frames
            assert np.array_equal(got, reference[30:45]), f"{name} {backend}: range [1.0, 1.5)"
            got = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(backend=backend, target_fps=10)).frames
            assert np.array_equal(got, reference[::3]), f"{name} {backend}: target_fps=10"
            got = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(backend=backend)).frames
            assert np.array_equal(got, reference), f"{name} {backend}: whole clip"


def test_pyav_starts_a_late_range_at_its_key_frame_with_the_same_frames(tmp_path):
    # a range deep in a long video must not decode everything before it; the frames are those decoded from the start
    from pipeline.decode import _in_order, _key_frame_before, _pyav_by_timestamp, _pyav_from_start

    for name, path in _open_gop_videos(tmp_path).items():
        tl = read_timeline(str(path))
        assert len(tl.keyframe_pts) >= 2, name
        for first in (31, 59, 60, 75):
            want = np.arange(first, min(first + 12, len(tl.times_s)))
            key_pts = _key_frame_before(first, tl)  # the seek path of _pyav_frames
            assert key_pts is not None, f"{name}: no key frame after the first before frame {first}"
            from_key = list(_in_order(_pyav_by_timestamp(str(path), want, tl, key_pts=key_pts), want))
            assert len(from_key) == len(want), f"{name}: the seek from frame {first} did not give every frame"
            from_start = list(_in_order(_pyav_from_start(str(path), want, tl), want))
            assert all(np.array_equal(a, b) for a, b in zip(from_key, from_start, strict=True)), f"{name}: from frame {first}"


def test_a_late_range_too_large_to_hold_is_checked_then_streamed_with_the_same_frames(tmp_path, monkeypatch):
    """A PyAV range starting after the video's first key frame was held whole at full size until all its frames were
    placed (30 s of 1080p: a decode worker at 6.7 GB). Past RANGE_HOLD_MIB it is checked in a pass that converts no
    frame, then streamed: the same frames, never more than a chunk converted at a time."""
    import pipeline.decode as decode

    videos = _open_gop_videos(tmp_path)
    converted = []
    real = decode._pyav_by_timestamp

    def spy(*a, convert=True, **k):
        converted.append(convert)
        return real(*a, convert=convert, **k)

    monkeypatch.setattr(decode, "_pyav_by_timestamp", spy)
    for name in ("x264", "x265"):
        path = str(videos[name])
        reference = _cli_frames(videos[name])
        clip = {"source_kind": "range", "path": path, "start_s": 1.0, "end_s": 3.5}
        converted.clear()
        monkeypatch.setattr(decode, "RANGE_HOLD_MIB", 0.0)
        streamed = decode.decode_clip(clip, DecodeOptions(backend="pyav")).frames
        assert converted == [False, True], name  # a check pass, then the streamed one
        monkeypatch.setattr(decode, "RANGE_HOLD_MIB", 1024.0)
        converted.clear()
        held = decode.decode_clip(clip, DecodeOptions(backend="pyav")).frames
        assert converted == [True], name
        assert np.array_equal(streamed, held) and np.array_equal(held, reference[30:105]), name


def test_chunks_put_together_are_the_frames_of_one_call(tmp_path):
    """open_clip gives a clip in chunks (the job resizes each as it comes, never holding a whole clip at full size):
    on every backend the chunks put together are the frames decoded in one chunk, with chunk edges inside GOPs,
    across repeated frames (target_fps above the video's rate) and in ranges that start with a seek."""
    from pipeline.decode import open_clip

    frame_mib = 64 * 48 * 3 / 2**20  # the test videos are 64x48
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(index_frame(i)).save(folder / f"{i}.png")
    clips = {"folder at 25 fps from 10": ({"source_kind": "frames", "path": str(folder), "fps": 10.0}, {"target_fps": 25})}
    videos = _open_gop_videos(tmp_path)
    clips["x264 whole"] = ({"source_kind": "video", "path": str(videos["x264"])}, {})
    clips["x265 range"] = ({"source_kind": "range", "path": str(videos["x265"]), "start_s": 1.0, "end_s": 1.6}, {})
    clips["cut at 50 fps"] = ({"source_kind": "range", "path": str(videos["cut"]), "start_s": 0.5, "end_s": 1.0}, {"target_fps": 50})
    chunk_frames = 2
    for case, (clip, kw) in clips.items():
        for backend in BACKENDS:
            options = DecodeOptions(backend=backend, **kw)
            whole = decode_clip(clip, options)
            stream = open_clip(clip, options, chunk_mib=chunk_frames * frame_mib)
            chunks = list(stream.with_repeats())
            assert len(chunks) >= 2 and all(len(c) <= chunk_frames for c, _ in chunks), case
            # a frame that stands twice (50 fps from 30) is decoded once and repeated
            assert np.array_equal(np.concatenate([np.repeat(c, r, axis=0) for c, r in chunks]), whole.frames), f"{case}, {backend}"
            assert stream.count == len(whole.frames) == stream.repeats.sum() and stream.fps == whole.fps, case


def test_mpeg_program_stream_ranges_match_the_ffmpeg_cli(tmp_path):
    # decord returned frames ~10 early for a range of an .mpg (MPEG-PS has no index to seek by), no error
    mpg = tmp_path / "clip.mpg"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=3", "-c:v", "mpeg2video", "-g", "6", "-bf", "2", str(mpg)], check=True)
    reference = _cli_frames(mpg)
    tl = read_timeline(str(mpg))
    expected = reference[np.nonzero((tl.times_s >= 0.5 - 1e-6) & (tl.times_s < 1.2 - 1e-6))[0]]
    assert len(expected) == 17
    for backend in BACKENDS:
        got = decode_clip({"source_kind": "range", "path": str(mpg), "start_s": 0.5, "end_s": 1.2}, DecodeOptions(backend=backend)).frames
        assert np.array_equal(got, expected), backend


def test_a_file_with_two_video_streams_decodes_its_first_everywhere(tmp_path):
    # decord picked the other stream (max difference 255); the timeline, and so the manifest, describe the first
    both = tmp_path / "two.mp4"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=1", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1",
                          "-map", "0:v", "-map", "1:v", "-c:v", "libx264", str(both)], check=True)
    reference = _cli_frames(both)
    assert read_timeline(str(both)).video_streams == 2
    for backend in BACKENDS:
        assert np.array_equal(decode_clip({"source_kind": "video", "path": str(both)}, DecodeOptions(backend=backend)).frames, reference), backend


@pytest.mark.parametrize("name,codec,pix_fmt,height,width", [("odd.mkv", "ffv1", "yuv420p", 47, 65), ("odd.webm", "libvpx-vp9", "yuv420p", 47, 65),
                                                             ("ten.mp4", "libx264", "yuv420p10le", 48, 64), ("odd422.mov", "mjpeg", "yuvj422p", 47, 65)])
def test_decord_backend_gives_ffmpeg_pixels_on_odd_sizes_and_deep_colour(tmp_path, name, codec, pix_fmt, height, width):
    # decord's own RGB conversion was off by mean 4-5, max 186 levels on these (chroma); such clips go through PyAV
    path = tmp_path / name
    subprocess.run(_FF + ["-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=25", "-frames:v", "6", "-pix_fmt", pix_fmt, "-c:v", codec, str(path)], check=True)
    reference = _cli_frames(path)
    assert reference.shape[1:3] == (height, width)
    for backend in BACKENDS:
        got = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(backend=backend)).frames
        assert np.array_equal(got, reference), f"{backend}: max difference {np.abs(got.astype(int) - reference).max()}"


def test_a_frame_folder_with_a_dangling_link_is_corrupt_not_a_frame_short(tmp_path):
    from manifests.probe import probe_clip

    for i in range(3):
        Image.fromarray(index_frame(i)).save(tmp_path / f"{i:04d}.png")
    (tmp_path / "0003.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ClipError) as err:
        decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    assert err.value.kind == "corrupt" and "0003.png" in str(err.value)
    assert probe_clip({"source_kind": "frames", "path": str(tmp_path), "fps": 25.0})["status"] == "corrupt"


def test_a_frame_folder_s_content_hash_includes_its_fps(tmp_path):
    # the same folder annotated at two rates is two different clips: curation must not drop one as a duplicate
    from manifests.probe import probe_clip

    for i in range(3):
        Image.fromarray(index_frame(i)).save(tmp_path / f"{i:04d}.png")
    row = {"source_kind": "frames", "path": str(tmp_path)}
    at25, again, at30 = (probe_clip({**row, "fps": fps})["content_hash"] for fps in (25.0, 25.0, 30.0))
    assert at25 == again != at30



def test_h264_intra_refresh_ranges_match_the_ffmpeg_cli(tmp_path):
    # torchcodec's seek returned frames 26-30 for a range of 20-24 (and failed near the end), no error
    path = tmp_path / "intra_refresh.mp4"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-t", "6", "-c:v", "libx264", "-x264-params", "intra-refresh=1:keyint=20",
                          "-pix_fmt", "yuv420p", str(path)], check=True)
    reference = _cli_frames(path)
    for backend in BACKENDS:
        for (start, end), frames in [((0.8, 1.0), reference[20:25]), ((5.88, 6.0), reference[147:150])]:
            got = decode_clip({"source_kind": "range", "path": str(path), "start_s": start, "end_s": end}, DecodeOptions(backend=backend)).frames
            assert np.array_equal(got, frames), (backend, start)


def test_untimed_pre_roll_frames_are_not_counted_as_frames_of_the_clip(tmp_path):
    # a cut kept with negative timestamps (-avoid_negative_ts disabled) starts with packets that have no
    # timestamp: decoders show them, the timeline does not list them, so every index was shifted by 8 (the
    # whole clip held the pre-roll and lost its last 8 frames) on every backend
    src = write_video(tmp_path / "src.mp4", np.stack([index_frame(i % 25) for i in range(100)]))
    cut = tmp_path / "cut.mkv"
    subprocess.run(_FF + ["-ss", "1.3", "-i", str(src), "-c", "copy", "-avoid_negative_ts", "disabled", str(cut)], check=True)
    tl = read_timeline(str(cut))
    shown = _cli_frames(cut, "-fps_mode", "passthrough")  # every decoded frame, pre-roll included
    preroll = len(shown) - len(tl.times_s)
    assert tl.untimed == preroll > 0
    timed = shown[preroll:]
    for backend in BACKENDS:
        assert np.array_equal(decode_clip({"source_kind": "video", "path": str(cut)}, DecodeOptions(backend=backend)).frames, timed), backend
        got = decode_clip({"source_kind": "range", "path": str(cut), "start_s": 0.0, "end_s": 0.4}, DecodeOptions(backend=backend)).frames
        assert np.array_equal(got, timed[np.nonzero(tl.times_s < 0.4 - 1e-6)[0]]), backend


def test_a_cut_off_mp4_with_its_index_first_is_corrupt_not_shorter(tmp_path):
    # with the moov first (faststart) the index lists every frame, but the demuxer stopped at the cut without an
    # error: the file probed ok and shorter, and ranges past the cut looked like annotation errors
    import av

    from manifests.probe import probe_clip

    path = tmp_path / "v.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(50):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert read_timeline(str(path)).times_s.shape == (50,)  # whole: fine
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
    with pytest.raises(ClipError, match=r"is truncated: its index lists 50 video frames, the file holds \d+") as exc:
        read_timeline(str(path))
    assert exc.value.kind == "corrupt"
    row = {"source_kind": "range", "path": str(path), "start_s": 1.7, "end_s": 1.9}
    assert probe_clip(row)["status"] == "corrupt"  # was range_out_of_bounds


def test_an_mp4_trimmed_by_its_edit_list_is_not_taken_for_truncated(tmp_path):
    """A trim without re-encoding (the edit list starts playback at 1.3 s) leaves samples in the index that the
    demuxer never returns: the complete file was 'truncated: its index lists 75 video frames, the file holds 50'."""
    import struct

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    base = tmp_path / "base.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=3", "-c:v", "libx264",
                    "-g", "25", "-bf", "2", "-movflags", "faststart", str(base)], check=True)  # the index first: a cut file still opens
    data = bytearray(base.read_bytes())
    at = data.find(b"elst")
    _, media_time, _ = struct.unpack(">III", data[at + 12 : at + 24])
    struct.pack_into(">II", data, at + 12, 1700, media_time + int(1.3 * 12800))  # show 1.7 s from 1.3 s (time scale 12800)
    trimmed = tmp_path / "trimmed.mp4"
    trimmed.write_bytes(bytes(data))
    want = _ffmpeg_rgb(trimmed, 64, 48)
    assert len(want) == 42
    results = _decode_all({"source_kind": "video", "path": str(trimmed)})
    for backend, clip in results.items():
        assert np.array_equal(clip.frames, want), backend
    cut = tmp_path / "cut.mp4"  # the same file cut off is still truncated
    cut.write_bytes(bytes(data[: len(data) * 3 // 4]))
    with pytest.raises(ClipError, match="is truncated"):
        read_timeline(str(cut))


def test_an_mp4_cut_off_before_its_index_is_said_to_be_truncated(tmp_path):
    """An MP4 written without faststart has its index (moov) last: cut off, FFmpeg says only 'Invalid data found
    when processing input', and the row was 'unreadable' with no word of the cut, the commonest damaged file
    (an interrupted recording or download). Junk named .mp4 stays unreadable."""
    from manifests.probe import probe_clip

    whole = tmp_path / "whole.mp4"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=2", "-c:v", "libx264", str(whole)], check=True)
    data = whole.read_bytes()
    assert data.rfind(b"moov") > data.find(b"mdat")  # the index comes last
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipError) as err:
        read_timeline(str(cut))
    assert err.value.kind == "corrupt" and "is truncated" in str(err.value) and "moov" in str(err.value)
    assert probe_clip({"source_kind": "video", "path": str(cut)})["status"] == "corrupt"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video at all" * 100)
    with pytest.raises(ClipError) as err:
        read_timeline(str(junk))
    assert err.value.kind == "unreadable"


def test_an_ogg_theora_video_with_empty_duplicate_frame_packets_decodes(tmp_path):
    """Theora in Ogg holds packets of no bytes where a frame repeats; the decoder refused them ('avcodec_send_packet()
    returned 22') on decord and PyAV, so a clip the probe called ok failed at extraction."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    video = tmp_path / "theora.ogv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=1", "-c:v", "libtheora", str(video)], check=True)
    timeline = read_timeline(str(video))
    assert timeline.empty_packets > 0
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout  # each frame once (not repeated to a constant rate)
    want = np.frombuffer(raw, np.uint8).reshape(-1, 48, 64, 3)
    assert len(want) == len(timeline.times_s) < 25
    for backend, clip in _decode_all({"source_kind": "video", "path": str(video)}).items():
        assert np.array_equal(clip.frames, want), backend
    start = float(timeline.times_s[7])  # a range: its frames are the whole clip's from there
    for backend, clip in _decode_all({"source_kind": "range", "path": str(video), "start_s": start, "end_s": start + 0.3}).items():
        first = int(np.searchsorted(timeline.times_s, start))
        assert np.array_equal(clip.frames, want[first : first + len(clip.frames)]) and len(clip.frames) >= 4, backend


def test_an_animated_webp_is_unreadable_not_corrupt(tmp_path):
    """FFmpeg cannot decode animated WebP: the file is sound (browsers play it), so not 'corrupt'."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    anim = tmp_path / "anim.webp"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1", "-c:v", "libwebp_anim",
                    "-loop", "0", str(anim)], check=True)
    with pytest.raises(ClipError, match="FFmpeg reads only still WebP images, not animated ones") as err:
        read_timeline(str(anim))
    assert err.value.kind == "unreadable"


def _ffmpeg_rgb(path, width, height):
    """The ffmpeg CLI's frames (it applies the display matrix, mirrors included): the independent reference."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize("name, matrix", [("hflip", (-1, 0, 0, 1)), ("vflip", (1, 0, 0, -1)), ("transpose", (0, 1, 1, 0)),
                                          ("rot90_mirrored", (0, -1, -1, 0))])
def test_a_mirrored_display_matrix_is_shown_mirrored_as_ffmpeg_shows_it(tmp_path, name, matrix):
    """A mirror in the display matrix swaps the signer's hands; it must not come out as a rotation (a horizontal
    mirror was turned upside down, a vertical one ignored) on any backend."""
    import struct

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    frames = np.stack([index_frame(i) for i in range(4)])[:, :, :48]  # not square: a transpose shows in the shape
    plain = write_video(tmp_path / "plain.mp4", frames)
    data = plain.read_bytes()
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    a, b, c, d = (v * 0x10000 for v in matrix)
    patched = tmp_path / f"{name}.mp4"
    patched.write_bytes(data[:at] + struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 0x40000000) + data[at + 36:])
    results = _decode_all({"source_kind": "video", "path": str(patched)})
    _assert_same(results)
    got = results["pyav"].frames
    assert np.array_equal(got, _ffmpeg_rgb(patched, got.shape[2], got.shape[1]))
    upright = decode_clip({"source_kind": "video", "path": str(plain)}).frames
    assert not np.array_equal(got, upright) and read_timeline(str(patched)).width == got.shape[2]


@pytest.mark.parametrize("ext, codec", [("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mjpeg")])
def test_a_cut_off_matroska_webm_or_avi_file_is_corrupt_not_shorter(tmp_path, ext, codec):
    """Their demuxers stop at the cut without an error; the header (Matroska's track DURATION tag, AVI's frame
    count) still says how long the video is. A range past the cut was range_out_of_bounds (an annotation error)."""
    from manifests.probe import probe_clip

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    whole = tmp_path / f"whole.{ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=4", "-c:v", codec, str(whole)], check=True)
    assert probe_clip({"source_kind": "video", "path": str(whole)})["status"] == "ok"
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    for row in ({"source_kind": "video", "path": str(cut)}, {"source_kind": "range", "path": str(cut), "start_s": 3.0, "end_s": 3.5}):
        probed = probe_clip(row)
        assert probed["status"] == "corrupt" and "truncated" in probed["error"], probed


def test_an_avi_capture_with_dropped_frames_is_not_taken_for_truncated(tmp_path):
    """AVI's header counts the empty entries a capture's dropped frames leave, which the demuxer never returns:
    a complete file was called truncated ("its index lists 50 video frames, the file holds 42"). Its frames are
    the ffmpeg CLI's; a cut-off one is still corrupt."""
    from manifests.probe import probe_clip

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    path = tmp_path / "dropped.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=2", "-vf",
                    "select='not(between(n,10,17))'", "-vsync", "vfr", "-c:v", "mpeg4", "-q:v", "3", str(path)], check=True)
    reference = _cli_frames(path, "-vsync", "passthrough")
    assert len(reference) == 42
    results = _decode_all({"source_kind": "video", "path": str(path)})
    _assert_same(results)
    assert np.array_equal(results["pyav"].frames, reference)
    assert probe_clip({"source_kind": "video", "path": str(path)})["status"] == "ok"
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert probe_clip({"source_kind": "video", "path": str(cut)})["status"] == "corrupt"


def test_a_video_whose_frame_size_changes_mid_way_is_scaled_to_its_first_size_as_ffmpeg_does(tmp_path):
    """A browser or WebRTC recording can change resolution mid-stream: PyAV and torchcodec failed the clip
    ("all input arrays must have the same shape", "Expected pre-allocated tensor"), decord scaled it. Every
    backend now gives the stream's first size, PyAV and torchcodec the CLI's own pixels."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    parts = []
    for size in ("64x48", "128x96"):
        part = tmp_path / f"{size}.webm"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=1",
                        "-c:v", "libvpx-vp9", "-b:v", "200k", str(part)], check=True)
        parts.append(f"file '{part}'")
    (tmp_path / "list.txt").write_text("\n".join(parts) + "\n")
    path = tmp_path / "changes.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(tmp_path / "list.txt"), "-c", "copy", str(path)], check=True)
    reference = _cli_frames(path, "-vsync", "passthrough")
    assert reference.shape == (50, 48, 64, 3)
    for clip, wanted in (({"source_kind": "video", "path": str(path)}, reference),
                         ({"source_kind": "range", "path": str(path), "start_s": 0.6, "end_s": 1.6}, reference[15:40])):
        results = _decode_all(clip)
        for backend in ("pyav", "torchcodec"):
            assert np.array_equal(results[backend].frames, wanted), backend
        # decord scales with its own filter: the first size, near the CLI's pixels
        assert results["decord"].frames.shape == wanted.shape
        assert np.abs(results["decord"].frames.astype(int) - wanted).mean() < 4


def test_a_matroska_video_starting_after_its_audio_is_not_taken_for_truncated(tmp_path):
    """FFmpeg's DURATION tag is the track's end time: a video track starting at 0.4 s ends at 2.4 s, complete."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    path = tmp_path / "late.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=3", "-itsoffset", "0.4", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25:duration=2", "-map", "0", "-map", "1", "-c:v", "libx264", "-c:a", "libvorbis", str(path)], check=True)
    timeline = read_timeline(str(path))
    assert len(timeline.times_s) == 50 and timeline.times_s[0] == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("orientation", [3, 6])
def test_an_exif_rotated_jpeg_read_as_a_video_is_upright_on_every_backend(tmp_path, orientation):
    """torchcodec follows the system FFmpeg, which left an EXIF orientation 3 picture upside down."""
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    image = Image.fromarray(np.kron(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)))
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"exif{orientation}.jpg"
    image.save(path, exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
    for backend, clip in _decode_all({"source_kind": "video", "path": str(path)}).items():
        assert clip.frames.shape[1:] == expected.shape, backend
        assert np.abs(clip.frames[0].astype(int) - expected).mean() < 10, backend  # upside down: ~90


def test_frame_folder_names_with_non_decimal_digits_sort_without_error(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("2.png", "10.png", "²1.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    assert decode_clip({"source_kind": "frames", "path": str(folder), "fps": 25.0}).frames.shape[0] == 3


def _ffmpeg_frames_and_times(path, width, height):
    """The ffmpeg CLI's decoded frames of ``path`` and their times from the file's start (ffprobe)."""
    frames = np.frombuffer(subprocess.run(
        ["ffmpeg", "-v", "quiet", "-i", str(path), "-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True).stdout, np.uint8).reshape(-1, height, width, 3)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "quiet", "-select_streams", "v:0", "-show_entries",
                                       "frame=best_effort_timestamp_time:format=start_time", "-of", "json", str(path)],
                                      capture_output=True, text=True, check=True).stdout)
    times = np.array([float(f["best_effort_timestamp_time"]) for f in probe["frames"]]) - float(probe["format"]["start_time"])
    return frames, times


@pytest.mark.parametrize("cut", ["ts_capture", "mkv_copy_from_non_key"])
def test_a_stream_that_does_not_start_on_a_key_frame_lists_only_what_decodes(tmp_path, cut):
    """A broadcast capture cut mid-GOP, or a stream copy cut on non-key frames: its first frames cannot be decoded.
    They were in the timeline, so ranges of the first GOP came out shifted (0.4 s late) and whole clips failed;
    now the clip is the frames the ffmpeg CLI decodes, at its timestamps, on every backend."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command (make setup installs it)")
    pattern = "nullsrc=s=64x48:r=25:d=2,geq=lum='mod(N*37\\,200)+20+X/16':cb='128+Y/2':cr='100+mod(N\\,100)'"
    if cut == "ts_capture":
        source = tmp_path / "src.ts"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", pattern, "-c:v", "libx264", "-bf", "3", "-g", "25", "-qp", "0",
                        "-f", "mpegts", str(source)], check=True)
        data = source.read_bytes()
        path = tmp_path / "capture.ts"
        path.write_bytes(data[len(data) * 3 // 10 // 188 * 188:])  # cut at a TS packet boundary, inside the first GOP
    else:
        source = tmp_path / "src.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", pattern, "-c:v", "libx264", "-qp", "0",
                        "-x264-params", "open-gop=1:keyint=25:min-keyint=25:bframes=3", str(source)], check=True)
        path = tmp_path / "cut.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-ss", "0.5", "-t", "1.2", "-c", "copy", "-copyinkf", str(path)], check=True)
    expected, times = _ffmpeg_frames_and_times(path, 64, 48)
    timeline = read_timeline(str(path))
    assert timeline.undecodable > 0 and len(timeline.times_s) == len(expected)
    np.testing.assert_allclose(timeline.times_s, times, atol=1e-3)
    results = _decode_all({"source_kind": "video", "path": str(path)})
    _assert_same(results)
    assert np.array_equal(results["pyav"].frames, expected)
    start, end = float(times[2]), float(times[9])
    ranged = _decode_all({"source_kind": "range", "path": str(path), "start_s": start, "end_s": end})
    _assert_same(ranged)
    assert np.array_equal(ranged["pyav"].frames, expected[(times >= start - 1e-6) & (times < end - 1e-6)])


def test_frame_folders_take_tiff_frames_and_refuse_images_they_would_drop(tmp_path):
    """.tif frames were skipped in silence (a folder of 10 gave 7 frames, status ok); a .gif (animated: only its
    first frame would be read) is refused by name rather than dropped."""
    for i in range(4):
        Image.fromarray(index_frame(i)).save(tmp_path / f"{i}.{'tif' if i % 2 else 'png'}")
    clip = decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    assert [frame_index(f) for f in clip.frames] == [0, 1, 2, 3]
    Image.fromarray(index_frame(4)).save(tmp_path / "4.gif")
    with pytest.raises(ClipError, match=r"4\.gif") as err:
        decode_clip({"source_kind": "frames", "path": str(tmp_path)})
    assert err.value.kind == "unsupported_frames"


def test_target_fps_on_a_frame_folder_keeps_every_instant_inside_it(tmp_path):
    """A frame folder's times are exact (k / fps): 6 frames at 29.97 fps last 0.2002 s, which holds the instants
    0 and 0.2 s at 5 fps; the 1 ms allowed for video timestamps dropped the second. The plan counts the same."""
    from fractions import Fraction

    from pipeline.plan import planned_frames

    for i in range(6):
        Image.fromarray(index_frame(i)).save(tmp_path / f"{i}.png")
    row = {"source_kind": "frames", "path": str(tmp_path), "fps": 29.97, "num_frames": 6}
    for target in (5, 10, 7.3):
        duration = Fraction(6) / Fraction("29.97")
        instants = [Fraction(k) / Fraction(str(target)) for k in range(100) if Fraction(k) / Fraction(str(target)) < duration]
        expected = [int(t * Fraction("29.97")) for t in instants]  # the frame shown at each instant
        clip = decode_clip(row, DecodeOptions(target_fps=target))
        assert [frame_index(f) for f in clip.frames] == expected, target
        assert planned_frames(row, DecodeOptions(target_fps=target)) == len(expected), target


def test_a_16_bit_grey_png_keeps_its_transparent_level_white(tmp_path):
    grey = np.array([[0, 4660, 65535], [4660, 100, 30000]], np.uint16)
    img = Image.fromarray(grey)
    img.save(tmp_path / "0.png", transparency=4660)
    assert Image.open(tmp_path / "0.png").info["transparency"] == 4660
    frame = decode_clip({"source_kind": "frames", "path": str(tmp_path)}).frames[0]
    expected = (grey.astype(np.int64) * 255 + 32767) // 65535
    expected[grey == 4660] = 255  # transparent: onto white, as for 8-bit images
    assert np.array_equal(frame[..., 0], expected) and np.array_equal(frame[..., 2], expected)


def test_a_still_image_given_as_a_clip_reads_as_a_frame_folders_image(tmp_path):
    """As a one-image 'video' row an RGBA PNG came out with the colour under its transparent pixels (FFmpeg's
    image demuxer drops alpha); in a frame folder the same image is put onto white."""
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :32, 3] = 255  # the left half opaque red, the right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "0.png")
    as_folder = decode_clip({"source_kind": "frames", "path": str(tmp_path)}).frames
    assert as_folder[0, 0, 40].tolist() == [255, 255, 255] and as_folder[0, 0, 10].tolist() == [200, 0, 0]
    for backend in BACKENDS:
        as_video = decode_clip({"source_kind": "video", "path": str(tmp_path / "0.png")}, DecodeOptions(backend=backend)).frames
        assert np.array_equal(as_video, as_folder), backend


@pytest.mark.parametrize("name", ["still.jpg", "still.jpeg", "still.png"])
def test_a_still_jpeg_given_as_a_clip_is_one_frame_not_corrupt(tmp_path, name):
    """FFmpeg's image2 reader (.jpg, .jpeg) decodes nothing after a seek back to the start: probing a still JPEG
    as a one-frame video row said 'corrupt: the decoder returned no frame', while PNG, BMP or WebP read."""
    rng = np.random.default_rng(0)
    picture = np.clip(np.linspace(0, 255, 64)[None, :, None] + rng.normal(0, 8, (48, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / name, quality=95)
    timeline = read_timeline(str(tmp_path / name))
    assert (len(timeline.times_s), timeline.width, timeline.height) == (1, 64, 48)
    reference = np.asarray(Image.open(tmp_path / name).convert("RGB"))  # read as a frame folder's image is: by PIL
    for backend in BACKENDS:
        frames = decode_clip({"source_kind": "video", "path": str(tmp_path / name)}, DecodeOptions(backend=backend)).frames
        assert frames.shape == (1, 48, 64, 3) and np.array_equal(frames[0], reference), backend


def test_a_stream_copied_mp4_cut_keeps_the_frames_after_its_discarded_pre_roll(tmp_path):
    """`ffmpeg -ss 1.3 -c copy` into MP4 keeps the GOP from its key frame as discarded pre-roll (an edit list):
    the frames after it decode, and the CLI shows them; they were counted undecodable (3 frames lost)."""
    src, cut = tmp_path / "src.mp4", tmp_path / "cut.mp4"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=4", "-c:v", "libx264", "-g", "12", "-bf", "3", str(src)], check=True)
    subprocess.run(_FF + ["-ss", "1.3", "-i", str(src), "-c", "copy", str(cut)], check=True)
    reference = _cli_frames(cut)
    for backend in BACKENDS:
        got = decode_clip({"source_kind": "video", "path": str(cut)}, DecodeOptions(backend=backend)).frames
        assert np.array_equal(got, reference), backend


def test_ranges_of_an_avi_with_b_frames_come_out_in_order(tmp_path):
    """PyAV gives an AVI's B-frames out-of-order timestamps: frames placed by timestamp stopped short, and the
    rest, filled in by counting from the start, made a scrambled range (31, 35, 33, 34, 36, ...). Whatever the
    method, a range is consecutive frames of the video, in order."""
    avi = tmp_path / "b.avi"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=5", "-c:v", "libx264", "-g", "25", "-bf", "2", str(avi)], check=True)
    reference = _cli_frames(avi)
    for backend in BACKENDS:
        for start, end in ((1.3, 2.9), (3.7, 4.2)):
            got = decode_clip({"source_kind": "range", "path": str(avi), "start_s": start, "end_s": end}, DecodeOptions(backend=backend)).frames
            first = next(j for j in range(len(reference)) if np.array_equal(reference[j], got[0]))
            assert np.array_equal(got, reference[first : first + len(got)]), (backend, start)
            assert abs(first - round(start * 25)) <= 1, (backend, start)


def test_a_long_clip_is_not_read_through_decords_unbounded_read_ahead():
    """decord's decoder thread decodes ahead of get_batch as far as the clip goes (5.4 GB for 30 s of 1080p in the
    job's decode stage, PyAV 1.8 GB): a clip of more than DECORD_MAX_CLIP_MIB of frames goes to PyAV."""
    from pipeline.decode import DECORD_MAX_CLIP_MIB, VideoTimeline, pyav_instead

    timeline = VideoTimeline(times_s=np.arange(900) / 30, width=1920, height=1080, rotation=0, codec="h264", frame_duration_s=1 / 30,
                             container="mov,mp4,m4a,3gp,3g2,mj2", pix_fmt="yuv420p")
    frame_mib = 1920 * 1080 * 3 / 2**20
    short = np.arange(int(DECORD_MAX_CLIP_MIB // frame_mib))
    assert pyav_instead("decord", timeline, short) is None
    assert "reads ahead" in pyav_instead("decord", timeline, np.arange(len(short) + 1))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_an_mp4_cut_inside_its_index_is_said_to_be_truncated(tmp_path, fraction):
    """A faststart MP4 (index first) cut inside its moov box: FFmpeg opened it with no streams ('no_video_stream'),
    or said 'End of file' / 'Invalid data' ('unreadable'), with no word of the cut."""
    import struct

    from manifests.probe import probe_clip

    whole = tmp_path / "whole.mp4"
    subprocess.run(_FF + ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=2", "-c:v", "libx264", "-movflags", "faststart",
                          str(whole)], check=True)
    data = whole.read_bytes()
    at = 0
    while data[at + 4 : at + 8] != b"moov":  # the top-level boxes, to the index
        at += struct.unpack(">I", data[at : at + 4])[0]
    size = struct.unpack(">I", data[at : at + 4])[0]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: at + int(size * fraction)])
    with pytest.raises(ClipError) as err:
        read_timeline(str(cut))
    assert err.value.kind == "corrupt" and "ends inside its index" in str(err.value)
    assert probe_clip({"source_kind": "video", "path": str(cut)})["status"] == "corrupt"


@pytest.mark.parametrize("rate, container", [("30000/1001", "mkv"), ("30", "webm")])
def test_target_fps_at_a_matroska_video_s_own_rate_keeps_every_frame_once(tmp_path, rate, container):
    """WebM / MKV store whole milliseconds: resampled to their own 29.97 or 30 fps, a third of the frames were
    replaced by the one before (all backends), where the MP4 of the same frames kept each once."""
    path = tmp_path / f"v.{container}"
    codec = ["-c:v", "libvpx-vp9", "-deadline", "realtime"] if container == "webm" else ["-c:v", "libx264"]
    subprocess.run(_FF + ["-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={rate}:duration=2", *codec, str(path)], check=True)
    whole = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions())
    fps = float(Fraction(rate))
    for backend in BACKENDS:
        same = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(backend=backend, target_fps=fps))
        assert np.array_equal(same.frames, whole.frames), backend
        half = decode_clip({"source_kind": "video", "path": str(path)}, DecodeOptions(backend=backend, target_fps=fps / 2))
        assert np.array_equal(half.frames, whole.frames[::2]), backend
