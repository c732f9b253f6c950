"""The job's two kinds of stage for Ray Data.

decode_prepare (CPU tasks): decode a clip and run every stream's preprocessing (resize + crop to uint8).
  Streams whose preprocessing has the same geometry share one prepared array. A worker killed by a
  native decoder crash is retried by Ray; a clip that keeps killing it is recorded as ``lost``.
ExtractStream (GPU or CPU): one extractor with its model loaded once; runs the clips of a batch together.
  If a batch fails, its clips are retried one by one so only the bad clip fails.

SMPL-X parameter clips (``source_kind`` "smplx") are not decoded: decode_prepare passes them on with the
manifest's (probed) frame count and fps, and an extractor that reads parameters (``accepts_params``:
smplx623) reads the file in its actor and sets the frames and fps its features are aligned to (after its
own ``target_fps`` resampling; the job's decode options are video options). In a job with a video-only
stream such a clip fails as ``needs_video`` before any extractor runs, so it lands in failures, once.

Rows carry ``error_stage``/``error_class``/``error_message`` ("" when fine); a failed row flows on
untouched, so every clip reaches the writer and lands in a shard or in failures. Each stage also adds
``node_<stage>`` (Ray node id) and ``secs_<stage>`` (busy seconds) for job.json's per-stage accounting, and
``clipmeta_<stream>``: JSON a clip adds to its stream's record in the sample (smplx623 on video: the frames its
estimator saw no person or hand in).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
import warnings
from typing import Any

import numpy as np

from manifests.schema import PARAMS_KIND
from pipeline.errors import CheckpointError, ClipError, SignfeatError, printable

log = logging.getLogger(__name__)
ERROR_COLUMNS = ("error_stage", "error_class", "error_message")


def geometry_key(transform) -> str:
    t = transform
    return f"g{t.shortest_edge}_{t.crop}_{t.resample}_{t.backend}_{t.crop_rounding}_{int(t.square_first)}"


def pin_hub_commits(streams) -> tuple[list, dict[str, dict[str, Any]]]:
    """The streams with each Hugging Face Hub id's revision (a branch, a tag, or none: the default branch) replaced by
    the commit it is now, and per pinned stream {model, revision asked, commit}. The actors, the decode tasks'
    image processors, the samples' records and the config hash then name one immutable model: a tag moved
    between a cut-off run and its rerun made one output hold two models' features under one config hash."""
    import dataclasses

    from extractors import ExtractorConfig
    from extractors.base import REGISTRY, local_checkpoint

    pinned, pins = [], {}
    for s in streams:
        cfg = ExtractorConfig.from_dict({**s.extractor, "device": "cpu"})
        commit = REGISTRY[cfg.name].hub_commit(cfg)
        model = cfg.model or REGISTRY[cfg.name].default_model
        if commit is not None and commit != cfg.revision:
            s = dataclasses.replace(s, extractor={**s.extractor, "revision": commit})
            pins[s.name] = {"model": model, "revision": cfg.revision, "commit": commit}
        elif commit is None and REGISTRY[cfg.name].hf_model_types and not cfg.random_weights and local_checkpoint(cfg) is None:
            log.warning("%s: cannot tell which commit %s%s is; it is recorded as asked, and a rerun after it moves on the "
                        "Hub would mix two models' features", cfg.name, model, f" at revision {cfg.revision}" if cfg.revision else "")
        pinned.append(s)
    return pinned, pins


def stream_geometries(streams) -> dict[str, str]:
    """stream name -> prepared column name; streams with equal resize/crop geometry share one column."""
    from extractors import ExtractorConfig
    from extractors.base import REGISTRY, check_model_exists

    out = {}
    for s in streams:
        cfg = ExtractorConfig.from_dict({**s.extractor, "device": "cpu"})
        try:
            if cfg.model and not cfg.random_weights:  # also where the transform reads no processor (dinov2 at 336 px)
                check_model_exists(cfg.name, cfg.model)
            REGISTRY[cfg.name].check_loadable(cfg)
            out[s.name] = "prep_" + geometry_key(REGISTRY[cfg.name].transform_for(cfg))
        except CheckpointError as exc:  # there, but not loadable as asked: the advice below on where it lies would mislead
            raise SignfeatError(f"extractor {cfg.name}: {exc}") from None
        except (OSError, ValueError, SignfeatError) as exc:  # a missing folder, an unknown Hub id, no network, settings refused
            why = str(exc) if isinstance(exc, SignfeatError) else f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            raise SignfeatError(
                f"extractor {cfg.name}: cannot load the model or image processor of {cfg.model or REGISTRY[cfg.name].default_model!r} "
                f"({why}). The driver and the decode tasks resize frames with its settings: a local model folder must exist "
                "on every node, driver included; a Hub id must be cached or downloadable there"
            ) from None
    return out


@functools.lru_cache(maxsize=16)
def _transforms(streams_json: str) -> dict[str, Any]:
    """Prepared column -> FrameTransform, built once per worker process (no model weights needed)."""
    from extractors import ExtractorConfig
    from extractors.base import REGISTRY

    out = {}
    for extractor in json.loads(streams_json):
        cfg = ExtractorConfig.from_dict({**extractor, "device": "cpu"})
        t = REGISTRY[cfg.name].transform_for(cfg)
        out["prep_" + geometry_key(t)] = t
    return out


@functools.lru_cache(maxsize=16)
def _video_only_streams(streams_json: str) -> tuple[str, ...]:
    """Names of the job's streams that need video frames (cannot read SMPL-X parameter files)."""
    from extractors import ExtractorConfig
    from extractors.base import REGISTRY

    names = [ExtractorConfig.from_dict({**e, "device": "cpu"}).name for e in json.loads(streams_json)]
    return tuple(n for n in names if not REGISTRY[n].accepts_params)


def _pass_params(row: dict[str, Any], streams_json: str) -> tuple[int, float]:
    """A parameters clip skips decoding: (frames, fps) from its manifest row, or ``needs_video``."""
    video_only = _video_only_streams(streams_json)
    if video_only:
        raise ClipError("needs_video", f"{row['path']} holds SMPL-X parameters (source_kind={PARAMS_KIND}), and stream(s) "
                                       f"{', '.join(video_only)} need video frames; extract parameter clips in a job whose streams read them (smplx623)")
    return int(row.get("num_frames") or 0), _fps(row.get("fps")) or 0.0


def _maybe_crash_for_tests(path: str, variable: str = "SIGNFEAT_TEST_CRASH_ON", sig: int = signal.SIGSEGV) -> None:
    """Fault injection for the tests: a decoder that dies in native code on a 'hostile' file
    (SIGNFEAT_TEST_CRASH_ON), or an extractor actor killed on a clip every time, as the memory monitor
    kills one whose clip does not fit (SIGNFEAT_TEST_KILL_EXTRACTOR_ON)."""
    marker = os.environ.get(variable)
    if marker and marker in path:
        os.kill(os.getpid(), sig)


def decode_prepare(batch: dict[str, np.ndarray], streams_json: str, decode_options) -> dict[str, np.ndarray]:
    """Ray Data task (CPU): decode each clip and run every stream's resize/crop -> uint8 columns.

    A clip that fails gets its error columns set and empty arrays; a worker that dies (a native crash in
    a decoder) is retried by Ray and, if it keeps dying, its block is dropped and the writer records the
    clip as ``lost`` (see pipeline/extract.py), so the job goes on.
    """
    from pipeline.decode import repeat_frames, open_clip

    transforms = _transforms(streams_json)
    n = len(batch["key"])
    out: dict[str, list] = {k: list(v) for k, v in batch.items()}
    for col in [*transforms, "decoded_frames", "decoded_fps", "decoded_duration_s", "secs_decode"]:
        out[col] = [None] * n
    for c in ERROR_COLUMNS:
        out[c] = [""] * n
    out["node_decode"] = [_node_id()] * n
    for i in range(n):
        t0 = time.perf_counter()
        row = {k: _py(v[i]) for k, v in batch.items()}
        # the job's rows carry a missing start/end as NaN (pipeline/extract.py); decode_clip wants None, as the
        # probe saw it: a range with only an end ("from the start") must not fail here as bad_range
        row["start_s"], row["end_s"] = (_seconds(row.get(k)) for k in ("start_s", "end_s"))
        try:
            _maybe_crash_for_tests(str(row["path"]))
            if row["source_kind"] == PARAMS_KIND:
                out["decoded_frames"][i], out["decoded_fps"][i] = _pass_params(row, streams_json)
                frames, fps = out["decoded_frames"][i], out["decoded_fps"][i]
                out["decoded_duration_s"][i] = frames / fps if fps else 0.0  # the file's own span (the extractor may resample)
                for col in transforms:
                    out[col][i] = np.zeros((0, 3, 1, 1), np.uint8)
                out["secs_decode"][i] = time.perf_counter() - t0
                continue
            clip = open_clip(row, decode_options)  # a source changed since the manifest fails here, as `changed`
            # known before decoding: one full-size frame through each stream's resize/crop gives the prepared bytes per
            # frame (a clip over the limit used to be decoded up to the limit first: 105 s of a 1080p video)
            per_frame = sum(t.resize_crop(np.zeros((1, clip.height, clip.width, 3), np.uint8)).numpy().nbytes for t in transforms.values())
            if clip.count * per_frame > decode_options.max_clip_mib * 2**20:
                raise ClipError("too_long", f"{row['path']}: {clip.count} frames make {clip.count * per_frame / 2**20:.3g} MiB of prepared frames, "
                                            f"over max_clip_mib={decode_options.max_clip_mib:g} (lower decode.target_fps or max_frames, "
                                            "or raise max_clip_mib)")
            # each chunk of full-size frames is resized as it comes: a task holds the clip's prepared frames (what
            # max_clip_mib limits here) and one chunk, not the whole clip at the video's size
            prepared: dict[str, list[np.ndarray]] = {col: [] for col in transforms}
            held = done = 0
            for frames, repeats in clip.with_repeats():  # a repeated frame (target_fps above the video's rate) resized once
                for col, t in transforms.items():
                    prepared[col].append(repeat_frames(t.resize_crop(frames).numpy(), repeats))
                    held += prepared[col][-1].nbytes
                done += int(repeats.sum())
                if held > decode_options.max_clip_mib * 2**20:
                    raise ClipError("too_long", f"{row['path']}: {held / 2**20:.3g} MiB of prepared frames after {done} of {clip.count} "
                                                f"frames, over max_clip_mib={decode_options.max_clip_mib:g}")
            for col in transforms:
                out[col][i] = np.concatenate(prepared.pop(col))  # each list freed as it is joined
            out["decoded_frames"][i], out["decoded_fps"][i] = clip.count, float(clip.fps)
            out["decoded_duration_s"][i] = float(clip.source_duration_s)
            del clip, prepared
        except Exception as exc:  # ClipError or anything else decoding raised: this clip's problem only
            stage = f"extract:{_video_only_streams(streams_json)[0]}" if _error_kind(exc) == "needs_video" else "decode"
            said = str(exc) + (f" (on node {_node_ip()})" if _error_kind(exc) == "missing_file" else "")  # a node without the mount?
            out["error_stage"][i], out["error_class"][i], out["error_message"][i] = stage, _error_kind(exc), printable(said)[:2000]
            for col in transforms:
                out[col][i] = np.zeros((0, 3, 1, 1), np.uint8)
            out["decoded_frames"][i], out["decoded_fps"][i], out["decoded_duration_s"][i] = 0, 0.0, 0.0
        out["secs_decode"][i] = time.perf_counter() - t0
    return {k: _column(v) for k, v in out.items()}


class ExtractStream:
    def __init__(self, extractor: dict[str, Any], prep_column: str, use_gpu: bool, drop_columns: tuple[str, ...] = ()):
        """``drop_columns``: prepared-frame columns no later stream reads; dropped from this stream's output so
        decoded frames do not ride along to the writer (Ray Data holds finished blocks until their turn when
        order is preserved, and frames are most of a block's bytes)."""
        from extractors import ExtractorConfig, build_extractor

        self.extractor = build_extractor(ExtractorConfig.from_dict({**extractor, "device": "cuda" if use_gpu else "cpu"}))
        transform = getattr(self.extractor, "transform", None)
        if transform is not None and "prep_" + geometry_key(transform) != prep_column:
            # the decode tasks resized with the transform the config gives without the weights; the model loaded
            # here says otherwise: its features would be of frames prepared differently from what it records
            raise SignfeatError(f"{self.extractor.name}: the job prepared frames as {prep_column[len('prep_'):]}, the loaded model's own "
                                f"preprocessing is {geometry_key(transform)}")
        self.prep_column = prep_column
        self.drop_columns = tuple(drop_columns)
        self.name = self.extractor.stream
        self.meta = json.dumps(self.extractor.metadata(), sort_keys=True, default=str)

    def _extract(self, batch: dict[str, np.ndarray], idx: list[int]) -> list[tuple[np.ndarray, tuple[int, float | None] | None, dict]]:
        """Features of the batch's clips ``idx``: video clips from their prepared frames, parameter clips from
        their files (extract_files). A parameter clip also gives the (frames, fps) its features are aligned to,
        and smplx623 on video what its estimator did not see (written into the sample's stream record)."""
        import torch

        files = [i for i in idx if _py(batch["source_kind"][i]) == PARAMS_KIND]
        video = [i for i in idx if _py(batch["source_kind"][i]) != PARAMS_KIND]
        results: dict[int, tuple] = {}
        if video:
            # Ray hands out read-only views of its object store; the extractors only read them (extract_prepared
            # concatenates them into its own tensor), so they are wrapped as they are: a writable copy of each
            # was one more copy of the call's frames
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                prepared = [torch.from_numpy(np.ascontiguousarray(batch[self.prep_column][i])) for i in video]
            if hasattr(self.extractor, "extract_prepared_timed"):  # smplx623: its own target_fps, so its own time base
                timed = self.extractor.extract_prepared_timed(prepared, [_fps(batch["decoded_fps"][i]) for i in video])
                results.update({i: (f, (n, rate), {"estimate": seen}) for i, (f, n, rate, seen) in zip(video, timed)})
            else:
                results.update({i: (f, None, {}) for i, f in zip(video, self.extractor.extract_prepared(prepared))})
        if files:
            read = self.extractor.extract_files([str(_py(batch["path"][i])) for i in files], [_fps(batch["fps"][i]) for i in files])
            results.update({i: (f, (n, fps), {}) for i, (f, n, fps) in zip(files, read)})
        return [results[i] for i in idx]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        n = len(batch["key"])
        out: dict[str, list] = {k: list(v) for k, v in batch.items()}
        feats: list[Any] = [np.zeros((0, self.extractor.width), self.extractor.storage_dtype)] * n
        todo = [i for i in range(n) if not _py(batch["error_class"][i])]
        for i in todo:
            _maybe_crash_for_tests(str(_py(batch["path"][i])), "SIGNFEAT_TEST_KILL_EXTRACTOR_ON", signal.SIGKILL)
        results: dict[int, tuple] = {}
        try:
            results.update(zip(todo, self._extract(batch, todo)))
        except Exception:
            for i in todo:  # isolate the clip that breaks the batch
                try:
                    results[i] = self._extract(batch, [i])[0]
                except Exception as exc:
                    out["error_stage"][i], out["error_class"][i], out["error_message"][i] = f"extract:{self.name}", _error_kind(exc), printable(str(exc))[:2000]
        clip_meta = [""] * n  # per clip additions to the stream's record in the sample JSON (JSON text; "": none)
        for i, (f, timebase, extra) in results.items():
            if not np.isfinite(f).all():
                out["error_stage"][i], out["error_class"][i] = f"extract:{self.name}", "nonfinite"
                cause = "overflow or NaN" if self.extractor.storage_dtype == np.float16 else "NaN or inf"
                out["error_message"][i] = f"{self.name} produced non-finite values ({np.dtype(self.extractor.storage_dtype).name} {cause})"
                continue
            feats[i] = f
            clip_meta[i] = json.dumps(extra, sort_keys=True) if extra else ""
            if timebase is not None:  # a parameters clip: the sample's num_frames / fps are those the features have
                out["decoded_frames"][i] = int(timebase[0])
                out["decoded_fps"][i] = float(timebase[1]) if timebase[1] else out["decoded_fps"][i]
        for col in self.drop_columns:
            out.pop(col, None)
        out[f"feat_{self.name}"] = feats
        out[f"meta_{self.name}"] = [self.meta] * n
        out[f"clipmeta_{self.name}"] = clip_meta
        node, worked = _node_id(), set(todo)
        out[f"node_{self.name}"] = [node if i in worked else "" for i in range(n)]  # "": a clip that failed before this stage
        out[f"secs_{self.name}"] = [(time.perf_counter() - t0) / n] * n  # the call's time, shared by its clips
        return {k: _column(v) for k, v in out.items()}


def _error_kind(exc: Exception) -> str:
    """The failures table's error class: a ClipError's kind (missing_file, no_person, ...), else the exception's class."""
    return exc.kind if isinstance(exc, ClipError) else type(exc).__name__


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "local"


def _node_id() -> str:
    """The Ray node this worker runs on (job.json counts the clips each node decoded and extracted)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _fps(value: Any) -> float | None:
    """A row's fps (NaN stands for none in Ray rows) -> float or None."""
    value = _py(value)
    return None if value is None or value != value or not value > 0 else float(value)


def _seconds(value: Any) -> float | None:
    """A row's start_s / end_s (NaN stands for none in Ray rows) -> float or None."""
    value = _py(value)
    return None if value is None or value != value else float(value)


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _column(values: list) -> np.ndarray:
    """A batch column: arrays of different shapes become an object array (Ray stores them as ragged tensors)."""
    if values and isinstance(values[0], np.ndarray):
        col = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            col[i] = v
        return col
    return np.asarray(values, dtype=object) if any(v is None for v in values) else np.asarray(values)
