"""``videomae``: VideoMAE features of sliding windows, as SpaMo's released code ran it.

``MCG-NJU/videomae-large`` with its own ``VideoMAEImageProcessor`` (shortest side 224, center crop 224,
ImageNet mean/std); windows of ``window`` frames every ``stride`` frames (16 / 8; SignLLM's 13 / 4 works
too: the model is built with ``num_frames = window``, and VideoMAE's position table is computed from it).

Windows (``window_indices``): a clip shorter than one window is padded to one window by repeating its last
frame; windows start at 0, stride, 2·stride, ... and only whole windows are kept (``tail=drop``, the
reference: the last (T - window) mod stride frames are not covered), or (``tail=pad``) one more window
starts a stride later and is padded by repeating the last frame, so every frame is covered.
Feature per window: ``hidden_states[layer][:, 0]`` (``pooling=first``: the first token of the last layer;
VideoMAE has no class token, and this is what the reference keeps) or the mean over all tokens
(``pooling=mean``, the token mean that VideoMAE's classification head starts from; a classification
checkpoint's ``fc_norm`` after it is not applied: the backbone alone is loaded). Output [N, 1024], N windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from extractors.base import Extractor, check_input_size, load_config, load_pretrained, register
from extractors.preprocess import IMAGENET_MEAN, IMAGENET_STD, FrameTransform
from pipeline.errors import SignfeatError

VIDEOMAE_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=16, tubelet_size=2, image_size=224)
TINY = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=16, tubelet_size=2, image_size=224)
# MCG-NJU/videomae-large's preprocessor_config.json (the processor class's own defaults differ: mean/std 0.5)
PROCESSOR = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=2, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


@dataclass(frozen=True)
class VideoMAESettings:
    window: int = 16
    stride: int = 8
    tail: str = "drop"  # drop (reference) | pad
    pooling: str = "first"  # first (reference: hidden_states[-1][:, 0]) | mean
    layer: int = -1
    resize: str = "pil"  # pil (the processor SpaMo ran) | torch

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2 frames (a tubelet is 2), got {self.window}")
        if not 1 <= self.stride <= self.window:  # a longer stride leaves frames between windows in none of them
            raise ValueError(f"stride must be 1..window ({self.window}) so that every frame is in a window, got {self.stride}")
        if self.tail not in ("drop", "pad"):
            raise ValueError(f"tail must be drop or pad, got {self.tail!r}")
        if self.pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be first or mean, got {self.pooling!r}")
        if self.resize not in ("pil", "torch"):
            raise ValueError(f"resize must be pil or torch, got {self.resize!r}")


def window_indices(num_frames: int, window: int, stride: int, tail: str) -> np.ndarray:
    """int64 [N, window]: the frame index at each position of each window (repeats = padding)."""
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    padded = max(num_frames, window)
    starts = list(range(0, padded - window + 1, stride))
    if tail == "pad" and starts[-1] + window < num_frames:
        starts.append(starts[-1] + stride)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(window, dtype=np.int64)[None, :]
    return np.minimum(idx, num_frames - 1)


@register("videomae")
class VideoMAEExtractor(Extractor):
    default_model = "MCG-NJU/videomae-large"
    hf_model_types = ("videomae",)
    default_batch_size = 8  # windows per forward
    Settings = VideoMAESettings

    def __init__(self, config):
        super().__init__(config)
        from transformers import VideoMAEConfig, VideoMAEModel

        window = self.settings.window
        if config.random_weights:
            arch = TINY if config.tiny else VIDEOMAE_LARGE
            self.model = VideoMAEModel(VideoMAEConfig(**arch, num_frames=window))
        else:
            # checked before the model is built: transformers' position table fails on a window below one tubelet
            tubelet = load_config(self.name, VideoMAEConfig, self.model_id, config.revision).tubelet_size
            if window < tubelet:
                raise SignfeatError(f"videomae setting window={window}: the model's tubelet_size is {tubelet}; a window needs at least that many frames")
            self.model = load_pretrained(self.name, VideoMAEModel, self.model_id, config.revision, num_frames=window)
        self._place_model()
        self.transform = self.make_transform(config, self.settings)
        check_input_size(self.name, self.model.config.image_size, self.transform.crop, self.model_id)
        self.width = self.model.config.hidden_size
        self.model_info = {"class": "transformers.VideoMAEModel", "hidden_size": self.width, "layers": self.model.config.num_hidden_layers, "num_frames": window}
        self._check_layer()

    @classmethod
    def layers_from_config(cls, config) -> int | None:
        if not config.random_weights:
            return None
        return (TINY if config.tiny else VIDEOMAE_LARGE)["num_hidden_layers"]

    @classmethod
    def make_transform(cls, config, settings) -> FrameTransform:
        return cls.hf_transform(config, settings, "videomae", "VideoMAEImageProcessor", PROCESSOR)

    @classmethod
    def expected_rows(cls, num_frames: int, settings: dict) -> int | None:
        return len(window_indices(num_frames, int(settings["window"]), int(settings["stride"]), settings["tail"]))

    def units(self, num_frames: int) -> np.ndarray:
        s = self.settings
        return window_indices(num_frames, s.window, s.stride, s.tail)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, window, 3, 224, 224] -> [B, d]."""
        layer = self.settings.layer
        if layer == -1 and self.model.layernorm is None:  # then last_hidden_state is hidden_states[-1]
            hidden = self.model(pixel_values=batch).last_hidden_state
        else:
            hidden = self.model(pixel_values=batch, output_hidden_states=True).hidden_states[layer]
        return hidden[:, 0] if self.settings.pooling == "first" else hidden.mean(dim=1)
