"""Architectures evospec_hf cannot run exactly are refused before any forward pass, by name and with the reason."""

import pytest
import torch

import evospec_hf
from evospec_hf import EvoSpecConfig

from ..conftest import tiny_cohere, tiny_from_config, tiny_inkling, tiny_llama

PROMPT = torch.tensor([[4, 5, 6, 7]])


def tiny(config_name: str, model_name: str, **fields):
    import transformers

    return tiny_from_config(getattr(transformers, config_name), getattr(transformers, model_name), 0, **fields)


BERT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

# (model_type, builder, what the message must say): one architecture per reason
REFUSED = [
    ("t5", lambda: tiny("T5Config", "T5ForConditionalGeneration", d_model=32, d_ff=64, num_layers=2, num_heads=4,
                        d_kv=8, decoder_start_token_id=0), "encoder-decoder"),
    ("cpmant", lambda: tiny("CpmAntConfig", "CpmAntForCausalLM", hidden_size=32, dim_ff=64, num_hidden_layers=2,
                            num_attention_heads=4, dim_head=8, prompt_length=4), "re-reads its whole sequence"),
    ("bert", lambda: tiny("BertConfig", "BertLMHeadModel", **BERT), "is_decoder=False"),
    ("mamba", lambda: tiny("MambaConfig", "MambaForCausalLM", hidden_size=32, state_size=8, num_hidden_layers=2),
     "running state"),
    ("openai-gpt", lambda: tiny("OpenAIGPTConfig", "OpenAIGPTLMHeadModel", n_embd=32, n_layer=2, n_head=4),
     "takes no past_key_values"),
    ("minimax", lambda: tiny("MiniMaxConfig", "MiniMaxForCausalLM", hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             num_local_experts=2, layer_types=["full_attention"] * 2), "its own kind of cache"),
    ("electra", lambda: tiny("ElectraConfig", "ElectraForCausalLM", embedding_size=16, is_decoder=True, **BERT),
     "weights outside its decoder and LM head (generator_predictions"),
    ("cohere", lambda: tiny_cohere(0, logit_scale=-0.5), "logit scale (multiplier -0.5) is not positive"),
    ("inkling_text", lambda: tiny_inkling(0, unpadded_vocab_size=40), "keep only the first 40 of its LM head's"),
    ("prophetnet", lambda: tiny("ProphetNetConfig", "ProphetNetForCausalLM", hidden_size=32, encoder_ffn_dim=64,
                                decoder_ffn_dim=64, num_encoder_layers=1, num_decoder_layers=1,
                                num_encoder_attention_heads=4, num_decoder_attention_heads=4, ngram=2),
     "n-gram predicting stream"),
    ("musicgen_decoder", lambda: tiny("MusicgenDecoderConfig", "MusicgenForCausalLM", hidden_size=32, ffn_dim=64,
                                      num_hidden_layers=1, num_attention_heads=4, num_codebooks=1),
     "own generate() (MusicgenForCausalLM.generate)"),
]  # fmt: skip


class ForwardCount:
    def __init__(self, *models):
        self.calls = 0
        self.handles = [model.register_forward_pre_hook(self.seen) for model in models]

    def seen(self, module, args):
        self.calls += 1


@pytest.mark.parametrize("model_type, build, reason", REFUSED, ids=[f"{t}-{r.split()[0]}" for t, _, r in REFUSED])
def test_refused_by_name_before_any_forward(model_type, build, reason):
    model = build().eval()
    assert model.config.model_type == model_type
    count = ForwardCount(model)
    inputs = dict(input_ids=PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=3)
    for path in (dict(assistant_model=model), dict(custom_generate=evospec_hf.custom_generate, drafter=model)):
        with pytest.raises(ValueError, match=rf"evospec_hf cannot use {model_type} \(") as refusal:
            model.generate(**inputs, evospec_config=EvoSpecConfig(), **path)
        assert reason in str(refusal.value)
    with pytest.raises(ValueError, match=rf"evospec_hf cannot use {model_type} \("):  # a batch takes its own loop
        batch = PROMPT.repeat(2, 1)
        model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=3, assistant_model=model,
                       evospec_config=EvoSpecConfig())  # fmt: skip
    assert count.calls == 0


def test_a_refused_drafter_is_named_as_the_drafter():
    target, drafter = tiny_llama(seed=0), tiny("BertConfig", "BertLMHeadModel", is_decoder=True, **BERT).eval()
    count = ForwardCount(target, drafter)
    with pytest.raises(ValueError, match=r"cannot use bert \(BertLMHeadModel\) as the drafter: its logits also"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=EvoSpecConfig())
    assert count.calls == 0


def test_a_drafter_with_non_finite_logits_is_named():
    """A drafter whose weights hold a NaN: a clear error, not a failed tolerance computation."""
    target, drafter = tiny_llama(seed=0), tiny_llama(seed=1)
    with torch.no_grad():
        drafter.model.norm.weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"the drafter llama \(LlamaForCausalLM\) gives non-finite logits"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=EvoSpecConfig())


def test_is_decoder_false_is_refused_only_where_the_decoder_reads_it():
    """GPT-NeoX's config has `is_decoder=False` by default, but its decoder is causal whatever the flag says."""
    from evospec_hf.generation.support import unsupported_reason

    from ..conftest import more_architectures

    gpt_neox = more_architectures()["gpt-neox"](0)
    assert gpt_neox.config.is_decoder is False and unsupported_reason(gpt_neox) is None
    assert "is_decoder=False" in unsupported_reason(tiny("BertConfig", "BertLMHeadModel", **BERT))


def test_use_cache_false_is_refused_by_name_and_use_cache_true_runs_exactly():
    """MPT's config says use_cache=False; speculative decoding needs the KV cache. transformers' own message names
    neither the model nor the reason; evospec_hf's does, before any forward, on both entry points."""
    model = tiny("MptConfig", "MptForCausalLM", d_model=32, n_heads=4, n_layers=2, expansion_ratio=2).eval()
    assert model.generation_config.use_cache is False
    count = ForwardCount(model)
    inputs = dict(input_ids=PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=6, do_sample=False)
    for path in (dict(assistant_model=model), dict(custom_generate=evospec_hf.custom_generate, drafter=model)):
        with pytest.raises(ValueError, match=r"cannot run mpt \(MptForCausalLM\) with use_cache=False"):
            model.generate(**inputs, evospec_config=EvoSpecConfig(), **path)
    assert count.calls == 0
    expected = model.generate(**inputs, use_cache=True)
    got = model.generate(**inputs, use_cache=True, assistant_model=model, evospec_config=EvoSpecConfig())
    assert torch.equal(got, expected)
