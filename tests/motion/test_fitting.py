"""Fitting (Input B's optimiser) recovers known poses from keypoints made by forward kinematics."""

from __future__ import annotations

import numpy as np

from motion.body_model import MOTION_JOINTS
from motion.estimate import keypoint_layout
from motion.fitting import FitSettings, Keypoints, fit_keypoints
from motion.synthetic import smooth_random_params

# Stated accuracy (synthetic model, 8 frames, 30 + 150 L-BFGS iterations): mean joint error over the 52
# motion joints below 1.5 cm from all 52 joints; below 2.5 cm from MediaPipe's keypoint set (no spine/neck/collars).
MAX_MEAN_ERROR_ALL = 0.015
MAX_MEAN_ERROR_MEDIAPIPE = 0.025


def _truth(body_model, frames=8, seed=5):
    params = smooth_random_params(frames, seed=seed, scale=0.3, hands=0.3)
    params["betas"] = np.zeros_like(params["betas"])
    params["expression"] = np.zeros_like(params["expression"])
    return params, body_model.joints(params)


def _motion_error(body_model, fitted, joints):
    ids = list(MOTION_JOINTS)
    return np.linalg.norm(body_model.joints(fitted)[:, ids] - joints[:, ids], axis=-1)


def test_fit_recovers_poses_from_all_joints(body_model):
    _, joints = _truth(body_model)
    ids = np.array(MOTION_JOINTS)
    keypoints = Keypoints(joints[:, ids], np.ones((len(joints), len(ids)), np.float32), ids)
    fitted, report = fit_keypoints(body_model, keypoints, FitSettings())
    error = _motion_error(body_model, fitted, joints)
    assert error.mean() < MAX_MEAN_ERROR_ALL, error.mean()
    assert report["data_loss_history"][-1] < report["data_loss_history"][0] / 10
    assert set(fitted) >= {"global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl", "betas"}


def test_fit_recovers_poses_from_mediapipe_keypoints_and_bridges_missing_frames(body_model):
    _, joints = _truth(body_model, seed=6)
    ids = keypoint_layout()
    confidence = np.ones((len(joints), len(ids)), np.float32)
    confidence[3] = 0.0  # a frame without detections: the smoothness term carries it
    fitted, _ = fit_keypoints(body_model, Keypoints(joints[:, ids], confidence, ids), FitSettings())
    error = _motion_error(body_model, fitted, joints)
    assert np.isfinite(error).all()
    seen = np.ones(len(joints), bool)
    seen[3] = False
    assert error[seen].mean() < MAX_MEAN_ERROR_MEDIAPIPE, error[seen].mean()
    assert error[3].mean() < 0.1  # interpolated, not wild


def test_more_iterations_fit_better(body_model):
    _, joints = _truth(body_model, frames=4, seed=8)
    ids = np.array(MOTION_JOINTS)
    keypoints = Keypoints(joints[:, ids], np.ones((4, 52), np.float32), ids)
    short, _ = fit_keypoints(body_model, keypoints, FitSettings(iterations=5, orient_iterations=5))
    long, _ = fit_keypoints(body_model, keypoints, FitSettings(iterations=100, orient_iterations=20))
    assert _motion_error(body_model, long, joints).mean() < _motion_error(body_model, short, joints).mean()
