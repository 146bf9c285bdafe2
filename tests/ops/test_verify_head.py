"""The target's LM head during verification on CPU (`evospec_hf.ops.verify_head`)."""

import pytest
import torch
import torch.nn.functional as F

from evospec_hf.ops.verify_head import VerifyHead, columns_linear, columns_verify_head
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
    with columns_verify_head(model) as tuned:
        assert isinstance(tuned, VerifyHead) and "forward" in vars(head)
        hidden = torch.randn(1, 4, 32)
        torch.testing.assert_close(head(hidden), F.linear(hidden, head.weight), rtol=0, atol=1e-5)
    assert "forward" not in vars(head)
    with columns_verify_head(model) as again:  # what was measured stays with the model
        assert again is tuned


def test_leaves_other_heads_alone():
    model = tiny_gpt2(seed=0)
    model.lm_head = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(32, 96, bias=False))
    with columns_verify_head(model) as tuned:  # a parametrized head is not a plain nn.Linear
        assert tuned is None


def test_times_both_then_keeps_the_faster(monkeypatch):
    tuned = VerifyHead(trials=2)
    calls = []

    def slow_linear(x, weight, bias=None):
        calls.append("linear")
        clock[0] += 5.0  # "takes" 5 s on the fake clock
        return F.linear(x, weight, bias)

    def fast_columns(x, weight, bias=None):
        calls.append("columns")
        clock[0] += 1.0
        return columns_linear(x, weight, bias)

    clock = [0.0]
    monkeypatch.setattr("evospec_hf.ops.verify_head.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr(VerifyHead, "IMPLEMENTATIONS", (slow_linear, fast_columns))
    weight, x = torch.randn(96, 32), torch.randn(1, 3, 32)
    for _ in range(6):
        torch.testing.assert_close(tuned(x, weight), F.linear(x, weight), rtol=0, atol=1e-5)
    assert calls == ["linear", "columns", "linear", "columns", "columns", "columns"]
    assert tuned.describe() == {3: "W @ H.T"}
    tuned(torch.randn(1, 1, 32), weight)  # one row: plain F.linear, nothing timed
    assert 1 not in tuned.times and len(calls) == 6
