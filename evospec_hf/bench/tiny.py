"""Tiny seeded models of several architectures, built from configs (nothing downloaded), for the measurements in
`benchmarks/` that need many architectures and dtypes: `build(arch, dtype)` and `noisy_copy(model, seed)`."""

from __future__ import annotations

import copy

import torch
import transformers

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VOCAB, HIDDEN, LAYERS = 1024, 128, 2
COMMON = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def configs() -> dict:
    """Tiny configs of each architecture: hidden 128, 2 layers, 4 heads (2 KV heads where grouped), vocab 1024; and
    one Llama at Gemma-3-270M's widths."""
    t = transformers
    llama_like = {
        "hidden_size": HIDDEN, "intermediate_size": 256, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "num_key_value_heads": 2, **COMMON,
    }  # fmt: skip
    return {
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(**llama_like)),
        "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(**llama_like)),
        "qwen3": (t.Qwen3ForCausalLM, t.Qwen3Config(head_dim=32, **llama_like)),
        # sliding windows shorter than the sequences, so that windowed attention is exercised
        "mistral": (t.MistralForCausalLM, t.MistralConfig(sliding_window=24, **llama_like)),
        "gemma3": (
            t.Gemma3ForCausalLM,
            t.Gemma3TextConfig(
                head_dim=32,
                sliding_window=24,
                layer_types=["sliding_attention", "full_attention"],
                final_logit_softcapping=30.0,
                **llama_like,
            ),
        ),
        "phi3": (t.Phi3ForCausalLM, t.Phi3Config(**llama_like)),
        "gpt_neox": (
            t.GPTNeoXForCausalLM,
            t.GPTNeoXConfig(
                hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=LAYERS, num_attention_heads=4, **COMMON
            ),
        ),
        "opt": (
            t.OPTForCausalLM,
            t.OPTConfig(
                hidden_size=HIDDEN,
                ffn_dim=256,
                num_hidden_layers=LAYERS,
                num_attention_heads=4,
                word_embed_proj_dim=HIDDEN,
                max_position_embeddings=256,
                **COMMON,
            ),
        ),
        "gpt2": (t.GPT2LMHeadModel, t.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256, **COMMON)),
        # Gemma-3-270M's widths (hidden 640, MLP 2048): CPU bf16 matmuls over 2,048 inputs round differently for
        # one row and for several, which narrower models do not show
        "llama-wide": (
            t.LlamaForCausalLM,
            t.LlamaConfig(
                hidden_size=640,
                intermediate_size=2048,
                num_hidden_layers=LAYERS,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=160,
                **COMMON,
            ),
        ),
    }


def build(arch: str, dtype: torch.dtype, seed: int = 0):
    model_class, config = configs()[arch]
    torch.manual_seed(seed)
    model = model_class(copy.deepcopy(config)).eval().to(dtype)
    model.generation_config.eos_token_id = None  # every run decodes all its new tokens
    model.generation_config.pad_token_id = 0
    return model


def noisy_copy(model, seed: int, scale: float = 0.02):
    """The target's weights plus noise (as tests/conftest.py's `noisy_copy`): a drafter that mostly agrees. Integer
    parameters stay as they are; a one-element parameter's noise scales with its value (it has no spread)."""
    drafter = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in drafter.parameters():
            if not p.is_floating_point():
                continue
            spread = p.float().std() if p.numel() > 1 else p.float().abs().max()
            noise = torch.randn(p.shape) * scale * spread.clamp(min=1e-3)
            p.add_(noise.to(p.dtype))
    return drafter
