"""`signfeat` subcommands of the motion package (registered by pipeline/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def register(sub) -> None:
    """Add this package's subcommands to ``sub`` (argparse subparsers). Each subparser sets
    ``handler=function(args) -> int`` with set_defaults; SignfeatError from a handler is a one-line error."""
    s = sub.add_parser("motion-stats", help="mean.npy / std.npy of the smplx623 stream over shards (HumanML3D's block-averaged std)")
    s.add_argument("shards", nargs="+", type=Path, metavar="SHARDS", help=".tar shards or folders holding them")
    s.add_argument("--out", type=Path, required=True, help="folder for mean.npy, std.npy, stats.json")
    s.add_argument("--stream", default="smplx623", help="stream name in the shards (default smplx623)")
    s.set_defaults(handler=_motion_stats)

    r = sub.add_parser("motion-render", help="draw a clip's recovered skeleton (body + hands) to PNG frames, a GIF or an MP4")
    r.add_argument("features", type=Path, metavar="FEATURES", help="a [T, 623] .npy file or a .tar shard")
    r.add_argument("--out", type=Path, required=True, help="OUT.gif, OUT.mp4, or a folder for PNG frames")
    r.add_argument("--key", help="the sample in a shard: its key or its clip id (default: the first sample with the stream)")
    r.add_argument("--stream", default="smplx623")
    r.add_argument("--fps", type=float, help="playback frame rate (default: a shard sample's own fps, else 20)")
    r.add_argument("--every", type=int, default=1, help="draw every N-th frame (default 1)")
    r.set_defaults(handler=_motion_render)


# what --out of motion-render may be: one animation of these suffixes, or a folder of PNG frames (no suffix)
ANIMATIONS = (".gif", ".mp4")
IMAGE_OR_VIDEO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".npy"}


def _motion_stats(args) -> int:
    from motion.stats import motion_stats, write_motion_stats
    from pipeline.cli import writable_folder
    from pipeline.errors import refuse_output_over_input

    # checked before every shard is read, not by a FileExistsError traceback after it
    refuse_output_over_input("--out", args.out, args.shards)
    writable_folder("--out", args.out)
    stats = motion_stats(args.shards, args.stream)
    out = write_motion_stats(stats, args.out)
    print(json.dumps({"out": str(out), **{k: stats[k] for k in ("shards", "clips", "frames", "skipped_nan", "samples_without_stream")}}, indent=1))
    return 0


def _motion_render(args) -> int:
    from motion.humanml3d import FEATURE_WIDTH, recover_from_ric
    from motion.render import load_features, render_frames, save_images
    from pipeline.cli import writable_file, writable_folder
    from pipeline.errors import SignfeatError, refuse_output_over_input

    if args.every < 1 or (args.fps is not None and not 0 < args.fps < float("inf")):  # NaN and inf too
        raise SignfeatError("--every must be >= 1 and --fps a finite number > 0")
    refuse_output_over_input("--out", args.out, [args.features])
    suffix = args.out.suffix.lower()
    if suffix in IMAGE_OR_VIDEO_SUFFIXES:  # "anything else: a folder" made a folder named clip.avi/ of PNG frames
        raise SignfeatError(f"--out {args.out}: motion-render writes {' or '.join(ANIMATIONS)} (one animation) or a folder of PNG "
                            f"frames (a name without {suffix})")
    if suffix in ANIMATIONS:  # checked before every frame is drawn
        writable_file("--out", args.out, example="skeleton.gif")
    else:
        writable_folder("--out", args.out)
    features, key, own_fps = load_features(args.features, args.key, args.stream)
    fps = args.fps or own_fps or 20.0  # a 25 fps video row's motion played at 20 was 20 % slow
    if features.ndim != 2 or features.shape[1] != FEATURE_WIDTH or not len(features):
        raise SignfeatError(f"{args.features}: features must be [T, {FEATURE_WIDTH}] with T >= 1, got {features.shape}")
    if not np.isfinite(features).all():
        raise SignfeatError(f"{args.features}: features hold NaN or inf values; nothing to draw")
    images = render_frames(recover_from_ric(features), every=args.every)
    written = save_images(images, args.out, fps / args.every)
    print(json.dumps({"key": key, "frames": len(images), "out": str(args.out), "files": len(written)}, indent=1))
    return 0
