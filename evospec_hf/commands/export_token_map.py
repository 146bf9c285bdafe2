"""Exports a drafter's hot vocabulary for serving engines: SGLang's `--speculative-token-map` file.

    evospec-hf export-token-map --checkpoint checkpoints/gemma-3-270m-feature-l1 --size 32768 --out hot.pt
    evospec-hf export-token-map --checkpoint ... --source vocabtrim --out hot.pt

The file is a `torch.save` of a plain list of int token ids, most frequent first, which SGLang loads with
`torch.load(path, weights_only=True)` (EAGLE speculative decoding with a reduced draft vocabulary, as FR-Spec does).
`--source static`: the checkpoint's FR-Spec frequency list (`evospec_frequency.json`); `vocabtrim`: the tokens the
drafter itself emits most (`evospec_vocabtrim.json`, from `evospec-hf build-vocabtrim-shortlist`). A session's own
list: `session.frequency_table(vocab_size).save_token_map(path, size, fill=<static table>)`
(docs/guides/serving-export.md).
"""

from __future__ import annotations

import argparse
import os

from evospec_hf.vocab.frequency import TABLE_NAME, VOCABTRIM_NAME, FrequencyTable


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf export-token-map", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an evospec_hf drafter folder")
    parser.add_argument("--source", choices=("static", "vocabtrim"), default="static")
    parser.add_argument("--size", type=int, default=32768, help="how many token ids (SGLang's FR-Spec used 32k)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be positive")
    path = os.path.join(args.checkpoint, TABLE_NAME if args.source == "static" else VOCABTRIM_NAME)
    if not os.path.isfile(path):
        parser.error(f"{path} does not exist" + (" (build it with evospec-hf build-vocabtrim-shortlist)"
                                                  if args.source == "vocabtrim" else ""))  # fmt: skip
    table = FrequencyTable.load(path)
    # a VocabTrim list holds only the tokens the drafter emitted; the static list completes it
    static = os.path.join(args.checkpoint, TABLE_NAME)
    fill = FrequencyTable.load(static) if args.source == "vocabtrim" and os.path.isfile(static) else None
    ids = table.save_token_map(args.out, args.size, fill=fill)
    print(f"wrote {len(ids)} token ids ({args.source}) to {args.out}")


if __name__ == "__main__":
    main()
