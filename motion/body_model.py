"""SMPL-X forward kinematics from the user's model folder, batched over all frames of one or many clips.

The model files are a licensed download (https://smpl-x.is.tue.mpg.de, "SMPL-X v1.1 (NPZ+PKL)"); their
path is a setting. ``smplx`` loads and validates the file; signfeat then computes the 55 joints with the
same code ``smplx.lbs`` runs (joints regressed from the shaped rest mesh, then the rigid transform chain),
without skinning the 10,475 vertices: posed joints do not depend on pose blend shapes or skin weights, so
this is exactly ``smplx``'s ``output.joints[:, :55]`` (a test checks it) at a fraction of the cost.

Parameters are a dict of float arrays with one row per frame (``PARAM_WIDTHS``); a missing key means
zeros. ``world_rotation`` (3x3, optional) is applied to the output joints: readers of camera-frame
parameters (SignAvatars, SMPLer-X/OSX outputs) set it to turn the camera's Y-down into Y-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import SignfeatError

# Per-frame parameter widths (axis-angle poses, no PCA): the normalised layout every reader returns.
PARAM_WIDTHS = {
    "global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45, "jaw_pose": 3,
    "leye_pose": 3, "reye_pose": 3, "transl": 3,
}
SHAPE_KEYS = ("betas", "expression")
GENDERS = ("neutral", "male", "female")
WHERE_TO_GET = "the SMPL-X model is a licensed download: register at https://smpl-x.is.tue.mpg.de, get 'SMPL-X v1.1 (NPZ+PKL)' and point model_dir at the folder holding SMPLX_NEUTRAL.npz"
REQUIRED_ARRAYS = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs", "posedirs",
                   "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr", "lmk_faces_idx", "lmk_bary_coords")
# The 52 joints of the motion stream: SMPL-X 0-21 (body) and 25-54 (hands); no jaw (22), no eyes (23, 24).
MOTION_JOINTS = tuple(range(22)) + tuple(range(25, 55))


@dataclass(frozen=True)
class BodyModelSettings:
    model_dir: str = ""  # folder with SMPLX_{GENDER}.npz (or smplx/SMPLX_{GENDER}.npz), or the .npz itself
    gender: str = "neutral"  # neutral | male | female
    num_betas: int = 10  # shape coefficients used (SignAvatars, SMPLer-X, Motion-X ship 10)
    num_expression_coeffs: int = 10  # expression coefficients used
    flat_hand_mean: bool = False  # False: hand poses are relative to the model's mean hand (smplx's default, Motion-X)

    def __post_init__(self) -> None:
        if self.gender not in GENDERS:
            raise ValueError(f"gender must be one of {GENDERS}, got {self.gender!r}")
        if not 1 <= self.num_betas <= 300:
            raise ValueError(f"num_betas must be in 1..300, got {self.num_betas}")
        if not 0 <= self.num_expression_coeffs <= 100:
            raise ValueError(f"num_expression_coeffs must be in 0..100, got {self.num_expression_coeffs}")


def find_model_file(model_dir: str | Path, gender: str = "neutral") -> Path:
    """The model file for ``gender`` under ``model_dir`` (the folder, its ``smplx/`` subfolder, Motion-X's
    ``smplx/{gender}/model.npz``), or the path itself when it is an .npz file; a one-line error otherwise."""
    if not str(model_dir):
        raise SignfeatError(f"model_dir is not set; {WHERE_TO_GET}")
    root = Path(model_dir).expanduser()
    name = f"SMPLX_{gender.upper()}.npz"
    if root.is_file():
        if root.suffix != ".npz":
            raise SignfeatError(f"{root} is not an .npz SMPL-X model file (the .pkl needs chumpy; use the .npz); {WHERE_TO_GET}")
        return root
    candidates = [root / name, root / "smplx" / name, root / gender / "model.npz", root / "smplx" / gender / "model.npz"]
    for path in candidates:
        if path.is_file():
            return path
    where = "no such folder" if not root.exists() else "not found there"
    raise SignfeatError(f"SMPL-X model file {name} {where}: {root} (looked for {name} and smplx/{name}); {WHERE_TO_GET}")


def _check_model_file(path: Path) -> bool:
    """Refuse what is not an SMPL-X .npz; return whether it is signfeat's synthetic test model."""
    from motion.synthetic import SYNTHETIC_MARKER

    try:
        with np.load(path, allow_pickle=False) as archive:  # lists names without unpickling anything
            names = set(archive.files)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the same user error)
        raise SignfeatError(f"{path} is not a readable SMPL-X .npz model file ({type(exc).__name__}); {WHERE_TO_GET}") from None
    missing = [n for n in REQUIRED_ARRAYS if n not in names]
    if missing:
        raise SignfeatError(f"{path} is not an SMPL-X model file: it lacks {', '.join(missing)}; {WHERE_TO_GET}")
    return SYNTHETIC_MARKER in names


class BodyModel:
    """One loaded SMPL-X model: ``joints(params)`` -> float32 [T, 55, 3], batched over frames."""

    def __init__(self, settings: BodyModelSettings, device: str | torch.device = "cpu", chunk_frames: int = 8192):
        self.settings = settings
        self.path = find_model_file(settings.model_dir, settings.gender)
        self.synthetic = _check_model_file(self.path)
        # Built outside inference mode even when the caller is in it: the fitting differentiates through
        # these tensors, and inference tensors cannot be saved for backward.
        with torch.inference_mode(False):
            self._build(settings, device)
        self.device = torch.device(device)
        self.chunk_frames = chunk_frames

    def _build(self, settings: BodyModelSettings, device) -> None:
        import smplx

        try:
            # smplx reads the licensed .npz with allow_pickle=True (the real file holds object arrays).
            self.smplx = smplx.SMPLX(
                model_path=str(self.path), gender=settings.gender, num_betas=settings.num_betas,
                num_expression_coeffs=settings.num_expression_coeffs, use_pca=False,
                flat_hand_mean=settings.flat_hand_mean, ext="npz",
            ).to(device)
        except Exception as exc:  # noqa: BLE001
            raise SignfeatError(f"{self.path} could not be loaded as an SMPL-X model ({type(exc).__name__}: {exc}); {WHERE_TO_GET}") from None
        self.num_betas = int(self.smplx.num_betas)
        self.num_expression = int(self.smplx.num_expression_coeffs)
        self.parents = self.smplx.parents.clone()
        depth = [0] * 55
        for j in range(1, 55):
            depth[j] = depth[int(self.parents[j])] + 1
        # Joints grouped by depth; slot = a joint's index in the depth-ordered tensor joints_torch builds.
        slot = {0: 0}
        self._levels = []
        for d in range(1, max(depth) + 1):
            level = [j for j in range(55) if depth[j] == d]
            self._levels.append((torch.tensor(level), torch.tensor([slot[int(self.parents[j])] for j in level])))
            for j in level:
                slot[j] = len(slot)
        self._joint_slot = torch.tensor([slot[j] for j in range(55)])
        # Joints of the shaped rest mesh are linear in (betas, expression): J = J0 + D @ coeffs.
        regressor = self.smplx.J_regressor
        shapedirs = torch.cat([self.smplx.shapedirs, self.smplx.expr_dirs], dim=-1)
        self.rest_joints_template = regressor @ self.smplx.v_template  # [55, 3]
        self.joint_shapedirs = torch.einsum("jv,vck->jck", regressor, shapedirs)  # [55, 3, nb + ne]
        self.pose_mean = self.smplx.pose_mean.detach().clone()  # [165], the hand means unless flat_hand_mean

    # ------------------------------------------------------------------ parameters

    def full_params(self, params: dict[str, np.ndarray | torch.Tensor], num_frames: int | None = None) -> dict[str, torch.Tensor]:
        """Every parameter as a float32 tensor with one row per frame (missing ones are zeros; a single
        row of betas/expression is repeated; betas beyond ``num_betas`` are refused, fewer are zero-padded)."""
        if num_frames is None:
            num_frames = num_frames_of(params)
        out = {}
        for name, width in {**PARAM_WIDTHS, "betas": self.num_betas, "expression": self.num_expression}.items():
            value = params.get(name)
            if value is None:
                out[name] = torch.zeros(num_frames, width, device=self.device)
                continue
            if isinstance(value, np.ndarray) and not value.flags.writeable:
                # a broadcast view (one betas row for every frame) or a memory-mapped file: torch warned "The given
                # NumPy array is not writable" in every smplx623 job; the parameters are small, so copied
                value = np.array(value)
            tensor = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            if tensor.ndim == 1 or (name in SHAPE_KEYS and tensor.shape[0] == 1):  # one shape vector for the whole clip
                tensor = tensor.reshape(1, -1).expand(num_frames, -1)
            tensor = tensor.reshape(tensor.shape[0], -1)
            if tensor.shape[0] != num_frames:
                raise SignfeatError(f"parameter {name} has {tensor.shape[0]} rows, the other parameters {num_frames}")
            if name in SHAPE_KEYS and tensor.shape[1] != width:
                if tensor.shape[1] > width:
                    nonzero = bool((tensor[:, width:] != 0).any())
                    if nonzero:
                        raise SignfeatError(f"{name} has {tensor.shape[1]} coefficients but the model uses {width}; raise num_{'betas' if name == 'betas' else 'expression_coeffs'}")
                    tensor = tensor[:, :width]
                else:
                    tensor = torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))
            elif tensor.shape[1] != width:
                raise SignfeatError(f"parameter {name} has width {tensor.shape[1]}, expected {width}")
            out[name] = tensor
        return out

    # ------------------------------------------------------------------ forward

    def joints_torch(self, full: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable joints [B, 55, 3] of complete parameter tensors (``full_params``), ``transl`` added."""
        from smplx.lbs import batch_rodrigues

        batch = full["global_orient"].shape[0]
        pose = torch.cat([full["global_orient"], full["body_pose"], full["jaw_pose"], full["leye_pose"], full["reye_pose"],
                          full["left_hand_pose"], full["right_hand_pose"]], dim=1) + self.pose_mean
        local_rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(batch, 55, 3, 3)
        coeffs = torch.cat([full["betas"], full["expression"]], dim=1)
        rest = self.rest_joints_template + (coeffs @ self.joint_shapedirs.reshape(165, -1).T).reshape(batch, 55, 3)
        # smplx.lbs.batch_rigid_transform, joints only: each joint = parent joint + parent's world rotation
        # applied to the rest bone; one batched step per tree depth instead of 4x4 transforms per joint.
        bones = rest[:, 1:] - rest[:, self.parents[1:]]
        rotations, positions = local_rot[:, :1], rest[:, :1]  # joints in depth order so far
        for level, parent_slots in self._levels:
            parent_rot, parent_pos = rotations[:, parent_slots], positions[:, parent_slots]
            new_pos = parent_pos + (parent_rot @ bones[:, level - 1, :, None])[..., 0]
            new_rot = parent_rot @ local_rot[:, level]
            rotations, positions = torch.cat([rotations, new_rot], 1), torch.cat([positions, new_pos], 1)
        return positions[:, self._joint_slot] + full["transl"][:, None, :]

    @torch.no_grad()
    def joints(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """float32 [T, 55, 3] world joints of one clip's parameters (``world_rotation`` applied), in chunks."""
        num_frames = num_frames_of(params)
        full = self.full_params(params, num_frames)
        parts = [self.joints_torch({k: v[s:s + self.chunk_frames] for k, v in full.items()}) for s in range(0, num_frames, self.chunk_frames)]
        joints = torch.cat(parts).cpu().numpy() if parts else np.zeros((0, 55, 3), np.float32)
        rotation = params.get("world_rotation")
        if rotation is not None:
            joints = joints @ np.asarray(rotation, dtype=np.float32).T
        return joints.astype(np.float32, copy=False)

    def joints_many(self, clips: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Several clips in one batched forward (frames concatenated, then split back per clip)."""
        if not clips:
            return []
        counts = [num_frames_of(c) for c in clips]
        merged = {}
        for name in (*PARAM_WIDTHS, *SHAPE_KEYS):
            if any(name in c for c in clips):
                merged[name] = np.concatenate([self._rows(c, name, n) for c, n in zip(clips, counts)])
        joints = self.joints(merged)
        out = np.split(joints, np.cumsum(counts)[:-1])
        for i, clip in enumerate(clips):
            if clip.get("world_rotation") is not None:
                out[i] = (out[i] @ np.asarray(clip["world_rotation"], np.float32).T).astype(np.float32)
        return out

    def _rows(self, clip: dict, name: str, num_frames: int) -> np.ndarray:
        width = PARAM_WIDTHS.get(name) or (self.num_betas if name == "betas" else self.num_expression)
        value = clip.get(name)
        if value is None:
            return np.zeros((num_frames, width), np.float32)
        value = np.asarray(value, np.float32)
        if value.ndim == 1 or (name in SHAPE_KEYS and value.shape[0] == 1):  # one shape vector (betas (10,) or (1, 10)): every frame
            value = value.reshape(1, -1)
            value = np.broadcast_to(value, (num_frames, value.shape[1]))
        elif value.shape[0] != num_frames:  # a reshape would silently spread one frame's numbers over several
            raise SignfeatError(f"parameter {name} has {value.shape[0]} rows, the other parameters {num_frames}")
        else:
            value = value.reshape(num_frames, -1)
        if name in SHAPE_KEYS and value.shape[1] != width:  # pad/trim per clip so clips can be stacked
            value = self.full_params({name: value}, num_frames)[name].cpu().numpy()
        return value

    def rest_joints(self) -> np.ndarray:
        """float32 [55, 3]: the model's rest pose joints with zero betas and expression."""
        return self.rest_joints_template.detach().cpu().numpy().astype(np.float32)


def num_frames_of(params: dict) -> int:
    """The number of frames of a parameters dict (rows of its first pose parameter)."""
    for name in PARAM_WIDTHS:
        if params.get(name) is not None:
            return int(np.shape(params[name])[0])
    raise SignfeatError(f"no pose parameters found (expected some of {', '.join(PARAM_WIDTHS)})")
