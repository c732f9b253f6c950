"""``signfeat extract``: a curated manifest -> WebDataset shards of features, on Ray.

The data flow, in one place:

    manifest ─► plan_shards (fixed up front) ─► claim OUT (_signfeat/identity.json: refuse another job's output;
        _signfeat/run.json: this run owns it) ─► delete temporaries a killed run left
        ─► skip complete shards (marker + tar of its size + parts, written by this config)
        ─► ray.data.from_items(one row per clip, in shard order)
        ─► map_batches(decode_prepare)        CPU tasks: decode + every stream's resize/crop (uint8)
        ─► map_batches(ExtractStream) × N     one actor pool per extractor, model loaded once (GPU or CPU);
                                              the last stream reading a frames column drops it
        ─► iter_rows() in order               the driver groups rows by shard and commits each shard
           (tar + index part + failures part + marker, see shards/store.py)
        ─► second pass: clips lost with a killed actor, one per call; their shards committed then
        ─► merge parts into index.parquet and failures.parquet, check every ok clip is in exactly one
           shard or one failure row, write job.json

Ray Data streams the rows with backpressure, retries tasks whose worker died, and restarts dead actors. Rows
come out in plan order (``preserve_order``), so the driver holds one shard's features at a time, plus the
rows of shards still waiting for a clip that a killed actor took along (they wait for the second pass).
"""

from __future__ import annotations

import collections
import errno
import contextlib
import dataclasses
import datetime
import io
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.schema import read_manifest
from pipeline.config import JobConfig, load_job_config
from pipeline.decode import DecodeOptions
from pipeline.errors import SignfeatError
from pipeline.plan import ShardPlan, plan_hash, plan_shards
from shards.sample import encode_sample, sample_checksum
from shards.store import Store
from shards.verify import tars_not_in_plan

log = logging.getLogger("signfeat.extract")
FAILURE_SCHEMA = pa.schema([("id", pa.string()), ("key", pa.string()), ("shard", pa.string()), ("split", pa.string()),
                            ("stage", pa.string()), ("error_class", pa.string()), ("message", pa.string())])


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("signfeat", "torch", "transformers", "open_clip_torch", "ray", "webdataset", "decord", "av", "torchcodec", "pyarrow", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _index_schema(streams: list[str]) -> pa.Schema:
    fields = [pa.field("shard", pa.string()), pa.field("key", pa.string()), pa.field("id", pa.string()), pa.field("split", pa.string()),
              pa.field("num_frames", pa.int64()), pa.field("duration_s", pa.float64())]
    fields += [pa.field(f"len_{s}", pa.int64()) for s in streams]
    fields += [pa.field("bytes", pa.int64()), pa.field("checksum", pa.string())]
    return pa.schema(fields)


def write_shard(store: Store, plan: ShardPlan, rows: list[dict[str, Any]], streams: list[str], config_hash: str,
                run_id: str | None = None, decode: DecodeOptions | None = None) -> dict[str, Any]:
    """Build the shard's tar in memory (one shard's features: small), then commit it with its parts (after
    checking that this run, ``run_id``, still owns OUT: see ``check_run``). ``decode``: the job's decoding,
    whose frame choice (target_fps, max_frames) each sample records."""
    import webdataset as wds

    buf = io.BytesIO()
    index, failures = [], []
    with wds.TarWriter(buf) as sink:
        for row in rows:
            if row["error_class"]:
                failures.append({"id": row["id"], "key": row["key"], "shard": plan.name, "split": plan.split, "stage": row["error_stage"],
                                 "error_class": row["error_class"], "message": row["error_message"]})
                continue
            meta = {
                "id": row["id"], "key": row["key"], "text": row["text"], "split": plan.split, "signer": row["signer"], "dataset": row["dataset"],
                "fps": row["decoded_fps"], "num_frames": row["decoded_frames"], "duration_s": _duration_s(row),
                "source": {"path": row["path"], "kind": row["source_kind"], "start_s": row["start_s"], "end_s": row["end_s"],
                           "fps": row["fps"]},  # the manifest's rate of the source; "fps" above is the features'
                # which frames the streams saw: the same settings at 12.5 fps or thinned to 16 frames are other features
                **({"decode": {"target_fps": decode.target_fps, "max_frames": decode.max_frames}} if decode is not None else {}),
                "streams": {s: {**json.loads(row[f"meta_{s}"]), **json.loads(row.get(f"clipmeta_{s}") or "{}")} for s in streams},
                "job": {"config_hash": config_hash, "shard": plan.name},
            }
            members = encode_sample(row["key"], meta, {s: row[f"feat_{s}"] for s in streams})
            sink.write({"__key__": row["key"], **members})
            index.append({"shard": plan.name, "key": row["key"], "id": row["id"], "split": plan.split, "num_frames": row["decoded_frames"],
                          "duration_s": _duration_s(row),
                          **{f"len_{s}": int(row[f"feat_{s}"].shape[0]) for s in streams},
                          "bytes": sum(len(v) for v in members.values()), "checksum": sample_checksum(members)})
    index_table = pa.Table.from_pylist(index, schema=_index_schema(streams))
    failure_table = pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA)
    summary = {"shard": plan.name, "samples": len(index), "failures": len(failures), "bytes": len(buf.getvalue()), "time": time.time(),
               "config_hash": config_hash, "run_id": run_id}
    if run_id is not None:
        check_run(store, run_id)
    store.commit_shard(plan.name, buf.getvalue(), index_table, failure_table, summary)
    return summary


def _duration_s(row: dict[str, Any]) -> float | None:
    """Seconds of source the sample covers: the decode stage's measure, which max_frames subsampling does not
    shrink (frames / fps would be the thinned-out rate's span); frames / fps for a row without it."""
    if row.get("decoded_duration_s"):
        return float(row["decoded_duration_s"])
    return row["decoded_frames"] / row["decoded_fps"] if row["decoded_fps"] else None


def _ray_rows(plans: list[ShardPlan]) -> list[dict[str, Any]]:
    rows = []
    for p in plans:
        for pos, r in enumerate(p.rows):
            row = {k: ("" if v is None and k in ("text", "signer", "dataset", "split") else v) for k, v in r.items()}
            for k in ("start_s", "end_s", "fps"):
                row[k] = float("nan") if row[k] is None else float(row[k])
            rows.append({**row, "shard": p.name, "pos": pos})
    return rows


def _lost_row(plan: ShardPlan, pos: int) -> dict[str, Any]:
    """A clip whose row never reached the writer: its worker died on it every time Ray retried."""
    r = plan.rows[pos]
    return {**r, "pos": pos, "error_stage": "worker", "error_class": "lost",
            "error_message": "the Ray worker processing this clip died on every retry: a decode task (a crash in native "
                             "decoding code) or an extractor actor (killed, e.g. out of memory; see the Ray logs)"}


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k in ("start_s", "end_s", "fps"):
        v = out.get(k)
        out[k] = None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
    for k in ("text", "signer", "dataset"):
        out[k] = out.get(k) or None
    return out


def _ray_job_working_dir() -> str | None:
    """The working_dir of the Ray job this command runs as (`ray job submit --working-dir`), else None."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")  # set by Ray's job supervisor
        return job.get("runtime_env", {}).get("working_dir") or None
    except (ValueError, AttributeError):
        return None


def refuse_relative_out_in_a_ray_job(out: str) -> None:
    """Under `ray job submit --working-dir DIR` the command runs in Ray's copy of DIR inside the session folder,
    which Ray unpacks again when a node joins and deletes with the session: a relative --out landed there, its
    log said only the bare name, and the output was lost (on one machine, deleted mid-run)."""
    if "://" in out or os.path.isabs(os.path.expanduser(out)):
        return
    if _ray_job_working_dir():
        raise SignfeatError(f"--out {out} is relative, and this command runs as a Ray job in Ray's copy of its working_dir "
                            f"({os.getcwd()}), which Ray deletes: give an absolute path the head node keeps, or s3://bucket/prefix")


# what an output location answers when it fills up or stops being writable (the job stops in one line, not a traceback)
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def run_extract(manifest: str | Path, out: str, config: JobConfig | str | Path, *, address: str | None = None, overwrite: bool = False,
                progress: bool = True, num_cpus: int | None = None) -> dict[str, Any]:
    t_start = time.time()
    cfg = config if isinstance(config, JobConfig) else load_job_config(config)
    refuse_relative_out_in_a_ray_job(str(out))
    local = not (address or os.environ.get("RAY_ADDRESS"))  # a Ray instance started for this job, not a joined cluster
    if num_cpus and local:
        import ray

        if not ray.is_initialized():  # said before Ray starts (a minute on a busy machine) and before OUT is claimed
            check_local_resources(cfg, {"CPU": float(num_cpus)}, only=("CPU",))
    elif local:
        refuse_oversized_local_instance(cfg)
    try:
        table = read_manifest(manifest)
    except FileNotFoundError as exc:
        if _ray_job_working_dir() and "://" not in str(manifest) and not os.path.isabs(os.path.expanduser(str(manifest))):
            # Ray uploads the working_dir without what .gitignore names (make demo's demo_out/ among it)
            raise SignfeatError(f"{exc}: this command runs as a Ray job in Ray's copy of its working_dir ({os.getcwd()}), which "
                                "leaves out files .gitignore names and anything over Ray's upload limit: give the manifest as an "
                                "absolute path every node reads, or s3://bucket/manifest.parquet") from None
        raise SignfeatError(str(exc)) from None
    except ValueError as exc:
        raise SignfeatError(str(exc)) from None
    manifest_rows = table.to_pylist()
    if not any(r.get("status") == "ok" for r in manifest_rows):  # a job of nothing that "succeeds" hides the mistake
        statuses = dict(collections.Counter(str(r.get("status")) for r in manifest_rows))
        raise SignfeatError(f"{manifest}: no clip has status ok ({len(manifest_rows)} rows: {statuses or 'none'}); nothing to extract. "
                            f"See the manifest's error column, or `signfeat manifest curate`'s report")
    from pipeline.stages import pin_hub_commits, stream_geometries

    geometries = stream_geometries(cfg.streams)  # each stream's preprocessing loads here, before Ray starts, or the job stops in one line
    asked = cfg
    pinned_streams, pins = pin_hub_commits(cfg.streams)  # a Hub id's branch or tag -> the commit every actor loads
    if pins:
        cfg = dataclasses.replace(cfg, streams=pinned_streams)
        geometries = stream_geometries(cfg.streams)  # the image processors of those commits
        for name, pin in pins.items():
            log.warning("%s: %s at revision %s is commit %s; the job loads and records that commit", name, pin["model"],
                        pin["revision"] or "(default branch)", pin["commit"])
    if local:
        from extractors import ExtractorConfig
        from extractors.base import REGISTRY, parse_settings

        for s in cfg.streams:  # files a setting names must be on this machine for its own workers
            config = ExtractorConfig.from_dict({**s.extractor, "device": "cpu"})
            REGISTRY[config.name].check_local_files(config, parse_settings(REGISTRY[config.name].Settings, config.settings, config.name),
                                                    [r for r in manifest_rows if r.get("status") == "ok"])
    if local and any(s.extractor.get("name") == "smplx623" for s in cfg.streams) and any(
            r.get("status") == "ok" and r.get("source_kind") != "smplx" for r in manifest_rows):
        # video rows take MediaPipe on this machine's workers: without it every one would fail, the job "succeed"
        # and a rerun skip those shards as complete (a cluster's workers may have it where the driver has not)
        from motion.estimate import import_mediapipe

        import_mediapipe()
    plans = plan_shards(manifest_rows, cfg.shards, cfg.decode)
    # rows a probe or an annotation marked bad are not the job's clips: counted and said, not dropped without a word
    not_ok = dict(sorted(collections.Counter(str(r.get("status")) for r in manifest_rows if r.get("status") != "ok").items()))
    if not_ok:
        log.warning("%d manifest rows are not ok and are not extracted (%s): the manifest's error column says why",
                    sum(not_ok.values()), ", ".join(f"{k}: {v}" for k, v in not_ok.items()))
    streams = [s.name for s in cfg.streams]
    identity = {"config_hash": cfg.output_hash(), "plan_hash": plan_hash(plans), "streams": streams}
    store = Store(out)
    # the first folder of OUT's path that exists now: the folders below it are this run's to remove again
    existing_ancestor = next((p for p in (Path(store.root), *Path(store.root).parents) if p.exists()), None) if store.local else None
    store.make_writable()
    fresh = not store.list_files("_signfeat")  # nothing of signfeat's job records: all of _signfeat/ will be this run's
    # what older signfeat versions hashed this config as: their output is told apart from another job's
    older = {asked.output_hash(legacy=True): _MADE_BEFORE_LOCAL_FINGERPRINTS, asked.output_hash(): _made_before_hub_pins(pins)}
    run_id = claim_output(store, identity, plans, overwrite=overwrite, older_hashes=older, hub_commits=pins)

    removed = store.remove_temporaries({p.name for p in plans})  # a killed earlier run's half-written files
    if removed:
        log.warning("removed %d half-written files of an interrupted earlier run", removed)
    done = shards_to_skip(store, plans, identity["config_hash"])
    todo = [p for p in plans if p.name not in done]
    log.warning("signfeat extract: %d clips in %d shards, %d of them already complete; output %s", sum(len(p.rows) for p in plans), len(plans), len(done), store.where)
    run_stats: dict[str, Any] = {}
    try:
        if todo:
            with _job_data_context():
                run_stats = _run_ray(cfg, todo, store, streams, identity["config_hash"], run_id, geometries, address=address,
                                     progress=progress, num_cpus=num_cpus)
        return finalize(store, plans, streams, cfg, identity, t_start, run_stats, skipped=done, run_id=run_id, rows_not_ok=not_ok,
                        hub_commits=pins)
    except SignfeatError:
        if fresh:  # stopped before its first shard (Ray cannot place an actor, a cluster that does not answer, ...)
            _withdraw_claim(store, run_id, existing_ancestor)
        raise
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        # the output's disk filled up or stopped being writable mid-job: a traceback ended in the reason before
        raise SignfeatError(f"writing {store.where} failed: {exc.strerror}{f' ({exc.filename})' if exc.filename else ''}. The job stops here; "
                            "complete shards are kept: free space or fix the permissions, then rerun the same command") from None



def _withdraw_claim(store: Store, run_id: str, existing_ancestor: Path | None) -> None:
    """Remove the job record (``_signfeat/``) that a run which stopped before committing any shard wrote into an OUT
    that held none: it was left in the user's folder, and `verify` then advised rerunning a command that fails again.
    Only ``_signfeat/`` goes, and the folders the run made for OUT when they are empty: never a file of OUT's
    (shards copied without their job record, a user's own job.json). Not when another run owns OUT now, or a
    shard is committed (a rerun goes on from it)."""
    try:
        if store.done_shards() or store.read_json(RUN_FILE).get("run_id") != run_id:
            return
        store.delete("_signfeat")
        folder = Path(store.root)
        while existing_ancestor is not None and folder != existing_ancestor and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    except (OSError, ValueError, AttributeError) as exc:  # never hide the job's own error behind this one
        log.debug("could not withdraw the claim on %s: %s", store.url, exc)


def _read_identity(store: Store) -> dict[str, Any]:
    """The job record OUT holds; a damaged one reads as {} (another job's, as far as a rerun can tell)."""
    try:
        old = store.read_json("_signfeat/identity.json")
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


RUN_FILE = "_signfeat/run.json"  # the run that owns OUT now: its id, host, pid and start time


def refuse_oversized_local_instance(cfg: JobConfig) -> None:
    """Without --num-cpus the local Ray instance is sized to what the config asks for, so that a few actors more
    than cores still run; a typo (actors: 100000, num_cpus: 1000) started a Ray worker process per actor and
    flooded the machine. Beyond 4x the machine's cores (at least 8 CPUs) it is refused; --num-cpus N runs it."""
    cores = os.cpu_count() or 1
    needed = 1 + sum(s.actors * s.num_cpus for s in cfg.streams)
    if needed > max(8, 4 * cores):
        asks = ", ".join(f"{s.name} {s.actors} x {s.num_cpus:g} CPU" for s in cfg.streams)
        raise SignfeatError(f"the config asks for {needed:g} CPUs ({asks}, + 1 for decoding) on a machine with {cores} cores: "
                            "the local Ray instance would start that many workers. Lower actors / num_cpus, or give "
                            f"--num-cpus N to size the local instance yourself")


_MADE_BEFORE_LOCAL_FINGERPRINTS = (
    " made by this config with an older signfeat, which named a local checkpoint by its path; this version identifies it by "
    "its files (a changed checkpoint is another job): finish that output with the older version, or --overwrite to redo it")


def _made_before_hub_pins(pins: dict[str, dict[str, Any]]) -> str:
    said = "; ".join(f"{name}'s {p['model']} at {p['revision'] or 'its default branch'} is now commit {p['commit']}" for name, p in pins.items())
    return (f" made by this config with an older signfeat, which recorded a Hub model by its branch or tag, not by the commit it "
            f"loaded ({said}; that output may hold another commit's features): finish it with the older version, or "
            "--overwrite to redo it")


def _moved_hub_revisions(store: Store, pins: dict[str, dict[str, Any]]) -> str:
    """Said when an output's Hub model is the same id and branch or tag, at another commit now."""
    try:
        old = store.read_json("_signfeat/hub_commits.json")
    except (OSError, ValueError):
        return ""
    moved = [f"{name}'s {p['model']} at {p['revision'] or 'its default branch'} was commit {old[name]['commit']} for that output and is "
             f"{p['commit']} now" for name, p in pins.items() if isinstance(old, dict) and isinstance(old.get(name), dict)
             and (old[name].get("model"), old[name].get("revision")) == (p["model"], p["revision"]) and old[name].get("commit") != p["commit"]]
    if not moved:
        return ""
    return (f": the Hub revision moved ({'; '.join(moved)}). To finish that output, set each such stream's revision to its "
            "old commit (if this machine can still load it), or --overwrite to redo it with the new one")


def claim_output(store: Store, identity: dict[str, Any], plans: list[ShardPlan], *, overwrite: bool,
                 older_hashes: dict[str, str] | None = None, hub_commits: dict[str, dict[str, Any]] | None = None) -> str:
    """Record this job (identity + plan) in OUT and this run as its owner; returns the run's id. Another job's
    output is refused while it holds a complete shard (that is work a mistyped --out would destroy); one that
    completed nothing, such as a job that died on a bad setting before its first shard, is replaced, so the
    corrected config is not refused. A run started later on the same OUT takes it over: this one then stops
    at its next commit (``check_run``) instead of writing into the other job's output."""
    if overwrite:
        store.clear()
    else:
        old = _read_identity(store)  # {} when missing or damaged: then complete shards are another job's as far as we know
        if old != identity and not old and _same_job_without_record(store, identity, plans):
            log.warning("%s: its job record (_signfeat/identity.json) is gone, but its completion markers and plan are this job's: resuming", store.url)
        elif old != identity:
            if store.complete_shards():
                held = (f"a job with config hash {old.get('config_hash')} and plan hash {old.get('plan_hash')}" if old else
                        "complete shards of another job (its job record _signfeat/identity.json is missing or damaged, and its "
                        "completion markers or plan are not this job's)")
                older = (older_hashes or {}).get(old.get("config_hash")) if old.get("config_hash") != identity["config_hash"] else None
                if older and old.get("plan_hash") == identity["plan_hash"]:
                    held += older
                elif old and (moved := _moved_hub_revisions(store, hub_commits or {})):  # read only when it can say something
                    held += moved
                elif old:
                    held += (" (another config or manifest, or the same ones run by another signfeat version, which may compute "
                             "other features)")
                raise SignfeatError(f"{store.url} holds {held}; this run has {identity['config_hash']} / {identity['plan_hash']}. "
                                    "Use another --out, or --overwrite to replace it.")
            if old:
                store.clear()  # nothing complete: the old job's unfinished files would only be in the way
    store.write_json("_signfeat/identity.json", identity)
    store.write_json("_signfeat/hub_commits.json", hub_commits or {})  # what a later run's refusal can say moved
    store.write_table("_signfeat/plan.parquet", pa.Table.from_pylist(
        [{"shard": p.name, "key": r["key"], "id": r["id"]} for p in plans for r in p.rows],
        schema=pa.schema([("shard", pa.string()), ("key", pa.string()), ("id", pa.string())])))
    import socket
    import uuid

    run = {"run_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    store.write_json(RUN_FILE, run)
    return run["run_id"]


def _same_job_without_record(store: Store, identity: dict[str, Any], plans: list[ShardPlan]) -> bool:
    """An OUT whose identity.json was lost, but whose completion markers all record this config and whose stored
    plan is this one (same shards, keys and ids): this job's, which may resume."""
    try:
        markers = [store.read_json(Store.marker(shard)) for shard in store.done_shards()]
        stored = store.read_table("_signfeat/plan.parquet").to_pylist()
    except (OSError, ValueError):
        return False
    current = [{"shard": p.name, "key": r["key"], "id": r["id"]} for p in plans for r in p.rows]
    return bool(markers) and all(isinstance(m, dict) and m.get("config_hash") == identity["config_hash"] for m in markers) and stored == current


def check_run(store: Store, run_id: str) -> None:
    """Stop unless this run still owns OUT. Two drivers on one OUT (a job started twice, a second config
    into the same folder) each claimed it; the later one cleared or resumed it, and the earlier one's next
    commit would mix two jobs' shards into an output that both reported as complete."""
    try:
        owner = store.read_json(RUN_FILE)
    except (FileNotFoundError, ValueError):  # gone, or damaged: not this run's any more
        owner = {}
    except OSError as exc:  # the store itself (endpoint down, a 503): not a second driver
        raise SignfeatError(f"{store.url}: cannot reach the output location to check that this run still owns it "
                            f"({str(exc).splitlines()[0]}); rerun the same command when it is back (complete shards are kept)") from None
    if not isinstance(owner, dict) or owner.get("run_id") != run_id:
        if not owner and store.local and not os.path.isdir(store.root):  # the folder itself went away, not to another driver
            raise SignfeatError(f"{store.where} was deleted while this run wrote it; this run stops here (rerun the command "
                                "to start it again)")
        who = (f"{owner.get('host')}, pid {owner.get('pid')}, started {owner.get('started')}" if isinstance(owner, dict) and owner
               else "its run record is gone")
        raise SignfeatError(f"another signfeat extract has taken over {store.where} since this run started ({who}); this run stops "
                            "here. Never run two jobs into one --out: rerun this command when the other has finished (it resumes), "
                            "or use another --out")


def shards_to_skip(store: Store, plans: list[ShardPlan], config_hash: str | None = None) -> set[str]:
    """The planned shards a rerun may skip (``Store.shard_is_complete``, and made with ``config_hash`` when its
    marker says: another job's shard, committed by a second driver on this OUT, is redone). A marker whose tar
    was deleted or truncated, or whose parts are lost or damaged, is removed first, so the shard is redone and a
    run killed while redoing it cannot leave the old marker vouching for new, unfinished files."""
    planned = {p.name for p in plans}
    marked = store.done_shards() & planned
    complete = {shard for shard in marked if store.shard_is_complete(shard, config_hash)}
    for shard in sorted(marked - complete):
        log.warning("shard %s has a completion marker but a missing or damaged tar or part: redoing it", shard)
        store.delete(Store.marker(shard))
    return complete


def check_local_resources(cfg: JobConfig, total: dict[str, float], only: tuple[str, ...] = ()) -> None:
    """Refuse a job whose actors cannot all be placed on a local Ray instance. Ray Data would wait for them
    forever ("No available node types can fulfill resource request {'GPU': 1.0}"): num_gpus > 0 on a machine
    without GPUs, --num-cpus smaller than the actors plus one decode task, a custom resource or
    accelerator_type the machine does not have. A joined cluster (--address, RAY_ADDRESS) may autoscale, so
    it is not checked. ``only``: check just these resources (``--num-cpus`` before Ray starts)."""
    need: dict[str, float] = {"CPU": 1.0}  # one decode task must run next to the actors
    for s in cfg.streams:
        asks = {"CPU": s.num_cpus, "GPU": s.num_gpus, "memory": (s.memory_gb or 0) * 2**30, **s.resources}
        if s.accelerator_type:
            asks[f"accelerator_type:{s.accelerator_type}"] = 0.001  # Ray's label resource for the GPU type
        for name, amount in asks.items():
            need[name] = need.get(name, 0.0) + s.actors * amount
    for name, amount in need.items():
        have = total.get(name, 0.0)
        if only and name not in only:
            continue
        if amount > 0 and have + 1e-9 < amount:
            users = [f"{s.name} ({s.actors} actor{'s' * (s.actors > 1)})" for s in cfg.streams
                     if (name == "CPU" and s.num_cpus) or (name == "GPU" and s.num_gpus) or (name == "memory" and s.memory_gb)
                     or name in s.resources or name == f"accelerator_type:{s.accelerator_type}"]
            key = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_gb"}.get(
                name, "accelerator_type" if name.startswith("accelerator_type:") else f"resources.{name}")
            if name == "memory":  # Ray counts bytes; the config says GiB
                amount, have, name = amount / 2**30, have / 2**30, "GiB of memory"
            if key == "accelerator_type":  # a label, not an amount: "need 0.001 accelerator_type:H100" said nothing
                gpu_types = sorted(k.split(":", 1)[1] for k in total if k.startswith("accelerator_type:"))
                raise SignfeatError(f"accelerator_type {name.split(':', 1)[1]} ({', '.join(users)}): the local Ray instance has "
                                    f"{'GPUs of type ' + ', '.join(gpu_types) if gpu_types else 'no GPU of a known type'}; drop "
                                    "accelerator_type or name one of those, or run on a cluster with --address (the job would wait forever)")
            raise SignfeatError(
                f"the extractors' {key} need {amount:g} {name} in all ({', '.join(users)}{' + 1 decode task' if name == 'CPU' else ''}), "
                f"but the local Ray instance has {have:g}: lower {key} or actors in the config"
                + (", or raise --num-cpus" if name == "CPU" else "") + ", or run on a cluster with --address (the job would wait forever)")


class StallWatch:
    """Says so when no clip has come back for ``after_s`` seconds (again every ``after_s`` while it lasts).

    On a joined cluster the job's actors can hold every CPU while its decode tasks (1 CPU each) wait: two jobs
    that each fit, or a cluster that lost a node. Ray waits for resources forever and the progress bar stands
    still, so a stalled job looked like a slow one. The message names what Ray has free against what the job
    asks; the job goes on waiting (a node may yet join). ``SIGNFEAT_STALL_WARN_S`` sets ``after_s`` (300)."""

    def __init__(self, cfg: JobConfig, after_s: float, resources=None, clock=time.monotonic):
        self.cfg, self.after_s, self.clock = cfg, after_s, clock
        self.resources = resources or self._ray_resources
        self.last = self.warned = clock()

    @staticmethod
    def _ray_resources() -> tuple[list[dict[str, float]], dict[str, float]]:
        """(free resources of each live node, the cluster's totals)."""
        import ray

        try:  # per node: a decode task needs a whole CPU on one node, and free halves on two nodes are none
            from ray._private.state import available_resources_per_node

            free = list(available_resources_per_node().values())
        except Exception:  # noqa: BLE001  (a developer API that may move): the cluster's sum, as one node
            free = [ray.available_resources()]
        return free, ray.cluster_resources()

    def progress(self) -> None:
        self.last = self.warned = self.clock()

    def check(self) -> str | None:
        now = self.clock()
        if now - self.warned < self.after_s:  # warned is never before last: a clip back resets both
            return None
        self.warned = now
        nodes, total = self.resources()
        free = {name: sum(node.get(name, 0.0) for node in nodes) for name in ("CPU", "GPU")}
        most_on_one = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
        asks = ", ".join(f"{s.name} {s.actors} x {s.num_cpus:g} CPU" + (f" + {s.num_gpus:g} GPU" if s.num_gpus else "")
                         + (f" on an {s.accelerator_type} node" if s.accelerator_type else "")
                         + "".join(f" + {v:g} {k}" for k, v in (s.resources or {}).items())
                         + (f" + {s.memory_gb:g} GB memory" if s.memory_gb else "") for s in self.cfg.streams)
        asks_gpus = any(s.num_gpus for s in self.cfg.streams)
        # a cluster with no GPU at all was left unsaid, and the message pointed at a slow clip
        gpus = f" and {free['GPU']:g} of {total.get('GPU', 0):g} GPUs" if total.get("GPU") or asks_gpus else ""
        lacking = [f"{s.name}'s {what}" for s in self.cfg.streams for what, needed in (
                   ("GPU", s.num_gpus and not total.get("GPU")),
                   (f"accelerator_type {s.accelerator_type}", s.accelerator_type and not total.get(f"accelerator_type:{s.accelerator_type}")),
                   *((f"resource {k}", not total.get(k)) for k in (s.resources or {}))) if needed]
        split = f" (at most {most_on_one:g} on one node)" if len(nodes) > 1 else ""
        message = (f"no clip has come back for {now - self.last:.0f} s; Ray has {free['CPU']:g} of {total.get('CPU', 0):g} CPUs{gpus} free{split}. "
                   f"This job's actors ask {asks}, and each decode task 1 CPU on one node")
        if lacking:
            message += (f": no node of the cluster has {', '.join(lacking)}, so those actors cannot start until one joins (an "
                        "autoscaler may add it); the job waits. Change the config if none will")
        elif most_on_one < 1:
            message += (": with no whole CPU free on any node its decode tasks cannot start (actors of this or another job hold "
                        "them, or a node was lost). Add a node, stop the other job, or change actors / num_cpus so that "
                        "a whole CPU stays free on a node; the job waits")
        else:
            message += " (still starting? a long clip?); the job waits"
        return message


def _watch_for_stalls(watch: StallWatch, stop: threading.Event) -> None:
    while not stop.wait(min(30.0, watch.after_s / 4)):
        try:
            message = watch.check()
        except Exception as exc:  # noqa: BLE001  (Ray gone at shutdown): the watch only ever reports
            log.debug("stall check failed: %s", exc)
            continue
        if message:
            log.warning("signfeat extract: %s", message)


@contextlib.contextmanager
def _job_data_context():
    """Ray Data's settings for the job, set on its process-wide context and put back afterwards: a caller's own
    Ray Data pipelines (a notebook that runs run_extract) must not inherit max_errored_blocks=-1, which drops a
    failed block in silence."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.max_errored_blocks)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # our own bar says clips, rate, ETA and failures
    ctx.max_errored_blocks = -1  # a clip whose worker keeps dying is dropped (and comes back in the second pass)
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.max_errored_blocks = saved


def _run_ray(cfg: JobConfig, todo: list[ShardPlan], store: Store, streams: list[str], config_hash: str, run_id: str,
             geometries: dict[str, str], *, address, progress, num_cpus) -> dict[str, Any]:
    """``geometries``: stream -> prepared-frame column (``stream_geometries``, computed by the caller)."""
    import ray
    from tqdm import tqdm

    from pipeline.ray_runtime import ensure_ray
    from pipeline.stages import ExtractStream, decode_prepare

    needed_cpus = 1 + sum(s.actors * s.num_cpus for s in cfg.streams)
    local = not (address or os.environ.get("RAY_ADDRESS"))
    ensure_ray(num_cpus=num_cpus or max(os.cpu_count() or 1, int(np.ceil(needed_cpus))), address=address)
    if local:  # a local instance never grows: what it lacks now, it lacks for good
        check_local_resources(cfg, ray.cluster_resources())
    streams_json = json.dumps([s.extractor for s in cfg.streams], sort_keys=True)
    # the config's environment for every worker of the job (Ray merges it into a submitted job's runtime_env)
    worker_env = {"runtime_env": {"env_vars": cfg.worker_env}} if cfg.worker_env else {}

    def pipeline(rows: list[dict[str, Any]], clips_per_call: int, calls_in_flight: int | None = None):
        # Blocks of clips_per_call clips (one block per clip cost ~11 ms of Ray Data's scheduling per clip on 2
        # cores, against 4 ms at 4 per block). A worker that dies for good drops its block; those clips come back
        # through the second pass below, one clip per block.
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / clips_per_call)))
        with warnings.catch_warnings():
            # Ray Data retries a map task, and an actor's call, forever by default; a clip that kills its worker
            # every time must stop after decode_retries / extract_retries. Ray 2.60 has no named parameter for that
            # yet, only the (deprecated) remote-args keywords.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(decode_prepare, fn_kwargs={"streams_json": streams_json, "decode_options": cfg.decode}, batch_size=1,
                                batch_format="numpy", num_cpus=1, max_retries=cfg.decode_retries, **worker_env)
            # each prepared-frame column is dropped by the last stream that reads it
            last_reader = {geometries[s.name]: i for i, s in enumerate(cfg.streams)}
            for i, s in enumerate(cfg.streams):
                # A dead actor is restarted (Ray Data's default) and its call retried extract_retries times: a killed
                # actor is an infrastructure fault, not the clips'; one that dies on every try (a clip too large for
                # the actor's memory) would otherwise be retried forever. Then its call's clips are dropped.
                done_with = tuple(sorted(col for col, last in last_reader.items() if last == i))
                pool = ray.data.ActorPoolStrategy(size=s.actors, **({"max_tasks_in_flight_per_actor": calls_in_flight} if calls_in_flight else {}))
                ds = ds.map_batches(ExtractStream, fn_constructor_kwargs={"extractor": s.extractor, "prep_column": geometries[s.name],
                                                                         "use_gpu": s.num_gpus > 0, "drop_columns": done_with},
                                    batch_size=clips_per_call, batch_format="numpy", compute=pool,
                                    num_gpus=s.num_gpus, num_cpus=s.num_cpus, resources=s.resources or None, accelerator_type=s.accelerator_type,
                                    max_task_retries=cfg.extract_retries, **({"memory": int(s.memory_gb * 2**30)} if s.memory_gb else {}), **worker_env)
        return ds

    total = sum(len(p.rows) for p in todo)
    order = {p.name: i for i, p in enumerate(todo)}
    bar = tqdm(total=total, unit="clip", desc="extract", disable=not progress, mininterval=2.0)
    t_bar = time.monotonic()
    failures = 0
    next_shard = 0  # todo[next_shard] is the shard whose rows arrive now
    current: dict[int, dict[str, Any]] = {}
    # shards some of whose clips never arrived (dropped with a worker that died for good): committed after the
    # second pass below, which retries those clips one at a time
    short: dict[int, dict[int, dict[str, Any]]] = {}
    t_write = 0.0
    busy_seconds: dict[str, float] = {}  # stage -> seconds its workers spent, summed over clips
    clips_by_node: dict[str, dict[str, int]] = {}  # Ray node id -> stage -> clips it processed
    missing_on_a_node: list[dict[str, str]] = []  # missing_file failures whose file the driver reads

    def commit(k: int, rows_by_pos: dict[int, dict[str, Any]]) -> None:
        """Write todo[k] with the rows that came back; a clip that never did is a `lost` failure row."""
        nonlocal t_write, failures
        plan = todo[k]
        rows = [rows_by_pos.get(pos) or _lost_row(plan, pos) for pos in range(len(plan.rows))]
        lost = len(plan.rows) - len(rows_by_pos)
        failures += lost
        bar.update(lost)
        t = time.time()
        write_shard(store, plan, rows, streams, config_hash, run_id, cfg.decode)
        t_write += time.time() - t

    def flush(upto: int) -> None:
        """Commit todo[next_shard:upto]: their rows have all arrived, or were dropped for now."""
        nonlocal next_shard, current
        while next_shard < upto:
            if len(current) < len(todo[next_shard].rows):
                short[next_shard] = current
            else:
                commit(next_shard, current)
            current, next_shard = {}, next_shard + 1

    def account(row: dict[str, Any]) -> dict[str, Any]:
        """A row back from Ray, cleaned and counted: busy seconds and clips per node, failures, the progress bar,
        the stall watch, and now and then the check that this run still owns OUT."""
        nonlocal failures, owner_checked
        row = _clean_row(row)
        for stage in ["decode", *streams]:
            busy_seconds[stage] = busy_seconds.get(stage, 0.0) + float(row.get(f"secs_{stage}") or 0.0)
            node = row.get(f"node_{stage}")
            if node:  # not a stage the clip skipped, having failed before it
                per_node = clips_by_node.setdefault(str(node), {})
                per_node[stage] = per_node.get(stage, 0) + 1
        failures += bool(row["error_class"])
        if (missing := missing_where_decoded(row)) is not None:
            missing_on_a_node.append(missing)
        watch.progress()
        if time.monotonic() - owner_checked >= owner_check_s:
            # a deleted OUT, or another driver's, is noticed within owner_check_s, not at the next shard commit
            # (which, with big shards or shards waiting for a retried clip, can be the job's end)
            check_run(store, run_id)
            owner_checked = time.monotonic()
        if not bar.n and not bar.disable:
            # Ray's start and the actors' model loading come before the first clip: counted in the rate, they made
            # the ETA of a 2-minute job 30 minutes. The bar's clock starts at the first clip, and says when that was.
            bar.set_description(f"extract (first clip after {time.monotonic() - t_bar:.0f} s)", refresh=False)
            bar.unpause()
        bar.update(1)
        bar.set_postfix(failures=failures, refresh=False)
        return row

    owner_check_s = float(os.environ.get("SIGNFEAT_OWNER_CHECK_S") or 60)
    owner_checked = time.monotonic()
    watch = StallWatch(cfg, float(os.environ.get("SIGNFEAT_STALL_WARN_S") or 300))
    stop_watch = threading.Event()
    threading.Thread(target=_watch_for_stalls, args=(watch, stop_watch), name="signfeat-stall-watch", daemon=True).start()
    try:
        for row in pipeline(_ray_rows(todo), cfg.clips_per_call).iter_rows():
            row = account(row)
            k = order[row["shard"]]
            flush(k)  # rows come in plan order: a later shard's row means the earlier shards are finished
            current[int(row["pos"])] = row
            if len(current) == len(todo[k].rows):
                flush(k + 1)
        flush(len(todo))
        if short:
            # An actor killed for good (out of memory on one clip, say) takes every clip of its calls with it: its
            # own call's clips_per_call, and the calls queued on it. Those clips go through again, one clip per call
            # and one call per actor at a time, so that only a clip that kills its worker by itself is lost.
            again = [r for k, got in short.items() for r in _ray_rows([todo[k]]) if r["pos"] not in got]
            log.warning("%d clips were dropped with Ray workers that died; retrying them one at a time", len(again))
            watch.progress()
            for row in pipeline(again, 1, calls_in_flight=1).iter_rows():
                row = account(row)
                short[order[row["shard"]]][int(row["pos"])] = row
            for k in sorted(short):
                commit(k, short[k])
    except Exception as exc:
        said = _actor_start_failure(exc)
        if said is None:
            raise
        raise SignfeatError(said) from None
    finally:
        stop_watch.set()
    bar.close()
    return {"busy_seconds": {**{f"{k}_s": round(v, 3) for k, v in busy_seconds.items()}, "write_shards_s": round(t_write, 3)},
            "clips_by_node": clips_by_node, "missing_on_a_node": missing_on_a_node}


def missing_where_decoded(row: dict[str, Any]) -> dict[str, str] | None:
    """A clip that failed as missing_file although the driver reads its file: a node without the videos' mount (a
    cluster's GPU worker), not a clip gone since the manifest was built. Committed as the failure it is, and said
    at the end with what to redo (a rerun skips complete shards): clips went missing with exit 0 and verify OK."""
    if row.get("error_class") == "missing_file" and row.get("path") and os.path.exists(row["path"]):
        return {"id": row["id"], "shard": row["shard"], "message": row["error_message"]}
    return None


def _actor_start_failure(exc: Exception) -> str | None:
    """One line for an extractor actor that could not be built (on a cluster node without the model folder, the
    retarget file or the pinned commit the driver has: the driver's own checks pass), from Ray's ActorDiedError,
    whose text is pages of the creation task's traceback ending in the error; None for any other exception."""
    text = str(exc)
    if "error raised in its creation task" not in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    node = re.search(r"\bip=([^,\s)]+)", text)
    why = re.sub(r"^(?:[\w.]+\.)?(SignfeatError|CheckpointError): ", "", lines[-1]) if lines else type(exc).__name__
    return (f"an extractor actor could not start{f' on node {node.group(1)}' if node else ''}: {why}. Every node that runs "
            "extractor actors must hold the models and files the config names; complete shards are kept: fix that and rerun the same command")


def finalize(store: Store, plans: list[ShardPlan], streams: list[str], cfg: JobConfig, identity: dict, t_start: float, run_stats: dict,
             skipped: set[str] = frozenset(), run_id: str | None = None, rows_not_ok: dict[str, int] | None = None,
             hub_commits: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Merge the per-shard parts (plan order), check that every clip is in exactly one place and every shard
    was made with this job's config, write job.json. ``skipped``: the shards this run found complete and did
    not redo; ``run_id``: this run, which must still own OUT; ``rows_not_ok``: the manifest's rows left out of
    the plan, per status."""
    if run_id is not None:
        check_run(store, run_id)
    index_parts, failure_parts = [], []
    for p in plans:
        try:
            marker = store.read_json(Store.marker(p.name))
        except (OSError, ValueError):
            raise SignfeatError(f"shard {p.name} is not complete; rerun the same command to finish the job") from None
        made_with = marker.get("config_hash") if isinstance(marker, dict) else None
        if made_with not in (None, identity["config_hash"]):
            raise SignfeatError(f"shard {p.name} was written by another job (config hash {made_with}, this job's {identity['config_hash']}): "
                                "two drivers ran into one --out; rerun this command alone to redo it")
        index_parts.append(store.read_table(f"_signfeat/parts/{p.name}.index.parquet"))
        failure_parts.append(store.read_table(f"_signfeat/parts/{p.name}.failures.parquet"))
    index = pa.concat_tables(index_parts) if index_parts else _index_schema(streams).empty_table()
    failures = pa.concat_tables(failure_parts) if failure_parts else FAILURE_SCHEMA.empty_table()
    planned = [r["key"] for p in plans for r in p.rows]
    placed = index.column("key").to_pylist() + failures.column("key").to_pylist()
    if sorted(planned) != sorted(placed):
        raise SignfeatError(f"exactly-once check failed: {len(planned)} planned clips, {len(placed)} placed")
    store.write_table("index.parquet", index)
    store.write_table("failures.parquet", failures)
    wall = time.time() - t_start
    frames = int(pa.compute.sum(index.column("num_frames")).as_py() or 0) if index.num_rows else 0
    clips_skipped = sum(len(p.rows) for p in plans if p.name in skipped)
    frames_skipped = sum(n for shard, n in zip(index.column("shard").to_pylist(), index.column("num_frames").to_pylist()) if shard in skipped)
    clips_this_run, frames_this_run = len(planned) - clips_skipped, frames - frames_skipped
    failures_kept = sum(shard in skipped for shard in failures.column("shard").to_pylist())
    if failures_kept:  # a rerun after fixing inputs does not retry them: said, not silent
        log.warning("%d clips failed in an earlier run, in shards this run skipped as complete; they stay in failures.parquet "
                    "(after fixing their cause, rerun with --overwrite to retry them)", failures_kept)
    # a .tar in a split folder that the plan does not name (copied in, left from another job) is read by anything
    # globbing {split}/*.tar: the job's own shards are complete, but the output does not verify
    stray = tars_not_in_plan(store.list_files(""), [p.name for p in plans])
    if stray:
        log.warning("%d .tar file(s) in the split folders are not shards of this job (%s%s): anything globbing {split}/*.tar "
                    "reads them, and signfeat verify fails; move them out of %s", len(stray), ", ".join(stray[:3]),
                    ", ..." if len(stray) > 3 else "", store.where)
    finished = time.time()
    this_run = {  # the run's own record; job.json keeps those of earlier runs of this job (a resume's) in "runs"
        "run_id": run_id, "started_at": _utc(t_start), "finished_at": _utc(finished), "wall_s": wall, "clips_this_run": clips_this_run,
        "frames_this_run": frames_this_run, "shards_skipped_as_complete": len(skipped),
        "stage_seconds": run_stats.get("busy_seconds", {}), "clips_by_node": run_stats.get("clips_by_node", {}),
    }
    summary = {
        "output": store.where,
        "started_at": this_run["started_at"],
        "finished_at": this_run["finished_at"],
        "clips_planned": len(planned),
        "manifest_rows_not_ok": rows_not_ok or {},  # per status: rows the manifest marks bad, not planned
        "samples": index.num_rows,
        "failures": failures.num_rows,
        "failures_by_class": {k: int(v) for k, v in zip(*np.unique(failures.column("error_class").to_pylist(), return_counts=True))} if failures.num_rows else {},
        "shards": len(plans),
        "shards_skipped_as_complete": len(skipped),
        "clips_skipped_as_complete": clips_skipped,
        "failures_kept_from_earlier_runs": failures_kept,
        "clips_this_run": clips_this_run,  # clips of the shards this run wrote (samples + failures)
        "frames_this_run": frames_this_run,
        "wall_s": wall,
        # rates of this run's own work: clips of shards skipped as complete took no time and are not counted
        "clips_per_s": clips_this_run / wall if wall > 0 else None,
        "frames_per_s": frames_this_run / wall if wall > 0 else None,
        "frames": frames,
        # busy seconds per stage summed over its workers (decode, each extractor, the driver's shard writes),
        # and which Ray node did how many clips of each stage (this run only: skipped shards are not counted)
        "stage_seconds": run_stats.get("busy_seconds", {}),
        "clips_by_node": run_stats.get("clips_by_node", {}),
        # this run's missing_file failures whose file the driver reads: a node without the videos (see the CLI's advice)
        "missing_on_a_node": run_stats.get("missing_on_a_node", []),
        "streams": streams,
        "config": cfg.to_dict(),  # a Hub model's revision as the commit it was pinned to
        "hub_commits": hub_commits or {},  # per stream: the branch or tag asked for, and that commit
        "config_hash": identity["config_hash"],
        "plan_hash": identity["plan_hash"],
        "versions": _versions(),
        "tars_not_in_plan": stray,
        "runs": _earlier_runs(store, identity) + [this_run],
    }
    store.write_json("job.json", summary)
    return summary


def _utc(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).isoformat(timespec="seconds")


def _earlier_runs(store: Store, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The run records of the job.json an earlier run of this same job (config and plan) left, oldest first."""
    try:
        old = store.read_json("job.json")
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or (old.get("config_hash"), old.get("plan_hash")) != (identity["config_hash"], identity["plan_hash"]):
        return []  # another job's (an --overwrite), or none
    runs = old.get("runs")
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
