"""Benchmark: what `assistant_model.generate()` costs per drafting round, and what evospec_hf's loop saves.

transformers' `AssistedCandidateGenerator` calls the drafter's `generate()` every round. evospec_hf drafts with a
bare loop over the drafter body and keeps its KV cache. Both run here inside real `generate` calls on the same
target and drafter, over the full vocabulary (shortlist='full', so only the loop differs), with a constant draft
length and a drafter identical to the target so that every round drafts and accepts the same tokens. The time
spent in `get_candidates` is accumulated per round.

    python scripts/bench_draft_loop.py
"""

import argparse
import copy
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.candidate_generator import AssistedCandidateGenerator

from evospec_hf import DraftStats, EvoSpecCandidateGenerator, EvoSpecConfig


def instrument(cls, log):
    original = cls.get_candidates

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        log.append((time.perf_counter() - start) * 1e3)
        return out

    cls.get_candidates = timed
    return original


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=32_000)
    parser.add_argument("--draft-len", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.hidden_size * 2,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4, eos_token_id=None,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    drafter = copy.deepcopy(model)
    drafter.generation_config.num_assistant_tokens = args.draft_len
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    # 0.0 disables transformers' confidence stop (None would be refilled with its default, 0.4)
    drafter.generation_config.assistant_confidence_threshold = 0.0
    prompt = torch.randint(0, args.vocab_size, (1, 32))
    evo_config = EvoSpecConfig(shortlist="full", num_draft_tokens=args.draft_len, draft_schedule="constant")
    common = dict(max_new_tokens=args.new_tokens, do_sample=False, assistant_model=drafter, pad_token_id=0)

    hf_log, evo_log, hf_wall, evo_wall, plain_wall = [], [], [], [], []
    instrument(AssistedCandidateGenerator, hf_log)
    instrument(EvoSpecCandidateGenerator, evo_log)
    stats = DraftStats()
    for _ in range(args.repeats):  # interleaved, so drift affects both alike
        start = time.perf_counter()
        reference = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        plain_wall.append(time.perf_counter() - start)
        start = time.perf_counter()
        hf_out = model.generate(prompt, **common)
        hf_wall.append(time.perf_counter() - start)
        start = time.perf_counter()
        evo_out = model.generate(prompt, evospec_config=evo_config, evospec_stats=stats, **common)
        evo_wall.append(time.perf_counter() - start)
        assert torch.equal(hf_out, reference) and torch.equal(evo_out, reference)

    hf_stats = len(hf_log) / args.repeats
    hf_round, evo_round = statistics.median(hf_log[1:]), statistics.median(evo_log[1:])  # [0]: prefill round
    print(
        f"drafter: Llama {args.layers} layers, hidden {args.hidden_size}, vocab {args.vocab_size:,}; "
        f"{args.draft_len} tokens per round, {args.new_tokens} new tokens, {torch.get_num_threads()} threads, "
        f"rounds per call: HF {hf_stats:.0f}, evospec {stats.rounds / args.repeats:.0f}"
    )
    print(f"{'':<40}{'HF generate()':>14}{'evospec loop':>14}")
    print(f"{'drafting, ms per round (median)':<40}{hf_round:>14.2f}{evo_round:>14.2f}")
    print(f"{'drafting, ms per drafted token':<40}{hf_round / args.draft_len:>14.2f}{evo_round / args.draft_len:>14.2f}")
    print(f"{'whole generate, s (median)':<40}{statistics.median(hf_wall):>14.3f}{statistics.median(evo_wall):>14.3f}")
    print(f"plain greedy generate: {statistics.median(plain_wall):.3f} s")
    print(f"per-round overhead removed: {hf_round - evo_round:.2f} ms ({(hf_round - evo_round) / hf_round:.0%} of HF's round)")


if __name__ == "__main__":
    main()
