"""``clip_s2``: CLIP ViT image tower with S² multi-scale features, as SpaMo's released extraction ran it.

Default: Hugging Face ``CLIPVisionModel`` of ``openai/clip-vit-large-patch14`` with its own image
processor (shortest side 224 bicubic, center crop 224, CLIP mean/std), then the s2wrapper algorithm
(Shi et al. 2024, ``s2wrapper.forward`` with ``num_prefix_token=1``) on the processed 224 tensor:

for each scale size s (default: the model's input size and twice it, s2wrapper's scale factors [1, 2]:
224 and 448 for ViT-L/14, 336 and 672 for a 336-px CLIP; sizes below the input size are refused):
  the processed tensor is interpolated bicubically to s x s (from the normalised 224 input), then to
  n·224 with n = ceil(s / 224) if s is no multiple of 224; cut into n x n tiles of 224 in chessboard
  (row-major) order; every tile goes through the model and the chosen layer's hidden states are kept
  (``layer=-1``: the last layer, before the post-layernorm, SpaMo's ``nth_layer``);
  class token of the scale = mean of its tiles' class tokens; patch tokens are merged back into the
  scale's grid and area-pooled to ceil(s / (n·224) · n·g), then to the first scale's grid;
scales are concatenated along channels. Stored: the class token [T, len(scales)·d] (``token=cls``), or
the mean of the merged patch tokens (``token=patch_mean``).

Unlike the reference, all tiles of all scales of a batch of frames go through the model in one forward
(they share the 224 size). Backends: ``hf`` (default) and ``open_clip`` (any OpenCLIP ViT architecture with
a pretrained tag or checkpoint file; same S² and token rules; the pre-projection width; ResNet and timm
towers are refused: S² needs the ViT's class token and patch grid).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from extractors.base import Extractor, check_input_size, load_pretrained, register
from extractors.preprocess import FrameTransform
from pipeline.errors import SignfeatError

# CLIP ViT-L/14 vision tower (openai/clip-vit-large-patch14), and a tiny one of the same shape family.
VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")
TINY = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=224, projection_dim=16, hidden_act="quick_gelu")
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class ClipS2Settings:
    # image sizes in pixels; the first sets the output grid. Not given: the model's input size x (1, 2), so
    # (224, 448) for ViT-L/14 and (336, 672) for a 336-px CLIP (ClipS2Extractor records the sizes it used)
    scales: tuple[int, ...] = (224, 448)
    layer: int = -1  # hidden_states index (-1: last layer, before the post-layernorm)
    token: str = "cls"  # cls | patch_mean
    resize: str = "pil"  # pil (the processor SpaMo ran) | torch (transformers 5's default processor)

    def __post_init__(self) -> None:
        if not self.scales or any(s < 1 for s in self.scales):
            raise ValueError(f"scales must be positive pixel sizes, got {self.scales}")
        if self.token not in ("cls", "patch_mean"):
            raise ValueError(f"token must be cls or patch_mean, got {self.token!r}")
        if self.resize not in ("pil", "torch"):
            raise ValueError(f"resize must be pil or torch, got {self.resize!r}")


def s2_tiles(x: torch.Tensor, scales: tuple[int, ...], base: int) -> tuple[torch.Tensor, list[int]]:
    """Normalised [B, 3, base, base] -> all tiles of all scales [sum(n_s²)·B, 3, base, base] and n per scale.

    Tile order inside a scale is s2wrapper's: tile-major (all B images' tile (0, 0), then (0, 1), ...).
    """
    tiles, splits = [], []
    for size in scales:
        y = F.interpolate(x.to(torch.float32), size=(size, size), mode="bicubic").to(x.dtype)
        n = math.ceil(size / base)
        if n * base != size:
            y = F.interpolate(y.to(torch.float32), size=(n * base, n * base), mode="bicubic").to(x.dtype)
        tiles.append(torch.cat([y[:, :, i * base : (i + 1) * base, j * base : (j + 1) * base] for i in range(n) for j in range(n)]))
        splits.append(n)
    return torch.cat(tiles), splits


def s2_merge(hidden: torch.Tensor, batch: int, scales: tuple[int, ...], splits: list[int], base: int, token: str) -> torch.Tensor:
    """Hidden states of every tile [sum(n²)·B, 1 + g², d] -> [B, len(scales)·d] (class token or patch mean)."""
    per_scale = torch.split(hidden, [n * n * batch for n in splits])
    cls_parts, maps = [], []
    for size, n, h in zip(scales, splits, per_scale):
        cls_parts.append(h[:, 0].reshape(n * n, batch, -1).mean(0))
        if token == "patch_mean":
            g = int(round(math.sqrt(h.shape[1] - 1)))
            grid = h[:, 1:].transpose(1, 2).reshape(n * n, batch, -1, g, g)  # [tiles, B, d, g, g]
            rows = [torch.cat([grid[i * n + j] for j in range(n)], dim=-1) for i in range(n)]
            merged = torch.cat(rows, dim=-2)  # [B, d, n·g, n·g]
            side = math.ceil(size / (n * base) * n * g)
            maps.append(F.interpolate(merged.to(torch.float32), size=(side, side), mode="area").to(merged.dtype))
    if token == "cls":
        return torch.cat(cls_parts, dim=-1)
    out_size = maps[0].shape[-2:]
    pooled = torch.cat([F.interpolate(m.to(torch.float32), size=out_size, mode="area").to(m.dtype) for m in maps], dim=1)
    return pooled.mean(dim=(-2, -1))


def resolve_scales(settings: ClipS2Settings, given: bool, base: int) -> ClipS2Settings:
    """The scales a model of input size ``base`` runs: s2wrapper's factors [1, 2] of it when the config gave
    none; given sizes below it are refused (the image would be shrunk and blown up again: a blurred copy)."""
    if not given:
        return dataclasses.replace(settings, scales=(base, 2 * base))
    small = [s for s in settings.scales if s < base]
    if small:
        raise SignfeatError(f"clip_s2 scales {list(settings.scales)}: {small} below the model's input size {base} "
                            f"(s2wrapper's scale factors [1, 2] are [{base}, {2 * base}] for this model)")
    return settings


def _open_clip_arch(config) -> str:
    import open_clip

    if config.tiny:
        if "signfeat-tiny-ViT" not in open_clip.list_models():
            open_clip.factory._MODEL_CONFIGS["signfeat-tiny-ViT"] = TINY_OPEN_CLIP  # what add_model_config does
        return "signfeat-tiny-ViT"
    return config.arch or "ViT-L-14"


def _open_clip_visual(config, load_weights: bool):
    """(visual tower, model id): OpenCLIP architecture + pretrained tag or checkpoint file."""
    import open_clip

    arch = _open_clip_arch(config)
    if arch.startswith(("hf-hub:", "local-dir:")):  # the weights come with the architecture's own config
        if config.model is not None:
            raise SignfeatError(f"clip_s2: arch {arch} brings its own weights; model {config.model!r} would be ignored (drop it)")
        pretrained = None
    else:
        pretrained = None if config.random_weights else (config.model or "openai")
    checkpoint_file = pretrained if pretrained is not None and os.path.isfile(pretrained) else None
    try:
        # a checkpoint file is loaded below, after its shapes are checked: open_clip would interpolate the position
        # embeddings of a checkpoint made for another input size (only an INFO log line) and call it pretrained
        model = open_clip.create_model(arch, pretrained=None if checkpoint_file else pretrained, load_weights=load_weights)
        if checkpoint_file and load_weights:
            _check_open_clip_checkpoint(model, checkpoint_file, arch)
            open_clip.load_checkpoint(model, checkpoint_file)
    except SignfeatError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError, AssertionError) as exc:  # a missing config, a checkpoint of another arch
        raise SignfeatError(f"open_clip could not build {arch} with pretrained={pretrained!r}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    return model.visual, pretrained or arch


def _check_open_clip_checkpoint(model, path: str, arch: str) -> None:
    """Refuse a checkpoint file whose weights have other shapes than ``arch``'s (another input size, width or
    depth): open_clip resizes position embeddings silently and fails on the rest with an assertion."""
    from open_clip.factory import convert_state_dict, load_state_dict

    state = convert_state_dict(model, load_state_dict(path))
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise SignfeatError(f"clip_s2: {path} is not a checkpoint of {arch}: {len(wrong)} weights of another shape (e.g. {wrong[0]}); "
                            "give the arch it was trained as (--arch / arch:)")


def _check_vit_tower(arch: str, tower: str | None) -> None:
    """S² runs on a ViT's class token and patch grid: an OpenCLIP ResNet or timm tower (SigLIP, PE-Core, ...)
    has neither in the form this extractor reads. ``tower``: a description of the other tower, None if a ViT."""
    if tower:
        raise SignfeatError(f"clip_s2 backend open_clip: {arch} has {tower}; clip_s2 needs an OpenCLIP VisionTransformer "
                            "(ViT-B-16, ViT-L-14, ViT-L-14-336, ...)")


def _check_class_token(arch: str, pool: str, token: str) -> None:
    """An OpenCLIP tower that pools by averaging (CLIPA) or attention (CoCa) never trains its class token into
    a summary: its last-layer class token is not a feature of the image the way CLIP's is."""
    if token == "cls" and pool != "tok":
        raise SignfeatError(f"clip_s2 backend open_clip: {arch} pools its image embedding by {pool}, not from the class token, "
                            "so the class token is no image feature there: use settings token: patch_mean")


def _open_clip_pool(vision_cfg: dict) -> str:
    if vision_cfg.get("attentional_pool"):
        return "attentional pooling"
    return {"avg": "averaging the patch tokens", "none": "no pooling"}.get(vision_cfg.get("pool_type", "tok"), "tok")


def _open_clip_preprocess_cfg(config) -> dict:
    """The preprocessing config ``open_clip.create_model`` gives this architecture and pretrained tag, read
    from open_clip's registries without building the model: ``create_model(load_weights=False)`` still
    downloads a tagged checkpoint (open_clip 3.3), and the job's CPU decode workers need only the transform."""
    import dataclasses

    import open_clip
    from open_clip.factory import merge_preprocess_dict
    from open_clip.transform import PreprocessCfg
    from open_clip.utils import to_2tuple

    arch = _open_clip_arch(config)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None or arch.startswith(("hf-hub:", "local-dir:")):  # its config (preprocess_cfg too) lives with the weights
        visual, _ = _open_clip_visual(config, load_weights=False)
        return dict(visual.preprocess_cfg)
    cfg = dataclasses.asdict(PreprocessCfg())
    pretrained = None if config.random_weights else (config.model or "openai")
    if pretrained:
        cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(arch, pretrained))  # {} for a checkpoint file
    # create_model takes the size from the built tower, which holds its image_size as a pair
    cfg["size"] = to_2tuple(model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"]))
    return cfg


def _open_clip_transform(cfg: dict, resize: str) -> FrameTransform:
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    if cfg.get("resize_mode", "shortest") != "shortest":
        raise SignfeatError(f"open_clip resize_mode {cfg.get('resize_mode')!r} is not supported (only 'shortest')")
    return FrameTransform(
        shortest_edge=size, crop=size, resample=cfg.get("interpolation", "bicubic"), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        backend=resize, crop_rounding="round",  # torchvision's CenterCrop rounds the offset
    )


@register("clip_s2")
class ClipS2Extractor(Extractor):
    default_model = "openai/clip-vit-large-patch14"
    hf_model_types = ("clip", "clip_vision_model")
    default_batch_size = 32  # frames per forward (each is 1 + 4 tiles at the default scales)
    Settings = ClipS2Settings

    def __init__(self, config):
        super().__init__(config)
        if config.backend == "hf":
            self._build_hf()
        else:  # open_clip (ExtractorConfig refuses any other backend)
            self._build_open_clip()
        self._check_layer()
        self._place_model()
        self.base = self.transform.crop
        self.settings = resolve_scales(self.settings, "scales" in config.settings, self.base)
        self.width = self.hidden_width * len(self.settings.scales)

    # ---------------------------------------------------------------- model loading

    @classmethod
    def layers_from_config(cls, config) -> int | None:
        if config.backend == "hf" and config.random_weights:
            return (TINY if config.tiny else VIT_L14)["num_hidden_layers"]
        if config.backend == "open_clip" and config.tiny:
            return TINY_OPEN_CLIP["vision_cfg"]["layers"]
        return None  # a checkpoint's or an OpenCLIP architecture's depth: known once it is built

    @classmethod
    def check_config(cls, config, settings) -> None:
        """Up front, what the config tells: a ResNet / timm OpenCLIP tower, scales below a known input size."""
        super().check_config(config, settings)
        if config.backend == "open_clip" and not config.tiny:
            import open_clip

            vision = (open_clip.get_model_config(_open_clip_arch(config)) or {}).get("vision_cfg", {})
            # a ResNet's vision_cfg gives its stages' depths as a list
            tower = (f"a timm tower ({vision['timm_model_name']})" if vision.get("timm_model_name")
                     else "a ResNet tower" if isinstance(vision.get("layers"), (list, tuple)) else None)
            _check_vit_tower(_open_clip_arch(config), tower)
            _check_class_token(_open_clip_arch(config), _open_clip_pool(vision), settings.token)
        if config.random_weights:  # the input size is the architecture's, known without any download
            resolve_scales(settings, "scales" in config.settings, cls.make_transform(config, settings).crop)

    @classmethod
    def make_transform(cls, config, settings) -> FrameTransform:
        if config.backend == "open_clip":
            return _open_clip_transform(_open_clip_preprocess_cfg(config), settings.resize)
        # for random weights the processor class's defaults are OpenAI CLIP's processor settings
        return cls.hf_transform(config, settings, "clip", "CLIPImageProcessor", {})

    def _build_hf(self) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if self.config.random_weights:
            self.model = CLIPVisionModel(CLIPVisionConfig(**(TINY if self.config.tiny else VIT_L14)))
        else:
            self.model = load_pretrained(self.name, CLIPVisionModel, self.model_id, self.config.revision)
        self.transform = self.make_transform(self.config, self.settings)
        check_input_size(self.name, self.model.config.image_size, self.transform.crop, self.model_id)
        self.hidden_width = self.model.config.hidden_size
        self.model_info = {"class": "transformers.CLIPVisionModel", "hidden_size": self.hidden_width, "layers": self.model.config.num_hidden_layers}

    def _build_open_clip(self) -> None:
        self.model, self.model_id = _open_clip_visual(self.config, load_weights=True)
        if not hasattr(self.model, "transformer") or not hasattr(self.model, "_embeds"):
            _check_vit_tower(_open_clip_arch(self.config), f"a {type(self.model).__name__} tower")
        pool = ("attentional pooling" if getattr(self.model, "attn_pool", None) is not None
                else _open_clip_pool({"pool_type": getattr(self.model, "pool_type", "tok")}))
        _check_class_token(_open_clip_arch(self.config), pool, self.settings.token)
        self.transform = _open_clip_transform(self.model.preprocess_cfg, self.settings.resize)
        self.hidden_width = self.model.transformer.width
        self.model_info = {"class": "open_clip.VisionTransformer", "arch": _open_clip_arch(self.config), "hidden_size": self.hidden_width, "layers": len(self.model.transformer.resblocks)}

    # ---------------------------------------------------------------- the contract

    def hidden_states(self, tiles: torch.Tensor) -> torch.Tensor:
        """[N, 3, 224, 224] -> hidden states of the chosen layer [N, 1 + g², d]."""
        layer = self.settings.layer
        if self.config.backend == "hf":
            if layer == -1:  # last_hidden_state is hidden_states[-1]: no post-layernorm in it
                return self.model(pixel_values=tiles).last_hidden_state
            return self.model(pixel_values=tiles, output_hidden_states=True).hidden_states[layer]
        visual = self.model
        x = visual._embeds(tiles)  # patch embed + class token + positions + ln_pre, as HF's hidden_states[0]
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        states = [x]
        for block in visual.transformer.resblocks:
            x = block(x)
            states.append(x)
        out = states[layer]
        return out if batch_first else out.transpose(0, 1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        frames = batch[:, 0]  # units are single frames: [B, 1, 3, S, S]
        tiles, splits = s2_tiles(frames, self.settings.scales, self.base)
        hidden = self.hidden_states(tiles)
        return s2_merge(hidden, frames.shape[0], self.settings.scales, splits, self.base, self.settings.token)
