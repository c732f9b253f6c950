"""Checkpoints users bring that are variants of what each extractor names (saved here with random weights from
small configs): correct features against the model's own forward, or a one-line refusal, never random weights
recorded as pretrained or a processor setting silently dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from extractors import ExtractorConfig, build_extractor
from extractors.preprocess import FrameTransform
from pipeline.errors import SignfeatError


def _frames(n=3, h=96, w=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _bit_processor(**overrides):
    from transformers.models.bit import BitImageProcessorPil

    settings = dict(size={"shortest_edge": 128}, crop_size={"height": 112, "width": 112}, resample=3,
                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return BitImageProcessorPil(**{**settings, **overrides})


def _save_dinov2(folder, registers=False, **processor):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=112)
    model = (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small, num_register_tokens=4)) if registers
             else Dinov2Model(Dinov2Config(**small)))
    if registers:
        with torch.no_grad():
            model.embeddings.register_tokens.normal_(0, 5.0)  # large, as trained registers are: they must matter
    model.save_pretrained(folder)
    _bit_processor(**processor).save_pretrained(folder)
    return model.eval()


def _save_clip(folder, image_size=112, crop=112):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     patch_size=16, image_size=image_size)).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}).save_pretrained(folder)


def _save_videomae(folder, tubelet=2):
    from transformers import VideoMAEConfig, VideoMAEModel
    from transformers.models.videomae import VideoMAEImageProcessorPil

    torch.manual_seed(0)
    VideoMAEModel(VideoMAEConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
                                 image_size=112, num_frames=8, tubelet_size=tubelet)).save_pretrained(folder)
    VideoMAEImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}).save_pretrained(folder)


def _build(name, folder, **entry):
    return build_extractor(ExtractorConfig.from_dict({"name": name, "model": str(folder), "device": "cpu", **entry}))


def test_a_checkpoint_of_another_family_is_refused_not_run_with_random_weights(tmp_path):
    """transformers only warned and initialised every weight at random (unseeded), and the features were
    recorded as pretrained."""
    _save_clip(tmp_path / "clip")
    _save_videomae(tmp_path / "videomae")
    _save_dinov2(tmp_path / "dinov2")
    with pytest.raises(SignfeatError, match="'clip_vision_model' model, not DINOv2"):
        _build("dinov2", tmp_path / "clip")
    for name, folder in (("videomae", "clip"), ("clip_s2", "videomae"), ("clip_s2", "dinov2"), ("videomae", "dinov2")):
        with pytest.raises(SignfeatError, match=rf"{name}: .*{folder}"):
            _build(name, tmp_path / folder)


def test_weights_missing_from_a_checkpoint_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _save_dinov2(tmp_path / "d")
    weights = load_file(tmp_path / "d" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, tmp_path / "d" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SignfeatError, match=r"is not a Dinov2Model checkpoint: \d+ weights missing .*encoder\.layer\.1\."):
        _build("dinov2", tmp_path / "d")


def test_dinov2_with_registers_runs_as_itself(tmp_path):
    """Loaded as a plain Dinov2Model, its register tokens were dropped with a warning: other features."""
    from transformers import Dinov2Model

    model = _save_dinov2(tmp_path / "reg", registers=True)
    extractor = _build("dinov2", tmp_path / "reg", settings={"resolution": 224})  # the checkpoint's processor
    frames = _frames()
    with torch.no_grad():
        pixels = torch.as_tensor(np.asarray(_bit_processor()(list(frames), return_tensors="np")["pixel_values"]))
        reference = model(pixel_values=pixels).pooler_output.numpy()
        plain = Dinov2Model.from_pretrained(tmp_path / "reg").eval()(pixel_values=pixels).pooler_output.numpy()
    assert _rel(plain, reference) > 1e-2  # the registers matter: the old loading could be told apart
    assert extractor.model_info["class"] == "transformers.Dinov2WithRegistersModel"
    assert _rel(extractor.extract([frames])[0], reference) < 2e-3


@pytest.mark.parametrize("overrides", [{"rescale_factor": 1 / 127.5}, {"do_normalize": False}, {"do_rescale": False, "image_mean": [0.0] * 3, "image_std": [255.0] * 3}])
def test_processor_rescaling_and_normalisation_settings_are_followed(overrides):
    processor = _bit_processor(**overrides)
    frames = _frames()
    expected = np.asarray(processor(list(frames), return_tensors="np")["pixel_values"])
    got = FrameTransform.from_hf_processor(processor)(frames).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("overrides, needle", [({"do_center_crop": False}, "do_center_crop=False"), ({"do_resize": False}, "do_resize=False"),
                                               ({"crop_size": {"height": 112, "width": 96}}, "square crops only"),
                                               ({"resample": 1}, "PIL filter 1"),
                                               # a cap on the long side was silently dropped (up to 3.7 off on 1080p frames)
                                               ({"size": {"shortest_edge": 128, "longest_edge": 160}}, "shortest_edge resizing only")])
def test_processor_settings_signfeat_cannot_follow_are_refused(tmp_path, overrides, needle):
    with pytest.raises(ValueError, match=needle):
        FrameTransform.from_hf_processor(_bit_processor(**overrides))
    _save_dinov2(tmp_path / "d", **overrides)
    with pytest.raises(SignfeatError, match=needle):  # one line from the extractor, not a KeyError traceback
        _build("dinov2", tmp_path / "d", settings={"resolution": 224})  # 224 px reads the checkpoint's processor


def test_a_model_whose_processor_crops_another_size_is_refused_when_built(tmp_path):
    _save_clip(tmp_path / "c", image_size=160, crop=112)
    with pytest.raises(SignfeatError, match="takes 160 px images, but its image processor crops 112 px"):
        _build("clip_s2", tmp_path / "c")


def test_a_videomae_window_shorter_than_its_tubelet_is_refused(tmp_path):
    _save_videomae(tmp_path / "v", tubelet=4)
    with pytest.raises(SignfeatError, match="window=3: the model's tubelet_size is 4"):
        _build("videomae", tmp_path / "v", settings={"window": 3, "stride": 1})


def test_settings_that_a_random_or_local_model_would_ignore_are_refused(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(SignfeatError, match="random_weights builds the published architecture"):
        ExtractorConfig.from_dict({"name": "dinov2", "random_weights": True, "model": str(tmp_path / "m")})
    with pytest.raises(SignfeatError, match="local folder, which has none"):
        ExtractorConfig.from_dict({"name": "dinov2", "model": str(tmp_path / "m"), "revision": "main"})
    ExtractorConfig.from_dict({"name": "dinov2", "model": "facebook/dinov2-base", "revision": "main"})  # a Hub id: fine


def test_an_open_clip_local_dir_model_is_prepared_with_its_own_preprocess_config(tmp_path):
    """The job's CPU stage read open_clip's registry defaults (bicubic, OpenAI mean/std) for a local-dir: model
    whose open_clip_config.json says bilinear and 0.5: job features differed from the extractor's own."""
    import open_clip

    from extractors.base import REGISTRY

    folder = tmp_path / "oc"
    folder.mkdir()
    model_cfg = {"embed_dim": 16, "quick_gelu": True, "vision_cfg": {"image_size": 112, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "shortest"}}))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(f"local-dir:{folder}", load_weights=False).state_dict(), folder / "open_clip_pytorch_model.bin")
    entry = {"name": "clip_s2", "backend": "open_clip", "arch": f"local-dir:{folder}", "device": "cpu"}
    job_side = REGISTRY["clip_s2"].transform_for(ExtractorConfig.from_dict(dict(entry)))
    extractor = build_extractor(entry)
    assert job_side == extractor.transform and job_side.resample == "bilinear" and job_side.mean == (0.5, 0.5, 0.5)


def test_the_default_checkpoints_classes_load_without_refusal(tmp_path):
    """The published defaults are a CLIPModel (openai/clip-vit-large-patch14), a VideoMAEForPreTraining
    (MCG-NJU/videomae-large) and a Dinov2Model; fine-tuned DINOv2 classifiers are common too. Their vision
    backbones hold every weight the extractors need: the missing-weights check must not refuse them."""
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2ForImageClassification, VideoMAEConfig, VideoMAEForPreTraining
    from transformers.models.clip import CLIPImageProcessorPil
    from transformers.models.videomae import VideoMAEImageProcessorPil

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=112)
    CLIPModel(CLIPConfig(vision_config=small, text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                         projection_dim=16)).save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}).save_pretrained(tmp_path / "clip")
    for pooling in (True, False):
        folder = tmp_path / f"videomae_{pooling}"
        VideoMAEForPreTraining(VideoMAEConfig(**small, num_frames=16, use_mean_pooling=pooling, decoder_hidden_size=32, decoder_intermediate_size=64,
                                              decoder_num_attention_heads=2, decoder_num_hidden_layers=1)).save_pretrained(folder)
        VideoMAEImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}).save_pretrained(folder)
        assert _build("videomae", folder).width == 32
    Dinov2ForImageClassification(Dinov2Config(**{**small, "patch_size": 14}, num_labels=3)).save_pretrained(tmp_path / "dino")
    _bit_processor().save_pretrained(tmp_path / "dino")
    assert _build("clip_s2", tmp_path / "clip").width == 64 and _build("dinov2", tmp_path / "dino").width == 32


@pytest.mark.parametrize("saved_dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_runs_in_float32_as_the_config_says(tmp_path, saved_dtype):
    """transformers keeps the dtype a checkpoint was saved in (mirrors and fine-tunes are often float16): the
    models ran in it on the CPU while recorded as float32, and VideoMAE failed every clip (float input, half
    biases). The reference: the same weights loaded in float32, run in float32."""
    from transformers import AutoModel

    frames = _frames(n=8)
    for name, save in (("clip_s2", _save_clip), ("videomae", _save_videomae), ("dinov2", _save_dinov2)):
        folder = tmp_path / name
        save(folder)
        half = AutoModel.from_pretrained(folder).to(saved_dtype)
        half.save_pretrained(folder)  # the same weights, stored in half precision
        reference = _build(name, folder, dtype="fp32")
        reference.model.float()  # the checkpoint's values, in float32 (what the config asks for)
        expected = reference.extract([frames])[0]
        extractor = _build(name, folder, dtype="fp32")
        assert {p.dtype for p in extractor.model.parameters()} == {torch.float32}, name
        assert extractor.metadata()["compute_dtype"] == "float32"
        np.testing.assert_array_equal(extractor.extract([frames])[0], expected, err_msg=name)


def test_a_local_checkpoint_is_identified_by_what_it_holds_not_its_path(tmp_path, monkeypatch):
    """A job resumed over a folder whose weights or processor config had changed skipped its complete shards and
    filled the rest with the new model's features, under one config hash (and verify said OK); one folder spelt
    two ways gave two settings hashes."""
    import shutil

    from pipeline.config import parse_job_config

    folder = tmp_path / "dino"
    _save_dinov2(folder)

    def hashes(model):
        job = parse_job_config({"extractors": [{"name": "dinov2", "model": model, "num_cpus": 0.5}]})
        return job.output_hash(), _build("dinov2", model).metadata()

    base_job, base = hashes(str(folder))
    assert base["model_files"] and base["model"] == str(folder)  # the path stays in the record, for people
    monkeypatch.chdir(tmp_path)
    assert hashes("dino")[0] == base_job and hashes("dino/")[1]["settings_hash"] == base["settings_hash"]
    copy = tmp_path / "elsewhere" / "dino"
    shutil.copytree(folder, copy)  # another mount of the same checkpoint
    assert hashes(str(copy))[0] == base_job
    _save_dinov2(copy, crop_size={"height": 98, "width": 98}, size={"shortest_edge": 112})  # processor edited
    torch.manual_seed(1)
    from transformers import Dinov2Config, Dinov2Model

    other_job, other = hashes(str(copy))
    assert other_job != base_job and other["settings_hash"] != base["settings_hash"]
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                             image_size=112)).save_pretrained(folder)  # weights replaced (seed 1), same names and sizes
    assert hashes(str(folder))[0] != base_job


def test_a_model_path_that_does_not_exist_or_starts_with_a_tilde(tmp_path, monkeypatch):
    """'~/models/x' in a YAML config was taken for a Hub repo id ("Repo id must use alphanumeric chars"), and so
    was a mistyped absolute path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _save_dinov2(tmp_path / "dino")
    assert _build("dinov2", "~/dino").metadata()["model"] == str(tmp_path / "dino")
    with pytest.raises(SignfeatError, match="model '/nonexistent/dino': no such folder or file"):
        _build("dinov2", "/nonexistent/dino")


def test_an_open_clip_checkpoint_of_another_size_or_width_is_refused(tmp_path):
    """open_clip interpolated a 256 px checkpoint's position embeddings to a 224 px arch (an INFO log line) and the
    features were recorded as pretrained; a checkpoint of another width ended in an AssertionError traceback.
    local-dir: models were recorded as model "openai"."""
    import open_clip

    def cfg(image_size, width):
        return {"embed_dim": 16, "quick_gelu": True, "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "head_width": 16, "patch_size": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1}}

    for name, image_size, width in (("t112", 112, 32), ("t128", 128, 32), ("w48", 112, 48)):
        open_clip.factory._MODEL_CONFIGS[f"signfeat-test-{name}"] = cfg(image_size, width)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(f"signfeat-test-{name}").state_dict(), tmp_path / f"{name}.pt")
    entry = {"name": "clip_s2", "backend": "open_clip", "arch": "signfeat-test-t112", "device": "cpu", "settings": {"scales": [112, 224]}}
    assert build_extractor({**entry, "model": str(tmp_path / "t112.pt")}).metadata()["weights"] == "pretrained"
    for other in ("t128", "w48"):
        with pytest.raises(SignfeatError, match=rf"{other}.pt is not a checkpoint of signfeat-test-t112: \d+ weights of another shape"):
            build_extractor({**entry, "model": str(tmp_path / f"{other}.pt")})
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg(112, 32), "preprocess_cfg": {}}))
    torch.save(open_clip.create_model("signfeat-test-t112").state_dict(), folder / "open_clip_pytorch_model.bin")
    local = build_extractor({**entry, "arch": f"local-dir:{folder}"}).metadata()
    assert local["model"] == f"local-dir:{folder}" and local["model_files"]
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(SignfeatError, match="open_clip could not build local-dir:"):
        build_extractor({**entry, "arch": f"local-dir:{folder}"})


def test_the_fingerprint_reads_whole_files_follows_links_and_is_only_for_what_is_loaded(tmp_path, monkeypatch):
    """A LoRA merged into the attention weights changes only the middle of a weights file (the first and last
    MiB were all that was read); a broken link in a copied HF snapshot was a traceback; a folder ./openai made
    an OpenCLIP tag look like a local checkpoint."""
    import os

    from extractors.base import local_checkpoint, model_files_fingerprint

    weights = tmp_path / "m" / "model.safetensors"
    weights.parent.mkdir()
    data = bytearray(os.urandom(6 * 2**20))
    weights.write_bytes(bytes(data))
    before = model_files_fingerprint(str(weights.parent))
    data[3 * 2**20] ^= 1
    weights.write_bytes(bytes(data))
    assert model_files_fingerprint(str(weights.parent)) != before
    os.utime(weights, (0, 0))  # when it was written does not count
    after = model_files_fingerprint(str(weights.parent))
    (tmp_path / "m" / "README.md").symlink_to(tmp_path / "blobs" / "gone")
    assert model_files_fingerprint(str(weights.parent)) == after
    (tmp_path / "m" / "sub").mkdir()
    (tmp_path / "m" / "sub" / "up").symlink_to("..")  # a cycle: walked once, not until the OS's link limit
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (reads.append(f), real_open(f, *a, **k))[1])
    model_files_fingerprint(str(weights.parent))
    monkeypatch.undo()
    assert sum(1 for r in reads if str(r).endswith("model.safetensors")) == 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").mkdir()
    assert local_checkpoint(ExtractorConfig(name="clip_s2", backend="open_clip", arch="ViT-B-32", model="openai")) is None
    assert local_checkpoint(ExtractorConfig(name="dinov2", model="m")) == "m"


def test_the_smplx_model_file_is_fingerprinted_in_the_job_hash(tmp_path):
    """smplx623 names its model file in a setting: replacing SMPLX_NEUTRAL.npz kept the job hash (a rerun mixed
    two body models), and model_dir X and X/ were two jobs."""
    import subprocess
    import sys

    from pipeline.config import parse_job_config

    subprocess.run([sys.executable, "-m", "motion.synthetic", str(tmp_path / "a")], check=True, capture_output=True)

    def job_hash(model_dir):
        return parse_job_config({"extractors": [{"name": "smplx623", "settings": {"model_dir": model_dir}, "num_cpus": 0.5}]}).output_hash()

    first = job_hash(str(tmp_path / "a"))
    assert job_hash(str(tmp_path / "a") + "/") == first
    # a real (not synthetic) model file: its samples' settings_hash does not depend on how model_dir is spelt either
    # (a resume with X/ made verify report two models in one output)
    from motion.synthetic import SYNTHETIC_MARKER

    (synthetic,) = (tmp_path / "a").rglob("SMPLX_NEUTRAL.npz")
    with np.load(synthetic, allow_pickle=False) as f:
        real = {k: v for k, v in f.items() if k != SYNTHETIC_MARKER}
    (tmp_path / "real" / "smplx").mkdir(parents=True)
    np.savez(tmp_path / "real" / "smplx" / "SMPLX_NEUTRAL.npz", **real)
    hashes = {build_extractor({"name": "smplx623", "settings": {"model_dir": d}}).metadata()["settings_hash"]
              for d in (str(tmp_path / "real"), str(tmp_path / "real") + "/")}
    assert len(hashes) == 1
    (model,) = (tmp_path / "a").rglob("SMPLX_NEUTRAL.npz")
    with np.load(model, allow_pickle=False) as f:
        arrays = dict(f)
    arrays["shapedirs"] = arrays["shapedirs"] * 1.01  # another body model under the same path
    np.savez(model, **arrays)
    assert job_hash(str(tmp_path / "a")) != first
