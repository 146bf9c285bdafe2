"""Builds the token frequency table behind `shortlist='static'` (FR-Spec) from local text files.

    evospec-hf build-static-shortlist --tokenizer ./gemma-3-270m --files 'corpus/*.txt' --out freq.json

Files are read through `datasets` (the 'text' builder: one example per paragraph by default, or per line or per document with --sample-by);
nothing is downloaded. The table stores the vocabulary size, so a drafter with another vocabulary refuses it.
"""

import argparse
import glob

from datasets import load_dataset
from transformers import AutoTokenizer

from evospec_hf.vocab import build_frequency_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf build-static-shortlist", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="local tokenizer folder (or a GGUF folder with --gguf-file)")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--files", nargs="+", required=True, help="text files or glob patterns")
    parser.add_argument("--out", required=True, help="where to write the table (.json)")
    parser.add_argument("--vocab-size", type=int, default=None, help="drafter LM-head rows, if not len(tokenizer)")
    parser.add_argument("--sample-by", choices=["line", "paragraph", "document"], default="paragraph")
    parser.add_argument("--max-examples", type=int, default=None)
    args = parser.parse_args(argv)

    files = sorted({f for pattern in args.files for f in glob.glob(pattern, recursive=True)})
    if not files:
        parser.error(f"no file matches {args.files}")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, gguf_file=args.gguf_file)
    dataset = load_dataset("text", data_files=files, split="train", sample_by=args.sample_by)
    if args.max_examples:
        dataset = dataset.select(range(min(args.max_examples, len(dataset))))
    source = f"{len(files)} files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}); tokenizer {args.tokenizer}"
    table = build_frequency_table(tokenizer, dataset, vocab_size=args.vocab_size, source=source)
    table.save(args.out)
    print(f"{args.out}: {table.token_ids.numel():,} distinct tokens of {table.vocab_size:,}, {int(table.counts.sum()):,} counted")


if __name__ == "__main__":
    main()
