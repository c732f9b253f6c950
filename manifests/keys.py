"""Manifest ids <-> WebDataset-safe sample keys.

WebDataset groups tar members into samples by the part of the file name before the first dot, so a
key may hold no dot; we also keep it to ``[A-Za-z0-9_-]`` so it is a safe file name everywhere.

Encoding (reversible and collision-free, readable for the ids real corpora use):
- ``A-Z a-z 0-9 -`` stay as they are;
- ``_`` becomes ``__`` (the underscore is the escape character, so a literal one is doubled), except as the
  first character: ``_5f`` there, since readers take names starting ``__`` for hidden files (HuggingFace
  ``datasets`` skipped such samples without a word);
- every other character becomes ``_`` + two lowercase hex digits per UTF-8 byte (``.`` -> ``_2e``).
- ``escape_letters=True`` also writes letters as escapes (``Case`` -> ``_43_61_73_65``): a manifest gives that
  key to an id whose plain key differs from an earlier one's only by case (``Case`` after ``case``), which a
  case-insensitive file system (macOS, Windows: ``tar xf``) would write to one file. Such a key holds no
  letter outside its (lowercase) escapes, so it cannot equal another key of the manifest when both are
  lowercased: a plain key that did would decode to the same id with its letters lowercased, yet hold letters. A key that Windows
  reserves as a device name (``CON``, ``nul``, ``COM1``...) has its first character escaped. A leading ``-``
  stays (How2Sign's ids begin with one): shell globs over extracted samples need ``./*``.

Decoding reads ``__`` as ``_`` and ``_hh`` as a byte, so ``id_from_key(key_from_id(x)) == x`` for every
non-empty id up to ``MAX_KEY`` characters of key, which makes the map injective: two ids can never share a key
(longer ones: below).

A key longer than ``MAX_KEY`` characters (27 Chinese characters already make 243: nine per character) would
give member names over the 255 bytes a file name may have (``tar xf`` fails on them): it keeps its first
characters (never half an escape) and ends in ``_h`` + 16 hex digits of the id's SHA-256. ``_h`` is no escape,
so such a key cannot equal an encoded one; it is not decoded (the sample's JSON holds the id).
"""

from __future__ import annotations

import hashlib
import re

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_KEY_RE = re.compile(r"^(?:[A-Za-z0-9-]|__|_[0-9a-f]{2})+$")
MAX_KEY = 200  # + ".{stream}.npy" stays under 255 bytes
_HASHED = 18  # "_h" + 16 hex digits


_WINDOWS_DEVICES = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))])


def _escape(ch: str) -> list[str]:
    return [f"_{b:02x}" for b in ch.encode("utf-8")]


def key_from_id(clip_id: str, escape_letters: bool = False) -> str:
    if not isinstance(clip_id, str) or clip_id == "":
        raise ValueError(f"a clip id must be a non-empty string, got {clip_id!r}")
    out: list[str] = []
    for ch in clip_id:
        if ch in _PLAIN and not (escape_letters and ch.isalpha()):
            out.append(ch)
        elif ch == "_":
            out.append("__" if out else "_5f")
        else:
            out.extend(_escape(ch))
    if clip_id.lower() in _WINDOWS_DEVICES:  # plain letters and digits only, so out is one piece per character
        out[0:1] = _escape(clip_id[0])
    key = "".join(out)
    if len(key) <= MAX_KEY:
        return key
    head, size = [], 0
    for piece in out:  # whole escapes only
        if size + len(piece) > MAX_KEY - _HASHED:
            break
        head.append(piece)
        size += len(piece)
    return "".join(head) + "_h" + hashlib.sha256(clip_id.encode("utf-8")).hexdigest()[:16]


def case_safe_keys(ids: list[str]) -> list[str]:
    """``key_from_id`` of each id, with ``escape_letters`` for an id whose key differs from an earlier one's only
    by case (the same id twice keeps one key: that is a duplicate, not a clash)."""
    keys, first = [], {}
    for clip_id in ids:
        key = key_from_id(clip_id)
        if first.setdefault(key.lower(), key) != key:
            key = key_from_id(clip_id, escape_letters=True)
        keys.append(key)
    return keys


def id_from_key(key: str) -> str:
    if len(key or "") > MAX_KEY - _HASHED and re.search(r"_h[0-9a-f]{16}$", key) and _KEY_RE.match(key[:-_HASHED]):
        raise ValueError(f"key {key[:40]}...: a long id's shortened key, not decodable (the sample's JSON holds the id)")
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
