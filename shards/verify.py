"""``signfeat verify OUT``: check every shard against the job's config, index and plan; list every problem.

Checks: every planned shard complete and readable; each sample has its JSON and one ``.npy`` per stream;
dtype and width per stream as the sample's own stream metadata says; rows per stream by its extractor's
rule (T = num_frames per frame, VideoMAE's window count, smplx623's T-1); all values finite; keys unique
across shards; counts, bytes and checksums equal index.parquet; every planned clip in exactly one of index / failures.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from shards.reader import group_samples, iter_members
from shards.sample import load_npy, sample_checksum
from shards.store import Store


def expected_length(stream: str, num_frames: int, meta: dict[str, Any]) -> int | None:
    """Rows the stream's array must have, by the extractor's own rule (``Extractor.expected_rows``: one per
    frame, VideoMAE's window count, smplx623's T-1) from the settings the sample JSON records; None when
    the extractor is unknown here (then only width and finiteness are checked)."""
    cls = _extractor_class(str(meta.get("extractor", stream)))
    return None if cls is None else cls.expected_rows(num_frames, meta.get("settings") or {})


def _extractor_class(name: str):
    """The registered extractor class of that name (the built-ins register on import), or None."""
    from extractors.base import REGISTRY  # importing the package registers every built-in extractor

    return REGISTRY.get(name)


def verify(out: str, max_problems: int = 200) -> dict[str, Any]:
    import io
    import json

    store = Store(out)
    problems: list[str] = []

    def problem(msg: str) -> None:
        if len(problems) < max_problems:
            problems.append(msg)

    for name in ("_signfeat/identity.json", "_signfeat/plan.parquet", "index.parquet", "failures.parquet", "job.json"):
        if not store.exists(name):
            return {"ok": False, "problems": [f"{out}: missing {name} (not a finished signfeat extract output?)"], "samples": 0}
    identity = store.read_json("_signfeat/identity.json")
    streams = identity["streams"]
    plan = store.read_table("_signfeat/plan.parquet").to_pylist()
    index = {r["key"]: r for r in store.read_table("index.parquet").to_pylist()}
    failures = store.read_table("failures.parquet").to_pylist()
    failed_keys = Counter(r["key"] for r in failures)
    planned_keys = Counter(r["key"] for r in plan)
    for key, n in planned_keys.items():
        if n > 1:
            problem(f"plan lists key {key} {n} times")
        placed = (key in index) + failed_keys.get(key, 0)
        if placed != 1:
            problem(f"clip {key}: in index {int(key in index)}x and in failures {failed_keys.get(key, 0)}x (must be exactly once)")
    for key in set(index) | set(failed_keys):
        if key not in planned_keys:
            problem(f"key {key} is in the output but not in the plan")

    seen: Counter = Counter()
    shards = sorted({r["shard"] for r in plan})
    for shard in shards:
        if not store.exists(Store.marker(shard)):
            problem(f"shard {shard}: not complete (no completion marker)")
            continue
        try:
            data = store.read_bytes(f"{shard}.tar")
            samples = list(group_samples(iter_members(io.BytesIO(data))))
        except Exception as exc:
            problem(f"shard {shard}: unreadable tar: {exc}")
            continue
        in_index = [k for k, r in index.items() if r["shard"] == shard]
        if len(samples) != len(in_index):
            problem(f"shard {shard}: {len(samples)} samples in the tar, {len(in_index)} in index.parquet")
        for key, members in samples:
            seen[key] += 1
            where = f"{shard}:{key}"
            row = index.get(key)
            if row is None:
                problem(f"{where}: sample not in index.parquet")
                continue
            missing = [m for m in ["json", *(f"{s}.npy" for s in streams)] if m not in members]
            if missing:
                problem(f"{where}: missing members {missing}")
                continue
            if sample_checksum(members) != row["checksum"] or sum(len(v) for v in members.values()) != row["bytes"]:
                problem(f"{where}: checksum or size differs from index.parquet")
            meta = json.loads(members["json"])
            if meta.get("key") != key:
                problem(f"{where}: json key {meta.get('key')!r} differs from the member name")
            for s in streams:
                try:
                    arr = load_npy(members[f"{s}.npy"])
                except Exception as exc:
                    problem(f"{where}: {s}.npy unreadable without pickle: {exc}")
                    continue
                smeta = meta["streams"][s]
                if str(arr.dtype) != smeta["dtype"] or arr.ndim != 2 or arr.shape[1] != smeta["width"]:
                    problem(f"{where}: {s} is {arr.dtype} {arr.shape}, expected {smeta['dtype']} [*, {smeta['width']}]")
                try:
                    want = expected_length(s, int(meta["num_frames"]), smeta)
                except Exception as exc:  # a num_frames the rule cannot take (0 frames for VideoMAE...)
                    problem(f"{where}: {s}: no expected length for num_frames={meta.get('num_frames')!r}: {exc}")
                    want = None
                if want is not None and arr.shape[0] != want:
                    problem(f"{where}: {s} has {arr.shape[0]} rows, expected {want} for {meta['num_frames']} frames")
                if arr.shape[0] != row.get(f"len_{s}"):
                    problem(f"{where}: {s} length {arr.shape[0]} differs from index.parquet ({row.get(f'len_{s}')})")
                if not np.isfinite(arr.astype(np.float32)).all():
                    problem(f"{where}: {s} has non-finite values")
    for key, n in seen.items():
        if n > 1:
            problem(f"key {key} appears in {n} samples across shards")
    for key in index:
        if key not in seen:
            problem(f"index.parquet lists {key} but no shard holds it")
    return {"ok": not problems, "problems": problems, "samples": sum(seen.values()), "failures": len(failures), "shards": len(shards)}


def stats(out: str) -> dict[str, Any]:
    """Counts, hours, frames and bytes per split and stream, from index.parquet and job.json."""
    store = Store(out)
    if not store.exists("index.parquet"):
        raise FileNotFoundError(f"{out}: no index.parquet (not a finished signfeat extract output?)")
    index = store.read_table("index.parquet").to_pandas()
    failures = store.read_table("failures.parquet").to_pandas()
    streams = store.read_json("_signfeat/identity.json")["streams"]
    plan = store.read_table("_signfeat/plan.parquet").to_pandas()
    per_split = {}
    for split, g in index.groupby("split"):
        entry = {"samples": int(len(g)), "failures": int((failures["split"] == split).sum()), "hours": float(g["duration_s"].sum() / 3600),
                 "frames": int(g["num_frames"].sum()), "bytes": int(g["bytes"].sum())}
        for s in streams:
            entry[f"{s}_rows"] = int(g[f"len_{s}"].sum())
        per_split[str(split)] = entry
    job = store.read_json("job.json")
    return {"splits": per_split, "streams": streams, "samples": int(len(index)), "failures": int(len(failures)), "planned": int(len(plan)),
            "frames": int(index["num_frames"].sum()) if len(index) else 0, "bytes": int(index["bytes"].sum()) if len(index) else 0,
            "hours": float(index["duration_s"].sum() / 3600) if len(index) else 0.0, "wall_s": job.get("wall_s")}
