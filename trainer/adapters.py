"""Adapters from feature streams to LLM-width embeddings. Each takes ``{stream: [B, T, D]}`` plus lengths
and returns ``(embeddings [B, M, llm_width], mask [B, M] bool)``.

- ``SignAdapter``: SpaMo's Sign Adapter as its released code builds it (t5_slt.py + utils/tconv.py).
- ``MLPConnector``: LLaVA-style 2-layer GELU MLP (LLaVA-SLT, SL-LLaMA), optionally after SL-LLaMA's
  local-window transformer (LTN).
- ``MotionAdapter``: an MLP over the 623-d SMPL-X motion stream (LSLM-style; LSLM itself first quantises
  motion with a VQ-VAE, which is not built here: the continuous vector goes straight into the MLP).
"""

from __future__ import annotations

import torch
from torch import nn

Streams = dict[str, torch.Tensor]


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def mlp2x_gelu(in_width: int, out_width: int) -> nn.Sequential:
    """LLaVA's ``mlp2x_gelu`` projector: Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(in_width, out_width), nn.GELU(), nn.Linear(out_width, out_width))


class TemporalConv(nn.Module):
    """SpaMo's 1D CNN ``K5, P2, K5, P2``: each K is Conv1d(kernel 5, stride 1, padding 0) + BatchNorm1d + ReLU,
    each P is MaxPool1d(2) (floor). Length L -> floor((L - 12) / 4), clamped at 0."""

    def __init__(self, width: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.Conv1d(width, width, kernel_size=5, stride=1, padding=0), nn.BatchNorm1d(width),
                       nn.ReLU(inplace=True), nn.MaxPool1d(kernel_size=2, ceil_mode=False)]
        self.net = nn.Sequential(*layers)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            lengths = torch.div(lengths - 4, 2, rounding_mode="floor")  # K5 then P2 (floor)
        return lengths.clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, C] -> ([B, M, C], output lengths [B])."""
        if x.shape[1] < 16:  # too short to give one position: pad (its output stays masked: length 0)
            x = nn.functional.pad(x, (0, 0, 0, 16 - x.shape[1]))
        y = self.net(x.transpose(1, 2)).transpose(1, 2)
        return y, self.output_lengths(lengths)


def join_valid(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the valid positions of each part one after another, re-padded with zeros."""
    batch = parts[0][0].shape[0]
    lengths = sum(length for _, length in parts)
    out = parts[0][0].new_zeros(batch, max(1, int(lengths.max())), parts[0][0].shape[2])
    for i in range(batch):
        pieces = [x[i, : int(length[i])] for x, length in parts]
        joined = torch.cat(pieces, dim=0)
        out[i, : len(joined)] = joined
    return out, lengths


class SignAdapter(nn.Module):
    """SpaMo: per-stream linear to ``hidden`` (spatial 2048 -> 768, motion 1024 -> 768), valid spatial frames
    then valid motion windows per sample, temporal conv, 2-layer GELU MLP (hidden -> llm -> llm).
    As in the release: no dropout, no positional or modality embedding."""

    def __init__(self, spatial: str, motion: str, spatial_width: int, motion_width: int, hidden: int, llm_width: int):
        super().__init__()
        self.spatial, self.motion = spatial, motion
        self.spatial_proj = nn.Linear(spatial_width, hidden)
        self.motion_proj = nn.Linear(motion_width, hidden)
        self.temporal = TemporalConv(hidden)
        self.mlp = mlp2x_gelu(hidden, llm_width)

    def forward(self, features: Streams, lengths: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = self.spatial_proj(features[self.spatial])
        motion = self.motion_proj(features[self.motion])
        joined, joined_lengths = join_valid([(spatial, lengths[self.spatial]), (motion, lengths[self.motion])])
        conv, conv_lengths = self.temporal(joined, joined_lengths)
        mask = lengths_to_mask(conv_lengths, conv.shape[1])
        return self.mlp(conv) * mask[..., None], mask


class LocalWindowTransformer(nn.Module):
    """SL-LLaMA's LTN: transformer encoder layers whose attention is limited to +-window/2 frames."""

    def __init__(self, width: int, window: int, layers: int, heads: int):
        super().__init__()
        self.half = window // 2
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        far = (positions[None, :] - positions[:, None]).abs() > self.half  # True: may not attend
        return self.encoder(x, mask=far, src_key_padding_mask=~mask)


class MLPConnector(nn.Module):
    """LLaVA-SLT / SL-LLaMA: one per-frame stream -> (optional LTN) -> 2-layer GELU MLP to the LLM width."""

    def __init__(self, stream: str, in_width: int, llm_width: int, ltn: LocalWindowTransformer | None = None):
        super().__init__()
        self.stream, self.ltn = stream, ltn
        self.mlp = mlp2x_gelu(in_width, llm_width)

    def forward(self, features: Streams, lengths: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        x = features[self.stream]
        mask = lengths_to_mask(lengths[self.stream], x.shape[1])
        if self.ltn is not None:
            x = self.ltn(x, mask)
        return self.mlp(x) * mask[..., None], mask


class MotionAdapter(nn.Module):
    """LSLM-style: the 623-d motion vector per frame, layer-normalised (its parts have very different
    scales), through Linear -> GELU -> Linear -> GELU -> Linear to the LLM width."""

    def __init__(self, stream: str, in_width: int, hidden: int, llm_width: int):
        super().__init__()
        self.stream = stream
        self.net = nn.Sequential(nn.LayerNorm(in_width), nn.Linear(in_width, hidden), nn.GELU(),
                                 nn.Linear(hidden, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    def forward(self, features: Streams, lengths: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        x = features[self.stream]
        mask = lengths_to_mask(lengths[self.stream], x.shape[1])
        return self.net(x) * mask[..., None], mask


class Standardized(nn.Module):
    """(x - mean) / std per stream and dimension before ``inner``; the statistics are buffers (they travel with
    the adapter's weights in checkpoints) set once from the training split (``set_statistics``)."""

    def __init__(self, inner: nn.Module, widths: dict[str, int]):
        super().__init__()
        self.inner = inner
        for name, width in widths.items():
            self.register_buffer(f"mean_{name}", torch.zeros(width))
            self.register_buffer(f"std_{name}", torch.ones(width))

    def set_statistics(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (mean, std) in stats.items():
            getattr(self, f"mean_{name}").copy_(mean)
            getattr(self, f"std_{name}").copy_(std.clamp(min=1e-6))

    def forward(self, features: Streams, lengths: Streams) -> tuple[torch.Tensor, torch.Tensor]:
        normed = {name: (x - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}") for name, x in features.items()}
        return self.inner(normed, lengths)


def visual_positions(kind: str, streams: list[str], lengths: dict[str, int]) -> int:
    """Positions the adapter ``kind`` hands the LLM for a sample with ``lengths`` rows per stream: the Sign
    Adapter's temporal CNN turns spatial + motion rows L into floor((L - 12) / 4), none below 16; the others one
    per row of their stream."""
    if kind == "sign_adapter":
        return int(TemporalConv.output_lengths(torch.tensor(sum(lengths[s] for s in streams[:2]))))
    return int(lengths[streams[0]])


def build_adapter(recipe, llm_width: int) -> nn.Module:
    cfg, streams = recipe.adapter, recipe.data.streams
    if cfg.kind == "sign_adapter":
        spatial, motion = streams
        adapter = SignAdapter(spatial, motion, recipe.stream_width(spatial), recipe.stream_width(motion), cfg.hidden, llm_width)
    elif cfg.kind == "mlp":
        width = recipe.stream_width(streams[0])
        ltn = LocalWindowTransformer(width, cfg.ltn_window, cfg.ltn_layers, cfg.ltn_heads) if cfg.ltn else None
        adapter = MLPConnector(streams[0], width, llm_width, ltn)
    else:
        adapter = MotionAdapter(streams[0], recipe.stream_width(streams[0]), cfg.hidden, llm_width)
    if cfg.standardize:
        return Standardized(adapter, {name: recipe.stream_width(name) for name in streams})
    return adapter
