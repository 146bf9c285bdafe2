"""Builds the VocabTrim-style list of a drafter checkpoint: the tokens the drafter itself emits on calibration text.

    evospec-hf build-vocabtrim-shortlist --checkpoint checkpoints/gemma-3-270m-drafter-l2

Calibration text is the train split of evospec_hf's domain corpora (the benchmark's prompts come from the held-out
split). The drafter reads each chunk once; its greedy choice at every position is counted
(`evospec_hf.vocab.build_drafter_emission_table`). Writes `<checkpoint>/evospec_vocabtrim.json`, a frequency table in
the static list's format, used by the benchmark's `vocabtrim-<N>k` methods or by
`EvoSpecConfig(shortlist="static", static_shortlist_path=<that file>)`.

A 2-layer drafter's greedy choices cover only a few hundred distinct tokens (573 for the Gemma drafter on 13k
positions), so by default the list continues with the static table's corpus order after them (--no-fill: emitted
tokens only).
"""

import argparse
import os

import torch

import evospec_hf
from evospec_hf import EvoSpecDrafter, FrequencyTable
from evospec_hf.data import DOMAINS, token_chunks
from evospec_hf.vocab import build_drafter_emission_table
from evospec_hf.vocab.frequency import TABLE_NAME, VOCABTRIM_NAME


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf build-vocabtrim-shortlist", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--chunks-per-domain", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fill", action="store_true", help="list only the emitted tokens (no corpus-order fill)")
    args = parser.parse_args(argv)

    target, tokenizer = evospec_hf.load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=target)
    chunks = token_chunks(tokenizer, "train", args.seq_len, args.chunks_per_domain, args.seed)
    positions = sum(c.numel() for _, c in chunks)
    source = (
        f"greedy choices of the drafter {args.checkpoint} at {positions} positions of {len(chunks)} train-split chunks "
        f"({', '.join(DOMAINS)}; seq_len {args.seq_len}, seed {args.seed})"
    )
    table = build_drafter_emission_table(drafter, [c for _, c in chunks], source=source)
    emitted = table.token_ids.numel()
    if not args.no_fill:
        # a small drafter's greedy choices cover a few hundred tokens: rank those first, then fill the list in the
        # static table's corpus order, so that `vocabtrim-<N>k` holds N*1024 tokens like `fr-spec-<N>k`
        corpus = FrequencyTable.load(args.checkpoint)
        counts = torch.zeros(table.vocab_size, dtype=torch.long)
        counts[corpus.token_ids] = corpus.counts
        counts[table.token_ids] = table.counts + int(corpus.counts.max()) + 1
        table = FrequencyTable.from_counts(counts, source + f"; {emitted} emitted tokens first, then {TABLE_NAME}'s order")
    path = os.path.join(args.checkpoint, VOCABTRIM_NAME)
    table.save(path)
    print(f"{path}: {emitted:,} distinct tokens emitted at {positions:,} positions; {table.token_ids.numel():,} listed")


if __name__ == "__main__":
    main()
