"""The Triton sparse LM-head kernel against its torch reference: compiled on a CUDA device when there is one,
interpreted on CPU otherwise (see conftest.py)."""

import pytest
import torch

from evospec_hf.ops import packed_lm_head, resolve_head_backend, sparse_lm_head_reference

triton_kernel = pytest.importorskip("evospec_hf.ops.triton_sparse_lm_head")

SHAPES = [
    # (positions, vocab, hidden, shortlist)
    pytest.param(1, 50, 32, 1, id="shortlist-of-1"),
    pytest.param(1, 1000, 100, 77, id="non-power-of-two"),
    pytest.param(3, 500, 70, 130, id="hidden-not-multiple-of-block"),
    pytest.param(2, 300, 1, 300, id="hidden-1-whole-vocab"),
    pytest.param(1, 4096, 640, 1000, id="gemma-hidden"),
]
TOLERANCES = {torch.float32: 1e-4, torch.float16: 2e-2}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("with_bias", [pytest.param(False, id="no-bias"), pytest.param(True, id="bias")])
@pytest.mark.parametrize("positions, vocab, hidden, shortlist", SHAPES)
def test_triton_kernel_matches_reference(positions, vocab, hidden, shortlist, with_bias, dtype):
    gen = torch.Generator().manual_seed(positions * 7 + shortlist)
    h = torch.randn(positions, hidden, generator=gen).to(dtype)
    weight = torch.randn(vocab, hidden, generator=gen).to(dtype)
    bias = torch.randn(vocab, generator=gen).to(dtype) if with_bias else None
    ids = torch.randperm(vocab, generator=gen)[:shortlist]
    ids[-1] = vocab - 1  # the last row, to catch off-by-one offsets
    h, weight, ids = h.to(DEVICE), weight.to(DEVICE), ids.to(DEVICE)
    bias = bias.to(DEVICE) if with_bias else None

    out = triton_kernel.triton_sparse_lm_head(h, weight, ids, bias)
    ref = sparse_lm_head_reference(h, weight, ids, bias)
    assert out.dtype == torch.float32 and out.shape == (positions, shortlist)
    torch.testing.assert_close(out, ref, atol=TOLERANCES[dtype] * hidden**0.5, rtol=TOLERANCES[dtype])


def test_packed_path_matches_reference():
    gen = torch.Generator().manual_seed(0)
    h, weight, bias = torch.randn(2, 24, generator=gen), torch.randn(200, 24, generator=gen), torch.randn(200, generator=gen)
    ids = torch.tensor([5, 199, 0, 42])
    torch.testing.assert_close(packed_lm_head(h, weight[ids], bias[ids]), sparse_lm_head_reference(h, weight, ids, bias))


def test_kernel_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="hidden size"):
        triton_kernel.triton_sparse_lm_head(torch.randn(1, 8), torch.randn(10, 9), torch.tensor([1]))


def test_backend_is_chosen_by_device():
    cpu = torch.device("cpu")
    assert resolve_head_backend("auto", cpu) == "torch"
    assert resolve_head_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_head_backend("triton", cpu)
    if torch.cuda.is_available():
        assert resolve_head_backend("auto", torch.device("cuda")) == "triton"
