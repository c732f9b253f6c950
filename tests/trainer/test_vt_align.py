import math

import torch

from trainer.vt_align import vt_align_loss


def _hand_loss(v_pooled, t_pooled, scale):
    """SpaMo eq. 1 written out with plain Python numbers."""
    def unit(x):
        n = math.sqrt(sum(a * a for a in x))
        return [a / n for a in x]

    v = [unit(x) for x in v_pooled]
    t = [unit(x) for x in t_pooled]
    s = math.exp(scale)
    logits = [[s * sum(a * b for a, b in zip(t[i], v[j])) for j in range(len(v))] for i in range(len(t))]

    def ce_rows(m):
        return sum(-m[i][i] + math.log(sum(math.exp(x) for x in m[i])) for i in range(len(m))) / len(m)

    transposed = [list(col) for col in zip(*logits)]
    return (ce_rows(logits) + ce_rows(transposed)) / 2


VISUAL = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]],  # sample 0: 2 valid positions + 1 pad
                       [[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])  # sample 1: 3 valid
VMASK = torch.tensor([[True, True, False], [True, True, True]])
TEXT = torch.tensor([[[2.0, 1.0], [0.0, 0.0]], [[1.0, 3.0], [1.0, -1.0]]])
TMASK = torch.tensor([[True, False], [True, True]])
SCALE = math.log(1 / 0.07)


def test_vt_align_masked_equals_hand_computed_value():
    v_pooled = [[2.0, 1.0], [1.0, 2 / 3]]  # means over valid positions, by hand
    t_pooled = [[2.0, 1.0], [1.0, 1.0]]
    expected = _hand_loss(v_pooled, t_pooled, SCALE)
    got = vt_align_loss(VISUAL, VMASK, TEXT, TMASK, torch.tensor(SCALE), "masked")
    assert abs(got.item() - expected) < 1e-5


def test_vt_align_unmasked_averages_padding_like_spamo_release():
    v_pooled = [[13 / 3, 11 / 3], [1.0, 2 / 3]]
    t_pooled = [[1.0, 0.5], [1.0, 1.0]]
    expected = _hand_loss(v_pooled, t_pooled, SCALE)
    got = vt_align_loss(VISUAL, VMASK, TEXT, TMASK, torch.tensor(SCALE), "unmasked")
    assert abs(got.item() - expected) < 1e-5
    assert abs(got.item() - vt_align_loss(VISUAL, VMASK, TEXT, TMASK, torch.tensor(SCALE), "masked").item()) > 1e-3


def test_vt_align_logit_scale_gets_a_gradient():
    scale = torch.tensor(SCALE, requires_grad=True)
    vt_align_loss(VISUAL, VMASK, TEXT, TMASK, scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0
