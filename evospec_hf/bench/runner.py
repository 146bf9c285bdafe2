"""Runs methods side by side on the same prompts: warm-up, interleaved order, medians, and the exactness check."""

from __future__ import annotations

import statistics
import time

import torch

from ..config import EvoSpecConfig
from ..generation import DraftStats, calibrate


class MismatchError(RuntimeError):
    """A lossless method's greedy output differs from plain greedy output."""


def run_benchmark(target, prompts: list[dict], methods: list, max_new_tokens: int = 128, repeats: int = 1,
                  warmup: bool = True, progress: bool = True) -> dict:  # fmt: skip
    """Generates greedily with every method on every prompt and measures it.

    Each repeat visits the prompts in order and, for each prompt, runs the methods in an order rotated by one
    place per prompt and repeat, so that no method always runs first (cold caches) or right after another. Times are
    medians over the repeats. After each prompt, every lossless method's output must equal the `target` method's
    (plain greedy); otherwise `MismatchError` names the method, the prompt and the first differing position.

    Args:
        target: the target model.
        prompts: `{"id", "domain", "input_ids"}` dicts (`evospec_hf.bench.prompts`).
        methods: `Method`s (`evospec_hf.bench.methods.build_methods`); one must be called "target".
        max_new_tokens: tokens generated per prompt (no early stop is forced: EOS still ends a generation).
        repeats: timed generations per (prompt, method).
        warmup: first calibrate the target's verification costs on this machine (`evospec_hf.calibrate`: once per
            machine and model shape, then read from the calibration cache), then run every method once on the
            first prompt for 8 tokens, untimed (first-call setup: shortlist tables, semantic index, kernels).

    Returns:
        `{"prompts": [...per-prompt figures...], "aggregate": {method: {"all": {...}, "by_domain": {...}}}}`; see
        `summarize` for the figures.
    """
    from tqdm.auto import tqdm

    names = [m.name for m in methods]
    if "target" not in names:
        raise ValueError("the methods must include 'target' (plain greedy): the reference and the speed-up baseline")
    if not prompts:
        raise ValueError("no prompts")
    counter = _ForwardCounter(target)
    try:
        if warmup:
            if any(method.drafts for method in methods):
                defaults = EvoSpecConfig()  # the longest rounds the methods draft by default
                calibrate(target, max(defaults.max_draft_tokens, defaults.lookup_tokens), progress=progress)
            for method in tqdm(methods, desc="warm-up", disable=not progress, leave=False):
                _generate(target, method, prompts[0]["input_ids"], min(8, max_new_tokens), counter)
        runs = {(p["id"], m.name): [] for p in prompts for m in methods}
        bar = tqdm(total=len(prompts) * len(methods) * repeats, desc="benchmark", disable=not progress, unit="gen")
        for repeat in range(repeats):
            for index, prompt in enumerate(prompts):
                shift = (index + repeat) % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    bar.set_postfix_str(f"{prompt['id']} / {method.name}")
                    runs[prompt["id"], method.name].append(
                        _generate(target, method, prompt["input_ids"], max_new_tokens, counter)
                    )
                    bar.update()
                _check_outputs(prompt, methods, runs)
        bar.close()
    finally:
        counter.remove()
    return summarize(prompts, methods, runs)


def _generate(target, method, input_ids, max_new_tokens: int, counter: "_ForwardCounter") -> dict:
    """One timed greedy generation: output, seconds, new tokens, target forwards, DraftStats and peak memory."""
    kwargs = method.generate_kwargs()
    stats = DraftStats() if method.drafts else None
    if stats is not None:
        kwargs["evospec_stats"] = stats
    input_ids = input_ids.to(target.device)
    memory = _PeakMemory(target.device)
    counter.calls = 0
    start = time.perf_counter()
    output = target.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens, do_sample=False, **kwargs
    )
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "output": output[0].cpu(), "seconds": seconds, "new_tokens": output.shape[1] - input_ids.shape[1],
        "forwards": counter.calls, "stats": stats, **memory.read(),
    }  # fmt: skip


def _check_outputs(prompt: dict, methods: list, runs: dict) -> None:
    reference = runs[prompt["id"], "target"][-1]["output"]
    for method in methods:
        if not method.lossless:
            continue
        got = runs[prompt["id"], method.name][-1]["output"]
        if torch.equal(got, reference):
            continue
        common = min(got.shape[0], reference.shape[0])
        differs = (got[:common] != reference[:common]).nonzero()
        position = int(differs[0, 0]) if differs.numel() else common
        raise MismatchError(
            f"MISMATCH: method {method.name!r} on prompt {prompt['id']!r} differs from plain greedy at position "
            f"{position} (prompt length {prompt['input_ids'].shape[1]}): got {got[position:position + 5].tolist()}, "
            f"expected {reference[position:position + 5].tolist()}. A lossless method must reproduce greedy output."
        )


def summarize(prompts: list[dict], methods: list, runs: dict) -> dict:
    """Per-prompt figures and aggregates (all prompts, and per domain) for every method.

    Figures: `tokens_per_s` (new tokens over the median wall time), `speedup` (over `target` on the same prompts),
    `tau` (tokens per target forward: mean accepted length counting the target's own token; 1.0 for plain greedy),
    and for evospec_hf's methods `shortlist_recall`, `head_ms_per_step`, and the shares of the wall time spent
    drafting, verifying and learning, and `lookup_share`, the rounds whose drafts were copied from the context
    (`+lookup` methods). `peak_rss_mb`: the process's peak resident memory during the generation
    (`peak_cuda_mb` on GPU); `added_rss_mb`: how far above its resident memory when the generation started.
    `first_accepted`: the share of the drafter's rounds whose first draft the target accepted.
    `greedy_match` and `greedy_prefix`: the share of plain greedy's new tokens that the method's output has at the
    same positions, and in the prefix both share (1.0 for lossless methods; quality of the lossy ones).
    """
    per_prompt = []
    for prompt in prompts:
        row = {"id": prompt["id"], "domain": prompt["domain"], "prompt_tokens": prompt["input_ids"].shape[1]}
        row["methods"] = {}
        for method in methods:
            row["methods"][method.name] = _figures(runs[prompt["id"], method.name])
        base = row["methods"]["target"]["seconds"]
        reference = runs[prompt["id"], "target"][0]["output"][prompt["input_ids"].shape[1] :]
        for name, figures in row["methods"].items():
            figures["speedup"] = round(base / figures["seconds"], 3)
            # how much of the output is plain greedy's (1.0 for every lossless method, checked above)
            got = runs[prompt["id"], name][0]["output"][prompt["input_ids"].shape[1] :]
            figures["greedy_tokens"], figures["greedy_prefix"] = _agreement(got, reference)
        per_prompt.append(row)
    aggregate = {}
    for method in methods:
        groups = {"all": list(per_prompt)}
        for row in per_prompt:
            groups.setdefault(row["domain"], []).append(row)
        totals = {key: _total(rows, method.name) for key, rows in groups.items()}
        aggregate[method.name] = {"all": totals.pop("all"), "by_domain": totals}
    return {"prompts": per_prompt, "aggregate": aggregate}


def _agreement(got: torch.Tensor, reference: torch.Tensor) -> tuple[int, int]:
    """(positions where `got` has plain greedy's token, length of the common prefix), over the new tokens."""
    common = min(got.shape[0], reference.shape[0])
    same = got[:common] == reference[:common]
    differs = (~same).nonzero()
    return int(same.sum()), int(differs[0, 0]) if differs.numel() else common


def _figures(runs: list) -> dict:
    first = runs[0]
    figures = {
        "new_tokens": first["new_tokens"],
        "forwards": first["forwards"],
        "seconds": round(statistics.median(r["seconds"] for r in runs), 4),
        "seconds_all": [round(r["seconds"], 4) for r in runs],
        "tau": round(first["new_tokens"] / first["forwards"], 3) if first["forwards"] else None,
    }
    figures["tokens_per_s"] = round(figures["new_tokens"] / figures["seconds"], 3)
    for key in ("peak_rss_mb", "added_rss_mb", "peak_cuda_mb"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            figures[key] = round(max(values), 1)
    if first["stats"] is not None:
        median_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        middle, total = median_run["stats"], median_run["seconds"]
        figures.update(
            checked=middle.checked, in_shortlist=middle.in_shortlist,
            shortlist_recall=round(middle.shortlist_recall, 4), head_ms_per_step=round(middle.head_ms_per_step, 3),
            head_seconds=middle.head_seconds, head_steps=middle.head_steps,
            draft_seconds=middle.draft_seconds, verify_seconds=middle.verify_seconds, learn_seconds=middle.learn_seconds,
            draft_share=round(middle.draft_seconds / total, 3), verify_share=round(middle.verify_seconds / total, 3),
            learn_share=round(middle.learn_seconds / total, 3), accepted_per_round=first["stats"].accepted_per_round,
            rounds=middle.rounds, lookup_rounds=middle.lookup_rounds,
        )  # fmt: skip
        # the drafter's rounds, and those whose first draft the target accepted (rounds are the same in every run)
        sources, accepted = first["stats"].sources_per_round, first["stats"].accepted_per_round
        drafter_rounds = [a for s, a in zip(sources, accepted) if s == "drafter"]
        figures.update(drafter_rounds=len(drafter_rounds), first_accepted=sum(a > 0 for a in drafter_rounds))
        figures.update(  # the target's screened head (EvoSpecConfig.screen_head): rows rescored per position
            screen_calls=middle.screen_calls, screen_full_calls=middle.screen_full_calls,
            screen_fallbacks=middle.screen_fallbacks, screen_survivors=list(first["stats"].screen_survivors),
        )  # fmt: skip
        figures.update(  # AdaSD and HiSpec at work (0 where off)
            entropy_stops=middle.entropy_stops, lossy_accepted=middle.lossy_accepted, drafted=middle.drafted,
            verifier_checked=middle.verifier_checked, verifier_removed=middle.verifier_removed,
            verifier_seconds=middle.verifier_seconds,
        )  # fmt: skip
    return figures


def _total(rows: list, name: str) -> dict:
    """One method's figures summed over prompts (ratios of sums, not means of ratios)."""
    mine = [r["methods"][name] for r in rows]
    base = [r["methods"]["target"] for r in rows]
    tokens, seconds = sum(f["new_tokens"] for f in mine), sum(f["seconds"] for f in mine)
    total = {
        "prompts": len(rows),
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 3),
        "speedup": round((tokens / seconds) / _tokens_per_s(base), 3),
        "tau": round(tokens / sum(f["forwards"] for f in mine), 3),
        # the share of new tokens equal to plain greedy's at the same position, and of the prefixes in common
        "greedy_match": round(sum(f["greedy_tokens"] for f in mine) / max(1, sum(f["new_tokens"] for f in base)), 4),
        "greedy_prefix": round(sum(f["greedy_prefix"] for f in mine) / max(1, sum(f["new_tokens"] for f in base)), 4),
    }
    if all("checked" in f for f in mine):
        checked, steps = sum(f["checked"] for f in mine), sum(f["head_steps"] for f in mine)
        total["shortlist_recall"] = round(sum(f["in_shortlist"] for f in mine) / checked, 4) if checked else None
        total["head_ms_per_step"] = round(1e3 * sum(f["head_seconds"] for f in mine) / steps, 3) if steps else None
        rounds = sum(f["rounds"] for f in mine)
        total["lookup_share"] = round(sum(f["lookup_rounds"] for f in mine) / rounds, 3) if rounds else None
        for key in ("entropy_stops", "lossy_accepted", "drafted", "verifier_checked", "verifier_removed"):
            total[key] = sum(f[key] for f in mine)
        total["verifier_share"] = round(sum(f["verifier_seconds"] for f in mine) / seconds, 3)
        total.update(_screen_totals(mine))
        drafter_rounds = sum(f["drafter_rounds"] for f in mine)
        total["first_accepted"] = round(sum(f["first_accepted"] for f in mine) / drafter_rounds, 4) if drafter_rounds else None
        for part in ("draft", "verify", "learn"):
            total[f"{part}_share"] = round(sum(f[f"{part}_seconds"] for f in mine) / seconds, 3)
    for key in ("peak_rss_mb", "added_rss_mb", "peak_cuda_mb"):
        values = [f[key] for f in mine if key in f]
        if values:
            total[key] = max(values)
    return total


def _screen_totals(figures: list) -> dict:
    """The screened head over prompts: `screen_share` of the target's head calls it computed, `screen_fallback_rate`
    (of those, the ones that ran the full head after all), and survivors per position (median, p90, p99, max)."""
    screened = sum(f["screen_calls"] for f in figures)
    calls = screened + sum(f["screen_full_calls"] for f in figures)
    survivors = sorted(s for f in figures for s in f["screen_survivors"])
    totals = {
        "screen_share": round(screened / calls, 3) if calls else None,
        "screen_fallback_rate": round(sum(f["screen_fallbacks"] for f in figures) / screened, 4) if screened else None,
    }
    if survivors:
        pick = lambda q: survivors[min(len(survivors) - 1, int(q * len(survivors)))]  # noqa: E731
        totals["screen_survivors"] = {"median": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": survivors[-1]}
    return totals


def _tokens_per_s(figures: list) -> float:
    return sum(f["new_tokens"] for f in figures) / sum(f["seconds"] for f in figures)


class _ForwardCounter:
    """Counts the target's forward passes: one per round of speculative decoding, one per token of plain greedy."""

    def __init__(self, target):
        self.calls = 0
        self._handle = target.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def remove(self):
        self._handle.remove()


class _PeakMemory:
    """Peak memory of one generation: resident set high-water mark (reset through /proc/self/clear_refs on Linux),
    or CUDA's peak allocation on a GPU. Figures are None where the platform does not allow the measurement."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.device = device
        self.rss_start = _status_mb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self.reset = True
        except OSError:
            self.reset = False

    def read(self) -> dict:
        out = {"peak_rss_mb": None, "added_rss_mb": None}
        peak = _status_mb("VmHWM") if self.reset else None
        if peak is not None and self.rss_start is not None:
            out = {"peak_rss_mb": peak, "added_rss_mb": max(0.0, peak - self.rss_start)}
        if self.cuda:
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
