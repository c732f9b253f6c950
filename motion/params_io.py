"""Input A: SMPL-X parameter sequences in the layouts sign corpora and estimators ship, read into one
normalised dict of float32 arrays (``motion.body_model.PARAM_WIDTHS`` plus ``betas`` / ``expression``, one row
per frame, and ``world_rotation`` when the parameters live in a camera frame).

    params, fps = read_params("SignAvatars/.../video.pkl")   # fps is None when the file does not say

Layouts (``detect_layout`` says which one a path is):

- ``signavatars``: a pickle per video with key ``smplx`` of shape (N, 182): root 0:3, body 3:66, left hand
  66:111, right hand 111:156, jaw 156:159, betas 159:169, expression 169:179, camera translation 179:182.
  Camera frame (X right, Y down, Z forward), so ``world_rotation`` = diag(1, -1, -1) turns it Y-up.
- ``smplerx``: a folder of per-frame files (.npz or .pkl, natural sort order, one person per frame) as
  SMPLer-X / OSX inference writes them: ``smplx_root_pose`` 3, ``smplx_body_pose`` 63,
  ``smplx_lhand_pose`` 45, ``smplx_rhand_pose`` 45, ``smplx_jaw_pose`` 3, ``smplx_shape`` 10,
  ``smplx_expr`` 10, optional ``cam_trans`` 3 (camera frame, as SignAvatars); or with the names SMPLer-X's
  ``main/inference.py`` saves (``global_orient``, ``body_pose``, ..., ``transl``: its camera translation).
  Files named ``{frame}_{person}`` (one per detected person): the lowest person of each frame.
- ``motionx``: Motion-X's .npy of (N, 322) per-frame vectors: root 0:3, body 3:66, hands 66:156, jaw
  156:159, face expression 159:209 (50, FLAME), face shape 209:309, translation 309:312, betas 312:322.
  Y-up already. The FLAME expression/shape are not SMPL-X coefficients and are not used (Motion-X's own
  joint export passes zero SMPL-X expression too).
- ``amass``: an AMASS SMPL-X .npz: ``poses`` (N, 165), ``trans``, ``betas``, ``mocap_frame_rate``; Z up, turned
  Y up as HumanML3D does.
- ``named``: an .npz (or pickle of a dict) of named arrays ``global_orient, body_pose, left_hand_pose,
  right_hand_pose, jaw_pose, expression, betas, transl`` and optionally ``fps`` and ``world_rotation``.

Pickles are read with restricted globals (`safe_load_pickle`): numpy arrays, dtypes, torch tensors (their storage
through torch.load(weights_only=True), on the CPU), joblib.dump arrays and plain containers only; a
pickle that names anything else (``os.system``, a class...) is refused before anything runs.
"""

from __future__ import annotations

import difflib
import io
import math
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ClipError, SignfeatError

CAMERA_TO_Y_UP = np.diag([1.0, -1.0, -1.0]).astype(np.float32)  # OpenCV camera frame -> Y up, facing the camera

SIGNAVATARS_SLICES = {
    "global_orient": slice(0, 3), "body_pose": slice(3, 66), "left_hand_pose": slice(66, 111),
    "right_hand_pose": slice(111, 156), "jaw_pose": slice(156, 159), "betas": slice(159, 169),
    "expression": slice(169, 179), "transl": slice(179, 182),
}
MOTIONX_SLICES = {
    "global_orient": slice(0, 3), "body_pose": slice(3, 66), "left_hand_pose": slice(66, 111),
    "right_hand_pose": slice(111, 156), "jaw_pose": slice(156, 159), "transl": slice(309, 312), "betas": slice(312, 322),
}
# AMASS (SMPL-X N release): poses (N, 165) = root, body, jaw, left eye, right eye, left hand, right hand; trans;
# betas (16); mocap_frame_rate. Z up: HumanML3D turns it Y up with (x, y, z) -> (-x, z, y) (its trans_matrix,
# then x *= -1), one proper rotation.
AMASS_SLICES = {
    "global_orient": slice(0, 3), "body_pose": slice(3, 66), "jaw_pose": slice(66, 69), "leye_pose": slice(69, 72),
    "reye_pose": slice(72, 75), "left_hand_pose": slice(75, 120), "right_hand_pose": slice(120, 165),
}
AMASS_TO_Y_UP = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
SMPLERX_KEYS = {  # key -> (normalised name, width of one person; 0: a row of any length, as NAMED_WIDTHS)
    "smplx_root_pose": ("global_orient", 3), "smplx_body_pose": ("body_pose", 63), "smplx_lhand_pose": ("left_hand_pose", 45),
    "smplx_rhand_pose": ("right_hand_pose", 45), "smplx_jaw_pose": ("jaw_pose", 3), "smplx_shape": ("betas", 0),
    "smplx_expr": ("expression", 0), "cam_trans": ("transl", 3), "smplx_transl": ("transl", 3),
}
NAMED_KEYS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "leye_pose", "reye_pose",
              "expression", "betas", "transl")
# values per person in one frame (0: a row of any length, the first person's: betas, expression)
NAMED_WIDTHS = {"global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45, "jaw_pose": 3, "leye_pose": 3,
                "reye_pose": 3, "expression": 0, "betas": 0, "transl": 3}
PER_FRAME_SUFFIXES = (".npz", ".pkl", ".pickle")
# every key a reader takes a value from: stored as an object array, refused rather than skipped
READ_KEYS = frozenset({*NAMED_KEYS, *SMPLERX_KEYS, "smplx", "fps", "total_valid_index", "poses", "trans", "mocap_frame_rate",
                       "mocap_framerate", "world_rotation"})
# other keys a named file may carry, read (fps, world_rotation) or known not to be parameters
NAMED_EXTRA_KEYS = ("fps", "world_rotation", "gender", "num_betas", "model_type", "keypoints", "joints", "vertices")


# ---------------------------------------------------------------------- restricted unpickling

class UnsafePickleError(SignfeatError):
    """A pickle names something other than numpy arrays and plain containers."""


# (module, name) a numpy array or scalar pickle needs (numpy 1.x spells numpy._core as numpy.core).
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 pickles spell bytes as _codecs.encode(text, "latin1")
}


# A pickled torch tensor (SignAvatars' pickles hold them, some saved from a GPU): a plain constructor, and its
# storage as the bytes of a torch.save archive, read by torch's own weights_only loader on the CPU (below).
_TORCH_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
_TORCH_STORAGE = ("torch.storage", "_load_from_bytes")
_JOBLIB_ARRAY = ("joblib.numpy_pickle", "NumpyArrayWrapper")  # joblib.dump's numpy arrays (data follows inline)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save before 1.6 (protocol 2, magic number)


def _restricted_find_class(module: str, name: str) -> Any:
    """The globals parameter pickles may name: numpy arrays, dtypes and scalars, torch tensors, joblib's array
    wrapper; dicts, lists, tuples, strings and numbers need none. Anything else raises before it can be called."""
    import importlib

    canonical = module.replace("numpy.core.", "numpy._core.") if module.startswith("numpy.core.") else module
    if canonical.startswith("numpy.dtypes") and name.endswith("DType"):  # numpy 2 dtype classes (np.dtypes.Float32DType)
        import numpy.dtypes

        return getattr(numpy.dtypes, name)
    if (canonical, name) == _TORCH_STORAGE:
        return _storage_from_bytes
    if (canonical, name) in _ALLOWED_GLOBALS or (canonical, name) in (_TORCH_TENSOR, _JOBLIB_ARRAY):
        return getattr(importlib.import_module(canonical), name)
    raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only numpy arrays, torch tensors and plain containers "
                            "are allowed in parameter pickles")


def _storage_from_bytes(raw: bytes) -> Any:
    """torch.storage._load_from_bytes under torch.load's weights_only unpickler, mapped to the CPU (the pickle
    may come from a GPU machine; torch's own function unpickles anything, on the device it names)."""
    import torch

    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"refusing a tensor storage that torch's weights_only loader refuses: {str(exc).splitlines()[0]}") from None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals numpy arrays and torch tensors need (``_restricted_find_class``)."""

    def find_class(self, module: str, name: str) -> Any:
        return _restricted_find_class(module, name)

    def persistent_load(self, pid):  # noqa: ANN001
        raise UnsafePickleError("refusing a pickle with persistent ids: only numpy arrays and plain containers are allowed")


def _joblib_unpickler(raw: bytes) -> pickle.Unpickler:
    """joblib.dump's file (numpy arrays stored raw after a NumpyArrayWrapper each), read by joblib's own
    unpickler with the same restricted globals: an object array's nested pickle goes through them too."""
    from joblib.numpy_pickle import NumpyUnpickler

    class RestrictedJoblibUnpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            return _restricted_find_class(module, name)

        def persistent_load(self, pid):  # noqa: ANN001
            raise UnsafePickleError("refusing a pickle with persistent ids")

    return RestrictedJoblibUnpickler("", io.BytesIO(raw), ensure_native_byte_order=True)


def _to_numpy(value: Any) -> Any:
    """Torch tensors (anywhere in dicts, lists, tuples) -> numpy arrays: the readers below see numpy only."""
    import sys

    torch = sys.modules.get("torch")  # a pickle with tensors imported it; without one there is nothing to convert
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    return value


def safe_load_pickle(data: bytes | Path | str) -> Any:
    """Unpickle bytes or a file with the restricted globals above (latin1 for Python 2 numpy pickles): plain
    pickles and joblib.dump files of numpy arrays or torch tensors, and torch.save files (through torch.load's
    weights_only loader). Tensors come back as numpy arrays."""
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    try:
        if raw.startswith(_ZIP_MAGIC) or raw.startswith(_LEGACY_TORCH_MAGIC):
            import torch

            try:
                return _to_numpy(torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
            except pickle.UnpicklingError as exc:
                raise UnsafePickleError(f"refusing a torch.save file that torch's weights_only loader refuses: {str(exc).splitlines()[0]}") from None
        unpickler = _joblib_unpickler(raw) if b"NumpyArrayWrapper" in raw else RestrictedUnpickler(io.BytesIO(raw), encoding="latin1")
        return _to_numpy(unpickler.load())
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001  (a corrupt pickle is a user error)
        raise SignfeatError(f"unreadable pickle ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------- layouts

def _natural_key(path: Path) -> list:
    return [int(p) if p.isdecimal() else p for p in re.split(r"(\d+)", path.name)]


def _load_mapping(path: Path) -> dict[str, Any]:
    if path.suffix == ".npz":
        if not zipfile.is_zipfile(path):  # np.load would call it pickled data
            raise SignfeatError(f"{path}: not a .npz (zip) archive, or one cut short")
        out = {}
        try:
            with np.load(path, allow_pickle=False) as archive:
                for key in archive.files:
                    try:
                        out[key] = archive[key]
                    except ValueError:  # an object array (AMASS's gender, a dict of marker ids): pickled, never read
                        if key in READ_KEYS:  # a parameter skipped would leave its joints at rest without a word
                            raise SignfeatError(f"{path}: {key} is an object (pickled) array; signfeat reads parameters "
                                                "from numeric arrays only (np.stack the per-frame arrays)") from None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:  # cut off, not a zip, a bad member
            raise SignfeatError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from None
        return out
    if path.suffix in (".pkl", ".pickle"):
        try:
            data = safe_load_pickle(path)
        except UnsafePickleError:
            raise
        except SignfeatError as exc:  # a cut-off or damaged pickle: say which file
            raise SignfeatError(f"{path}: {exc}") from None
        if not isinstance(data, dict):
            raise SignfeatError(f"{path}: expected a pickled dict, got {type(data).__name__}")
        return data
    raise SignfeatError(f"{path}: a {path.suffix or 'suffixless'} file holds no named parameters: this layout reads .npz or .pkl "
                        "(a .npy is read as Motion-X (N, 322) or SignAvatars (N, 182): params_layout auto, motionx or signavatars)")


def per_frame_files(folder: Path) -> list[Path]:
    # hidden files are no frames: macOS leaves a "._00001_0.npz" AppleDouble file next to every file it copies
    # to a non-Mac disk (is_params_path already ignores them)
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix in PER_FRAME_SUFFIXES and not p.name.startswith(".")),
                   key=_natural_key)
    if not files:
        raise SignfeatError(f"{folder}: no per-frame parameter files ({', '.join(PER_FRAME_SUFFIXES)})")
    return files


def detect_layout(path: str | Path) -> str:
    """signavatars | smplerx | motionx | amass | named (see the module doc), or a one-line error."""
    path = Path(path)
    if not path.exists():
        raise SignfeatError(f"no such parameters file or folder: {path}")
    if path.is_dir():
        return "smplerx"
    if path.suffix == ".npy":
        try:
            width = np.load(path, mmap_mode="r", allow_pickle=False).shape[-1]
        except (ValueError, IndexError) as exc:  # an object (pickled) array, a 0-d one
            raise SignfeatError(f"{path}: not a numeric parameters array ({exc})") from None
        if width == 322:
            return "motionx"
        if width == 182:
            return "signavatars"
        raise SignfeatError(f"{path}: a .npy of width {width}; expected 322 (Motion-X) or 182 (SignAvatars)")
    keys = set(_load_mapping(path))
    if "smplx" in keys:
        return "signavatars"
    if "poses" in keys:  # trans is checked by the reader, which says it is missing
        return "amass"
    if keys & set(SMPLERX_KEYS):
        return "smplerx"
    if keys & set(NAMED_KEYS):
        return "named"
    raise SignfeatError(f"{path}: no SMPL-X parameters found (keys {sorted(keys)[:12]}); expected 'smplx' (SignAvatars), smplx_* (SMPLer-X/OSX) or {', '.join(NAMED_KEYS[:5])}...")


def _rows(value: Any, name: str, where: Path) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise SignfeatError(f"{where}: {name} is not numeric") from None
    if array.size == 0:
        raise SignfeatError(f"{where}: {name} is empty (shape {array.shape})")
    return array.reshape(array.shape[0], -1) if array.ndim > 1 else array[None]


def _split_columns(matrix: np.ndarray, slices: dict[str, slice]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(matrix[:, s], dtype=np.float32) for name, s in slices.items()}


def _fps_of(value: Any, path: Path, key: str = "fps") -> float | None:
    """The frame rate a file records, or None when it records none; one that is no rate is refused (read as
    absent, it was then said to be missing)."""
    if value is None:
        return None
    try:  # a bool (fps: True) is no rate: it was read as 1 fps, an 8-frame clip as 8 s
        fps = math.nan if np.asarray(value).dtype == bool else float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        fps = math.nan
    if not (math.isfinite(fps) and fps > 0):
        raise SignfeatError(f"{path}: its {key} {np.asarray(value).tolist()!r} is not a frame rate (a positive number)")
    return fps


def _read_signavatars(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
    valid = None
    if path.suffix == ".npy":
        matrix, fps = np.load(path, allow_pickle=False), None
    else:
        data = _load_mapping(path)
        matrix, fps, valid = data["smplx"], _fps_of(data.get("fps"), path), data.get("total_valid_index")
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != 182:
        raise SignfeatError(f"{path}: SignAvatars 'smplx' must be (N, 182), got {matrix.shape}")
    if valid is not None:
        _check_signavatars_frames(path, np.asarray(valid).reshape(-1), len(matrix))
    return {**_split_columns(matrix, SIGNAVATARS_SLICES), "world_rotation": CAMERA_TO_Y_UP}, fps


def _check_signavatars_frames(path: Path, valid: np.ndarray, rows: int) -> None:
    """SignAvatars' ``total_valid_index`` says which video frames the ``smplx`` rows are: where its estimator
    found no valid person it wrote no row. Read as consecutive, such a clip would be shorter than the video and one
    row's velocity the whole gap's movement, so a gap is refused, as a SMPLer-X folder's is. The frames are read as
    frame numbers (increasing, one per row) or as a 0/1 mask over the video's frames (one 1 per row)."""
    if valid.dtype == bool:  # a True/False mask
        valid = valid.astype(np.int64)
    if valid.size and not (np.issubdtype(valid.dtype, np.number) and np.isfinite(valid).all() and (valid == np.round(valid)).all()):
        raise SignfeatError(f"{path}: total_valid_index must hold frame numbers or a 0/1 mask, got {valid.dtype} {valid[:5].tolist()}")
    valid = valid.astype(np.int64)
    if valid.size == rows and (valid >= 0).all() and (np.diff(valid) > 0).all():
        frames = valid
    elif set(np.unique(valid).tolist()) <= {0, 1} and int(valid.sum()) == rows:
        frames = np.flatnonzero(valid)
    else:
        raise SignfeatError(f"{path}: total_valid_index ({valid.size} entries: {valid[:5].tolist()}...) is neither {rows} increasing "
                            f"frame numbers nor a 0/1 mask with {rows} ones, one per row of 'smplx'")
    # evenly spaced frame numbers (every 2nd frame) are a clip at that step, as a SMPLer-X folder's are
    step = int(np.diff(frames).min()) if len(frames) > 1 else 1
    gaps = [(int(a), int(b)) for a, b in zip(frames, frames[1:]) if b - a != step]
    if gaps:
        a, b = gaps[0]
        raise SignfeatError(f"{path}: no parameters for frames {a + step}..{b - step} (and {len(gaps) - 1} more gaps; total_valid_index), where "
                            "SignAvatars found no valid person; the clip's timing would be wrong without them")


def _read_motionx(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
    matrix = np.load(path, allow_pickle=False).astype(np.float32)
    if matrix.ndim != 2:
        raise SignfeatError(f"{path}: Motion-X data must be (N, 322), got {matrix.shape}")
    return _split_columns(matrix, MOTIONX_SLICES), None


def _first_person_files(files: list[Path]) -> list[Path]:
    """SMPLer-X's inference writes one file per detected person, ``{frame:05}_{person}.npz``: a second person
    in a frame became an extra frame (the root jumping metres and back). Where frames hold several such files,
    the lowest person number of each frame is kept (the signer; others are bystanders or false detections)."""
    # the person number is written as is (0, 1, ...): "signer01_00019" is frame 19 of signer01, not person 00019
    parsed = [re.fullmatch(r"(.*\d)_(0|[1-9]\d{0,2})", f.stem) for f in files]
    frames = {m.group(1) for m in parsed if m}
    if not all(parsed) or len(frames) == len(files) or len(frames) == 1:  # one frame of them all: a naming, not persons
        return files
    first: dict[str, tuple[int, Path]] = {}
    for m, f in zip(parsed, files):
        person = int(m.group(2))
        if m.group(1) not in first or person < first[m.group(1)][0]:
            first[m.group(1)] = (person, f)
    return [f for _, f in sorted(first.values(), key=lambda pf: _natural_key(pf[1]))]


def _check_no_missing_frames(folder: Path, files: list[Path]) -> None:
    """SMPLer-X's inference writes no file for a frame where it detects no person: dropped silently, those frames
    would shorten the clip and make one row's velocity the whole gap's movement. Frame numbers are read from the
    names (``{frame}`` or ``{frame}_{person}``, any prefix); a gap in an evenly numbered folder is an error."""
    numbers = []
    for f in files:
        m = re.fullmatch(r"(?:.*?)(\d+)(?:_(?:0|[1-9]\d{0,2}))?", f.stem)
        if m is None:
            return  # names without frame numbers: nothing to check
        numbers.append(int(m.group(1)))
    steps = np.diff(numbers)
    if len(steps) < 2 or (steps <= 0).any():
        return
    step = int(np.min(steps))
    gaps = [(a, b) for a, b in zip(numbers, numbers[1:]) if b - a != step]
    if gaps:
        a, b = gaps[0]
        raise SignfeatError(f"{folder}: no file for frames {a + step}..{b - step} (and {len(gaps) - 1} more gaps); SMPLer-X writes none "
                            "where it detects no person, and the clip's timing would be wrong without them")


def _read_smplerx(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
    files = _first_person_files(per_frame_files(path)) if path.is_dir() else [path]
    if path.is_dir():
        _check_no_missing_frames(path, files)
    columns: dict[str, list[np.ndarray]] = {}
    for file in files:
        frame = _load_mapping(file)
        found, persons_of = {}, {}
        for key, value in frame.items():
            # SMPLer-X / OSX's in-memory names (smplx_root_pose...), or the names its inference script saves
            # (global_orient, body_pose, ..., transl = its camera translation)
            name, width = SMPLERX_KEYS.get(key) or (key, NAMED_WIDTHS.get(key))
            if width is None:
                continue
            shape = np.shape(value)
            if width and len(shape) >= 3 and shape[-2:] == (3, 3):  # (1, 21, 3, 3): a rotation matrix per joint
                raise SignfeatError(f"{file}: {key} of shape {shape} holds rotation matrices; signfeat reads SMPL-X poses "
                                    "as axis-angle (3 values a joint)")
            rows = _rows(value, key, file)  # (21, 3), (1, 63), (persons, 63)...: one frame, the first person
            if width == 0:  # betas / expression: the first person's row, of any length
                flat = rows[0]
                width = flat.size
            else:
                flat = rows.reshape(-1)
                persons, rest = divmod(flat.size, width)
                # whole persons, one a row: (1, 66) or (1, 189) values are no person's, and their first 63 would be
                # read as a pose without a word
                if rest or not persons or (persons > 1 and persons != rows.shape[0]):
                    raise SignfeatError(f"{file}: {key} has shape {shape}; expected {width} values a person, one person a row "
                                        "(axis-angle)")
                if name != "transl":  # the rotations: all of one person, or of the same persons
                    persons_of[key] = persons
            found[name] = flat[None, :width]
        if len(set(persons_of.values())) > 1:  # a (3, 3) root pose beside a (1, 63) body pose: a rotation matrix, not 3 persons
            raise SignfeatError(f"{file}: its poses hold values of different numbers of persons ({persons_of}); expected axis-angle, "
                                "3 values a joint, the same persons in every pose (a 3x3 value is a rotation matrix)")
        if "global_orient" not in found or "body_pose" not in found:
            raise SignfeatError(f"{file}: a SMPLer-X/OSX frame needs smplx_root_pose and smplx_body_pose, or global_orient "
                                f"and body_pose (has {sorted(frame)})")
        if columns and set(found) != set(columns):
            raise SignfeatError(f"{file}: has {sorted(found)} but earlier frames have {sorted(columns)}")
        for name, rows in found.items():
            columns.setdefault(name, []).append(rows)
    return {**{k: np.concatenate(v) for k, v in columns.items()}, "world_rotation": CAMERA_TO_Y_UP}, None


def _read_amass(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
    data = _load_mapping(path)
    poses = _rows(data["poses"], "poses", path)
    if poses.shape[1] != 165:
        raise SignfeatError(f"{path}: AMASS poses of width {poses.shape[1]}; SMPL-X's are 165 (SMPL+H's 156 is another body model)")
    params = _split_columns(poses, AMASS_SLICES)
    if "trans" not in data:
        raise SignfeatError(f"{path}: an AMASS file needs trans (the root's path) beside poses (has {sorted(data)[:12]})")
    params["transl"] = _rows(data["trans"], "trans", path)
    if "betas" in data:
        params["betas"] = _rows(data["betas"], "betas", path)[:1]  # one shape for the clip
    params["world_rotation"] = AMASS_TO_Y_UP
    rate_key = "mocap_frame_rate" if "mocap_frame_rate" in data else "mocap_framerate"
    return params, _fps_of(data.get(rate_key), path, rate_key)


def _read_named(path: Path) -> tuple[dict[str, np.ndarray], float | None]:
    data = _load_mapping(path)
    # a misspelt key (lhand_pose, body_poses) would be dropped and its joints left at rest: the hands, the
    # signal of a sign, silently gone. Only near-spellings of a missing parameter the motion features read count
    # (jaw, eyes and expression move no joint of the 52): other keys (full_pose, root_pose, ...) are left alone.
    wanted = [k for k in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl", "betas") if k not in data]
    for key in data:
        close = difflib.get_close_matches(key, wanted, n=1, cutoff=0.8)
        if key not in NAMED_KEYS and close and key not in NAMED_EXTRA_KEYS:
            raise SignfeatError(f"{path}: key {key!r} is not a SMPL-X parameter name; did you mean {close[0]!r}? "
                                f"(named parameters: {', '.join(NAMED_KEYS)})")
    if "body_pose" not in data:
        raise SignfeatError(f"{path}: named SMPL-X parameters need body_pose (has {sorted(data)[:12]})")
    params = {k: _rows(data[k], k, path) for k in NAMED_KEYS if k in data}
    for key, rows in params.items():  # a pose of another form passed the probe, then failed in the job without a path
        width, shape = NAMED_WIDTHS[key], np.shape(data[key])
        if width and len(shape) >= 3 and shape[-2:] == (3, 3):  # (T, 21, 3, 3): a rotation matrix per joint
            raise SignfeatError(f"{path}: {key} of shape {shape} holds rotation matrices; signfeat reads SMPL-X poses "
                                "as axis-angle (3 values a joint)")
        if width and rows.shape[1] != width:
            what = "x, y, z" if key == "transl" else "axis-angle, 3 values a joint"
            raise SignfeatError(f"{path}: {key} has shape {shape}, {rows.shape[1]} values a frame; expected {width} "
                                f"({what}; a frame a row)")
    if data.get("world_rotation") is not None:
        rotation = np.asarray(data["world_rotation"], dtype=np.float32)
        if rotation.shape != (3, 3):
            raise SignfeatError(f"{path}: world_rotation must be 3x3, got {rotation.shape}")
        params["world_rotation"] = rotation
    return params, _fps_of(data.get("fps"), path)


READERS = {"signavatars": _read_signavatars, "smplerx": _read_smplerx, "motionx": _read_motionx, "amass": _read_amass, "named": _read_named}


def read_params(path: str | Path, layout: str = "auto") -> tuple[dict[str, np.ndarray], float | None]:
    """A parameters file or folder -> (normalised params, fps or None). ``layout``: auto | signavatars |
    smplerx | motionx | amass | named."""
    path = Path(path)
    if layout == "auto":
        layout = detect_layout(path)
    elif layout not in READERS:
        raise SignfeatError(f"unknown parameters layout {layout!r}; known: auto, {', '.join(READERS)}")
    elif not path.exists():
        raise SignfeatError(f"no such parameters file or folder: {path}")
    params, fps = READERS[layout](path)
    # betas and expression may be one row for the clip; every other parameter is a row per frame
    counts = {k: len(v) for k, v in params.items() if k != "world_rotation" and not (k in ("betas", "expression") and len(v) == 1)}
    if len(set(counts.values())) > 1:
        raise SignfeatError(f"{path}: parameters disagree on the number of frames: {counts}")
    if not counts and "global_orient" not in params:
        raise SignfeatError(f"{path}: no per-frame pose parameters")
    for name, value in params.items():  # probed ok, then a failures row naming neither the file nor the parameter
        value = np.asarray(value)
        if value.size == 0:  # no frames: read_clip_params says so
            continue
        bad = ~np.isfinite(value.reshape(len(value), -1) if value.ndim > 1 else value.reshape(1, -1)).all(axis=1)
        if bad.any():
            frames = np.flatnonzero(bad)
            where = f"frame {frames[0]}" if len(frames) == 1 else f"{len(frames)} of its {len(bad)} rows, the first frame {frames[0]}"
            raise SignfeatError(f"{path}: {name} holds NaN or infinite values ({where}); the estimator lost the person "
                                "there? cut those frames out or fill them")
    return params, fps


def read_clip_params(path: str | Path, layout: str = "auto") -> tuple[dict[str, np.ndarray], float | None, str]:
    """``read_params`` for one manifest clip -> (params, fps or None, the layout read). A bad file is that
    clip's ClipError (``unsafe_pickle``, ``bad_params``), a failures row or a probe status, never the job's."""
    try:
        layout = detect_layout(path) if layout == "auto" else layout
        params, fps = read_params(path, layout)
    except UnsafePickleError as exc:  # names code to run: refused unread, and said so
        raise ClipError("unsafe_pickle", f"{path}: {exc}") from None
    except SignfeatError as exc:
        raise ClipError("bad_params", str(exc)) from None
    except Exception as exc:  # noqa: BLE001  a reader's own check missed this file: still the clip's error, said plainly
        raise ClipError("bad_params", f"{path}: unreadable SMPL-X parameters ({type(exc).__name__}: {exc})") from None
    orient = params.get("global_orient")
    if orient is not None and np.asarray(orient).ndim >= 1 and len(orient) == 0:
        # an empty SignAvatars / Motion-X array: probed ok (0 frames), then a reshape ValueError in the job
        raise ClipError("no_frames", f"{path} holds no frames of SMPL-X parameters")
    return params, fps, layout


def is_params_path(path: str | Path) -> bool:
    """Whether ``path`` looks like Input A (a parameters file or a folder of per-frame parameter files)
    rather than a video or a folder of frame images."""
    from pipeline.decode import IMAGE_EXTENSIONS

    path = Path(path)
    if path.is_dir():
        # a folder of frame images is a frame folder, whatever side files it holds (keypoints.npz next to the frames)
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        return any(p.suffix in PER_FRAME_SUFFIXES for p in files) and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files)
    return path.suffix in (".pkl", ".pickle", ".npz", ".npy")


# Axis-angle parameters (one rotation per joint) are interpolated on the sphere; the rest linearly.
ROTATION_KEYS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "leye_pose", "reye_pose")


def resample_params(params: dict[str, np.ndarray], fps: float, target_fps: float) -> dict[str, np.ndarray]:
    """A clip's parameters at ``target_fps``: for each instant k / target_fps from the first frame to the last
    (floor((n - 1) * target / fps) + 1 of them: ceil(n / k) at an integer ratio k, HumanML3D's
    ``len(poses[::k])``), the pose interpolated between the two frames around it: joint rotations by slerp
    (scipy's Rotation), translation and per-frame shape linearly. No instant lies after the last frame: the
    video rule (pipeline.decode.resample_indices) holds the last frame there, which here would end the clip on
    a duplicated pose and a velocity that drops to zero (25 -> 20 fps: 228 of 381 clip lengths).

    Why not pick frames (as for video): at a rate ratio that is not an integer (25 -> 20, 30 -> 20) the picked
    frames are unevenly spaced in time, so every velocity block of the 623-d features spikes periodically (a root
    moving at 1 m/s read 0.04, 0.04, 0.04, 0.08 m per row). At an integer ratio (60 -> 20, HumanML3D's
    ``poses[::down_sample]``) the instants fall on frames, and this returns exactly those frames.
    """
    from scipy.spatial.transform import Rotation

    from motion.body_model import num_frames_of

    n = num_frames_of(params)
    count = int(np.floor(round((n - 1) * target_fps / fps, 6))) + 1
    position = np.minimum(np.arange(count) * (fps / target_fps), n - 1)  # in source frames
    lower = np.floor(position + 1e-9).astype(np.int64).clip(0, n - 1)
    upper = np.minimum(lower + 1, n - 1)
    weight = np.clip(position - lower, 0.0, 1.0)
    weight[weight < 1e-9] = 0.0
    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        value = np.asarray(value)
        # one vector / matrix for the whole clip: a 1-D betas or expression (10,) of a 10-frame clip is no column
        if name == "world_rotation" or value.ndim <= 1 or len(value) != n:
            out[name] = value
            continue
        flat = value.reshape(n, -1).astype(np.float64)
        if name in ROTATION_KEYS:
            # slerp: from the lower frame's rotation, the weighted part of the (shortest) turn to the upper one's
            r0, r1 = Rotation.from_rotvec(flat[lower].reshape(-1, 3)), Rotation.from_rotvec(flat[upper].reshape(-1, 3))
            w = np.repeat(weight, flat.shape[1] // 3)[:, None]
            rotvec = (r0 * Rotation.from_rotvec((r0.inv() * r1).as_rotvec() * w)).as_rotvec().reshape(count, -1)
            # frames that fall exactly on a source frame keep its numbers (no round trip through quaternions)
            exact = weight == 0
            rotvec[exact] = flat[lower[exact]]
            resampled = rotvec
        else:
            resampled = flat[lower] * (1 - weight[:, None]) + flat[upper] * weight[:, None]
        out[name] = resampled.reshape((count, *value.shape[1:])).astype(value.dtype if value.dtype.kind == "f" else np.float32)
    return out
