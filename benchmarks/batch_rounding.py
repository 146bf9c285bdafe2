"""How often a row of a batched greedy call differs from the same prompt generated alone, for plain `generate` and
for evospec_hf, and whether each evospec_hf row equals plain batched greedy's row.

    python benchmarks/batch_rounding.py --out results/batch_rounding
    python benchmarks/batch_rounding.py --archs llama,gemma3 --dtypes fp32 --batches 2   # a quick look

Plain batched greedy and the same prompt alone compute different kernels: rows padded on the left attend over
masked columns, and matmuls over several rows can round differently from one row (transformers issue 25921). In
fp32 that flips a greedy choice only at near-ties; in half precision more often. evospec_hf's promise for a batch is
each row equal to plain *batched* greedy's row (`evospec_vs_plain_batch`, which must be 0 in fp32); its difference
from the prompt alone (`evospec_vs_alone`) is then the same rounding as plain's (`plain_vs_alone`).

The architectures are `evospec_hf.bench.tiny`'s (built from configs, seeded; nothing downloaded).
Each batch holds 4 random prompts of 3 to 24 tokens, left-padded; 48 new tokens; the drafter is the target plus 2%
noise. Writes `results.json` and `results.md` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from tqdm import tqdm

import evospec_hf
from evospec_hf import EvoSpecConfig
from evospec_hf.bench.tiny import DTYPES, VOCAB, build, configs, noisy_copy

NEW_TOKENS = 48


def prompts(seed: int, rows: int = 4) -> tuple[torch.LongTensor, torch.LongTensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 25, (rows,), generator=gen).tolist()
    ids = torch.zeros((rows, max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, ids.shape[1] - length :] = torch.randint(3, VOCAB, (length,), generator=gen)
        mask[row, ids.shape[1] - length :] = 1
    return ids, mask


def measure(args) -> list[dict]:
    records = []
    config = EvoSpecConfig(shortlist="full", lookup_tokens=10)
    jobs = [(arch, dtype) for arch in args.archs for dtype in args.dtypes]
    for arch, dtype in tqdm(jobs, desc="architectures x dtypes"):
        target = build(arch, DTYPES[dtype])
        drafter = noisy_copy(target, seed=1)
        for batch in range(args.batches):
            ids, mask = prompts(100 + batch)
            greedy = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
            plain = target.generate(input_ids=ids, attention_mask=mask, **greedy)[:, ids.shape[1] :]
            spec = target.generate(input_ids=ids, attention_mask=mask, assistant_model=drafter, evospec_config=config,
                                   **greedy)[:, ids.shape[1] :]  # fmt: skip
            for row in range(ids.shape[0]):
                alone_ids = ids[row : row + 1, mask[row] == 1]
                alone = target.generate(alone_ids, **greedy)[0, alone_ids.shape[1] :]
                alone_spec = target.generate(alone_ids, assistant_model=drafter, evospec_config=config, **greedy)
                alone_spec = alone_spec[0, alone_ids.shape[1] :]
                records.append({
                    "arch": arch, "dtype": dtype, "batch": batch, "row": row, "prompt_tokens": alone_ids.shape[1],
                    "plain_vs_alone": not torch.equal(plain[row], alone),
                    "evospec_vs_plain_batch": not torch.equal(spec[row], plain[row]),
                    "evospec_vs_alone": not torch.equal(spec[row], alone_spec),
                    "evospec_alone_vs_plain_alone": not torch.equal(alone_spec, alone),
                })  # fmt: skip
    return records


COLUMNS = ("plain_vs_alone", "evospec_vs_plain_batch", "evospec_vs_alone", "evospec_alone_vs_plain_alone")


def markdown(records: list[dict], args) -> str:
    lines = [
        "# Batched greedy against the same prompt alone", "",
        f"`python benchmarks/batch_rounding.py {' '.join(args.argv)}`", "",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {NEW_TOKENS} new tokens, batches "
        "of 4 left-padded prompts. Rows that differ:", "",
        "| dtype | rows | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS),
    ]  # fmt: skip
    for dtype in args.dtypes:
        rows = [r for r in records if r["dtype"] == dtype]
        cells = [f"{sum(r[c] for r in rows)} ({sum(r[c] for r in rows) / len(rows):.0%})" for c in COLUMNS]
        lines.append(f"| {dtype} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Per architecture (plain_vs_alone / evospec_vs_plain_batch / evospec_vs_alone):", "",
              "| architecture | " + " | ".join(args.dtypes) + " |", "|---|" + "---:|" * len(args.dtypes)]  # fmt: skip
    for arch in args.archs:
        cells = []
        for dtype in args.dtypes:
            rows = [r for r in records if r["arch"] == arch and r["dtype"] == dtype]
            cells.append(" / ".join(str(sum(r[c] for r in rows)) for c in COLUMNS[:3]) + f" of {len(rows)}")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(a for a in configs() if a != "llama-wide"))
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batches", type=int, default=5, help="batches of 4 prompts per architecture and dtype")
    parser.add_argument("--out", default="results/batch_rounding")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    evospec_hf.install()
    records = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(records, indent=1) + "\n")
    text = markdown(records, args)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
