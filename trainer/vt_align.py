"""VT-Align (SpaMo eq. 1): a CLIP-style symmetric contrastive loss between sign and text.

Sign: the Sign Adapter's output, mean pooled over time. Text: the LLM's (frozen) input token embeddings of
the target sentence, mean pooled. Both L2-normalised; logits = exp(logit_scale) * text @ sign^T with a
learnable logit scale initialised at ln(1/0.07); the loss is the mean of the cross-entropies in both
directions, the matching pair of each row being the positive.

Pooling: ``masked`` (default) averages only valid positions (adapter mask, target tokens + end token);
``unmasked`` averages every position including padding and pad tokens, which is what SpaMo's release does
(``visual_outputs.mean(1)``, ``text_embeds.mean(1)``) - set it to reproduce the release exactly.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mean_pool(x: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "unmasked":
        return x.mean(dim=1)
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def vt_align_loss(visual: torch.Tensor, visual_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                  logit_scale: torch.Tensor, pooling: str = "masked") -> torch.Tensor:
    sign = F.normalize(mean_pool(visual.float(), visual_mask, pooling), dim=-1)
    words = F.normalize(mean_pool(text.float(), text_mask, pooling), dim=-1)
    logits_per_text = logit_scale.exp() * words @ sign.t()
    targets = torch.arange(len(sign), device=sign.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2
