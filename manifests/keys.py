"""Manifest ids <-> WebDataset-safe sample keys.

WebDataset groups tar members into samples by the part of the file name before the first dot, so a
key may hold no dot; we also keep it to ``[A-Za-z0-9_-]`` so it is a safe file name everywhere.

Encoding (reversible and collision-free, readable for the ids real corpora use):
- ``A-Z a-z 0-9 -`` stay as they are;
- ``_`` becomes ``__`` (the underscore is the escape character, so a literal one is doubled);
- every other character becomes ``_`` + two lowercase hex digits per UTF-8 byte (``.`` -> ``_2e``).

Decoding reads ``__`` as ``_`` and ``_hh`` as a byte, so ``id_from_key(key_from_id(x)) == x`` for every
string, which makes the map injective: two ids can never share a key.
"""

from __future__ import annotations

import re

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_KEY_RE = re.compile(r"^(?:[A-Za-z0-9-]|__|_[0-9a-f]{2})+$")


def key_from_id(clip_id: str) -> str:
    if not isinstance(clip_id, str) or clip_id == "":
        raise ValueError(f"a clip id must be a non-empty string, got {clip_id!r}")
    out: list[str] = []
    for ch in clip_id:
        if ch in _PLAIN:
            out.append(ch)
        elif ch == "_":
            out.append("__")
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def id_from_key(key: str) -> str:
    if not _KEY_RE.match(key or ""):
        raise ValueError(f"not a signfeat sample key: {key!r}")
    raw = bytearray()
    i = 0
    while i < len(key):
        ch = key[i]
        if ch != "_":
            raw.append(ord(ch))
            i += 1
        elif key[i + 1] == "_":
            raw.append(ord("_"))
            i += 2
        else:
            raw.append(int(key[i + 1 : i + 3], 16))
            i += 3
    return raw.decode("utf-8")
