"""``dinov2``: DINOv2 ViT-B/14 class token per frame, [T, 768] (a checkpoint with register tokens runs as
``Dinov2WithRegistersModel``; its class token is the same ``pooler_output``).

``resolution=336`` (the default, DESIGN.md's "defaults that reproduce the papers"): LLaVA-SLT's procedure (its
Appendix B): center crop the largest square, resize it to 384, center crop 336, ImageNet mean/std (bicubic): the
mean/std (and rescale) of the checkpoint's own image processor, which are ImageNet's for ``facebook/dinov2-*``.
``resolution=224``: the model's own image processor (``facebook/dinov2-base``: shortest side 256 bicubic,
center crop 224, ImageNet mean/std).
The feature is the model's class token after its final layernorm (``pooler_output``, DINOv2's
``x_norm_clstoken``); DINOv2 interpolates its position embeddings to the 24×24 grid of 336 px.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from extractors.base import Extractor, load_config, load_pretrained, register
from extractors.preprocess import IMAGENET_MEAN, IMAGENET_STD, FrameTransform, per_channel

DINOV2_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518)
TINY = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518)
# facebook/dinov2-base's preprocessor_config.json
PROCESSOR = dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


@dataclass(frozen=True)
class Dinov2Settings:
    resolution: int = 336  # 336 (LLaVA-SLT: square crop, 384, crop 336) | 224 (the HF processor)
    resize: str = "pil"  # pil | torch

    def __post_init__(self) -> None:
        if self.resolution not in (224, 336):
            raise ValueError(f"resolution must be 224 or 336, got {self.resolution}")
        if self.resize not in ("pil", "torch"):
            raise ValueError(f"resize must be pil or torch, got {self.resize!r}")


@register("dinov2")
class Dinov2Extractor(Extractor):
    default_model = "facebook/dinov2-base"
    hf_model_types = ("dinov2", "dinov2_with_registers")
    default_batch_size = 64
    Settings = Dinov2Settings

    def __init__(self, config):
        super().__init__(config)
        from transformers import Dinov2Config, Dinov2Model

        if config.random_weights:
            self.model = Dinov2Model(Dinov2Config(**(TINY if config.tiny else DINOV2_BASE)))
        else:
            self.model = load_pretrained(self.name, _model_class(self.model_id, config.revision), self.model_id, config.revision)
        self._place_model()
        self.transform = self.make_transform(config, self.settings)
        self.width = self.model.config.hidden_size
        self.model_info = {"class": f"transformers.{type(self.model).__name__}", "hidden_size": self.width, "layers": self.model.config.num_hidden_layers}

    @classmethod
    def make_transform(cls, config, settings) -> FrameTransform:
        if settings.resolution == 336:  # LLaVA-SLT: square crop, 384, crop 336
            # normalised as the checkpoint's own processor says (ImageNet's for facebook/dinov2-*, as LLaVA-SLT
            # writes): a fine-tune that normalises otherwise got ImageNet's, other features without a word. A
            # checkpoint folder without a processor file keeps ImageNet's.
            mean, std, rescale = _processor_normalisation(config)
            return FrameTransform(
                shortest_edge=384, crop=336, resample="bicubic", mean=mean, std=std, rescale=rescale,
                backend=settings.resize, crop_rounding="floor", square_first=True,
            )
        return cls.hf_transform(config, settings, "bit", "BitImageProcessor", PROCESSOR)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=batch[:, 0]).pooler_output


def _processor_normalisation(config) -> tuple[tuple, tuple, float]:
    """(mean, std, rescale) of the checkpoint's image processor: only these, since the 336 path does its own resize
    and crop (a processor whose resize or crop signfeat's transform could not follow refused a 336 job). ImageNet's
    for random weights and for a checkpoint folder without a processor file."""
    from extractors.base import check_model_exists, hf_processor_class
    from pipeline.errors import SignfeatError

    model_id = config.model or Dinov2Extractor.default_model
    if config.random_weights:
        return IMAGENET_MEAN, IMAGENET_STD, 1 / 255
    check_model_exists("dinov2", model_id)
    local = os.path.isdir(os.path.expanduser(model_id))
    if local and not os.path.isfile(os.path.join(os.path.expanduser(model_id), "preprocessor_config.json")):
        return IMAGENET_MEAN, IMAGENET_STD, 1 / 255  # a checkpoint folder saved without its processor
    try:
        proc = hf_processor_class("bit", "BitImageProcessor", "torch").from_pretrained(model_id, revision=config.revision)
    except (OSError, ValueError) as exc:
        said = str(exc)
        if not local and "preprocessor_config.json" in said and "valid JSON" not in said:  # a Hub repo without one
            return IMAGENET_MEAN, IMAGENET_STD, 1 / 255
        raise SignfeatError(f"dinov2: the image processor of {model_id!r}: {type(exc).__name__}: {said.strip().splitlines()[0]}") from None
    if not getattr(proc, "do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = per_channel(proc.image_mean), per_channel(proc.image_std)
    return mean, std, float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0


def _model_class(model_id: str, revision: str | None):
    """Dinov2Model, or Dinov2WithRegistersModel for a checkpoint with register tokens (loaded as a plain DINOv2
    its registers were dropped with a warning: other features); any other model type is refused."""
    from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel

    from pipeline.errors import SignfeatError

    model_type = load_config("dinov2", AutoConfig, model_id, revision).model_type
    classes = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
    if model_type not in classes:
        raise SignfeatError(f"dinov2: {model_id!r} is a {model_type!r} model, not DINOv2 (model types {sorted(classes)})")
    return classes[model_type]
