"""Input A readers on files written here in each supported layout, and the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from motion.params_io import CAMERA_TO_Y_UP, UnsafePickleError, detect_layout, is_params_path, read_params, safe_load_pickle
from motion.synthetic import smooth_random_params
from pipeline.errors import SignfeatError

FRAMES = 6


@pytest.fixture()
def params():
    return smooth_random_params(FRAMES, seed=3)


def _signavatars_matrix(p):
    return np.concatenate([p["global_orient"], p["body_pose"], p["left_hand_pose"], p["right_hand_pose"], p["jaw_pose"],
                           p["betas"], p["expression"], p["transl"]], axis=1)


def _assert_same(read, expected, keys):
    for key in keys:
        np.testing.assert_array_equal(read[key], expected[key], err_msg=key)


def test_signavatars_pickle(tmp_path, params, body_model):
    path = tmp_path / "video.pkl"
    path.write_bytes(pickle.dumps({"smplx": _signavatars_matrix(params), "fps": 24.0}, protocol=4))
    assert detect_layout(path) == "signavatars" and is_params_path(path)
    read, fps = read_params(path)
    assert fps == 24.0
    _assert_same(read, params, ["global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "betas", "expression", "transl"])
    np.testing.assert_array_equal(read["world_rotation"], CAMERA_TO_Y_UP)
    # camera frame (Y down) -> Y up: the joints are those of the same parameters turned by 180 degrees about X
    camera = body_model.joints({k: v for k, v in read.items() if k != "world_rotation"})
    np.testing.assert_allclose(body_model.joints(read), camera * [1, -1, -1], atol=1e-6)


def test_signavatars_bad_width_is_an_error(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"smplx": np.zeros((4, 170), np.float32)}))
    with pytest.raises(SignfeatError, match=r"\(N, 182\)"):
        read_params(path)


@pytest.mark.parametrize("suffix", [".npz", ".pkl"])
def test_smplerx_per_frame_folder(tmp_path, params, suffix):
    folder = tmp_path / "clip"
    folder.mkdir()
    names = {"smplx_root_pose": "global_orient", "smplx_body_pose": "body_pose", "smplx_lhand_pose": "left_hand_pose",
             "smplx_rhand_pose": "right_hand_pose", "smplx_jaw_pose": "jaw_pose", "smplx_shape": "betas", "smplx_expr": "expression",
             "cam_trans": "transl"}
    for t in range(FRAMES):  # frame 10 must come after frame 9: natural order
        frame = {key: params[name][t].reshape(1, -1) for key, name in names.items()}
        frame["smplx_body_pose"] = frame["smplx_body_pose"].reshape(21, 3)  # estimators write (21, 3) too
        path = folder / f"{t * 5:05d}_0{suffix}".replace("00000", "0")
        if suffix == ".npz":
            np.savez(path, **frame)
        else:
            path.write_bytes(pickle.dumps(frame))
    assert detect_layout(folder) == "smplerx" and is_params_path(folder)
    read, fps = read_params(folder)
    assert fps is None
    _assert_same(read, params, list(names.values()))
    np.testing.assert_array_equal(read["world_rotation"], CAMERA_TO_Y_UP)


def test_motionx_322(tmp_path, params):
    matrix = np.zeros((FRAMES, 322), np.float32)
    matrix[:, :156] = np.concatenate([params["global_orient"], params["body_pose"], params["left_hand_pose"], params["right_hand_pose"]], axis=1)
    matrix[:, 156:159] = params["jaw_pose"]
    matrix[:, 159:309] = 7.0  # FLAME expression and shape: not SMPL-X coefficients, ignored
    matrix[:, 309:312] = params["transl"]
    matrix[:, 312:322] = params["betas"]
    path = tmp_path / "000006.npy"
    np.save(path, matrix)
    assert detect_layout(path) == "motionx"
    read, _ = read_params(path)
    _assert_same(read, params, ["global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "transl", "betas"])
    assert "expression" not in read and "world_rotation" not in read


def test_named_npz(tmp_path, params):
    path = tmp_path / "clip.npz"
    np.savez(path, **params, fps=np.array(30.0))
    assert detect_layout(path) == "named"
    read, fps = read_params(path)
    assert fps == 30.0
    _assert_same(read, params, list(params))
    np.savez(path, **{k: v for k, v in params.items() if k != "betas"}, betas=params["betas"][0])  # one row of betas
    read, fps = read_params(path)
    assert fps is None and read["betas"].shape == (1, 10)


def test_unknown_or_inconsistent_files_are_clear_errors(tmp_path, params):
    with pytest.raises(SignfeatError, match="no such parameters"):
        read_params(tmp_path / "missing.pkl")
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(SignfeatError, match="no SMPL-X parameters found"):
        read_params(tmp_path / "other.npz")
    np.savez(tmp_path / "short.npz", global_orient=params["global_orient"], body_pose=params["body_pose"][:3])
    with pytest.raises(SignfeatError, match="disagree on the number of frames"):
        read_params(tmp_path / "short.npz")
    np.save(tmp_path / "wide.npy", np.zeros((3, 100), np.float32))
    with pytest.raises(SignfeatError, match="width 100"):
        read_params(tmp_path / "wide.npy")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"smplx": _Exploit(marker)})
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    assert pickle.loads  # the plain unpickler would run os.system; ours refuses at the global lookup
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|os)\.system"):
        read_params(path)
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(pickle.dumps(_Exploit(marker)))
    assert not marker.exists()


def test_restricted_unpickler_refuses_arbitrary_classes_but_reads_numpy(tmp_path):
    from collections import Counter

    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        safe_load_pickle(pickle.dumps(Counter("ab")))
    data = {"a": np.arange(4, dtype=np.int16), "b": [np.float64(2.5), ("x", 1)], "c": b"raw"}
    for protocol in (2, 4, 5):
        out = safe_load_pickle(pickle.dumps(data, protocol=protocol))
        np.testing.assert_array_equal(out["a"], data["a"])
        assert out["b"][0] == 2.5 and out["b"][1] == ("x", 1) and out["c"] == b"raw"


def test_resampling_interpolates_poses_at_the_new_instants():
    # picking frames at 25 -> 20 fps spaced them unevenly in time: a root at constant speed read 0.04, 0.04,
    # 0.04, 0.08 m per row. Reference: a pose that changes uniformly (constant velocity, a joint turning at a
    # constant rate about a fixed axis) must come out exactly at each instant k / 20 s.
    from scipy.spatial.transform import Rotation

    from motion.params_io import resample_params

    n, fps = 26, 25.0  # 1.04 s -> 21 frames at 20 fps (instants 0, 0.05, ..., 1.0 s)
    t = np.arange(n) / fps
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    params = {"transl": np.stack([t * 1.0, 0 * t, 0.2 * t], 1).astype(np.float32),  # 1 m/s forward
              "global_orient": (axis[None] * (0.4 + 2.0 * t[:, None])).astype(np.float32),  # 2 rad/s about one axis
              "body_pose": np.zeros((n, 63), np.float32), "betas": np.ones((1, 10), np.float32), "world_rotation": np.eye(3)}
    out = resample_params(params, fps, 20.0)
    k = np.arange(21) / 20.0
    np.testing.assert_allclose(out["transl"][:, 0], k, atol=1e-6)
    np.testing.assert_allclose(np.diff(out["transl"][:, 0]), 0.05, atol=1e-6)  # even steps
    expected = Rotation.from_rotvec(axis[None] * (0.4 + 2.0 * k[:, None]))
    got = Rotation.from_rotvec(out["global_orient"].astype(np.float64))
    assert np.degrees((expected.inv() * got).magnitude()).max() < 1e-3
    assert out["betas"].shape == (1, 10) and np.array_equal(out["world_rotation"], np.eye(3))


def test_resampling_at_an_integer_ratio_picks_every_kth_frame_as_humanml3d_does():
    from motion.params_io import resample_params
    from motion.synthetic import smooth_random_params

    params = smooth_random_params(60, seed=1)  # 1 s at 60 fps -> 20 fps: HumanML3D's poses[::3]
    out = resample_params(params, 60.0, 20.0)
    for name, value in params.items():
        if name != "betas" or len(value) == 60:
            assert np.array_equal(out[name], value[::3]), name


@pytest.mark.parametrize("n, fps, target", [(27, 25.0, 20.0), (100, 29.97, 20.0), (40, 20.0, 30.0), (301, 30.0, 20.0), (61, 60.0, 20.0)])
def test_resampling_never_ends_on_a_held_frame(n, fps, target):
    # instants past the last source frame were clamped to it: the last row repeated the pose and a 1 m/s walk's
    # last step read 0.0266 m (29.97 -> 20 fps) or 0 (20 -> 30 fps) instead of 0.05 / 0.033 m
    from motion.params_io import resample_params

    t = np.arange(n) / fps
    params = {"transl": np.stack([t, 0 * t, 0 * t], 1).astype(np.float32), "global_orient": np.zeros((n, 3), np.float32),
              "body_pose": np.zeros((n, 63), np.float32)}
    out = resample_params(params, fps, target)
    steps = np.diff(out["transl"][:, 0])
    np.testing.assert_allclose(steps, 1.0 / target, atol=1e-5)  # every step, the last one too
    assert out["transl"][-1, 0] <= t[-1] + 1e-6 and t[-1] - out["transl"][-1, 0] < 1.0 / target  # none past, none missing
    for k in (2, 3):  # an integer ratio keeps HumanML3D's len(poses[::k])
        assert len(resample_params(params, fps * k, fps)["transl"]) == len(params["transl"][::k])


def test_a_folder_as_smplerx_inference_saves_it_reads_the_first_person_of_each_frame(tmp_path):
    # SMPLer-X's main/inference.py saves {frame:05}_{person}.npz with global_orient (1, 3), body_pose (21, 3), ...,
    # transl (its camera translation): refused before ("needs smplx_root_pose"); a second person's file was an
    # extra frame
    from motion.params_io import CAMERA_TO_Y_UP, read_params
    from motion.synthetic import smooth_random_params

    p = smooth_random_params(6, seed=7)
    for i in range(6):
        np.savez(tmp_path / f"{i + 1:05}_0.npz", global_orient=p["global_orient"][i].reshape(-1, 3), body_pose=p["body_pose"][i].reshape(-1, 3),
                 left_hand_pose=p["left_hand_pose"][i].reshape(-1, 3), right_hand_pose=p["right_hand_pose"][i].reshape(-1, 3),
                 jaw_pose=p["jaw_pose"][i].reshape(-1, 3), leye_pose=np.zeros((1, 3)), reye_pose=np.zeros((1, 3)),
                 betas=p["betas"][i].reshape(-1, 10), expression=p["expression"][i].reshape(-1, 10), transl=p["transl"][i].reshape(-1, 3))
    np.savez(tmp_path / "00004_1.npz", **{k: v + 1.0 for k, v in np.load(tmp_path / "00004_0.npz").items()})  # a bystander
    params, fps = read_params(tmp_path)
    assert fps is None and np.array_equal(params["world_rotation"], CAMERA_TO_Y_UP)  # camera frame, as SMPLer-X's cam_trans
    for name in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "betas", "expression", "transl"):
        np.testing.assert_array_equal(params[name], p[name].reshape(6, -1).astype(np.float32), err_msg=name)


def test_an_amass_smplx_npz_is_read_with_its_rate_and_turned_y_up_as_humanml3d_does(tmp_path):
    # AMASS's poses (N, 165) was "no per-frame pose parameters"; its object-array keys (gender, marker dicts) were
    # numpy tracebacks in `signfeat features`
    from motion.params_io import AMASS_TO_Y_UP

    p = smooth_random_params(8, seed=3)
    order = ["global_orient", "body_pose", "jaw_pose", "leye_pose", "reye_pose", "left_hand_pose", "right_hand_pose"]
    poses = np.concatenate([p[k] if k in p else np.zeros((8, 3), np.float32) for k in order], axis=1)
    assert poses.shape == (8, 165)
    np.savez(tmp_path / "amass.npz", poses=poses, trans=p["transl"], betas=np.arange(16, dtype=np.float64) / 100,
             gender=np.array("female", dtype=object), mocap_frame_rate=np.array(120.0), markers_latent_vids=np.array({"a": 1}, dtype=object))
    assert detect_layout(tmp_path / "amass.npz") == "amass"
    params, fps = read_params(tmp_path / "amass.npz")
    assert fps == 120.0 and params["betas"].shape == (1, 16)
    for name in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose"):
        np.testing.assert_array_equal(params[name], p[name].reshape(8, -1), err_msg=name)
    np.testing.assert_array_equal(params["transl"], p["transl"])
    # HumanML3D: joints @ trans_matrix (swap y and z), then x *= -1
    v = np.array([0.1, 0.2, 0.3], np.float32)
    np.testing.assert_allclose(AMASS_TO_Y_UP @ v, [-0.1, 0.3, 0.2])
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(SignfeatError, match="not a numeric parameters array"):
        read_params(tmp_path / "obj.npy")


class _TensorStorageExploit:
    """Pickles as a torch tensor storage whose torch.save bytes hold an exploit: torch's own
    _load_from_bytes (torch.load, weights_only=False) would run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import io

        import torch
        import torch.storage

        buffer = io.BytesIO()
        torch.save(_Exploit(self.marker), buffer)
        return (torch.storage._load_from_bytes, (buffer.getvalue(),))


def test_signavatars_pickles_of_torch_tensors_joblib_and_torch_save_files_read_as_numpy(tmp_path, params):
    """SignAvatars' pickles hold torch tensors (the official loader is joblib.load); other tools write
    joblib.dump or torch.save files: each reads to the same numpy parameters as a numpy pickle."""
    import joblib
    import torch

    matrix = _signavatars_matrix(params)
    expected, _ = read_params(_write(tmp_path / "numpy.pkl", pickle.dumps({"smplx": matrix})))
    tensors = {"smplx": torch.from_numpy(matrix).requires_grad_(), "width": 1920, "total_valid_index": torch.arange(FRAMES)}
    joblib.dump({"smplx": matrix, "fps": np.float64(25.0)}, tmp_path / "joblib.pkl")
    torch.save(tensors, tmp_path / "zip.pkl")
    torch.save(tensors, tmp_path / "legacy.pkl", _use_new_zipfile_serialization=False)
    files = [_write(tmp_path / "tensors.pkl", pickle.dumps(tensors)), tmp_path / "joblib.pkl", tmp_path / "zip.pkl",
             tmp_path / "legacy.pkl", _write(tmp_path / "bf16.pkl", pickle.dumps({"smplx": torch.from_numpy(matrix).bfloat16()}))]
    for path in files:
        assert detect_layout(path) == "signavatars", path
        read, fps = read_params(path)
        assert fps == (25.0 if path.name == "joblib.pkl" else None)
        atol = 0.02 * np.abs(matrix).max() if path.name == "bf16.pkl" else 0
        for key in ["global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "betas", "expression", "transl"]:
            np.testing.assert_allclose(read[key], expected[key], atol=atol, rtol=0, err_msg=f"{path.name}: {key}")
    loaded = safe_load_pickle(tmp_path / "tensors.pkl")
    assert isinstance(loaded["total_valid_index"], np.ndarray) and loaded["width"] == 1920


def test_tensor_joblib_and_torch_save_pickles_still_refuse_what_they_hide(tmp_path):
    """A tensor storage's torch.save bytes, a joblib file and a torch.save file go through the same
    restricted globals (torch.load with weights_only=True for torch's archives): nothing runs."""
    import joblib
    import torch

    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match="weights_only"):
        safe_load_pickle(pickle.dumps({"smplx": _TensorStorageExploit(marker)}))
    joblib.dump({"smplx": np.zeros((2, 182), np.float32), "evil": _Exploit(marker)}, tmp_path / "evil_joblib.pkl")
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        safe_load_pickle(tmp_path / "evil_joblib.pkl")
    joblib.dump({"objects": np.array([_Exploit(marker)], dtype=object)}, tmp_path / "evil_object_array.pkl")
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        safe_load_pickle(tmp_path / "evil_object_array.pkl")
    torch.save({"evil": _Exploit(marker)}, tmp_path / "evil_zip.pkl")
    with pytest.raises(UnsafePickleError, match="weights_only"):
        safe_load_pickle(tmp_path / "evil_zip.pkl")
    assert not marker.exists()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


class _GpuSavedTensor:
    """Pickles as a tensor pickled on a GPU machine does: its storage's torch.save bytes name cuda:0."""

    def __init__(self, tensor):
        self.tensor = tensor.contiguous()

    def __reduce__(self):
        import collections
        import io
        import warnings

        import torch
        import torch._utils
        import torch.storage

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated; it is what a tensor pickle holds
            torch.save(self.tensor.storage(), buffer, _use_new_zipfile_serialization=False)
        raw = buffer.getvalue().replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
        assert b"cuda:0" in raw
        storage = _Reduced(torch.storage._load_from_bytes, (raw,))
        return (torch._utils._rebuild_tensor_v2, (storage, 0, tuple(self.tensor.shape), self.tensor.stride(), False, collections.OrderedDict()))


class _Reduced:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_a_signavatars_pickle_of_gpu_tensors_reads_on_a_machine_without_one(tmp_path, params):
    """torch's own unpickling of such a file fails without CUDA ("Attempting to deserialize object on a CUDA
    device"); the restricted reader maps the storage to the CPU."""
    import torch

    matrix = _signavatars_matrix(params)
    raw = pickle.dumps({"smplx": _GpuSavedTensor(torch.from_numpy(matrix))})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            pickle.loads(raw)
    read, _ = read_params(_write(tmp_path / "gpu.pkl", raw))
    np.testing.assert_array_equal(read["body_pose"], params["body_pose"])
    np.testing.assert_array_equal(read["transl"], params["transl"])


def _smplerx_frame(path, p, i):
    np.savez(path, global_orient=p["global_orient"][i].reshape(-1, 3), body_pose=p["body_pose"][i].reshape(-1, 3),
             betas=p["betas"][i].reshape(-1, 10), transl=p["transl"][i].reshape(-1, 3))


def test_a_smplerx_folder_with_frames_missing_is_an_error_not_a_shorter_clip(tmp_path):
    """SMPLer-X writes no file where it detects no person: the clip came out shorter, one row holding the gap's movement."""
    from motion.params_io import read_params

    p = smooth_random_params(12, seed=2)
    for i in [*range(4), *range(8, 12)]:
        _smplerx_frame(tmp_path / f"{i:05}_0.npz", p, i)
    with pytest.raises(SignfeatError, match=r"no file for frames 4\.\.7"):
        read_params(tmp_path)
    every_other = tmp_path / "every_other"
    every_other.mkdir()
    for i in range(0, 12, 2):  # evenly numbered with a step of 2: a subsampled export, no gap
        _smplerx_frame(every_other / f"{i:05}_0.npz", p, i)
    assert read_params(every_other)[0]["body_pose"].shape[0] == 6


def test_per_frame_files_with_a_numbered_prefix_are_frames_not_persons(tmp_path):
    """signer01_00000 ... signer01_00019 read as 20 persons of frame 'signer01' (one frame)."""
    from motion.params_io import read_params

    p = smooth_random_params(20, seed=4)
    for i in range(20):
        _smplerx_frame(tmp_path / f"signer01_{i:05}.npz", p, i)
    params, _ = read_params(tmp_path)
    np.testing.assert_array_equal(params["body_pose"], p["body_pose"].astype(np.float32))


def test_a_smplerx_folder_skips_macos_appledouble_files(tmp_path):
    """macOS leaves "._00001_0.npz" next to every file it copies to a non-Mac disk: they failed the whole clip
    with numpy's allow_pickle message."""
    p = smooth_random_params(5, seed=3)
    for i in range(5):
        _smplerx_frame(tmp_path / f"{i:05}_0.npz", p, i)
        (tmp_path / f"._{i:05}_0.npz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    params, _ = read_params(tmp_path)
    np.testing.assert_array_equal(params["body_pose"], p["body_pose"].astype(np.float32))


def test_per_frame_files_of_one_zero_padded_prefix_are_frames(tmp_path):
    """{clip}_{frame} names with one zero-padded clip id (00042_0 ... 00042_29) are a clip's frames: read as the
    persons of one frame, the clip came out one frame long."""
    p = smooth_random_params(30, seed=5)
    for i in range(30):
        _smplerx_frame(tmp_path / f"00042_{i}.npz", p, i)
    np.testing.assert_array_equal(read_params(tmp_path)[0]["body_pose"], p["body_pose"].astype(np.float32))


def test_empty_cut_off_or_misspelt_parameter_files_are_clear_clip_errors(tmp_path, params):
    """An empty array and a cut-off .npz raised numpy's and zipfile's own exceptions (a traceback in `features`);
    a misspelt key (lhand_pose) was dropped, its joints left at rest: the hands gone without a word."""
    from motion.params_io import read_clip_params
    from pipeline.errors import ClipError

    np.savez(tmp_path / "empty.npz", global_orient=np.zeros((0, 3)), body_pose=np.zeros((0, 63)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "empty.npz").read_bytes()[:200])
    t = len(params["body_pose"])
    np.savez(tmp_path / "typo.npz", global_orient=params["global_orient"], body_pose=params["body_pose"],
             lhand_pose=np.zeros((t, 45)), transl=params["transl"])
    np.savez(tmp_path / "no_body.npz", global_orient=params["global_orient"], transl=params["transl"])
    for name, message in [("empty", "global_orient is empty"), ("cut", "not a .npz \\(zip\\) archive, or one cut short"),
                          ("typo", "'lhand_pose' is not a SMPL-X parameter name; did you mean 'left_hand_pose'"),
                          ("no_body", "need body_pose")]:
        with pytest.raises(ClipError, match=message) as exc:
            read_clip_params(tmp_path / f"{name}.npz")
        assert exc.value.kind == "bad_params"
    # other keys are fine: the smplx library's own output (full_pose, no eye poses), SMPLer-X's root_pose, eye and head poses
    np.savez(tmp_path / "extra.npz", **{k: v for k, v in params.items() if k not in ("leye_pose", "reye_pose")},
             gender=np.array("neutral"), keypoints=np.zeros((t, 10)), full_pose=np.zeros((t, 165)), root_pose=np.zeros((t, 3)),
             eye_pose=np.zeros((t, 6)), head_pose=np.zeros((t, 3)))
    assert read_params(tmp_path / "extra.npz")[0]["body_pose"].shape[0] == t


@pytest.mark.parametrize("key, shape, message", [
    ("body_pose", (FRAMES, 21, 3, 3), "body_pose of shape \\(6, 21, 3, 3\\) holds rotation matrices"),
    ("global_orient", (FRAMES, 3, 3), "global_orient of shape \\(6, 3, 3\\) holds rotation matrices"),
    ("body_pose", (FRAMES, 60), "body_pose has shape \\(6, 60\\), 60 values a frame; expected 63"),
    ("left_hand_pose", (FRAMES, 15, 4), "left_hand_pose has shape \\(6, 15, 4\\), 60 values a frame; expected 45 \\(axis-angle"),
    ("transl", (FRAMES, 2), "transl has shape \\(6, 2\\), 2 values a frame; expected 3 \\(x, y, z;"),
])
def test_named_parameters_of_another_form_are_refused_with_their_path(tmp_path, params, key, shape, message):
    """A named .npz with rotation matrices or a pose of another width was probed ok, then failed in the job
    as class SignfeatError ("parameter body_pose has width 189, expected 63"), without its path."""
    from motion.params_io import read_clip_params
    from pipeline.errors import ClipError

    np.savez(tmp_path / "clip.npz", **{**params, key: np.zeros(shape, np.float32)}, fps=np.array(30.0))
    with pytest.raises(ClipError, match=message) as exc:
        read_clip_params(tmp_path / "clip.npz")
    assert exc.value.kind == "bad_params" and str(tmp_path / "clip.npz") in str(exc.value)
    # the same values as axis-angle, one frame a row ((T, 21, 3) as well as (T, 63)), read
    np.savez(tmp_path / "ok.npz", **{**params, "body_pose": params["body_pose"].reshape(FRAMES, 21, 3)}, fps=np.array(30.0))
    np.testing.assert_array_equal(read_clip_params(tmp_path / "ok.npz")[0]["body_pose"], params["body_pose"])


def test_a_cut_off_pickle_is_named_in_its_error(tmp_path, params):
    from motion.params_io import read_clip_params
    from pipeline.errors import ClipError

    (tmp_path / "clip.pkl").write_bytes(pickle.dumps(dict(params))[:100])
    with pytest.raises(ClipError, match=f"^{tmp_path / 'clip.pkl'}: unreadable pickle") as exc:
        read_clip_params(tmp_path / "clip.pkl", layout="named")
    assert exc.value.kind == "bad_params"


def test_resampling_keeps_a_one_dimensional_betas_vector_for_the_whole_clip():
    """A (10,) betas of a 10-frame clip was taken for a per-frame column and interpolated over time."""
    from motion.params_io import resample_params

    p = smooth_random_params(10, seed=1)
    betas = np.linspace(-1, 1, 10).astype(np.float32)
    out = resample_params({**p, "betas": betas}, fps=40.0, target_fps=20.0)
    np.testing.assert_array_equal(out["betas"], betas)
    assert out["body_pose"].shape[0] == 5


def test_params_layout_amass_is_accepted(tmp_path):
    from extractors.smplx623 import Smplx623Settings

    assert Smplx623Settings(params_layout="amass").params_layout == "amass"
    with pytest.raises(ValueError, match="params_layout must be auto or one of"):
        Smplx623Settings(params_layout="bvh")


@pytest.mark.parametrize("valid, error", [
    (np.arange(3, 3 + FRAMES), None),  # the rows are video frames 3..8: consecutive, read as they are
    (np.ones(FRAMES, np.int64), None),  # a 0/1 mask, every frame valid
    (np.ones(FRAMES, bool), None),  # the same as True/False
    (np.arange(0, 2 * FRAMES, 2), None),  # every 2nd video frame: evenly spaced, a clip at that step (as a SMPLer-X folder's)
    (np.array([True, True, False, True, True, True, True]), r"no parameters for frames 2\.\.2"),
    (np.array([0, 2, 4, 6, 10, 12]), r"no parameters for frames 8\.\.8"),  # a gap in a strided clip
    (np.array([0, 1, 2, 5, 6, 7]), r"no parameters for frames 3\.\.4 \(and 0 more gaps"),  # two frames without a row
    (np.array([1, 1, 0, 1, 1, 1, 1]), r"no parameters for frames 2\.\.2"),  # a mask over 7 video frames, 6 rows
    (np.arange(FRAMES - 1), r"neither 6 increasing frame numbers nor a 0/1 mask"),  # one entry short
    (np.array([0.0, 1.5, 2, 3, 4, 5]), r"must hold frame numbers"),
])
def test_signavatars_frames_the_estimator_skipped_are_refused_not_read_as_consecutive(tmp_path, params, valid, error):
    """total_valid_index was not read: a pickle whose rows skip video frames (no valid person there) read as a clip
    of consecutive frames, shorter than the video, with one row's velocity the whole gap's movement."""
    path = tmp_path / "video.pkl"
    path.write_bytes(pickle.dumps({"smplx": _signavatars_matrix(params), "fps": 25.0, "total_valid_index": valid}, protocol=4))
    if error is None:
        read, _ = read_params(path)
        _assert_same(read, params, ["body_pose", "transl"])
    else:
        with pytest.raises(SignfeatError, match=error):
            read_params(path)


@pytest.mark.parametrize("key, shape", [("body_pose", (1, 21, 3, 3)), ("body_pose", (1, 66)), ("body_pose", (1, 189)),
                                        ("global_orient", (1, 1, 3, 3)), ("left_hand_pose", (1, 48))])
def test_a_per_frame_pose_of_another_shape_is_refused_not_cut_to_size(tmp_path, params, key, shape):
    """Rotation matrices, or a pose wider than one person's, were flattened and their first values read as
    axis-angle: features of another motion, without a word."""
    for i in range(FRAMES):
        _smplerx_frame(tmp_path / f"{i:05}_0.npz", params, i)
        frame = dict(np.load(tmp_path / f"{i:05}_0.npz"))
        frame[key] = np.zeros(shape, np.float32)
        np.savez(tmp_path / f"{i:05}_0.npz", **frame)
    expected = "holds rotation matrices" if shape[-2:] == (3, 3) else "values a person, one person a row"
    with pytest.raises(SignfeatError, match=f"{key} (of shape|has shape) .*{expected}"):
        read_params(tmp_path)


def test_two_persons_a_row_each_still_read_the_first(tmp_path, params):
    for i in range(FRAMES):
        np.savez(tmp_path / f"{i:05}.npz", global_orient=np.stack([params["global_orient"][i], params["global_orient"][i] + 1]),
                 body_pose=np.stack([params["body_pose"][i], params["body_pose"][i] + 1]), transl=params["transl"][i][None])
    read, _ = read_params(tmp_path)
    _assert_same(read, {k: params[k].astype(np.float32) for k in ("global_orient", "body_pose", "transl")}, ["global_orient", "body_pose", "transl"])


def test_parameter_files_with_unreadable_values_are_refused_and_named(tmp_path, params):
    """An object-array hand pose was skipped (its joints at rest), an AMASS file without trans was said to lack
    body_pose, garbage named .npz was called pickled data, a fps of 0 or NaN was read as no fps, and rows of another
    count blamed the wrong parameter."""
    hands = np.empty(FRAMES, dtype=object)
    hands[:] = list(params["left_hand_pose"])
    np.savez(tmp_path / "objects.npz", **{**params, "left_hand_pose": hands})
    with pytest.raises(SignfeatError, match="left_hand_pose is an object \\(pickled\\) array"):
        read_params(tmp_path / "objects.npz")
    np.savez(tmp_path / "amass.npz", poses=np.zeros((FRAMES, 165)), betas=np.zeros(16), mocap_frame_rate=np.array(30.0))
    with pytest.raises(SignfeatError, match="an AMASS file needs trans"):
        read_params(tmp_path / "amass.npz")
    (tmp_path / "garbage.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(SignfeatError, match="garbage.npz: not a .npz \\(zip\\) archive, or one cut short"):
        read_params(tmp_path / "garbage.npz", "named")
    for bad in (0.0, -30.0, np.nan, True):  # True was read as 1 fps
        np.savez(tmp_path / "rate.npz", **params, fps=np.array(bad))
        with pytest.raises(SignfeatError, match="its fps .* is not a frame rate"):
            read_params(tmp_path / "rate.npz")
    np.savez(tmp_path / "rows.npz", **{**params, "global_orient": params["global_orient"][:1]})
    with pytest.raises(SignfeatError, match=f"disagree on the number of frames: .*'global_orient': 1, 'body_pose': {FRAMES}"):
        read_params(tmp_path / "rows.npz")
    np.save(tmp_path / "m.npy", np.zeros((FRAMES, 322), np.float32))
    with pytest.raises(SignfeatError, match="a .npy file holds no named parameters: this layout reads .npz or .pkl"):
        read_params(tmp_path / "m.npy", "amass")


def test_smplerx_frames_with_a_3x3_root_pose_or_16_betas(tmp_path, params):
    """A (3, 3) root or jaw rotation matrix beside a one-person body pose was read as 3 persons' axis-angle;
    SMPLer-X's smplx_shape of 16 betas (smplx_expr of 50) was refused as 'expected 10 values a person'."""
    rotation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    for i in range(FRAMES):
        np.savez(tmp_path / f"{i:05}.npz", smplx_root_pose=rotation, smplx_body_pose=params["body_pose"][i][None],
                 cam_trans=params["transl"][i][None])
    with pytest.raises(SignfeatError, match="values of different numbers of persons .*'smplx_root_pose': 3, 'smplx_body_pose': 1"):
        read_params(tmp_path)
    for i in range(FRAMES):
        np.savez(tmp_path / f"{i:05}.npz", smplx_root_pose=params["global_orient"][i][None], smplx_body_pose=params["body_pose"][i][None],
                 cam_trans=params["transl"][i][None], smplx_shape=np.arange(16, dtype=np.float32)[None],
                 smplx_expr=np.ones((1, 50), np.float32))
    read, _ = read_params(tmp_path)
    assert read["betas"].shape == (FRAMES, 16) and read["expression"].shape == (FRAMES, 50)
    np.testing.assert_array_equal(read["betas"][0], np.arange(16))


@pytest.mark.parametrize("key, frames, message", [
    ("body_pose", [2], "body_pose holds NaN or infinite values \\(frame 2\\)"),
    ("transl", [1, 4], "transl holds NaN or infinite values \\(2 of its 6 rows, the first frame 1\\)"),
    ("betas", [0], "betas holds NaN or infinite values \\(frame 0\\)"),
])
def test_parameters_with_nan_are_refused_naming_the_file_the_parameter_and_the_frame(tmp_path, params, key, frames, message):
    """NaN parameters (an estimator that lost the person) probed ok; the job's failures row then said only
    "SMPL-X parameters are not finite", naming neither the file nor the parameter."""
    from motion.params_io import read_clip_params
    from pipeline.errors import ClipError

    values = {k: np.array(v, np.float32) for k, v in params.items()}
    if key == "betas":
        values["betas"] = values["betas"][:1]  # one shape for the clip
    values[key][frames, 0] = [np.nan, np.inf][: len(frames)]
    np.savez(tmp_path / "clip.npz", **values, fps=np.array(30.0))
    with pytest.raises(ClipError, match=message) as exc:
        read_clip_params(tmp_path / "clip.npz")
    assert exc.value.kind == "bad_params" and str(exc.value).startswith(f"{tmp_path / 'clip.npz'}: ")
