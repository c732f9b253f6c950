"""VT-Align (SpaMo eq. 1): a CLIP-style symmetric contrastive loss between sign and text.

Sign: the Sign Adapter's output, mean pooled over time. Text: the LLM's (frozen) input token embeddings of
the target sentence, mean pooled. Both L2-normalised; logits = exp(logit_scale) * text @ sign^T with a
learnable logit scale initialised at ln(1/0.07); the loss is the mean of the cross-entropies in both
directions, the matching pair of each row being the positive.

Pooling: ``masked`` (default) averages only valid positions (adapter mask, target tokens + end token);
``unmasked`` averages every position including padding and pad tokens, which is what SpaMo's release does
(``visual_outputs.mean(1)``, ``text_embeds.mean(1)``) - set it to reproduce the release exactly.

DDP (``torchrun``, world size W > 1): the pooled embeddings of every rank are all-gathered (with gradients,
``torch.distributed.nn.functional.all_gather``), so each rank contrasts its local rows against the whole
global batch (W x B negatives, as one process with the global batch would); its local rows' positives sit at
``rank * B`` in the gathered columns. Each rank's loss is the mean over its own rows; the mean of the ranks'
losses (what DDP's gradient averaging optimises) equals the single-process loss over the concatenated global
batch, and so do the gradients. Every rank must bring the same batch size (the trainer's data split does).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mean_pool(x: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "unmasked":
        return x.mean(dim=1)
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` [B, D] of every rank concatenated in rank order (gradients flow back to each rank's own rows),
    and the offset of this rank's rows in it. A single process (or no process group): ``x`` itself, 0."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0), dist.get_rank() * len(x)


def vt_align_loss(visual: torch.Tensor, visual_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                  logit_scale: torch.Tensor, pooling: str = "masked") -> torch.Tensor:
    sign = F.normalize(mean_pool(visual.float(), visual_mask, pooling), dim=-1)
    words = F.normalize(mean_pool(text.float(), text_mask, pooling), dim=-1)
    all_sign, offset = gather_rows(sign)
    all_words, _ = gather_rows(words)
    scale = logit_scale.exp()
    logits_per_text = scale * words @ all_sign.t()  # local texts x global signs
    logits_per_sign = scale * sign @ all_words.t()  # local signs x global texts
    targets = torch.arange(len(sign), device=sign.device) + offset
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_sign, targets)) / 2
