"""How often speculative greedy output differs from plain greedy output in half precision, and what reduces it.

    python benchmarks/half_precision.py --out results/half_precision
    python benchmarks/half_precision.py --archs llama,gemma3 --dtypes bf16 --prompts 2   # a quick look
    python benchmarks/half_precision.py --real smollm2-135m --drafter checkpoints/smollm2-135m-drafter-l2 \
        --dtypes bf16,fp16 --prompts 5 --methods hf-assisted,evospec-full+lookup,evospec-full+lookup+per-position \
        --out results/half_precision/smollm2-135m

Greedy speculative decoding is exact in exact arithmetic: every accepted token is the target's argmax. In floating
point, the target's verification forward scores k + 1 positions at once, and a kernel over several rows can round
differently from plain greedy's one row at a time; where two logits are nearly tied, the argmax can flip, and the
outputs part from there. fp32 rounds at about 1e-7 (flips are very rare); fp16 and bf16 at 1e-3 and 1e-2.

For each architecture (built tiny from its config, seeded: nothing is downloaded) and dtype, each prompt is decoded
with plain greedy `generate`, then with every method, and the output compared token by token with plain greedy's:

- `hf-assisted`: transformers' assisted decoding (`assistant_model=`, its own defaults);
- `evospec-<shortlist>[+lookup]`: evospec_hf (`evospec_config=EvoSpecConfig(...)`);
- reductions tried, on evospec-full+lookup (experiments defined here, not part of evospec_hf): `+per-position`
  verifies with SDPA attention run one position at a time with the keys plain greedy gives that position
  (`per_position_verification`); `+fp32-head` computes the target's verification LM head in fp32 (hidden and
  weight upcast, logits returned in fp32).

Drafters: `self` (the target itself: its drafts are plain greedy's tokens, so every difference comes from
verification) and `noisy` (the target's weights plus 2% noise: partial acceptance). Outputs are `results.json`
(every run) and `results.md` (tables) in `--out`; `--head-cost` adds the time and memory of an fp32 verification
head at Gemma-3-270M's shape (`--prompts 0 --head-cost` times only that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm

import evospec_hf
from evospec_hf import EvoSpecConfig
from evospec_hf.bench.tiny import DTYPES, HIDDEN, LAYERS, VOCAB, build, configs, noisy_copy
from evospec_hf.ops.verify_head import VerifyHead


def per_position_attention(
    attention,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    block: int = 1,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`attention(module, query, key, value, attention_mask, **kwargs)` as plain greedy decoding calls it: the
    first `block` query rows in one call (the prompt, as plain greedy's prefill reads it), then one call per row
    with the keys that row attends to, as plain greedy's one-token steps do.

    In half precision an SDPA kernel over several query rows rounds differently from one row at a time. Where the
    CPU's matmuls also give one row the same bits as several (on the machine measured: the narrow test models, not
    Gemma-3-270M's or SmolLM2-135M's 1,536-2,048-wide MLPs in bf16), every verified position's logits are then
    plain greedy's, bit for bit.

    Args:
        attention: transformers' SDPA attention function (`sdpa_attention_forward`).
        query (`torch.Tensor` of shape `(batch, heads, q_len, head_dim)`), key and value (`(batch, kv_heads,
            kv_len, head_dim)`, the cache's past keys followed by the q_len new ones), attention_mask (boolean or
            additive, `(batch, 1, q_len, kv_len)`, or None for causal attention): as transformers passes them.
        block (`int`): leading rows computed together (`q_len - logits_to_keep + 1` in assisted decoding).

    Returns:
        `(output of shape (batch, q_len, heads, head_dim), None)`, as `attention` returns.
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    # sliding-window layers: Gemma 3 keeps it on the module, Mistral and Qwen pass it as an argument
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    block = max(1, min(block, q_len))
    outputs = []
    for first, last in [(0, block)] + [(row, row + 1) for row in range(block, q_len)]:
        end = kv_len - (q_len - last)  # keys up to the last row's own position
        start = 0
        mask = None
        if attention_mask is not None:
            allowed = attention_mask[:, :, first:last, :end]
            allowed = allowed if allowed.dtype == torch.bool else allowed == 0
            if window is not None and last - first == 1:
                # a sliding layer's cache holds only the window: plain greedy's step sees just these keys
                start = int(allowed[0, 0, 0].nonzero()[0])
                allowed = allowed[..., start:]
            mask = attention_mask[:, :, first:last, start:end]
            # transformers passes no mask (SDPA's causal or full attention) when it can: see masking_utils'
            # `_ignore_causal_mask_sdpa`; the same call gives the same kernel, so the same rounding
            skippable = last - first in (1, end - start) and (window is None or end - start < window)
            if skippable and bool(allowed[:, :, -1].all()):
                mask = None
        out, _ = attention(
            module, query[:, :, first:last], key[:, :, start:end], value[:, :, start:end], mask, **kwargs
        )
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


@contextlib.contextmanager
def per_position_verification(target):
    """The target's SDPA attention, during its own forwards, run as plain greedy runs it (`per_position_attention`):
    the prompt in one call, then one call per verified position. An experiment, not part of evospec_hf: it did not
    make real models' outputs plain greedy's (README, "Half precision")."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    had_local = "sdpa" in ALL_ATTENTION_FUNCTIONS._local_mapping
    modules = set(target.modules())
    running = {"keep": None}  # logits_to_keep of the target's forward now running (None outside it)

    def before(module, args, kwargs):
        keep = kwargs.get("logits_to_keep")
        running["keep"] = keep if isinstance(keep, int) and keep > 0 else 1

    def after(module, args, output):
        running["keep"] = None

    def sdpa(module, query, key, value, attention_mask, *args, **kwargs):
        keep = running["keep"]
        if (
            keep is None
            or module not in modules
            or query.shape[2] == 1
            or args
            or kwargs.get("position_bias") is not None
        ):
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        block = query.shape[2] - keep + 1  # the prompt's rows, read at once as plain greedy's prefill reads them
        return per_position_attention(original, module, query, key, value, attention_mask, block, **kwargs)

    handles = (target.register_forward_pre_hook(before, with_kwargs=True),
               target.register_forward_hook(after, always_call=True))  # fmt: skip
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if had_local:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = original
        else:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]


@contextlib.contextmanager
def fp32_verify_head():
    """The target's verification head in fp32: hidden states and weight upcast inside `VerifyHead` (whose shadow
    only the target's own forwards reach); logits come back in fp32."""
    original = VerifyHead.__call__

    def upcast(self, x, weight, bias=None):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())

    VerifyHead.__call__ = upcast
    try:
        yield
    finally:
        VerifyHead.__call__ = original


def methods(shortlist_size: int) -> dict:
    """name -> (uses evospec_config, EvoSpecConfig or None, reduction)."""
    full = EvoSpecConfig(shortlist="full", lookup_tokens=0)
    full_lookup = EvoSpecConfig(shortlist="full", lookup_tokens=10)
    context_lookup = EvoSpecConfig(shortlist="context", shortlist_size=shortlist_size, lookup_tokens=10)
    return {
        "hf-assisted": (None, None),
        "evospec-full": (full, None),
        "evospec-full+lookup": (full_lookup, None),
        "evospec-context+lookup": (context_lookup, None),
        "evospec-full+lookup+per-position": (full_lookup, "per-position"),
        "evospec-full+lookup+fp32-head": (full_lookup, "fp32-head"),
    }


def reduction_context(target, reduction: str | None):
    if reduction == "per-position":
        return per_position_verification(target)
    if reduction == "fp32-head":
        return fp32_verify_head()
    return contextlib.nullcontext()


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    n = min(a.shape[-1], b.shape[-1])
    differ = (a[..., :n] != b[..., :n]).flatten().nonzero()
    if len(differ):
        return int(differ[0])
    return None if a.shape[-1] == b.shape[-1] else n


@torch.no_grad()
def measure(args) -> list[dict]:
    archs, dtypes = args.archs.split(","), args.dtypes.split(",")
    drafters = args.drafters.split(",")
    table = methods(shortlist_size=256)
    if args.methods:
        table = {name: table[name] for name in args.methods.split(",")}
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, VOCAB, (1, int(torch.randint(12, 33, (1,), generator=gen))), generator=gen)
               for _ in range(args.prompts)]  # fmt: skip
    if args.real:  # a real target, its evospec_hf drafter checkpoint and the built-in held-out prompts
        from evospec_hf import EvoSpecDrafter, load_target
        from evospec_hf.bench.prompts import builtin_prompts

        archs, drafters = [args.real], ["checkpoint"]
        _, tokenizer = load_target(args.real)
        prompts = [p["input_ids"] for p in builtin_prompts(tokenizer, per_set=1)][: args.prompts]
    records = []
    bar = tqdm(total=len(archs) * len(dtypes) * len(drafters) * len(prompts) * len(table), unit="run")
    for arch in archs:
        for dtype_name in dtypes:
            if args.real:
                target = load_target(args.real, dtype=DTYPES[dtype_name])[0]
            else:
                target = build(arch, DTYPES[dtype_name])
            for drafter_name in drafters:
                if drafter_name == "checkpoint":
                    drafter = EvoSpecDrafter.from_pretrained(args.drafter, target=target).to(DTYPES[dtype_name])
                else:
                    drafter = target if drafter_name == "self" else noisy_copy(target, seed=1)
                for prompt_id, ids in enumerate(prompts):
                    plain = target.generate(
                        ids, max_new_tokens=args.new_tokens, do_sample=False, output_scores=True,
                        return_dict_in_generate=True,
                    )  # fmt: skip
                    plain_new = plain.sequences[:, ids.shape[1] :]
                    for method, (config, reduction) in table.items():
                        bar.set_description(f"{arch} {dtype_name} {drafter_name} {method}")
                        extra = {} if config is None else {"evospec_config": config}
                        start = time.perf_counter()
                        with reduction_context(target, reduction):
                            out = target.generate(
                                ids, max_new_tokens=args.new_tokens, do_sample=False, assistant_model=drafter, **extra
                            )
                        seconds = time.perf_counter() - start
                        position = first_difference(out[:, ids.shape[1] :], plain_new)
                        margin = None
                        if position is not None and position < len(plain.scores):
                            top2 = plain.scores[position][0].float().topk(2).values
                            margin = float(top2[0] - top2[1])  # plain greedy's top-1 lead where they part
                        records.append({
                            "arch": arch, "dtype": dtype_name, "drafter": drafter_name, "method": method,
                            "prompt": prompt_id, "differs": position is not None, "first_difference": position,
                            "plain_margin_there": margin, "seconds": round(seconds, 4),
                        })  # fmt: skip
                        bar.update()
    bar.close()
    return records


def summarize(records: list[dict], dtypes: list[str]) -> dict:
    """method -> dtype -> {runs, differ, share, median_first}; and arch x dtype -> method -> differ count."""
    by_method = {}
    for method in dict.fromkeys(r["method"] for r in records):
        by_method[method] = {}
        for dtype in dtypes:
            runs = [r for r in records if r["method"] == method and r["dtype"] == dtype]
            if not runs:
                continue
            firsts = [r["first_difference"] for r in runs if r["differs"]]
            by_method[method][dtype] = {
                "runs": len(runs), "differ": len(firsts), "share": len(firsts) / len(runs),
                "median_first": statistics.median(firsts) if firsts else None,
                "pairs": len({r["arch"] for r in runs if r["differs"]}),
            }  # fmt: skip
    return by_method


def markdown(summary: dict, records: list[dict], args, extra: dict) -> str:
    dtypes = args.dtypes.split(",")
    archs = [args.real] if args.real else args.archs.split(",")
    if not records:
        return f"Command: `{extra['command']}`\n\n" + extra.get("head_cost", {}).get("markdown", "") + "\n"
    lines = [
        "# Speculative greedy against plain greedy, by dtype",
        "",
        f"Command: `{extra['command']}`",
        "",
        (
            f"Machine: {extra['machine']}; torch {torch.__version__}, transformers {transformers.__version__}. "
            + (
                f"{args.real} with the drafter {args.drafter}; {args.prompts} built-in held-out prompts (one per "
                "set); "
                if args.real
                else f"{len(archs)} architectures ({', '.join(archs)}), random seeded weights, vocab {VOCAB}, "
                f"{LAYERS} layers, hidden {HIDDEN} (llama-wide: 640, MLP 2048); drafters {args.drafters}; "
                f"{args.prompts} random prompts of 12-32 tokens; "
            )
            + f"{args.new_tokens} new tokens. A run *differs* when its output is not plain greedy's token for token."
        ),
        "",
        "| method | "
        + " | ".join(f"{d}: runs that differ" for d in dtypes)
        + " | "
        + " | ".join(f"{d}: architectures" for d in dtypes)
        + " | median first differing token |",
        "|---|" + "---:|" * (2 * len(dtypes) + 1),
    ]
    for method, per_dtype in summary.items():
        cells = [f"{s['differ']}/{s['runs']} ({100 * s['share']:.0f}%)" for s in per_dtype.values()]
        pairs = [f"{s['pairs']}/{len(archs)}" for s in per_dtype.values()]
        firsts = [r["first_difference"] for r in records if r["method"] == method and r["differs"]]
        median = f"{statistics.median(firsts):.0f}" if firsts else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(pairs) + f" | {median} |")
    lines += ["", "Runs that differ, per architecture and dtype (all drafters and prompts):", ""]
    methods_list = list(summary)
    lines.append("| architecture | dtype | " + " | ".join(methods_list) + " |")
    lines.append("|---|---|" + "---:|" * len(methods_list))
    for arch in archs:
        for dtype in dtypes:
            cells = []
            for method in methods_list:
                runs = [r for r in records if r["arch"] == arch and r["dtype"] == dtype and r["method"] == method]
                cells.append(f"{sum(r['differs'] for r in runs)}/{len(runs)}" if runs else "")
            lines.append(f"| {arch} | {dtype} | " + " | ".join(cells) + " |")
    margins = [r["plain_margin_there"] for r in records if r["plain_margin_there"] is not None]
    if margins:
        lines += [
            "",
            (
                f"Where outputs part, plain greedy's top-1 logit led its runner-up by a median of "
                f"{statistics.median(margins):.4f} (max {max(margins):.4f}) over {len(margins)} differing runs: "
                "ties after rounding."
            ),
        ]
    if "head_cost" in extra:
        lines += ["", extra["head_cost"]["markdown"]]
    return "\n".join(lines) + "\n"


# -- costs -----------------------------------------------------------------------------------------------------


def _best_ms(call, repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up, in ms: the least disturbed by other work on the machine."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


@torch.no_grad()
def head_cost(repeats: int) -> dict:
    """An fp32 verification head at Gemma-3-270M's shape (262,144 x 640): upcast per call, or an fp32 copy kept."""
    vocab, hidden = 262_144, 640
    gen = torch.Generator().manual_seed(0)
    weight32 = torch.randn(vocab, hidden, generator=gen) * 0.02
    rows = {}
    lines = [
        (
            "**An fp32 verification head** at Gemma-3-270M's head shape (262,144 x 640), ms per call (best of "
            f"{repeats}, {torch.get_num_threads()} threads); memory: the half-precision weight is "
            f"{vocab * hidden * 2 / 2**20:.0f} MiB, a kept fp32 copy adds {vocab * hidden * 4 / 2**20:.0f} MiB, and "
            "upcasting per call allocates that much on every verification."
        ),
        "",
        "| dtype | rows | F.linear in the dtype | fp32, upcast per call | fp32, copy kept |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("bf16", "fp16"):
        weight = weight32.to(DTYPES[name])
        for n in (1, 2, 4, 8):
            x = torch.randn(n, hidden, generator=gen).to(DTYPES[name])
            x32 = x.float()
            timing = {
                "half": _best_ms(lambda x=x, w=weight: F.linear(x, w), repeats),
                "upcast": _best_ms(lambda x=x, w=weight: F.linear(x.float(), w.float()), repeats),
                "kept": _best_ms(lambda x=x32: F.linear(x, weight32), repeats),
            }
            rows[f"{name}/{n}"] = timing
            lines.append(f"| {name} | {n} | {timing['half']:.1f} | {timing['upcast']:.1f} | {timing['kept']:.1f} |")
    return {"ms": rows, "markdown": "\n".join(lines)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(configs()))
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--drafters", default="self,noisy")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    parser.add_argument("--real", default=None, help="a real target instead (`load_target` name, e.g. smollm2-135m)")
    parser.add_argument("--drafter", default=None, help="with --real: the drafter checkpoint folder")
    parser.add_argument("--head-cost", action="store_true", help="also time an fp32 head at Gemma-3-270M's shape")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default="results/half_precision")
    args = parser.parse_args()

    import sys

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {
        "command": "python benchmarks/half_precision.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    records = measure(args) if args.prompts > 0 else []
    if args.head_cost:
        extra["head_cost"] = head_cost(args.repeats)
    summary = summarize(records, args.dtypes.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(
            {"args": vars(args), "torch": torch.__version__, "transformers": transformers.__version__,
             "evospec_hf": getattr(evospec_hf, "__version__", None), **extra, "summary": summary, "runs": records},
            indent=1,
        ) + "\n", encoding="utf-8",
    )  # fmt: skip
    (out / "results.md").write_text(markdown(summary, records, args, extra), encoding="utf-8")
    print(markdown(summary, records, args, extra))


if __name__ == "__main__":
    main()
