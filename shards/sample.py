"""One sample = tar members sharing a key: ``KEY.json`` and ``KEY.<stream>.npy`` per stream (README, "The extraction job")."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_sample(key: str, meta: dict[str, Any], streams: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Member suffix -> bytes. ``json`` first, then streams in name order (so checksums are stable)."""
    members = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")}
    for name in sorted(streams):
        members[f"{name}.npy"] = npy_bytes(streams[name])
    return members


def sample_checksum(members: dict[str, bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for suffix in sorted(members):
        h.update(suffix.encode() + b"\0" + len(members[suffix]).to_bytes(8, "little") + members[suffix])
    return h.hexdigest()
