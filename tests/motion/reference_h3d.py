"""A straight, loop-by-loop transcription of the reference algorithm (HumanML3D's motion_representation
``process_file`` / ``uniform_skeleton`` and ``common/skeleton.py`` IK/FK, as Motion-X's tomato code runs it
on 52 joints), used only to cross-check motion/humanml3d.py. Rotations go through scipy's Rotation where
the sign of a quaternion does not matter; the Hamilton product is written out where it does (the root
rotation velocity reads the quaternion's Y component)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

RAW = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
     [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
     [0, -1, 0], [0, -1, 0]] + [[1, 0, 0]] * 15 + [[-1, 0, 0]] * 15, dtype=np.float64)
TREE = [[0, 2, 5, 8, 11], [0, 1, 4, 7, 10], [0, 3, 6, 9, 12, 15], [9, 14, 17, 19, 21], [9, 13, 16, 18, 20],
        [20, 22, 23, 24], [20, 34, 35, 36], [20, 25, 26, 27], [20, 31, 32, 33], [20, 28, 29, 30],
        [21, 43, 44, 45], [21, 46, 47, 48], [21, 40, 41, 42], [21, 37, 38, 39], [21, 49, 50, 51]]
PARENT = {c[k]: c[k - 1] for c in TREE for k in range(1, len(c))}
FACE = [2, 1, 17, 16]


def _wxyz(r: Rotation) -> np.ndarray:
    q = r.as_quat()
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)


def _rot(q: np.ndarray) -> Rotation:
    return Rotation.from_quat(np.concatenate([q[..., 1:], q[..., :1]], axis=-1))


def hamilton(a, b):
    w1, x1, y1, z1 = a.T
    w2, x2, y2, z2 = b.T
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=-1)


def qbetween(v0, v1):
    v = np.cross(v0, v1)
    w = np.sqrt((v0 ** 2).sum(-1, keepdims=True) * (v1 ** 2).sum(-1, keepdims=True)) + (v0 * v1).sum(-1, keepdims=True)
    q = np.concatenate([w, v], axis=-1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def offsets_of(joints0):
    off = RAW.copy()
    for j in range(1, 52):
        off[j] = np.linalg.norm(joints0[j] - joints0[PARENT[j]]) * RAW[j]
    return off


def inverse_kinematics_np(joints, smooth_forward=False):
    l_hip, r_hip, sdr_r, sdr_l = FACE  # the reference's unpacking (hips swapped)
    across = (joints[:, r_hip] - joints[:, l_hip]) + (joints[:, sdr_r] - joints[:, sdr_l])
    across = across / np.sqrt((across ** 2).sum(-1))[:, None]
    forward = np.cross(np.array([[0, 1, 0]]), across, axis=-1)
    if smooth_forward:
        forward = gaussian_filter1d(forward, 20, axis=0, mode="nearest")
    forward = forward / np.sqrt((forward ** 2).sum(-1))[..., None]
    root_quat = qbetween(forward, np.array([[0, 0, 1]]).repeat(len(forward), axis=0))
    quat_params = np.zeros(joints.shape[:-1] + (4,))
    root_quat[0] = np.array([1.0, 0.0, 0.0, 0.0])
    quat_params[:, 0] = root_quat
    for chain in TREE:
        R = root_quat
        for j in range(len(chain) - 1):
            u = RAW[chain[j + 1]][None].repeat(len(joints), axis=0)
            v = joints[:, chain[j + 1]] - joints[:, chain[j]]
            v = v / np.sqrt((v ** 2).sum(-1))[:, None]
            rot_u_v = qbetween(u, v)
            R_loc = hamilton(R * np.array([1, -1, -1, -1]), rot_u_v)
            quat_params[:, chain[j + 1]] = R_loc
            R = hamilton(R, R_loc)
    return quat_params


def forward_kinematics_np(quat_params, root_pos, offsets):
    joints = np.zeros(quat_params.shape[:-1] + (3,))
    joints[:, 0] = root_pos
    for chain in TREE:
        R = quat_params[:, 0]
        for i in range(1, len(chain)):
            R = hamilton(R, quat_params[:, chain[i]])
            joints[:, chain[i]] = _rot(R).apply(np.tile(offsets[chain[i]], (len(R), 1))) + joints[:, chain[i - 1]]
    return joints


def uniform_skeleton(positions, target_joints):
    src_offset, tgt_offset = offsets_of(positions[0]), offsets_of(target_joints)
    src_leg_len = np.abs(src_offset[5]).max() + np.abs(src_offset[8]).max()
    tgt_leg_len = np.abs(tgt_offset[5]).max() + np.abs(tgt_offset[8]).max()
    quat_params = inverse_kinematics_np(positions)
    return forward_kinematics_np(quat_params, positions[:, 0] * (tgt_leg_len / src_leg_len), tgt_offset)


def process_file(positions, target_joints, feet_thre=0.002):
    positions = uniform_skeleton(positions, target_joints)
    positions[:, :, 1] -= positions.min(axis=0).min(axis=0)[1]
    root_pos_init = positions[0]
    positions = positions - root_pos_init[0] * np.array([1, 0, 1])
    r_hip, l_hip, sdr_r, sdr_l = FACE
    across = (root_pos_init[r_hip] - root_pos_init[l_hip]) + (root_pos_init[sdr_r] - root_pos_init[sdr_l])
    across = across / np.sqrt((across ** 2).sum(axis=-1))
    forward_init = np.cross(np.array([[0, 1, 0]]), across, axis=-1)
    forward_init = forward_init / np.sqrt((forward_init ** 2).sum(axis=-1))[..., None]
    root_quat_init = qbetween(forward_init, np.array([[0, 0, 1]]))
    positions = _rot(root_quat_init[0]).apply(positions.reshape(-1, 3)).reshape(positions.shape)
    global_positions = positions.copy()

    feet = []
    for fid in ([7, 10], [8, 11]):
        d = ((positions[1:, fid] - positions[:-1, fid]) ** 2).sum(-1)
        feet.append((d < np.array([feet_thre, feet_thre])).astype(np.float32))

    quat_params = inverse_kinematics_np(positions, smooth_forward=True)
    cont6d = _rot(quat_params.reshape(-1, 4)).as_matrix().reshape(quat_params.shape[:-1] + (3, 3))
    cont6d = np.concatenate([cont6d[..., 0], cont6d[..., 1]], axis=-1)
    r_rot = quat_params[:, 0].copy()
    velocity = _rot(r_rot[1:]).apply(positions[1:, 0] - positions[:-1, 0])
    r_velocity = hamilton(r_rot[1:], r_rot[:-1] * np.array([1, -1, -1, -1]))

    rifke = positions.copy()
    rifke[..., 0] -= rifke[:, 0:1, 0]
    rifke[..., 2] -= rifke[:, 0:1, 2]
    rifke = np.stack([_rot(r_rot[t]).apply(rifke[t]) for t in range(len(rifke))])

    root_data = np.concatenate([np.arcsin(r_velocity[:, 2:3]), velocity[:, [0, 2]], rifke[:-1, 0, 1:2]], axis=-1)
    local_vel = np.stack([_rot(r_rot[t]).apply(global_positions[t + 1] - global_positions[t]) for t in range(len(rifke) - 1)])
    data = np.concatenate([root_data, rifke[:-1, 1:].reshape(len(rifke) - 1, -1), cont6d[:-1, 1:].reshape(len(rifke) - 1, -1),
                           local_vel.reshape(len(local_vel), -1), feet[0], feet[1]], axis=-1)
    return data, global_positions
