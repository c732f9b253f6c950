"""The extraction job's throughput next to two baselines, and its peak memory at 1x and 4x corpus size.

    python bench/pipeline.py                       # demo config (tiny random-weight extractors), 32 clips
    python bench/pipeline.py --clips 64 --config configs/extract_demo.yaml --scale 4
    python bench/pipeline.py --config configs/bench_pipeline_gpu.yaml --clips 64   # full-size random-weight models on a GPU

All on the same machine, in one run, on the same clips (a generated demo corpus: videos, ranges and frame
folders):
  job       ``signfeat extract`` as a user runs it (a subprocess starting its own local Ray; wall clock from
            launch to exit, so Ray's start-up is included), and again on the corpus listed ``--scale`` times
            (new ids, same files) for peak memory;
  compute   the extractors' own work alone (``extract_prepared`` on frames decoded and resized in advance,
            batches of ``clips_per_call`` clips, one process): what the job would take if decoding,
            transfers and writing were completely hidden behind compute. Target: job >= 0.85 of it;
  naive     what the papers' scripts do: for each clip decode -> extract -> ``np.save``, one process,
            sequential. Target: job >= 2x it.
compute and naive run in a process with the config's ``worker_env`` (the job's workers get it from the config;
the job's own processes do not): the same allocator settings, so the ratios compare pipelines, not mallocs.
Peak memory is sampled every second: PSS summed over the job's whole process tree (driver + Ray's processes;
a shared page such as one of Ray's object store counts once) and the driver's RSS. Flat memory: the 4x
run's peak should be close to the 1x run's, not 4x. The marginal rate, (4x clips - 1x clips) / (4x wall -
1x wall), is the steady throughput with start-up cancelled out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.config import JobConfig, load_job_config  # noqa: E402


def make_manifests(work: Path, clips: int, scale: int, seed: int) -> tuple[Path, Path, list[dict]]:
    """A demo corpus and its manifest (ok rows only), plus the same rows listed ``scale`` times."""
    import ray

    from manifests.build import build_manifest
    from manifests.demo_corpus import make_demo_corpus

    corpus = make_demo_corpus(work / "corpus", seed=seed, clips=clips)
    full = work / "manifest_all.parquet"
    build_manifest([Path(a) for a in corpus["annotations"]], full, root=Path(corpus["root"]), progress=False)
    ray.shutdown()  # the bench's own process must not hold a Ray instance while it measures
    table = pq.read_table(full)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    one = work / "manifest_1x.parquet"
    pq.write_table(pa.Table.from_pylist(ok, schema=table.schema), one)
    many = [{**r, "id": f"{r['id']}-x{c}", "key": f"{r['key']}_x{c}"} for c in range(scale) for r in ok]
    scaled = work / f"manifest_{scale}x.parquet"
    pq.write_table(pa.Table.from_pylist(many, schema=table.schema), scaled)
    return one, scaled, ok


def run_job(manifest: Path, out: Path, config: Path, worker_env: dict[str, str]) -> dict:
    """``signfeat extract`` in a subprocess; wall clock and peak RSS of its process tree and of the driver. The job
    gets ``worker_env`` from its config, as a user's job does: this process's copy is not passed on."""
    import psutil

    signfeat = str(Path(sys.executable).parent / "signfeat")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in worker_env}
    t0, launched_at = time.perf_counter(), time.time()
    job = subprocess.Popen([signfeat, "extract", "--manifest", str(manifest), "--out", str(out), "--config", str(config), "--no-progress", "--overwrite"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(job.pid)
    peak_tree = peak_driver = 0
    while job.poll() is None:
        # PSS (proportional set size): a shared page counts once across the tree (Ray's object store is
        # mapped by every worker; summing RSS would count it once per process)
        pss = 0
        for p in [driver, *_children(driver)]:
            try:
                pss += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak_tree = max(peak_tree, pss)
        try:
            peak_driver = max(peak_driver, driver.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(1.0)
    wall = time.perf_counter() - t0
    if job.returncode != 0:
        raise SystemExit(f"signfeat extract failed:\n{job.stderr.read()[-3000:]}")
    summary = json.loads((out / "job.json").read_text())
    first_commit = min((json.loads(m.read_text())["time"] for m in (out / "_signfeat" / "done").rglob("*.json")), default=None)
    return {"wall_s": wall, "first_shard_after_s": first_commit - launched_at if first_commit else None,
            "peak_tree_mib": peak_tree / 2**20, "peak_driver_mib": peak_driver / 2**20, "samples": summary["samples"],
            "failures": summary["failures"], "frames": summary["frames"], "stage_seconds": summary["stage_seconds"]}


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def build_extractors(cfg: JobConfig) -> list:
    from extractors import ExtractorConfig, build_extractor

    # the same device the job's actors use: a GPU when the config gives the stream one
    return [build_extractor(ExtractorConfig.from_dict({**s.extractor, "device": "cuda" if s.num_gpus > 0 else "cpu"})) for s in cfg.streams]


def run_naive(rows: list[dict], cfg: JobConfig, out: Path) -> dict:
    """For each clip: decode -> every extractor -> np.save, sequentially (models loaded once, before timing)."""
    from pipeline.decode import decode_clip

    extractors = build_extractors(cfg)
    out.mkdir(parents=True, exist_ok=True)
    frames_total, t0 = 0, time.perf_counter()
    for row in rows:
        clip = decode_clip(row, cfg.decode)
        frames_total += clip.frames.shape[0]
        for ex in extractors:
            np.save(out / f"{row['key']}.{ex.stream}.npy", ex.extract([clip.frames])[0], allow_pickle=False)
    return {"wall_s": time.perf_counter() - t0, "frames": frames_total}


def run_compute(rows: list[dict], cfg: JobConfig) -> dict:
    """The extractors' work alone on frames decoded and prepared in advance (untimed), in job-sized batches."""
    from pipeline.decode import decode_clip

    extractors = build_extractors(cfg)
    prepared = {ex.stream: [] for ex in extractors}
    for row in rows:
        frames = decode_clip(row, cfg.decode).frames
        for ex in extractors:
            prepared[ex.stream].append(ex.prepare(frames))
    for ex in extractors:  # warm-up: first calls allocate
        ex.extract_prepared(prepared[ex.stream][:1])
    t0 = time.perf_counter()
    for ex in extractors:
        clips = prepared[ex.stream]
        for i in range(0, len(clips), cfg.clips_per_call):
            ex.extract_prepared(clips[i : i + cfg.clips_per_call])  # returns host arrays: the GPU is synchronised
    return {"wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/extract_demo.yaml"))
    ap.add_argument("--clips", type=int, default=32, help="clips in the generated demo corpus (>= 16)")
    ap.add_argument("--scale", type=int, default=4, help="the corpus listed this many times for the memory run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    cfg = load_job_config(args.config)
    if any(os.environ.get(k) != v for k, v in cfg.worker_env.items()):
        # glibc reads its malloc settings when a process starts: start this one again with the config's worker_env
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **cfg.worker_env})
    work = Path(args.work or tempfile.mkdtemp(prefix="sf-bench-pipeline-"))
    one, scaled, rows = make_manifests(work, args.clips, args.scale, args.seed)

    job1 = run_job(one, work / "out_1x", Path(args.config), cfg.worker_env)
    naive = run_naive(rows, cfg, work / "naive")
    compute = run_compute(rows, cfg)
    jobn = run_job(scaled, work / f"out_{args.scale}x", Path(args.config), cfg.worker_env)

    n, frames = len(rows), job1["frames"]
    extra_s = jobn["wall_s"] - job1["wall_s"]
    marginal = n * (args.scale - 1) / extra_s if extra_s > 0 else float("inf")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "config": args.config, "worker_env": cfg.worker_env, "clips": n, "frames": frames, "failures_in_job": job1["failures"],
        "job": {"wall_s": round(job1["wall_s"], 2), "clips_per_s": round(n / job1["wall_s"], 2), "frames_per_s": round(frames / job1["wall_s"], 1),
                "stage_seconds": job1["stage_seconds"]},
        # start-up (Ray, actors loading models, pipeline fill) is paid once per job; the marginal rate between
        # the 1x and the larger run is what a large corpus sees (start-up cancels out)
        "job_first_shard_after_s": round(job1["first_shard_after_s"], 1),
        "job_marginal_clips_per_s": round(marginal, 3),
        "compute_alone": {"wall_s": round(compute["wall_s"], 2), "clips_per_s": round(n / compute["wall_s"], 2)},
        "naive": {"wall_s": round(naive["wall_s"], 2), "clips_per_s": round(n / naive["wall_s"], 2)},
        "ratio_job_over_compute": round(compute["wall_s"] / job1["wall_s"], 3),  # target >= 0.85
        "ratio_job_over_naive": round(naive["wall_s"] / job1["wall_s"], 3),  # target >= 2
        "ratio_marginal_job_over_compute": round(marginal * compute["wall_s"] / n, 3),
        "ratio_marginal_job_over_naive": round(marginal * naive["wall_s"] / n, 3),
        f"job_{args.scale}x": {"clips": n * args.scale, "wall_s": round(jobn["wall_s"], 2), "clips_per_s": round(n * args.scale / jobn["wall_s"], 2)},
        "peak_mib": {"1x_tree_pss": round(job1["peak_tree_mib"]), f"{args.scale}x_tree_pss": round(jobn["peak_tree_mib"]),
                     "1x_driver_rss": round(job1["peak_driver_mib"]), f"{args.scale}x_driver_rss": round(jobn["peak_driver_mib"])},
        "ratio_peak_tree_pss": round(jobn["peak_tree_mib"] / job1["peak_tree_mib"], 3),
    }
    # the arms run one after another: a machine busy with other work in one of them skews its ratios, and the
    # marginal rate, a difference of two wall times, can even come out negative
    warnings = []
    if jobn["wall_s"] <= job1["wall_s"] or marginal * compute["wall_s"] / n > 1.05:
        # the job decodes and extracts: at its margin it cannot beat the extractors' compute alone
        warnings.append(f"the {args.scale}x job took no longer than the 1x job, or its marginal rate beat compute alone: "
                        "the marginal rate and its ratios are noise")
    if compute["wall_s"] > naive["wall_s"]:
        warnings.append("compute alone took longer than the naive script, which also decodes: the machine was busy; rerun")
    result["warnings"] = warnings
    print(json.dumps(result, indent=1))
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()
