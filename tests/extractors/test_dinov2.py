import numpy as np
import pytest
import torch

from extractors import ExtractorConfig, build_extractor
from extractors.dinov2 import PROCESSOR


def _frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("resize", ["pil", "torch"])
def test_224_preprocessing_equals_the_hf_processor(resize):
    from transformers import BitImageProcessor
    from transformers.models.bit import BitImageProcessorPil

    ex = build_extractor(ExtractorConfig(name="dinov2", tiny=True, settings={"resize": resize, "resolution": 224}))
    cls = BitImageProcessorPil if resize == "pil" else BitImageProcessor
    for h, w in [(260, 210), (480, 640), (57, 81)]:
        frames = _frames(2, h, w)
        ref = cls(**PROCESSOR)(list(frames), return_tensors="pt").pixel_values
        torch.testing.assert_close(ex.transform(frames), ref, atol=1e-6, rtol=0)


def test_336_crop_box_by_hand():
    """336 px is the default (DESIGN.md: LLaVA-SLT's procedure); 224 px, the HF processor, was."""
    assert build_extractor(ExtractorConfig(name="dinov2", tiny=True)).settings.resolution == 336
    ex = build_extractor(ExtractorConfig(name="dinov2", tiny=True, settings={"resolution": 336}))
    # 480x640 (HxW): square crop 480x480 at left = (640 - 480) // 2 = 80; resize to 384; crop 336 at (384 - 336) // 2 = 24
    frames = _frames(1, 480, 640)
    from PIL import Image

    square = frames[0, :, 80:560]
    resized = np.asarray(Image.fromarray(square).resize((384, 384), resample=Image.BICUBIC))
    crop = resized[24:360, 24:360].astype(np.float32) / 255.0
    want = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    got = ex.transform(frames)
    assert got.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), want, atol=1e-5)
    out = ex.extract([frames])[0]
    assert out.shape == (1, 32)


def test_feature_is_the_normed_class_token():
    ex = build_extractor(ExtractorConfig(name="dinov2", tiny=True))
    frames = _frames(3, 100, 120)
    with torch.inference_mode():
        x = ex.transform(frames)
        out = ex.model(pixel_values=x)
        want = ex.model.layernorm(out.hidden_states[-1] if out.hidden_states is not None else ex.model(pixel_values=x, output_hidden_states=True).hidden_states[-1])[:, 0]
    np.testing.assert_allclose(ex.extract([frames])[0].astype(np.float32), want.numpy(), atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_full_size_dinov2_base_builds_with_width_768():
    ex = build_extractor(ExtractorConfig(name="dinov2", random_weights=True, settings={"resolution": 336}))
    assert ex.width == 768 and ex.model.config.num_hidden_layers == 12
    assert ex.extract([_frames(1, 64, 64)])[0].shape == (1, 768)


def test_336_normalises_as_the_checkpoint_s_own_processor(tmp_path):
    """A fine-tune whose processor normalises with mean = std = 0.5 got ImageNet's at 336 px (22 % of the
    feature range off, a user trial's reference), while 224 px followed the processor. A folder without a
    processor file keeps ImageNet's (LLaVA-SLT's constants, and facebook/dinov2-*'s own)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14))
    for name, mean in [("halves", [0.5] * 3), ("bare", None)]:
        model.save_pretrained(tmp_path / name)
        if mean is not None:
            # a resize signfeat's transform could not follow (height x width, no crop): only 224 px uses it; at 336
            # px such a folder was refused once the processor was read for its mean / std
            BitImageProcessor(**{**PROCESSOR, "image_mean": mean, "image_std": mean, "size": {"height": 224, "width": 224},
                                 "do_center_crop": False}).save_pretrained(tmp_path / name)
    frames = _frames(1, 480, 640)
    square = frames[0, :, 80:560]  # as test_336_crop_box_by_hand
    from PIL import Image

    crop = np.asarray(Image.fromarray(square).resize((384, 384), resample=Image.BICUBIC))[24:360, 24:360].astype(np.float32) / 255.0
    for name, mean, std in [("halves", [0.5] * 3, [0.5] * 3), ("bare", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]:
        ex = build_extractor(ExtractorConfig(name="dinov2", model=str(tmp_path / name)))
        np.testing.assert_allclose(ex.transform(frames)[0].permute(1, 2, 0).numpy(), (crop - np.array(mean)) / np.array(std), atol=1e-5)


def test_a_one_number_mean_std_and_a_damaged_processor_file(tmp_path):
    """transformers takes one number for all channels ("image_mean": 0.5): a TypeError traceback at 336 and 224 px.
    A preprocessor_config.json that is not JSON was taken for none at 336 px (ImageNet's, silently)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from pipeline.errors import SignfeatError

    model = Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14))
    for name in ("scalar", "damaged"):
        model.save_pretrained(tmp_path / name)
    BitImageProcessor(**{**PROCESSOR, "image_mean": 0.5, "image_std": 0.25}).save_pretrained(tmp_path / "scalar")
    for resolution in (224, 336):
        t = build_extractor(ExtractorConfig(name="dinov2", model=str(tmp_path / "scalar"), settings={"resolution": resolution})).transform
        assert (t.mean, t.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), resolution
    (tmp_path / "damaged" / "preprocessor_config.json").write_text("{not json")
    for resolution in (224, 336):
        with pytest.raises(SignfeatError, match="dinov2: the image processor of"):
            build_extractor(ExtractorConfig(name="dinov2", model=str(tmp_path / "damaged"), settings={"resolution": resolution}))
