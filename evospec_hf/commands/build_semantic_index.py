"""Builds the semantic index of `shortlist="evospec"` into a drafter checkpoint (or any router folder).

    evospec-hf build-semantic-index --checkpoint checkpoints/gemma-3-270m-drafter-l2 --neighbors 4

Writes `evospec_semantic.safetensors`: each token's `--neighbors` nearest tokens by cosine similarity of the
LM-head rows (faiss; exact up to 32k tokens, IVF above; see `evospec_hf/vocab/indexes.py`). Without it,
`generate` builds the same table in memory once per drafter and logs how long that took.
"""

from __future__ import annotations

import argparse
import os
import time

from evospec_hf import EvoSpecDrafter
from evospec_hf.models import load_target
from evospec_hf.vocab.indexes import SemanticIndex


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf build-semantic-index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an evospec_hf drafter checkpoint folder")
    parser.add_argument("--out", default=None, help="folder to write to (default: the checkpoint)")
    parser.add_argument("--neighbors", type=int, default=4, help="neighbours per token (4 bytes each per token)")
    parser.add_argument("--nprobe", type=int, default=8, help="IVF lists searched per query (large vocabularies)")
    args = parser.parse_args(argv)
    target, _ = load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    head = target.get_output_embeddings().weight  # the drafter shares the target's LM head
    start = time.time()
    index = SemanticIndex.build(head, k=args.neighbors, nprobe=args.nprobe)
    seconds = time.time() - start
    path = index.save(args.out or args.checkpoint)
    print(f"{index.vocab_size:,} tokens x {index.k} neighbours in {seconds:.0f} s -> {path} "
          f"({os.path.getsize(path) / 1e6:.1f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
