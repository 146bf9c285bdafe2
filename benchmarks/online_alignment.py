"""Online alignment on a real pair: long generations and a topic switch, with the session learning or not.

    python benchmarks/online_alignment.py --checkpoint checkpoints/gemma-3-270m-drafter-l2 --out results/online

For each scenario it generates greedily with plain `generate` (the reference and the tokens/s baseline), then with
evospec_hf and an `EvoSpecSession` that does not learn ("off"), then with one that learns ("on"). The three outputs
must be identical (the run stops otherwise). Scenarios:

- `code`, `law`, `medical`: one long generation from the start of a held-out text of that domain;
- `law->code`: one session, a law prompt then a code prompt (the adapter learned on law carries into code);
- `law-chat`, `code-chat`: one session over three calls, each a different held-out text of the domain (a
  conversation). These also run a third variant, "first": the session learns during the first call only, then
  keeps drafting with what it learned (`session.online = False`) and pays no more updates.

Writes `online_alignment.json` (per scenario: tokens/s, tau, accepted tokens per round, updates, rollbacks, update
ms, losses), `online_alignment.md` (a table) and `online_alignment.png` (tau over the rounds, on vs off).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.data import load_domain_corpus

SCENARIOS = {  # name -> the (domain, n-th held-out text) of each call of one session
    "code": [("code", 0)],
    "law": [("law", 0)],
    "medical": [("medical", 0)],
    "law->code": [("law", 0), ("code", 0)],
    "law-chat": [("law", 0), ("law", 1), ("law", 2)],
    "code-chat": [("code", 0), ("code", 1), ("code", 2)],
}


def domain_prompt(tokenizer, domain: str, tokens: int, nth: int = 0) -> torch.Tensor:
    """The first `tokens` tokens of the `nth` held-out text of `domain` that is long enough (held-out texts were never
    seen by distillation or the router)."""
    found = 0
    for row in load_domain_corpus(domain, "heldout"):
        ids = tokenizer(row["text"], return_tensors="pt").input_ids
        if ids.shape[1] >= tokens:
            if found == nth:
                return ids[:, :tokens]
            found += 1
    raise ValueError(f"fewer than {nth + 1} held-out {domain} texts of {tokens} tokens")


def run(target, drafter, prompts, config, session, max_new_tokens, learn_calls=None):
    """Generates for each prompt in turn within one session. The session learns during the first `learn_calls` calls
    (None: all). Returns the outputs, the run's stats and per-call figures (seconds, new tokens, tau)."""
    outputs, stats, calls = [], DraftStats(), []
    for i, input_ids in enumerate(prompts):
        call_stats = DraftStats()
        if session is not None and learn_calls is not None and i == learn_calls:
            session.online = False  # keep drafting with the learned adapter, stop training it
        start = time.perf_counter()
        if session is None:
            out = target.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            out = target.generate(
                input_ids, max_new_tokens=max_new_tokens, do_sample=False, assistant_model=drafter,
                evospec_config=config, evospec_session=session, evospec_stats=call_stats,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        outputs.append(out)
        new = out.shape[1] - input_ids.shape[1]
        calls.append({
            "seconds": round(seconds, 3), "new_tokens": new, "rounds": call_stats.rounds,
            "accepted": call_stats.accepted, "tau": round(call_stats.mean_accepted_length, 3),
        })  # fmt: skip
        stats.rounds += call_stats.rounds
        stats.drafted += call_stats.drafted
        stats.accepted += call_stats.accepted
        stats.accepted_per_round += call_stats.accepted_per_round
    return outputs, stats, calls


def tokens_per_s(calls: list) -> float:
    """New tokens per second over the calls."""
    return round(sum(c["new_tokens"] for c in calls) / sum(c["seconds"] for c in calls), 2)


@torch.no_grad()
def agreement(drafter, outputs, prompts) -> float:
    """Teacher-forced greedy agreement of the drafter with the target on the generated text (greedy output is the
    target's argmax at every position), with whatever adapter the drafter holds."""
    hits = total = 0
    for out, prompt in zip(outputs, prompts):
        predicted = drafter(input_ids=out).logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
        hits += int((predicted == out[0, prompt.shape[1] :]).sum())
        total += predicted.shape[0]
    return hits / total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-drafter-l2")
    parser.add_argument("--shortlist", default="evospec")
    parser.add_argument(
        "--scenarios", default="code,law,medical,law->code", help=f"comma-separated, from {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--update-every", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--async-updates", action="store_true")
    parser.add_argument("--trainable-layers", type=int, default=None, help="train only the last N layers' LoRA")
    parser.add_argument("--out", default="results/online")
    args = parser.parse_args()

    drafter_config = EvoSpecDrafter.read_config(args.checkpoint)
    target, tokenizer = evospec_hf.load_target(drafter_config["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=target, merge_adapter=False)
    config = EvoSpecConfig(shortlist=args.shortlist, num_draft_tokens=4)
    alignment = OnlineAlignmentConfig(
        update_every=args.update_every, batch_size=args.batch_size, lr=args.lr, async_updates=args.async_updates,
        trainable_layers=args.trainable_layers,
        # as these scenarios are measured: inside the loop, no anchor, no governor
        learn="in-loop", anchor=0.0, teach_rejected=False, governor=False,
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # warm-up: first-call costs (shortlist build, semantic table load) out of the timings
    warm = domain_prompt(tokenizer, "code", 16)
    run(target, drafter, [warm], config, EvoSpecSession(drafter, alignment, online=False), 8)

    results = {}
    for name in args.scenarios.split(","):
        prompts = [domain_prompt(tokenizer, d, args.prompt_tokens, nth) for d, nth in SCENARIOS[name]]
        reference, _, plain_calls = run(target, drafter, prompts, config, None, args.max_new_tokens)
        new_tokens = sum(c["new_tokens"] for c in plain_calls)
        row = {"new_tokens": new_tokens, "plain_tokens_per_s": tokens_per_s(plain_calls), "plain_calls": plain_calls}
        variants = [("off", False, None), ("on", True, None)]
        if len(prompts) > 1 and len({d for d, _ in SCENARIOS[name]}) == 1:
            variants.append(("first", True, 1))  # a conversation: learn during its first call only
        for label, online, learn_calls in variants:
            session = EvoSpecSession(drafter, alignment, online=online)
            outputs, stats, calls = run(target, drafter, prompts, config, session, args.max_new_tokens, learn_calls)
            for i, (got, expected) in enumerate(zip(outputs, reference)):
                if not torch.equal(got, expected):
                    raise SystemExit(f"MISMATCH: {name} prompt {i} with alignment {label} differs from plain greedy")
            s = session.stats
            if label == "on":
                row["agreement_before"] = round(agreement(drafter, outputs, prompts), 4)
                with session.applied():
                    row["agreement_after"] = round(agreement(drafter, outputs, prompts), 4)
            row[label] = {
                "tokens_per_s": tokens_per_s(calls),
                "tau": round(stats.mean_accepted_length, 3),
                "acceptance_rate": round(stats.acceptance_rate, 3),
                "calls": calls,
                "accepted_per_round": stats.accepted_per_round,
                "updates": s.updates,
                "rollbacks": s.rollbacks,
                "update_ms_median": sorted(s.update_ms)[len(s.update_ms) // 2] if s.update_ms else None,
                "update_s_total": round(sum(s.update_ms) / 1e3, 2),
                "losses": s.losses,
            }
        results[name] = row
        print(
            f"{name}: plain {row['plain_tokens_per_s']} tok/s | "
            + " | ".join(
                f"{label} {row[label]['tokens_per_s']} tok/s tau {row[label]['tau']} "
                f"(per call {[c['tau'] for c in row[label]['calls']]}, {row[label]['updates']} updates)"
                for label, _, _ in variants
            )
            + f" | agreement on this text {row['agreement_before']} -> {row['agreement_after']}",
            flush=True,
        )

    meta = {
        "checkpoint": args.checkpoint, "shortlist": args.shortlist, "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": args.prompt_tokens, "alignment": alignment.to_dict(), "threads": torch.get_num_threads(),
    }  # fmt: skip
    (out_dir / "online_alignment.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        "| scenario | new tokens | plain tok/s | off: tok/s | off: tau | on: tok/s | on: tau | updates | ms/update | "
        "rollbacks | agreement before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        off, on = row["off"], row["on"]
        lines.append(
            f"| {name} | {row['new_tokens']} | {row['plain_tokens_per_s']} | {off['tokens_per_s']} | {off['tau']} | "
            f"{on['tokens_per_s']} | {on['tau']} | {on['updates']} | {on['update_ms_median']} | {on['rollbacks']} | "
            f"{row['agreement_before']:.1%} -> {row['agreement_after']:.1%} |"
        )
    chats = {name: row for name, row in results.items() if "first" in row}
    if chats:
        lines += [
            "",
            "| conversation | calls | plain tok/s | off: tok/s | off: tau | on: tok/s | on: tau | first: tok/s | "
            "first: tau |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in chats.items():
            count = len(row["plain_calls"])
            for label, lo, hi in [(f"{i + 1}", i, i + 1) for i in range(count)] + [(f"2-{count}", 1, count)]:
                cells = [f"{tokens_per_s(row['plain_calls'][lo:hi])}"]
                for variant in ("off", "on", "first"):
                    calls = row[variant]["calls"][lo:hi]
                    rounds = sum(c["rounds"] for c in calls)
                    tau = (sum(c["accepted"] for c in calls) + rounds) / rounds
                    cells += [f"{tokens_per_s(calls)}", f"{tau:.3f}"]
                lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    (out_dir / "online_alignment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out_dir / "online_alignment.png")


def plot(results: dict, path: Path, window: int = 16) -> None:
    """Tau (accepted drafts + 1) per round, as a running mean over `window` rounds, alignment on vs off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False, sharey=True)
    for ax, (name, row) in zip(axes[0], results.items()):
        for label, style in (("off", "--"), ("on", "-"), ("first", ":")):
            if label not in row:
                continue
            accepted = torch.tensor(row[label]["accepted_per_round"], dtype=torch.float32) + 1
            kernel = torch.ones(1, 1, min(window, len(accepted))) / min(window, len(accepted))
            smooth = torch.nn.functional.conv1d(accepted[None, None], kernel)[0, 0]
            ax.plot(range(len(smooth)), smooth.tolist(), style, label=f"alignment {label}")
        for boundary in itertools.accumulate(c["rounds"] for c in row["off"]["calls"][:-1]):
            ax.axvline(boundary, color="grey", linewidth=0.5)  # where the session's next call begins (off's rounds)
        ax.set_title(name)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel(f"tau (running mean of {window} rounds)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
