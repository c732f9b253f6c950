"""Extractor throughput: end to end (uint8 frames in, float16 arrays out) next to the bare model forward.

    python bench/extractors.py --device cuda --dtype bf16 --size full      # on a GPU
    python bench/extractors.py --device cpu --size tiny                    # smoke run anywhere

For each extractor, on the same clips in one run:
  bare      the model's forward alone on batches prepared in advance and already on the device
            (for clip_s2 the S² tiles are cut in advance too);
  actor     ``extract_prepared``: S² split/merge, window gathering, packing, host<->device copies,
            unpacking, float16 -- what the GPU actor of the Ray job does;
  e2e       uint8 frames in: ``prepare`` (resize, crop; timed on one CPU thread) plus the actor's time, i.e.
            ``extract`` done serially. In the Ray job preprocessing runs in the CPU decode tasks, in parallel.
Ratios are times over the bare forward (target: <= 1.10). FLOPs come from torch's FlopCounterMode on one
bare batch; MFU is achieved FLOP/s over the GPU's bf16 dense peak (spec, and a measured 8192^3 matmul).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from extractors import ExtractorConfig, build_extractor  # noqa: E402
from extractors.clip_s2 import s2_tiles  # noqa: E402
from manifests.demo_corpus import Sentence, render_sentence  # noqa: E402

SPEC_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_clips(n: int, frames: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    clips = []
    for i in range(n):
        words = tuple(int(w) for w in rng.integers(0, 12, size=1 + frames // 12))
        video = render_sentence(Sentence(words, i % 3), width, height)
        clips.append(np.ascontiguousarray(video[:frames]))
    return clips


def bare_batches(ex, prepared: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model inputs of extract_prepared, cut in advance and moved to the device in the compute dtype."""
    inputs = []
    for p in prepared:
        p = ex.transform.normalize(p)
        for u in ex.units(p.shape[0]):
            inputs.append(p[u])
    batches = []
    for i in range(0, len(inputs), ex.batch_size):
        b = torch.stack(inputs[i : i + ex.batch_size])
        if ex.name == "clip_s2":
            b, _ = s2_tiles(b[:, 0], ex.settings.scales, ex.base)
        elif ex.name == "dinov2":
            b = b[:, 0]
        dtype = ex.compute_dtype if ex.device.type == "cuda" else torch.float32
        batches.append(b.to(ex.device, dtype))
    return batches


def model_forward(ex, batch: torch.Tensor) -> torch.Tensor:
    if ex.config.compile:  # compare like with like: the compiled extractor against the compiled model
        if getattr(ex, "_compiled_model", None) is None:
            ex._compiled_model = torch.compile(ex.hidden_states if ex.name == "clip_s2" else ex.model, dynamic=False)
        out = ex._compiled_model(batch) if ex.name == "clip_s2" else ex._compiled_model(pixel_values=batch)
        return out if ex.name == "clip_s2" else out.last_hidden_state
    if ex.name == "clip_s2":
        return ex.hidden_states(batch)
    return ex.model(pixel_values=batch).last_hidden_state


def count_flops(ex, batch: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model_forward(ex, batch)
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    t = timed(lambda: a @ b, device, 10)
    return 2 * 8192**3 / t / 1e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--height", type=int, default=260)
    ap.add_argument("--width", type=int, default=210)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--resize", default="pil", choices=["pil", "torch"])
    ap.add_argument("--only", nargs="*", default=["clip_s2", "videomae", "dinov2"])
    ap.add_argument("--batch", nargs="*", default=[], help="NAME=N batch sizes")
    ap.add_argument("--compile", action="store_true", help="torch.compile the extractors' forward")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    batch_sizes = {k: int(v) for k, v in (item.split("=") for item in args.batch)}
    torch.backends.cuda.matmul.allow_tf32 = True
    clips = make_clips(args.clips, args.frames, args.height, args.width)
    n_frames = sum(len(c) for c in clips)
    rows = []
    device_name = None
    peak_measured = None
    for name in args.only:
        cfg = ExtractorConfig(name=name, random_weights=True, tiny=args.size == "tiny", device=args.device, dtype=args.dtype,
                              batch_size=batch_sizes.get(name), settings={"resize": args.resize}, compile=args.compile)
        ex = build_extractor(cfg)
        if device_name is None:
            device_name = torch.cuda.get_device_name(ex.device) if ex.device.type == "cuda" else "cpu"
            peak_measured = matmul_peak(ex.device)
        prepared = [ex.prepare(c) for c in clips]
        # preprocessing on one thread, as a Ray decode task (num_cpus 1) runs it; warmed up and repeated like the others
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            prepare_s = timed(lambda: [ex.prepare(c) for c in clips], torch.device("cpu"), args.repeat)
        finally:
            torch.set_num_threads(threads)
        batches = bare_batches(ex, prepared)
        with torch.inference_mode():
            bare_s = timed(lambda: [model_forward(ex, b) for b in batches], ex.device, args.repeat)
            actor_s = timed(lambda: ex.extract_prepared(prepared), ex.device, args.repeat)
        e2e_s = prepare_s + actor_s
        flops = sum(count_flops(ex, b) for b in batches[:1]) * len(batches) if batches else 0.0
        # the last batch may be smaller: count all batches exactly when there are few
        if len(batches) <= 4:
            flops = sum(count_flops(ex, b) for b in batches)
        tflops = flops / bare_s / 1e12
        spec = next((v for k, v in SPEC_PEAK_TFLOPS.items() if device_name and k in device_name), None)
        rows.append({
            "extractor": name, "width": ex.width, "batch_size": ex.batch_size, "frames": n_frames, "model_inputs": sum(b.shape[0] for b in batches),
            "bare_fps": n_frames / bare_s, "actor_fps": n_frames / actor_s, "e2e_fps": n_frames / e2e_s,
            "actor_over_bare": actor_s / bare_s, "e2e_over_bare": e2e_s / bare_s, "prepare_ms_per_frame": 1000 * prepare_s / n_frames,
            "bare_tflops": tflops, "mfu_spec": tflops / spec if spec else None, "mfu_measured_peak": tflops / peak_measured if peak_measured else None,
        })
        del ex, prepared, batches
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    print(f"\nextractor throughput on {device_name}; {args.size} models{' (torch.compile)' if args.compile else ''}, compute dtype {args.dtype}, {args.clips} clips x {args.frames} frames of "
          f"{args.width}x{args.height}, preprocessing '{args.resize}' on 1 CPU thread" + (f"; measured bf16 matmul peak {peak_measured:.0f} TFLOP/s" if peak_measured else ""))
    header = f"{'extractor':<10}{'batch':>6}{'bare f/s':>10}{'actor f/s':>11}{'e2e f/s':>10}{'actor/bare':>11}{'e2e/bare':>10}{'prep ms/f':>10}{'TFLOP/s':>9}{'MFU':>7}"
    print(header)
    for r in rows:
        mfu = f"{100 * r['mfu_spec']:.0f}%" if r["mfu_spec"] else "-"
        print(f"{r['extractor']:<10}{r['batch_size']:>6}{r['bare_fps']:>10.1f}{r['actor_fps']:>11.1f}{r['e2e_fps']:>10.1f}{r['actor_over_bare']:>11.3f}"
              f"{r['e2e_over_bare']:>10.3f}{r['prepare_ms_per_frame']:>10.2f}{r['bare_tflops']:>9.1f}{mfu:>7}")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "args": vars(args) | {"json": str(args.json)}, "rows": rows, "matmul_peak_tflops": peak_measured}, indent=1, default=str))


if __name__ == "__main__":
    main()
