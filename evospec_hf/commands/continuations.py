"""Writes a target's own greedy continuations of mixture prompts (self-distillation data for drafters).

    evospec-hf continuations --target gemma-3-270m --out cont/ --per-kind 200 \
        --prompt-tokens 64 --max-new-tokens 128 --batch-size 8

Prompts come from the 'train' split of every kind of `evospec_hf.data.mixture`. Rows go to
`cont/continuations.jsonl` batch by batch; running the same command again resumes (ids already written are
skipped). Before writing, a few prompts are generated both batched and alone, and the run stops if they differ
(left padding must not change greedy output). Read the rows with `evospec_hf.data.load_continuations(dir)`.

    evospec-hf continuations --target gemma-3-270m --measure-batch-sizes 1 4 8 16

times one batch per size (new tokens per second) and writes nothing.
"""

import argparse
import sys
import time

import torch

from evospec_hf.data.continuations import (
    ContinuationConfig,
    check_batching,
    greedy_continuations,
    select_prompts,
    write_continuations,
)
from evospec_hf.data.mixture import KINDS


def measure(model, tokenizer, prompts, batch_sizes, max_new_tokens):
    """New tokens per second for one batch of each size, after one untimed warm-up batch."""
    greedy_continuations(model, tokenizer, [p.input_ids for p in prompts[:2]], 4)
    for size in batch_sizes:
        batch = [p.input_ids for p in prompts[:size]]
        began = time.perf_counter()
        out = greedy_continuations(model, tokenizer, batch, max_new_tokens)
        seconds = time.perf_counter() - began
        tokens = sum(len(ids) for ids in out)
        print(
            f"batch {size:3d}: {tokens:5d} new tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tokens/s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf continuations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="gemma-3-270m", help="a known target name, or a local model folder")
    parser.add_argument("--out", help="folder for continuations.jsonl and meta.json")
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--split", default="train", choices=["train", "heldout"], help="heldout: for evaluation only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check-prompts", type=int, default=4, help="prompts generated batched and alone first (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--measure-batch-sizes", type=int, nargs="+", default=None, help="time these and exit")
    args = parser.parse_args(argv)
    if args.measure_batch_sizes is None and not args.out:
        parser.error("--out is required unless --measure-batch-sizes is given")
    if args.threads:
        torch.set_num_threads(args.threads)

    from evospec_hf import load_target

    config = ContinuationConfig(
        target=args.target, per_kind=args.per_kind, prompt_tokens=args.prompt_tokens,
        max_new_tokens=args.max_new_tokens, split=args.split, seed=args.seed, kinds=tuple(args.kinds),
    )  # fmt: skip
    model, tokenizer = load_target(args.target)
    prompts = select_prompts(tokenizer, config)
    print(f"{len(prompts)} prompts from {len(config.kinds)} kinds ({config.split} split)", flush=True)

    if args.measure_batch_sizes:
        # plain-text prompts of the full length, so every size is timed on the same shape
        full = [p for p in prompts if len(p.input_ids) == config.prompt_tokens]
        measure(model, tokenizer, full, args.measure_batch_sizes, config.max_new_tokens)
        return

    if args.check_prompts > 1:
        # prompts of different lengths, so that the check exercises left padding
        by_length = sorted(prompts, key=lambda p: len(p.input_ids))
        step = max(1, len(by_length) // args.check_prompts)
        sample = [p.input_ids for p in by_length[::step][: args.check_prompts]]
        differences = check_batching(model, tokenizer, sample, config.max_new_tokens)
        if differences:
            for d in differences:
                print(
                    f"prompt {d['index']}: batched and alone differ from new token {d['first_difference']}",
                    file=sys.stderr,
                )
            sys.exit("batched greedy output differs from unbatched: not writing continuations")
        print(f"batching check: {len(sample)} prompts, batched == unbatched", flush=True)

    stats = write_continuations(model, tokenizer, config, args.out, batch_size=args.batch_size, prompts=prompts)
    rate = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    print(f"{args.out}: {stats['written']} written, {stats['skipped']} already there; "
          f"{stats['new_tokens']} new tokens at {rate:.1f} tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
