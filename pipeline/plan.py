"""Shard planning: which clip goes into which shard, fixed up front from the manifest and the config.

Clips with status ``ok`` are grouped by split (a clip without one goes to ``nosplit``), kept in manifest
order, and cut into shards of at most ``samples`` clips and at most ``max_frames`` frames as the job decodes
them (frames are what feature bytes grow with). Same manifest + same shard and decode settings (the decode's
target_fps and max_frames set the frames counted) -> same shard names -> same keys, so a rerun can skip complete
shards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from manifests.schema import PARAMS_KIND, split_name_problem
from pipeline.config import ShardConfig
from pipeline.decode import TIMESTAMP_SLACK_S, resample_indices
from pipeline.errors import SignfeatError

NO_SPLIT = "nosplit"
# Manifest columns a shard needs (the rest stays in the manifest).
HASHED_FIELDS = ["id", "key", "dataset", "split", "signer", "text", "source_kind", "path", "start_s", "end_s", "fps", "num_frames", "content_hash"]
# bytes: the source's size when the manifest was built, checked before decoding (a file changed since is a failure,
# not a sample under the old row's text); not hashed, as it says nothing a sample is made from
ROW_FIELDS = [*HASHED_FIELDS, "bytes"]


@dataclass
class ShardPlan:
    name: str  # "{split}/{prefix}-{000000}"
    split: str
    rows: list[dict[str, Any]]


def planned_frames(row: dict[str, Any], decode: Any | None) -> int:
    """Frames the job will decode from a manifest row: its own count, resampled to ``decode.target_fps`` and
    capped at ``decode.max_frames`` (a parameters clip is not decoded: the job's decode options do not touch it)."""
    n = int(row.get("num_frames") or 0)
    if decode is None or row.get("source_kind") == PARAMS_KIND or n == 0:
        return n
    fps = row.get("fps")
    if not (decode.target_fps or decode.max_frames) or not (fps and fps > 0):
        return min(n, decode.max_frames) if decode.max_frames else n
    # the decode's own rule, on the frame times the probe's count and rate imply (k / fps): the instants inside
    # the clip, less the timestamps' precision for a video (a frame folder's times are exact)
    slack = 0.0 if row.get("source_kind") == "frames" else TIMESTAMP_SLACK_S
    return len(resample_indices(np.arange(n) / fps, decode.target_fps, decode.max_frames, 1.0 / fps, slack_s=slack)[0])


def plan_shards(manifest_rows: list[dict[str, Any]], shards: ShardConfig, decode: Any | None = None) -> list[ShardPlan]:
    """``decode`` (the job's DecodeOptions): ``shards.max_frames`` counts the frames the job will decode, so a job
    that thins clips out (target_fps, max_frames) fills its shards."""
    ok = [{k: r.get(k) for k in ROW_FIELDS} for r in manifest_rows if r.get("status") == "ok"]
    seen: dict[str, str] = {}
    for r in ok:
        if r["key"] in seen:
            raise SignfeatError(f"manifest has two ok clips with key {r['key']!r} (ids {seen[r['key']]!r}, {r['id']!r}); rebuild it with signfeat manifest build")
        seen[r["key"]] = r["id"]
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        split = r["split"] or NO_SPLIT
        problem = split_name_problem(split)
        if problem:
            raise SignfeatError(f"split name {split!r} of clip {r['id']!r} cannot be a folder of the output: {problem}")
        by_split.setdefault(split, []).append(r)
    plans: list[ShardPlan] = []
    for split in sorted(by_split):
        current: list[dict[str, Any]] = []
        frames = 0
        index = 0

        def close():
            nonlocal current, frames, index
            if current:
                plans.append(ShardPlan(f"{split}/{shards.prefix}-{index:06d}", split, current))
                index += 1
            current, frames = [], 0

        for r in by_split[split]:
            n = planned_frames(r, decode)
            if current and (len(current) >= shards.samples or (shards.max_frames is not None and frames + n > shards.max_frames)):
                close()
            current.append(r)
            frames += n
        close()
    return plans


def plan_hash(plans: list[ShardPlan]) -> str:
    """Hash of every row field a shard carries: each is written into the sample (id, key, text, signer, dataset,
    split, source) or decides its content (path, range, fps, content_hash), so a manifest that changes any of
    them (a corrected text...) is another job, not a resume that would keep the shards' stale values."""
    h = hashlib.sha256()
    for p in plans:
        for r in p.rows:
            h.update(json.dumps([p.name, {k: r.get(k) for k in HASHED_FIELDS}], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
