"""Reading shards where they lie: a local path, or an object-store URL (``s3://bucket/prefix/train/x.tar``)
through pyarrow.fs, for the trainer.

A URL keeps the query of the output URL it came from (``?endpoint_override=HOST:PORT&scheme=http`` for an
S3-compatible server, as ``signfeat extract --out`` takes it), so each shard URL opens on its own, also in a
DataLoader worker. Local paths go through Python's own file functions, as before.
"""

from __future__ import annotations

import functools
import os
import posixpath
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import SignfeatError


def is_remote(url: str) -> bool:
    return "://" in str(url)


def _parts(url: str) -> tuple[str, str]:
    """(the URL without its query, "?query" or "")."""
    base, sep, query = url.partition("?")
    return base, sep + query


def join(url: str, *names: str) -> str:
    if not is_remote(url):
        return os.path.join(url, *names)
    base, query = _parts(url)
    return "/".join([base.rstrip("/"), *names]) + query


def parent(url: str) -> str:
    if not is_remote(url):
        return os.path.dirname(os.path.normpath(url))
    base, query = _parts(url)
    return base.rstrip("/").rsplit("/", 1)[0] + query


def name(url: str) -> str:
    """The last path component (``x-000000.tar``)."""
    return posixpath.basename(_parts(url)[0].rstrip("/")) if is_remote(url) else os.path.basename(os.path.normpath(url))


@functools.lru_cache(maxsize=None)
def _object_store(scheme: str, bucket: str, query: str, pid: int) -> pafs.FileSystem:
    # one per process: a DataLoader worker makes its own (``pid``), never a copy of its parent's client
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}{query}")[0]


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem ``url`` lies on and its path there (no trailing slash). A plain path is local (``~``
    expanded as the shell would: a quoted "~/feat"); a ``file://`` URL too; an object store's client is made once
    per process, bucket and options. Anything pyarrow cannot open is one SignfeatError line."""
    try:
        if not is_remote(url):
            return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(url)).rstrip("/")
        base, query = _parts(url)
        scheme, _, path = base.partition("://")
        if scheme == "file":
            fs, path = pafs.FileSystem.from_uri(url)
            return fs, path.rstrip("/")
        return _object_store(scheme, path.split("/")[0], query, os.getpid()), path.rstrip("/")
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise SignfeatError(f"cannot open {url}: {str(exc).splitlines()[0]}") from None


def _info(url: str) -> pafs.FileInfo:
    fs, path = filesystem(url)
    try:
        return fs.get_file_info(path)
    except OSError as exc:  # credentials, endpoint, network
        raise SignfeatError(f"{url}: cannot reach the object store ({str(exc).splitlines()[0]})") from None


def is_file(url: str) -> bool:
    return os.path.isfile(url) if not is_remote(url) else _info(url).type == pafs.FileType.File


def is_dir(url: str) -> bool:
    return os.path.isdir(url) if not is_remote(url) else _info(url).type == pafs.FileType.Directory


def size(url: str) -> int:
    return os.path.getsize(url) if not is_remote(url) else _info(url).size


def list_files(folder: str, suffix: str) -> list[str]:
    """The files directly in ``folder`` whose names end in ``suffix``, sorted ([] for a missing folder)."""
    if not is_remote(folder):
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(suffix)) if os.path.isdir(folder) else []
    fs, path = filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise SignfeatError(f"{folder}: cannot reach the object store ({str(exc).splitlines()[0]})") from None
    return sorted(join(folder, posixpath.basename(i.path)) for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def subfolders(folder: str) -> list[str]:
    """Names of the folders directly in ``folder``."""
    if not is_remote(folder):
        return sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))) if os.path.isdir(folder) else []
    fs, path = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)


def open_random(url: str) -> IO[bytes]:
    """A seekable file: tarfile's ``r:`` mode seeks over the members it does not read (a ranged read each on
    an object store)."""
    if not is_remote(url):
        return open(url, "rb")
    fs, path = filesystem(url)
    return fs.open_input_file(path)


def open_stream(url: str) -> IO[bytes]:
    """The file read front to back (buffered; one request on an object store)."""
    if not is_remote(url):
        return open(url, "rb")
    fs, path = filesystem(url)
    return fs.open_input_stream(path)


def read_table(url: str, columns: list[str]) -> pa.Table:
    import pyarrow.parquet as pq

    if not is_remote(url):
        return pq.read_table(url, columns=columns)
    fs, path = filesystem(url)
    return pq.read_table(path, columns=columns, filesystem=fs)
