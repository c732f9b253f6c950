import numpy as np
import pytest
import torch

from extractors import REGISTRY, ExtractorConfig, build_extractor
from pipeline.errors import SignfeatError

NAMES = ["clip_s2", "videomae", "dinov2"]


def _clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 60, 80, 3), dtype=np.uint8) for n in lengths]


def test_registry_has_the_three_extractors():
    assert set(NAMES) <= set(REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_batching_across_clips_equals_one_clip_at_a_time(name):
    torch.manual_seed(0)
    ex = build_extractor(ExtractorConfig(name=name, tiny=True, batch_size=3))
    clips = _clips([1, 17, 5, 24])
    together = ex.extract(clips)
    alone = [ex.extract([c])[0] for c in clips]
    for a, b in zip(together, alone):
        assert a.dtype == np.float16 and a.shape == b.shape and a.shape[1] == ex.width
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_float16_storage_error_is_bounded(name):
    ex = build_extractor(ExtractorConfig(name=name, tiny=True))
    prepared = [ex.prepare(c) for c in _clips([20])]
    with torch.inference_mode():
        units = ex.units(20)
        normalised = ex.transform.normalize(prepared[0])
        fp32 = ex.forward(torch.stack([normalised[u] for u in units])).numpy()
    fp16 = ex.extract_prepared(prepared)[0].astype(np.float32)
    rel = np.abs(fp16 - fp32) / np.maximum(np.abs(fp32), 1e-3)
    assert rel.max() < 1e-3  # float16 keeps 11 significant bits: relative error <= 2^-11 ~ 4.9e-4
    assert np.isfinite(fp16).all()


def test_prepare_is_the_uint8_geometry_of_the_processor():
    ex = build_extractor(ExtractorConfig(name="clip_s2", tiny=True))
    frames = _clips([3])[0]
    prepared = ex.prepare(frames)
    assert prepared.dtype == torch.uint8 and prepared.shape == (3, 3, 224, 224)
    torch.testing.assert_close(ex.transform.normalize(prepared), ex.transform(frames))


def test_out_of_memory_halves_the_batch_and_retries(monkeypatch):
    ex = build_extractor(ExtractorConfig(name="dinov2", tiny=True, batch_size=8))
    clips = _clips([7, 6])
    want = ex.extract(clips)
    real_forward = ex.forward
    seen = []

    def forward(batch):
        seen.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_forward(batch)

    monkeypatch.setattr(ex, "forward", forward)
    got = ex.extract(clips)
    assert ex.batch_size == 2 and seen[:3] == [8, 4, 2]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-3)


def test_metadata_and_settings_hash():
    a = build_extractor(ExtractorConfig(name="videomae", tiny=True)).metadata()
    b = build_extractor(ExtractorConfig(name="videomae", tiny=True)).metadata()
    c = build_extractor(ExtractorConfig(name="videomae", tiny=True, settings={"stride": "4"})).metadata()
    assert a["settings_hash"] == b["settings_hash"] != c["settings_hash"]
    assert a["weights"] == "random" and a["tiny"] is True and a["settings"]["window"] == 16 and c["settings"]["stride"] == 4
    assert a["stream"] == "videomae" and a["dtype"] == "float16" and a["width"] == 32


@pytest.mark.parametrize(
    "config",
    [
        dict(name="nope"),
        dict(name="clip_s2", tiny=True, settings={"scale": "224"}),
        dict(name="clip_s2", tiny=True, settings={"token": "avg"}),
        dict(name="videomae", tiny=True, settings={"window": "sixteen"}),
        dict(name="videomae", tiny=True, settings={"tail": "wrap"}),
        dict(name="dinov2", tiny=True, settings={"resolution": 300}),
        dict(name="dinov2", tiny=True, dtype="int8"),
        dict(name="dinov2", tiny=True, batch_size=0),
        dict(name="clip_s2", tiny=True, backend="timm"),
        dict(name="dinov2", tiny=True, colour="blue"),
        # wrong types that were accepted and used: a truthy string, a truncated float, a bool as a number
        dict(name="dinov2", random_weights="false"),
        dict(name="dinov2", tiny="no"),
        dict(name="dinov2", tiny=True, compile="no"),
        dict(name="dinov2", tiny=True, model=3),
        dict(name="dinov2", tiny=True, batch_size=True),
        dict(name=["dinov2"]),
        dict(name="clip_s2", tiny=True, settings={"scales": [224.5]}),
        dict(name="clip_s2", tiny=True, settings={"scales": [True]}),
        dict(name="clip_s2", tiny=True, settings={"layer": True}),
        # beyond the model's depth (the tiny models have 2 layers): was an IndexError on every forward
        dict(name="clip_s2", tiny=True, settings={"layer": 100}),
        dict(name="videomae", tiny=True, settings={"layer": -4}),
        # a stride longer than the window left the frames between windows in none of them
        dict(name="videomae", tiny=True, settings={"window": 16, "stride": 20}),
        # settings that were silently ignored
        dict(name="dinov2", tiny=True, model="facebook/dinov2-base"),
        dict(name="videomae", tiny=True, revision="main"),
        # tiny builds its own small ViT: an arch was recorded in the sample JSON and the hash, not used
        dict(name="clip_s2", tiny=True, arch="ViT-L-14-336"),
        dict(name="clip_s2", tiny=True, backend="open_clip", arch="ViT-B-16"),
        dict(name="dinov2", arch="ViT-L-14"),
        dict(name="videomae", backend="open_clip"),
    ],
)
def test_bad_configs_are_clear_errors(config):
    with pytest.raises(SignfeatError):
        build_extractor(config)


@pytest.mark.parametrize("name", ["clip_s2", "videomae", "dinov2"])
def test_a_clip_without_frames_is_named_not_a_numpy_error(name):
    ex = build_extractor(ExtractorConfig(name=name, tiny=True))
    clip = np.zeros((3, 40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=f"{name}: clip 1 of 2 has no frames"):
        ex.extract([clip, clip[:0]])
    with pytest.raises(ValueError, match=f"{name}: clip 0 of 1 has no frames"):
        ex.extract_prepared([ex.prepare(clip)[:0]])


def test_real_weights_from_a_local_save_pretrained_folder(tmp_path):
    """Offline clusters hold models as save_pretrained folders: the real loading path reads them."""
    from transformers import Dinov2Model
    from transformers.models.bit import BitImageProcessorPil

    from extractors.dinov2 import PROCESSOR

    src = build_extractor(ExtractorConfig(name="dinov2", tiny=True))
    src.model.save_pretrained(tmp_path / "dino")
    BitImageProcessorPil(**PROCESSOR).save_pretrained(tmp_path / "dino")
    loaded = build_extractor(ExtractorConfig(name="dinov2", model=str(tmp_path / "dino")))
    assert loaded.metadata()["weights"] == "pretrained" and loaded.metadata()["model"] == str(tmp_path / "dino")
    clips = _clips([4])
    np.testing.assert_array_equal(loaded.extract(clips)[0], src.extract(clips)[0])
    assert isinstance(loaded.model, Dinov2Model)


def test_a_weights_file_cut_short_is_a_one_line_error(tmp_path):
    """An interrupted copy leaves model.safetensors cut short: safetensors' SafetensorError ('incomplete metadata,
    file not fully covered') came out as a traceback, in `features` and in every actor of a job."""
    from transformers.models.bit import BitImageProcessorPil

    from extractors.dinov2 import PROCESSOR

    build_extractor(ExtractorConfig(name="dinov2", tiny=True)).model.save_pretrained(tmp_path / "dino")
    BitImageProcessorPil(**PROCESSOR).save_pretrained(tmp_path / "dino")
    weights = tmp_path / "dino" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SignfeatError, match=r"dinov2: cannot load .* as Dinov2Model \(SafetensorError: "):
        build_extractor(ExtractorConfig(name="dinov2", model=str(tmp_path / "dino")))


def test_a_sharded_checkpoint_passes_the_weights_check_until_a_shard_is_missing(tmp_path):
    """The driver's check of a local folder's weights (check_local_weights) reads a sharded save_pretrained folder
    through its index: whole, it passes; a shard gone is named."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from extractors.base import check_local_weights
    from extractors.clip_s2 import TINY

    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    check_local_weights("clip_s2", str(tmp_path / "sharded"))
    shards[1].unlink()
    with pytest.raises(SignfeatError, match=f"lacks 1 weights file.*{shards[1].name}"):
        check_local_weights("clip_s2", str(tmp_path / "sharded"))


@pytest.mark.parametrize("arch,model", [("hf-hub:org/clip", None), ("ViT-B-32", "openai")])
def test_a_revision_with_the_open_clip_backend_is_refused(arch, model):
    """open_clip takes no Hugging Face revision: one given was recorded in the sample JSON and the settings hash,
    and the repository's main (or the tag's weights) loaded all the same."""
    with pytest.raises(SignfeatError, match="backend open_clip does not take"):
        ExtractorConfig(name="clip_s2", backend="open_clip", arch=arch, model=model, revision="v2")


def test_an_openclip_arch_without_backend_open_clip_is_refused():
    """A job config with arch: ViT-S-32 and a checkpoint file, but no backend (hf by default), loaded the file as a
    Hugging Face folder: "not a valid JSON file ... must exist on every node". `signfeat features --arch` implies
    open_clip; a config says it."""
    with pytest.raises(SignfeatError, match="clip_s2: arch 'ViT-S-32' names an OpenCLIP architecture, which backend hf"):
        ExtractorConfig.from_dict({"name": "clip_s2", "arch": "ViT-S-32", "model": "/models/vits32.pt"})
    assert ExtractorConfig.from_dict({"name": "clip_s2", "arch": "ViT-S-32", "backend": "open_clip", "model": "/models/vits32.pt"}).arch == "ViT-S-32"


def test_torch_resize_path_stays_within_two_levels_of_the_pil_path():
    """resize=torch (batched torchvision) vs resize=pil (the processors SpaMo ran): bounded and measured."""
    from extractors.preprocess import FrameTransform

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 260, 210, 3), dtype=np.uint8)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (4, 26, 21, 3), dtype=np.uint8), 10, 1), 10, 2)
    for f in (frames, smooth):
        a = FrameTransform(224, 224, backend="pil").resize_crop(f).int()
        b = FrameTransform(224, 224, backend="torch").resize_crop(f).int()
        diff = (a - b).abs().float()
        assert diff.max() <= 2 and diff.mean() < 0.05
    torch.manual_seed(0)
    pil = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, settings={"resize": "pil"}))
    tch = build_extractor(ExtractorConfig(name="clip_s2", tiny=True, settings={"resize": "torch"}))
    tch.model.load_state_dict(pil.model.state_dict())
    fa, fb = pil.extract([frames])[0].astype(np.float32), tch.extract([frames])[0].astype(np.float32)
    rel = np.linalg.norm(fa - fb) / np.linalg.norm(fa)
    assert rel < 1e-3  # measured 4e-5 here; 1.5e-4 with a random full-size ViT-L/14 (below float16 storage error)


@pytest.mark.parametrize("config", [
    dict(name="clip_s2", tiny=True), dict(name="clip_s2", tiny=True, backend="open_clip"), dict(name="videomae", tiny=True),
    dict(name="dinov2", tiny=True), dict(name="dinov2", tiny=True, settings={"resolution": 336}),
])
def test_transform_without_weights_equals_the_built_extractors(config):
    """The job's CPU stage builds only the preprocessing; it must be the extractor's own."""
    cfg = ExtractorConfig(**config)
    assert REGISTRY[cfg.name].transform_for(cfg) == build_extractor(cfg).transform


@pytest.mark.parametrize("name", NAMES)
def test_random_weights_are_the_same_in_every_build(name):
    """Every actor of a stream (and a resumed job, and ``signfeat features``) builds its own model: with random
    weights they must be the same model, since the shards record one settings_hash for all of them."""
    clip = _clips([16])
    torch.manual_seed(1)
    a = build_extractor(ExtractorConfig(name=name, tiny=True))
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = build_extractor(ExtractorConfig(name=name, tiny=True))
    assert a.settings_hash == b.settings_hash
    np.testing.assert_array_equal(a.extract(clip)[0], b.extract(clip)[0])
    torch.manual_seed(1)
    build_extractor(ExtractorConfig(name=name, tiny=True))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left as it was


def test_a_hub_revision_resolves_to_its_commit_from_the_cache(tmp_path, monkeypatch):
    """What `signfeat extract` pins a Hub id to: refs/REVISION of the cache offline; a commit as it is; None for a
    local folder, a random-weights config and an id the cache does not hold (loading then says why)."""
    import huggingface_hub.constants

    from extractors.base import REGISTRY, resolve_hub_commit

    repo = tmp_path / "hub" / "models--org--model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_hub_commit("org/model", None) == commit
    assert resolve_hub_commit("org/model", "main") == commit
    assert resolve_hub_commit("org/model", "v2") is None  # a tag the cache has no record of
    assert resolve_hub_commit("org/other", None) is None
    assert resolve_hub_commit("org/other", "f" * 40) == "f" * 40
    assert resolve_hub_commit(str(tmp_path), None) is None  # a local folder has no commit
    (repo / "refs" / "v2").write_text(commit + "\n")  # written by hand (echo): transformers loads it, so it is pinned too
    assert resolve_hub_commit("org/model", "v2") == commit
    (repo / "refs" / "v3").write_text("f" * 40 + "\n")  # a commit whose snapshot is not there
    assert resolve_hub_commit("org/model", "v3") is None
    assert REGISTRY["dinov2"].hub_commit(ExtractorConfig(name="dinov2", model="org/model")) == commit
    assert REGISTRY["dinov2"].hub_commit(ExtractorConfig(name="dinov2", tiny=True)) is None
    assert REGISTRY["clip_s2"].hub_commit(ExtractorConfig(name="clip_s2", backend="open_clip", model="org/model")) is None
