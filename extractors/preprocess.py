"""Model preprocessing of decoded frames: resize the shortest side, center crop, rescale, normalise.

One parametrised transform serves every extractor; its parameters are read from the model's own image
processor (Hugging Face) or preprocess config (OpenCLIP), and tests compare it with those processors on
the same frames. Two resize paths:

- ``pil``: PIL resize of each uint8 frame, what ``CLIPImageProcessorPil`` / ``BitImageProcessorPil`` / the
  transformers 4.x default processors and OpenCLIP's transform do (SpaMo's release ran this one);
- ``torch``: torchvision resize of the whole uint8 batch (antialiased), what transformers 5's default
  (torchvision-backed) processors do. Faster, and within a few uint8 levels of ``pil``.

Center-crop offsets: Hugging Face takes floor((H - h) / 2); torchvision (OpenCLIP) takes Python's
round((H - h) / 2). They differ by a pixel when the difference is odd, so the rule is a parameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values, as HF processors store them
_RESAMPLE_NAME = {v: k for k, v in _PIL_RESAMPLE.items()}


def per_channel(value) -> tuple[float, float, float]:
    """An image processor's mean or std as three floats: transformers takes one number for all channels too
    (``"image_mean": 0.5``), which was a TypeError traceback here."""
    values = [float(v) for v in np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (3,))]
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class FrameTransform:
    shortest_edge: int  # resize so the shorter side is this (aspect kept, long side floored)
    crop: int  # then center crop crop x crop
    resample: str = "bicubic"  # bicubic | bilinear
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    backend: str = "pil"  # pil | torch
    crop_rounding: str = "floor"  # floor (Hugging Face) | round (torchvision / OpenCLIP)
    square_first: bool = False  # center-crop the largest square before resizing (LLaVA-SLT's DINOv2 336 path)
    rescale: float = 1 / 255  # pixel values are multiplied by this before the normalisation (1.0: not rescaled)

    def __post_init__(self) -> None:
        if self.resample not in _PIL_RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_PIL_RESAMPLE)}, got {self.resample!r}")
        if self.backend not in ("pil", "torch"):
            raise ValueError(f"preprocessing backend must be pil or torch, got {self.backend!r}")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"crop_rounding must be floor or round, got {self.crop_rounding!r}")
        if self.crop > self.shortest_edge:
            raise ValueError(f"crop {self.crop} is larger than the resized short side {self.shortest_edge}")
        if not (math.isfinite(self.rescale) and self.rescale > 0):
            raise ValueError(f"rescale must be a positive number, got {self.rescale!r}")

    def describe(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf_processor(cls, processor, backend: str = "pil") -> "FrameTransform":
        """The processor's resize, center crop, rescale and normalisation. What this transform cannot do the
        same way is refused (ValueError), never dropped: a processor that skips the crop or the resize, a
        non-square crop, a resampling filter other than bilinear / bicubic."""
        name = type(processor).__name__
        size, crop = processor.size, processor.crop_size
        shortest = size["shortest_edge"] if "shortest_edge" in size and size["shortest_edge"] else None
        if shortest is None or size.get("longest_edge"):  # a cap on the long side would be dropped, not followed
            raise ValueError(f"{name} resizes to {dict(size)}, signfeat supports shortest_edge resizing only")
        for flag in ("do_resize", "do_center_crop"):
            if getattr(processor, flag, True) is False:
                raise ValueError(f"{name} has {flag}=False; signfeat always resizes the short side and center crops")
        if crop is None or int(crop["height"]) != int(crop["width"]):
            raise ValueError(f"{name} crops to {dict(crop or {})}; signfeat supports square crops only")
        resample = int(processor.resample)
        if resample not in _RESAMPLE_NAME:
            raise ValueError(f"{name} resamples with PIL filter {resample}; signfeat supports bilinear (2) and bicubic (3)")
        normalize = getattr(processor, "do_normalize", True) is not False
        rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) is not False else 1.0
        return cls(
            shortest_edge=int(shortest),
            crop=int(crop["height"]),
            resample=_RESAMPLE_NAME[resample],
            mean=per_channel(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
            std=per_channel(processor.image_std) if normalize else (1.0, 1.0, 1.0),
            backend=backend,
            crop_rounding="floor",
            rescale=rescale,
        )

    # ------------------------------------------------------------------ helpers

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)

    def _offset(self, size: int, crop: int) -> int:
        return int(round((size - crop) / 2.0)) if self.crop_rounding == "round" else (size - crop) // 2

    def _square_box(self, height: int, width: int) -> tuple[int, int, int]:
        side = min(height, width)
        return self._offset(height, side), self._offset(width, side), side

    # ------------------------------------------------------------------ the transform

    def resize_crop(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> uint8 [T, 3, crop, crop]: the geometric part (CPU).

        Both processors resize uint8 images to uint8 and only then rescale and normalise, so stopping
        here loses nothing, and the tensor that travels to the GPU is a quarter of its float32 size.
        """
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        if self.square_first:
            top, left, side = self._square_box(frames.shape[1], frames.shape[2])
            frames = frames[:, top : top + side, left : left + side]
        h, w = frames.shape[1:3]
        new_h, new_w = self._resized_size(h, w)
        if self.backend == "pil":
            from PIL import Image

            resized = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), resample=_PIL_RESAMPLE[self.resample])) for f in frames])
            x = torch.from_numpy(resized).permute(0, 3, 1, 2)
        else:
            import torchvision.transforms.v2.functional as tvF

            mode = tvF.InterpolationMode.BICUBIC if self.resample == "bicubic" else tvF.InterpolationMode.BILINEAR
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
            x = tvF.resize(x, [new_h, new_w], interpolation=mode, antialias=True)
        top, left = self._offset(new_h, self.crop), self._offset(new_w, self.crop)
        return x[:, :, top : top + self.crop, left : left + self.crop].contiguous()

    def normalize(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 [..., 3, S, S] (any device) -> normalised ``dtype``, computed in float32 as the processors do:
        (x - m / r) / (s / r) for rescale factor r (1/255: (x - 255 m) / (255 s)), the transformers torchvision
        backend's fused rescale + normalise."""
        scale = 1.0 / self.rescale
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1) * scale
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1) * scale
        return ((x.to(torch.float32) - mean) / std).to(dtype)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> float32 [T, 3, crop, crop], normalised (what the model's processor returns)."""
        return self.normalize(self.resize_crop(frames))
