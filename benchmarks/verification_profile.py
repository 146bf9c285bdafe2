"""Where a verification round's time goes: the target's forward over k + 1 positions, body and LM head apart.

    python benchmarks/verification_profile.py --target gemma-3-270m

For k + 1 = 1 (plain greedy's step) to 11 positions after a 150-token context, it times the target's decoder body
alone, and the whole forward with the LM head as `F.linear` (as transformers runs it) and as `W @ H.T`. During
verification evospec_hf runs whichever of the two is faster for that many rows (`VerifyHead`,
`EvoSpecConfig.fast_verify_head`). The last two columns are what a feature drafter (EAGLE-style) adds: the forward
returning the last hidden state it reads (`output_hidden_states=[-1]`), and every layer's. Medians of 7 runs, each on
a fresh copy of the context's KV cache.
"""

import argparse
import contextlib
import copy
import statistics
import time

import torch

import evospec_hf
from evospec_hf.ops.verify_head import columns_linear


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="gemma-3-270m")
    parser.add_argument("--context", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    target, _ = evospec_hf.load_target(args.target)
    ids = torch.randint(100, 5000, (1, args.context + 11), generator=torch.Generator().manual_seed(0))
    cache = target(input_ids=ids[:, : args.context], use_cache=True).past_key_values

    def median_ms(call) -> float:
        times = []
        for _ in range(args.repeats):
            fresh = copy.deepcopy(cache)
            start = time.perf_counter()
            call(fresh)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    print(f"{args.target}, context {args.context}, {torch.get_num_threads()} threads")
    print(
        "| positions | body ms | forward, F.linear head ms | forward, W @ H.T head ms | + last hidden state ms "
        "| + all hidden states ms |\n|---:|---:|---:|---:|---:|---:|"
    )
    head = target.get_output_embeddings()
    for positions in (1, 2, 3, 4, 5, 7, 11):
        x = ids[:, args.context : args.context + positions]
        body = median_ms(lambda c: target.model(input_ids=x, past_key_values=c, use_cache=True))
        forward = {}
        for fast in (False, True):
            with _head_forward(head, columns_linear) if fast else contextlib.nullcontext():
                forward[fast] = median_ms(
                    lambda c: target(input_ids=x, past_key_values=c, use_cache=True, logits_to_keep=positions)
                )
        last, every = (
            median_ms(
                lambda c: target(input_ids=x, past_key_values=c, use_cache=True, logits_to_keep=positions,
                                 output_hidden_states=which)  # fmt: skip
            )
            for which in ([-1], True)
        )
        print(
            f"| {positions} | {body:.1f} | {forward[False]:.1f} | {forward[True]:.1f} | {last:.1f} | {every:.1f} |",
            flush=True,
        )


@contextlib.contextmanager
def _head_forward(head, linear):
    head.forward = lambda x: linear(x, head.weight, head.bias)
    try:
        yield
    finally:
        del head.forward


if __name__ == "__main__":
    main()
