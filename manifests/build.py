"""``signfeat manifest build``: annotation files -> parsed rows -> probed on Ray -> one Parquet manifest."""

from __future__ import annotations

import collections
import os
import unicodedata
from pathlib import Path
from typing import Any

from manifests import formats
from manifests.keys import case_safe_keys
from manifests.probe import PROBED, probe_rows
from manifests.schema import SCHEMA_VERSION, rows_to_table, write_manifest
from pipeline.decode import rates_differ
from pipeline.errors import SignfeatError, refuse_output_over_input


def parse_annotations(annotations: list[Path], fmt: str, root: Path, dataset: str | None = None) -> list[dict[str, Any]]:
    if fmt not in formats.FORMATS:
        raise SignfeatError(f"unknown annotation format {fmt!r}; choose one of {', '.join(formats.FORMATS)}")
    if not annotations:
        raise SignfeatError("give at least one annotation file (--annotations)")
    for a in annotations:
        if not a.is_file():
            raise SignfeatError(f"annotation file not found: {a}")
    if not root.is_dir():
        raise SignfeatError(f"corpus root is not a folder: {root}")
    video_index = None
    rows: list[dict[str, Any]] = []
    for annotation in annotations:
        kind = formats.sniff_format(annotation) if fmt == "auto" else fmt
        if kind == "how2sign" and video_index is None:
            video_index = formats.index_videos(root)
        try:
            # every row knows where it was written (FILE:LINE from the parsers; FILE at least), for duplicate ids
            rows.extend({"_where": str(annotation), **row} for row in formats.PARSERS[kind](annotation, root, dataset=dataset, video_index=video_index))
        except UnicodeDecodeError as exc:  # e.g. a table saved as Latin-1 / Windows-1252 by a spreadsheet
            raise SignfeatError(f"{annotation} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8") from None
    return rows


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.walk / os.listdir give undecodable bytes as lone surrogates
        return False


def _shown(text: str) -> str:
    """A name with bytes that are not UTF-8, those bytes escaped (``bad\\xffdir``): storable and printable."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def mark_duplicates(rows: list[dict[str, Any]]) -> None:
    """Keep the first row of an id; later ones become ``duplicate_id`` (reported, never merged). Ids are compared
    in Unicode NFC: "Müller" typed (NFC) and "Müller" from a macOS file name (NFD) look the same to every reader
    and would otherwise be two clips with different keys."""
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        same = unicodedata.normalize("NFC", row["id"]) if isinstance(row["id"], str) else row["id"]
        if same in first:
            if row["status"] is None:
                row["status"] = "duplicate_id"
                earlier = rows[first[same]]
                where = earlier.get("_where") or f"manifest row {first[same]}"  # FILE:LINE (a pickle's rows: its file)
                row["error"] = f"id {row['id']!r} already used at {where}" + (
                    " (the same text in another Unicode normal form)" if earlier["id"] != row["id"] else "")
        else:
            first[same] = i


def build_manifest(
    annotations: list[Path],
    out: Path,
    *,
    fmt: str = "auto",
    root: Path | None = None,
    dataset: str | None = None,
    num_cpus: int | None = None,
    full_decode: bool = False,
    frame_fps: float = 25.0,
    progress: bool = True,
) -> dict[str, Any]:
    annotations = [Path(a) for a in annotations]
    root = Path(root) if root is not None else (annotations[0].parent if annotations else Path("."))
    for given in [root, out, *annotations]:  # Ray (started for the probe) died on such a name with a traceback
        if not _is_utf8(str(given)):
            raise SignfeatError(f"{_shown(str(given))}: the path is not UTF-8 (bytes shown as \\x..); rename it")
    rows = parse_annotations(annotations, fmt, root.resolve(), dataset)
    keys = case_safe_keys([row["id"] for row in rows])  # no two keys that differ only by case
    for i, (row, key) in enumerate(zip(rows, keys)):
        row["_row"] = i
        row["key"] = key
        if row["path"]:
            row["path"] = str(Path(row["path"]).absolute())
        for column in ("path", "source", "error"):
            if row.get(column) and not _is_utf8(row[column]):
                # a file name with bytes that are not UTF-8 (Linux allows them) cannot be stored in Parquet: the whole
                # build died at the end. The row keeps the name with those bytes escaped, and says so.
                row[column] = shown = _shown(row[column])
                if row["status"] is None:
                    row["status"], row["error"] = "bad_path", f"{shown}: the file name is not UTF-8 (bytes shown as \\x..); rename it"
    mark_duplicates(rows)
    # --out naming a video (or parameter file) a row names as its path or its source (the raw video of a clip file)
    # replaced it with the manifest, exit 0; checked before the probe's minutes
    named = {r[column] for r in rows for column in ("path", "source") if isinstance(r.get(column), str) and r[column]}
    refuse_output_over_input("--out", out, sorted(named), what="{}, a file the annotations name")

    to_probe = [r for r in rows if r["path"] and r["status"] not in ("bad_annotation", "bad_path")]
    probed = probe_rows(to_probe, num_cpus=num_cpus, full_decode=full_decode, default_fps=frame_fps, progress=progress)
    other_rate = []  # ids of rows whose annotation gives an fps their source overrules (a video's own rate)
    for res in probed.to_pylist():
        row = rows[res["_row"]]
        annotation_error = (row["status"], row["error"])
        given_fps = row.get("fps")
        row.update({k: res[k] for k in PROBED})
        if given_fps and row["fps"] and rates_differ(given_fps, row["fps"]):
            other_rate.append(row["id"])
        if annotation_error[0] is not None:  # an annotation problem outranks what the probe found
            row["status"], row["error"] = annotation_error
    for row in rows:
        if row["status"] is None:
            row["status"], row["error"] = "bad_annotation", "row was not probed"

    build_info = {
        "annotations": [str(a.absolute()) for a in annotations],
        "format": fmt,
        "root": str(root.absolute()),
        "full_decode": full_decode,
        "frame_fps": frame_fps,
        "schema_version": SCHEMA_VERSION,
    }
    table = rows_to_table(rows, build_info)
    write_manifest(table, out)
    counts = collections.Counter(r["status"] for r in rows)
    summary = {"manifest": str(out), "rows": len(rows), "status": dict(sorted(counts.items()))}
    if other_rate:  # not refused (the clip is fine), but never dropped without a word
        summary["notes"] = [f"{len(other_rate)} row(s) give an fps that their video (or parameter file) overrules with its own rate, e.g. "
                            f"{', '.join(map(str, other_rate[:3]))}: the annotation's fps is used only for frame folders and files that record none"]
    return summary
