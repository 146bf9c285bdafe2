"""Writes a benchmark's results: `results.json`, `results.md` (tables) and `speedup.png`, `tau.png` (plots)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(results: dict, out_dir, meta: dict) -> list[Path]:
    """Writes the files into `out_dir` (created if needed); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "speedup.png", out / "tau.png"]
    paths[0].write_text(json.dumps({"meta": meta, **results}, indent=1))
    paths[1].write_text(markdown(results, meta))
    plot_speedup(results, paths[2])
    plot_tau(results, paths[3])
    return paths


def markdown(results: dict, meta: dict) -> str:
    aggregate = results["aggregate"]
    domains = sorted({row["domain"] for row in results["prompts"]})
    lines = [
        f"Target `{meta.get('target')}`, drafter `{meta.get('drafter')}`, {meta.get('prompts')} prompts, "
        f"{meta.get('max_new_tokens')} new tokens each, median of {meta.get('repeats')} run(s), "
        f"{meta.get('machine')}.",
        "",
        "Speed-up in tokens/s over target-only greedy on the same prompts:",
        "",
        "| method | " + " | ".join(domains) + " | all | tok/s |",
        "|---|" + "---:|" * (len(domains) + 2),
    ]
    for name, row in aggregate.items():
        cells = [f"{row['by_domain'][d]['speedup']:.2f}x" for d in domains]
        cells += [f"{row['all']['speedup']:.2f}x", f"{row['all']['tokens_per_s']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "All prompts: tau is tokens per target forward (accepted drafts + 1); 'vs full' compares evospec_hf's "
        "drafting methods with the same drafter over the full vocabulary (`full-vocab`, `feature:full-vocab` for the "
        "feature drafter's, with `+lookup` for methods with lookup); 'lookup rounds' is the share "
        "of rounds drafted by context lookup (`+lookup` methods); 'first draft accepted' is the share of the drafter's "
        "rounds whose first draft the target accepted; other shares are of the wall time; 'as greedy' is "
        "the share of plain greedy's tokens a method's output has at the same positions (lossy methods only; the "
        "lossless ones are checked equal).",
        "",
        "| method | tau | tau vs full | first draft accepted | shortlist recall | head ms/step | head vs full "
        "| lookup rounds | draft | verify | learn | peak RSS MB | added MB | as greedy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lossy = {m for m, row in aggregate.items() if row["all"].get("greedy_match", 1.0) < 1.0 or m in meta.get("lossy", ())}
    for name, row in aggregate.items():
        a = row["all"]
        full = aggregate.get(_full_vocab_of(name), {}).get("all", {})  # the same drafter over the full vocabulary
        cells = [
            f"{a['tau']:.3f}",
            _ratio(a["tau"], full.get("tau")) if "shortlist_recall" in a else "-",  # evospec_hf's drafting methods
            _percent(a.get("first_accepted")),
            _percent(a.get("shortlist_recall")),
            _number(a.get("head_ms_per_step")),
            _ratio(a.get("head_ms_per_step"), full.get("head_ms_per_step")),
            _percent(a.get("lookup_share")),
            _percent(a.get("draft_share")),
            _percent(a.get("verify_share")),
            _percent(a.get("learn_share")),
            _number(a.get("peak_rss_mb"), 0),
            _number(a.get("added_rss_mb"), 0),
            _percent(a.get("greedy_match")) if name in lossy else "-",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    screened = [name for name, row in aggregate.items() if row["all"].get("screen_share")]
    if screened:
        copy_mb = meta.get("screen_copy_mb")
        lines += [
            "",
            "The target's screened head (`EvoSpecConfig.screen_head`): the share of the target's head calls computed "
            "through the int8 screen, the share of those that ran the full head after all (fallbacks), and the rows "
            "rescored exactly per verified position"
            + (f"; the int8 copy adds {copy_mb:.0f} MB." if copy_mb else "."),
            "",
            "| method | screened calls | fallbacks | survivors median | p90 | p99 | max |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in screened:
            a = aggregate[name]["all"]
            survivors = a.get("screen_survivors", {})
            cells = [_percent(a["screen_share"]), _percent(a.get("screen_fallback_rate"))]
            cells += [str(survivors.get(k, "-")) for k in ("median", "p90", "p99", "max")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    drafting = [name for name, row in aggregate.items() if row["all"].get("first_accepted") is not None]
    if drafting:
        lines += [
            "",
            "First draft accepted, per set: the share of the drafter's rounds (not the lookup's) whose first draft "
            "the target accepted, on the text being generated.",
            "",
            "| method | " + " | ".join(domains) + " | all |",
            "|---|" + "---:|" * (len(domains) + 1),
        ]
        for name in drafting:
            row = aggregate[name]
            cells = [_percent(row["by_domain"][d].get("first_accepted")) for d in domains]
            lines.append(f"| {name} | " + " | ".join(cells + [_percent(row["all"]["first_accepted"])]) + " |")
    return "\n".join(lines) + "\n"


def _full_vocab_of(method: str) -> str:
    """The full-vocabulary method with the same drafter and lookup: `feature:evospec-16k+lookup` ->
    `feature:full-vocab+lookup`."""
    prefix = "feature:" if method.startswith("feature:") else ""
    return prefix + "full-vocab" + ("+lookup" if method.endswith("+lookup") else "")


def _ratio(value, reference) -> str:
    return f"{value / reference:.1%}" if value is not None and reference else "-"


def _percent(value) -> str:
    return f"{value:.1%}" if value is not None else "-"


def _number(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def plot_speedup(results: dict, path) -> None:
    """Grouped bars: speed-up over target-only greedy, per domain, one bar per method."""
    plt = _pyplot()
    aggregate = results["aggregate"]
    domains = sorted({row["domain"] for row in results["prompts"]}) + ["all"]
    methods = [m for m in aggregate if m != "target"]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(domains) * max(1, len(methods)) * 0.35), 3.8))
    for i, name in enumerate(methods):
        row = aggregate[name]
        values = [row["all"]["speedup"] if d == "all" else row["by_domain"][d]["speedup"] for d in domains]
        ax.bar([j + i * width for j in range(len(domains))], values, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(domains))], domains)
    ax.set_ylabel("speed-up over target-only greedy")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tau(results: dict, path, window: int = 16) -> None:
    """Tau per round (running mean), per domain, for the methods that report rounds (evospec_hf's)."""
    import torch

    plt = _pyplot()
    domains = sorted({row["domain"] for row in results["prompts"]})
    fig, axes = plt.subplots(1, len(domains), figsize=(3.6 * len(domains), 3.2), squeeze=False, sharey=True)
    for ax, domain in zip(axes[0], domains):
        rows = [row for row in results["prompts"] if row["domain"] == domain]
        for name in rows[0]["methods"]:
            rounds = [a for row in rows for a in row["methods"][name].get("accepted_per_round", [])]
            if not rounds:
                continue
            accepted = torch.tensor(rounds, dtype=torch.float32) + 1
            size = min(window, len(accepted))
            smooth = torch.nn.functional.conv1d(accepted[None, None], torch.ones(1, 1, size) / size)[0, 0]
            ax.plot(range(len(smooth)), smooth.tolist(), label=name, linewidth=1)
        ax.set_title(domain)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel(f"tau (running mean of {window} rounds)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
