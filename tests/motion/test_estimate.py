"""Input B: MediaPipe landmarks -> SMPL-X keypoints -> fitted parameters; MediaPipe itself on frames without a person."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from motion.body_model import MOTION_JOINTS
from motion.estimate import MediaPipeEstimator, import_mediapipe, keypoint_layout, landmarks_to_keypoints
from motion.fitting import FitSettings
from motion.synthetic import landmarks_from_joints, smooth_random_params
from pipeline.errors import ClipError, SignfeatError


def _zero_shape_joints(body_model, frames, seed):
    params = smooth_random_params(frames, seed=seed)
    params["betas"] = np.zeros_like(params["betas"])  # the hand scale comes from the model's zero-beta palm
    return body_model.joints(params)


def test_landmarks_become_keypoints_of_the_right_joints(body_model):
    joints = _zero_shape_joints(body_model, 3, seed=1)
    keypoints = landmarks_to_keypoints(landmarks_from_joints(joints), (480, 640), body_model)
    ids = keypoint_layout()
    assert len(set(ids.tolist())) == len(ids) and set(ids.tolist()) <= set(MOTION_JOINTS)
    hips = joints[:, [1, 2]].mean(1, keepdims=True)
    shift = keypoints.points[:, :1] - (joints - hips)[:, ids[:1]]  # per-frame translation added to every keypoint
    np.testing.assert_allclose(keypoints.points, (joints - hips)[:, ids] + shift, atol=1e-5)  # the shape is exact
    # the translation is the root's image-plane motion since frame 0 (no depth), up to the weak-perspective
    # scale (torso lengths foreshortened in the image: a few per cent here)
    np.testing.assert_allclose(shift[:, 0], ((hips - hips[:1]) * [1, 1, 0])[:, 0], atol=2e-3)
    assert np.all(keypoints.confidence == 1.0)


def test_missing_hands_and_frames_get_zero_confidence(body_model):
    frames = landmarks_from_joints(_zero_shape_joints(body_model, 2, seed=2))
    frames[0].left_hand = None
    frames[0].pose_world[25, 3] = 0.3  # the left knee, barely visible (below the 0.5 default): left to the prior
    frames[1].pose_world = None
    keypoints = landmarks_to_keypoints(frames, (480, 640), body_model)
    left = np.isin(keypoint_layout(), np.arange(25, 40))
    knee = keypoint_layout() == 4
    assert np.all(keypoints.confidence[0, left | knee] == 0) and np.all(keypoints.confidence[0, ~(left | knee)] == 1)
    assert np.all(keypoints.confidence[1] == 0)


def test_estimator_fits_landmarks_of_a_known_motion(body_model, monkeypatch):
    joints = _zero_shape_joints(body_model, 6, seed=3)
    estimator = MediaPipeEstimator(body_model, FitSettings(iterations=120))
    monkeypatch.setattr(estimator, "landmarks", lambda frames: landmarks_from_joints(joints))
    params = estimator.estimate(np.zeros((6, 48, 64, 3), np.uint8))
    fitted = body_model.joints(params)
    ids = list(MOTION_JOINTS)
    centred = lambda j: j[:, ids] - j[:, [1, 2]].mean(1, keepdims=True)  # noqa: E731  (MediaPipe has no absolute position)
    assert np.linalg.norm(centred(fitted) - centred(joints), axis=-1).mean() < 0.03
    assert estimator.last_report["frames_with_pose"] == 6


def test_mediapipe_runs_offline_and_reports_no_person(body_model):
    pytest.importorskip("mediapipe")
    estimator = MediaPipeEstimator(body_model)
    with pytest.raises(ClipError, match="no person") as err:
        estimator.estimate(np.full((2, 96, 128, 3), 127, np.uint8))
    assert err.value.kind == "no_person"


def test_missing_mediapipe_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(SignfeatError, match=r"pip install signfeat\[estimate\]"):
        import_mediapipe()


def test_detection_gaps_are_half_open_ranges_of_the_frames_without_a_detection():
    from motion.estimate import FrameLandmarks, detection_gaps

    pose, hand = np.zeros((33, 4), np.float32), np.zeros((21, 3), np.float32)
    seen = [(1, 1, 0), (0, 0, 0), (0, 1, 0), (1, 1, 1), (1, 0, 1), (0, 0, 1)]  # (person, left hand, right hand) per frame
    found = [FrameLandmarks(pose if p else None, hand if lh else None, hand if rh else None) for p, lh, rh in seen]
    assert detection_gaps(found) == {"frames": 6, "without_person": [[1, 3], [5, 6]], "without_left_hand": [[1, 2], [4, 6]],
                                     "without_right_hand": [[0, 3]]}
    assert detection_gaps([]) == {"frames": 0, "without_person": [], "without_left_hand": [], "without_right_hand": []}
