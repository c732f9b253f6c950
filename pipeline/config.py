"""The extraction job's config: one YAML file, validated into typed dataclasses before anything starts.

    extractors:                 # one entry per stream; every registered extractor is treated the same way
      - name: clip_s2
        model: openai/clip-vit-large-patch14   # or a local folder; tiny / random_weights for tests
        settings: {scales: [224, 448]}
        actors: 1               # actor pool size (each keeps its model loaded)
        num_gpus: 1             # per actor; 0 on a machine without GPUs
        num_cpus: 1
        resources: {}           # custom Ray resources per actor, e.g. {extract_node: 1} to pin actors to nodes
        accelerator_type: null  # e.g. L40S or H100: only nodes with that GPU type (Ray's accelerator labels)
    decode: {backend: decord, target_fps: null, max_frames: null, frame_limit: 20000, max_clip_mib: 4096}
    shards: {samples: 256, max_frames: null, prefix: shard}
    clips_per_call: 8           # clips handed to an extractor actor at once (its batches cross clips)
    decode_retries: 2           # a decode task whose worker dies (native crash) is retried this often, then `lost`
    extract_retries: 3          # an extractor call whose actor dies (killed, out of memory) likewise
    worker_env: {MALLOC_ARENA_MAX: "1", ...}   # env vars of the job's Ray workers; default DEFAULT_WORKER_ENV
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests.schema import MAX_NAME_BYTES
from pipeline.decode import BACKENDS, DecodeOptions
from pipeline.errors import SignfeatError

# where, how many and how fast (actors, resources, batch size, compile): these do not change the features, so they
# stay out of the output hash
_UNHASHED_KEYS = {"actors", "num_gpus", "num_cpus", "memory_gb", "resources", "accelerator_type", "batch_size", "compile"}
_EXTRACTOR_CONFIG_KEYS = {"name", "model", "revision", "backend", "arch", "dtype", "batch_size", "random_weights", "tiny", "compile", "settings"}


# Environment of the job's Ray workers (decode tasks and extractor actors) unless the config gives `worker_env`.
# glibc's malloc hands large freed blocks back to the kernel (mmap'd chunks, heap trimming) and,
# in a thread other than the main one (an actor runs its calls in one), allocates from per-thread arenas
# that do the same; a forward pass then refaults its activations page by page on every call. Measured on
# the 2-core dev VM (tiny clip_s2, 49 clips, one thread, the call in a non-main thread as in an actor):
# 46.5 s wall with 12.9 s of it in the kernel, 31.3 s and 0.1 s with these settings (README, "Benchmarks").
# The heap then keeps its high-water mark (about one batch's activations) instead of returning it. Other C
# libraries ignore these variables.
DEFAULT_WORKER_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


@dataclass
class StreamConfig:
    extractor: dict[str, Any]  # ExtractorConfig fields (device is chosen per actor: cuda when num_gpus > 0)
    actors: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    accelerator_type: str | None = None
    # Ray's `memory` resource of each actor (GiB): Ray then places no more actors on a node than its memory
    # holds; without it, actors that each fit alone can be packed until the memory monitor kills one
    memory_gb: float | None = None

    @property
    def name(self) -> str:
        return self.extractor["name"]


@dataclass
class ShardConfig:
    samples: int = 256  # at most this many samples per shard
    max_frames: int | None = None  # and at most this many frames (feature bytes grow with frames)
    prefix: str = "shard"


@dataclass
class JobConfig:
    streams: list[StreamConfig]
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    shards: ShardConfig = field(default_factory=ShardConfig)
    clips_per_call: int = 8
    decode_retries: int = 2
    # Ray Data restarts a dead actor and retries its call without limit by default: a clip that kills its
    # actor every time (out of memory) would stall the job forever. Past this many retries the call's clips
    # are recorded as `lost` and the job goes on.
    extract_retries: int = 3
    worker_env: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_WORKER_ENV))

    def to_dict(self) -> dict[str, Any]:
        return {
            "extractors": [{**s.extractor, "actors": s.actors, "num_gpus": s.num_gpus, "num_cpus": s.num_cpus, "resources": s.resources,
                            "accelerator_type": s.accelerator_type, "memory_gb": s.memory_gb} for s in self.streams],
            "decode": dataclasses.asdict(self.decode),
            "shards": dataclasses.asdict(self.shards),
            "clips_per_call": self.clips_per_call,
            "decode_retries": self.decode_retries,
            "extract_retries": self.extract_retries,
            "worker_env": self.worker_env,
        }

    def output_hash(self, legacy: bool = False) -> str:
        """Hash of what determines the output (not of resources such as actor counts or GPUs). Each extractor
        is hashed as it is built (defaults filled in), so configs that mean the same hash the same: a resume
        with `settings: {}`, `dtype: auto` or an explicit default setting is not refused as another job.
        ``legacy``: as signfeat hashed before local checkpoints were fingerprinted (to tell an older output)."""
        d = self.to_dict()
        d["extractors"] = [_built_extractor(s.extractor, on_gpu=s.num_gpus > 0, legacy=legacy) for s in self.streams]
        d.pop("clips_per_call")
        d.pop("decode_retries")
        d.pop("extract_retries")
        d.pop("worker_env")  # how fast, not what
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _built_extractor(entry: dict[str, Any], on_gpu: bool, legacy: bool = False) -> dict[str, Any]:
    """An extractor entry as the job builds it: every ExtractorConfig field and setting with its default filled
    in (`tiny` implies `random_weights`, `dtype: auto` is the dtype the actor's device gets: bf16 on a GPU, fp32
    on a CPU, so the same config resumed on the other kind of machine is another job), less what only says
    where or how fast it runs."""
    from extractors import ExtractorConfig
    from extractors.base import REGISTRY, model_files_fingerprint, parse_settings, without_location

    cfg = ExtractorConfig.from_dict({**entry, "device": "cpu"})  # the device is chosen per actor
    built = dataclasses.asdict(cfg)
    settings = parse_settings(REGISTRY[cfg.name].Settings, cfg.settings, cfg.name)
    built["settings"] = dataclasses.asdict(settings)
    if built["dtype"] == "auto":  # as Extractor.__init__ resolves it (extractors/base.py)
        built["dtype"] = "bf16" if on_gpu else "fp32"
    local = None if legacy else REGISTRY[cfg.name].local_files(cfg, settings)
    if local:  # what the checkpoint holds, not where: its weights or processor config replaced is another job
        built = {**without_location(built, model_dir="none"), "model_files": model_files_fingerprint(local)}
    return {k: v for k, v in built.items() if k not in _UNHASHED_KEYS and k != "device"}


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise SignfeatError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SignfeatError(f"{where} must be a positive integer, got {value!r}")
    return value


def _nonneg_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:  # 1.5 retries is not silently 1
        raise SignfeatError(f"{where} must be an integer >= 0, got {value!r}")
    return value


def _number(where: str, value: Any, rule: str) -> float:
    """A YAML number, finite: NaN passes every comparison check (`nan < 0` is False) and .inf is > 0, and
    either breaks Ray's scheduling or every clip's decoding later, with a traceback or a job of failures."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SignfeatError(f"{where} must be a number {rule}, got {value!r}")
    if not math.isfinite(value):
        raise SignfeatError(f"{where} must be a finite number {rule}, got {value!r}")
    return float(value)


def _nonneg_number(where: str, value: Any) -> float:
    if _number(where, value, ">= 0") < 0:
        raise SignfeatError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _positive_number(where: str, value: Any) -> float:
    if not _number(where, value, "> 0") > 0:
        raise SignfeatError(f"{where} must be a number > 0, got {value!r}")
    return float(value)


def _mapping(where: str, value: Any) -> dict:
    """A section that may be left out or empty; anything but a mapping is refused (a string would otherwise be
    reported as a list of its letters as unknown keys)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SignfeatError(f"{where} must be a mapping, got {value!r}")
    return value


def _resources(where: str, value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise SignfeatError(f"{where} must be a mapping of Ray resource name -> amount, got {value!r}")
    for name in value:
        if name in ("CPU", "GPU", "memory") or not isinstance(name, str) or not name:
            raise SignfeatError(f"{where}: {name!r} is not a custom resource name (use num_cpus / num_gpus for CPU and GPU)")
    return {name: _nonneg_number(f"{where}.{name}", amount) for name, amount in value.items()}


def _optional_str(where: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise SignfeatError(f"{where} must be a non-empty string or null, got {value!r}")
    return value


def _worker_env(where: str, value: Any) -> dict[str, str]:
    """Variable name -> value; numbers are written as they read (`MALLOC_ARENA_MAX: 1`), anything else is refused."""
    if not isinstance(value, dict):
        raise SignfeatError(f"{where} must be a mapping of environment variable -> value, got {value!r}")
    out = {}
    for name, v in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise SignfeatError(f"{where}: {name!r} is not an environment variable name")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or "\0" in str(v):
            raise SignfeatError(f"{where}.{name} must be a string or a number, got {v!r}")
        out[name] = str(v)
    return out


def parse_job_config(data: dict[str, Any], source: str = "config") -> JobConfig:
    if not isinstance(data, dict):
        raise SignfeatError(f"{source}: expected a mapping at the top level")
    _check_keys(source, data, {"extractors", "decode", "shards", "clips_per_call", "decode_retries", "extract_retries", "worker_env"})
    entries = data.get("extractors")
    if not isinstance(entries, list) or not entries:
        raise SignfeatError(f"{source}: 'extractors' must be a non-empty list")
    from extractors import ExtractorConfig  # importing the package registers every extractor
    from extractors.base import REGISTRY, parse_settings

    streams, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{source}: extractors[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise SignfeatError(f"{where} must be a mapping with a 'name'")
        _check_keys(where, entry, _EXTRACTOR_CONFIG_KEYS | _UNHASHED_KEYS)
        ext = {k: v for k, v in entry.items() if k in _EXTRACTOR_CONFIG_KEYS}
        try:
            cfg = ExtractorConfig.from_dict({**ext, "device": "cpu"})  # validates name, dtype, batch size
            settings = parse_settings(REGISTRY[cfg.name].Settings, cfg.settings, cfg.name)  # validates settings now, not on a GPU later
            REGISTRY[cfg.name].check_config(cfg, settings)  # what the config alone tells (a tiny model's layer count)
        except SignfeatError as exc:  # say which file and entry: a config may list several extractors
            raise SignfeatError(f"{where}: {exc}") from None
        if cfg.name in seen:
            raise SignfeatError(f"{where}: extractor {cfg.name!r} listed twice (one stream each)")
        seen.add(cfg.name)
        streams.append(StreamConfig(
            extractor=ext,
            actors=_positive_int(f"{where}.actors", entry.get("actors", 1)),
            num_gpus=_nonneg_number(f"{where}.num_gpus", entry.get("num_gpus", 0)),
            num_cpus=_nonneg_number(f"{where}.num_cpus", entry.get("num_cpus", 1)),
            resources=_resources(f"{where}.resources", _mapping(f"{where}.resources", entry.get("resources"))),
            accelerator_type=_optional_str(f"{where}.accelerator_type", entry.get("accelerator_type")),
            memory_gb=None if entry.get("memory_gb") is None else _positive_number(f"{where}.memory_gb", entry["memory_gb"]),
        ))
    decode_raw = _mapping(f"{source}: decode", data.get("decode"))
    _check_keys(f"{source}: decode", decode_raw, {f.name for f in dataclasses.fields(DecodeOptions)})
    if decode_raw.get("backend", "decord") not in BACKENDS:
        raise SignfeatError(f"{source}: decode.backend must be one of {BACKENDS}, got {decode_raw.get('backend')!r}")
    # types here, so that `max_frames: 2.5` or `target_fps: "25"` is named, not passed on or reported as a TypeError
    checks = {"max_frames": _positive_int, "frame_limit": _positive_int, "target_fps": _positive_number, "max_clip_mib": _positive_number,
              "frame_fps": _positive_number}
    nullable = {"max_frames", "target_fps"}  # null: no cap / the clip's own rate
    for key, check in checks.items():
        if key in decode_raw and not (decode_raw[key] is None and key in nullable):
            check(f"{source}: decode.{key}", decode_raw[key])
    decode_raw = dict(decode_raw)
    for key in ("target_fps", "max_clip_mib", "frame_fps"):  # 10 and 10.0 are one rate: the config hash must not tell them apart
        if decode_raw.get(key) is not None:
            decode_raw[key] = float(decode_raw[key])
    try:
        decode = DecodeOptions(**decode_raw)
    except (TypeError, ValueError) as exc:
        raise SignfeatError(f"{source}: decode: {exc}") from None
    for s in streams:
        # smplx623 resamples its motion to its own target_fps, and a sample's num_frames / fps are the stream's
        # time base: next to other streams (which read the decoded frames as they are) both must be one rate
        motion_fps = (s.extractor.get("settings") or {}).get("target_fps") if s.extractor.get("name") == "smplx623" else None
        if motion_fps and len(streams) > 1 and not (decode.target_fps and abs(float(decode.target_fps) - float(motion_fps)) < 1e-6):
            raise SignfeatError(f"{source}: {s.name} settings.target_fps {motion_fps} resamples the motion, but the other streams read the "
                                f"frames at decode.target_fps {decode.target_fps}; a sample has one frame rate: set decode.target_fps: "
                                f"{motion_fps} too, or run smplx623 in a job of its own")
        if s.extractor.get("name") == "smplx623" and decode.max_frames is not None:
            # max_frames thins a video clip evenly (4 fps of a 72-frame clip for 16): smplx623 fitted those and
            # interpolated them up to its target_fps, while the other streams kept the 16, and verify refused the shard
            raise SignfeatError(f"{source}: decode.max_frames {decode.max_frames} thins each video clip's frames, and {s.name} "
                                "resamples its motion to its own target_fps from them (the other streams keep the thinned "
                                "count): drop max_frames, and set decode.target_fps for fewer frames")
    shards_raw = _mapping(f"{source}: shards", data.get("shards"))
    _check_keys(f"{source}: shards", shards_raw, {f.name for f in dataclasses.fields(ShardConfig)})
    shards = ShardConfig(**shards_raw)
    _positive_int(f"{source}: shards.samples", shards.samples)
    if shards.max_frames is not None:
        _positive_int(f"{source}: shards.max_frames", shards.max_frames)
    if not isinstance(shards.prefix, str) or not shards.prefix or not all(c.isalnum() or c in "-_" for c in shards.prefix):
        raise SignfeatError(f"{source}: shards.prefix must be letters, digits, '-' or '_', got {shards.prefix!r}")
    if len(shards.prefix.encode()) > MAX_NAME_BYTES:  # its files' names passed the file system's limit at the job's end
        raise SignfeatError(f"{source}: shards.prefix is {len(shards.prefix.encode())} bytes long; at most {MAX_NAME_BYTES} "
                            "(the job's file names add to it, and a file system takes 255 bytes a name)")
    return JobConfig(
        streams=streams,
        decode=decode,
        shards=shards,
        clips_per_call=_positive_int(f"{source}: clips_per_call", data.get("clips_per_call", 8)),
        decode_retries=_nonneg_int(f"{source}: decode_retries", data.get("decode_retries", 2)),
        extract_retries=_nonneg_int(f"{source}: extract_retries", data.get("extract_retries", 3)),
        # `worker_env: {}` (or left empty) sets nothing; false, [] or 0 are refused, not read as {}
        worker_env=_worker_env(f"{source}: worker_env", _mapping(f"{source}: worker_env", data["worker_env"])) if "worker_env" in data else dict(DEFAULT_WORKER_ENV),
    )


def load_job_config(path: str | Path) -> JobConfig:
    from pipeline.yaml_file import load_yaml

    return parse_job_config(load_yaml(path, "extraction config"), str(path))
