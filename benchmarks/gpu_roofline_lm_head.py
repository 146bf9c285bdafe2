"""Benchmark (CUDA): the drafter's shortlist LM head against the GPU's memory-bandwidth roofline.

One draft step reads `N` rows of the `(V, D)` head for one position (or a few). That is a matrix-vector product:
about 2 FLOPs per weight byte read at bf16, far below what the tensor cores need, so its floor is the time to read
`N * D * bytes` (plus the ids and the logits) at the card's bandwidth. The bandwidth is measured here, with a
device-to-device copy (bytes read + written), not taken from a data sheet.

Rows timed for each shortlist size `N`, each with `triton.testing.do_bench` (L2 flushed between runs, so a shortlist
smaller than the L2 cache is still read from HBM):

- `triton`: the kernel that reads the shortlisted rows in place (`ops.triton_sparse_lm_head`);
- `packed`: a contiguous copy of the shortlist's rows times the hidden state (what `Shortlist` does on the torch
  backend; the copy is made between rounds, not per step);
- `gather`: indexing the full matrix at every step, then the product (the naive way);
- `full`: the whole head, for reference (`N = V`).

    python benchmarks/gpu_roofline_lm_head.py --out results/gpu/roofline.json
"""

import argparse
import json
import platform

import torch
import triton
import triton.testing

from evospec_hf.ops.triton_sparse_lm_head import triton_sparse_lm_head


def measured_bandwidth(gib: float = 2.0) -> float:
    """Bytes per second of a device-to-device copy, counting the bytes read and written."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * n * 4 / (ms * 1e-3)


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")  # ms, L2 flushed between runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=262_144)
    parser.add_argument("--hidden-size", type=int, default=640)
    parser.add_argument("--sizes", default="4096,8192,16384,32768,65536")
    parser.add_argument("--positions", default="1,4", help="rows of hidden states per call (1: one draft step)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--out", default=None, help="write every figure here as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")

    bandwidth = measured_bandwidth()
    device_name = torch.cuda.get_device_name()
    print(f"{device_name}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + written); torch {torch.__version__}, "
          f"triton {triton.__version__}")  # fmt: skip
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        element = torch.finfo(dtype).bits // 8
        weight = (torch.randn(args.vocab_size, args.hidden_size, device="cuda", generator=gen) * 0.02).to(dtype)
        for positions in map(int, args.positions.split(",")):
            hidden = torch.randn(positions, args.hidden_size, device="cuda", generator=gen).to(dtype)
            full_ms = bench(lambda: torch.nn.functional.linear(hidden, weight))
            for size in map(int, args.sizes.split(",")):
                ids = torch.randperm(args.vocab_size, device="cuda", generator=gen)[:size].sort().values
                packed = weight[ids].contiguous()
                reference = torch.nn.functional.linear(hidden.float(), packed.float())
                got = triton_sparse_lm_head(hidden, weight, ids)
                error = (got - reference).abs().max().item()
                bytes_read = size * args.hidden_size * element + size * 8 + positions * size * 4
                floor_ms = bytes_read / bandwidth * 1e3
                timings = {
                    "triton": bench(lambda: triton_sparse_lm_head(hidden, weight, ids)),
                    "packed": bench(lambda: torch.nn.functional.linear(hidden, packed)),
                    "gather": bench(lambda: torch.nn.functional.linear(hidden, weight[ids])),
                }
                row = dict(
                    dtype=dtype_name, positions=positions, shortlist=size, bytes=bytes_read, roofline_ms=floor_ms,
                    full_ms=full_ms, max_abs_error=error, **{f"{k}_ms": v for k, v in timings.items()},
                )  # fmt: skip
                rows.append(row)
        del weight

    print(f"\n|V|={args.vocab_size:,} d={args.hidden_size}; median ms (L2 flushed); 'of roofline' = floor / time")
    header = f"{'dtype':<9}{'M':>3}{'N':>8}{'floor':>9}{'triton':>9}{'of roof':>9}"
    header += f"{'packed':>9}{'gather':>9}{'full':>9}"
    print(header + f"{'err':>10}")
    for r in rows:
        print(
            f"{r['dtype']:<9}{r['positions']:>3}{r['shortlist']:>8}{r['roofline_ms']:>9.4f}{r['triton_ms']:>9.4f}"
            f"{r['roofline_ms'] / r['triton_ms']:>8.0%} {r['packed_ms']:>9.4f}{r['gather_ms']:>9.4f}"
            f"{r['full_ms']:>9.4f}{r['max_abs_error']:>10.1e}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                dict(device=device_name, bandwidth_bytes_per_s=bandwidth, torch=torch.__version__,
                     triton=triton.__version__, python=platform.python_version(), rows=rows),
                f, indent=1,
            )  # fmt: skip


if __name__ == "__main__":
    main()
