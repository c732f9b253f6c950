"""Probe throughput: signfeat's probe vs running ffprobe per file, on the same clips, in one run.

    python bench/probe.py [--clips 300] [--frames 75] [--width 320 --height 240]

Prints clips/s for: ffprobe per file (streams + format, what one usually runs), ffprobe with
-count_packets (which, like signfeat, counts the frames), signfeat's probe in-process on one core (no
Ray), and signfeat's probe on a local Ray instance with 1 and with all cores. signfeat's probe does more
per clip than either ffprobe call: it demuxes every packet (exact frame count and timestamps), decodes one
frame, and hashes every byte. It also prints the driver's peak Python memory for a manifest of N and 4N
rows, which should grow only with the rows themselves.

Measured on this project's dev machine (2-core x86_64 VM, no GPU, 2026-11-23), 300 clips of 320x240,
75 frames, H.264 (page cache warm):

    ffprobe per file (1 core)                  8.0 clips/s   x 1.00
    ffprobe -count_packets (1 core)            8.0 clips/s   x 1.00
    signfeat probe in-process (1 core)       193.5 clips/s   x24.08
    signfeat probe on Ray (1 cpu)            246.9 clips/s   x30.72   (Ray start-up 6.0 s, not counted)
    signfeat probe on Ray (2 cpu)            335.5 clips/s   x41.73   (Ray start-up 4.6 s, not counted)
    scaling 1 -> 2 cores: x1.36 (on 2 cores the driver and raylet share them with the workers)
    driver peak Python memory: 300 rows 1.2 MiB, 1200 rows 1.8 MiB (615 bytes per extra row)

Most of ffprobe's cost per file is starting the process and loading FFmpeg; signfeat's probe stays in
one process per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from manifests.demo_corpus import Sentence, render_sentence, write_video  # noqa: E402
from manifests.probe import probe_chunk, probe_rows  # noqa: E402


def make_clips(folder: Path, n: int, frames: int, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for k in range(4):  # a few distinct videos, copied: probing reads each copy in full anyway
        words = tuple(int(w) for w in np.random.default_rng(k).integers(0, 12, size=12))
        video = render_sentence(Sentence(words, k % 3), width, height)
        video = np.concatenate([video] * (frames // len(video) + 1))[:frames]
        path = folder / f"src{k}.mp4"
        write_video(path, video)
        sources.append(path)
    paths = []
    for i in range(n):
        p = folder / f"clip_{i:06d}.mp4"
        shutil.copyfile(sources[i % len(sources)], p)
        paths.append(p)
    return paths


def rows_for(paths: list[Path]) -> list[dict]:
    return [{"_row": i, "id": p.stem, "source_kind": "video", "path": str(p), "start_s": None, "end_s": None, "fps": None} for i, p in enumerate(paths)]


def time_ffprobe(paths: list[Path], count_packets: bool) -> float:
    extra = ["-count_packets"] if count_packets else []
    t = time.perf_counter()
    for p in paths:
        subprocess.run(["ffprobe", "-v", "error", *extra, "-show_streams", "-show_format", "-of", "json", str(p)], check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--frames", type=int, default=75)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "probe")
    args = ap.parse_args()
    import ray

    paths = make_clips(args.out / "clips", args.clips, args.frames, args.width, args.height)
    rows = rows_for(paths)
    n = len(paths)
    results: dict[str, float] = {}

    results["ffprobe per file (1 core)"] = n / time_ffprobe(paths, count_packets=False)
    results["ffprobe -count_packets (1 core)"] = n / time_ffprobe(paths, count_packets=True)
    probe_chunk(rows[:32])  # warm: imports, codec init, page cache (the Ray runs get the same)
    t = time.perf_counter()
    table = probe_chunk(rows)
    results["signfeat probe in-process (1 core)"] = n / (time.perf_counter() - t)
    assert table.column("status").to_pylist() == ["ok"] * n, "probe failed on bench clips"

    cores = os.cpu_count() or 1
    for num_cpus in sorted({1, cores}):
        t0 = time.perf_counter()
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR")
        startup = time.perf_counter() - t0
        probe_rows(rows[: min(n, 32)], progress=False)  # warm the workers (imports)
        t = time.perf_counter()
        probe_rows(rows, progress=False)
        results[f"signfeat probe on Ray ({num_cpus} cpu)"] = n / (time.perf_counter() - t)
        results[f"  (Ray start-up, {num_cpus} cpu, seconds)"] = startup
        ray.shutdown()

    # driver memory: N vs 4N rows (the same files repeated; only the manifest grows)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    peaks = {}
    for mult in (1, 4):
        many = rows_for(paths * mult)
        tracemalloc.start()
        probe_rows(many, progress=False)
        peaks[mult] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    ray.shutdown()

    base = results["ffprobe per file (1 core)"]
    print(f"\nprobe throughput, {n} clips of {args.width}x{args.height}, {args.frames} frames, H.264; {cores} cores")
    for name, value in results.items():
        if name.startswith("  "):
            print(f"{name:<44} {value:8.2f}")
        else:
            print(f"{name:<44} {value:8.1f} clips/s   x{value / base:5.2f} vs ffprobe")
    one, all_ = results["signfeat probe on Ray (1 cpu)"], results[f"signfeat probe on Ray ({cores} cpu)"]
    print(f"scaling 1 -> {cores} cores: x{all_ / one:.2f}")
    print(f"driver peak Python memory: {n} rows {peaks[1] / 2**20:.1f} MiB, {4 * n} rows {peaks[4] / 2**20:.1f} MiB "
          f"({(peaks[4] - peaks[1]) / (3 * n):.0f} bytes per extra row)")
    (args.out / "result.json").write_text(json.dumps({"results": results, "peaks": peaks}, indent=1))


if __name__ == "__main__":
    main()
