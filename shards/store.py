"""Where a job's output lives: a local folder or an object store URL (``s3://bucket/prefix``), through
pyarrow.fs, with the commit protocol that makes a job exactly-once and resumable.

Layout under OUT:
    {split}/{prefix}-{000000}.tar          the shards
    index.parquet, failures.parquet        merged at the end of a job from the per-shard parts below
    job.json                               summary of the last run
    _signfeat/identity.json                manifest + config hashes: a rerun with others is refused
    _signfeat/plan.parquet                 key -> shard, fixed when the job first starts
    _signfeat/hub_commits.json             the commit each Hub model's branch or tag was pinned to
    _signfeat/run.json                     the run that owns OUT now (a later run on it takes over)
    _signfeat/parts/{split}/{shard}.index.parquet / .failures.parquet
    _signfeat/done/{split}/{shard}.json    written last: a shard exists iff its marker does

A shard is written under a temporary name, moved to its name, its parts written, and only then its
marker (datatrove's completion markers). A crash before the marker leaves a shard that the next run
overwrites; after it, the shard is skipped, as long as its tar (of the size the marker records) and both
parts are still there and readable and its marker records this job's config (``shard_is_complete``, which
pipeline/extract.py's ``shards_to_skip`` asks). On S3 a move is a copy, so the marker, not the
rename, is the commit point.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from manifests.schema import OUTPUT_FILES
from pipeline.errors import SignfeatError
from shards import location

_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}$")  # write_bytes' temporary names
MERGED_FILES = OUTPUT_FILES  # written at the end of every run


class Store:
    def __init__(self, out: str):
        self.url = str(out)
        self.fs, self.root = location.filesystem(self.url)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)  # a plain path or a file:// URL
        if not self.local and not self.root:  # "s3://": every write would go to the store's top level, and fail there
            raise SignfeatError(f"output location {self.url} names no bucket; give s3://bucket/prefix")
        if not self.local and "" in self.root.split("/"):  # s3://bkt//job: pyarrow refuses it at the first access
            raise SignfeatError(f"output location {self.url} has an empty path component ({self.root!r}); write s3://bucket/prefix/sub")

    @property
    def where(self) -> str:
        """The output as a person can find it: a local folder as an absolute path (a relative --out said nothing
        about where under `ray job submit`, whose working directory is Ray's copy of --working-dir), else the URL."""
        return self.root if self.local and "://" not in self.url else self.url

    def check_reachable(self) -> None:
        """Before reading an output: an object store that cannot be reached (endpoint down, bad credentials) is
        one line, not a pyarrow traceback at the first file."""
        try:
            self.fs.get_file_info(self.root)
        except OSError as exc:
            raise SignfeatError(f"{self.url}: cannot reach the {'folder' if self.local else 'object store'} ({str(exc).splitlines()[0]})") from None

    def make_writable(self) -> None:
        """Before a job writes: a local OUT (a path or a file:// URL) that is a file (or under one), or cannot be
        created, is one line, not a pyarrow traceback at the first write. (Object stores have no folders to check.)"""
        if not self.local:  # no folders to check; the bucket must exist (pyarrow would create none: a traceback at the first write)
            bucket = self.root.split("/")[0]
            try:
                missing = self.fs.get_file_info(bucket).type == pafs.FileType.NotFound
            except OSError as exc:  # credentials, endpoint, network: pyarrow's message says which
                raise SignfeatError(f"--out {self.url}: cannot reach the object store ({str(exc).splitlines()[0]})") from None
            if missing:
                raise SignfeatError(f"--out {self.url}: bucket {bucket!r} does not exist (create it first)")
            return
        from pathlib import Path

        root = Path(self.root)
        if root.exists() and not root.is_dir():
            raise SignfeatError(f"--out {self.url} is a file, not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SignfeatError(f"--out {self.url}: cannot create the output folder ({exc.strerror}: {exc.filename})") from None

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # ------------------------------------------------------------------ basic io

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write to a temporary name, then move into place."""
        final = self.path(rel)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"  # matches _TEMP_NAME
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str, ensure_ascii=False).encode())

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(rel)))

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of files under ``rel`` (recursive), sorted."""
        base = self.path(rel)
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        prefix = self.root + "/"
        return sorted(i.path[len(prefix):] if i.path.startswith(prefix) else i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))

    # ------------------------------------------------------------------ shard commit protocol

    @staticmethod
    def marker(shard: str) -> str:
        return f"_signfeat/done/{shard}.json"

    def done_shards(self) -> set[str]:
        return {p[len("_signfeat/done/") : -len(".json")] for p in self.list_files("_signfeat/done", ".json")}

    def shard_is_complete(self, shard: str, config_hash: str | None = None) -> bool:
        """The marker exists, the tar has the size the marker recorded, and both parts read: anything less (a
        deleted or truncated tar, a lost or damaged part) means the shard must be written again. With
        ``config_hash``, a marker recording another one (a shard a second driver on this OUT committed) is not
        complete either; markers of older signfeat versions record none."""
        try:
            summary = self.read_json(self.marker(shard))
            if not isinstance(summary, dict):
                return False
            if config_hash is not None and summary.get("config_hash") not in (None, config_hash):
                return False
            tar = self.fs.get_file_info(self.path(f"{shard}.tar"))
            if tar.type != pafs.FileType.File or tar.size != summary.get("bytes"):
                return False
            for part in ("index", "failures"):
                self.read_table(f"_signfeat/parts/{shard}.{part}.parquet")
        except (OSError, ValueError):  # missing (FileNotFoundError) or damaged (pa.ArrowInvalid, JSONDecodeError)
            return False
        return True

    def complete_shards(self) -> set[str]:
        """Shards with a marker that ``shard_is_complete`` accepts (what a rerun skips)."""
        return {shard for shard in self.done_shards() if self.shard_is_complete(shard)}

    def commit_shard(self, shard: str, tar_bytes: bytes, index: pa.Table, failures: pa.Table, summary: dict) -> None:
        self.write_bytes(f"{shard}.tar", tar_bytes)
        self.write_table(f"_signfeat/parts/{shard}.index.parquet", index)
        self.write_table(f"_signfeat/parts/{shard}.failures.parquet", failures)
        self.write_json(self.marker(shard), summary)  # the commit point

    def remove_temporaries(self, shards: set[str] | None = None) -> int:
        """Delete the half-written files (``NAME.tmp-XXXXXXXX``) a run killed mid-write left; returns how many.
        Only signfeat's own: NAME under ``_signfeat/``, one of the merged files, or the tar of one of ``shards``
        (default: the recorded plan's and markers' shards), never a user's file that happens to end alike.
        Only safe when no other run writes to this OUT (signfeat never runs two drivers on one OUT)."""
        shards = self.recorded_shards() if shards is None else shards
        stale = [rel for rel in self.list_files("") if _TEMP_NAME.search(rel) and self._ours(_TEMP_NAME.sub("", rel), shards)]
        for rel in stale:
            self.delete(rel)
        return len(stale)

    @staticmethod
    def _ours(rel: str, shards: set[str]) -> bool:
        return rel.startswith("_signfeat/") or rel in MERGED_FILES or (rel.endswith(".tar") and rel[: -len(".tar")] in shards)

    def recorded_shards(self) -> set[str]:
        """The shards this OUT's job record names: its plan's and its completion markers'."""
        shards = self.done_shards()
        try:
            shards |= set(self.read_table("_signfeat/plan.parquet").column("shard").to_pylist())
        except (OSError, ValueError, KeyError):  # no readable plan: the markers still name the shards written
            pass
        return {s for s in shards if isinstance(s, str) and ".." not in s.split("/") and not s.startswith("/")}  # never outside OUT

    def clear(self) -> None:
        """Remove what signfeat wrote under OUT (for --overwrite): the shards of the previous job's plan and of
        its completion markers, the merged files and ``_signfeat/``; nothing else (a ``.tar`` of the user's
        stays). An OUT that holds files but no job record is refused rather than guessed at."""
        files = [rel for rel in self.list_files("") if not _TEMP_NAME.search(rel)]
        if not files:
            return
        if not (self.exists("_signfeat/identity.json") or self.done_shards() or self.exists("_signfeat/plan.parquet")):
            raise SignfeatError(f"--overwrite: {self.url} holds {len(files)} file{'s' * (len(files) != 1)} but no signfeat job record (_signfeat/identity.json); "
                                "refusing to delete them: give an empty or new --out, or remove them yourself")
        shards = self.recorded_shards()
        self.remove_temporaries(shards)
        # the job record (_signfeat/) goes last: an --overwrite killed half-way leaves an OUT it can clear again
        for rel in [*(f"{shard}.tar" for shard in sorted(shards)), *MERGED_FILES, "_signfeat"]:
            self.delete(rel)
