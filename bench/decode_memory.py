"""Peak memory of the job's decode stage on one long clip: decoding in chunks (resize each as it comes, what
the job does) next to decoding the whole clip at the video's size first (what it did before), side by side.

    python bench/decode_memory.py [--seconds 20] [--size 1280x720] [--config configs/extract_demo.yaml] [--backend decord pyav]

A synthetic H.264 clip is written with the ffmpeg CLI; each mode runs the job's own decode_prepare (every
stream's resize/crop of the config) in a fresh process and reports its peak RSS and wall time. The whole-clip
mode is the same code with one chunk as large as the clip. Checks that both prepare the same pixels. Both run with the config's ``worker_env``, as the job's tasks do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def child(path: str, config: str, chunk_mib: float, backend: str) -> None:
    import numpy as np

    import pipeline.decode as decode
    from pipeline.config import load_job_config
    from pipeline.extract import _ray_rows
    from pipeline.plan import ShardPlan
    from pipeline.stages import decode_prepare

    if chunk_mib == chunk_mib:  # nan: the default
        decode.DECODE_CHUNK_MIB = chunk_mib
    cfg = load_job_config(Path(config))
    clip = {"id": "a", "key": "a", "dataset": "d", "split": "train", "signer": None, "text": "t", "source_kind": "video",
            "path": path, "start_s": None, "end_s": None, "fps": None, "num_frames": 0}
    rows = _ray_rows([ShardPlan(name="s", split="train", rows=[clip])])
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    options = decode.DecodeOptions(**{**cfg.decode.__dict__, "backend": backend, "max_clip_mib": float("inf")})
    t0 = time.perf_counter()
    out = decode_prepare(batch, json.dumps([s.extractor for s in cfg.streams], sort_keys=True), options)
    wall = time.perf_counter() - t0
    assert out["error_class"][0] == "", out["error_message"][0]
    digest = hashlib.sha256()
    for col in sorted(c for c in out if c.startswith("prep_")):
        digest.update(np.ascontiguousarray(out[col][0]).tobytes())
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "frames": int(out["decoded_frames"][0]), "prepared_sha256": digest.hexdigest()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--config", default=str(ROOT / "configs/extract_demo.yaml"))
    ap.add_argument("--backend", nargs="+", default=["decord", "pyav"])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]), args.child[3])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "long.mp4")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate=25:duration={args.seconds}",
                        "-c:v", "libx264", "-preset", "veryfast", path], check=True)
        # the job's decode tasks run with the config's worker_env (allocator settings)
        from pipeline.config import load_job_config

        env = {**os.environ, **load_job_config(Path(args.config)).worker_env}
        report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "clip": f"{args.size}, 25 fps, {args.seconds} s, H.264",
                  "config": args.config}
        for backend in args.backend:
            results = {}
            for mode, chunk_mib in (("chunked", None), ("whole_clip_first", 1e9)):
                run = subprocess.run([sys.executable, __file__, "--child", path, args.config, str(chunk_mib or "nan"), backend],
                                     check=True, capture_output=True, text=True, env=env)
                results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
            chunked, whole = results["chunked"], results["whole_clip_first"]
            report[backend] = {**results, "same_prepared_pixels": chunked.pop("prepared_sha256") == whole.pop("prepared_sha256"),
                               "ratio_peak_rss_whole_over_chunked": round(whole["peak_rss_mib"] / chunked["peak_rss_mib"], 2),
                               "ratio_wall_whole_over_chunked": round(whole["wall_s"] / chunked["wall_s"], 2)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
