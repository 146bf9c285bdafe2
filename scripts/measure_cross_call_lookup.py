"""Would a session that remembers its earlier calls' text draft better? A measurement, not a feature.

    python scripts/measure_cross_call_lookup.py --out results/streams/cross-call-lookup

Issue 15 asks for learning that raises tau by 15% over a stream of calls. Learning the drafter's LoRA weights does
not (`scripts/replay_learning_stream.py`). This script tries learning of another kind, the statistical index EvoSpec
describes: the context lookup (`evospec_hf/generation/lookup.py`) copies continuations from the sequence itself;
here it also copies them from the text of every earlier call of the stream (prompts and answers, all verified by
the target), when the sequence's last `--min-match` or more tokens occurred there and more of them than in the
sequence itself. The copy goes through the same "cost" rule as any copy: counted by match length, declined when
the drafter promises more tokens per second.

The cross-call table is a prototype in this script (it replaces the generator's `LookupSource` while the script
runs), because it did not pay: see the README's "Learning on streams of calls". Each stream runs its calls with
the default context lookup only ("off") and with the remembered text for each `--min-match`, side by side (call i
of every mode before call i + 1); outputs must match. Writes `cross_call.json` and `cross_call.md`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from evaluate_learning_streams import stream_prompts  # the same folder: Python puts it on the path

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter
from evospec_hf.generation import candidate_generator
from evospec_hf.generation.lookup import ContextLookup, LookupSource
from evospec_hf.generation.rounds import Draft

MEMORY_MATCH = 100  # added to a cross-call copy's match length, so the cost rule counts its copies apart


class RememberingLookup(LookupSource):
    """The context lookup, and copies from `memory` (a `ContextLookup` over earlier calls) on a longer match."""

    memory: ContextLookup | None = None  # set by the script between calls
    min_match = 4

    def propose(self, input_ids: torch.LongTensor, limit: int) -> Draft | None:
        own = super().propose(input_ids, limit)
        memory, tokens = self.memory, self.table.tokens
        if memory is None:
            return own
        longest = own.match if own is not None else 0
        for n in range(min(memory.max_ngram, len(tokens)), max(self.min_match, longest + 1) - 1, -1):
            start = memory.follows.get(tuple(tokens[len(tokens) - n :]))
            if start is not None:
                return Draft(
                    self.name, input_ids.new_tensor(memory.tokens[start : start + limit]), match=n + MEMORY_MATCH
                )
        return own


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-feature-l1")
    parser.add_argument("--streams", default="code,law,mixed")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--min-match", default="2,4", help="shortest suffix copied from earlier calls, per mode")
    parser.add_argument("--max-ngram", type=int, default=8, help="longest suffix looked up in earlier calls")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--end-calls", type=int, default=5)
    parser.add_argument("--out", default="results/streams/cross-call-lookup")
    args = parser.parse_args()

    target, tokenizer = evospec_hf.load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=target)
    config = EvoSpecConfig(shortlist="static", shortlist_size=16384, fast_verify_head=False)  # lookup_tokens=10
    candidate_generator.LookupSource = RememberingLookup
    modes = {"off": None, **{f"remember (match >= {m})": int(m) for m in args.min_match.split(",")}}
    warm = stream_prompts(tokenizer, "code", 1)[0]
    target.generate(warm, max_new_tokens=8, do_sample=False, assistant_model=drafter, evospec_config=config)
    results = {}
    for name in args.streams.split(","):
        memory = ContextLookup(args.max_ngram, 1)  # earlier calls' prompts and answers, one after the other
        calls = {mode: [] for mode in modes}
        for i, input_ids in enumerate(stream_prompts(tokenizer, name, args.prompts)):
            outputs = []
            for mode, min_match in modes.items():
                RememberingLookup.memory = memory if min_match is not None and memory.tokens else None
                RememberingLookup.min_match = min_match or 1
                stats, start = DraftStats(), time.perf_counter()
                out = target.generate(
                    input_ids, max_new_tokens=args.max_new_tokens, do_sample=False, assistant_model=drafter,
                    evospec_config=config, evospec_stats=stats,
                )  # fmt: skip
                calls[mode].append({
                    "seconds": time.perf_counter() - start, "rounds": stats.rounds, "accepted": stats.accepted,
                    "copied_rounds": stats.lookup_rounds, "copied_accepted": stats.lookup_accepted,
                })  # fmt: skip
                outputs.append(out)
            if any(not torch.equal(out, outputs[0]) for out in outputs):
                raise SystemExit(f"MISMATCH: {name} call {i + 1}")
            memory.extend(memory.tokens + outputs[0][0].tolist())
            print(
                f"{name} {i + 1}: " + " | ".join(f"{m} tau {_tau(c[-1:]):.2f}" for m, c in calls.items()), flush=True
            )
        results[name] = {
            mode: {
                "calls": c, "mean_seconds": sum(x["seconds"] for x in c) / len(c), "tau": _tau(c),
                "end_tau": _tau(c[-args.end_calls :]),
            }
            for mode, c in calls.items()
        }  # fmt: skip
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": config.to_dict(), **vars(args)}
    (out_dir / "cross_call.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        f"| stream | mode | mean s/call | vs off | tau | tau, last {args.end_calls} calls | vs off | copied rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        off = row["off"]
        for mode, r in row.items():
            lines.append(
                f"| {name} | {mode} | {r['mean_seconds']:.3f} | {r['mean_seconds'] / off['mean_seconds'] - 1:+.1%} | "
                f"{r['tau']:.3f} | {r['end_tau']:.3f} | {r['end_tau'] / off['end_tau'] - 1:+.1%} | "
                f"{sum(x['copied_rounds'] for x in r['calls'])} |"
            )
    (out_dir / "cross_call.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _tau(calls: list) -> float:
    rounds = sum(c["rounds"] for c in calls)
    return (sum(c["accepted"] for c in calls) + rounds) / rounds


if __name__ == "__main__":
    main()
