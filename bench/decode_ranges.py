"""Ranges of a long video (How2Sign-style annotations): what decoding them costs with each path, side by side.

    python bench/decode_ranges.py [--seconds 60] [--size 640x360] [--ranges 15]

A synthetic H.264 video (key frame every 2 s) is written with the ffmpeg CLI; then the same ranges are decoded
by decord's own seeking (what the decord backend did before it sent ranges to PyAV: wrong frames in open-GOP
files), by decode_clip now (PyAV from the last key frame before each range), and by PyAV from the file's start
(the fallback). Prints seconds and the ratio to decord; checks the frames agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pipeline import decode as D  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--ranges", type=int, default=15)
    args = ap.parse_args()
    if args.seconds < 5:  # ranges of 3 s start up to seconds - 4
        ap.error("--seconds must be at least 5")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "long.mp4")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate=30:duration={args.seconds}",
                        "-c:v", "libx264", "-preset", "veryfast", "-g", "60", path], check=True)
        timeline = D.read_timeline(path)
        ranges = [(float(s), float(s) + 3.0) for s in np.linspace(0, args.seconds - 4, args.ranges)]

        def decord_seeking(a, b):
            import decord

            idx = D.select_range(timeline.times_s, a, b, timeline.duration_s, path)
            # num_threads=0: decord's own choice, as PyAV's thread_type AUTO in the other two arms
            return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0).get_batch(idx.tolist()).asnumpy()

        def decode_clip_now(a, b):
            return D.decode_clip({"source_kind": "range", "path": path, "start_s": a, "end_s": b}, D.DecodeOptions(backend="decord")).frames

        def pyav_from_start(a, b):
            idx = D.select_range(timeline.times_s, a, b, timeline.duration_s, path)
            got = dict(D._pyav_from_start(path, np.unique(idx), timeline))  # timeline position -> frame
            return np.stack([got[i] for i in idx.tolist()])

        seconds, cpu_seconds, frames = {}, {}, {}
        for name, fn in [("decord_seeking", decord_seeking), ("decode_clip_pyav_from_key_frame", decode_clip_now), ("pyav_from_start", pyav_from_start)]:
            t, c = time.perf_counter(), time.process_time()  # process time counts the decoders' threads too
            frames[name] = [fn(a, b) for a, b in ranges]
            seconds[name], cpu_seconds[name] = round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)
        same = all(np.array_equal(x, y) for name in frames for x, y in zip(frames[name], frames["pyav_from_start"]))
        print(json.dumps({"video": f"{args.seconds} s {args.size} H.264, key frame every 2 s", "ranges": f"{len(ranges)} of 3 s",
                          "seconds": seconds, "ratio_to_decord": {k: round(v / seconds["decord_seeking"], 2) for k, v in seconds.items()},
                          "cpu_seconds": cpu_seconds, "cpu_ratio_to_decord": {k: round(v / cpu_seconds["decord_seeking"], 2) for k, v in cpu_seconds.items()},
                          "same_frames_everywhere": same}, indent=1))


if __name__ == "__main__":
    main()
