"""``smplx623`` through the extractor contract gives the same arrays as calling motion/ directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from extractors import ExtractorConfig, build_extractor
from extractors.base import REGISTRY
from motion.estimate import landmarks_to_keypoints
from motion.fitting import FitSettings, fit_keypoints
from motion.humanml3d import FeatureSettings, joints_to_features
from motion.synthetic import landmarks_from_joints, smooth_random_params
from pipeline.errors import SignfeatError
from pipeline.stages import geometry_key
from tests.motion.conftest import body_model, model_dir  # noqa: F401  (the synthetic SMPL-X model fixtures)


@pytest.fixture(scope="module")
def extractor(model_dir):
    return build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "fit_iterations": 40, "fit_orient_iterations": 10}})


@pytest.fixture(scope="module")
def body(body_model):
    return body_model


def test_surface_and_metadata(extractor):
    assert "smplx623" in REGISTRY and extractor.stream == "smplx623"
    assert extractor.width == 623 and extractor.storage_dtype == np.float32
    meta = extractor.metadata()
    assert meta["width"] == 623 and meta["dtype"] == "float32" and meta["weights"] == "random"  # synthetic model: never "pretrained"
    assert meta["model_info"]["synthetic_model"] is True
    assert "T-1 rows" in meta["alignment"] and meta["layout"]["rot6d"] == [157, 463]
    json.dumps(meta, default=str)


def test_the_model_folder_may_come_as_model(model_dir, extractor):
    """`--model DIR` (a model folder like any checkpoint's) failed for the synthetic model: "random_weights ...
    model/revision would be ignored", although the user set no random_weights."""
    by_model = build_extractor({"name": "smplx623", "model": str(model_dir), "settings": {"fit_iterations": 40, "fit_orient_iterations": 10}})
    assert by_model.metadata()["weights"] == "random" and by_model.model_id == extractor.model_id
    clip = smooth_random_params(9, seed=4)
    np.testing.assert_array_equal(by_model.extract_params([clip])[0], extractor.extract_params([clip])[0])


def test_the_model_folder_given_twice_as_two_folders_is_refused(model_dir, tmp_path):
    """model_dir and --model naming two folders: model_dir was used and --model dropped without a word."""
    from pipeline.config import parse_job_config

    other = tmp_path / "other"
    other.mkdir()
    two = {"name": "smplx623", "model": str(other), "settings": {"model_dir": str(model_dir)}}
    with pytest.raises(SignfeatError, match=r"SMPL-X folder is given twice, as model_dir=.* and as model=.*other: give one"):
        build_extractor(two)
    with pytest.raises(SignfeatError, match=r"extractors\[0\]: smplx623: the SMPL-X folder is given twice"):
        parse_job_config({"extractors": [two]})
    same = build_extractor({**two, "model": str(model_dir) + "/"})  # one folder, spelt twice: fine
    assert same.model_id == build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir)}}).model_id


def test_input_a_through_the_contract_equals_direct_calls(extractor, body):
    clips = [smooth_random_params(n, seed=n) for n in (12, 30, 2)]
    clips[1]["world_rotation"] = np.diag([1.0, -1.0, -1.0]).astype(np.float32)
    arrays = extractor.extract_params(clips)
    for clip, array in zip(clips, arrays):
        direct = joints_to_features(body.joints(clip), body.rest_joints(), FeatureSettings())
        assert array.dtype == np.float32 and array.shape == (len(clip["global_orient"]) - 1, 623)
        np.testing.assert_allclose(array, direct, atol=1e-5)


def test_input_a_files_and_resampling(model_dir, body, tmp_path):
    params = smooth_random_params(61, seed=2)
    np.savez(tmp_path / "clip.npz", **params, fps=np.array(30.0))
    resampling = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "target_fps": 20, "retarget": "none"}})
    (array,) = resampling.extract_paths([tmp_path / "clip.npz"])
    # 61 frames at 30 fps last 2.03 s -> 41 frames at 20 fps, the pose at k / 20 s (interpolated: motion/params_io)
    from motion.params_io import resample_params

    direct = joints_to_features(body.joints(resample_params(params, 30.0, 20.0)), None)
    assert direct.shape == (40, 623)
    np.testing.assert_allclose(array, direct, atol=1e-5)


def test_retarget_file(model_dir, body, tmp_path):
    target = np.repeat(body.rest_joints()[None] * 1.2, 3, axis=0)  # a [T, 55, 3] clip: its first frame is the target
    np.save(tmp_path / "target.npy", target)
    ex = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "retarget": str(tmp_path / "target.npy")}})
    params = smooth_random_params(10, seed=4)
    np.testing.assert_allclose(ex.extract_params([params])[0], joints_to_features(body.joints(params), target[0]), atol=1e-5)
    np.save(tmp_path / "bad.npy", np.zeros((22, 3)))
    with pytest.raises(SignfeatError, match="target joints"):
        build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "retarget": str(tmp_path / "bad.npy")}})


@pytest.mark.parametrize("case", ["zeros", "one_joint_on_its_parent", "nan", "strings", "npz", "text", "no_frames"])
def test_retarget_file_that_is_no_skeleton_is_refused(model_dir, body, tmp_path, case):
    # all-zero target joints were taken: every feature of every clip came out NaN (exit 0 from `signfeat features`)
    rest = body.rest_joints().copy()
    if case == "one_joint_on_its_parent":
        rest[4] = rest[1]  # left knee onto the left hip
    target = {"zeros": np.zeros((52, 3)), "one_joint_on_its_parent": rest, "nan": np.where(np.arange(3) == 1, np.nan, rest),
              "strings": np.full((52, 3), "0.1"), "no_frames": np.zeros((0, 55, 3))}.get(case, rest)
    np.save(tmp_path / "target.npy", target)
    if case == "npz":
        with open(tmp_path / "target.npy", "wb") as f:  # (given a name, np.savez would append .npz)
            np.savez(f, joints=rest)
    if case == "text":
        (tmp_path / "target.npy").write_text("0.1 0.2 0.3\n")
    message = {"nan": "finite real numbers", "strings": "finite real numbers", "npz": "not an .npz", "no_frames": "clip has no frames",
               "text": "must be a .npy array \\(not an .npy file"}  # not numpy's advice to allow pickles
    settings = {"model_dir": str(model_dir), "retarget": str(tmp_path / "target.npy")}
    with pytest.raises(SignfeatError, match=message.get(case, "not a skeleton")):
        build_extractor({"name": "smplx623", "settings": settings})
    # and a job's config refuses it up front, before Ray starts
    from pipeline.config import load_job_config

    (tmp_path / "job.yaml").write_text(json.dumps({"extractors": [{"name": "smplx623", "settings": settings}]}))
    with pytest.raises(SignfeatError, match=message.get(case, "not a skeleton")):
        load_job_config(tmp_path / "job.yaml")


def test_video_through_the_contract_equals_direct_calls(extractor, body, monkeypatch):
    joints = body.joints(dict(smooth_random_params(5, seed=7), betas=np.zeros((5, 10), np.float32)))
    landmarks = landmarks_from_joints(joints)
    monkeypatch.setattr(type(extractor.estimator), "landmarks", lambda self, frames: landmarks)
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 60, 80, 3), dtype=np.uint8)
    prepared = extractor.prepare(frames)
    assert prepared.dtype.is_floating_point is False and tuple(prepared.shape) == (5, 3, 512, 682)  # aspect kept, no crop
    (array,) = extractor.extract_prepared([prepared])
    keypoints = landmarks_to_keypoints(landmarks, (512, 682), body)
    params, _ = fit_keypoints(body, keypoints, FitSettings(iterations=40, orient_iterations=10))
    np.testing.assert_allclose(array, joints_to_features(body.joints(params), body.rest_joints()), atol=1e-4)
    assert extractor.extract([frames])[0].shape == (4, 623)
    with torch.inference_mode():  # a caller in inference mode (as other extractors run): the fitting still differentiates
        built_inside = build_extractor({"name": "smplx623", "settings": dict(extractor.settings.__dict__)})
        monkeypatch.setattr(type(built_inside.estimator), "landmarks", lambda self, frames: landmarks)
        np.testing.assert_allclose(built_inside.extract_prepared([prepared])[0], array, atol=1e-5)
    # target_fps needs each clip's rate, which extract / extract_prepared do not take: they ignored it
    resampling = build_extractor({"name": "smplx623", "settings": {**extractor.settings.__dict__, "target_fps": 10}})
    with pytest.raises(SignfeatError, match="target_fps=10.0 needs each clip's frame rate"):
        resampling.extract([frames])


def test_transform_geometry_is_its_own(extractor):
    config = ExtractorConfig(name="smplx623", settings={"image_size": 384})
    transform = REGISTRY["smplx623"].transform_for(config)  # built without the model file, as the CPU stage does
    assert geometry_key(transform) == "g384_0_bilinear_pil_floor_0"
    assert geometry_key(extractor.transform) != geometry_key(REGISTRY["dinov2"].transform_for(ExtractorConfig(name="dinov2", random_weights=True)))


def test_missing_model_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(SignfeatError) as err:
        build_extractor({"name": "smplx623", "settings": {"model_dir": str(tmp_path / "none")}})
    assert "\n" not in str(err.value) and "SMPLX_NEUTRAL.npz" in str(err.value) and "smpl-x.is.tue.mpg.de" in str(err.value)


def test_bad_settings_are_refused(model_dir):
    with pytest.raises(SignfeatError, match="gender"):
        build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "gender": "other"}})
    with pytest.raises(SignfeatError, match="unknown smplx623 settings"):
        build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "sigma": 3}})


def test_too_short_clip_is_a_clip_error(extractor, model_dir):
    from pipeline.errors import ClipError

    with pytest.raises(ClipError, match="at least 2 frames, got 1$"):
        extractor.extract_params([smooth_random_params(1)])
    # 2 frames at 30 fps resample to 1 at 20 fps: the message says the count is the resampled one
    at_20 = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "target_fps": 20}})
    with pytest.raises(ClipError, match=r"at least 2 frames, got 1 at target_fps 20 \(the clip's frames resampled to it"):
        at_20.extract_params([smooth_random_params(2)], [30.0])


def test_cli_features_on_a_parameters_file(model_dir, extractor, tmp_path, capsys):
    from pipeline.cli import main

    params = smooth_random_params(9, seed=1)
    np.savez(tmp_path / "clip.npz", **params)
    assert main(["features", str(tmp_path / "clip.npz"), "--extractor", "smplx623", "--set", f"model_dir={model_dir}", "--out", str(tmp_path / "f.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), extractor.extract_params([params])[0], atol=1e-6)
    assert main(["features", str(tmp_path / "clip.npz"), "--extractor", "smplx623", "--out", str(tmp_path / "g.npy")]) == 2
    assert "model_dir is not set" in capsys.readouterr().err
    # decode options are video options: refused for parameters (they were ignored, the output at the file's rate)
    assert main(["features", str(tmp_path / "clip.npz"), "--extractor", "smplx623", "--set", f"model_dir={model_dir}",
                 "--target-fps", "10", "--out", str(tmp_path / "h.npy")]) == 2
    assert "--target-fps applies to videos and frame folders" in capsys.readouterr().err and not (tmp_path / "h.npy").exists()
    # --fps for a file that records its own rate: the file's is used (as in a job), and said (it was dropped silently)
    np.savez(tmp_path / "rated.npz", **params, fps=np.array(30.0))
    assert main(["features", str(tmp_path / "rated.npz"), "--extractor", "smplx623", "--set", f"model_dir={model_dir}",
                 "--fps", "60", "--out", str(tmp_path / "r.npy")]) == 0
    assert "records its own rate, 30 fps, which is used; --fps 60 is not" in capsys.readouterr().err
    # a finite target skeleton of absurd size (x 1e200) gave features that were NaN, written with exit 0
    from motion.synthetic import rest_joints

    np.save(tmp_path / "huge.npy", rest_joints() * 1e200)
    assert main(["features", str(tmp_path / "clip.npz"), "--extractor", "smplx623", "--set", f"model_dir={model_dir}",
                 "--set", f"retarget={tmp_path / 'huge.npy'}", "--out", str(tmp_path / "n.npy")]) == 2
    assert "smplx623 produced non-finite values (float32 NaN or inf)" in capsys.readouterr().err and not (tmp_path / "n.npy").exists()


def test_extract_files_gives_features_and_their_time_base(model_dir, tmp_path):
    """What a job's actor calls on a source_kind=smplx row: features plus the frames/fps they are aligned to."""
    import types

    from extractors.base import Extractor
    from pipeline.errors import ClipError

    np.savez(tmp_path / "own.npz", **smooth_random_params(12, seed=5), fps=np.array(25.0))
    np.savez(tmp_path / "given.npz", **smooth_random_params(9, seed=6))
    ex = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "target_fps": 20}})
    (own, n_own, fps_own), (given, n_given, fps_given) = ex.extract_files([tmp_path / "own.npz", tmp_path / "given.npz"], [50.0, 30.0])
    assert (n_own, fps_own, own.shape) == (9, 20.0, (8, 623))  # the file's 25 fps wins over 50; frames 0..0.44 s -> 9 instants at 20 fps
    assert (n_given, fps_given, given.shape) == (6, 20.0, (5, 623))  # 9 frames at the given 30 fps
    np.testing.assert_allclose(own, ex.extract_paths([tmp_path / "own.npz"], [50.0])[0], atol=1e-5)  # batched with another clip or alone
    keep = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir)}})
    assert keep.extract_files([tmp_path / "given.npz"], [30.0])[0][1:] == (9, 30.0)  # no target_fps: the input's own
    with pytest.raises(ClipError) as err:  # target_fps and no rate anywhere: kept silently at the unknown rate before
        ex.extract_files([tmp_path / "given.npz"], [None])
    assert err.value.kind == "no_fps"
    assert type(ex).expected_rows(9, {}) == 8 and Extractor.expected_rows(9, {}) == 9
    with pytest.raises(ClipError) as err:
        ex.extract_files([tmp_path / "nothing_here.npz"], [25.0])
    assert err.value.kind == "bad_params"
    with pytest.raises(ClipError) as err:  # a video-only extractor refuses a parameters clip with a clear class
        Extractor.extract_files(types.SimpleNamespace(name="dinov2"), ["x.pkl"], [None])
    assert err.value.kind == "needs_video"


def test_non_finite_parameters_with_target_fps_are_bad_params(model_dir, tmp_path):
    # resampling ran scipy's slerp on them first: "Found zero norm quaternions", a ValueError in the failures
    from pipeline.errors import ClipError

    params = smooth_random_params(12, seed=5)
    params["body_pose"][4, 7] = np.nan
    np.savez(tmp_path / "nan.npz", **params, fps=np.array(25.0))
    ex = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "target_fps": 20}})
    with pytest.raises(ClipError, match=f"^{tmp_path / 'nan.npz'}: body_pose holds NaN or infinite values \\(frame 4\\)") as err:
        ex.extract_files([tmp_path / "nan.npz"], [None])
    assert err.value.kind == "bad_params"


def test_parameters_the_body_model_refuses_are_the_clip_s_bad_params_with_its_path(model_dir, tmp_path):
    # the job's failures row said class SignfeatError ("betas has 16 coefficients but the model uses 10 ..."), no path
    from pipeline.errors import ClipError, SignfeatError

    params = smooth_random_params(6, seed=5)
    np.savez(tmp_path / "betas16.npz", **{**params, "betas": np.ones((1, 16), np.float32)}, fps=np.array(20.0))
    np.savez(tmp_path / "ok.npz", **params, fps=np.array(20.0))
    ex = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir)}})
    with pytest.raises(ClipError, match=f"^{tmp_path / 'betas16.npz'}: betas has 16 coefficients but the model uses 10") as err:
        ex.extract_files([tmp_path / "betas16.npz"], [None])
    assert err.value.kind == "bad_params"
    with pytest.raises(SignfeatError) as err:  # in a batch the job retries clip by clip, so each gets its own class
        ex.extract_files([tmp_path / "ok.npz", tmp_path / "betas16.npz"], [None, None])
    assert not isinstance(err.value, ClipError)


def test_a_non_finite_motion_s_failure_names_its_own_storage_dtype(model_dir, tmp_path):
    """The failures row of smplx623 (float32) said "float16 overflow or NaN"."""
    import json

    from pipeline.stages import ExtractStream, geometry_key

    entry = {"name": "smplx623", "settings": {"model_dir": str(model_dir)}}
    stream = ExtractStream(entry, "prep_" + geometry_key(build_extractor(entry).transform), use_gpu=False)
    stream._extract = lambda batch, idx: [(np.full((3, 623), np.nan, np.float32), None, {}) for _ in idx]
    batch = {"key": np.array(["a"]), "path": np.array(["a.npz"]), "error_class": np.array([""], dtype=object),
             "error_stage": np.array([""], dtype=object), "error_message": np.array([""], dtype=object)}
    out = stream(batch)
    assert out["error_class"][0] == "nonfinite"
    assert out["error_message"][0] == "smplx623 produced non-finite values (float32 NaN or inf)", json.dumps(list(out["error_message"]))


def test_target_fps_resamples_a_video_s_estimated_motion_as_a_parameter_file_s(model_dir, monkeypatch):
    """target_fps was ignored for video rows: one stream held 25 fps motions next to 20 fps ones under one settings
    hash. The estimated motion is resampled as the same parameters read from a file would be."""
    from motion.params_io import resample_params

    ex = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "target_fps": 10, "image_size": 64}})
    params = smooth_random_params(25, seed=3)

    class Estimated:  # the estimator's output (MediaPipe + fitting are tested above); here only the time base matters
        def estimate(self, frames):
            assert len(frames) == 25
            return params

    ex._estimator = Estimated()
    frames = np.zeros((25, 64, 64, 3), np.uint8)
    ((array, num_frames, fps, detections),) = ex.extract_prepared_timed([ex.prepare(frames)], [25.0])
    (want,) = ex.extract_params([resample_params(params, 25.0, 10.0)])
    assert (num_frames, fps) == (10, 10.0) and array.shape == (9, 623)
    assert detections == {}  # an estimator that does not report what it saw
    np.testing.assert_allclose(array, want, atol=1e-6)
    ((_, same, rate, _),) = ex.extract_prepared_timed([ex.prepare(frames)], [10.0])  # already at 10 fps: as it is
    assert (same, rate) == (25, 10.0)


def test_a_job_with_smplx623_target_fps_and_other_streams_needs_one_frame_rate():
    from pipeline.config import parse_job_config

    both = [{"name": "smplx623", "settings": {"target_fps": 20}}, {"name": "dinov2", "tiny": True}]
    with pytest.raises(SignfeatError, match=r"smplx623 settings.target_fps 20 resamples the motion.*set decode.target_fps: 20 too"):
        parse_job_config({"extractors": both})
    parse_job_config({"extractors": both, "decode": {"target_fps": 20}})
    parse_job_config({"extractors": both[:1]})  # alone: its own rate
