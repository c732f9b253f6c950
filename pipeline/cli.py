"""The ``signfeat`` command. Each subcommand parses its options, validates them, and calls one function.

A user error (bad path, unknown format, bad option) is one line on stderr and exit status 2; a
traceback means a bug in signfeat.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from pathlib import Path

from pipeline.errors import ClipError, SignfeatError, Terminated, refuse_output_over_input


PLUGIN_MODULES = ("trainer.cli", "motion.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise SignfeatError(f"{self.prog}: {message}")


def _number(cast, lower: float, inclusive: bool = True):
    """An argparse type: a number of type ``cast`` that is >= lower (or > lower)."""
    bound = f">= {lower}" if inclusive else f"> {lower}"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if cast is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):  # "nan" passes the bound check below, "inf" is no rate or size
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < lower or (not inclusive and value == lower):
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


_positive_float = _number(float, 0, inclusive=False)
_nonneg_int = _number(int, 0)
_positive_int = _number(int, 0, inclusive=False)  # --num-cpus 0 silently meant "all CPUs"
_nonneg_float = _number(float, 0)


def build_parser() -> argparse.ArgumentParser:
    from manifests.formats import FORMATS

    parser = _Parser(prog="signfeat", description="Frozen-model features of sign-language video corpora.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    manifest = sub.add_parser("manifest", help="build and curate corpus manifests")
    msub = manifest.add_subparsers(dest="manifest_command", required=True, parser_class=_Parser)

    b = msub.add_parser("build", help="annotations -> probed Parquet manifest")
    b.add_argument("--format", default="auto", choices=FORMATS, help="annotation format (auto: guess from each file's header)")
    b.add_argument("--annotations", nargs="+", required=True, type=Path, metavar="FILE")
    b.add_argument("--root", type=Path, help="corpus folder that relative paths start from (default: the first annotation's folder)")
    b.add_argument("--out", required=True, type=Path, metavar="M.parquet")
    b.add_argument("--dataset", help="dataset name of the rows whose annotation names none (default: per format; a table's file name)")
    b.add_argument("--num-cpus", type=_positive_int, default=None, help="CPUs of the local Ray instance (default: all)")
    b.add_argument("--full-decode", action="store_true", help="decode every frame while probing (slow, thorough)")
    b.add_argument("--frame-fps", type=_positive_float, default=25.0, help="fps of frame folders whose annotation gives none")
    b.add_argument("--no-progress", action="store_true")

    c = msub.add_parser("curate", help="filter, deduplicate, assign splits, write a report")
    c.add_argument("manifest", type=Path)
    c.add_argument("--out", required=True, type=Path, metavar="CURATED.parquet")
    c.add_argument("--report", required=True, type=Path, metavar="DIR")
    c.add_argument("--config", type=Path, help="YAML of curation options (configs/curate.yaml: the usual bounds); flags given here override it. Without it only status, empty texts and duplicates are filtered")
    c.add_argument("--min-duration", type=_nonneg_float, dest="min_duration_s")
    c.add_argument("--max-duration", type=_nonneg_float, dest="max_duration_s")
    c.add_argument("--min-frames", type=_nonneg_int)
    c.add_argument("--max-frames", type=_nonneg_int)
    c.add_argument("--min-width", type=_nonneg_int)
    c.add_argument("--min-height", type=_nonneg_int)
    c.add_argument("--min-fps", type=_nonneg_float)
    c.add_argument("--max-fps", type=_nonneg_float)
    c.add_argument("--min-text-chars", type=_nonneg_int)
    c.add_argument("--max-text-chars", type=_nonneg_int)
    c.add_argument("--no-dedup", action="store_const", const=False, dest="dedup", help="keep exact duplicates (same content hash)")
    c.add_argument("--split-ratios", help="for rows without a split (default train=0.8,dev=0.1,test=0.1)")
    c.add_argument("--group-by-signer", action=argparse.BooleanOptionalAction, default=None,
                   help="assign whole signers to one split (--no-group-by-signer: turn the config's off)")
    c.add_argument("--split-salt", help="changes the hash-based split assignment")
    c.add_argument("--no-plots", action="store_true")

    f = sub.add_parser("features", help="run one extractor on one clip (a video file or a frame folder) and save its array")
    f.add_argument("video", type=Path, metavar="VIDEO")
    f.add_argument("--extractor", required=True, help="clip_s2 | videomae | dinov2 | ...")
    f.add_argument("--model", help="Hugging Face id or local folder; for OpenCLIP a pretrained tag or checkpoint file")
    f.add_argument("--revision")
    f.add_argument("--backend", choices=["hf", "open_clip"], help="clip_s2 backend (default hf; open_clip when --arch is given)")
    f.add_argument("--arch", help="OpenCLIP architecture (default ViT-L-14)")
    f.add_argument("--random-weights", action="store_true", help="the named architecture, untrained (no download)")
    f.add_argument("--tiny", action="store_true", help="a small random model of the same architecture")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extractor setting, one per --set: --set scales=224,448 --set layer=-2")
    f.add_argument("--device", default="auto")
    f.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16")
    f.add_argument("--batch-size", type=_number(int, 1))
    f.add_argument("--decode-backend", default="decord", choices=["decord", "torchcodec", "pyav"])
    f.add_argument("--fps", type=_positive_float, help="frame rate of a frame folder (default 25), or of a SMPL-X parameter file that records none")
    # the job's decode options, so one clip's array can be compared with what a job's shard holds
    f.add_argument("--target-fps", type=_positive_float, help="resample the frames in time, as the job's decode.target_fps")
    f.add_argument("--max-frames", type=_number(int, 1), help="keep at most this many frames, as the job's decode.max_frames")
    f.add_argument("--out", required=True, type=Path, metavar="f.npy")

    x = sub.add_parser("extract", help="manifest -> WebDataset shards of features, on Ray")
    x.add_argument("--manifest", required=True, help="manifest Parquet: a path or s3://bucket/m.parquet")
    x.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    x.add_argument("--config", required=True, type=Path, help="YAML job config (configs/extract_*.yaml)")
    x.add_argument("--address", help="Ray cluster address ('auto' for the running cluster; default: RAY_ADDRESS, else a local instance)")
    x.add_argument("--overwrite", action="store_true", help="replace what OUT holds, even from another config")
    x.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray instance (default: all, or what the config's actors "
                   "need plus one for decoding when that is more; a number given is checked against that need)")
    x.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("verify", help="check every shard of an extract output; non-zero exit on any problem")
    v.add_argument("out")
    st = sub.add_parser("stats", help="counts, hours, frames and bytes per split and stream of an extract output")
    st.add_argument("out")

    d = sub.add_parser("demo-corpus", help="write the synthetic demo corpus")
    d.add_argument("out", type=Path)
    d.add_argument("--seed", type=_nonneg_int, default=0)
    d.add_argument("--clips", type=int, default=48)
    d.add_argument("--size", type=int, default=64, help="frame height in pixels")

    for module in PLUGIN_MODULES:  # the trainer's and the motion stream's own subcommands
        importlib.import_module(module).register(sub)
    return parser


def writable_file(flag: str, path: Path, example: str = "manifest.parquet") -> None:
    """An output file's path checked before the work that ends in writing it (a build probes for minutes)."""
    path = Path(path)
    if path.is_dir():
        raise SignfeatError(f"{flag} {path} is a folder; give a file name (e.g. {path / example})")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise SignfeatError(f"{flag} {path}: a file stands where one of its folders would be")
    _creatable(flag, path.parent)


def writable_folder(flag: str, path: Path) -> None:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SignfeatError(f"{flag} {path} is a file; give a folder")
    _creatable(flag, path)


def _creatable(flag: str, folder: Path) -> None:
    """The folder made now (an output goes there anyway) and writable: otherwise the work ended in an OSError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SignfeatError(f"{flag}: cannot create the folder {folder} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SignfeatError(f"{flag}: the folder {folder} is not writable")


def _manifest_build(args) -> int:
    from manifests.build import build_manifest

    writable_file("--out", args.out)
    refuse_output_over_input("--out", args.out, args.annotations)
    summary = build_manifest(
        args.annotations, args.out, fmt=args.format, root=args.root, dataset=args.dataset, num_cpus=args.num_cpus or None,
        full_decode=args.full_decode, frame_fps=args.frame_fps, progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=1))
    if not summary.get("rows"):  # a header-only table (an export that went wrong) built an empty manifest without a word
        print(f"note: the annotation file(s) hold no rows: {args.out} is an empty manifest", file=sys.stderr)
    return 0


def _manifest_curate(args) -> int:
    from manifests.curate import CurateOptions, curate_manifest, load_curate_config, parse_split_ratios

    refuse_output_over_input("--out", args.out, [args.manifest, *([args.config] if args.config else [])])
    settings = load_curate_config(args.config) if args.config else {}
    if settings:
        try:  # the file's own values first, so that an error names it
            CurateOptions(**settings)
        except (SignfeatError, TypeError) as exc:
            raise SignfeatError(f"{args.config}: {exc}") from None
    flags = {
        name: getattr(args, name)
        for name in ("min_duration_s", "max_duration_s", "min_frames", "max_frames", "min_width", "min_height", "min_fps",
                     "max_fps", "min_text_chars", "max_text_chars", "dedup", "group_by_signer", "split_salt")
    }
    if args.split_ratios is not None:
        flags["split_ratios"] = parse_split_ratios(args.split_ratios)
    settings.update({k: v for k, v in flags.items() if v is not None})
    try:
        options = CurateOptions(**settings)
    except TypeError as exc:
        raise SignfeatError(f"bad curation options: {exc}") from None
    writable_file("--out", args.out)  # made once the options are known good: a bad config left two empty folders
    writable_folder("--report", args.report)
    report = curate_manifest(args.manifest, args.out, args.report, options, plots=not args.no_plots)
    print(json.dumps({k: report[k] for k in ("input_rows", "kept", "removed", "kept_per_split")}, indent=1))
    plots = f" (plots: {args.report / 'overview.png'} and others)" if not args.no_plots else ""
    print(f"curated manifest: {args.out}\nreport: {args.report / 'report.json'}{plots}")
    drawn = report.get("kept_with_split_drawn", 0)
    if 0 < drawn < report["kept"]:  # a split file missed (val/ground_truth.csv names no split): say it, it is not an error
        print(f"note: {drawn} of {report['kept']} kept rows had no split and got one: drawn by the ratios {options.split_ratios}, "
              "or joined from their video's or signer's other rows; the others kept the split their annotation gave", file=sys.stderr)
    far = report.get("drawn_far_from_ratios", {})
    if far:
        print(f"note: the {sum(report['drawn_per_split'].values())} rows drawn by the ratios are far from them ({', '.join(f'{k}: {v[0]:.0%} of them, ratio {v[1]:.0%}' for k, v in far.items())}): "
              "splits are drawn per recording (and per signer with --group-by-signer), so a few large groups decide the shares; "
              "another --split-salt draws again", file=sys.stderr)
    leaks = report.get("recordings_in_several_splits", {})
    if leaks:
        first = ", ".join(f"{name} ({' + '.join(splits)})" for name, splits in list(leaks.items())[:3])
        print(f"note: {len(leaks)} recording(s) have kept rows in several splits, as the annotations give them: {first}"
              f"{' ...' if len(leaks) > 3 else ''}; a test clip from a recording also trained on inflates the scores "
              f"(all of them: recordings_in_several_splits in {args.report / 'report.json'})", file=sys.stderr)
    return 0


def _demo_corpus(args) -> int:
    from manifests.demo_corpus import make_demo_corpus

    if args.clips < 16 or args.size < 16:
        raise SignfeatError("demo-corpus needs --clips >= 16 and --size >= 16")
    writable_folder("demo-corpus OUT", args.out)
    summary = make_demo_corpus(args.out, seed=args.seed, clips=args.clips, size=args.size)
    print(f"demo corpus: {args.out} ({len(summary['truth'])} clips, annotations:)")
    for a in summary["annotations"]:
        print(f"  {a}")
    return 0


def _features(args) -> int:
    import numpy as np

    from extractors import ExtractorConfig, build_extractor
    from pipeline.decode import DecodeOptions, decode_clip

    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SignfeatError(f"--set expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    backend = args.backend or ("open_clip" if args.arch else "hf")
    config = ExtractorConfig(
        name=args.extractor, model=args.model, revision=args.revision, backend=backend, arch=args.arch, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, random_weights=args.random_weights, tiny=args.tiny, settings=settings,
    )
    from extractors.base import REGISTRY, parse_settings

    if args.extractor in REGISTRY:  # --set checked before the clip is decoded (a 1080p clip: seconds and GBs), not after
        parse_settings(REGISTRY[args.extractor].Settings, settings, args.extractor)
        # a Hub id's branch or tag loaded as the commit it is now, and said (as a job's samples record it): the
        # array can then be compared with a shard's, whose revision is a commit
        commit = REGISTRY[args.extractor].hub_commit(config)
        if commit is not None and commit != config.revision:
            config.revision = commit
    if not args.video.exists():
        raise SignfeatError(f"no such video or frame folder: {args.video}")
    refuse_output_over_input("--out", args.out, [args.video])
    try:  # before the model loads and runs, not after: a bad --out would waste that work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SignfeatError(f"--out {args.out}: cannot create its folder ({exc.strerror}: {exc.filename})") from None
    if args.out.is_dir():
        raise SignfeatError(f"--out {args.out} is a folder; give a file name such as f.npy")
    from motion.params_io import is_params_path

    if args.extractor == "smplx623" and is_params_path(args.video):  # SMPL-X parameters (a file or a folder of per-frame files)
        # decode options are video options (a job ignores them for parameter rows too): refused, not ignored
        given = [flag for flag, value in (("--target-fps", args.target_fps), ("--max-frames", args.max_frames)) if value]
        if given:
            raise SignfeatError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to videos and frame folders; {args.video} holds SMPL-X parameters, "
                                "which smplx623 resamples itself: --set target_fps=F")
        extractor = build_extractor(config)
        array, frames, fps = extractor.extract_files([str(args.video)], [args.fps])[0]  # frames/fps the rows align to
        estimate = {}
        if args.fps:  # a file that records its rate keeps it (as in a job): never a given --fps dropped without a word
            from motion.params_io import read_clip_params
            from pipeline.decode import rates_differ

            own = read_clip_params(args.video, extractor.settings.params_layout)[1]
            if own and rates_differ(args.fps, own):
                print(f"note: {args.video} records its own rate, {own:g} fps, which is used; --fps {args.fps:g} is not", file=sys.stderr)
    else:
        clip = {"source_kind": "frames" if args.video.is_dir() else "video", "path": str(args.video), "fps": args.fps}
        if args.video.is_dir() and not args.fps:  # a 30 fps folder read at 25 gave other features than its shard's, silently
            print(f"note: {args.video} is a frame folder and no --fps was given: read at {DecodeOptions().frame_fps:g} fps "
                  "(a job takes the manifest's fps)", file=sys.stderr)
        try:
            decoded = decode_clip(clip, DecodeOptions(backend=args.decode_backend, target_fps=args.target_fps, max_frames=args.max_frames))
        except ClipError as exc:
            if exc.kind != "too_long":
                raise
            raise ClipError(exc.kind, f"{exc}: this command holds the whole clip at full size; thin it with --target-fps or --max-frames") from None
        extractor = build_extractor(config)
        if hasattr(extractor, "extract_prepared_timed"):  # smplx623: its motion resampled to its own target_fps, as in a job
            array, frames, fps, detections = extractor.extract_prepared_timed([extractor.prepare(decoded.frames)], [decoded.fps])[0]
            estimate = {"estimate": detections}  # the frames without a person or a hand, which the fit filled in
        else:
            array = extractor.extract([decoded.frames])[0]
            frames, fps, estimate = int(decoded.frames.shape[0]), decoded.fps, {}
    if not np.isfinite(array).all():  # as a job sends the clip to failures (nonfinite): never a file of NaNs and exit 0
        raise ClipError("nonfinite", f"{args.extractor} produced non-finite values ({array.dtype} NaN or inf) for {args.video}; "
                                     f"nothing written to {args.out}")
    with open(args.out, "wb") as f:  # the name given (np.save would add .npy to any other suffix, and the summary lie)
        np.save(f, array, allow_pickle=False)
    meta = extractor.metadata()
    print(json.dumps({"out": str(args.out), "shape": list(array.shape), "dtype": str(array.dtype), "frames": frames,
                      "fps": fps, **{k: meta[k] for k in ("stream", "model", "revision", "weights", "settings", "settings_hash")}, **estimate},
                     indent=1, default=str))
    return 0


def _extract(args) -> int:
    from pipeline.config import load_job_config
    from pipeline.extract import run_extract

    config = load_job_config(args.config)  # validated before Ray starts
    if args.overwrite:  # a second SIGTERM leaves at once, past _keep_shards_note
        import pipeline.ray_runtime

        pipeline.ray_runtime.LEAVING_NOTE = " without --overwrite (with it, the shards completed so far are deleted)"
    summary = run_extract(args.manifest, args.out, config, address=args.address, overwrite=args.overwrite, progress=not args.no_progress,
                          num_cpus=args.num_cpus or None)
    weights = {s.name: _weights_label(s.extractor) for s in config.streams}
    shown = ("output", "clips_planned", "manifest_rows_not_ok", "samples", "failures", "failures_by_class", "shards", "shards_skipped_as_complete", "wall_s", "clips_per_s")
    print(json.dumps({k: summary[k] for k in shown}, indent=1))
    print(f"streams: {weights}")
    where = summary["output"].partition("?")[0]  # an s3:// URL's options (endpoint_override=...) go after the path, not in it
    print(f"shards: {where}/{{split}}/*.tar  index: index.parquet  failures: failures.parquet  summary: job.json")
    if summary["tars_not_in_plan"]:  # the pattern above reads them too
        print(f"WARNING: {len(summary['tars_not_in_plan'])} .tar file(s) there are not this job's shards (job.json: tars_not_in_plan); "
              "move them out before reading {split}/*.tar", file=sys.stderr)
    missing = summary.get("missing_on_a_node") or []
    if missing:
        shards = sorted({m["shard"] for m in missing})
        print(f"signfeat: error: {len(missing)} clip(s) failed as missing_file on a Ray node although this machine reads them "
              f"(first: {missing[0]['message']}): every node must reach the videos (a shared or S3 mount). The output is "
              f"complete, and a rerun skips complete shards: once every node has them, delete the tars of the {len(shards)} "
              f"shard(s) listed in job.json (missing_on_a_node) and rerun the same command (without --overwrite)", file=sys.stderr)
        return 1
    if summary["samples"] == 0 and summary["failures"]:
        # a setting that fails every clip (frame_limit below every clip's length, a model that fails on every input):
        # the output is complete, but a pipeline that goes on to `train` on exit 0 would train on nothing
        classes = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_class"].items())
        print(f"signfeat: error: every clip failed ({summary['failures']} failures; {classes}): see {where}/failures.parquet "
              "for why, fix the config or the data, and rerun with --overwrite", file=sys.stderr)
        return 1
    return 0


def _weights_label(extractor: dict) -> str:
    """What the job's summary says a stream's model is: random features must never pass for real ones."""
    if extractor.get("tiny"):
        return "RANDOM weights (tiny test model)"
    if extractor.get("random_weights"):
        return "RANDOM weights"
    if extractor.get("name") == "smplx623":  # no network weights: the body model file decides (the samples say the same)
        from motion.body_model import _check_model_file, find_model_file

        settings = extractor.get("settings") or {}
        try:
            synthetic = _check_model_file(find_model_file(settings.get("model_dir", ""), settings.get("gender", "neutral")))
        except Exception:  # noqa: BLE001  (a cluster's model folder may exist on the workers only)
            return "SMPL-X model from model_dir"
        return "SYNTHETIC SMPL-X test model (random shapes)" if synthetic else "SMPL-X model from model_dir"
    return "pretrained"


def _verify(args) -> int:
    from shards.verify import verify

    report = verify(args.out)
    if report.get("not_an_output"):  # a wrong path is a user error (exit 2, as for stats), not a damaged output (1)
        raise SignfeatError(report["problems"][0])
    for p in report["problems"]:
        print(f"PROBLEM {p}")
    for note in report.get("notes", []):
        print(f"NOTE {note}")
    print(f"{'OK' if report['ok'] else 'FAILED'}: {report.get('shards', 0)} shards, {report['samples']} samples, {report.get('failures', 0)} recorded failures, {_problem_count(report)}")
    if not report["ok"] and report.get("shards"):
        # a rerun checks a committed shard's tar by its size only (reading every tar back would double the job)
        print("To repair: rerun the `signfeat extract` command without --overwrite; it redoes shards whose tar is missing or of another size. "
              "A shard damaged in place (same size) is redone once you delete its tar; files the plan does not name are yours to remove.")
    return 0 if report["ok"] else 1


def _problem_count(report: dict) -> str:
    total, listed = report.get("problems_total", len(report["problems"])), len(report["problems"])
    return f"{total} problems" + (f" (the first {listed} listed)" if total > listed else "")


def _stats(args) -> int:
    from shards.verify import stats

    try:
        s = stats(args.out)
    except FileNotFoundError as exc:
        raise SignfeatError(str(exc)) from None
    print(f"{'split':<10}{'samples':>9}{'failures':>9}{'hours':>9}{'frames':>10}{'MiB':>9}  " + "  ".join(f"{x} rows" for x in s["streams"]))
    for split, e in s["splits"].items():
        print(f"{split:<10}{e['samples']:>9}{e['failures']:>9}{e['hours']:>9.3f}{e['frames']:>10}{e['bytes'] / 2**20:>9.1f}  " + "  ".join(f"{e[x + '_rows']:>{len(x) + 5}}" for x in s["streams"]))
    print(f"{'total':<10}{s['samples']:>9}{s['failures']:>9}{s['hours']:>9.3f}{s['frames']:>10}{s['bytes'] / 2**20:>9.1f}")
    wall = f"; the last run took {s['wall_s']:.0f} s" if isinstance(s.get("wall_s"), (int, float)) else ""
    print(f"{s['planned']} clips planned{wall}")
    if s["unfinished_run"]:
        run = s["unfinished_run"]
        print(f"NOTE a later run (started {run['started']} on {run['host']}, pid {run['pid']}) has not finished: it is going on, "
              f"or was stopped; these tables are the run's before it. Rerun the extract command (without --overwrite) to finish; "
              f"`signfeat verify {args.out}` checks the shards")
    if s["unaccounted"]:
        print(f"NOTE {s['unaccounted']} planned clips are in neither index.parquet nor failures.parquet: "
              f"run `signfeat verify {args.out}` (stats reads the tables, not the shards)")
    if s["in_both"]:
        print(f"NOTE {s['in_both']} clips are in both index.parquet and failures.parquet (each must be in one): "
              f"run `signfeat verify {args.out}`")
    return 0


COMMANDS = {("manifest", "build"): _manifest_build, ("manifest", "curate"): _manifest_curate, ("demo-corpus", None): _demo_corpus, ("features", None): _features, ("extract", None): _extract, ("verify", None): _verify, ("stats", None): _stats}


def _keep_shards_note(args, stopped: BaseException) -> None:
    """An extract run with --overwrite that stops midway advised "rerun the same command": with --overwrite that deletes
    the shards this run completed (hours of GPU time on a corpus) and starts again."""
    if getattr(args, "command", None) != "extract" or not getattr(args, "overwrite", False):
        return
    if isinstance(stopped, (KeyboardInterrupt, Terminated)) or "rerun the same command" in str(stopped):
        print("signfeat: note: rerun it without --overwrite to keep the shards completed so far (with --overwrite they are "
              "deleted and made again)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            # argparse takes a positional list in one run: `eval k=v --out D k2=v2` left k2=v2 unrecognised
            if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
                args.overrides = [*args.overrides, *extra]
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        handler = getattr(args, "handler", None) or COMMANDS[(args.command, getattr(args, "manifest_command", None))]
        return handler(args)
    except ClipError as exc:  # one clip the user pointed at directly (signfeat features)
        print(f"signfeat: error: {exc.kind}: {exc}", file=sys.stderr)
        return 2
    except SignfeatError as exc:
        print(f"signfeat: error: {exc}", file=sys.stderr)
        _keep_shards_note(args, exc)
        return 2
    except Terminated as exc:
        print("signfeat: terminated (SIGTERM); rerun the same command to go on", file=sys.stderr)
        _keep_shards_note(args, exc)
        return 143
    except KeyboardInterrupt as exc:
        print("signfeat: interrupted", file=sys.stderr)
        _keep_shards_note(args, exc)
        return 130


# Commands that start no Ray instance leave through os._exit once their output is flushed, skipping the native
# teardown at interpreter exit. pyarrow 26 aborts there now and then ("terminate called without an active
# exception", apache/arrow#34314: a parquet thread): verify's exit 1 became 134, and a finished 2-rank `train`
# under torchrun was reported as failed (1 run in ~25). extract keeps the normal exit: Ray's shutdown runs there.
SKIP_NATIVE_TEARDOWN = ("verify", "stats", "train", "eval")


def entry(argv: list[str] | None = None) -> None:
    """The ``signfeat`` console script (and ``python -m trainer.cli`` under torchrun)."""
    argv = sys.argv[1:] if argv is None else argv
    code = main(argv)
    if argv and argv[0] in SKIP_NATIVE_TEARDOWN:
        logging.shutdown()  # what the interpreter's exit would flush
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
