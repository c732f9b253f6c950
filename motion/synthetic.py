"""A small synthetic SMPL-X model file for tests, the demo and the benchmark (the real one is a licensed download).

The file has every array ``smplx`` reads from ``SMPLX_NEUTRAL.npz`` (``v_template, f, J_regressor, weights,
kintree_table, shapedirs, posedirs, hands_components{l,r}, hands_mean{l,r}, lmk_faces_idx,
lmk_bary_coords``) with the real 55-joint kinematic tree, so ``smplx.create(model_dir, model_type="smplx")``
loads it exactly as it loads the real one. What is synthetic is the mesh: a few vertices around each joint,
with a regressor that puts every joint at a hand-written, roughly human rest position (metres, Y up,
facing +Z, the subject's left on +X). Shape and expression blend shapes are small random fields, so betas
change bone lengths as real ones do.

The mesh is small (a few hundred vertices, not 10,475): signfeat's joint path never touches vertices, but
``smplx``'s full forward selects extra joints at fixed vertex ids up to 9929. Pass
:func:`clamped_vertex_ids` to that forward (tests patch ``smplx.body_models.VERTEX_IDS``) when you run it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SYNTHETIC_MARKER = "signfeat_synthetic"

# The 55-joint SMPL-X kinematic tree (smplx's kintree_table[0], root = -1).
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)

# Rest joint positions of the body (0-24), roughly those of an adult in the SMPL-X neutral pose.
_BODY_REST = np.array([
    [0.00, 0.95, 0.00],    # 0 pelvis
    [0.06, 0.86, 0.00],    # 1 left hip
    [-0.06, 0.86, 0.00],   # 2 right hip
    [0.00, 1.05, -0.01],   # 3 spine1
    [0.10, 0.48, 0.00],    # 4 left knee
    [-0.10, 0.48, 0.00],   # 5 right knee
    [0.00, 1.18, 0.00],    # 6 spine2
    [0.09, 0.08, -0.04],   # 7 left ankle
    [-0.09, 0.08, -0.04],  # 8 right ankle
    [0.00, 1.24, 0.01],    # 9 spine3
    [0.11, 0.02, 0.08],    # 10 left foot
    [-0.11, 0.02, 0.08],   # 11 right foot
    [0.00, 1.45, -0.02],   # 12 neck
    [0.07, 1.37, -0.01],   # 13 left collar
    [-0.07, 1.37, -0.01],  # 14 right collar
    [0.00, 1.60, 0.03],    # 15 head
    [0.18, 1.40, -0.02],   # 16 left shoulder
    [-0.18, 1.40, -0.02],  # 17 right shoulder
    [0.44, 1.39, -0.04],   # 18 left elbow
    [-0.44, 1.39, -0.04],  # 19 right elbow
    [0.70, 1.40, -0.03],   # 20 left wrist
    [-0.70, 1.40, -0.03],  # 21 right wrist
    [0.00, 1.55, 0.05],    # 22 jaw
    [0.03, 1.66, 0.09],    # 23 left eye
    [-0.03, 1.66, 0.09],   # 24 right eye
])

# Fingers of the left hand relative to the wrist: (first-joint offset, per-segment step); the right hand mirrors X.
# SMPL-X order per hand: index, middle, pinky, ring, thumb (3 joints each).
_FINGERS = [
    ((0.090, 0.000, 0.025), (0.035, 0.000, 0.000)),   # index
    ((0.095, 0.000, 0.000), (0.038, 0.000, 0.000)),   # middle
    ((0.080, 0.000, -0.040), (0.025, 0.000, 0.000)),  # pinky
    ((0.088, 0.000, -0.020), (0.033, 0.000, 0.000)),  # ring
    ((0.030, -0.010, 0.030), (0.025, 0.000, 0.020)),  # thumb
]


def rest_joints() -> np.ndarray:
    """float64 [55, 3]: the synthetic model's rest joint positions."""
    joints = np.zeros((55, 3))
    joints[:25] = _BODY_REST
    for side, (wrist, first_index, mirror) in enumerate(((20, 25, 1.0), (21, 40, -1.0))):
        flip = np.array([mirror, 1.0, 1.0])
        for f, (base, step) in enumerate(_FINGERS):
            for k in range(3):
                joints[first_index + 3 * f + k] = joints[wrist] + flip * (np.array(base) + k * np.array(step))
    return joints


def write_synthetic_smplx(model_dir: str | Path, gender: str = "neutral", vertices_per_joint: int = 4, seed: int = 0) -> Path:
    """Write ``model_dir/smplx/SMPLX_{GENDER}.npz`` (the layout ``smplx.create(model_dir, "smplx")`` reads) and
    return the file's path. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    joints = rest_joints()
    num_joints, k = len(joints), vertices_per_joint
    num_vertices = num_joints * k
    # A small cloud of vertices around each joint; the regressor averages each cloud back onto its joint.
    jitter = rng.normal(scale=0.01, size=(num_joints, k, 3))
    jitter -= jitter.mean(axis=1, keepdims=True)
    v_template = (joints[:, None, :] + jitter).reshape(num_vertices, 3)
    owner = np.repeat(np.arange(num_joints), k)
    j_regressor = np.zeros((num_joints, num_vertices))
    j_regressor[owner, np.arange(num_vertices)] = 1.0 / k
    weights = np.zeros((num_vertices, num_joints))
    weights[np.arange(num_vertices), owner] = 1.0
    # Triangles inside each cloud (k >= 3), enough for smplx's landmark code.
    faces = np.array([[j * k + a, j * k + (a + 1) % k, j * k + (a + 2) % k] for j in range(num_joints) for a in range(k)], dtype=np.int64)
    # Shape blend shapes: smooth per joint (every vertex of a cloud moves together), a few mm per unit beta,
    # so bone lengths change with betas; 300 shape + 100 expression columns as in the real file.
    shape_per_joint = rng.normal(scale=0.004, size=(num_joints, 3, 400))
    shape_per_joint[:, :, 300:][:22] = 0.0  # expressions move the face only (jaw, eyes, fingers untouched here)
    shape_per_joint[25:, :, 300:] = 0.0
    shapedirs = np.repeat(shape_per_joint, k, axis=0)
    posedirs = rng.normal(scale=1e-4, size=(num_vertices, 3, 486))
    kintree = np.array([[4294967295 if p < 0 else p for p in SMPLX_PARENTS], list(range(num_joints))], dtype=np.int64)
    hands_components = np.linalg.qr(rng.normal(size=(45, 45)))[0]
    data = {
        "v_template": v_template, "f": faces, "J_regressor": j_regressor, "weights": weights, "kintree_table": kintree,
        "shapedirs": shapedirs, "posedirs": posedirs,
        "hands_componentsl": hands_components, "hands_componentsr": hands_components.copy(),
        "hands_meanl": rng.normal(scale=0.1, size=45), "hands_meanr": rng.normal(scale=0.1, size=45),
        "lmk_faces_idx": np.arange(51, dtype=np.int64) % len(faces), "lmk_bary_coords": np.full((51, 3), 1.0 / 3.0),
        SYNTHETIC_MARKER: np.array(True),  # so features from this model are labelled synthetic, never taken for real ones
    }
    out = Path(model_dir) / "smplx" / f"SMPLX_{gender.upper()}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **{name: np.asarray(value, dtype=np.float32) if np.asarray(value).dtype.kind == "f" else np.asarray(value) for name, value in data.items()})
    return out


def clamped_vertex_ids(num_vertices: int) -> dict[str, dict[str, int]]:
    """smplx's extra-joint vertex ids folded into a small mesh (``id % num_vertices``), for smplx's full forward."""
    from smplx.vertex_ids import vertex_ids

    return {model: {name: int(i) % num_vertices for name, i in ids.items()} for model, ids in vertex_ids.items()}


def smooth_random_params(num_frames: int, seed: int = 0, scale: float = 0.3, hands: float = 0.3, num_betas: int = 10) -> dict[str, np.ndarray]:
    """Random smooth SMPL-X parameter sequences (float32), for tests and the benchmark.

    Each pose angle is a sum of a few slow sines; the root walks and turns a little (yaw within +-60 degrees).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames)[:, None] / 30.0

    def waves(width: int, amp: float) -> np.ndarray:
        freq = rng.uniform(0.2, 1.0, size=(3, width))
        phase = rng.uniform(0, 2 * np.pi, size=(3, width))
        weight = rng.normal(scale=amp / 2, size=(3, width))
        return sum(weight[i] * np.sin(2 * np.pi * freq[i] * t + phase[i]) for i in range(3))

    yaw = 0.8 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t[:, 0] + rng.uniform(0, 2 * np.pi))
    global_orient = np.stack([0.1 * np.sin(t[:, 0]), yaw, 0.05 * np.cos(t[:, 0])], axis=1)
    transl = np.stack([0.3 * t[:, 0] + 0.05 * np.sin(3 * t[:, 0]), 0.02 * np.sin(5 * t[:, 0]), 0.2 * np.sin(t[:, 0])], axis=1)
    params = {
        "global_orient": global_orient, "body_pose": waves(63, scale), "left_hand_pose": waves(45, hands),
        "right_hand_pose": waves(45, hands), "jaw_pose": waves(3, 0.1), "expression": waves(10, 0.5),
        "betas": np.broadcast_to(rng.normal(scale=0.8, size=num_betas), (num_frames, num_betas)), "transl": transl,
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def landmarks_from_joints(joints: np.ndarray, image_size: tuple[int, int] = (480, 640), pixels_per_metre: float = 300.0):
    """MediaPipe Holistic output that a perfect detector would give for SMPL-X joints [T, 55, 3] (Y up):
    pose world landmarks around the hip centre, hands as image coordinates of an orthographic camera.
    For tests and the benchmark of the video path without a video of a person."""
    from motion.estimate import EARS, HAND_TO_SMPLX, POSE_TO_SMPLX, FrameLandmarks

    height, width = image_size
    to_camera = np.array([1.0, -1.0, -1.0])  # Y up -> camera (Y down, Z away); its own inverse
    frames = []
    centre = np.array([width / 2, height / 2, 0.0])
    for frame in np.asarray(joints, dtype=np.float64):
        hips = frame[[1, 2]].mean(0)
        world = np.zeros((33, 4))
        for landmark, joint in POSE_TO_SMPLX.items():
            world[landmark, :3], world[landmark, 3] = (frame[joint] - hips) * to_camera, 1.0
        world[list(EARS), :3], world[list(EARS), 3] = (frame[15] - hips) * to_camera, 1.0
        # image landmarks: orthographic projection of the same points, not hip-centred
        image = (world[:, :3] + hips * to_camera) * pixels_per_metre + centre
        image[:, 2] = 0.0
        hands = []
        for wrist, first in ((20, 25), (21, 40)):
            pixels = np.zeros((21, 3))
            pixels[0] = frame[wrist] * to_camera * pixels_per_metre
            for landmark, slot in HAND_TO_SMPLX.items():
                pixels[landmark] = frame[first + slot] * to_camera * pixels_per_metre
            hands.append(((pixels + centre - pixels[0] * [0, 0, 1]) / np.array([width, height, width])).astype(np.float32))
        frames.append(FrameLandmarks(pose_world=world.astype(np.float32), left_hand=hands[0], right_hand=hands[1],
                                     pose_image=(image / np.array([width, height, width])).astype(np.float32)))
    return frames


if __name__ == "__main__":  # python -m motion.synthetic DIR: a synthetic model_dir to try smplx623 without the licensed files
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m motion.synthetic MODEL_DIR")
    print(f"wrote {write_synthetic_smplx(sys.argv[1])} (SYNTHETIC: random shapes on the real 55-joint tree; features recorded as weights=random)")
