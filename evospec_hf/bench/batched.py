"""The bench's batched mode (`--batch-sizes 1,2,4,8`): tokens per second against batch size, in one run.

The prompts are cut into consecutive batches of each size, left-padded as a tokenizer pads them, and every method
generates each batch greedily. Every row of every lossless method must equal the same row of plain batched greedy
(`target` at that batch size), or `MismatchError` stops the run. Also reported, per batch size:

- each method's mean tau over the rows, against the same prompts at batch size 1 (`tau_alone`);
- how many rows differ from the same prompt generated alone (batch size 1) by the same method: batched float
  rounding can change a greedy choice (transformers issue 25921), for plain `generate` as for evospec_hf.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..config import EvoSpecConfig
from ..generation import DraftStats, calibrate
from .runner import MismatchError


def left_padded(prompts: list[dict], pad_token_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """The prompts' ids as one left-padded batch, and its attention mask."""
    width = max(p["input_ids"].shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        length = prompt["input_ids"].shape[1]
        ids[row, width - length :] = prompt["input_ids"][0]
        mask[row, width - length :] = 1
    return ids, mask


def run_batched(target, prompts: list[dict], methods: list, batch_sizes: list[int], max_new_tokens: int = 128,
                repeats: int = 1, warmup: bool = True, progress: bool = True) -> dict:  # fmt: skip
    """Generates every batch with every method at every batch size (see the module docstring).

    Returns:
        `{"batch_sizes": [...], "methods": {name: {batch size: figures}}}`; figures: `tokens_per_s` (new tokens of
        all rows, up to each row's end, over the median wall time, summed over batches), `speedup` (over `target` at
        the same batch size), `tau` and `tau_alone` (mean per row), `rows`, `rows_differing_from_alone`.
    """
    from tqdm.auto import tqdm

    names = [m.name for m in methods]
    if "target" not in names:
        raise ValueError("the methods must include 'target' (plain greedy): the reference and the speed-up baseline")
    if any(size < 1 for size in batch_sizes) or not prompts:
        raise ValueError(f"batch sizes must be positive and prompts non-empty, got {batch_sizes}")
    pad = target.generation_config.pad_token_id
    pad = pad if pad is not None else target.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    eos = target.generation_config.eos_token_id
    eos = torch.tensor(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if warmup and any(method.drafts for method in methods):
        defaults = EvoSpecConfig()
        calibrate(target, max(defaults.max_draft_tokens, defaults.lookup_tokens), progress=progress, batched=True)
    sizes = sorted(set(batch_sizes) | {1})  # batch size 1: each prompt alone, the reference for tau and rounding
    total = sum(len(range(0, len(prompts), size)) for size in sizes) * len(methods) * repeats
    bar = tqdm(total=total, desc="batched benchmark", disable=not progress, unit="gen")
    figures, alone = {}, {}
    for size in sizes:
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        if warmup:  # first-call setup of each method at this size: the head's trials for its row counts
            ids, mask = left_padded(batches[0], pad)
            for method in methods:
                _generate(target, method, ids, mask, min(8, max_new_tokens))
        totals = {name: {"seconds": 0.0, "tokens": 0, "taus": [], "differ": 0} for name in names}
        for index, batch in enumerate(batches):
            ids, mask = left_padded(batch, pad)
            runs = {name: [] for name in names}
            for repeat in range(repeats):
                shift = (index + repeat) % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    bar.set_postfix_str(f"batch {size} / {method.name}")
                    runs[method.name].append(_generate(target, method, ids, mask, max_new_tokens))
                    bar.update()
            reference = runs["target"][0]["output"][:, ids.shape[1] :]
            for method in methods:
                run = runs[method.name][0]
                new = run["output"][:, ids.shape[1] :]
                if method.lossless and not torch.equal(new, reference):
                    row = int((new != reference).any(dim=1).nonzero()[0])
                    raise MismatchError(
                        f"MISMATCH: method {method.name!r} at batch size {size}, row {row} (prompt "
                        f"{batch[row]['id']!r}) differs from plain batched greedy. A lossless method must reproduce "
                        "each row of plain greedy output."
                    )
                totals[method.name]["seconds"] += statistics.median(r["seconds"] for r in runs[method.name])
                totals[method.name]["tokens"] += sum(_length(row, eos) for row in new)
                stats = run["stats"]
                if stats is not None:  # (target+screen reports the screen's counts, no rounds)
                    rows = stats.rows or [stats]
                    totals[method.name]["taus"] += [r.mean_accepted_length for r in rows if r.rounds]
                for row, prompt in enumerate(batch):
                    tokens = new[row, : _length(new[row], eos)]
                    if size == 1:
                        alone[prompt["id"], method.name] = tokens
                    elif not torch.equal(tokens, alone[prompt["id"], method.name]):
                        totals[method.name]["differ"] += 1
        for name, total_ in totals.items():
            figures.setdefault(name, {})[size] = {
                "tokens_per_s": round(total_["tokens"] / total_["seconds"], 2),
                "tau": round(statistics.fmean(total_["taus"]), 3) if total_["taus"] else None,
                "rows": len(prompts),
                "rows_differing_from_alone": total_["differ"] if size > 1 else None,
            }
    bar.close()
    for name, by_size in figures.items():
        for size, row in by_size.items():
            row["speedup"] = round(row["tokens_per_s"] / figures["target"][size]["tokens_per_s"], 3)
            row["tau_alone"] = by_size[1]["tau"]
    return {"batch_sizes": sizes, "methods": figures}


def _generate(target, method, ids, mask, max_new_tokens: int) -> dict:
    kwargs = method.generate_kwargs()
    stats = DraftStats() if method.drafts else None
    if stats is not None:
        kwargs["evospec_stats"] = stats
    start = time.perf_counter()
    output = target.generate(
        input_ids=ids.to(target.device), attention_mask=mask.to(target.device), max_new_tokens=max_new_tokens,
        do_sample=False, **kwargs,
    )  # fmt: skip
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    return {"output": output.cpu(), "seconds": time.perf_counter() - start, "stats": stats}


def _length(row: torch.LongTensor, eos: torch.Tensor) -> int:
    """New tokens of one row up to and including its first EOS (plain `generate` pads after it)."""
    ends = torch.isin(row, eos).nonzero()
    return int(ends[0]) + 1 if ends.numel() else row.shape[0]


def markdown(results: dict, meta: dict) -> str:
    sizes = results["batch_sizes"]
    lines = [
        "# evospec_hf batched benchmark", "",
        f"`{meta['command']}`", "",
        f"Target {meta['target']}, {meta['prompts']} prompts ({meta['prompt_source']}), {meta['max_new_tokens']} new "
        f"tokens, greedy, {meta['machine']}. Each row of every lossless method equals plain batched greedy's.", "",
        "| method | " + " | ".join(f"batch {s}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]  # fmt: skip
    for name, by_size in results["methods"].items():
        cells = [f"{by_size[s]['tokens_per_s']:.1f} tok/s ({by_size[s]['speedup']:.2f}x)" for s in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    header = ["| method | " + " | ".join(f"batch {s}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    lines += ["", "Tau per row (mean) at each batch size, and the same prompts alone (batch 1):", "", *header]
    for name, by_size in results["methods"].items():
        if by_size[sizes[0]]["tau"] is None:
            continue
        lines.append(f"| {name} | " + " | ".join(f"{by_size[s]['tau']:.2f}" for s in sizes) + " |")
    lines += ["", "Rows whose output differs from the same prompt generated alone by the same method (batched float "
              "rounding; transformers issue 25921):", "",
              "| method | " + " | ".join(f"batch {s}" for s in sizes[1:]) + " |", "|---|" + "---:|" * (len(sizes) - 1)]
    for name, by_size in results["methods"].items():
        cells = [f"{by_size[s]['rows_differing_from_alone']} of {by_size[s]['rows']}" for s in sizes[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_batch_sizes(results: dict, path) -> None:
    """Tokens per second against batch size, one line per method."""
    from .report import _pyplot

    plt = _pyplot()
    sizes = results["batch_sizes"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by_size in results["methods"].items():
        ax.plot(sizes, [by_size[s]["tokens_per_s"] for s in sizes], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size (prompts per generate call)")
    ax.set_ylabel("new tokens per second (all rows)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
