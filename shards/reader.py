"""A small reader of signfeat shards for training and inspection: plain ``tarfile``, no pickle.

    for sample in read_samples("OUT/train/shard-000000.tar"):
        sample["key"], sample["json"]["text"], sample["clip_s2"]  # float16 [T, 2048]
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any, Iterator

from shards.sample import load_npy


def member_key(name: str) -> tuple[str, str]:
    """A member name -> (key, suffix). The key is the name up to the first dot of its last component, folders
    included, as webdataset keys it (``a/b.c.npy`` -> ``a/b``, ``c.npy``): dropping the folder would make this
    reader, and so ``signfeat verify``, see other keys than the trainer's webdataset."""
    folder, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{folder}/{key}" if folder else key), suffix


def iter_members(fileobj) -> Iterator[tuple[str, str, bytes]]:
    """(key, suffix, bytes) for each file member, in tar order (keys as ``member_key`` makes them). ``fileobj``
    must be seekable: the tar must end on its end-of-archive block, checked there (see below)."""
    # "r|": an uncompressed tar, as signfeat writes and the trainer reads (a gzip named .tar is not a shard)
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                yield *member_key(member.name), tar.extractfile(member).read()
        end = tar.offset
    check_archive_end(fileobj, end)


def check_archive_end(fileobj, end: int) -> None:
    """Refuse a tar whose members stop at byte ``end`` (where tarfile stopped reading: ``tar.offset``) on anything but
    its end-of-archive block. tarfile ends an archive, without an error, at the first header it cannot read past the
    first one (a damaged header, a tar cut between two samples) or at the first block of zeros (a header zeroed by a
    crash): either read as a whole, shorter shard. A tar ends with zero blocks and zero padding only, so from there on
    every byte is zero, and at least one block of them is there."""
    fileobj.seek(end)
    rest = fileobj.read(tarfile.BLOCKSIZE)
    whole = len(rest) == tarfile.BLOCKSIZE and not rest.strip(tarfile.NUL)
    while whole and (block := fileobj.read(1 << 20)):
        whole = not block.strip(tarfile.NUL)
    if not whole:
        raise ValueError(f"no readable tar header or end-of-archive block at byte {end}: the shard is damaged or cut off "
                         "there, and what follows cannot be read; run signfeat verify")


def group_samples(members: Iterator[tuple[str, str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members of one key -> (key, {suffix: bytes}). A member repeated within a sample is an error,
    as webdataset makes it: keeping one of the two would hide a damaged shard."""
    key, group = None, {}
    for k, suffix, data in members:
        if key is not None and k != key:
            yield key, group
            group = {}
        key = k
        if suffix in group:
            raise ValueError(f"sample {key}: member {key}.{suffix} appears twice")
        group[suffix] = data
    if key is not None:
        yield key, group


def decode_sample(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """One sample's members -> {key, json, one array per stream}. A sample without its json, or without a
    stream its json lists, is an error: a tar cut short ends on such a sample, and handing it back would pass
    the damage on (``signfeat verify`` finds the shards that lost whole samples)."""
    if "json" not in members:
        raise ValueError(f"sample {key}: no {key}.json member (has {sorted(members)}): a damaged or cut-off shard; run signfeat verify")
    meta = json.loads(members["json"])
    streams = meta.get("streams") if isinstance(meta, dict) else None
    missing = [f"{key}.{name}.npy" for name in (streams or {}) if f"{name}.npy" not in members]
    if missing:
        raise ValueError(f"sample {key}: its json lists streams whose members are missing: {missing}; run signfeat verify")
    sample: dict[str, Any] = {"key": key}
    for suffix, data in members.items():
        if suffix == "json":
            sample["json"] = json.loads(data)
        elif suffix.endswith(".npy"):
            sample[suffix[: -len(".npy")]] = load_npy(data)
    return sample


def read_samples(path_or_bytes) -> Iterator[dict[str, Any]]:
    """Samples of one shard: a local path, or the shard's bytes. Each sample is whole (``decode_sample``)."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        yield from (decode_sample(k, m) for k, m in group_samples(iter_members(io.BytesIO(path_or_bytes))))
        return
    with open(path_or_bytes, "rb") as f:
        yield from (decode_sample(k, m) for k, m in group_samples(iter_members(f)))
