"""A picture of a motion: the recovered 52-joint skeleton (body and both hands) over time, drawn with
matplotlib from two sides (front: X-Y, side: Z-Y, with a zoom on both hands) into PNG frames, a GIF, or an
MP4 (through PyAV, when installed), so a person can see that the motion is right."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from motion.humanml3d import PARENTS
from pipeline.errors import SignfeatError

BODY_COLOUR, LEFT_COLOUR, RIGHT_COLOUR = "#333333", "#d62728", "#1f77b4"  # the subject's left hand red, right blue


def _bone_colour(joint: int) -> str:
    """Joints 22-36 are the left hand's, 37-51 the right hand's (the 52-joint layout)."""
    return LEFT_COLOUR if 22 <= joint < 37 else RIGHT_COLOUR if joint >= 37 else BODY_COLOUR


def render_frames(joints: np.ndarray, every: int = 1, size: float = 3.0) -> list[np.ndarray]:
    """joints [T, 52, 3] -> RGB uint8 images, one per ``every``-th frame, with fixed axes over the clip."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if joints.ndim != 3 or joints.shape[1:] != (52, 3):
        raise SignfeatError(f"render needs joints [T, 52, 3], got {joints.shape}")
    lo, hi = joints.reshape(-1, 3).min(0), joints.reshape(-1, 3).max(0)
    pad = 0.1 * max(float((hi - lo).max()), 0.1)
    images = []
    fig, axes = plt.subplots(1, 3, figsize=(3 * size, size), dpi=80)
    for t in range(0, len(joints), every):
        frame = joints[t]
        views = ((axes[0], 0, "front (X-Y)"), (axes[1], 2, "side (Z-Y)"))
        for ax, horizontal, title in views:
            ax.clear()
            for j in range(1, 52):
                p = PARENTS[j]
                ax.plot([frame[p, horizontal], frame[j, horizontal]], [frame[p, 1], frame[j, 1]], color=_bone_colour(j), lw=1.5)
            ax.set_xlim(lo[horizontal] - pad, hi[horizontal] + pad)
            ax.set_ylim(lo[1] - pad, hi[1] + pad)
            ax.set_aspect("equal")
            ax.set_title(f"{title}  frame {t}", fontsize=8)
            ax.tick_params(labelsize=6)
        hands = axes[2]
        hands.clear()
        for wrist, colour, offset in ((20, LEFT_COLOUR, 0.02), (21, RIGHT_COLOUR, -0.02)):
            base = frame[wrist]
            for j in [j for j in range(22, 52) if (j < 37) == (wrist == 20)]:
                p = PARENTS[j]
                hands.plot([frame[p, 0] - base[0] + offset, frame[j, 0] - base[0] + offset], [frame[p, 1] - base[1], frame[j, 1] - base[1]], color=colour, lw=1.5)
        hands.set_xlim(-0.25, 0.25)
        hands.set_ylim(-0.15, 0.15)
        hands.set_aspect("equal")
        hands.set_title("hands (front, wrist-centred)", fontsize=8)
        hands.tick_params(labelsize=6)
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return images


def save_images(images: list[np.ndarray], out: str | Path, fps: float) -> list[Path]:
    """``out`` ending in .gif or .mp4: one animation; anything else: a folder of PNG frames."""
    from PIL import Image

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SignfeatError(f"--out {out}: cannot create its folder ({exc.strerror}: {exc.filename})") from None
    suffix = out.suffix.lower()
    if suffix == ".gif":
        if fps > 50:  # GIF delays are hundredths of a second, and viewers show a delay under 2 as 10
            raise SignfeatError(f"a GIF cannot play {fps:g} fps (its frame delays are whole hundredths of a second, and viewers slow "
                                "delays under 2 down to 10): lower --fps, raise --every, or write an .mp4")
        # each frame's delay in whole hundredths, so the delays add up to the clip's time (30 fps: 3, 3, 4, ...):
        # one rounded delay played 30 fps as 33.3
        ends = [round((i + 1) * 100 / fps) for i in range(len(images))]
        delays = [10 * (end - start) for start, end in zip([0, *ends[:-1]], ends)]
        first, *rest = [Image.fromarray(i) for i in images]
        first.save(out, save_all=True, append_images=rest, duration=delays if len(images) > 1 else delays[0], loop=0)
        return [out]
    if suffix == ".mp4":
        try:
            import av
        except ImportError:
            raise SignfeatError("MP4 output needs PyAV (pip install av); write a .gif or PNG frames instead") from None
        with av.open(str(out), "w") as container:
            # the rate as a fraction (6.67 fps for 20 fps shown every 3rd row; below 1 fps too), not rounded
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = (images[0].shape[0] // 2) * 2, (images[0].shape[1] // 2) * 2
            stream.pix_fmt = "yuv420p"
            for image in images:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"frame_{i:05d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def load_features(path: str | Path, key: str | None = None, stream: str = "smplx623") -> tuple[np.ndarray, str, float | None]:
    """(features [T, 623], name, fps) from a .npy file (fps None), or from a shard (.tar) sample (``key``: its key
    or its clip id, default: the first with the stream; fps: the rate its JSON says the rows are at)."""
    path = Path(path)
    if not path.is_file():
        raise SignfeatError(f"no such features file or shard: {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False), path.stem, None
        except (ValueError, OSError, EOFError) as exc:  # not an .npy, empty, an object (pickled) array
            raise SignfeatError(f"{path}: not a numeric .npy array ({exc})") from None
    if path.suffix == ".tar":
        import tarfile

        from shards.reader import read_samples

        if key is not None and not key.strip():
            raise SignfeatError("--key is empty: give a sample's key or clip id, or leave --key out for the first sample")

        def meta(sample: dict) -> dict:
            return sample["json"] if isinstance(sample["json"], dict) else {}

        def found(sample: dict) -> tuple[np.ndarray, str, float | None]:
            fps = meta(sample).get("fps")
            return sample[stream], sample["key"], float(fps) if isinstance(fps, (int, float)) and fps > 0 else None

        by_id = None  # the clip's id as the manifest has it (its key escapes characters: a_b -> a__b); an exact key wins
        try:
            for sample in read_samples(path):
                if stream not in sample or not (key is None or key in (sample["key"], meta(sample).get("id"))):
                    continue
                if key is None or sample["key"] == key:
                    return found(sample)
                by_id = by_id or sample
        except (tarfile.TarError, ValueError, OSError) as exc:
            raise SignfeatError(f"{path}: unreadable shard ({exc})") from None
        if by_id is not None:
            return found(by_id)
        raise SignfeatError(f"{path}: no sample {'with key or id ' + repr(key) + ' and ' if key else 'with '}stream {stream}")
    raise SignfeatError(f"{path}: expected a .npy features file or a .tar shard")
