"""623-d features: layout, exact inverse, hand-built motions with known values, IK/FK, and a cross-check
against a loop-by-loop transcription of the reference code (tests/motion/reference_h3d.py)."""

from __future__ import annotations

import numpy as np
import pytest

from motion import humanml3d as h
from motion.synthetic import rest_joints, smooth_random_params
from tests.motion import reference_h3d

REST = h.select_motion_joints(rest_joints())


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # right-handed turn about +Y


def _random_motion(body_model, frames: int, seed: int) -> np.ndarray:
    return body_model.joints(smooth_random_params(frames, seed=seed)).astype(np.float64)


def test_layout_has_623_dims_in_documented_order():
    names = list(h.LAYOUT)
    assert names == ["root_rot_velocity", "root_linear_velocity", "root_y", "ric", "rot6d", "local_velocity", "foot_contact"]
    stops = [s.stop for s in h.LAYOUT.values()]
    assert [s.start for s in h.LAYOUT.values()] == [0] + stops[:-1]
    assert [s.stop - s.start for s in h.LAYOUT.values()] == [1, 2, 1, 51 * 3, 51 * 6, 52 * 3, 4]
    assert stops[-1] == h.FEATURE_WIDTH == 623


def test_blocks_hold_what_the_layout_says(body_model):
    joints = _random_motion(body_model, 40, seed=3)
    features, positions = h.joints_to_features_and_positions(joints, body_model.rest_joints())
    assert features.shape == (39, 623) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, h.LAYOUT["root_y"]][:, 0], positions[:-1, 0, 1], atol=1e-6)
    contacts = features[:, h.LAYOUT["foot_contact"]]
    assert set(np.unique(contacts)) <= {0.0, 1.0}
    rot6d = features[:, h.LAYOUT["rot6d"]].reshape(39, 51, 6).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(rot6d[..., :3], axis=-1), 1.0, atol=1e-5)  # unit matrix columns
    np.testing.assert_allclose((rot6d[..., :3] * rot6d[..., 3:]).sum(-1), 0.0, atol=1e-5)  # orthogonal
    ric = features[:, h.LAYOUT["ric"]].reshape(39, 51, 3)
    lengths = np.linalg.norm(ric[:, 1] - 0, axis=-1)  # joint 2 (right hip) relative to the root's XZ
    assert np.all(lengths > 0)
    speed = np.linalg.norm(features[:, h.LAYOUT["local_velocity"]].reshape(39, 52, 3), axis=-1)
    np.testing.assert_allclose(speed, np.linalg.norm(positions[1:] - positions[:-1], axis=-1), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("retarget", [True, False])
def test_round_trip_recover_from_ric(body_model, seed, retarget):
    joints = _random_motion(body_model, 90, seed=seed)
    target = body_model.rest_joints() * 1.07 if retarget else None
    features, positions = h.joints_to_features_and_positions(joints, target)
    recovered = h.recover_from_ric(features)
    assert recovered.shape == (89, 52, 3)
    np.testing.assert_allclose(recovered, positions[:-1], atol=1e-4)


def test_first_frame_identity_off_recovers_a_turned_motion(body_model):
    joints = _random_motion(body_model, 60, seed=7)
    settings = h.FeatureSettings(ik_first_frame_identity=False)
    features, positions = h.joints_to_features_and_positions(joints, None, settings)
    recovered = h.recover_from_ric(features)
    # the recovered motion is the data turned about Y by the first frame's (non-identity) root rotation
    first = h.inverse_kinematics(positions, settings)[0, 0]
    np.testing.assert_allclose(positions[0, 0, [0, 2]], 0.0, atol=1e-12)  # the turn is about the first root
    turned = h.qrot(first, positions[:-1])
    assert not np.allclose(first, [1, 0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(recovered, turned, atol=1e-4)


def test_matches_a_transcription_of_the_reference(body_model):
    joints = h.select_motion_joints(_random_motion(body_model, 50, seed=11))
    target = REST * 1.1
    expected, expected_positions = reference_h3d.process_file(joints, target)
    features, positions = h.joints_to_features_and_positions(joints, target)
    np.testing.assert_allclose(positions, expected_positions, atol=1e-9)
    np.testing.assert_allclose(features, expected, atol=2e-6)


def test_forward_walk_has_constant_linear_velocity_and_no_turning():
    speed, frames = 0.03, 120
    facing_x = REST @ _yaw(np.pi / 2).T  # the body faces +X; canonicalisation turns it to +Z
    joints = np.stack([facing_x + [speed * t, 0, 0] for t in range(frames)])
    features = h.joints_to_features(joints)
    np.testing.assert_allclose(features[:, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(features[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(features[:, 2], speed, atol=1e-6)  # forward (+Z in the root frame)
    np.testing.assert_allclose(features[:, 3], features[0, 3], atol=1e-7)
    np.testing.assert_allclose(features[:, h.LAYOUT["ric"]] - features[:1, h.LAYOUT["ric"]], 0.0, atol=1e-6)


def test_in_place_turn_has_constant_rotation_velocity():
    omega, frames = 0.02, 260
    pelvis = REST[0] * [1, 0, 1]
    joints = np.stack([(REST - pelvis) @ _yaw(omega * t).T + pelvis for t in range(frames)])
    features = h.joints_to_features(joints)
    # The IK facing is smoothed over +-80 frames with edge mode nearest: away from the edges the turn is exact.
    interior = features[90:170]
    flip = int(np.pi / omega)  # the row where the facing passes 180 degrees: the reference's sign quirk
    expected = np.full(len(interior), -omega / 2)  # arcsin(sin(-omega / 2)): half the yaw change
    expected[flip - 90] = omega / 2
    np.testing.assert_allclose(interior[:, 0], expected, atol=1e-6)
    np.testing.assert_allclose(interior[:, 1:3], 0.0, atol=1e-6)
    fixed = h.FeatureSettings(smooth_sigma=0, root_velocity_sign_flip=False)
    np.testing.assert_allclose(h.joints_to_features(joints, settings=fixed)[1:, 0], -omega / 2, atol=1e-6)
    recovered = h.recover_from_ric(h.joints_to_features(joints, settings=fixed))
    np.testing.assert_allclose(recovered, h.canonicalize(joints, None)[:-1], atol=1e-4)  # a full turn and more


def test_planted_feet_are_contacts_and_moving_feet_are_not():
    still = h.joints_to_features(np.repeat(REST[None], 30, axis=0))
    assert np.all(still[:, h.LAYOUT["foot_contact"]] == 1.0)
    slow = h.joints_to_features(np.stack([REST + [0, 0, 0.04 * t] for t in range(30)]))  # 0.0016 < 0.002
    assert np.all(slow[:, h.LAYOUT["foot_contact"]] == 1.0)
    fast = h.joints_to_features(np.stack([REST + [0, 0, 0.05 * t] for t in range(30)]))  # 0.0025 > 0.002
    assert np.all(fast[:, h.LAYOUT["foot_contact"]] == 0.0)
    lifted = np.repeat(REST[None], 30, axis=0)
    lifted[:, [7, 10], 1] += 0.1 * np.arange(30)[:, None]  # only the left foot moves
    contacts = h.joints_to_features(lifted)[:, h.LAYOUT["foot_contact"]]
    assert np.all(contacts[:, :2] == 0.0) and np.all(contacts[:, 2:] == 1.0)


@pytest.mark.parametrize("settings", [h.FeatureSettings(), h.FeatureSettings(ik_chains_from_root=False),
                                      h.FeatureSettings(ik_first_frame_identity=False, ik_swap_hips=False)])
def test_ik_rotations_reproduce_positions_through_fk(body_model, settings):
    positions = h.canonicalize(h.select_motion_joints(_random_motion(body_model, 40, seed=5)), body_model.rest_joints())
    local = h.inverse_kinematics(positions, settings)
    rebuilt = h.forward_kinematics(local, positions[:, 0], h.skeleton_offsets(positions[0]), settings)
    np.testing.assert_allclose(rebuilt, positions, atol=1e-9)
    # and the 6D of the features is these rotations
    features = h.joints_to_features(positions, None, settings)
    np.testing.assert_allclose(features[:, h.LAYOUT["rot6d"]], h.quat_to_6d(local[:-1, 1:]).reshape(39, -1), atol=1e-6)


def test_quirk_settings_change_what_they_should(body_model):
    joints = _random_motion(body_model, 40, seed=9)
    base = h.joints_to_features(joints)
    for quirk in ("ik_swap_hips", "ik_chains_from_root"):
        other = h.joints_to_features(joints, settings=h.FeatureSettings(**{quirk: False}))
        assert not np.allclose(other[:, h.LAYOUT["rot6d"]], base[:, h.LAYOUT["rot6d"]], atol=1e-4), quirk
    unswapped = h.joints_to_features(joints, settings=h.FeatureSettings(ik_swap_hips=False))
    assert not np.allclose(unswapped[:, h.LAYOUT["ric"]], base[:, h.LAYOUT["ric"]], atol=1e-4)


def test_retargeting_uses_only_bone_lengths(body_model):
    joints = h.select_motion_joints(_random_motion(body_model, 20, seed=1))
    own = h.retarget(joints, joints[0])
    np.testing.assert_allclose(own, joints, atol=1e-6)  # float32 joints; the clip's own skeleton: no retargeting at all
    moved_target = REST @ _yaw(1.0).T + [3, 1, 2]
    np.testing.assert_allclose(h.retarget(joints, moved_target), h.retarget(joints, REST), atol=1e-9)
    bigger = h.retarget(joints, REST * 2)
    np.testing.assert_allclose(h.bone_lengths(bigger[5]), 2 * h.bone_lengths(REST), atol=1e-9)


def test_rot6d_round_trip():
    q = h.qbetween(np.random.default_rng(0).normal(size=(50, 3)), np.random.default_rng(1).normal(size=(50, 3)))
    np.testing.assert_allclose(h.rot6d_to_matrix(h.quat_to_6d(q)), h.quat_to_matrix(q), atol=1e-12)
    opposite = h.qbetween(np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, -2.0, 0.0]]))
    np.testing.assert_allclose(h.qrot(opposite, np.array([[0.0, 1.0, 0.0]])), [[0.0, -1.0, 0.0]], atol=1e-12)


def test_too_short_or_wrong_joints_are_refused():
    with pytest.raises(ValueError, match="T >= 2"):
        h.joints_to_features(REST[None])
    with pytest.raises(ValueError, match="52 motion joints"):
        h.joints_to_features(np.zeros((5, 30, 3)))
