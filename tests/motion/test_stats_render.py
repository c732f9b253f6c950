"""motion-stats against a direct numpy computation on the same arrays; motion-render writes pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from motion.humanml3d import FEATURE_WIDTH, LAYOUT
from motion.stats import RunningMoments, motion_stats
from pipeline.cli import main
from pipeline.errors import SignfeatError
from shards.sample import encode_sample


def _write_shard(path, clips: dict[str, np.ndarray], extra_stream: bool = False):
    with wds.TarWriter(str(path)) as sink:
        for key, features in clips.items():
            streams = {"smplx623": features} if features is not None else {}
            if extra_stream:
                streams["dinov2"] = np.zeros((3, 4), np.float16)
            sink.write({"__key__": key, **encode_sample(key, {"id": key}, streams)})


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    clips = {f"c{i}": (rng.normal(size=(rng.integers(3, 40), FEATURE_WIDTH)) * rng.uniform(0.1, 5, FEATURE_WIDTH) + i).astype(np.float32) for i in range(7)}
    nan_clip = clips["c3"].copy()
    nan_clip[1, 10] = np.nan
    inf_clip = clips["c5"].copy()
    inf_clip[2, 70] = np.inf  # an inf made 153 std dimensions non-finite
    keys = sorted(clips)
    (tmp_path / "train").mkdir()
    _write_shard(tmp_path / "train" / "shard-000000.tar", {k: clips[k] for k in keys[:4]} | {"bad": nan_clip}, extra_stream=True)
    _write_shard(tmp_path / "train" / "shard-000001.tar", {k: clips[k] for k in keys[4:]} | {"other": None, "infinite": inf_clip})
    return tmp_path, clips


def test_motion_stats_equals_direct_numpy(corpus):
    root, clips = corpus
    stats = motion_stats([root])
    data = np.concatenate(list(clips.values())).astype(np.float64)  # HumanML3D: concatenate, mean, std
    mean, std = data.mean(0), data.std(0)
    for block in LAYOUT.values():
        std[block] = std[block].mean()
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-6)
    assert stats["clips"] == 7 and stats["skipped_nan"] == 2 and stats["samples_without_stream"] == 1 and stats["frames"] == len(data)
    assert stats["std"][0] == stats["std"][0] and np.all(stats["std"][LAYOUT["ric"]] == stats["std"][4])


def test_running_moments_merge_is_exact():
    rng = np.random.default_rng(1)
    parts = [rng.normal(loc=1000, size=(n, 5)) for n in (1, 7, 300)]
    moments = RunningMoments(5)
    for part in parts:
        moments.add(part)
    whole = np.concatenate(parts)
    np.testing.assert_allclose(moments.mean, whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.std, whole.std(0), rtol=1e-9)


def test_motion_stats_cli(corpus, tmp_path, capsys):
    root, clips = corpus
    assert main(["motion-stats", str(root / "train"), "--out", str(tmp_path / "stats")]) == 0
    mean = np.load(tmp_path / "stats" / "mean.npy", allow_pickle=False)
    std = np.load(tmp_path / "stats" / "std.npy", allow_pickle=False)
    assert mean.shape == std.shape == (623,) and mean.dtype == np.float32
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["clips"] == 7
    assert main(["motion-stats", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such shard" in capsys.readouterr().err
    # a file that is not a shard (a features .npy) was a tarfile traceback
    np.save(tmp_path / "f.npy", np.zeros((3, 623), np.float32))
    assert main(["motion-stats", str(tmp_path / "f.npy"), "--out", str(tmp_path / "y")]) == 2
    assert "f.npy: not a shard tar" in capsys.readouterr().err


def test_motion_stats_without_the_stream_is_an_error(tmp_path):
    _write_shard(tmp_path / "s.tar", {"a": None})
    with pytest.raises(SignfeatError, match="no smplx623 frames"):
        motion_stats([tmp_path / "s.tar"])


def test_motion_render_gif_png_and_shard(body_model, tmp_path):
    from motion.humanml3d import joints_to_features
    from motion.synthetic import smooth_random_params

    features = joints_to_features(body_model.joints(smooth_random_params(12, seed=1)), body_model.rest_joints())
    np.save(tmp_path / "f.npy", features)
    assert main(["motion-render", str(tmp_path / "f.npy"), "--out", str(tmp_path / "m.gif"), "--every", "3"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "m.gif") as gif:
        assert gif.n_frames == 4
    _write_shard(tmp_path / "s.tar", {"k1": features[:5], "k2": features})
    assert main(["motion-render", str(tmp_path / "s.tar"), "--key", "k2", "--out", str(tmp_path / "png"), "--every", "5"]) == 0
    assert len(list((tmp_path / "png").glob("frame_*.png"))) == 3
    assert main(["motion-render", str(tmp_path / "s.tar"), "--key", "zz", "--out", str(tmp_path / "x.gif")]) == 2
    av = pytest.importorskip("av")
    assert main(["motion-render", str(tmp_path / "f.npy"), "--out", str(tmp_path / "m.mp4"), "--every", "2"]) == 0
    with av.open(str(tmp_path / "m.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 6


def test_a_shard_named_twice_counts_once(corpus):
    # `motion-stats OUT OUT/train` counted every train shard twice (6 shards, twice the frames)
    root, _ = corpus
    once, twice = motion_stats([root]), motion_stats([root, root / "train", root / "train" / "shard-000000.tar"])
    assert twice["shards"] == once["shards"] == 2 and twice["frames"] == once["frames"]


@pytest.mark.parametrize("features", [np.zeros((0, FEATURE_WIDTH), np.float32), np.full((4, FEATURE_WIDTH), np.nan, np.float32)])
def test_motion_render_of_nothing_or_nan_is_one_line(features, tmp_path, capsys):
    np.save(tmp_path / "f.npy", features)
    assert main(["motion-render", str(tmp_path / "f.npy"), "--out", str(tmp_path / "m.gif")]) == 2  # were tracebacks
    assert "signfeat: error:" in capsys.readouterr().err


def test_rendered_mp4_keeps_a_fractional_frame_rate_and_upper_case_suffixes_work(tmp_path):
    """20 fps shown every 3rd row is 6.67 fps (was rounded to 7); below 0.5 fps the file played at 24 fps."""
    import av

    from motion.render import save_images

    images = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(6)]
    for fps in (20 / 3, 0.25):
        out = save_images(images, tmp_path / f"r{fps:.2f}.mp4", fps)[0]
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            assert float(stream.average_rate) == pytest.approx(fps, rel=1e-3)
            assert float(stream.duration * stream.time_base) == pytest.approx(len(images) / fps, rel=0.02)
    assert save_images(images, tmp_path / "clip.GIF", 10.0) == [tmp_path / "clip.GIF"] and (tmp_path / "clip.GIF").is_file()


def test_gif_delays_add_up_to_the_clip_s_time(tmp_path):
    """GIF delays are whole hundredths of a second: one rounded delay played --fps 30 at 33.3 fps, and 60 fps
    as 100 ms per frame in viewers (a delay under 2 shows as 10)."""
    from PIL import Image

    from motion.render import save_images
    from pipeline.errors import SignfeatError

    images = [np.full((16, 16, 3), 8 * i, np.uint8) for i in range(30)]
    save_images(images, tmp_path / "m.gif", 30.0)
    with Image.open(tmp_path / "m.gif") as gif:
        delays = []
        for i in range(gif.n_frames):
            gif.seek(i)
            delays.append(gif.info["duration"])
    assert sum(delays) == 1000 and set(delays) <= {30, 40}
    with pytest.raises(SignfeatError, match="a GIF cannot play 60 fps"):
        save_images(images, tmp_path / "fast.gif", 60.0)


@pytest.mark.parametrize("name, content", [("text.npy", b"not an array"), ("empty.npy", b""), ("bad.tar", b"garbage" * 100)])
def test_motion_render_of_an_unreadable_file_or_a_bad_fps_is_one_line(tmp_path, capsys, name, content):
    (tmp_path / name).write_bytes(content)
    assert main(["motion-render", str(tmp_path / name), "--out", str(tmp_path / "m.gif")]) == 2  # were tracebacks
    assert "signfeat: error:" in capsys.readouterr().err
    np.save(tmp_path / "f.npy", np.zeros((3, FEATURE_WIDTH), np.float32))
    for fps in ("nan", "inf"):
        assert main(["motion-render", str(tmp_path / "f.npy"), "--fps", fps, "--out", str(tmp_path / "m.mp4")]) == 2


def test_a_shard_sample_plays_at_its_own_frame_rate(tmp_path):
    """A 25 fps video row's motion was drawn at 20 fps (20 % slow) unless --fps was given."""
    av = pytest.importorskip("av")
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        sink.write({"__key__": "k", **encode_sample("k", {"id": "k", "fps": 25.0}, {"smplx623": np.zeros((5, FEATURE_WIDTH), np.float32)})})
    assert main(["motion-render", str(tmp_path / "s.tar"), "--out", str(tmp_path / "m.mp4")]) == 0
    with av.open(str(tmp_path / "m.mp4")) as video:
        assert video.streams.video[0].average_rate == 25


def test_motion_render_finds_a_sample_by_its_clip_id_as_well_as_its_key(tmp_path):
    """--key walk_slow_z said "no sample with key 'walk_slow_z'": the shard key escapes the id (walk__slow__z)."""
    import webdataset as wds

    from manifests.keys import key_from_id
    from motion.render import load_features
    from shards.sample import encode_sample

    features = {clip: np.full((4, FEATURE_WIDTH), i, np.float32) for i, clip in enumerate(["walk_slow_z", "b"])}
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for clip, f in features.items():
            key = key_from_id(clip)
            sink.write({"__key__": key, **encode_sample(key, {"id": clip, "fps": 20.0}, {"smplx623": f})})
    assert key_from_id("walk_slow_z") != "walk_slow_z"
    for asked in ("walk_slow_z", key_from_id("walk_slow_z")):
        array, name, fps = load_features(tmp_path / "s.tar", asked)
        assert name == key_from_id("walk_slow_z") and fps == 20.0
        np.testing.assert_array_equal(array, features["walk_slow_z"])
    with pytest.raises(SignfeatError, match="no sample with key or id 'zz'"):
        load_features(tmp_path / "s.tar", "zz")
    with pytest.raises(SignfeatError, match="--key is empty"):
        load_features(tmp_path / "s.tar", "")
    # clip a__b (key a____b) comes first, clip a_b has key a__b: asking for "a__b", the exact key wins over an id
    with wds.TarWriter(str(tmp_path / "t.tar")) as sink:
        for i, clip in enumerate(["a__b", "a_b"]):
            key = key_from_id(clip)
            sink.write({"__key__": key, **encode_sample(key, {"id": clip}, {"smplx623": np.full((3, FEATURE_WIDTH), i, np.float32)})})
    assert key_from_id("a_b") == "a__b"
    array, name, _ = load_features(tmp_path / "t.tar", "a__b")
    assert name == "a__b" and array[0, 0] == 1
