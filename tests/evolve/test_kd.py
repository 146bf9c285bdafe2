"""The distillation losses: top-k KD is full KD restricted to the teacher's support."""

import torch

from evospec_hf.evolve import full_kd_loss, topk_kd_loss


def test_topk_kd_over_the_whole_vocabulary_is_full_kd():
    gen = torch.Generator().manual_seed(0)
    hidden, weight, bias = torch.randn(5, 16, generator=gen), torch.randn(40, 16, generator=gen), torch.randn(40, generator=gen)
    teacher = torch.randn(5, 40, generator=gen) * 3
    values, ids = teacher.topk(40, dim=-1)
    for softcap in (None, 5.0):
        full = full_kd_loss(hidden, weight, bias, teacher, softcap=softcap)
        topk = topk_kd_loss(hidden, weight, bias, ids, values, softcap=softcap)
        torch.testing.assert_close(topk, full)


def test_weights_select_positions_and_topk_gradients_reach_only_the_hidden_states():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 8, generator=gen, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen)
    values, ids = torch.randn(3, 30, generator=gen).topk(4, dim=-1)
    weights = torch.tensor([0.0, 1.0, 0.0])
    loss = topk_kd_loss(hidden, weight, None, ids, values, weights)
    moved = hidden.detach().clone()
    moved[0] += 5.0
    torch.testing.assert_close(loss, topk_kd_loss(moved, weight, None, ids, values, weights))
    loss.backward()
    assert hidden.grad[0].abs().sum() == 0 and hidden.grad[2].abs().sum() == 0 and hidden.grad[1].abs().sum() > 0
