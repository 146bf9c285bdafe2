"""Shortlist recall per mode: the share of the target's greedy next tokens inside the drafter's shortlist.

    python benchmarks/shortlist_recall.py --checkpoint checkpoints/gemma-3-270m-drafter-l2

Held-out text (`evospec_hf.data`, split 'heldout') goes teacher-forced through the target (its greedy next token
after every position) and the drafter (its hidden states). The shortlist is then simulated as generation builds
it (`evospec_hf.vocab.recall.simulate_recall`): the context source observes the text once per round of
`--round-len` positions, the router picks clusters per position within what the slots leave of the budget. Inputs:

* domain shift: `--chunks` chunks of `--seq-len` tokens per domain (code, law, general, medical);
* topic switch: the first `--switch-prefix` tokens of a chunk of one domain, then a chunk of another
  (law -> code, code -> medical); only the positions after the switch are counted.

Modes at each budget (`--budgets`; context slots: a quarter of the budget, at most 2,048): static, static+context,
router, router+context, evospec, evospec with the semantic index only, with the n-gram index only, and
"evospec, session": the n-gram counts kept across the texts of one row (as an `EvoSpecSession` keeps them across
`generate` calls). Writes `--out` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evospec_hf import EvoSpecConfig, EvoSpecDrafter, FrequencyTable
from evospec_hf.data import token_chunks
from evospec_hf.models import load_target
from evospec_hf.vocab.indexes import NGramIndex
from evospec_hf.vocab.recall import drafter_hidden_states, simulate_recall, target_greedy_next

MODES = {
    "static": dict(shortlist="static"),
    "static+context": dict(shortlist="static+context"),
    "router": dict(shortlist="router"),
    "router+context": dict(shortlist="router+context"),
    "evospec": dict(shortlist="evospec"),
    "semantic only": dict(shortlist="evospec", ngram_continuations=0),
    "n-gram only": dict(shortlist="evospec", semantic_neighbors=0),
    "evospec, session": dict(shortlist="evospec"),
}
SWITCHES = (("law", "code"), ("code", "medical"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-drafter-l2")
    parser.add_argument("--chunks", type=int, default=4, help="held-out chunks per domain")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--switch-prefix", type=int, default=128, help="tokens of the first topic before a switch")
    parser.add_argument("--round-len", type=int, default=4)
    parser.add_argument("--budgets", default="1024,4096,16384")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: <checkpoint>/shortlist_recall.json")
    args = parser.parse_args()
    folder = Path(args.checkpoint)
    started = time.time()
    target, tokenizer = load_target(EvoSpecDrafter.read_config(folder)["target"])
    drafter = EvoSpecDrafter.from_pretrained(folder, target=target)
    vocab_size = target.get_output_embeddings().weight.shape[0]
    table = FrequencyTable.load(folder, vocab_size=vocab_size)
    gen = target.generation_config
    always = [t for t in (gen.eos_token_id, gen.pad_token_id) if t is not None]
    always_ids = torch.tensor([t for x in always for t in (x if isinstance(x, list) else [x])], dtype=torch.long)

    chunks = token_chunks(tokenizer, "heldout", args.seq_len, args.chunks, args.seed)
    by_domain: dict[str, list[torch.Tensor]] = {}
    for domain, ids in chunks:
        by_domain.setdefault(domain, []).append(ids)
    texts = []  # (row name, ids, first counted position)
    for domain, items in by_domain.items():
        texts += [(domain, ids, 0) for ids in items]
    for first, second in SWITCHES:
        for a, b in zip(by_domain[first], by_domain[second]):
            prefix, rest = a[: args.switch_prefix], b[1:] if b[0] == tokenizer.bos_token_id else b
            texts.append((f"{first} -> {second}", torch.cat([prefix, rest]), prefix.numel()))

    budgets = [int(b) for b in args.budgets.split(",")]
    counts: dict[tuple[str, int, str], list[int]] = {}
    sessions: dict[tuple[str, int], NGramIndex] = {}
    for row, ids, start in tqdm(texts, desc="recall", unit="text"):
        truth = target_greedy_next(target, ids)
        hidden = drafter_hidden_states(drafter, ids, target)
        for budget in budgets:
            for mode, options in MODES.items():
                config = EvoSpecConfig(shortlist_size=budget, context_slots=min(2048, budget // 4), **options)
                ngram = None
                if mode == "evospec, session":
                    ngram = sessions.setdefault((row, budget), NGramIndex(config.ngram_order))
                hits, n = simulate_recall(
                    config, drafter, ids, truth, hidden, always_ids, static_table=table, ngram=ngram,
                    round_len=args.round_len, start=start,
                )  # fmt: skip
                total = counts.setdefault((row, budget, mode), [0, 0])
                total[0] += hits
                total[1] += n

    rows = list(dict.fromkeys(row for row, _, _ in texts))
    report = {
        "checkpoint": str(folder), "seq_len": args.seq_len, "chunks_per_domain": args.chunks,
        "switch_prefix": args.switch_prefix, "round_len": args.round_len, "seed": args.seed,
        "context_slots": {str(b): min(2048, b // 4) for b in budgets}, "seconds": round(time.time() - started),
        "recall": {
            row: {
                str(b): {"positions": counts[(row, b, "static")][1]}
                | {m: round(counts[(row, b, m)][0] / max(1, counts[(row, b, m)][1]), 4) for m in MODES}
                for b in budgets
            }
            for row in rows
        },
    }  # fmt: skip
    out = Path(args.out) if args.out else folder / "shortlist_recall.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"wrote {out} ({report['seconds']} s)")


def markdown_table(report: dict) -> str:
    lines = [
        "| text | budget | positions | " + " | ".join(MODES) + " |",
        "|---|---:|---:|" + "---:|" * len(MODES),
    ]
    for row, by_budget in report["recall"].items():
        for budget, r in by_budget.items():
            cells = " | ".join(f"{r[m]:.1%}" for m in MODES)
            lines.append(f"| {row} | {int(budget):,} | {r['positions']:,} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
