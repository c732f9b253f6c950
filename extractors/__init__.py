"""signfeat extractors: one file per frozen model, one registry by name (see base.py for the contract)."""

from extractors.base import REGISTRY, Extractor, ExtractorConfig, build_extractor, register  # noqa: F401
from extractors import clip_s2, dinov2, videomae  # noqa: F401,E402  (each registers itself)
import extractors.smplx623  # noqa: F401,E402  (SMPL-X motion stream)
