"""`evospec-hf bench` (or `python -m evospec_hf.bench`): see `main`'s --help."""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from ..config import DRAFT_SCHEDULES, SCREEN_HEAD_MODES, EvoSpecConfig
from ..ops.verify_head import screen_copy_bytes
from .methods import DEFAULT_FEATURE_METHODS, DEFAULT_HISPEC_METHODS, DEFAULT_METHODS, FEATURE_PREFIX, build_methods
from .prompts import BUILTIN_SETS, builtin_prompts, load_prompts
from .report import markdown, write_report
from .runner import MismatchError, run_benchmark

DESCRIPTION = """Benchmarks decoding methods side by side on the same prompts, greedy, in one process.

Every lossless method's output is checked against plain greedy output; a mismatch stops the run with exit code 1
and names the prompt. Writes results.json, results.md, speedup.png and tau.png into --out.

Example: evospec-hf bench --drafter checkpoints/gemma-3-270m-drafter-l2 --out results/bench/gemma
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="evospec-hf bench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--drafter", required=True, help="an evospec_hf drafter checkpoint folder")
    parser.add_argument("--feature-drafter", default=None,
                        help="a feature drafter checkpoint folder, for the methods named feature:<method>")
    parser.add_argument("--exit-head", default=None,
                        help="an exit head folder (evospec-hf train-exit-head), for the methods with +hispec")
    parser.add_argument("--target", default=None, help="a known target name or a model folder (default: the drafter's)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated; see bench/methods.py (default: DEFAULT_METHODS, plus the +hispec and "
                             "feature: ones when --exit-head and --feature-drafter are given)")
    parser.add_argument("--prompts", default=None, help="jsonl: {id, domain, prompt} or Spec-Bench's question.jsonl")
    parser.add_argument("--chat-template", action="store_true", help="wrap --prompts in the tokenizer's chat template")
    parser.add_argument("--sets", default=",".join(BUILTIN_SETS), help="built-in held-out prompt sets (without --prompts)")
    parser.add_argument("--per-set", type=int, default=1, help="prompts per built-in set")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="length of built-in prompts")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per (prompt, method); medians are reported")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--num-draft-tokens", type=int, default=None, help="evospec_hf methods' starting draft length")
    parser.add_argument(
        "--slow-verify-head", action="store_true",
        help="evospec_hf's methods verify with the target's head as transformers runs it (fast_verify_head=False)",
    )  # fmt: skip
    parser.add_argument("--lookup-tokens", type=int, default=EvoSpecConfig.lookup_tokens,
                        help="EvoSpecConfig.lookup_tokens of the +lookup methods (the other methods run without lookup)")
    parser.add_argument("--draft-schedule", default=EvoSpecConfig.draft_schedule, choices=DRAFT_SCHEDULES,
                        help="EvoSpecConfig.draft_schedule of evospec_hf's methods")  # fmt: skip
    parser.add_argument("--screen-head", default=EvoSpecConfig.screen_head, choices=SCREEN_HEAD_MODES,
                        help="EvoSpecConfig.screen_head of evospec_hf's methods and target+screen (off: the full head)")
    parser.add_argument("--batch-sizes", default=None,
                        help="e.g. 1,2,4,8: the batched benchmark instead, tokens/s against batch size (the prompts "
                             "cut into left-padded batches; writes results.json, results.md, batch_sizes.png)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)

    from ..models import EvoSpecDrafter, load_target
    from ..models.targets import KNOWN_TARGETS

    target_name = args.target or EvoSpecDrafter.read_config(args.drafter)["target"]
    if target_name in KNOWN_TARGETS:
        target, tokenizer = load_target(target_name)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target = AutoModelForCausalLM.from_pretrained(target_name).eval()
        tokenizer = AutoTokenizer.from_pretrained(target_name)
    target.to(args.device)
    if args.methods is None:
        names = list(DEFAULT_METHODS)
        names += list(DEFAULT_HISPEC_METHODS) if args.exit_head else []
        names += list(DEFAULT_FEATURE_METHODS) if args.feature_drafter else []
    else:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
    drafter = EvoSpecDrafter.from_pretrained(args.drafter, target=target).to(args.device)
    adapting = None
    if any(n.startswith("evospec-online") for n in names):
        adapting = EvoSpecDrafter.from_pretrained(args.drafter, target=target, merge_adapter=False).to(args.device)
    feature = feature_adapting = None
    if args.feature_drafter:
        feature = EvoSpecDrafter.from_pretrained(args.feature_drafter, target=target).to(args.device)
        if any(n.startswith(FEATURE_PREFIX + "evospec-online") for n in names):
            feature_adapting = EvoSpecDrafter.from_pretrained(
                args.feature_drafter, target=target, merge_adapter=False
            ).to(args.device)
    methods = build_methods(names, drafter, adapting, num_draft_tokens=args.num_draft_tokens,
                            fast_verify_head=not args.slow_verify_head, lookup_tokens=args.lookup_tokens,
                            draft_schedule=args.draft_schedule, feature_drafter=feature,
                            feature_adapting_drafter=feature_adapting, exit_head=args.exit_head,
                            screen_head=args.screen_head)  # fmt: skip

    if args.prompts:
        prompts = load_prompts(args.prompts, tokenizer, chat_template=args.chat_template)
    else:
        sets = [s.strip() for s in args.sets.split(",") if s.strip()]
        prompts = builtin_prompts(tokenizer, sets, per_set=args.per_set, prompt_tokens=args.prompt_tokens)
    prompts = prompts[: args.limit] if args.limit else prompts

    meta = {
        "command": "python -m evospec_hf.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "target": target_name, "drafter": args.drafter, "feature_drafter": args.feature_drafter,
        "methods": [m.name for m in methods], "lossy": [m.name for m in methods if not m.lossless],
        "prompts": len(prompts), "prompt_source": args.prompts or f"built-in: {args.sets}",
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "machine": _machine(args.device),
        "fast_verify_head": not args.slow_verify_head, "lookup_tokens": args.lookup_tokens,
        "draft_schedule": args.draft_schedule, "screen_head": args.screen_head,
    }  # fmt: skip
    if args.batch_sizes:
        return _batched(args, target, prompts, methods, meta)
    try:
        results = run_benchmark(target, prompts, methods, args.max_new_tokens, args.repeats, warmup=not args.no_warmup)
    except MismatchError as err:
        print("\n" + "!" * 100 + f"\n{err}\n" + "!" * 100, file=sys.stderr)
        return 1
    copy_bytes = screen_copy_bytes(target)
    meta["screen_copy_mb"] = None if copy_bytes is None else round(copy_bytes / 2**20, 1)
    paths = write_report(results, args.out, meta)
    print(markdown(results, meta))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _batched(args, target, prompts, methods, meta) -> int:
    import json
    from pathlib import Path

    from .batched import markdown as batched_markdown
    from .batched import plot_batch_sizes, run_batched

    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    unbatched = [m.name for m in methods if m.name.startswith(("hf-assisted", "prompt-lookup")) or "online" in m.name]
    if unbatched and max(sizes) > 1:
        raise SystemExit(f"{', '.join(unbatched)}: transformers' assisted loop and learning sessions take one "
                         "sequence; leave them out of --methods with --batch-sizes")  # fmt: skip
    try:
        results = run_batched(target, prompts, methods, sizes, args.max_new_tokens, args.repeats,
                              warmup=not args.no_warmup)  # fmt: skip
    except MismatchError as err:
        print("\n" + "!" * 100 + f"\n{err}\n" + "!" * 100, file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta["batch_sizes"] = results["batch_sizes"]
    (out / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    text = batched_markdown(results, meta)
    (out / "results.md").write_text(text)
    plot_batch_sizes(results, out / "batch_sizes.png")
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'batch_sizes.png'}")
    return 0


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        cpu = platform.processor() or platform.machine()
        where = f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{where}; torch {torch.__version__}, {platform.python_implementation()} {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
