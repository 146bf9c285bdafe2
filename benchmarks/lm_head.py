"""Benchmark: drafter LM-head time per draft step, full vocabulary vs shortlist.

Gemma-3-270M's shape by default (|V| = 262,144, d = 640, fp32). For each method it times one draft step: the head
for one position, plus the argmax that picks the draft token. The shortlist rows also pay, once per round of
`--draft-len` steps, for the context tokens that enter the shortlist (`--new-per-round` new ids, as the
'static+context' mode sees after each verification). 'gather per step' is the naive shortlist head that indexes the
full matrix at every step, for comparison.

    python benchmarks/lm_head.py            # CPU, torch path
    python benchmarks/lm_head.py --device cuda   # adds the Triton kernel
"""

import argparse
import statistics
import time

import torch

from evospec_hf.ops import sparse_lm_head_reference
from evospec_hf.ops.verify_head import columns_linear
from evospec_hf.vocab import Shortlist


def timed(fn, repeats: int, warmup: int = 3, sync=lambda: None) -> float:
    """Median milliseconds of `fn()` over `repeats` runs."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=262_144)
    parser.add_argument("--hidden-size", type=int, default=640)
    parser.add_argument("--shortlist-size", type=int, default=16_384)
    parser.add_argument("--context-slots", type=int, default=2_048)
    parser.add_argument("--draft-len", type=int, default=6, help="draft steps per round")
    parser.add_argument("--new-per-round", type=int, default=4, help="new context tokens entering per round")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(args.vocab_size, args.hidden_size, generator=gen) * 0.02).to(device, dtype)
    hidden = torch.randn(1, args.hidden_size, generator=gen).to(device, dtype)
    static_ids = torch.randperm(args.vocab_size, generator=gen)[: args.shortlist_size - args.context_slots]
    # context tokens arriving round after round, mostly outside the static list
    arrivals = torch.randint(0, args.vocab_size, (10_000, args.new_per_round), generator=gen)

    backends = ["torch"] + (["triton"] if device.type == "cuda" else [])
    results = {}
    results["full head"] = timed(lambda: (hidden @ weight.T).argmax(-1), args.repeats, sync=sync)
    ids_on_device = static_ids.to(device)
    results["shortlist, gather per step"] = timed(
        lambda: sparse_lm_head_reference(hidden, weight, ids_on_device).argmax(-1), args.repeats, sync=sync
    )
    for backend in backends:
        shortlist = Shortlist(weight, None, args.shortlist_size, static_ids, args.context_slots, backend=backend)
        rounds = iter(arrivals)

        def one_round():
            shortlist.observe(next(rounds))  # shortlist change between rounds (row copies for new tokens)
            for _ in range(args.draft_len):
                shortlist.token_ids[shortlist.logits(hidden).argmax(-1)]

        per_round = timed(one_round, args.repeats, sync=sync)
        results[f"shortlist ({backend}), incl. changes"] = per_round / args.draft_len
        results[f"shortlist ({backend}), step only"] = timed(
            lambda: shortlist.token_ids[shortlist.logits(hidden).argmax(-1)], args.repeats, sync=sync
        )

    # the target's verification head: k+1 positions at once. Which orientation CPU BLAS runs faster depends on the
    # machine and the row count (evospec_hf's VerifyHead times both and keeps the faster per row count)
    verify = {}
    for positions in (1, 2, 3, 4, 8, 11):  # 1: what plain greedy computes per token
        h = torch.randn(positions, args.hidden_size, generator=gen).to(device, dtype)
        verify[positions] = (
            timed(lambda: torch.nn.functional.linear(h, weight), max(5, args.repeats // 4), sync=sync),
            timed(lambda: columns_linear(h, weight), max(5, args.repeats // 4), sync=sync),
        )

    full = results["full head"]
    print(
        f"LM head per draft step: |V|={args.vocab_size:,} d={args.hidden_size} {args.dtype} on {device} "
        f"({torch.get_num_threads()} threads), shortlist {args.shortlist_size:,} "
        f"({args.context_slots:,} context slots, {args.new_per_round} new tokens per {args.draft_len}-step round)"
    )
    print(f"{'method':<36}{'ms/step':>10}{'vs full':>10}")
    for name, ms in results.items():
        print(f"{name:<36}{ms:>10.3f}{full / ms:>9.1f}x")
    print("\nfull head over k+1 positions at once (the target's verification), ms:")
    print(f"{'positions':<12}{'F.linear(h, W)':>16}{'W @ h.T':>14}  (fast_verify_head runs the faster of the two)")
    for positions, (linear_ms, transposed_ms) in verify.items():
        print(f"{positions:<12}{linear_ms:>16.1f}{transposed_ms:>14.1f}")


if __name__ == "__main__":
    main()
