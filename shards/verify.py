"""``signfeat verify OUT``: check every shard against the job's config, index and plan; list every problem.

Checks: the job's own files readable; every sample made with the output's config (its JSON's job.config_hash); every planned shard complete and readable, no other ``.tar`` and no
half-written temporary file under OUT; each sample has its JSON (an object, whose id, split and num_frames
agree with index.parquet) and one ``.npy`` per stream, and no other member;
dtype and width per stream as the sample's own stream metadata says; rows per stream by its extractor's
rule (T = num_frames per frame, VideoMAE's window count, smplx623's T-1); all values finite; keys unique
across shards; counts, bytes and checksums equal index.parquet; every planned clip in exactly one of index / failures.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from manifests.schema import OUTPUT_FILES
from pipeline.errors import SignfeatError
from shards.reader import group_samples, iter_members
from shards.sample import load_npy, sample_checksum
from shards.store import _TEMP_NAME, Store


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


_COLUMNS = {"_signfeat/plan.parquet": ["shard", "key"], "index.parquet": ["shard", "key", "id", "split", "num_frames", "bytes", "checksum"],
            "failures.parquet": ["key", "split"]}


# the files every output has once its job has started (identity) and finished (the rest)
_JOB_FILES = ("_signfeat/identity.json", "_signfeat/plan.parquet", *OUTPUT_FILES)


class NotAnOutput(SignfeatError):
    """The path names no output at all (a typo, a file): a user error, not a damaged output."""


def _load(store: Store, out: str, name: str, columns: list[str] = ()) -> Any:
    """One of the job's own files (JSON or Parquet), or a SignfeatError saying which file is missing or damaged:
    a user handed a damaged output gets a line naming the file, not a pyarrow / json traceback."""
    if not store.exists(name):
        has_record = store.exists("_signfeat/identity.json")
        if not has_record and not store.list_files(""):
            if "://" not in out and Path(out).is_file():
                raise NotAnOutput(f"{out} is a file; give the folder `signfeat extract --out` wrote")
            raise NotAnOutput(f"{out}: no such folder, or an empty one (not a signfeat extract output)")
        if not has_record and not any(store.exists(f) for f in _JOB_FILES):
            # a folder holding none of the job's files (a parent folder, a corpus): a wrong path, not a damaged output
            raise NotAnOutput(f"{out} holds no signfeat extract output (no _signfeat/identity.json, index.parquet or job.json); "
                              "give the folder `signfeat extract --out` wrote")
        if not has_record and name.startswith("_signfeat/") and not store.list_files("_signfeat"):
            # DESIGN.md names the shards and the three tables as the output: copied as that, it lost the record
            raise NotAnOutput(f"{out} has no _signfeat/ folder, the job's record (its plan, config hash and completion markers) "
                              "that the shards are checked against: an output copied without it? copy the whole folder, "
                              "_signfeat/ included (the trainer reads such shards: index.parquet lists them)")
        if has_record and name in ("_signfeat/plan.parquet", "index.parquet", "failures.parquet", "job.json"):
            raise SignfeatError(f"{out}: missing {name}: the job did not finish (killed, or still running); "
                                "rerun the `signfeat extract` command without --overwrite to complete it (complete shards are kept; "
                                "--overwrite deletes them)")
        raise SignfeatError(f"{out}: missing {name} (not a finished signfeat extract output?)")
    try:
        if name.endswith(".json"):
            obj = store.read_json(name)
            if not isinstance(obj, dict):
                raise ValueError(f"a JSON {type(obj).__name__}, not an object")
            return obj
        table = store.read_table(name)
    except (OSError, ValueError) as exc:  # pa.ArrowInvalid and json.JSONDecodeError are ValueErrors
        raise SignfeatError(f"{out}: {name} is unreadable: {exc}") from None
    absent = [c for c in [*_COLUMNS.get(name, []), *columns] if c not in table.column_names]
    if absent:
        raise SignfeatError(f"{out}: {name} lacks columns {absent}")
    return table


def _streams(identity: dict, out: str) -> list[str]:
    streams = identity.get("streams")
    if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
        raise SignfeatError(f"{out}: _signfeat/identity.json lists no streams")
    return streams


def _config_hash(identity: dict, out: str) -> str:
    config_hash = identity.get("config_hash")
    if not isinstance(config_hash, str) or not config_hash:
        raise SignfeatError(f"{out}: _signfeat/identity.json records no config_hash")
    return config_hash


def _same_seconds(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return abs(float(a) - float(b)) <= 1e-6
    except (TypeError, ValueError):
        return False


def _stream_problem(meta: Any, stream: str) -> str | None:
    """Why the sample JSON's record of a stream cannot be checked against, or None."""
    smeta = meta.get("streams", {}).get(stream) if isinstance(meta.get("streams"), dict) else None
    if not isinstance(smeta, dict):
        return f"json has no metadata for stream {stream}"
    absent = [k for k in ("dtype", "width") if k not in smeta]
    return f"json metadata of stream {stream} lacks {absent}" if absent else None


def verify(out: str, max_problems: int = 200) -> dict[str, Any]:
    import io
    import json

    store = Store(out)
    store.check_reachable()
    problems: list[str] = []
    stream_hashes: dict[str, tuple[Any, str]] = {}  # stream -> (settings_hash, where) of the first sample read
    total = 0  # problems found; only the first max_problems are listed

    def problem(msg: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < max_problems:
            problems.append(msg)

    try:
        identity = _load(store, out, "_signfeat/identity.json")
        streams = _streams(identity, out)
        config_hash = _config_hash(identity, out)
        plan = _load(store, out, "_signfeat/plan.parquet").to_pylist()
        index_rows = _load(store, out, "index.parquet", [f"len_{s}" for s in streams]).to_pylist()
        failures = _load(store, out, "failures.parquet").to_pylist()
        job = _load(store, out, "job.json")
    except SignfeatError as exc:
        return {"ok": False, "problems": [str(exc)], "samples": 0, "not_an_output": isinstance(exc, NotAnOutput)}
    # job.json is where people read a job's counts: an edited or stale one passed as long as it parsed
    if not isinstance(job, dict):
        problem(f"job.json holds a {type(job).__name__}, not the job's record")
    else:
        frames = sum(int(r.get("num_frames") or 0) for r in index_rows)
        for name, held, table in (("clips_planned", len(plan), "the plan"), ("shards", len({r["shard"] for r in plan}), "the plan"),
                                  ("samples", len(index_rows), "index.parquet"), ("frames", frames, "index.parquet"),
                                  ("failures", len(failures), "failures.parquet")):
            if job.get(name) != held:
                problem(f"job.json says {name} {job.get(name)!r}, {table} holds {held}")
        for name in ("config_hash", "plan_hash"):
            if job.get(name) != identity.get(name):
                problem(f"job.json says {name} {job.get(name)!r}, _signfeat/identity.json {identity.get(name)!r}")
    index = {r["key"]: r for r in index_rows}
    for key, n in Counter(r["key"] for r in index_rows).items():
        if n > 1:  # the dict above keeps one of them: say so, or a doubled row passes unseen
            problem(f"index.parquet lists key {key} {n} times")
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
    index_keys_of: dict[str, list[str]] = {}  # shard -> its keys in the index, grouped once (a scan per shard was O(shards x samples))
    for k, r in index.items():
        index_keys_of.setdefault(r["shard"], []).append(k)
    for shard in shards:
        if not store.exists(Store.marker(shard)):
            problem(f"shard {shard}: not complete (no completion marker)")
            continue
        if not store.exists(f"{shard}.tar"):
            problem(f"shard {shard}: {shard}.tar is missing (its completion marker exists)")
            continue
        try:
            marker = store.read_json(Store.marker(shard))
        except (OSError, ValueError) as exc:
            marker = exc
        if not isinstance(marker, dict):  # a rerun writes such a shard again (Store.shard_is_complete)
            problem(f"shard {shard}: its completion marker {Store.marker(shard)} is damaged "
                    f"({marker if isinstance(marker, Exception) else 'not a JSON object'}); rerun the same command to write the shard again")
            marker = {}
        try:
            data = store.read_bytes(f"{shard}.tar")
            recorded = marker.get("bytes")
            if marker and len(data) != recorded:  # what a rerun checks before it skips a shard (Store.shard_is_complete)
                problem(f"shard {shard}: {shard}.tar is {len(data)} bytes, its completion marker says {recorded}")
            samples = list(group_samples(iter_members(io.BytesIO(data))))
        except Exception as exc:
            problem(f"shard {shard}: unreadable tar: {exc}")
            continue
        in_index = index_keys_of.get(shard, [])
        if len(samples) != len(in_index):
            problem(f"shard {shard}: {len(samples)} samples in the tar, {len(in_index)} in index.parquet")
        for key, members in samples:
            seen[key] += 1
            where = f"{shard}:{key}"
            row = index.get(key)
            if row is None:
                problem(f"{where}: sample not in index.parquet")
                continue
            if row["shard"] != shard:  # two shards swapped (or one copied over another): the index would misplace it
                problem(f"{where}: index.parquet places it in shard {row['shard']}")
            expected = ["json", *(f"{s}.npy" for s in streams)]
            missing = [m for m in expected if m not in members]
            if missing:
                problem(f"{where}: missing members {missing}")
                continue
            extra = sorted(set(members) - set(expected))
            if extra:  # webdataset readers would hand them to training as they are
                problem(f"{where}: unexpected members {extra}")
            if sample_checksum(members) != row["checksum"] or sum(len(v) for v in members.values()) != row["bytes"]:
                problem(f"{where}: checksum or size differs from index.parquet")
            try:
                meta = json.loads(members["json"])
                if not isinstance(meta, dict):
                    raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                problem(f"{where}: json member unreadable: {exc}")
                continue
            if meta.get("key") != key:
                problem(f"{where}: json key {meta.get('key')!r} differs from the member name")
            # a shard copied in from another job's output (another config) would mix features of two configs
            made_with = meta.get("job", {}).get("config_hash") if isinstance(meta.get("job"), dict) else None
            if made_with != config_hash:
                problem(f"{where}: made with config hash {made_with!r}, this output's is {config_hash!r} (_signfeat/identity.json)")
            # index.parquet's own columns are what `signfeat stats` and the trainer's shard counts read
            for col in ("id", "split", "num_frames"):
                if meta.get(col) != row.get(col):
                    problem(f"{where}: json {col} {meta.get(col)!r} differs from index.parquet ({row.get(col)!r})")
            if "duration_s" in meta and not _same_seconds(meta["duration_s"], row.get("duration_s")):  # stats' hours (older outputs lack it)
                problem(f"{where}: json duration_s {meta['duration_s']!r} differs from index.parquet ({row.get('duration_s')!r})")
            for s in streams:
                try:
                    arr = load_npy(members[f"{s}.npy"])
                except Exception as exc:
                    problem(f"{where}: {s}.npy unreadable without pickle: {exc}")
                    continue
                why = _stream_problem(meta, s)
                if why is not None:
                    problem(f"{where}: {why}")
                    continue
                smeta = meta["streams"][s]
                # one model per stream: a job resumed over a local checkpoint whose files changed made the rest of
                # its shards with another model under the same config hash
                first_hash = stream_hashes.setdefault(s, (smeta.get("settings_hash"), where))
                if smeta.get("settings_hash") != first_hash[0]:
                    problem(f"{where}: {s} made with settings hash {smeta.get('settings_hash')!r}, {first_hash[1]}'s with {first_hash[0]!r}: "
                            "two models' features in one output (a local checkpoint changed between runs?)")
                if str(arr.dtype) != smeta["dtype"] or arr.ndim != 2 or arr.shape[1] != smeta["width"]:
                    problem(f"{where}: {s} is {arr.dtype} {arr.shape}, expected {smeta['dtype']} [*, {smeta['width']}]")
                    if arr.ndim == 0 or arr.dtype.kind != "f":  # no rows to count, or no values to test for finiteness
                        continue
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
    # files the plan does not name: a renamed or copied shard is read by anything globbing {split}/*.tar (the
    # trainer does), so its samples would be trained on twice or from the wrong split, and a .tar in the folder
    # of a split the plan does not have (OUT/dev/ when it has no dev) is that split to the trainer; a half-written
    # temporary means a run was killed after this output was finished
    # (a user's other files under OUT, which --overwrite keeps, are not the output's business)
    files = store.list_files("")
    for rel in files:
        if _TEMP_NAME.search(rel) and Store._ours(_TEMP_NAME.sub("", rel), set(shards)):
            problem(f"{rel}: half-written temporary file of an interrupted run")
    for rel in tars_not_in_plan(files, shards):
        problem(f"{rel}: {NOT_IN_PLAN}; anything globbing {{split}}/*.tar reads it as split {rel.split('/')[0]!r}")
    for key, n in seen.items():
        if n > 1:
            problem(f"key {key} appears in {n} samples across shards")
    for key in index:
        if key not in seen:
            problem(f"index.parquet lists {key} but no shard holds it")
    notes = key_notes(list(seen))
    if not seen and len(failures):  # whole, but nothing to train on (extract exits 1 for it)
        notes.append(f"no samples: every one of the {len(failures)} clips failed; failures.parquet says why")
    return {"ok": not problems, "problems": problems, "problems_total": total, "samples": sum(seen.values()), "failures": len(failures),
            "shards": len(shards), "notes": notes}


NOT_IN_PLAN = "shard not in the plan (renamed, copied or left from another job?)"


def tars_not_in_plan(files: list[str], shards: list[str]) -> list[str]:
    """The .tar files (of ``files``, paths under OUT) in a split folder that the plan's ``shards`` do not name."""
    planned_files = {f"{shard}.tar" for shard in shards}
    # the plan's split folders, and those of the splits manifests normalise to (a trainer asks for them)
    split_folders = {shard.rsplit("/", 1)[0] for shard in shards if "/" in shard} | {"train", "dev", "test"}
    return [rel for rel in files if rel.endswith(".tar") and rel.count("/") == 1 and rel.split("/")[0] in split_folders
            and rel not in planned_files and not _TEMP_NAME.search(rel)]


def key_notes(keys: list[str]) -> list[str]:
    """Keys an older signfeat gave that other readers mishandle (not problems of the output): a key starting
    with ``__`` is a hidden file to HuggingFace ``datasets``, which skips it; keys equal but for case are one
    file when extracted on a case-insensitive file system. Rebuilding the manifest gives new keys."""
    notes = []
    hidden = sorted(k for k in keys if k.startswith("__"))
    if hidden:
        notes.append(f"{len(hidden)} keys start with '__' ({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}): HuggingFace datasets "
                     "skips them as hidden files; a manifest built by this signfeat gives them other keys")
    folded = Counter(k.lower() for k in keys)
    clashes = sorted(k for k in keys if folded[k.lower()] > 1)
    if clashes:
        notes.append(f"{len(clashes)} keys differ from another only by case ({', '.join(clashes[:4])}{', ...' if len(clashes) > 4 else ''}): "
                     "`tar xf` on a case-insensitive file system writes them to one file; a manifest built by this signfeat gives "
                     "them other keys")
    return notes


def _unfinished_run(store: Store, job: dict) -> dict | None:
    """The run that owns OUT now (``_signfeat/run.json``) when it is not the one job.json records last: a rerun that
    is going on, or was stopped, rewriting shards under tables of the run before (stats printed those as the
    output's, exit 0). None when they agree, or for job.json of a signfeat that did not record run ids."""
    runs = job.get("runs")
    last = runs[-1].get("run_id") if isinstance(runs, list) and runs and isinstance(runs[-1], dict) else None
    try:
        owner = store.read_json("_signfeat/run.json")
    except (OSError, ValueError):
        return None
    if not last or not isinstance(owner, dict) or owner.get("run_id") in (None, last):
        return None
    return {k: owner.get(k) for k in ("run_id", "host", "pid", "started")}


def stats(out: str) -> dict[str, Any]:
    """Counts, hours, frames and bytes per split and stream, from index.parquet and job.json."""
    store = Store(out)
    store.check_reachable()
    streams = _streams(_load(store, out, "_signfeat/identity.json"), out)
    index = _load(store, out, "index.parquet", [f"len_{s}" for s in streams] + ["duration_s"]).to_pandas()
    failures = _load(store, out, "failures.parquet").to_pandas()
    plan = _load(store, out, "_signfeat/plan.parquet").to_pandas()
    per_split = {}
    # every split with a sample or a failure: a split whose clips all failed is a row too, so the rows add up to the totals
    for split in sorted(set(index["split"]) | set(failures["split"]), key=str):
        g = index[index["split"] == split]
        entry = {"samples": int(len(g)), "failures": int((failures["split"] == split).sum()), "hours": float(g["duration_s"].sum() / 3600),
                 "frames": int(g["num_frames"].sum()), "bytes": int(g["bytes"].sum())}
        for s in streams:
            entry[f"{s}_rows"] = int(g[f"len_{s}"].sum())
        per_split[str(split)] = entry
    job = _load(store, out, "job.json")
    # stats reads the tables, not the shards: it can still tell when they do not add up to the plan
    unaccounted = len(set(plan["key"]) - set(index["key"]) - set(failures["key"]))
    in_both = len(set(index["key"]) & set(failures["key"]))
    return {"splits": per_split, "streams": streams, "samples": int(len(index)), "failures": int(len(failures)), "planned": int(len(plan)),
            "unaccounted": unaccounted, "in_both": in_both, "unfinished_run": _unfinished_run(store, job),
            "frames": int(index["num_frames"].sum()) if len(index) else 0, "bytes": int(index["bytes"].sum()) if len(index) else 0,
            "hours": float(index["duration_s"].sum() / 3600) if len(index) else 0.0, "wall_s": job.get("wall_s")}
