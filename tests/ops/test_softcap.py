import math

import pytest
import torch

from evospec_hf.ops.softcap import LogitTransform, logit_transform, softcap

from ..conftest import tiny_gemma3, tiny_gpt2, tiny_llama


def test_softcap_is_cap_times_tanh_of_logits_over_cap():
    logits = torch.tensor([[-1000.0, -45.0, -30.0, -0.5, 0.0, 0.25, 7.0, 30.0, 60.0, 1000.0]], dtype=torch.float64)
    got = softcap(logits, 30.0)
    assert got.tolist()[0] == pytest.approx([30.0 * math.tanh(x / 30.0) for x in logits[0].tolist()], abs=1e-12)
    assert got[0, 7].item() == pytest.approx(22.847824678672946)  # 30 tanh(1), by hand
    assert got.abs().max() <= 30.0 and got[0, 4].item() == 0.0


def test_small_logits_pass_almost_unchanged_and_order_is_kept():
    logits = torch.linspace(-3.0, 3.0, 61)
    got = softcap(logits, 50.0)
    assert torch.all(got[1:] > got[:-1])  # strictly increasing: the argmax never changes
    # tanh(x) = x - x^3 / 3 + ...: within 3 / 50 of the cap the logits shrink by x^3 / (3 cap^2) at most
    assert (logits - got).abs().max() <= 3.0**3 / (3 * 50.0**2) + 1e-6


def test_no_cap_returns_the_logits_themselves():
    logits = torch.randn(2, 5)
    assert softcap(logits, None) is logits  # not even copied


def test_logit_transform_reads_the_architectures_final_logit_softcapping():
    assert logit_transform(tiny_gemma3(seed=0)) == LogitTransform(cap=30.0)  # the tiny Gemma 3's config sets 30
    assert logit_transform(tiny_llama(seed=0)) is None
    assert logit_transform(tiny_gpt2(seed=0)) is None
