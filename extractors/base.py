"""The extractor contract (DESIGN.md): one class per frozen model, all with the same small surface.

An extractor is built from an ExtractorConfig and

- says what it produces: ``stream`` (the shard member name), ``width``, ``storage_dtype`` (float16);
- ``prepare(frames)``: uint8 [T, H, W, 3] -> uint8 tensor [T, 3, S, S] resized and cropped as the model's
  own processor does (CPU work: the Ray job runs it next to decoding, not on the GPU actor); the
  processor's rescale and normalisation run on the device (``transform.normalize``);
- ``units(T)``: what one model input is, as frame indices: one frame [[0], [1], ...] or a window of frames;
- ``forward(batch)``: a batch of units [B, k, 3, S, S] -> features [B, width] (float32);
- ``extract(clips)`` / ``extract_prepared(prepared)``: many clips in, one array per clip out, in the extractor's
  ``storage_dtype`` (float16; smplx623's float32).
  Units of all clips are packed into model batches of ``batch_size`` and unpacked per clip, so short and
  long clips share forwards; a CUDA out-of-memory halves the batch and retries.

``expected_rows(num_frames, settings)`` is the array length rule ``signfeat verify`` checks (one row per frame
by default). Extractors with ``accepts_params`` also read motion-parameter files (``extract_files``, manifest
rows with source_kind smplx); for the others such a clip is a ``needs_video`` failure.

``metadata()`` is what every sample's JSON records about the stream, including ``weights`` ("pretrained"
or "random") so random features can never pass for real ones, and ``settings_hash``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.errors import CheckpointError, ClipError, SignfeatError

log = logging.getLogger(__name__)
REGISTRY: dict[str, type["Extractor"]] = {}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RANDOM_WEIGHTS_SEED = 0  # random_weights / tiny models are initialised from this seed (build_extractor)


def register(name: str):
    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


@dataclass
class ExtractorConfig:
    name: str
    model: str | None = None  # HF id or local folder; for backend=open_clip a pretrained tag or a checkpoint file
    revision: str | None = None  # HF revision (branch, tag or commit)
    backend: str = "hf"  # clip_s2 only: hf | open_clip
    arch: str | None = None  # OpenCLIP architecture (default ViT-L-14)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # compute dtype: auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16 | fp16
    batch_size: int | None = None  # model inputs per forward (frames, or windows for videomae); None: per-model default
    random_weights: bool = False  # build the architecture untrained (no download); recorded as weights=random
    tiny: bool = False  # a small random model of the same architecture, for tests and the CPU demo
    compile: bool = False  # torch.compile the forward (GPU throughput; the first batches pay the compile)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in REGISTRY:
            raise SignfeatError(f"unknown extractor {self.name!r}; registered: {', '.join(sorted(REGISTRY))}")
        # A YAML string such as "false" is truthy: `random_weights: "false"` would silently give random features.
        for key in ("random_weights", "tiny", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise SignfeatError(f"{self.name}: {key} must be true or false, got {getattr(self, key)!r}")
        for key in ("model", "revision", "arch"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise SignfeatError(f"{self.name}: {key} must be a non-empty string or null, got {value!r}")
        if self.model is not None and self.model.startswith("~"):  # a YAML `model: ~/models/x` (no shell expands it)
            self.model = os.path.expanduser(self.model)
        # isinstance first: a YAML list or mapping is unhashable (`in` raised a TypeError traceback)
        if not isinstance(self.backend, str) or self.backend not in ("hf", "open_clip"):  # checked here, not when the model loads on an actor
            raise SignfeatError(f"{self.name}: backend must be hf or open_clip, got {self.backend!r}")
        if not isinstance(self.dtype, str) or (self.dtype != "auto" and self.dtype not in DTYPES):
            raise SignfeatError(f"{self.name}: dtype must be auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise SignfeatError(f"{self.name}: device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise SignfeatError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        # settings that would be ignored are refused: a user who wrote them expects them to matter
        if self.name != "clip_s2" and (self.backend != "hf" or self.arch is not None):
            raise SignfeatError(f"{self.name}: backend and arch choose clip_s2's OpenCLIP model; {self.name} has one loader (drop them)")
        if self.name == "clip_s2" and self.backend == "hf" and self.arch is not None:
            # the model was then loaded as a Hugging Face folder: "not a valid JSON file ... must exist on every node"
            raise SignfeatError(f"{self.name}: arch {self.arch!r} names an OpenCLIP architecture, which backend hf (the default) does not "
                                "take: add backend: open_clip, or drop arch")
        if self.tiny and (self.model is not None or self.revision is not None or self.arch is not None):
            raise SignfeatError(f"{self.name}: tiny builds a small random model from a config, so model/revision/arch would be ignored (drop them, or drop tiny)")
        if self.random_weights and not self.tiny and (self.model is not None or self.revision is not None):
            raise SignfeatError(f"{self.name}: random_weights builds the published architecture untrained, so model/revision "
                                "would be ignored (drop them, or drop random_weights to load that checkpoint)")
        if self.backend == "open_clip" and self.revision is not None:  # it was recorded (and hashed), never loaded
            raise SignfeatError(f"{self.name}: revision names a Hugging Face revision, which backend open_clip does not take (its "
                                "pretrained tags, checkpoint files and hf-hub: ids load as they are); drop revision")
        if self.revision is not None and self.model is not None and _is_local_folder(self.model):
            raise SignfeatError(f"{self.name}: revision {self.revision!r} names a Hub revision, but model {self.model!r} is a local "
                                "folder, which has none (drop revision)")
        if self.tiny:
            self.random_weights = True  # a tiny model has no pretrained weights
        if not isinstance(self.settings, dict):
            raise SignfeatError(f"settings of {self.name} must be a mapping, got {self.settings!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExtractorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SignfeatError(f"unknown extractor config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def _is_local_folder(model: str) -> bool:
    return os.path.isdir(os.path.expanduser(model))


def local_checkpoint(config: "ExtractorConfig") -> str | None:
    """The local folder or file an extractor config loads its weights from (``model``, or an OpenCLIP
    ``arch: local-dir:DIR``), or None for a Hub id, a pretrained tag or random weights. OpenCLIP reads a local
    file only (a folder named like a tag, ./openai, is not what it loads); transformers a folder."""
    if config.random_weights:
        return None
    if config.arch and config.arch.startswith("local-dir:"):
        path = config.arch[len("local-dir:"):]
        return path if os.path.isdir(path) else None
    if config.model is None:
        return None
    if config.backend == "open_clip":
        return config.model if os.path.isfile(config.model) else None
    return config.model if os.path.isdir(config.model) else None


COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def resolve_hub_commit(model_id: str, revision: str | None) -> str | None:
    """The commit a Hugging Face Hub id's ``revision`` (a branch or tag; None: the default branch) is now: asked of
    the Hub, or offline (HF_HUB_OFFLINE=1) read from the local cache's record of that revision. A commit is
    returned as it is. None for a local folder, or when it cannot be told (an unknown id, no network and not
    cached): loading the model then says why, in one line, before Ray starts."""
    if revision is not None and COMMIT_SHA.fullmatch(revision):
        return revision
    if model_id.startswith(("/", "./", "../", "~")) or _is_local_folder(model_id):
        return None
    from huggingface_hub import hf_hub_download

    try:  # the file every transformers checkpoint has; its cached path is .../snapshots/<commit>/config.json
        commit = Path(hf_hub_download(model_id, "config.json", revision=revision)).parent.name
    except Exception as exc:  # noqa: BLE001  (the Hub client's errors have no common base class but Exception)
        log.debug("cannot resolve %s at revision %s to a commit: %s", model_id, revision, exc)
        commit = _cached_ref(model_id, revision)
    return commit if commit and COMMIT_SHA.fullmatch(commit) else None


def _cached_ref(model_id: str, revision: str | None) -> str | None:
    """The commit the local cache's refs/REVISION names, read as transformers reads it (a file written by hand may end
    in a line break, which the Hub client's own lookup does not take), when that commit's snapshot is there."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + model_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / (revision or "main")).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return commit if (repo / "snapshots" / commit).is_dir() else None


def check_model_exists(extractor: str, model_id: str) -> None:
    """A path that does not exist is said as such: transformers took "/data/modls/clip" for a Hub repo id
    ("Repo id must be in the form 'repo_name'...")."""
    if model_id.startswith(("/", "./", "../", "~")) and not os.path.exists(model_id):
        raise SignfeatError(f"{extractor}: model {model_id!r}: no such folder or file")


def model_files_fingerprint(path: str) -> str:
    """What a local checkpoint holds: every file's name and content (blake2b over all of it: a LoRA merged into
    the attention weights changes only the middle of a weights file; ~1 s per GB, once per model load). Where the
    folder lies does not count, so one folder spelt ``dino``, ``dino/`` or by its absolute path is one model, and
    a folder whose weights or processor config changed is another (a resumed job mixed the two in one output).
    Links are followed (a Hugging Face cache snapshot); a broken one, which loading never reads, is left out."""
    h = hashlib.blake2b(digest_size=8)
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    else:
        files, seen = [], set()
        for folder, subfolders, names in os.walk(path, followlinks=True):
            if os.path.realpath(folder) in seen:  # a link back up the tree: walked once
                subfolders[:] = []
                continue
            seen.add(os.path.realpath(folder))
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # .cache/, .git/
            files += [(os.path.relpath(os.path.join(folder, n), path), os.path.join(folder, n)) for n in sorted(names) if not n.startswith(".")]
    for name, full in files:
        if not os.path.isfile(full):  # a broken link
            continue
        h.update(f"{name}\0{os.path.getsize(full)}\0".encode())
        with open(full, "rb") as f:
            while block := f.read(8 * 2**20):
                h.update(block)
    return h.hexdigest()


def without_location(record: dict[str, Any], model_dir: str = "drop") -> dict[str, Any]:
    """A stream's record (``model``, ``arch``, ``settings``) as a local checkpoint counts: by what it holds
    (``model_files``), not where it lies, so the path is left out: ``model`` None, an OpenCLIP ``local-dir:DIR``
    arch as ``local-dir:``, and smplx623's ``model_dir`` setting dropped (``model_dir="none"``: kept as None,
    as the job config's hash has always spelt it). The sample JSON's settings_hash, the job's config hash and
    the trainer's check that shards hold one extraction all apply it."""
    out = {**record, "model": None}
    if str(out.get("arch") or "").startswith("local-dir:"):
        out["arch"] = "local-dir:"
    settings = out.get("settings")
    if isinstance(settings, dict) and "model_dir" in settings:
        out["settings"] = {k: v for k, v in settings.items() if k != "model_dir"} if model_dir == "drop" else {**settings, "model_dir": None}
    return out


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_local_weights(extractor: str, folder: str) -> None:
    """A save_pretrained folder holds its weights (one file, or an index and its shards) and its safetensors
    files are whole: their headers are read, not the weights (an interrupted copy cuts a file short)."""
    from safetensors import SafetensorError, safe_open

    present = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise SignfeatError(f"{extractor}: {folder} holds no weights file ({' or '.join(WEIGHT_FILES[::2])}, or a sharded one's index)")
    files = []
    for name in present:
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(Path(folder, name).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SignfeatError(f"{extractor}: {os.path.join(folder, name)} is not a weights index ({type(exc).__name__}: {exc})") from None
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise SignfeatError(f"{extractor}: {folder} lacks {len(missing)} weights file(s) its {name} lists (e.g. {missing[0]})")
            files += [s for s in shards if s.endswith((".safetensors", ".bin"))]
        else:
            files.append(name)
    for name in files:
        path = os.path.join(folder, name)
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, framework="pt"):
                    pass
            else:
                _check_torch_zip(path)
        except (SafetensorError, OSError, zipfile.BadZipFile) as exc:
            raise SignfeatError(f"{extractor}: {path} is damaged or cut short ({type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None


def _check_torch_zip(path: str) -> None:
    """A ``torch.save`` file (pytorch_model.bin) is a zip archive whose directory is at its end: a copy cut short has
    none. Only the directory is read. A file of torch's legacy format (before 1.6: a pickle) is left to loading."""
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":  # a pickle's protocol opcode
            return
    with zipfile.ZipFile(path):  # BadZipFile for a cut or empty file
        pass


def load_config(extractor: str, config_cls, model_id: str, revision: str | None):
    """A checkpoint's config alone (checks that must come before the model is built), loading errors in one line."""
    check_model_exists(extractor, model_id)
    try:
        return config_cls.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as exc:
        at = f" at revision {revision!r}" if revision else ""  # a cache that holds the model but not that revision said only "not cached"
        raise SignfeatError(f"{extractor}: cannot read the config of {model_id!r}{at} ({type(exc).__name__}: {str(exc).strip().splitlines()[0]})") from None


def load_pretrained(extractor: str, model_cls, model_id: str, revision: str | None, **kwargs):
    """``model_cls.from_pretrained`` that refuses a checkpoint lacking any weight the model needs: transformers
    only warns and initialises those at random (unseeded: each actor a different network), so another family's
    checkpoint (a CLIP folder given to dinov2) ran and was recorded as pretrained. Loading errors are one line."""
    from safetensors import SafetensorError

    check_model_exists(extractor, model_id)
    try:
        model, info = model_cls.from_pretrained(model_id, revision=revision, output_loading_info=True, **kwargs)
    # no such folder / id, another model type, size mismatches; a weights file cut short (an interrupted copy)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        at = f" at revision {revision!r}" if revision else ""
        raise SignfeatError(f"{extractor}: cannot load {model_id!r}{at} as {model_cls.__name__} ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0]})") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [k if isinstance(k, str) else k[0] for k in (info.get("mismatched_keys") or [])]
    if missing or mismatched:
        names = missing or mismatched
        raise SignfeatError(f"{extractor}: {model_id!r} is not a {model_cls.__name__} checkpoint: {len(missing)} weights missing and "
                            f"{len(mismatched)} of another shape (e.g. {', '.join(names[:3])}); transformers would initialise them at random")
    return model


def check_input_size(extractor: str, model_size: int, crop: int, model_id: str) -> None:
    """A checkpoint whose processor crops another size than its model takes failed on every clip (each one a
    failures row) instead of once, here."""
    if int(model_size) != int(crop):
        raise SignfeatError(f"{extractor}: {model_id!r} takes {model_size} px images, but its image processor crops {crop} px; "
                            "fix the checkpoint's preprocessor_config.json (crop_size) or its config (image_size)")


def parse_settings(settings_cls, given: dict[str, Any], extractor: str):
    """Build a settings dataclass from a dict, refusing unknown keys and coercing ``--set`` strings."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise SignfeatError(f"unknown {extractor} settings {unknown}; known: {sorted(fields)}")
    defaults = settings_cls()
    values = {}
    for key, value in given.items():
        default = getattr(defaults, key)
        try:
            values[key] = _coerce(value, default)
        except (TypeError, ValueError):
            raise SignfeatError(f"{extractor} setting {key}={value!r}: expected something like {default!r}") from None
    try:
        return settings_cls(**values)
    except (TypeError, ValueError) as exc:
        raise SignfeatError(f"{extractor} settings: {exc}") from None


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        # each item as a scalar setting of the default's kind: `scales: [224.5]` or `[true]` is refused, not truncated
        return tuple(_coerce(v, default[0]) for v in items) if default else tuple(str(v) for v in items)
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool) and value not in (0, 1):  # bool(2) or bool([]) would hide a typo
            raise ValueError(value)
        return bool(value)
    if isinstance(default, (int, float)) and isinstance(value, bool):  # int(True) == 1: YAML's `layer: yes`
        raise ValueError(value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(default, float):
        number = float(value)
        if not math.isfinite(number):  # nan / inf pass every range check a setting makes
            raise ValueError(value)
        return number
    return str(value) if default is not None or isinstance(value, str) else value


def hf_processor_class(module: str, name: str, resize: str):
    """The model's Hugging Face image processor class: the PIL one (``NamePil``, transformers >= 5; the
    processor of transformers 4.x, which the papers ran) or the torchvision-backed default."""
    import importlib

    mod = importlib.import_module(f"transformers.models.{module}")
    if resize == "pil":
        cls = getattr(mod, f"{name}Pil", None)
        if cls is None:
            raise SignfeatError(f"transformers {importlib.import_module('transformers').__version__} has no {name}Pil; use resize=torch or transformers >= 5.0")
        return cls
    return getattr(mod, name)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SignfeatError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return dev


class Extractor:
    name: ClassVar[str]
    default_model: ClassVar[str]
    default_batch_size: ClassVar[int] = 32
    storage_dtype: ClassVar[np.dtype] = np.dtype(np.float16)
    Settings: ClassVar[type]
    # Whether the extractor reads motion-parameter files itself (manifest rows with source_kind "smplx");
    # a video-only extractor gets such a clip failed as ``needs_video`` (pipeline/stages.py).
    accepts_params: ClassVar[bool] = False
    # config.json model types the Hugging Face loader takes; checked on the driver before Ray starts (check_loadable)
    hf_model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ExtractorConfig):
        self.config = config
        self.settings = parse_settings(self.Settings, config.settings, self.name)
        self.device = resolve_device(config.device)
        dtype = config.dtype if config.dtype != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.compute_dtype = DTYPES[dtype]
        self.batch_size = config.batch_size or self.default_batch_size
        self.model_id = config.model or self.default_model
        self.width: int = 0  # set by the subclass once its model is built
        self.model_info: dict[str, Any] = {}  # what the subclass loaded (class, config summary)

    # -------------------------------------------------------------- what subclasses implement

    @property
    def stream(self) -> str:
        return self.name

    def prepare(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> uint8 [T, 3, S, S], resized and cropped as the model's processor does;
        ``transform.normalize`` finishes it on the device."""
        return self.transform.resize_crop(frames)

    @classmethod
    def make_transform(cls, config: ExtractorConfig, settings) -> "FrameTransform":
        """The model's preprocessing, built without loading weights (the CPU stage of a job needs only this)."""
        raise NotImplementedError

    @classmethod
    def hf_transform(cls, config: ExtractorConfig, settings, module: str, processor: str, random_defaults: dict) -> "FrameTransform":
        """The transform of a Hugging Face image processor: the model's own (from its id or folder), or,
        for random weights, one built from ``random_defaults`` (the published model's processor config)."""
        from extractors.preprocess import FrameTransform

        processor_cls = hf_processor_class(module, processor, settings.resize)
        model_id = config.model or cls.default_model
        if not config.random_weights:
            check_model_exists(cls.name, model_id)
        try:
            if config.random_weights:
                proc = processor_cls(**random_defaults)
            else:
                proc = processor_cls.from_pretrained(model_id, revision=config.revision)
            return FrameTransform.from_hf_processor(proc, backend=settings.resize)
        except (OSError, ValueError) as exc:  # no preprocessor_config.json, an unknown id, settings signfeat cannot follow
            raise SignfeatError(f"{cls.name}: the image processor of {model_id!r}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None

    @classmethod
    def transform_for(cls, config: ExtractorConfig) -> "FrameTransform":
        return cls.make_transform(config, parse_settings(cls.Settings, config.settings, cls.name))

    @classmethod
    def check_loadable(cls, config: ExtractorConfig) -> None:
        """Before Ray starts (the driver's check in ``pipeline.stages.stream_geometries``): what the transform
        does not already read of the model. For a Hugging Face checkpoint: its model type (another family's
        folder), an out-of-range ``layer`` from its config, and for a local folder a weights file that is there and
        whole. Each failed in every actor after Ray had started, as pages of ActorDiedError tracebacks. Reading the
        config also finds a model that is not there (offline, uncached, mistyped) where the transform reads no image
        processor (dinov2 at 336 px)."""
        if config.random_weights or config.backend != "hf" or not cls.hf_model_types:
            return
        from transformers import AutoConfig

        model_id = config.model or cls.default_model
        hf = load_config(cls.name, AutoConfig, model_id, config.revision)
        try:
            if hf.model_type not in cls.hf_model_types:
                raise SignfeatError(f"{cls.name}: {model_id!r} is a {hf.model_type!r} model, not one {cls.name} loads (model types {list(cls.hf_model_types)})")
            vision = getattr(hf, "vision_config", None) or hf  # a whole CLIP model's config holds its vision tower's
            settings = parse_settings(cls.Settings, config.settings, cls.name)
            if hasattr(settings, "layer") and isinstance(getattr(vision, "num_hidden_layers", None), int):
                _check_layer(cls.name, settings.layer, vision.num_hidden_layers)
            if os.path.isdir(os.path.expanduser(model_id)):
                check_local_weights(cls.name, os.path.expanduser(model_id))
        except SignfeatError as exc:  # the checkpoint is there: not a question of where it lies (stream_geometries)
            raise CheckpointError(str(exc)) from None

    @classmethod
    def hub_commit(cls, config: ExtractorConfig) -> str | None:
        """The commit this config's Hugging Face Hub id resolves to now (``resolve_hub_commit``); None for random weights,
        a local folder, OpenCLIP, and extractors that load no Hugging Face checkpoint."""
        if config.random_weights or config.backend != "hf" or not cls.hf_model_types:
            return None
        return resolve_hub_commit(config.model or cls.default_model, config.revision)

    def units(self, num_frames: int) -> np.ndarray:
        """int64 [N, k]: the frame indices of each model input (default: one frame each)."""
        return np.arange(num_frames, dtype=np.int64)[:, None]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def expected_rows(cls, num_frames: int, settings: dict[str, Any]) -> int | None:
        """Rows of this stream's array for a clip of ``num_frames`` frames (the sample JSON's ``num_frames``),
        from the settings recorded in the sample JSON; None when the length cannot be told from that alone.
        ``signfeat verify`` checks every array against it. Default: one row per frame (``units``)."""
        return num_frames

    def extract_files(self, paths: list[str], fps: list[float | None]) -> list[tuple[np.ndarray, int, float | None]]:
        """Motion-parameter files (``accepts_params`` extractors only) -> per clip (features, frames, fps), the
        frames and fps being those the features are aligned to (after any resampling)."""
        raise ClipError("needs_video", f"{self.name} needs video frames; {paths[0] if paths else 'this clip'} is a motion-parameters file (source_kind=smplx)")

    @classmethod
    def layers_from_config(cls, config: ExtractorConfig) -> int | None:
        """The model's depth when the config alone tells it (a tiny or random-weights model of a fixed
        architecture), else None (a checkpoint's depth is known once it loads)."""
        return None

    @classmethod
    def check_config(cls, config: ExtractorConfig, settings) -> None:
        """Checks that need no weights, run at job config validation (before Ray starts): an out-of-range
        ``layer`` of a model whose depth the config tells is one line there, not a Ray traceback later."""
        layers = cls.layers_from_config(config)
        if layers is not None and hasattr(settings, "layer"):
            _check_layer(cls.name, settings.layer, layers)

    @classmethod
    def check_local_files(cls, config: ExtractorConfig, settings, rows: list[dict[str, Any]] = ()) -> None:
        """For a job on a local Ray instance: files the settings name must be on this machine (a cluster's workers
        may hold files the driver lacks, so this runs only locally); ``rows``, the job's ok manifest rows, for a
        look at a first clip. Nothing to check by default."""

    def _check_layer(self) -> None:
        """``settings.layer`` indexes the hidden states (embeddings + one per block): checked once the model's
        depth is known, so an out-of-range layer is one line when the extractor is built, not an IndexError
        on every clip."""
        _check_layer(self.name, self.settings.layer, self.model_info["layers"])

    def describe_preprocessing(self) -> dict[str, Any]:
        return self.transform.describe()

    # -------------------------------------------------------------- shared machinery

    def _place_model(self) -> None:
        """Frozen and on its device; on a GPU in the compute dtype itself (bf16/fp16 weights run faster
        than fp32 weights under autocast, and nothing is trained), on a CPU in float32 (bf16 runs under
        autocast). Always cast: transformers keeps the dtype a checkpoint was saved in, and a float16 mirror
        of a model ran in float16 (or failed: VideoMAE's float input met half biases) while recorded as fp32."""
        self.model.eval().requires_grad_(False)
        self.model.to(self.device)
        self.model.to(self.compute_dtype if self.device.type == "cuda" else torch.float32)
        if self.config.compile:
            self.forward = torch.compile(self.forward, dynamic=False)

    def metadata(self) -> dict[str, Any]:
        """What each sample's JSON records about this stream."""
        settings = dataclasses.asdict(self.settings)
        identity = {
            "extractor": self.name,
            "model": self.model_id,
            "revision": self.config.revision,
            "backend": self.config.backend,
            "arch": self.config.arch,
            "weights": "random" if self.config.random_weights else "pretrained",
            "tiny": self.config.tiny,
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "settings": settings,
            "preprocessing": self.describe_preprocessing(),
        }
        hashed = identity
        if self.model_files is not None:  # a local checkpoint: what it holds, not where it lies
            identity["model_files"] = self.model_files
            hashed = without_location(identity)
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {**identity, "stream": self.stream, "width": self.width, "dtype": self.storage_dtype.name, "settings_hash": digest, "model_info": self.model_info}

    @classmethod
    def local_files(cls, config: "ExtractorConfig", settings) -> str | None:
        """The local checkpoint this config loads (``local_checkpoint``); smplx623 names its model file in a setting."""
        return local_checkpoint(config)

    @functools.cached_property
    def model_files(self) -> str | None:
        """``model_files_fingerprint`` of a local checkpoint (None for a Hub id, a tag or random weights)."""
        path = local_checkpoint(self.config)
        return model_files_fingerprint(path) if path else None

    @property
    def settings_hash(self) -> str:
        return self.metadata()["settings_hash"]

    @torch.inference_mode()
    def extract(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 frames of several clips -> one float16 [N_i, width] array per clip."""
        refuse_empty_clips(self.name, [len(f) for f in clips])
        return self.extract_prepared([self.prepare(f) for f in clips])

    @torch.inference_mode()
    def extract_prepared(self, prepared: list[torch.Tensor]) -> list[np.ndarray]:
        """Prepared uint8 clips -> float16 arrays. The frames of all clips go to the device once (uint8,
        a quarter of float32) and stay uint8 there; each model batch is one gather of unit indices, normalised
        on its own, so windows that share frames do not copy them and batches run across clip boundaries."""
        if not prepared:
            return []
        counts = [int(p.shape[0]) for p in prepared]
        refuse_empty_clips(self.name, counts)
        units = [self.units(c) for c in counts]
        offsets = np.cumsum([0] + counts[:-1])
        frames = torch.cat(prepared)
        if self.device.type == "cuda":
            frames = frames.pin_memory()
        # uint8 on the device, normalised one model batch at a time: a float32 copy of a whole call's frames
        # is 4x their bytes, and its arithmetic's temporaries as much again (4 clips of 1200 frames: ~9 GB)
        frames = frames.to(self.device, non_blocking=True)
        index = torch.from_numpy(np.concatenate([u + off for u, off in zip(units, offsets)])).to(self.device)
        out = torch.empty(len(index), self.width, dtype=torch.float32, device=self.device)
        start = 0
        while start < len(index):
            stop = min(start + self.batch_size, len(index))
            try:
                batch = self.transform.normalize(frames[index[start:stop]], self.input_dtype)
                out[start:stop] = self._forward_on_device(batch)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("%s: CUDA out of memory, batch size halved to %d", self.name, self.batch_size)
                torch.cuda.empty_cache()
                continue
            start = stop
        stored = out.to(torch.float16 if self.storage_dtype == np.float16 else torch.float32).cpu().numpy()
        return np.split(stored, np.cumsum([len(u) for u in units])[:-1])

    @property
    def input_dtype(self) -> torch.dtype:
        return self.compute_dtype if self.device.type == "cuda" else torch.float32

    def _forward_on_device(self, batch: torch.Tensor) -> torch.Tensor:
        # On a GPU the weights and inputs already are in the compute dtype (_place_model, input_dtype).
        if self.device.type != "cuda" and self.compute_dtype != torch.float32:  # bf16 on CPU: autocast
            with torch.autocast("cpu", dtype=self.compute_dtype):
                return self.forward(batch)
        return self.forward(batch)


def refuse_empty_clips(name: str, counts: list[int]) -> None:
    # decoding never returns an empty clip (ClipError no_frames); an API caller might, and a clip's rows
    # cannot be told apart from its neighbours' without frames
    if 0 in counts:
        raise ValueError(f"{name}: clip {counts.index(0)} of {len(counts)} has no frames")


def _check_layer(name: str, layer: int, layers: int) -> None:
    if not -(layers + 1) <= layer <= layers:
        raise SignfeatError(f"{name} setting layer={layer}: the model has {layers} layers "
                            f"(hidden states 0..{layers}, or -1..-{layers + 1} from the end)")


def build_extractor(config: ExtractorConfig | dict[str, Any]) -> Extractor:
    import extractors  # noqa: F401  (registers the built-in extractors)

    if isinstance(config, dict):
        config = ExtractorConfig.from_dict(config)
    if not config.random_weights:
        return REGISTRY[config.name](config)
    # Random weights come from a fixed seed, so every actor of a stream (and a resumed job, and the
    # ``features`` command) builds the same model: otherwise shards with one settings_hash would hold
    # features of different random networks. The caller's RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return REGISTRY[config.name](config)
