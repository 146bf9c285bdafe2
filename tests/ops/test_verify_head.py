"""The target's LM head during verification on CPU (`evospec_hf.ops.verify_head`)."""

import pytest
import torch
import torch.nn.functional as F

from evospec_hf.ops.verify_head import columns_linear, columns_verify_head
from tests.conftest import tiny_gpt2, tiny_llama


@pytest.mark.parametrize("shape", [(1, 1, 32), (1, 5, 32), (2, 3, 32), (7, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_same_values_as_linear(shape, bias):
    torch.manual_seed(0)
    weight, x = torch.randn(96, 32), torch.randn(*shape)
    b = torch.randn(96) if bias else None
    out = columns_linear(x, weight, b)
    assert out.shape == F.linear(x, weight, b).shape and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=0, atol=1e-5)


def test_shadows_the_head_for_the_block_only():
    model = tiny_llama(seed=0)
    head = model.get_output_embeddings()
    with columns_verify_head(model) as active:
        assert active and "forward" in vars(head)
        hidden = torch.randn(1, 4, 32)
        torch.testing.assert_close(head(hidden), F.linear(hidden, head.weight), rtol=0, atol=1e-5)
    assert "forward" not in vars(head)


def test_leaves_other_heads_alone():
    model = tiny_gpt2(seed=0)
    model.lm_head = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(32, 96, bias=False))
    with columns_verify_head(model) as active:  # a parametrized head is not a plain nn.Linear
        assert not active
