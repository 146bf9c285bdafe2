"""Times the target's LM head over the k + 1 verified positions: `F.linear(H, W)` against `W @ H.T`.

    python scripts/bench_verify_head.py            # Gemma-3-270M's shape: V = 262,144, d = 640
    python scripts/bench_verify_head.py --vocab 49152 --hidden 576   # SmolLM2-135M

One row is what plain greedy computes per token; more rows are what a verification computes.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from evospec_hf.ops.verify_head import columns_linear


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--rows", default="1,2,3,5,7")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden) * 0.02
    print(f"V={args.vocab}, d={args.hidden}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| rows | F.linear ms | W @ H.T ms | speed-up | max abs difference |\n|---:|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        hidden = torch.randn(rows, args.hidden)
        linear = timed(lambda: F.linear(hidden, weight), args.repeats)
        columns = timed(lambda: columns_linear(hidden, weight), args.repeats)
        diff = (F.linear(hidden, weight) - columns_linear(hidden, weight)).abs().max().item()
        print(f"| {rows} | {linear:.1f} | {columns:.1f} | {linear / columns:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
