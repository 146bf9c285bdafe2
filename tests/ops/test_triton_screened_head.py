"""The Triton kernel of the screened head against its torch reference: compiled on a CUDA device when there is one,
interpreted on CPU otherwise (see conftest.py). The interpreter is slow, so the shapes are small and awkward."""

import pytest
import torch

from evospec_hf.ops.screened_head import Int8Head

triton_kernel = pytest.importorskip("evospec_hf.ops.triton_screened_head")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SHAPES = [
    # (positions, vocab, hidden)
    pytest.param(1, 130, 40, id="one-position-partial-block"),
    pytest.param(3, 200, 70, id="hidden-not-multiple-of-block"),
    pytest.param(17, 64, 32, id="positions-past-one-dot-tile"),
]


def int8_inputs(vocab, hidden, seed, bias=False):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, hidden, generator=g) * 0.05
    weight[vocab - 1] *= 4  # the last row, to catch off-by-one offsets: it often holds the argmax
    b = torch.randn(vocab, generator=g) * 0.1 if bias else None
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    head = Int8Head.pack(weight, b)  # the bound's factors, as the CPU path computes them
    return weight, b, q, scale, head


@pytest.mark.parametrize("with_bias", [pytest.param(False, id="no-bias"), pytest.param(True, id="bias")])
@pytest.mark.parametrize("positions, vocab, hidden", SHAPES)
def test_kernel_matches_reference(positions, vocab, hidden, with_bias):
    weight, bias, q, scale, head = int8_inputs(vocab, hidden, seed=vocab + positions, bias=with_bias)
    if head is None:
        pytest.skip("no exact int8 product on this machine (the factors come from the CPU path)")
    h = torch.randn(positions, hidden, generator=torch.Generator().manual_seed(1)) * 3
    args = [t.to(DEVICE) if t is not None else None for t in (h, q, scale, head.weight_error, head.weight_norm)]
    extra = [bias.to(DEVICE), head.bias_margin.to(DEVICE)] if with_bias else [None, None]
    best, best_row, upper = triton_kernel.screen_block_maxima(*args, *extra)
    ref_best, ref_row, ref_upper = triton_kernel.screen_block_maxima_reference(*args, *extra)
    assert best.shape == (triton_kernel.triton.cdiv(vocab, 64), positions)
    torch.testing.assert_close(best, ref_best, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(upper, ref_upper, rtol=1e-6, atol=1e-6)
    assert torch.equal(best_row, ref_row)


@pytest.mark.parametrize("positions, vocab, hidden", SHAPES[:2])
def test_screened_logits_through_the_kernel_keep_the_argmax(positions, vocab, hidden):
    weight, _, q, scale, head = int8_inputs(vocab, hidden, seed=3)
    if head is None:
        pytest.skip("no exact int8 product on this machine")
    h = torch.randn(positions, hidden, generator=torch.Generator().manual_seed(2)) * 3
    weight, h = weight.to(DEVICE), h.to(DEVICE)
    logits, rescored = triton_kernel.triton_screened_logits(
        h, q.to(DEVICE), scale.to(DEVICE), head.weight_error.to(DEVICE), head.weight_norm.to(DEVICE), weight
    )  # fmt: skip
    assert torch.equal(logits.argmax(dim=1), (h.double() @ weight.double().T).argmax(dim=1))
    assert rescored < vocab  # whole blocks were excluded


def test_kernel_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="int8"):
        triton_kernel.screen_block_maxima(
            torch.randn(1, 8), torch.randn(10, 8), torch.ones(10), torch.ones(10), torch.ones(10)
        )
    with pytest.raises(ValueError, match="expected h"):
        triton_kernel.screen_block_maxima(
            torch.randn(1, 9), torch.zeros(10, 8, dtype=torch.int8), torch.ones(10), torch.ones(10), torch.ones(10)
        )
