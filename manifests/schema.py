"""The manifest: one Parquet row per clip, with an explicit schema and a schema version in the metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import SignfeatError

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"signfeat.manifest.schema_version"
BUILD_INFO_KEY = b"signfeat.manifest.build"

# source_kind values: a whole video file, a [start_s, end_s) range inside one, a folder of frame images, or
# SMPL-X parameters (a file or a folder of per-frame files, motion.params_io: SignAvatars, SMPLer-X/OSX,
# Motion-X, named .npz), which only extractors that read parameters (smplx623) can use.
PARAMS_KIND = "smplx"
SOURCE_KINDS = ("video", "range", "frames", PARAMS_KIND)

MANIFEST_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),  # WebDataset-safe, reversible form of id (keys.py)
    pa.field("dataset", pa.string()),
    pa.field("split", pa.string()),
    pa.field("signer", pa.string()),
    pa.field("text", pa.string()),
    pa.field("source_kind", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # absolute path of the video file, frame folder or SMPL-X parameters
    pa.field("start_s", pa.float64()),  # range clips only
    pa.field("end_s", pa.float64()),
    pa.field("fps", pa.float64()),  # frames / duration for videos (so VFR gets its mean rate); given for frames; the file's or given for smplx
    pa.field("num_frames", pa.int64()),  # frames the decoder yields for this clip (inside the range)
    pa.field("width", pa.int32()),  # as displayed, after the container's rotation (null for smplx: no pixels)
    pa.field("height", pa.int32()),
    pa.field("duration_s", pa.float64()),
    pa.field("codec", pa.string()),  # video codec name, the image format(s) of a frame folder, or "smplx:LAYOUT"
    pa.field("bytes", pa.int64()),  # size on disk of the source (the whole file for ranges)
    pa.field("content_hash", pa.string()),  # blake2b of the clip's bytes (+ range), finds exact duplicates
    pa.field("status", pa.string(), nullable=False),  # "ok" or a short error class
    pa.field("error", pa.string()),  # the message when status != ok
    # the recording a clip was cut from where its path does not say: a How2Sign sentence clip's raw video, a
    # table's `source` column; curation keeps the clips of one source (and a range's video) in one split.
    # Optional: a manifest written before it had the column reads with it null.
    pa.field("source", pa.string()),
]
OPTIONAL_COLUMNS = ("source",)
MANIFEST_SCHEMA = pa.schema(MANIFEST_FIELDS)
COLUMNS = [f.name for f in MANIFEST_FIELDS]


# what an extraction output holds next to its split folders (shards/store.py writes them)
OUTPUT_FILES = ("index.parquet", "failures.parquet", "job.json")


# the longest name a split or a shard prefix may have: file systems take 255 bytes a name, and the job's files
# add to them (`_signfeat/parts/{split}/{prefix}-000000.failures.parquet.tmp-1a2b3c4d`: 37 bytes and more digits)
MAX_NAME_BYTES = 200


def split_name_problem(split: str) -> str | None:
    """Why ``split`` cannot name a split folder of an extraction output (None if it can). ".." would put shards
    outside OUT and "." (or any hidden name) beside its own files, where verify and readers do not look; a
    split named like the output's own files (index.parquet) crashed the job at its end; glob and brace
    characters make OUT/{split}/*.tar and brace patterns match other splits. Curation refuses such a name
    in its ratios, and shard planning in the manifest."""
    if not split.strip():
        return "it is empty"
    if len(split.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:  # a file system's name limit is 255 bytes: the job died at its end
        return f"it is {len(split.encode('utf-8', 'surrogatepass'))} bytes long; a split folder's name takes at most {MAX_NAME_BYTES}"
    if "/" in split or "\\" in split or split.startswith(("_", ".")) or split.lower() in OUTPUT_FILES or any(c in split for c in "*?[]{}"):
        return (f"a split folder of the output takes no '/', '\\' or glob characters *?[]{{}}, no leading '_' or '.', "
                f"and is not {', '.join(OUTPUT_FILES)}")
    return None


def rows_to_table(rows: Iterable[dict[str, Any]], build_info: dict[str, Any] | None = None) -> pa.Table:
    rows = list(rows)
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=MANIFEST_SCHEMA)
    meta = {SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()}
    if build_info is not None:
        meta[BUILD_INFO_KEY] = json.dumps(build_info, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def write_manifest(table: pa.Table, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # a reader never sees a half-written manifest


def read_manifest(path: str | Path) -> pa.Table:
    """A manifest from a local path or an object-store URL (``s3://bucket/m.parquet``, with pyarrow's query options
    such as ``?endpoint_override=HOST:PORT&scheme=http``, as ``--out`` takes them)."""
    if "://" in str(path):
        import pyarrow.fs as pafs

        from shards.location import filesystem

        try:
            fs, inner = filesystem(str(path))
            if fs.get_file_info(inner).type != pafs.FileType.File:
                raise FileNotFoundError(f"manifest not found: {path}")
            table = pq.read_table(inner, filesystem=fs)
        except (OSError, pa.ArrowInvalid, SignfeatError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise FileNotFoundError(f"manifest {path}: cannot read it ({exc})") from None
    else:
        path = Path(path)
        if path.is_dir():
            raise FileNotFoundError(f"manifest {path} is a folder; give the manifest's .parquet file (manifest build --out)")
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is None:
        raise ValueError(f"{path} is not a signfeat manifest (no {SCHEMA_VERSION_KEY.decode()} in its metadata)")
    if version.decode() != SCHEMA_VERSION:
        raise ValueError(f"{path} has manifest schema version {version.decode()}, this signfeat reads {SCHEMA_VERSION}")
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(MANIFEST_SCHEMA.field(name), pa.nulls(table.num_rows, MANIFEST_SCHEMA.field(name).type))
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks manifest columns {missing}")
    return table
