"""Probing: what a clip is (frames, fps, size, codec, bytes, content hash) and whether it decodes.

Videos are demuxed, not decoded (pipeline.decode.read_timeline), plus one decoded frame to prove the
stream decodes; ``full_decode=True`` decodes every frame of the clip, for corpora one distrusts.
SMPL-X parameter clips (``source_kind`` "smplx") are read whole (small: a few hundred floats a frame) with
motion.params_io's readers, pickles through its restricted unpickler, so a malicious pickle is a status,
never code run.
Probing runs as Ray tasks over chunks of rows that share a source file (a How2Sign video with 30 ranges
is opened and hashed once), with a bounded number of chunks in flight, so memory stays flat however
large the corpus: only the finished rows, as compact Arrow tables, accumulate.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from manifests.schema import PARAMS_KIND
from pipeline.decode import decode_clip, list_frame_files, read_timeline, select_range, DecodeOptions
from pipeline.errors import ClipError, printable

PROBED = ["fps", "num_frames", "width", "height", "duration_s", "codec", "bytes", "content_hash", "status", "error"]
_HASH_CHUNK = 1 << 20
EXIF_ORIENTATION = 0x0112


def file_hash(path: str | Path, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h


def _probe_video(row: dict[str, Any], hashes: dict[str, str], timelines: dict[str, Any] | None = None) -> dict[str, Any]:
    """``hashes`` / ``timelines``: per-chunk caches, so a long video with many ranges is hashed and demuxed once."""
    path = row["path"]
    timelines = {} if timelines is None else timelines
    if path not in timelines:
        try:
            timelines[path] = read_timeline(path)
        except ClipError as exc:  # remembered too: 2000 ranges of one broken video demuxed it 2000 times
            timelines[path] = exc
    timeline = timelines[path]
    if isinstance(timeline, ClipError):
        raise ClipError(timeline.kind, str(timeline))
    if row["source_kind"] == "range":
        idx = select_range(timeline.times_s, row.get("start_s"), row.get("end_s"), timeline.duration_s, path)
    else:
        idx = np.arange(len(timeline.times_s))
    # duration of the frames the clip holds: first shown .. last one's end (a video's first frame may be
    # shown after the file's start, when its audio starts first)
    duration = timeline.span_s(idx, row.get("end_s") if row["source_kind"] == "range" else None)
    num = int(len(idx))
    if path not in hashes:
        hashes[path] = file_hash(path).hexdigest()
    digest = hashes[path]
    if num < len(timeline.times_s):  # same file and same frames -> same clip, however its range is written
        # (an open start and start 0.0 were two clips; a range over the whole video is the video)
        digest = hashlib.blake2b(f"{digest}|frames {int(idx[0])}+{num}".encode(), digest_size=16).hexdigest()
    return {
        "fps": num / duration if duration > 0 else None,
        "num_frames": num,
        "width": timeline.width,
        "height": timeline.height,
        "duration_s": duration,
        "codec": timeline.codec,
        "bytes": os.path.getsize(path),
        "content_hash": digest,
    }


def _orientation(img) -> int | None:
    """An image's EXIF orientation, read from its header. A PNG's getexif() decodes the whole image to look for
    an eXIf chunk after the pixels (25x the cost of the header over a PHOENIX folder): only one before them
    is read here (the usual place; decoding still applies either)."""
    if img.format == "PNG":
        from PIL import Image

        data = img.info.get("exif")
        if not data:
            return None
        exif = Image.Exif()
        exif.load(data)
        return exif.get(EXIF_ORIENTATION)
    return img.getexif().get(EXIF_ORIENTATION)


def _probe_frames(row: dict[str, Any], default_fps: float) -> dict[str, Any]:
    from PIL import Image

    files = list_frame_files(row["path"])
    fps = float(row.get("fps") or default_fps)
    h = hashlib.blake2b(digest_size=16)
    size = None
    formats: set[str] = set()
    total = 0
    for f in files:
        try:
            with Image.open(f) as img:  # reads the header only
                img_size, fmt = img.size, (img.format or f.suffix.lstrip(".")).lower()
                if _orientation(img) in (5, 6, 7, 8):  # shown turned by 90 degrees (decode applies it)
                    img_size = img_size[::-1]
        except PermissionError as exc:
            raise ClipError("unreadable", f"cannot open frame image {f}: {exc.strerror}") from None
        except Exception as exc:
            raise ClipError("corrupt", f"cannot read frame image {f}: {exc}") from None
        if size is None:
            size = img_size
        elif img_size != size:
            raise ClipError("mixed_sizes", f"{f} is {img_size[0]}x{img_size[1]}, the folder's first frame {size[0]}x{size[1]}")
        formats.add(fmt)
        file_hash(f, h)
        total += f.stat().st_size
    return {
        "fps": fps,
        "num_frames": len(files),
        "width": size[0],
        "height": size[1],
        "duration_s": len(files) / fps,
        "codec": "+".join(sorted(formats)),
        "bytes": total,
        # the images and the rate they are shown at: the same folder annotated at another fps is another clip
        "content_hash": hashlib.blake2b(f"{h.hexdigest()}|{fps!r}".encode(), digest_size=16).hexdigest(),
    }


def _params_files(path: Path) -> list[Path]:
    """The files a parameters clip is made of (one file, or a folder's per-frame files in order)."""
    from motion.params_io import per_frame_files

    return per_frame_files(path) if path.is_dir() else [path]


def _probe_params(row: dict[str, Any]) -> dict[str, Any]:
    from motion.body_model import num_frames_of
    from motion.params_io import read_clip_params

    path = Path(row["path"])
    if not path.exists():
        raise ClipError("missing_file", f"no such SMPL-X parameters file or folder: {path}")
    try:
        params, own_fps, layout = read_clip_params(path)
        num = num_frames_of(params)
    except ClipError:
        raise
    except Exception as exc:  # a truncated .npz, a dict of the wrong shapes...: the file's problem, like a corrupt video
        raise ClipError("bad_params", f"{path}: {type(exc).__name__}: {exc}") from None
    # the file's own rate wins (it was recorded with the motion); else the annotation's; else no time base
    fps = own_fps or (float(row["fps"]) if row.get("fps") else None)
    if not fps:
        raise ClipError("no_fps", f"{path} does not record its frame rate: give the clip's fps in the annotation (an fps column)")
    files = _params_files(path)
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        file_hash(f, h)
    return {"fps": fps, "num_frames": num, "width": None, "height": None, "duration_s": num / fps,
            "codec": f"smplx:{layout}", "bytes": sum(f.stat().st_size for f in files), "content_hash": h.hexdigest()}


def probe_clip(row: dict[str, Any], hashes: dict[str, str] | None = None, *, full_decode: bool = False, default_fps: float = 25.0,
               timelines: dict[str, Any] | None = None) -> dict[str, Any]:
    """The probed columns of one manifest row; errors become ``status``/``error``, never exceptions."""
    out: dict[str, Any] = {k: None for k in PROBED}
    try:
        if row["source_kind"] == PARAMS_KIND:
            out.update(_probe_params(row))
        elif row["source_kind"] == "frames":
            out.update(_probe_frames(row, default_fps))
            decode_opts = DecodeOptions(backend="pyav", max_frames=None if full_decode else 1, frame_fps=default_fps)
            decode_clip(row, decode_opts)  # decodes the first (or every) image
        else:
            out.update(_probe_video(row, hashes if hashes is not None else {}, timelines))
            if full_decode:
                decode_clip(row, DecodeOptions(backend="pyav"))
        out["status"] = "ok"
    except ClipError as exc:
        out["status"], out["error"] = exc.kind, printable(str(exc))
    except Exception as exc:  # a probe must never take the build down
        out["status"], out["error"] = "probe_failed", printable(f"{type(exc).__name__}: {exc}")
    return out


def probe_chunk(rows: list[dict[str, Any]], full_decode: bool = False, default_fps: float = 25.0) -> pa.Table:
    """Probe rows (each with a ``_row`` position) and return the probed columns as a small Arrow table."""
    hashes: dict[str, str] = {}
    timelines: dict[str, Any] = {}
    results = []
    for row in rows:
        res = probe_clip(row, hashes, full_decode=full_decode, default_fps=default_fps, timelines=timelines)
        res["_row"] = row["_row"]
        results.append(res)
    from manifests.schema import MANIFEST_SCHEMA

    fields = [pa.field("_row", pa.int64())] + [MANIFEST_SCHEMA.field(c) for c in PROBED]
    return pa.Table.from_pylist(results, schema=pa.schema(fields))


def chunk_by_path(rows: list[dict[str, Any]], chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """Chunks of about ``chunk_size`` rows; rows of one source file stay in one chunk (hashed once)."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    chunk: list[dict[str, Any]] = []
    for group in by_path.values():
        chunk.extend(group)
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def probe_rows(
    rows: list[dict[str, Any]],
    *,
    num_cpus: int | None = None,
    chunk_size: int = 16,
    full_decode: bool = False,
    default_fps: float = 25.0,
    progress: bool = True,
) -> pa.Table:
    """Probe all rows on a local Ray instance (or the one already running); returns a table sorted by ``_row``."""
    import ray
    from tqdm import tqdm

    from pipeline.ray_runtime import ensure_ray

    ensure_ray(num_cpus=num_cpus)
    remote = ray.remote(num_cpus=1, max_retries=2)(probe_chunk)
    window = max(2, 2 * int(ray.available_resources().get("CPU", 1)))
    in_flight: dict[Any, int] = {}
    done: list[pa.Table] = []
    bar = tqdm(total=len(rows), desc="probe", unit="clip", disable=not progress, mininterval=1.0)
    chunks = chunk_by_path(rows, chunk_size)

    def collect(refs):
        for ref in refs:
            table = ray.get(ref)
            done.append(table)
            bar.update(in_flight.pop(ref))

    for chunk in chunks:
        if len(in_flight) >= window:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            collect(ready)
        in_flight[remote.remote(chunk, full_decode, default_fps)] = len(chunk)
    collect(list(in_flight))
    bar.close()
    if not done:
        return probe_chunk([], full_decode, default_fps)
    return pa.concat_tables(done).sort_by("_row")
