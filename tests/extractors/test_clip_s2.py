import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from extractors import ExtractorConfig, build_extractor
from extractors.clip_s2 import ClipS2Extractor
from pipeline.errors import SignfeatError


def _frames(n=3, h=96, w=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def reference_s2(model, x, sizes, token="cls", base=224):
    """A plain s2wrapper: each frame, each scale, each tile through the model on its own, merged by indexing."""
    outs = []
    for b in range(x.shape[0]):
        cls_parts, maps = [], []
        for size in sizes:
            y = F.interpolate(x[b : b + 1], size=(size, size), mode="bicubic")
            n = math.ceil(size / base)
            if n * base != size:
                y = F.interpolate(y, size=(n * base, n * base), mode="bicubic")
            tile_cls, grid = [], None
            for i in range(n):
                for j in range(n):
                    tile = y[:, :, i * base : (i + 1) * base, j * base : (j + 1) * base]
                    h = model(pixel_values=tile, output_hidden_states=True).hidden_states[-1][0]
                    tile_cls.append(h[0])
                    g = int(math.sqrt(h.shape[0] - 1))
                    if grid is None:
                        grid = torch.zeros(h.shape[1], n * g, n * g)
                    grid[:, i * g : (i + 1) * g, j * g : (j + 1) * g] = h[1:].T.reshape(-1, g, g)
            cls_parts.append(torch.stack(tile_cls).mean(0))
            side = math.ceil(size / (n * base) * grid.shape[-1])
            maps.append(F.adaptive_avg_pool2d(grid[None], side))
        if token == "cls":
            outs.append(torch.cat(cls_parts))
        else:
            size0 = maps[0].shape[-1]
            outs.append(torch.cat([F.adaptive_avg_pool2d(m, size0) for m in maps], dim=1)[0].mean(dim=(-2, -1)))
    return torch.stack(outs)


@pytest.mark.parametrize("sizes", [(224,), (224, 448), (224, 448, 672), (224, 336)])
@pytest.mark.parametrize("token", ["cls", "patch_mean"])
def test_s2_equals_a_straightforward_reference(sizes, token):
    torch.manual_seed(0)
    ex = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, settings={"scales": sizes, "token": token}))
    x = ex.transform(_frames(2))
    with torch.inference_mode():
        got = ex.forward(x[:, None])
        want = reference_s2(ex.model, x, sizes, token)
    assert got.shape == (2, 32 * len(sizes)) and ex.width == 32 * len(sizes)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_other_layers_and_full_pipeline_shapes():
    ex = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, settings={"layer": -2}))
    x = ex.transform(_frames(2))
    with torch.inference_mode():
        h = ex.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        got = ex.hidden_states(x)
    torch.testing.assert_close(got, h)
    out = ex.extract([_frames(4), _frames(1, 50, 40)])
    assert [o.shape for o in out] == [(4, 64), (1, 64)] and out[0].dtype == np.float16


def test_preprocessing_equals_clip_image_processor():
    from transformers import CLIPImageProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    frames = _frames(3, 260, 210)
    for resize, cls in [("pil", CLIPImageProcessorPil), ("torch", CLIPImageProcessor)]:
        ex = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, settings={"resize": resize}))
        ref = cls()(list(frames), return_tensors="pt").pixel_values
        torch.testing.assert_close(ex.transform(frames), ref, atol=1e-6, rtol=0)


def _open_clip_to_hf(visual, hf_model):
    """Copy an OpenCLIP VisionTransformer's weights into a transformers CLIPVisionModel (same architecture)."""
    sd = visual.state_dict()
    new = {
        "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["ln_post.bias"],
    }
    for i in range(len(visual.transformer.resblocks)):
        p, q = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        wq, wk, wv = sd[p + "attn.in_proj_weight"].chunk(3)
        bq, bk, bv = sd[p + "attn.in_proj_bias"].chunk(3)
        new.update({
            q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk, q + "self_attn.v_proj.weight": wv,
            q + "self_attn.q_proj.bias": bq, q + "self_attn.k_proj.bias": bk, q + "self_attn.v_proj.bias": bv,
            q + "self_attn.out_proj.weight": sd[p + "attn.out_proj.weight"], q + "self_attn.out_proj.bias": sd[p + "attn.out_proj.bias"],
            q + "layer_norm1.weight": sd[p + "ln_1.weight"], q + "layer_norm1.bias": sd[p + "ln_1.bias"],
            q + "layer_norm2.weight": sd[p + "ln_2.weight"], q + "layer_norm2.bias": sd[p + "ln_2.bias"],
            q + "mlp.fc1.weight": sd[p + "mlp.c_fc.weight"], q + "mlp.fc1.bias": sd[p + "mlp.c_fc.bias"],
            q + "mlp.fc2.weight": sd[p + "mlp.c_proj.weight"], q + "mlp.fc2.bias": sd[p + "mlp.c_proj.bias"],
        })
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in hf_model.state_dict()) else ""
    new = {prefix + k.removeprefix("vision_model."): v for k, v in new.items()}
    missing, unexpected = hf_model.load_state_dict(new, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)


@pytest.mark.parametrize("token", ["cls", "patch_mean"])
def test_hf_and_open_clip_backends_agree_on_the_same_weights(token):
    torch.manual_seed(1)
    oc = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, backend="open_clip", settings={"token": token}))
    hf = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, backend="hf", settings={"token": token}))
    _open_clip_to_hf(oc.model, hf.model)
    # 96x128 -> 224x298: the crop offset (37) is the same under both rounding rules, so inputs agree too
    frames = _frames(3)
    torch.testing.assert_close(oc.transform(frames), hf.transform(frames), atol=1e-6, rtol=0)
    a, b = oc.extract([frames]), hf.extract([frames])
    assert oc.width == hf.width == 64
    np.testing.assert_allclose(a[0].astype(np.float32), b[0].astype(np.float32), atol=2e-3, rtol=2e-3)
    with torch.inference_mode():
        x = hf.transform(frames)[:, None]
        torch.testing.assert_close(oc.forward(x), hf.forward(x), atol=1e-5, rtol=1e-4)


def test_open_clip_preprocessing_equals_its_own_transform():
    import open_clip
    from PIL import Image

    oc = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, backend="open_clip"))
    cfg = oc.model.preprocess_cfg
    ref_tf = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    for h, w in [(260, 210), (299, 401), (97, 131)]:  # odd size differences exercise torchvision's rounding
        frames = _frames(2, h, w)
        ref = torch.stack([ref_tf(Image.fromarray(f)) for f in frames])
        torch.testing.assert_close(oc.transform(frames), ref, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_full_size_vit_l14_builds_with_width_2048():
    ex = build_extractor(ExtractorConfig(name="clip_s2", random_weights=True))
    assert ex.width == 2048 and ex.model.config.num_hidden_layers == 24
    out = ex.extract([_frames(1)])
    assert out[0].shape == (1, 2048)


def test_open_clip_checkpoint_file_is_loaded(tmp_path):
    """What open_clip.create_model(arch, pretrained=FILE) loads: a state dict of the whole CLIP model."""
    import open_clip

    tiny = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, backend="open_clip"))  # registers the tiny arch
    full = open_clip.create_model("signfeat-tiny-ViT")
    torch.save(full.state_dict(), tmp_path / "tiny.pt")
    ex = build_extractor(ExtractorConfig(name="clip_s2", backend="open_clip", arch="signfeat-tiny-ViT", model=str(tmp_path / "tiny.pt")))
    assert ex.metadata()["weights"] == "pretrained" and ex.model_id == str(tmp_path / "tiny.pt")
    for name, p in ex.model.state_dict().items():
        torch.testing.assert_close(p, full.visual.state_dict()[name])
    assert not all(torch.equal(p, tiny.model.state_dict()[n]) for n, p in ex.model.state_dict().items())


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16-plus-240"])
def test_open_clip_preprocess_cfg_equals_create_models(arch):
    """The transform's config, read from open_clip's registries, is the one create_model sets on the model."""
    import open_clip

    from extractors.clip_s2 import _open_clip_preprocess_cfg

    model = open_clip.create_model(arch, pretrained=None, load_weights=False)
    assert _open_clip_preprocess_cfg(ExtractorConfig(name="clip_s2", backend="open_clip", arch=arch, random_weights=True)) == dict(model.visual.preprocess_cfg)


def test_open_clip_transform_of_a_pretrained_tag_downloads_nothing(monkeypatch):
    """The job's decode workers build only the transform: a pretrained tag's preprocessing without its checkpoint."""
    import open_clip
    import open_clip.factory

    def no_download(*args, **kwargs):
        raise AssertionError("the transform must not download weights")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", no_download)
    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    tf = ClipS2Extractor.make_transform(ExtractorConfig(name="clip_s2", backend="open_clip", arch="ViT-B-16", model="openai"), ClipS2Extractor.Settings())
    assert (tf.shortest_edge, tf.crop, tf.mean, tf.std) == (224, 224, tuple(tag["mean"]), tuple(tag["std"]))
    # the tag's own settings are read, not the defaults: CLIPA's datacomp1b weights squash the image
    with pytest.raises(SignfeatError, match="squash"):
        ClipS2Extractor.make_transform(ExtractorConfig(name="clip_s2", backend="open_clip", arch="ViT-L-14-CLIPA", model="datacomp1b"), ClipS2Extractor.Settings())


def _clip336(folder):
    """A local 336-px CLIP checkpoint laid out as openai/clip-vit-large-patch14-336 (random weights, tiny)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     patch_size=14, image_size=336)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(folder)
    return str(folder)


def test_default_scales_follow_the_models_input_size(tmp_path):
    """s2wrapper's scale factors [1, 2] of a 336-px CLIP are 336 and 672: its first scale is the plain model on its
    own input (224 would shrink and blow up the image), and the sample JSON records the sizes used."""
    ex = build_extractor(ExtractorConfig(name="clip_s2", model=_clip336(tmp_path / "clip336")))
    assert ex.settings.scales == (336, 672) and list(ex.metadata()["settings"]["scales"]) == [336, 672] and ex.width == 64
    frames = _frames(2, 120, 160)
    x = ex.transform(frames)
    with torch.inference_mode():
        plain_cls = ex.model(pixel_values=x).last_hidden_state[:, 0]
        got = ex.forward(x[:, None])
        want = reference_s2(ex.model, x, (336, 672), base=336)
    torch.testing.assert_close(got[:, :32], plain_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(SignfeatError, match=r"\[224\] below the model's input size 336"):
        build_extractor(ExtractorConfig(name="clip_s2", model=str(tmp_path / "clip336"), settings={"scales": [224, 448]}))


def test_scales_below_the_input_size_are_refused_up_front():
    from pipeline.config import parse_job_config

    with pytest.raises(SignfeatError, match=r"\[224\] below the model's input size 336"):
        parse_job_config({"extractors": [{"name": "clip_s2", "backend": "open_clip", "arch": "ViT-L-14-336", "random_weights": True,
                                          "settings": {"scales": [224, 448]}}]})
    ex = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, settings={"scales": [448]}))  # above it: fine
    assert ex.settings.scales == (448,)


@pytest.mark.parametrize("arch, tower", [("RN50", "a ResNet tower"), ("ViT-B-16-SigLIP", "a timm tower")])
def test_open_clip_towers_without_a_vit_are_refused_up_front(arch, tower):
    from pipeline.config import parse_job_config

    with pytest.raises(SignfeatError, match=f"{arch} has {tower}"):
        parse_job_config({"extractors": [{"name": "clip_s2", "backend": "open_clip", "arch": arch, "random_weights": True}]})


@pytest.mark.parametrize("pooling", [{"pool_type": "avg"}, {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}])
def test_an_open_clip_tower_that_does_not_pool_its_class_token_refuses_token_cls(pooling):
    """CLIPA averages its patch tokens, CoCa pools by attention: their last-layer class token is trained into no
    image summary, and was stored as the feature without a word."""
    import copy

    import open_clip

    from extractors.clip_s2 import TINY_OPEN_CLIP

    name = f"signfeat-test-pool-{'-'.join(pooling)}"
    cfg = copy.deepcopy(TINY_OPEN_CLIP)
    cfg["vision_cfg"].update(pooling)
    open_clip.factory._MODEL_CONFIGS[name] = cfg
    try:
        with pytest.raises(SignfeatError, match="use settings token: patch_mean"):
            build_extractor(ExtractorConfig(name="clip_s2", backend="open_clip", arch=name, random_weights=True))
        ex = build_extractor(ExtractorConfig(name="clip_s2", backend="open_clip", arch=name, random_weights=True, settings={"token": "patch_mean"}))
        assert ex.extract([np.zeros((2, 64, 64, 3), np.uint8)])[0].shape == (2, 2 * 32)
    finally:
        del open_clip.factory._MODEL_CONFIGS[name]
