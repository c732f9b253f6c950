import numpy as np
import pytest
import torch

from extractors import ExtractorConfig, build_extractor
from extractors.videomae import PROCESSOR, window_indices


def _starts(idx):
    return [int(w[0]) for w in idx]


@pytest.mark.parametrize(
    "num_frames,stride,tail,starts,last_window_tail",
    [
        # hand-computed: starts 0, s, 2s, ... while start + 16 <= max(T, 16); pad adds start + s if frames remain
        (1, 8, "drop", [0], [0] * 16),
        (1, 8, "pad", [0], [0] * 16),
        (15, 8, "drop", [0], list(range(15)) + [14]),
        (15, 4, "pad", [0], list(range(15)) + [14]),
        (16, 8, "drop", [0], list(range(16))),
        (16, 8, "pad", [0], list(range(16))),
        (17, 8, "drop", [0], list(range(16))),
        (17, 8, "pad", [0, 8], list(range(8, 17)) + [16] * 7),
        (17, 4, "drop", [0], list(range(16))),
        (17, 4, "pad", [0, 4], list(range(4, 17)) + [16] * 3),
        (100, 8, "drop", [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80], list(range(80, 96))),
        (100, 8, "pad", [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88], list(range(88, 100)) + [99] * 4),
        (100, 4, "drop", list(range(0, 85, 4)), list(range(84, 100))),
        (100, 4, "pad", list(range(0, 85, 4)), list(range(84, 100))),
    ],
)
def test_window_indices_hand_computed(num_frames, stride, tail, starts, last_window_tail):
    idx = window_indices(num_frames, 16, stride, tail)
    assert idx.shape == (len(starts), 16)
    assert _starts(idx) == starts
    assert idx[-1].tolist() == last_window_tail
    assert all(w.tolist() == sorted(w.tolist()) for w in idx)
    if tail == "pad":
        assert set(idx.ravel().tolist()) == set(range(num_frames))  # every frame covered


def test_signllm_window_13_stride_4():
    idx = window_indices(30, 13, 4, "drop")
    assert _starts(idx) == [0, 4, 8, 12, 16] and idx.shape == (5, 13)


def _frames(n, seed=0, h=72, w=96):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("settings", [{}, {"pooling": "mean"}, {"window": 13, "stride": 4, "tail": "pad"}, {"resize": "torch"}])
def test_features_equal_the_hf_model_window_by_window_with_its_processor(settings):
    from transformers import VideoMAEImageProcessor
    from transformers.models.videomae import VideoMAEImageProcessorPil

    torch.manual_seed(0)
    ex = build_extractor(ExtractorConfig(name="videomae", tiny=True, settings=settings))
    frames = _frames(23)
    got = ex.extract([frames])[0]
    s = ex.settings
    processor = (VideoMAEImageProcessorPil if s.resize == "pil" else VideoMAEImageProcessor)(**PROCESSOR)
    want = []
    with torch.inference_mode():
        for window in window_indices(len(frames), s.window, s.stride, s.tail):
            inputs = processor(images=[list(frames[window])], return_tensors="pt")
            hidden = ex.model(**inputs, output_hidden_states=True).hidden_states[-1]
            want.append((hidden[:, 0] if s.pooling == "first" else hidden.mean(1))[0])
    want = torch.stack(want).numpy()
    assert got.shape == want.shape == (len(window_indices(23, s.window, s.stride, s.tail)), 32)
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-3, rtol=2e-3)  # float16 storage


@pytest.mark.slow
def test_full_size_videomae_large_builds_with_width_1024():
    ex = build_extractor(ExtractorConfig(name="videomae", random_weights=True))
    assert ex.width == 1024 and ex.model.config.num_hidden_layers == 24
    assert ex.extract([_frames(16)])[0].shape == (1, 1024)
