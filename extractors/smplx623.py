"""``smplx623``: SMPL-X motion as the 623-d HumanML3D vector over 52 joints per frame, float32 [T - 1, 623].

Two inputs, one output (motion/ holds the machinery):

- Input A, SMPL-X parameters (SignAvatars, SMPLer-X/OSX per-frame files, Motion-X, named .npz):
  ``extract_params([params, ...], fps=[...])`` or ``extract_paths([path, ...])`` (``motion.params_io.read_params``).
  In a job, manifest rows with ``source_kind`` smplx reach ``extract_files`` in the actor (features plus the
  frames and fps they are aligned to, after ``target_fps``, which become the sample's num_frames and fps).
- Input B, video: ``prepare(frames)`` keeps the aspect ratio and resizes the short side to ``image_size``
  (MediaPipe wants the whole frame: a square crop would cut off hands), ``extract_prepared`` runs MediaPipe
  Holistic + SMPL-X fitting per clip, then the same feature step.

Row i describes frame i of the (resampled) input: positions of frame i, motion from frame i to i+1; the last
frame has no row (``metadata()["alignment"]``). Settings are validated up front; the model folder is the
user's licensed SMPL-X download (``model_dir``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extractors.base import Extractor, model_files_fingerprint, refuse_empty_clips, register
from extractors.preprocess import FrameTransform
from motion.body_model import BodyModel, BodyModelSettings, num_frames_of
from motion.humanml3d import FEATURE_WIDTH, LAYOUT, FeatureSettings, bone_lengths, joints_to_features, select_motion_joints
from motion.params_io import READERS
from pipeline.errors import ClipError, SignfeatError

ALIGNMENT = ("row i = frame i of the (resampled) input: joint positions and rotations of frame i, velocities "
             "from frame i to i+1; T frames give T-1 rows (the last frame has no row)")


@dataclass(frozen=True)
class Smplx623Settings:
    # body model (motion/body_model.py)
    model_dir: str = ""  # folder with SMPLX_NEUTRAL.npz (https://smpl-x.is.tue.mpg.de)
    gender: str = "neutral"
    num_betas: int = 10
    num_expression_coeffs: int = 10
    flat_hand_mean: bool = False
    # features (motion/humanml3d.py); the quirks reproduce the reference code by default
    retarget: str = "rest"  # rest (zero-beta rest pose of SMPLX_NEUTRAL, else of the loaded model) | none (the clip's own skeleton) | a joints .npy
    target_fps: float = 0.0  # Input A: resample to this fps first (HumanML3D 20, Motion-X 30); 0 keeps the input's
    feet_threshold: float = 0.002
    smooth_sigma: float = 20.0
    smooth_mode: str = "nearest"
    ik_swap_hips: bool = True
    ik_first_frame_identity: bool = True
    ik_chains_from_root: bool = True
    root_velocity_sign_flip: bool = True
    # Input A
    params_layout: str = "auto"  # auto | signavatars | smplerx | motionx | amass | named
    # Input B (video): MediaPipe + fitting (motion/estimate.py, motion/fitting.py)
    image_size: int = 512  # short side of the frames given to MediaPipe (aspect kept, no crop)
    model_complexity: int = 1  # MediaPipe pose model: 1 (full, the one inside the wheel)
    fit_iterations: int = 150
    fit_orient_iterations: int = 30
    fit_betas: bool = False

    def __post_init__(self) -> None:
        BodyModelSettings(self.model_dir, self.gender, self.num_betas, self.num_expression_coeffs, self.flat_hand_mean)
        self.feature_settings()
        if self.target_fps < 0:
            raise ValueError(f"target_fps must be >= 0, got {self.target_fps}")
        if self.params_layout != "auto" and self.params_layout not in READERS:
            raise ValueError(f"params_layout must be auto or one of {sorted(READERS)}, got {self.params_layout!r}")
        if self.image_size < 64:
            raise ValueError(f"image_size must be >= 64, got {self.image_size}")
        if self.model_complexity != 1:  # the wheel holds the full model only; 0 (lite) and 2 (heavy) are downloads
            raise ValueError(f"model_complexity must be 1 (the pose model inside the MediaPipe wheel; lite and heavy are downloaded "
                             f"on first use, which offline workers cannot), got {self.model_complexity}")
        if self.fit_iterations < 0 or self.fit_orient_iterations < 0:
            raise ValueError("fit iterations must be >= 0")

    def body_settings(self) -> BodyModelSettings:
        return BodyModelSettings(self.model_dir, self.gender, self.num_betas, self.num_expression_coeffs, self.flat_hand_mean)

    def feature_settings(self) -> FeatureSettings:
        names = [f.name for f in dataclasses.fields(FeatureSettings)]
        return FeatureSettings(**{n: getattr(self, n) for n in names})


def load_target_joints(path: Path) -> np.ndarray:
    """The ``retarget`` joints file: [52 or >= 55, 3], or a clip [T, J, 3] whose first frame is taken, as
    HumanML3D / Motion-X take theirs from 000021.npy; returned as the 52 motion joints."""
    try:
        joints = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # numpy calls anything that is not .npy or .npz "pickled data" and suggests allow_pickle: not the way here
        reason = "not an .npy file (a text file, or another format)" if "pickle" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise SignfeatError(f"{path}: the retarget joints must be a .npy array ({reason})") from None
    if not isinstance(joints, np.ndarray):  # an .npz archive
        raise SignfeatError(f"{path}: the retarget joints must be a .npy array, not an .npz archive")
    if joints.ndim == 3:  # a clip: its first frame
        if not len(joints):
            raise SignfeatError(f"{path}: the retarget joints clip has no frames (shape {joints.shape})")
        joints = joints[0]
    if joints.ndim != 2 or joints.shape[1] != 3 or not (joints.shape[0] == 52 or joints.shape[0] >= 55):
        raise SignfeatError(f"{path}: target joints must be [52 or >= 55, 3] (or [T, J, 3]), got {joints.shape}")
    if joints.dtype.kind not in "iuf" or not np.isfinite(joints).all():
        raise SignfeatError(f"{path}: target joints must be finite real numbers (got {joints.dtype}"
                            f"{', with NaN/inf' if joints.dtype.kind == 'f' else ''})")
    joints = select_motion_joints(joints.astype(np.float64))
    # each bone keeps its direction and takes the target's length: a zero-length bone puts a joint onto its
    # parent (all-zero joints made every feature NaN), so the target must be a skeleton
    lengths = bone_lengths(joints)
    flat = [j for j in range(1, len(joints)) if not lengths[j] > 1e-6]
    if flat:
        raise SignfeatError(f"{path}: target joints are not a skeleton: {len(flat)} of {len(joints) - 1} bones have zero length "
                            f"(motion joints {flat[:8]}{' ...' if len(flat) > 8 else ''} lie on their parents)")
    return joints


@dataclass(frozen=True)
class KeepAspectTransform(FrameTransform):
    """Resize the short side to ``shortest_edge`` and keep the whole frame (``crop = 0``: no crop), so its
    geometry key differs from every cropping transform's. Bilinear through PIL, the only way ``make_transform``
    builds it (MediaPipe gets the frames as images)."""

    def resize_crop(self, frames: np.ndarray) -> torch.Tensor:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        from PIL import Image

        new_h, new_w = self._resized_size(*frames.shape[1:3])
        resized = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), resample=2)) for f in frames])
        return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()


@register("smplx623")
class Smplx623Extractor(Extractor):
    default_model = "SMPL-X (model_dir)"
    default_batch_size = 8  # clips per batched forward
    storage_dtype = np.dtype(np.float32)
    Settings = Smplx623Settings
    accepts_params = True  # manifest rows with source_kind "smplx" (Input A) are read by extract_files

    @classmethod
    def expected_rows(cls, num_frames: int, settings: dict[str, Any]) -> int | None:
        return max(num_frames - 1, 0)  # ALIGNMENT: the last frame has no row

    def __init__(self, config):
        super().__init__(config)
        settings = self.settings
        self.check_config(config, settings)
        if not settings.model_dir and config.model:
            settings = self.settings = dataclasses.replace(settings, model_dir=config.model)
        self.body = BodyModel(settings.body_settings(), device="cpu")
        if self.body.synthetic:  # signfeat's synthetic test model: recorded as weights=random, never as real
            # (its folder may have come as `model`, now in model_dir: random_weights refuses a model beside it)
            self.config = dataclasses.replace(self.config, random_weights=True, model=None)
        self.model_id = str(self.body.path)
        self.features = settings.feature_settings()
        self.target_joints = self._target_joints(settings.retarget)
        self.transform = self.make_transform(config, settings)
        self.width = FEATURE_WIDTH
        self.model_info = {"class": "smplx.SMPLX (joints only)", "file": str(self.body.path), "num_betas": self.body.num_betas,
                           "num_expression_coeffs": self.body.num_expression, "joints": 52, "synthetic_model": self.body.synthetic}
        self._estimator = None

    def _target_joints(self, retarget: str) -> np.ndarray | None:
        if retarget == "none":
            return None
        if retarget == "rest":  # the neutral model's rest pose when its file is there (HumanML3D-style one skeleton for all)
            if self.settings.gender != "neutral":
                try:
                    return BodyModel(dataclasses.replace(self.settings.body_settings(), gender="neutral")).rest_joints()
                except SignfeatError:
                    pass
            return self.body.rest_joints()
        path = Path(retarget)
        if not path.is_file():
            raise SignfeatError(f"retarget must be rest, none or a joints .npy file; no such file: {retarget}")
        return load_target_joints(path)

    @classmethod
    def check_config(cls, config, settings) -> None:
        """The SMPL-X folder comes as the ``model_dir`` setting or as ``model`` (``--model``): given as both, and
        naming two folders, one would be dropped without a word."""
        super().check_config(config, settings)
        if settings.model_dir and config.model and _folder(settings.model_dir) != _folder(config.model):
            raise SignfeatError(f"smplx623: the SMPL-X folder is given twice, as model_dir={settings.model_dir} and as "
                                f"model={config.model}: give one of them")
        if settings.retarget not in ("rest", "none") and Path(settings.retarget).is_file():  # else a cluster's workers may hold it
            load_target_joints(Path(settings.retarget))

    @classmethod
    def check_local_files(cls, config, settings, rows=()) -> None:
        """The SMPL-X model file (the shipped config's placeholder model_dir, or none set) or a retarget file missing
        here failed every actor of a local job after Ray started: pages of tracebacks behind the one line. So did
        every clip of an AMASS corpus (16 betas) under the default num_betas 10, one failures row each: the first
        parameter file is read here."""
        from manifests.schema import PARAMS_KIND
        from motion.body_model import _check_model_file, find_model_file
        from motion.params_io import read_clip_params

        try:
            _check_model_file(find_model_file(settings.model_dir or config.model or "", settings.gender))
        except SignfeatError as exc:
            raise SignfeatError(f"smplx623: {exc}") from None
        if settings.retarget not in ("rest", "none") and not Path(settings.retarget).is_file():
            raise SignfeatError(f"smplx623: retarget must be rest, none or a joints .npy file; no such file: {settings.retarget}")
        first = next((r["path"] for r in rows if r.get("source_kind") == PARAMS_KIND and r.get("path")), None)
        try:
            betas = read_clip_params(first, settings.params_layout)[0].get("betas") if first else None
        except SignfeatError:  # that clip's own failure, recorded by the job
            betas = None
        if betas is not None and np.asarray(betas).ndim and np.asarray(betas).reshape(len(betas), -1).shape[1] > settings.num_betas:
            width = np.asarray(betas).reshape(len(betas), -1).shape[1]
            raise SignfeatError(f"smplx623: {first} holds {width} betas a frame and num_betas is {settings.num_betas}: "
                                f"its clips would fail one by one; set num_betas: {width} (AMASS's SMPL-X files hold 16)")

    @classmethod
    def make_transform(cls, config, settings) -> FrameTransform:
        return KeepAspectTransform(shortest_edge=settings.image_size, crop=0, resample="bilinear", backend="pil")

    @classmethod
    def local_files(cls, config, settings) -> str | None:
        """The SMPL-X model file the settings name (None where it cannot be found here: a cluster's workers
        may hold it)."""
        from motion.body_model import find_model_file

        try:
            return str(find_model_file(settings.model_dir or config.model or "", settings.gender))
        except SignfeatError:
            return None

    @functools.cached_property
    def model_files(self) -> str | None:
        """The SMPL-X model file's fingerprint (model_dir is a setting, not ``model``): another file under the
        same path is another model."""
        return None if self.body.synthetic else model_files_fingerprint(str(self.body.path))

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["alignment"] = ALIGNMENT
        meta["layout"] = {name: [s.start, s.stop] for name, s in LAYOUT.items()}
        return meta

    # ------------------------------------------------------------------ Input A

    def _resample(self, params: dict[str, np.ndarray], fps: float | None) -> dict[str, np.ndarray]:
        if not self.settings.target_fps or fps is None or abs(fps - self.settings.target_fps) < 1e-6:
            return params
        from motion.params_io import resample_params

        if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in params.values()):  # scipy's slerp: "zero norm quaternions"
            raise ClipError("bad_params", "SMPL-X parameters are not finite (NaN/inf)")
        return resample_params(params, fps, self.settings.target_fps)  # interpolated: see resample_params for why

    def joints_to_features(self, joints: np.ndarray) -> np.ndarray:
        if len(joints) < 2:
            rate = self.settings.target_fps
            raise ClipError("too_short", f"a motion needs at least 2 frames, got {len(joints)}"
                                         + (f" at target_fps {rate:g} (the clip's frames resampled to it; "
                                            "target_fps=0 keeps the clip's own rate)" if rate else ""))
        if not np.isfinite(joints).all():
            raise ClipError("bad_params", "SMPL-X joints are not finite (NaN/inf in the parameters)")
        return joints_to_features(joints, self.target_joints, self.features)

    def extract_params(self, clips: list[dict[str, np.ndarray]], fps: list[float | None] | None = None) -> list[np.ndarray]:
        """Parameter dicts of several clips (motion.params_io layout) -> one float32 [T_i - 1, 623] each.
        ``fps[i]``: clip i's frame rate (needed only when ``target_fps`` is set)."""
        fps = fps or [None] * len(clips)
        resampled = [self._resample(c, f) for c, f in zip(clips, fps)]
        out = []
        for start in range(0, len(resampled), self.batch_size):
            batch = resampled[start:start + self.batch_size]
            out += [self.joints_to_features(j) for j in self.body.joints_many(batch)]
        return out

    def load_path(self, path: str | Path, fps: float | None = None) -> tuple[dict[str, np.ndarray], float | None]:
        """One Input A file or folder -> (params resampled to ``target_fps``, the fps they now have). The file's
        own fps wins over ``fps`` (the manifest's); None when neither says."""
        from motion.params_io import read_clip_params

        params, own, _ = read_clip_params(path, self.settings.params_layout)  # a bad file: this clip's ClipError
        fps = own or fps
        if self.settings.target_fps and not fps:  # keeping the file's unknown rate would silently break target_fps
            raise ClipError("no_fps", f"{path}: target_fps={self.settings.target_fps:g} needs the clip's frame rate; the file has no fps and none was given")
        resampled = self._resample(params, fps)
        return resampled, (float(self.settings.target_fps) if resampled is not params else fps)

    def extract_paths(self, paths: list[str | Path], fps: list[float | None] | None = None) -> list[np.ndarray]:
        """Input A files or folders -> features (a file's own fps wins over ``fps[i]``)."""
        return [f for f, _, _ in self.extract_files(paths, fps or [None] * len(paths))]

    def extract_files(self, paths: list[str | Path], fps: list[float | None]) -> list[tuple[np.ndarray, int, float | None]]:
        """Input A files -> per clip (features [T-1, 623], T, fps): T and fps after resampling, which the
        pipeline writes as the sample's num_frames and fps (so verify's T-1 rule holds for them too)."""
        loaded = [self.load_path(p, f) for p, f in zip(paths, fps)]
        try:
            feats = self.extract_params([p for p, _ in loaded])  # already resampled: no fps, no second resampling
        except ClipError:
            raise
        except SignfeatError as exc:  # parameters the body model refuses (more betas than num_betas): the clip's, with its path
            if len(paths) > 1:
                raise  # the job retries a failed batch clip by clip
            raise ClipError("bad_params", f"{paths[0]}: {exc}") from None
        return [(f, num_frames_of(p), rate) for f, (p, rate) in zip(feats, loaded)]

    # ------------------------------------------------------------------ Input B

    @property
    def estimator(self):
        if self._estimator is None:
            from motion.estimate import MediaPipeEstimator, MediaPipeSettings
            from motion.fitting import FitSettings

            fit = FitSettings(iterations=self.settings.fit_iterations, orient_iterations=self.settings.fit_orient_iterations,
                              fit_betas=self.settings.fit_betas)
            self._estimator = MediaPipeEstimator(self.body, fit, MediaPipeSettings(model_complexity=self.settings.model_complexity))
        return self._estimator

    def extract(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 frames of several clips -> float32 [T_i - 1, 623] (no inference_mode: fitting needs autograd)."""
        refuse_empty_clips(self.name, [len(f) for f in clips])
        return self.extract_prepared([self.prepare(f) for f in clips])

    def extract_prepared(self, prepared: list[torch.Tensor]) -> list[np.ndarray]:
        """Prepared uint8 [T, 3, H, W] clips -> estimate (MediaPipe + fitting) -> features (at the frames' own
        rate; ``extract_prepared_timed`` applies ``target_fps``, which needs each clip's rate: with it set, this is
        refused rather than giving motion at the frames' own rate under the target_fps settings hash)."""
        if self.settings.target_fps:
            raise SignfeatError(f"{self.name}: target_fps={self.settings.target_fps} needs each clip's frame rate: call "
                                "extract_prepared_timed(prepared, fps) (the job and `signfeat features` do)")
        return [f for f, _, _, _ in self.extract_prepared_timed(prepared, [None] * len(prepared))]

    def extract_prepared_timed(self, prepared: list[torch.Tensor], fps: list[float | None]) -> list[tuple[np.ndarray, int, float | None, dict]]:
        """Video clips at ``fps`` -> per clip (features, T, fps, detections) with the estimated motion resampled to
        ``target_fps`` as a parameter file's is (it was ignored for video rows: one stream held 20 and 25 fps
        motions under one settings hash); T and fps become the sample's num_frames and fps, and detections
        (``motion.estimate.detection_gaps``: the frames without a person or a hand, which the fit filled in)
        the sample's ``streams.smplx623.estimate``."""
        params, detections = [], []
        for p in prepared:
            params.append(self.estimator.estimate(np.ascontiguousarray(p.permute(0, 2, 3, 1).cpu().numpy())))
            detections.append(getattr(self.estimator, "last_report", {}).get("detections", {}))  # another Estimator may not say
        resampled = [self._resample(p, f) for p, f in zip(params, fps)]
        feats = self.extract_params(resampled)
        # the detections' frames are the decoded ones, at the decoded rate (which max_frames may have thinned out)
        detections = [{**d, "fps": rate} if d else d for d, rate in zip(detections, fps)]
        return [(f, num_frames_of(r), float(self.settings.target_fps) if r is not p else rate, d)
                for f, r, p, rate, d in zip(feats, resampled, params, fps, detections)]


def _folder(path: str) -> Path:
    return Path(path).expanduser().resolve()
