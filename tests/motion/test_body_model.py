"""SMPL-X loading and batched forward kinematics against smplx's own forward on the synthetic model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motion.body_model import BodyModel, BodyModelSettings, find_model_file
from motion.synthetic import SMPLX_PARENTS, clamped_vertex_ids, rest_joints, smooth_random_params, write_synthetic_smplx
from pipeline.errors import SignfeatError


def _smplx_full_forward(model_dir, params, monkeypatch, **create_kwargs):
    """smplx's own batched forward (vertices, skinning, extra joints) with every parameter passed."""
    import smplx
    import smplx.body_models

    with np.load(model_dir / "smplx" / "SMPLX_NEUTRAL.npz") as f:
        num_vertices = len(f["v_template"])
    monkeypatch.setattr(smplx.body_models, "VERTEX_IDS", clamped_vertex_ids(num_vertices))
    model = smplx.create(str(model_dir), model_type="smplx", use_pca=False, num_betas=10, **create_kwargs)
    frames = len(params["global_orient"])
    tensors = {k: torch.from_numpy(v) for k, v in params.items()}
    with torch.no_grad():
        out = model(**tensors, leye_pose=torch.zeros(frames, 3), reye_pose=torch.zeros(frames, 3))
    return model, out


def test_synthetic_model_loads_through_smplx_and_matches_batched_joints(model_dir, body_model, monkeypatch):
    params = smooth_random_params(37, seed=4)
    model, out = _smplx_full_forward(model_dir, params, monkeypatch)
    assert model.parents.tolist() == list(SMPLX_PARENTS)
    assert out.vertices.shape[0] == 37 and out.joints.shape[0] == 37
    ours = body_model.joints(params)
    assert ours.shape == (37, 55, 3)
    np.testing.assert_allclose(ours, out.joints[:, :55].numpy(), atol=2e-5)


def test_flat_hand_mean_setting_changes_the_hands_as_smplx_does(model_dir, monkeypatch):
    params = smooth_random_params(5, seed=1)
    _, out = _smplx_full_forward(model_dir, params, monkeypatch, flat_hand_mean=True)
    flat = BodyModel(BodyModelSettings(model_dir=str(model_dir), flat_hand_mean=True))
    np.testing.assert_allclose(flat.joints(params), out.joints[:, :55].numpy(), atol=2e-5)


def test_rest_pose_is_the_model_rest_pose(body_model):
    np.testing.assert_allclose(body_model.rest_joints(), rest_joints(), atol=1e-5)
    zero = body_model.joints({"global_orient": np.zeros((2, 3), np.float32)})
    assert not np.allclose(zero[0], rest_joints(), atol=1e-4)  # the hand means bend the fingers (flat_hand_mean=False)
    np.testing.assert_allclose(zero[0, :22], rest_joints()[:22], atol=1e-5)


def test_several_clips_in_one_forward_equal_one_by_one(body_model):
    clips = [smooth_random_params(n, seed=n) for n in (3, 11, 7)]
    clips[1]["world_rotation"] = np.diag([1.0, -1.0, -1.0])
    together = body_model.joints_many(clips)
    for clip, joints in zip(clips, together):
        np.testing.assert_allclose(joints, body_model.joints(clip), atol=1e-6)


def test_betas_padding_and_refusal(body_model):
    params = smooth_random_params(4, seed=0)
    short = dict(params, betas=params["betas"][:, :5])
    padded = dict(params, betas=np.concatenate([params["betas"][:, :5], np.zeros((4, 5), np.float32)], axis=1))
    np.testing.assert_allclose(body_model.joints(short), body_model.joints(padded), atol=1e-6)
    with pytest.raises(SignfeatError, match="raise num_betas"):
        body_model.joints(dict(params, betas=np.ones((4, 16), np.float32)))


def test_missing_model_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(SignfeatError) as err:
        BodyModel(BodyModelSettings(model_dir=str(tmp_path / "nowhere")))
    message = str(err.value)
    assert "\n" not in message and "SMPLX_NEUTRAL.npz" in message and "https://smpl-x.is.tue.mpg.de" in message
    with pytest.raises(SignfeatError, match="model_dir is not set"):
        find_model_file("")


def test_wrong_model_file_is_a_one_line_error(tmp_path):
    (tmp_path / "SMPLX_NEUTRAL.npz").write_bytes(b"not a zip")
    with pytest.raises(SignfeatError, match="not a readable SMPL-X"):
        BodyModel(BodyModelSettings(model_dir=str(tmp_path)))
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", v_template=np.zeros((3, 3)))
    with pytest.raises(SignfeatError, match="lacks f, J_regressor"):
        BodyModel(BodyModelSettings(model_dir=str(tmp_path)))


def test_gender_picks_its_file(tmp_path):
    write_synthetic_smplx(tmp_path, gender="female", seed=5)
    assert find_model_file(tmp_path, "female").name == "SMPLX_FEMALE.npz"
    with pytest.raises(SignfeatError, match="SMPLX_MALE.npz"):
        find_model_file(tmp_path, "male")


@pytest.mark.slow
def test_full_size_synthetic_model_runs_smplx_forward_unpatched(tmp_path):
    """A mesh as large as the real one (>= 9930 vertices): smplx's own forward with its real extra-joint ids."""
    import smplx

    write_synthetic_smplx(tmp_path, vertices_per_joint=181)  # 55 * 181 = 9955 vertices
    model = smplx.create(str(tmp_path), model_type="smplx", use_pca=False, num_betas=10)
    params = smooth_random_params(16, seed=2)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in params.items()}, leye_pose=torch.zeros(16, 3), reye_pose=torch.zeros(16, 3))
    assert out.vertices.shape == (16, 9955, 3)
    ours = BodyModel(BodyModelSettings(model_dir=str(tmp_path))).joints(params)
    np.testing.assert_allclose(ours, out.joints[:, :55].numpy(), atol=2e-5)


@pytest.mark.parametrize("num_frames", [5, 7])
def test_one_shape_vector_is_used_on_every_frame(body_model, num_frames):
    # A named .npz's betas is usually one vector (10,) (read as (1, 10)); joints_many reshaped it to (T, -1):
    # an error when T does not divide 10, and silently scrambled shapes when it does (T=5: 3.7 cm off)
    params = smooth_random_params(num_frames, seed=3)
    shape = np.linspace(-1, 1, 10, dtype=np.float32)
    tiled = body_model.joints(dict(params, betas=np.tile(shape, (num_frames, 1))))
    for betas in (shape, shape[None]):
        clip = dict(params, betas=betas)
        np.testing.assert_allclose(body_model.joints(clip), tiled, atol=1e-6)
        np.testing.assert_allclose(body_model.joints_many([clip, smooth_random_params(3, seed=1)])[0], tiled, atol=1e-6)
    with pytest.raises(SignfeatError, match="rows"):  # a pose with another frame count is refused, not spread over the frames
        body_model.joints_many([dict(params, left_hand_pose=np.zeros((num_frames * 3, 15), np.float32))])


def test_read_only_parameters_raise_no_torch_warning(body_model):
    """Read-only arrays (a memory-mapped .npy, a broadcast view of one betas row, arrays a Ray object store hands
    over): every smplx623 job printed torch's "The given NumPy array is not writable" warning."""
    import warnings

    params = smooth_random_params(4, seed=2)
    frozen = {k: v.copy() for k, v in params.items()}
    for v in frozen.values():
        v.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(body_model.joints(frozen), body_model.joints({k: np.array(v) for k, v in params.items()}), atol=0)
