"""Runnable in seconds with no download: evospec_hf's one-line generate on tiny models built from configs.

    python examples/tiny_generate.py

The target is a random 4-layer Llama; the drafter is a noisy copy of it (a stand-in for a distilled drafter).
Both entry points are shown, and each output is checked against plain greedy decoding.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, eos_token_id=2, bos_token_id=1, pad_token_id=0,
)  # fmt: skip
target = LlamaForCausalLM(config).eval()
drafter = LlamaForCausalLM(config).eval()
drafter.load_state_dict(target.state_dict())
with torch.no_grad():
    for p in drafter.parameters():
        p.add_(0.02 * p.std() * torch.randn_like(p))

input_ids = torch.randint(3, config.vocab_size, (1, 24))
plain = target.generate(input_ids, max_new_tokens=64, do_sample=False)

# 1. the one-line drop-in (after `import evospec_hf`)
stats = DraftStats()
out = target.generate(
    input_ids, max_new_tokens=64, do_sample=False, assistant_model=drafter,
    evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=512), evospec_stats=stats,
)  # fmt: skip
print(f"evospec_config=:   identical to plain greedy: {torch.equal(out, plain)}; "
      f"mean accepted length {stats.mean_accepted_length:.2f} over {stats.rounds} rounds")

# 2. transformers' own custom_generate hook (works even after evospec_hf.uninstall())
out = target.generate(
    input_ids, max_new_tokens=64, do_sample=False,
    custom_generate=evospec_hf.custom_generate, drafter=drafter,
    evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=512),
)  # fmt: skip
print(f"custom_generate=:  identical to plain greedy: {torch.equal(out, plain)}")
