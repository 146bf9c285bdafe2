"""Would an int8 LM head pay where evospec_hf computes fp32 heads? Times the candidates on this machine.

    python benchmarks/draft_head_int8.py [--hidden 640] [--repeats 30]

1. The drafter's shortlist head (one position, `--hidden` wide, 4,096 / 16,384 / 32,768 rows): fp32 `F.linear`;
   fbgemm's int8 linear on a matrix packed once, and the packing itself (paid again whenever rows change); int8
   weights with fp32 activations without packing (`torch._weight_int8pack_mm`).
2. The target's screened head (262,144 rows): the memory fbgemm's packed copy holds (RSS around packing) and the
   integer product per activation row count, packed whole (rows padded to a multiple of 512) and as the screen
   packs it (`PackedRows`: the columns past the last multiple of 512 folded several rows to one).

Random weights: the times depend on the shapes, not the values. Writes `--out`/draft_head_int8.json and prints
markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evospec_hf.ops.screened_head import PackedRows, _integer_product, _prepack

def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def quantized(rows: int, width: int, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random fp32 weights, their int8 values and per-row scales."""
    weight = torch.randn(rows, width, generator=generator) * 0.05
    scale = weight.abs().amax(dim=1) / 127
    return weight, torch.round(weight / scale[:, None]).to(torch.int8), scale


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--vocab", type=int, default=262_144)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="results/draft_head_int8")
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    report = {"threads": torch.get_num_threads(), "hidden": args.hidden, "drafter_head": {}, "target_head": {}}

    h = torch.randn(1, args.hidden, generator=g)
    for rows in (4096, 16384, 32768):
        weight, q, scale = quantized(rows, args.hidden, g)
        packed = _prepack(q)
        report["drafter_head"][rows] = {
            "fp32 F.linear": timed(lambda: F.linear(h, weight), args.repeats),
            "int8 packed": timed(lambda: torch.ops.quantized.linear_dynamic(h, packed, True), args.repeats),
            "packing": timed(lambda: _prepack(q), 5),
            "int8 unpacked": timed(lambda: torch._weight_int8pack_mm(h, q, scale), args.repeats),
        }  # fmt: skip

    _, q, _ = quantized(args.vocab, args.hidden, g)
    before = rss_mb()
    whole = _prepack(q)  # one packed matrix, each row padded to a multiple of 512
    report["target_head"]["whole_mb"] = round(rss_mb() - before)
    before = rss_mb()
    folded = PackedRows(q)  # what the screen uses: the columns past 512 folded
    report["target_head"]["folded_mb"] = round(rss_mb() - before)
    report["target_head"]["fold"] = folded.fold
    del q
    times = {}
    for count in (1, 2, 4, 8, 16):
        x = torch.randint(-63, 64, (count, args.hidden), generator=g).float()
        times[count] = {
            "whole": timed(lambda: _integer_product(x, whole), args.repeats // 2),
            "folded": timed(lambda: folded.product(x), args.repeats // 2),
        }
    report["target_head"]["product_ms"] = times

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "draft_head_int8.json").write_text(json.dumps(report, indent=1))
    print(f"{torch.get_num_threads()} threads, hidden {args.hidden}\n")
    print("| shortlist rows | fp32 ms | int8 packed ms | packing ms | int8 unpacked ms |\n|---:|---:|---:|---:|---:|")
    for rows, t in report["drafter_head"].items():
        print(f"| {rows} | {t['fp32 F.linear']:.2f} | {t['int8 packed']:.2f} | {t['packing']:.1f} | "
              f"{t['int8 unpacked']:.2f} |")  # fmt: skip
    th = report["target_head"]
    print(f"\ntarget head {args.vocab} x {args.hidden}: packed whole {th['whole_mb']} MB, "
          f"folded ({th['fold']} row tails to one) {th['folded_mb']} MB")  # fmt: skip
    print("\n| activation rows | whole ms | folded ms |\n|---:|---:|---:|")
    for count, t in times.items():
        print(f"| {count} | {t['whole']:.1f} | {t['folded']:.1f} |")


if __name__ == "__main__":
    main()
