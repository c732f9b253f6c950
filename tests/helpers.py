"""Small media makers for tests: videos whose frames say which frame they are."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

# A path containing this makes a decode worker die with SIGSEGV (pipeline/stages.py; enabled in conftest.py).
CRASH_MARKER = "__crash_me__"


def index_frame(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A frame whose mean grey level encodes i (0..24) robustly through lossy coding, with a corner marker."""
    img = np.full((height, width, 3), 10 * i, np.uint8)
    img[: height // 4, : width // 4] = (255, 0, 0)  # top-left marker, to see rotations
    return img


def frame_index(img: np.ndarray) -> int:
    h, w = img.shape[:2]
    centre = img[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].astype(float).mean()
    return int(round(centre / 10))


def write_video(path: Path, frames: np.ndarray, *, fps: int = 25, codec: str = "libx264", pts_ms: list[int] | None = None, pix_fmt: str = "yuv420p") -> Path:
    """Write frames; with ``pts_ms`` the timestamps are those (variable frame rate)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
