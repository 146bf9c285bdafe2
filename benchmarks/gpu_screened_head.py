"""Benchmark (CUDA): the target's head screened in int8 by the Triton kernel against the full fp32/bf16 head.

Greedy verification needs only each position's argmax over the target's full vocabulary. The screen reads the int8
copy of the head (a quarter of the fp32 bytes), keeps the blocks of 64 rows whose upper bound reaches the floor,
and computes only those rows exactly (`ops.triton_screened_head`). This times, for the positions of one
verification (1 to 17 rows):

- `full32` / `full16`: the whole head in fp32 / bf16, then the argmax (what verification runs without the screen);
- `screen`: the kernel, the floor, the kept blocks computed exactly, then the argmax;
- `kept`: how many rows were computed exactly, and whether every argmax equals the full fp32 head's.

The hidden states are the target's own when `--model` names a converted target folder (a real head's logits have
a clear winner, which is what lets the screen drop blocks); random otherwise (a poor case: near ties everywhere).

    python benchmarks/gpu_screened_head.py --model /tmp/gemma-3-270m --chunks gemma-3-270m-chunks.pt \
        --out results/gpu/screened_head.json
"""

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

from evospec_hf.ops.screened_head import Int8Head
from evospec_hf.ops.triton_screened_head import triton_screened_logits

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a smoke run (TRITON_INTERPRET=1)


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"


def bench(fn) -> float:
    if DEVICE.type == "cuda":
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def real_head(folder: str, chunks: str, positions: int):
    """The head of the converted target in `folder`, and its last hidden states over held-out text: the first
    positions of `chunks`' held-out chunks (a file of `distill_drafter.py --export-chunks`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(DEVICE).eval()
    heldout = torch.load(chunks)["heldout"]
    states = []
    with torch.no_grad():
        for _kind, chunk in heldout[:: max(1, len(heldout) // 8)][:8]:  # one chunk of each kind or so
            ids = chunk[:64].long().view(1, -1).to(DEVICE)
            states.append(model(ids, output_hidden_states=True).hidden_states[-1][0, 16:])  # past a short prefix
    head = model.get_output_embeddings()
    h = torch.cat(states)
    h = h[torch.randperm(h.shape[0], generator=torch.Generator().manual_seed(0))[:positions].to(DEVICE)].contiguous()
    return head.weight.detach().float().contiguous(), None if head.bias is None else head.bias.detach().float(), h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a converted target folder (its head and hidden states); random if omitted")
    parser.add_argument("--chunks", help="with --model: a chunk file whose held-out chunks are the text")
    parser.add_argument("--vocab", type=int, default=262_144, help="rows of the random head")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()

    most = 17
    if args.model:
        weight, bias, h_all = real_head(args.model, args.chunks, most)
    else:
        g = torch.Generator().manual_seed(0)
        weight = (torch.randn(args.vocab, 640, generator=g) * 0.05).to(DEVICE)
        bias, h_all = None, (torch.randn(most, 640, generator=g) * 3).to(DEVICE)
    head = Int8Head.pack(weight.cpu(), None if bias is None else bias.cpu())
    if head is None:
        raise SystemExit("no exact int8 product on this machine's CPU (the bound's factors are made there)")
    scale = head.scales
    q = torch.round(weight.cpu() / scale[:, None]).clamp(-127, 127).to(torch.int8).to(DEVICE)
    factors = [t.to(DEVICE) for t in (scale, head.weight_error, head.weight_norm)]
    margin = None if head.bias_margin is None else head.bias_margin.to(DEVICE)
    weight16 = weight.to(torch.bfloat16)
    rows = []
    print(f"{device_name()}; |V|={weight.shape[0]:,} d={weight.shape[1]}; median ms")
    print(f"{'P':>3} {'full32':>8} {'full16':>8} {'screen':>8} {'kept':>8} argmax")
    for positions in (1, 2, 4, 8, 17):
        h = h_all[:positions].contiguous()
        truth = F.linear(h, weight, bias).argmax(dim=1)
        logits, kept = triton_screened_logits(h, q, *factors, weight, bias, margin)
        same = bool(torch.equal(logits.argmax(dim=1), truth))
        full32 = bench(lambda: F.linear(h, weight, bias).argmax(dim=1))
        full16 = bench(lambda: F.linear(h.to(torch.bfloat16), weight16).argmax(dim=1))
        screen = bench(lambda: triton_screened_logits(h, q, *factors, weight, bias, margin)[0].argmax(dim=1))
        rows.append({"positions": positions, "full32_ms": full32, "full16_ms": full16, "screen_ms": screen, "kept": kept,
                         "argmax_equal": same})  # fmt: skip
        print(f"{positions:>3} {full32:8.4f} {full16:8.4f} {screen:8.4f} {kept:>8,} {same}")
    if args.out:
        meta = {"device": device_name(), "torch": torch.__version__, "triton": triton.__version__,
                    "python": platform.python_version(), "model": args.model or "random", "vocab": weight.shape[0],
                    "hidden": weight.shape[1]}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
