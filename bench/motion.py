"""Benchmark of the SMPL-X motion stream on CPU, printed in one run:

1. parameters -> 623-d: SMPL-X joints (batched forward), the feature step (joints -> 623), and both, in frames/s
   on one core (target: >= 10,000 frames/s for the feature step);
2. the fitting estimator (Input B without MediaPipe: keypoints of a known motion, as a perfect MediaPipe would
   give them) per iteration budget: frames/s and mean joint error against the true motion.

    .venv/bin/python bench/motion.py [--model-dir DIR] [--frames 20000] [--fit-frames 32]

Without --model-dir it runs on the synthetic SMPL-X model of motion/synthetic.py (same joint count and
kinematic tree as the real one; the joint path never touches the mesh, so timings carry over).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy/torch start their thread pools
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# the repository first, and not this folder: bench/pipeline.py, extractors.py and motion.py would shadow the packages of
# those names, also in Ray's workers (Ray gives them the script's folder when the driver's sys.path holds it)
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a real SMPL-X model folder (default: a synthetic one)")
    parser.add_argument("--frames", type=int, default=20000, help="frames for the parameters -> 623 timing")
    parser.add_argument("--clip-frames", type=int, default=200, help="frames per clip in that timing")
    parser.add_argument("--fit-frames", type=int, default=32, help="frames of the fitted clip")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from motion.body_model import MOTION_JOINTS, BodyModel, BodyModelSettings
    from motion.estimate import landmarks_to_keypoints
    from motion.fitting import FitSettings, fit_keypoints
    from motion.humanml3d import joints_to_features
    from motion.synthetic import landmarks_from_joints, smooth_random_params, write_synthetic_smplx

    model_dir = args.model_dir or tempfile.mkdtemp(prefix="smplx_bench_")
    if not args.model_dir:
        write_synthetic_smplx(model_dir)
    body = BodyModel(BodyModelSettings(model_dir=model_dir))
    target = body.rest_joints()
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, 1 thread; model: {body.path}"
          f"{' (synthetic)' if body.synthetic else ''}")

    # 1. parameters -> 623
    clips = [smooth_random_params(args.clip_frames, seed=i) for i in range(max(1, args.frames // args.clip_frames))]
    total = sum(len(c["global_orient"]) for c in clips)
    joints: list[np.ndarray] = []
    t_joints = best_of(lambda: joints.__setitem__(slice(None), body.joints_many(clips)))
    t_features = best_of(lambda: [joints_to_features(j, target) for j in joints])
    print(f"\nparameters -> 623-d, {len(clips)} clips x {args.clip_frames} frames ({total} frames), best of 3:")
    print(f"  SMPL-X joints (batched forward) {total / t_joints:10.0f} frames/s")
    print(f"  feature step (joints -> 623)    {total / t_features:10.0f} frames/s   (target >= 10,000)")
    print(f"  both                            {total / (t_joints + t_features):10.0f} frames/s")

    # 2. fitting
    truth = smooth_random_params(args.fit_frames, seed=99)
    truth["betas"] = np.zeros_like(truth["betas"])
    true_joints = body.joints(truth)
    keypoints = landmarks_to_keypoints(landmarks_from_joints(true_joints), (480, 640), body)
    ids = list(MOTION_JOINTS)

    def centred(j: np.ndarray) -> np.ndarray:  # MediaPipe's world landmarks carry no absolute position
        return j[:, ids] - j[:, [1, 2]].mean(1, keepdims=True)

    fit_keypoints(body, keypoints, FitSettings(iterations=2, orient_iterations=2))  # warm-up (imports, first-call costs)
    print(f"\nfitting (MediaPipe keypoint set, {args.fit_frames} frames, L-BFGS): iterations (root + all) -> speed, mean joint error of 52 joints")
    for orient, iterations in ((5, 10), (10, 25), (20, 50), (30, 150), (30, 300)):
        start = time.perf_counter()
        params, report = fit_keypoints(body, keypoints, FitSettings(iterations=iterations, orient_iterations=orient))
        seconds = time.perf_counter() - start
        error = np.linalg.norm(centred(body.joints(params)) - centred(true_joints), axis=-1).mean()
        print(f"  {orient:3d} + {iterations:3d}: {args.fit_frames / seconds:7.1f} frames/s  ({seconds:5.2f} s, "
              f"{len(report['data_loss_history'])} evaluations)  mean joint error {100 * error:5.2f} cm")


if __name__ == "__main__":
    main()
