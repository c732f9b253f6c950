"""52 SMPL-X joints -> the 623-d HumanML3D ("tomato", Motion-X) motion vector per frame, and back.

The process (HumanML3D's ``motion_representation`` notebook, extended to body + hands by Motion-X's
``tomato_represenation/motion_representation.py``), vectorised over frames and joints:

1. retarget to one uniform skeleton: every bone keeps its direction and takes the target skeleton's length;
   the root trajectory is scaled by the ratio of the leg bones 5 and 8 (target / source, first frame);
2. put the lowest joint of the clip on the floor (y = 0);
3. move the first frame's root to the XZ origin;
4. rotate about Y so the first frame faces +Z (across = right hip - left hip + right shoulder - left shoulder);
5. foot contacts: a foot joint (left 7, 10; right 8, 11) is in contact where its squared displacement to
   the next frame is below ``feet_threshold``;
6. inverse kinematics along the kinematic chains (``CHAINS``): each bone's rotation from its rest direction
   (``RAW_OFFSETS``) to its current direction, relative to the previous rotation of its chain; the root
   rotation turns the (Gaussian-smoothed) facing direction to +Z;
7. features per frame i (i < T - 1), in this order (``LAYOUT``):
   ``[0]`` root rotation velocity: arcsin of the Y component of the quaternion r(i+1) r(i)^-1 (half the
   yaw change), ``[1:3]`` root linear velocity on XZ, rotated into the root frame of frame i+1,
   ``[3]`` root height, ``[4:157]`` the 51 non-root joints relative to the root (XZ) in the root frame
   ("ric"), ``[157:463]`` 6D rotations of those 51 joints (first two columns of the rotation matrix),
   ``[463:619]`` velocities of all 52 joints (frame i -> i+1) rotated into the root frame of frame i,
   ``[619:623]`` foot contacts (left 7, 10, right 8, 11).

Row i describes frame i (positions of frame i, motion from i to i+1); the last frame has no row.

Reference quirks, reproduced by default so features match published HumanML3D / Motion-X data
(``FeatureSettings``; each can be turned off):

- ``ik_swap_hips``: the IK's facing direction takes the hips swapped (the reference unpacks its
  ``face_joint_indx = [r_hip, l_hip, ...]`` as ``l_hip, r_hip``), so across = (left hip - right hip) +
  (right shoulder - left shoulder); the initial turn to +Z (step 4) uses the right order.
- ``ik_first_frame_identity``: the IK sets the first frame's root rotation to the identity. Kept on, the
  root trajectory of ``recover_from_ric`` starts exactly where the data starts; off, the recovered motion is
  the data turned about Y by the first frame's root rotation.
- ``ik_chains_from_root``: every chain, the arm and finger chains included, starts from the root rotation,
  not from the rotation at the end of its parent chain (so an arm's first rotation is relative to the
  pelvis facing, not to the spine).
- ``root_velocity_sign_flip``: the root quaternions come from ``qbetween`` (scalar part >= 0), so where the
  facing passes 180 degrees from the start one of them changes sign and that row's rotation velocity
  (arcsin of a Y component) gets the wrong sign; ``recover_from_ric`` then turns the rest of the motion
  the wrong way. Off: consecutive root quaternions are put in the same hemisphere first (the fix; the
  reference's ``qfix`` does this on its quaternion path, not on the 6D path that produced the features).
- ``smooth_mode = "nearest"``: the facing direction is smoothed with ``scipy.ndimage.gaussian_filter1d``
  (sigma ``smooth_sigma`` = 20 frames, truncate 4) with edge mode ``nearest``.

Two conventions are part of the format rather than quirks, because ``recover_from_ric`` inverts them: the
last frame is dropped, and row i's linear velocity is rotated by frame i+1's root rotation while its local
velocities use frame i's. Quaternions are (w, x, y, z) throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from motion.body_model import MOTION_JOINTS

NUM_JOINTS = 52
FEATURE_WIDTH = 4 + (NUM_JOINTS - 1) * 3 + (NUM_JOINTS - 1) * 6 + NUM_JOINTS * 3 + 4  # 623
LAYOUT = {  # name -> slice of the 623-d vector, in order
    "root_rot_velocity": slice(0, 1),
    "root_linear_velocity": slice(1, 3),
    "root_y": slice(3, 4),
    "ric": slice(4, 157),
    "rot6d": slice(157, 463),
    "local_velocity": slice(463, 619),
    "foot_contact": slice(619, 623),
}

# Kinematic chains in the 52-joint layout (SMPL-X 0-21, then 25-54 at 22-51). Body chains as HumanML3D;
# each finger a chain from its wrist (Motion-X's t2m_left_hand_chain / t2m_right_hand_chain).
BODY_CHAINS = [[0, 2, 5, 8, 11], [0, 1, 4, 7, 10], [0, 3, 6, 9, 12, 15], [9, 14, 17, 19, 21], [9, 13, 16, 18, 20]]
LEFT_HAND_CHAINS = [[20, 22, 23, 24], [20, 34, 35, 36], [20, 25, 26, 27], [20, 31, 32, 33], [20, 28, 29, 30]]
RIGHT_HAND_CHAINS = [[21, 43, 44, 45], [21, 46, 47, 48], [21, 40, 41, 42], [21, 37, 38, 39], [21, 49, 50, 51]]
CHAINS = BODY_CHAINS + LEFT_HAND_CHAINS + RIGHT_HAND_CHAINS

# Rest direction of the bone ending at each joint (HumanML3D's t2m_raw_offsets + Motion-X's hand offsets).
RAW_OFFSETS = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
     [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
     [0, -1, 0], [0, -1, 0]] + [[1, 0, 0]] * 15 + [[-1, 0, 0]] * 15,
    dtype=np.float64,
)

FACE_JOINTS = (2, 1, 17, 16)  # right hip, left hip, right shoulder, left shoulder
LEG_BONES = (5, 8)  # the bones ending at these joints give the retargeting scale
FOOT_LEFT, FOOT_RIGHT = (7, 10), (8, 11)


def _chain_tables() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """parent[j]: the joint before j in its chain; chain_start[j]: whether j is the first bone of a chain;
    order: joints in chain order (each after its chain predecessor)."""
    parent = np.full(NUM_JOINTS, -1)
    chain_start = np.zeros(NUM_JOINTS, dtype=bool)
    order = []
    for chain in CHAINS:
        for k in range(1, len(chain)):
            parent[chain[k]] = chain[k - 1]
            chain_start[chain[k]] = k == 1
            order.append(chain[k])
    return parent, chain_start, order


PARENTS, CHAIN_START, FK_ORDER = _chain_tables()


@dataclass(frozen=True)
class FeatureSettings:
    feet_threshold: float = 0.002  # squared per-frame displacement (m^2) below which a foot joint is in contact
    smooth_sigma: float = 20.0  # Gaussian sigma (frames) of the IK facing direction; 0 = no smoothing
    smooth_mode: str = "nearest"  # quirk: scipy gaussian_filter1d edge mode of the reference
    ik_swap_hips: bool = True  # quirk: IK facing uses the hips swapped (see the module doc)
    ik_first_frame_identity: bool = True  # quirk: IK root rotation of frame 0 set to the identity
    ik_chains_from_root: bool = True  # quirk: every chain starts from the root rotation
    root_velocity_sign_flip: bool = True  # quirk: rotation velocity flips sign where the facing passes 180 degrees

    def __post_init__(self) -> None:
        if self.feet_threshold <= 0:
            raise ValueError(f"feet_threshold must be > 0, got {self.feet_threshold}")
        if self.smooth_sigma < 0:
            raise ValueError(f"smooth_sigma must be >= 0, got {self.smooth_sigma}")
        if self.smooth_mode not in ("nearest", "reflect", "mirror", "constant", "wrap"):
            raise ValueError(f"smooth_mode must be a scipy.ndimage mode (nearest, reflect, mirror, constant, wrap), got {self.smooth_mode!r}")


# ---------------------------------------------------------------------- quaternions (w, x, y, z)

def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b over the last axis (broadcasting); several times faster than np.cross on small vectors."""
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], axis=-1)


def qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def qinv(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v [..., 3] by unit quaternions q [..., 4] (broadcasting)."""
    w, u = q[..., :1], q[..., 1:]
    uv = cross(u, v)
    return v + 2.0 * (w * uv + cross(u, uv))


def qbetween(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The shortest rotation taking direction u to direction v. Where they are opposite (the reference
    returns NaN there) a half turn about an axis perpendicular to u."""
    w = np.sqrt((u * u).sum(-1) * (v * v).sum(-1)) + (u * v).sum(-1)
    q = np.concatenate([w[..., None], cross(u, v)], axis=-1)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    bad = norm[..., 0] < 1e-9 * np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-30)
    if np.any(bad):
        ub = np.broadcast_to(u, q.shape[:-1] + (3,))[bad]
        axis = cross(ub, np.array([1.0, 0.0, 0.0]))
        small = np.linalg.norm(axis, axis=-1) < 1e-6 * np.linalg.norm(ub, axis=-1)
        axis[small] = cross(ub[small], np.array([0.0, 1.0, 0.0]))
        q = q.copy()
        q[bad] = np.concatenate([np.zeros((len(axis), 1)), axis], axis=-1)
        norm = np.linalg.norm(q, axis=-1, keepdims=True)
    return q / norm


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.moveaxis(q, -1, 0)
    two_s = 2.0 / (q * q).sum(-1)
    m = np.stack([1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
                  two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
                  two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y)], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def quat_to_6d(q: np.ndarray) -> np.ndarray:
    """Continuous 6D rotation: the rotation matrix's first column, then its second (of ``quat_to_matrix``)."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    two_s = 2.0 / (q * q).sum(-1)
    return np.stack([1 - two_s * (y * y + z * z), two_s * (x * y + z * w), two_s * (x * z - y * w),
                     two_s * (x * y - z * w), 1 - two_s * (x * x + z * z), two_s * (y * z + x * w)], axis=-1)


def rot6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """Inverse of ``quat_to_6d`` (Gram-Schmidt, so slightly noisy inputs still give a rotation)."""
    a, b = d6[..., :3], d6[..., 3:]
    x = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - (x * b).sum(-1, keepdims=True) * x
    y = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def _yaw_quat(angle: np.ndarray) -> np.ndarray:
    """Quaternion (cos a, 0, sin a, 0): a turn of 2a about Y (the reference's root rotation from half-angles)."""
    return np.stack([np.cos(angle), np.zeros_like(angle), np.sin(angle), np.zeros_like(angle)], axis=-1)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---------------------------------------------------------------------- skeleton

def select_motion_joints(joints: np.ndarray) -> np.ndarray:
    """[..., 55 (or more), 3] SMPL-X joints -> [..., 52, 3] (no jaw, no eyes); 52 joints pass unchanged."""
    if joints.shape[-2] == NUM_JOINTS:
        return joints
    if joints.shape[-2] < 55:
        raise ValueError(f"expected 52 motion joints or >= 55 SMPL-X joints, got {joints.shape[-2]}")
    return joints[..., list(MOTION_JOINTS), :]


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """[..., 52] length of the bone ending at each joint (0 for the root)."""
    lengths = np.zeros(joints.shape[:-1])
    lengths[..., 1:] = np.linalg.norm(joints[..., 1:, :] - joints[..., PARENTS[1:], :], axis=-1)
    return lengths


def retarget(positions: np.ndarray, target_joints: np.ndarray) -> np.ndarray:
    """Uniform skeleton: each bone keeps its direction per frame and takes the target's length; the root
    trajectory is scaled by (target / source) length of the leg bones 5 + 8 in the first frame.

    This is what the reference's IK followed by FK with the target offsets computes (FK rebuilds each bone
    as its IK rotation applied to the target offset, i.e. its direction times the target length), without
    the round trip through quaternions. Only the target's bone lengths matter.
    """
    source_len = bone_lengths(positions[0])
    target_len = bone_lengths(target_joints)
    scale = (target_len[LEG_BONES[0]] + target_len[LEG_BONES[1]]) / (source_len[LEG_BONES[0]] + source_len[LEG_BONES[1]])
    directions = _normalize(positions[:, 1:] - positions[:, PARENTS[1:]])
    out = np.empty_like(positions)
    out[:, 0] = positions[:, 0] * scale
    for j in FK_ORDER:
        out[:, j] = out[:, PARENTS[j]] + directions[:, j - 1] * target_len[j]
    return out


def facing_across(joints: np.ndarray, swap_hips: bool) -> np.ndarray:
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    if swap_hips:
        r_hip, l_hip = l_hip, r_hip
    return (joints[..., r_hip, :] - joints[..., l_hip, :]) + (joints[..., r_sdr, :] - joints[..., l_sdr, :])


def forward_from_across(across: np.ndarray) -> np.ndarray:
    """Horizontal facing direction: Y x across."""
    return cross(np.array([0.0, 1.0, 0.0]), _normalize(across))


def inverse_kinematics(positions: np.ndarray, settings: FeatureSettings = FeatureSettings(), smooth: bool = True) -> np.ndarray:
    """[T, 52, 3] -> [T, 52, 4] local quaternions: root = facing rotation (world -> facing +Z), joint j =
    rotation of bone j relative to the rotation where its chain stands (see ``forward_kinematics``)."""
    from scipy.ndimage import gaussian_filter1d

    forward = forward_from_across(facing_across(positions, settings.ik_swap_hips))
    if smooth and settings.smooth_sigma > 0:
        forward = gaussian_filter1d(forward, settings.smooth_sigma, axis=0, mode=settings.smooth_mode)
    root = qbetween(_normalize(forward), np.broadcast_to(np.array([0.0, 0.0, 1.0]), forward.shape))
    if settings.ik_first_frame_identity:
        root[0] = (1.0, 0.0, 0.0, 0.0)
    # World rotation of every bone: the shortest turn from its rest direction to its current direction.
    bone_dir = positions[:, 1:] - positions[:, PARENTS[1:]]
    world = np.empty(positions.shape[:-1] + (4,))
    world[:, 0] = root
    world[:, 1:] = qbetween(np.broadcast_to(RAW_OFFSETS[1:], bone_dir.shape), bone_dir)
    # Each bone's local rotation is relative to the world rotation reached before it in its chain.
    before = PARENTS.copy()
    if settings.ik_chains_from_root:
        before[CHAIN_START] = 0
    local = np.empty_like(world)
    local[:, 0] = root
    local[:, 1:] = qmul(qinv(world[:, before[1:]]), world[:, 1:])
    return local


def forward_kinematics(local: np.ndarray, root_positions: np.ndarray, offsets: np.ndarray, settings: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """[T, 52, 4] local quaternions (``inverse_kinematics``), [T, 3] root, [52, 3] bone offsets -> [T, 52, 3]."""
    world = np.empty_like(local)
    world[:, 0] = local[:, 0]
    positions = np.empty(local.shape[:-1] + (3,))
    positions[:, 0] = root_positions
    for j in FK_ORDER:
        start = 0 if (settings.ik_chains_from_root and CHAIN_START[j]) else PARENTS[j]
        world[:, j] = qmul(world[:, start], local[:, j])
        positions[:, j] = positions[:, PARENTS[j]] + qrot(world[:, j], np.broadcast_to(offsets[j], positions[:, j].shape))
    return positions


def skeleton_offsets(joints: np.ndarray) -> np.ndarray:
    """[52, 3]: rest directions scaled to the bone lengths of ``joints`` [52, 3] (the reference's offsets)."""
    return RAW_OFFSETS * bone_lengths(joints)[:, None]


# ---------------------------------------------------------------------- features

def canonicalize(joints: np.ndarray, target_joints: np.ndarray | None) -> np.ndarray:
    """Steps 1-4: retarget (when a target is given), floor, XZ origin, first frame facing +Z. [T, 52, 3] float64."""
    positions = select_motion_joints(np.asarray(joints, dtype=np.float64))
    if target_joints is not None:
        positions = retarget(positions, select_motion_joints(np.asarray(target_joints, dtype=np.float64)))
    positions = positions.copy()
    positions[..., 1] -= positions[..., 1].min()
    positions = positions - positions[0, 0] * np.array([1.0, 0.0, 1.0])
    forward = forward_from_across(facing_across(positions[0], swap_hips=False))
    turn = qbetween(_normalize(forward), np.array([0.0, 0.0, 1.0]))
    return qrot(turn, positions)


def joints_to_features(joints: np.ndarray, target_joints: np.ndarray | None = None, settings: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """[T, 52 or 55, 3] joints of one clip -> float32 [T - 1, 623]. ``target_joints`` [52 or 55, 3]: the
    uniform skeleton (None: keep the clip's own, i.e. no retargeting)."""
    features, _ = joints_to_features_and_positions(joints, target_joints, settings)
    return features


def joints_to_features_and_positions(joints: np.ndarray, target_joints: np.ndarray | None = None,
                                     settings: FeatureSettings = FeatureSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Features and the processed joint positions [T, 52, 3] they describe (what ``recover_from_ric`` returns)."""
    joints = np.asarray(joints)
    if joints.ndim != 3 or joints.shape[0] < 2:
        raise ValueError(f"need joints [T >= 2, 52, 3], got {joints.shape}")
    positions = canonicalize(joints, target_joints)
    num_frames = positions.shape[0]

    step = positions[1:] - positions[:-1]  # [T-1, 52, 3]
    moved = (step * step).sum(-1)
    contacts = np.concatenate([moved[:, FOOT_LEFT], moved[:, FOOT_RIGHT]], axis=1) < settings.feet_threshold

    local = inverse_kinematics(positions, settings, smooth=True)
    root_rot = local[:, 0]
    rot6d = quat_to_6d(local[:, 1:]).reshape(num_frames, -1)
    root_velocity = qrot(root_rot[1:], step[:, 0])  # row i: rotated by frame i+1's root rotation
    continuous = root_rot
    if not settings.root_velocity_sign_flip:
        flips = np.cumsum(np.r_[0, (root_rot[1:] * root_rot[:-1]).sum(-1) < 0]) % 2
        continuous = np.where(flips[:, None] == 1, -root_rot, root_rot)
    yaw_change = qmul(continuous[1:], qinv(continuous[:-1]))
    rot_velocity = np.arcsin(np.clip(yaw_change[:, 2], -1.0, 1.0))

    relative = positions - positions[:, :1] * np.array([1.0, 0.0, 1.0])
    ric = qrot(root_rot[:, None], relative)  # root frame, root at the XZ origin
    local_velocity = qrot(root_rot[:-1, None], step)  # row i: rotated by frame i's root rotation

    features = np.concatenate([
        rot_velocity[:, None], root_velocity[:, [0, 2]], ric[:-1, 0, 1:2],
        ric[:-1, 1:].reshape(num_frames - 1, -1), rot6d[:-1], local_velocity.reshape(num_frames - 1, -1),
        contacts.astype(np.float64),
    ], axis=1)
    assert features.shape[1] == FEATURE_WIDTH
    return features.astype(np.float32), positions


def recover_root(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root rotation quaternions [..., T, 4] and root positions [..., T, 3] from features [..., T, 623]."""
    rot_velocity = features[..., 0].astype(np.float64)
    angle = np.zeros_like(rot_velocity)
    angle[..., 1:] = np.cumsum(rot_velocity[..., :-1], axis=-1)
    root_rot = _yaw_quat(angle)
    step = np.zeros(features.shape[:-1] + (3,))
    step[..., 1:, 0] = features[..., :-1, 1]
    step[..., 1:, 2] = features[..., :-1, 2]
    root = np.cumsum(qrot(qinv(root_rot), step), axis=-2)
    root[..., 1] = features[..., 3]
    return root_rot, root


def recover_from_ric(features: np.ndarray, num_joints: int = NUM_JOINTS) -> np.ndarray:
    """Features [..., T, 623] -> joint positions [..., T, 52, 3] (the inverse of the ric part)."""
    root_rot, root = recover_root(features)
    ric = features[..., 4:4 + (num_joints - 1) * 3].astype(np.float64).reshape(features.shape[:-1] + (num_joints - 1, 3))
    joints = qrot(qinv(root_rot)[..., None, :], ric)
    joints[..., 0] += root[..., None, 0]
    joints[..., 2] += root[..., None, 2]
    return np.concatenate([root[..., None, :], joints], axis=-2)
