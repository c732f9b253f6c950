import torch

from trainer.adapters import LocalWindowTransformer, SignAdapter, TemporalConv, join_valid

# floor((L - 12) / 4) clamped at 0, worked out by hand: K5 (L-4), P2 (floor /2), K5 (-4), P2 (floor /2)
HAND = {0: 0, 5: 0, 11: 0, 12: 0, 15: 0, 16: 1, 19: 1, 20: 2, 27: 3, 28: 4, 100: 22, 116: 26, 512: 125}


def test_temporal_conv_length_arithmetic_matches_hand_values():
    lengths = torch.tensor(list(HAND))
    assert TemporalConv.output_lengths(lengths).tolist() == list(HAND.values())


def test_temporal_conv_output_width_is_that_of_the_longest_input():
    conv = TemporalConv(4).eval()
    for length in (16, 27, 100):
        out, out_lengths = conv(torch.randn(2, length, 4), torch.tensor([length, 3]))
        assert out.shape[1] == HAND[length] == out_lengths[0]
        assert out_lengths[1] == 0
    out, out_lengths = conv(torch.randn(2, 12, 4), torch.tensor([12, 5]))  # nothing valid: one masked position
    assert out.shape[1] == 1 and out_lengths.tolist() == [0, 0]


def test_temporal_conv_is_k5_p2_k5_p2_with_batchnorm_relu():
    kinds = [type(m).__name__ for m in TemporalConv(4).net]
    assert kinds == ["Conv1d", "BatchNorm1d", "ReLU", "MaxPool1d"] * 2
    conv = TemporalConv(4).net[0]
    assert conv.kernel_size == (5,) and conv.stride == (1,) and conv.padding == (0,)


def test_join_valid_puts_valid_spatial_frames_then_valid_motion_windows():
    spatial = torch.arange(1, 7, dtype=torch.float).view(2, 3, 1)  # sample 0: [1,2,3]; sample 1: [4,5,(6 pad)]
    motion = torch.tensor([[[10.0], [11.0]], [[12.0], [99.0]]])  # sample 1: one window valid
    joined, lengths = join_valid([(spatial, torch.tensor([3, 2])), (motion, torch.tensor([2, 1]))])
    assert lengths.tolist() == [5, 3]
    assert joined[0, :, 0].tolist() == [1, 2, 3, 10, 11]
    assert joined[1, :, 0].tolist() == [4, 5, 12, 0, 0]


def test_sign_adapter_shapes_and_mask():
    adapter = SignAdapter("clip_s2", "videomae", 16, 8, hidden=12, llm_width=20).eval()
    features = {"clip_s2": torch.randn(2, 40, 16), "videomae": torch.randn(2, 4, 8)}
    lengths = {"clip_s2": torch.tensor([40, 20]), "videomae": torch.tensor([4, 2])}
    out, mask = adapter(features, lengths)
    assert out.shape == (2, 8, 20)  # joined lengths 44 and 22: floor(32/4) = 8, floor(10/4) = 2
    assert mask.sum(1).tolist() == [8, 2]
    assert torch.all(out[1, 2:] == 0)
    assert not any("dropout" in type(m).__name__.lower() for m in adapter.modules())


def test_local_window_transformer_sees_only_its_window():
    torch.manual_seed(0)
    ltn = LocalWindowTransformer(8, window=8, layers=1, heads=2).eval()
    x = torch.randn(1, 20, 8)
    mask = torch.ones(1, 20, dtype=torch.bool)
    base = ltn(x, mask)
    far = x.clone()
    far[0, 10] += 5.0  # 10 frames away from frame 0: outside +-4
    near = x.clone()
    near[0, 3] += 5.0  # 3 frames away: inside
    assert torch.allclose(ltn(far, mask)[0, 0], base[0, 0], atol=1e-6)
    assert not torch.allclose(ltn(near, mask)[0, 0], base[0, 0], atol=1e-4)


def test_spamo_sign_adapter_at_real_sizes():
    """clip_s2 2048-d, videomae 1024-d, 768 inside, Flan-T5-XL width 2048; a PHOENIX-length clip (116 frames,
    13 windows): 129 joined positions -> floor(117 / 4) = 29 visual tokens."""
    from trainer.adapters import build_adapter
    from trainer.recipe import recipe_from_dict

    adapter = build_adapter(recipe_from_dict({}), 2048).eval()
    assert adapter.spatial_proj.weight.shape == (768, 2048) and adapter.motion_proj.weight.shape == (768, 1024)
    assert [m.weight.shape for m in adapter.mlp if hasattr(m, "weight")] == [(2048, 768), (2048, 2048)]
    with torch.no_grad():
        out, mask = adapter({"clip_s2": torch.randn(1, 116, 2048), "videomae": torch.randn(1, 13, 1024)},
                            {"clip_s2": torch.tensor([116]), "videomae": torch.tensor([13])})
    assert out.shape == (1, 29, 2048) and int(mask.sum()) == 29
