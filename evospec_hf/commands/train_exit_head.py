"""Trains HiSpec's exit head for a target: its next-token prediction after the first `--layer` decoder layers.

    evospec-hf train-exit-head --target gemma-3-270m --layer 6 --out checkpoints/gemma-3-270m-exit-l6

1. teacher: the target's hidden states after `--layer` layers and its top-k logits on mixture chunks (every kind of
   text in `evospec_hf.data`), cached in `<cache>/feature-teacher-v2-<target>-...-<layer>-<k>/` (resumable, shared
   with the feature distillation's cache format);
2. train: the head's projection (the layers stay the target's), top-k KD over the batch's top-k ids and random
   negatives (`evospec_hf.distill.exit_head`), resumable (`train_state.pt` in `--out`);
3. eval: on held-out chunks, per kind, how often the exit's prediction is the target's (before: the untrained exit,
   the plain early exit; after);
4. save: `evospec_exit.json` (with the report) and `evospec_exit.safetensors` in `--out`, which
   `EvoSpecConfig(intermediate_verifier=<out>)` reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from evospec_hf import data, load_target
from evospec_hf.distill.exit_head import exit_agreement, train_exit_head
from evospec_hf.distill.feature import cache_teacher
from evospec_hf.models import default_cache_dir
from evospec_hf.models.exit_head import ExitHead
from evospec_hf.models.targets import target_label


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf train-exit-head", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="gemma-3-270m", help="a known target name, or a local model folder")
    parser.add_argument("--layer", type=int, required=True, help="decoder layers before the exit")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--train-chunks", type=int, default=24, help="training chunks per kind of text")
    parser.add_argument("--eval-chunks", type=int, default=4, help="held-out chunks per kind")
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4, help="chunks per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    target, tokenizer = load_target(args.target)
    for p in target.parameters():
        p.requires_grad_(False)
    total = target.config.get_text_config().num_hidden_layers
    if not 1 <= args.layer < total:
        parser.error(f"--layer must be in [1, {total - 1}] for this {total}-layer target")
    train = data.mixture_chunks(tokenizer, "train", args.seq_len, args.train_chunks, args.seed)
    heldout = data.mixture_chunks(tokenizer, "heldout", args.seq_len, args.eval_chunks, args.seed)
    label = target_label(args.target)
    cache = default_cache_dir() / (
        f"feature-teacher-v2-{label}-{args.seq_len}-mixture-{args.train_chunks}-{args.layer}-{args.topk}"
    )
    with torch.no_grad():
        paths = cache_teacher(target, train, cache / "train", [args.layer], args.topk)
        records = [r for path in paths for r in torch.load(path)]
        paths = cache_teacher(target, heldout, cache / "heldout", [args.layer], args.topk)
        held = [r for path in paths for r in torch.load(path)]

    head = ExitHead(target.config.get_text_config().hidden_size, args.layer).to(target.dtype)
    before = exit_agreement(target, head, held)
    print("agreement with the target, plain early exit:", before)
    start = time.time()
    history = train_exit_head(target, head, records, args.steps, args.batch, args.lr, out / "train_state.pt",
                              negatives=args.negatives, seed=args.seed)  # fmt: skip
    after = exit_agreement(target, head, held)
    print("after training the exit head:", after)
    report = {
        "layer": args.layer, "of_layers": total, "steps": len(history), "batch": args.batch, "lr": args.lr,
        "train_chunks": len(records), "eval_chunks": len(held), "seq_len": args.seq_len, "topk": args.topk,
        "train_seconds_this_run": round(time.time() - start, 1), "loss_first": history[:5], "loss_last": history[-5:],
        "agreement_before": before, "agreement_after": after,
    }  # fmt: skip
    head.save_pretrained(out, target, args.target, report)
    (out / "README.md").write_text(model_card(args.target, report))
    print(json.dumps(report, indent=2))
    print(f"saved to {out}")


def model_card(target: str, report: dict) -> str:
    rows = "\n".join(
        f"| {kind} | {report['agreement_before'][kind]:.1%} | {after:.1%} |"
        for kind, after in report["agreement_after"].items()
    )
    return f"""# evospec_hf exit head for {target} (HiSpec)

The intermediate verifier of `EvoSpecConfig(intermediate_verifier=<this folder>)`: {target}'s own first
{report['layer']} of {report['of_layers']} decoder layers, its final norm, this head's projection and its LM head.
Trained by `evospec-hf train-exit-head` ({report['steps']} steps of {report['batch']} chunks, top-{report['topk']}
KD on {report['train_chunks']} chunks of {report['seq_len']} tokens).

How often its prediction is the target's on held-out text ({report['eval_chunks']} chunks), as the plain early exit
(before) and with the trained head (after):

| kind | before | after |
|---|---:|---:|
{rows}
"""


if __name__ == "__main__":
    main()
