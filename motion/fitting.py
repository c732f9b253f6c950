"""SMPLify-X-style fitting of SMPL-X pose to 3D keypoints, batched over all frames of a clip (PyTorch).

Unknowns: per frame ``global_orient``, ``body_pose``, both hands (axis-angle, relative to the model's mean
hand unless ``flat_hand_mean``), ``transl``; ``betas`` fixed (zeros, or given) or fitted once per clip.
Objective, summed over frames:

- data: confidence-weighted squared distance between model joints and keypoints (each keypoint names the
  SMPL-X joint it measures);
- pose prior: squared norm of body and hand poses (a Gaussian around the rest pose / mean hand; SMPLify-X's
  VPoser/GMM priors are separate licensed downloads), and of betas when they are fitted;
- temporal smoothness: squared joint velocities and squared pose differences between neighbouring frames,
  which also carries frames without detections (confidence 0) across from their neighbours.

Two stages with L-BFGS (strong-Wolfe line search, so no learning rate to tune): root orientation and
translation alone (initialised by a Kabsch fit of the torso), then everything. Frames are independent but for the smoothness term, so the whole clip is one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from motion.body_model import BodyModel

TORSO = (1, 2, 16, 17)  # hips and shoulders: enough to orient the body


@dataclass(frozen=True)
class FitSettings:
    iterations: int = 150  # L-BFGS iterations (max_iter) on all unknowns
    orient_iterations: int = 30  # L-BFGS iterations on root orientation + translation first
    # Weights are relative to the data term, the mean squared keypoint error in m^2 (1 cm error = 1e-4).
    body_prior_weight: float = 1e-6  # per squared radian of body pose (summed over the pose vector)
    hand_prior_weight: float = 1e-6  # per squared radian of hand pose away from the mean hand
    betas_prior_weight: float = 1e-5
    smooth_joint_weight: float = 0.1  # per mean squared joint displacement between neighbouring frames (m^2)
    smooth_pose_weight: float = 1e-5  # per squared pose-parameter change between neighbouring frames
    fit_betas: bool = False  # fit one betas vector per clip (else keep the given / zero betas)

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.orient_iterations < 0:
            raise ValueError("iterations must be >= 0")


@dataclass
class Keypoints:
    """3D targets of one clip in metres, Y up: ``points`` [T, K, 3], ``confidence`` [T, K] (0 = missing),
    ``joint_ids`` [K] (the SMPL-X joint, 0-54, each keypoint measures)."""

    points: np.ndarray
    confidence: np.ndarray
    joint_ids: np.ndarray

    def __post_init__(self) -> None:
        t, k, _ = self.points.shape
        if self.confidence.shape != (t, k) or self.joint_ids.shape != (k,):
            raise ValueError(f"keypoints: points {self.points.shape}, confidence {self.confidence.shape}, joint_ids {self.joint_ids.shape} disagree")


def _kabsch(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rotation R (3x3) minimising sum w ||R (s - s_mean) - (t - t_mean)||^2."""
    w = weights / max(weights.sum(), 1e-12)
    s = source - (w[:, None] * source).sum(0)
    t = target - (w[:, None] * target).sum(0)
    u, _, vt = np.linalg.svd((w[:, None] * s).T @ t)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def initial_root(body: BodyModel, keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (global_orient [T, 3], transl [T, 3]) from a Kabsch fit of the rest torso to the keypoints;
    frames without enough torso keypoints take the nearest frame's."""
    from scipy.spatial.transform import Rotation

    rest = body.rest_joints().astype(np.float64)
    pelvis = rest[0]
    rows = [i for i, j in enumerate(keypoints.joint_ids) if j in TORSO]
    ids = keypoints.joint_ids[rows]
    frames = len(keypoints.points)
    orient, transl = np.zeros((frames, 3)), np.zeros((frames, 3))
    good = np.zeros(frames, dtype=bool)
    for t in range(frames):
        w = keypoints.confidence[t, rows]
        if (w > 0).sum() < 3:
            continue
        rot = _kabsch(rest[ids], keypoints.points[t, rows].astype(np.float64), w)
        posed = (rest[ids] - pelvis) @ rot.T + pelvis
        wn = w / w.sum()
        transl[t] = (wn[:, None] * (keypoints.points[t, rows] - posed)).sum(0)
        orient[t] = Rotation.from_matrix(rot).as_rotvec()
        good[t] = True
    if good.any():
        nearest = np.flatnonzero(good)[np.abs(np.arange(frames)[:, None] - np.flatnonzero(good)[None]).argmin(1)]
        orient, transl = orient[nearest], transl[nearest]
    return orient.astype(np.float32), transl.astype(np.float32)


def fit_keypoints(body: BodyModel, keypoints: Keypoints, settings: FitSettings = FitSettings(),
                  betas: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Fit SMPL-X parameters to one clip's keypoints -> (params dict of float32 [T, ...], report).

    Runs on one CPU thread: the tensors are small (a clip's frames x 55 joints), so more threads only add
    synchronisation, and on a shared or busy machine they made it several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            return _fit(body, keypoints, settings, betas)
    finally:
        torch.set_num_threads(threads)


def _fit(body: BodyModel, keypoints: Keypoints, settings: FitSettings, betas: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict]:
    device = body.device
    frames = len(keypoints.points)
    orient0, transl0 = initial_root(body, keypoints)
    target = torch.as_tensor(keypoints.points, dtype=torch.float32, device=device)
    confidence = torch.as_tensor(keypoints.confidence, dtype=torch.float32, device=device)
    joint_ids = torch.as_tensor(keypoints.joint_ids, dtype=torch.long, device=device)
    norm = confidence.sum().clamp_min(1.0)

    unknowns = {
        "global_orient": torch.tensor(orient0, device=device),
        "transl": torch.tensor(transl0, device=device),
        "body_pose": torch.zeros(frames, 63, device=device),
        "left_hand_pose": torch.zeros(frames, 45, device=device),
        "right_hand_pose": torch.zeros(frames, 45, device=device),
    }
    first_betas = None if betas is None else np.asarray(betas, np.float32).reshape(-1, np.shape(betas)[-1])[:1]
    given_betas = body.full_params({"global_orient": np.zeros((1, 3), np.float32), "betas": first_betas}, 1)["betas"][0]
    if settings.fit_betas:
        unknowns["betas"] = given_betas.clone()
    for value in unknowns.values():
        value.requires_grad_(True)

    def loss_terms() -> tuple[torch.Tensor, torch.Tensor]:
        full = body.full_params({k: v for k, v in unknowns.items() if k != "betas"}, frames)
        full["betas"] = (unknowns["betas"] if settings.fit_betas else given_betas)[None].expand(frames, -1)
        joints = body.joints_torch(full)
        residual = joints[:, joint_ids] - target
        data = (confidence * (residual * residual).sum(-1)).sum() / norm
        prior = settings.body_prior_weight * (unknowns["body_pose"] ** 2).sum(-1).mean()
        prior = prior + settings.hand_prior_weight * ((unknowns["left_hand_pose"] ** 2).sum(-1) + (unknowns["right_hand_pose"] ** 2).sum(-1)).mean()
        if settings.fit_betas:
            prior = prior + settings.betas_prior_weight * (unknowns["betas"] ** 2).sum()
        smooth = torch.zeros((), device=device)
        if frames > 1:
            smooth = settings.smooth_joint_weight * ((joints[1:] - joints[:-1]) ** 2).sum(-1).mean()
            poses = torch.cat([unknowns["body_pose"], unknowns["left_hand_pose"], unknowns["right_hand_pose"]], dim=1)
            smooth = smooth + settings.smooth_pose_weight * ((poses[1:] - poses[:-1]) ** 2).sum(-1).mean()
        return data + prior + smooth, data

    history = []
    for stage, steps in (("root", settings.orient_iterations), ("all", settings.iterations)):
        if steps == 0:
            continue
        names = ["global_orient", "transl"] if stage == "root" else list(unknowns)
        optimiser = torch.optim.LBFGS([unknowns[n] for n in names], lr=1.0, max_iter=steps, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            optimiser.zero_grad(set_to_none=True)
            total, data = loss_terms()
            total.backward()
            history.append(float(data.detach()))
            return total

        optimiser.step(closure)
    with torch.no_grad():
        total, data = loss_terms()
    params = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in unknowns.items() if k != "betas"}
    params["betas"] = np.repeat((unknowns["betas"] if settings.fit_betas else given_betas).detach().cpu().numpy()[None], frames, 0).astype(np.float32)
    report = {"final_loss": float(total), "final_data_loss": float(data), "data_loss_history": history,
              "rms_keypoint_error_m": float(np.sqrt(float(data)))}
    return params, report
