"""The target's screened LM head on real hidden states: survivors per position, head time per row count, and plain
greedy and top-k sampling through it.

    python benchmarks/screened_head.py [--target gemma-3-270m] [--prompts benchmarks/prompts/everyday.jsonl]

For each prompt, plain greedy writes `--new-tokens` tokens; the target's final hidden states at every position of
prompt and continuation are then screened one position at a time (`evospec_hf.ops.screened_head`), keeping the
argmax (k = 1) and each `--top-k` exact, and checked against the full head (the argmax, and the rows a top-k filter
keeps). Reported: survivors per position (median, p90, p99, max, mean) with the two activation rows and with one;
the head's time per row count (full `F.linear`, `W @ H.T`, the screen for k = 1 and the largest k, each with two
activation rows and one), medians of `--repeats`; the memory the int8 copy adds (RSS before and after packing);
tokens/s of plain greedy and of top-k sampling (`top_k` the largest k, `top_p=0.95`, Gemma's published sampling
defaults), each plainly and through `evospec_hf.screened_greedy`, with the tokens checked identical (the same seed).
Writes `--out`/screened_head.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import evospec_hf
from evospec_hf.bench.prompts import load_prompts
from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.ops.screened_head import Int8Head, screened_logits
from evospec_hf.ops.verify_head import columns_linear


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def percentiles(values: list) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"median": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1],
            "mean": round(sum(values) / len(values), 1)}  # fmt: skip


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="gemma-3-270m")
    parser.add_argument("--prompts", default=str(Path(__file__).parent / "prompts" / "everyday.jsonl"))
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--top-k", default="1,20,64", help="comma-separated k to screen for (1: greedy's argmax)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="results/screened_head")
    args = parser.parse_args(argv)
    ks = sorted({int(k) for k in args.top_k.split(",")} | {1})

    model, tokenizer = evospec_hf.load_target(args.target)
    head = model.get_output_embeddings()
    weight = head.weight.detach()
    bias = None if head.bias is None else head.bias.detach()
    float(weight.sum())  # pages the head in first (a lazily loaded checkpoint would count towards the copy)
    before = rss_mb()
    int8 = Int8Head.pack(weight, bias)
    if int8 is None:
        raise SystemExit("no exact int8 product on this machine: the screen is off here")
    added = rss_mb() - before

    prompts = load_prompts(args.prompts, tokenizer)
    states = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(prompt["input_ids"], max_new_tokens=args.new_tokens, do_sample=False)
            states.append(model.model(input_ids=out).last_hidden_state[0])
    states = torch.cat(states)
    survivors = {}
    for h in states.split(1):
        full = F.linear(h, weight, bias)
        for k in ks:
            kept = full >= full.topk(k).values[:, -1:]  # what a top-k filter keeps (the argmax and its ties for 1)
            for residual in (True, False):
                logits, result = screened_logits(h, int8, weight, bias, weight.shape[0], residual=residual, top_k=k)
                if not torch.equal(logits >= logits.topk(k).values[:, -1:], kept):
                    raise SystemExit(f"the screen's top {k} differs from the full head's: please report this as a bug")
                survivors.setdefault(f"k={k}, {'two rows' if residual else 'one row'}", []).append(result.survivors[0])

    timings = {}
    for rows in (1, 2, 4, 8, 16):
        h = states[:rows]
        timings[rows] = {
            "F.linear": timed(lambda: F.linear(h, weight, bias), args.repeats),
            "W @ H.T": timed(lambda: columns_linear(h, weight, bias), args.repeats),
        }
        for k in sorted({1, ks[-1]}):
            for residual, name in ((True, "two rows"), (False, "one row")):
                run = lambda: screened_logits(h, int8, weight, bias, residual=residual, top_k=k)  # noqa: E731
                timings[rows][f"screen k={k}, {name}"] = timed(run, args.repeats)

    decoding = {}
    modes = {"greedy": {"do_sample": False}, f"top-k {ks[-1]} sampling": {"do_sample": True, "top_k": ks[-1], "top_p": 0.95}}
    for mode, kwargs in modes.items():
        seconds, tokens, identical, stats = [0.0, 0.0], 0, 0, DraftStats()
        for i, prompt in enumerate(prompts):
            outs = []
            for j, extra in enumerate(({}, {"custom_generate": evospec_hf.screened_greedy, "evospec_stats": stats})):
                torch.manual_seed(i)
                start = time.perf_counter()
                outs.append(model.generate(prompt["input_ids"], max_new_tokens=args.new_tokens, **kwargs, **extra))
                seconds[j] += time.perf_counter() - start
            tokens += outs[0].shape[1] - prompt["input_ids"].shape[1]
            identical += int(torch.equal(outs[0], outs[1]))
        decoding[mode] = {
            "plain_tok_s": round(tokens / seconds[0], 2), "screened_tok_s": round(tokens / seconds[1], 2),
            "speedup": round(seconds[0] / seconds[1], 2), "identical": f"{identical}/{len(prompts)}",
            "screened_calls": stats.screen_calls, "full_calls": stats.screen_full_calls,
            "fallbacks": stats.screen_fallbacks,
        }  # fmt: skip

    report = {
        "target": args.target, "prompts": args.prompts, "positions": states.shape[0],
        "survivors": {name: percentiles(values) for name, values in survivors.items()},
        "head_ms": timings, "decoding": decoding, "new_tokens": args.new_tokens,
        "int8_copy_mb": round(int8.nbytes / 2**20, 1), "rss_added_mb": round(added, 1),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "screened_head.json").write_text(json.dumps(report, indent=1))
    print(f"{args.target}, {states.shape[0]} positions of {args.prompts}, {torch.get_num_threads()} threads")
    print("\n| screen | median | p90 | p99 | max | mean |\n|---|---:|---:|---:|---:|---:|")
    for name, p in report["survivors"].items():
        print(f"| {name} | {p['median']} | {p['p90']} | {p['p99']} | {p['max']} | {p['mean']} |")
    names = list(timings[1])
    print("\n| positions | " + " | ".join(f"{n} ms" for n in names) + " |\n|---:" + "|---:" * len(names) + "|")
    for rows, t in timings.items():
        print(f"| {rows} | " + " | ".join(f"{t[n]:.1f}" for n in names) + " |")
    print("\n| decoding | plain tok/s | screened tok/s | speed-up | identical | screened calls | full | fallbacks |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, d in decoding.items():
        print(f"| {mode} | {d['plain_tok_s']} | {d['screened_tok_s']} | {d['speedup']}x | {d['identical']} | "
              f"{d['screened_calls']} | {d['full_calls']} | {d['fallbacks']} |")  # fmt: skip
    print(f"\nint8 copy: {report['int8_copy_mb']} MB (RSS +{report['rss_added_mb']} MB when packed)")


if __name__ == "__main__":
    main()
