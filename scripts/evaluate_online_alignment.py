"""Online alignment on a real pair: long generations and a topic switch, with the session learning or not.

    python scripts/evaluate_online_alignment.py --checkpoint checkpoints/gemma-3-270m-drafter-l2 --out results/online

For each scenario it generates greedily with plain `generate` (the reference and the tokens/s baseline), then with
evospec_hf and an `EvoSpecSession` that does not learn ("off"), then with one that learns ("on"). The three outputs
must be identical (the run stops otherwise). Scenarios:

- `code`, `law`, `medical`: one long generation from the start of a held-out text of that domain;
- `law->code`: one session, a law prompt then a code prompt (the adapter learned on law carries into code).

Writes `online_alignment.json` (per scenario: tokens/s, tau, accepted tokens per round, updates, rollbacks, update
ms, losses), `online_alignment.md` (a table) and `online_alignment.png` (tau over the rounds, on vs off).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.data import load_domain_corpus

SCENARIOS = {"code": ["code"], "law": ["law"], "medical": ["medical"], "law->code": ["law", "code"]}


def domain_prompt(tokenizer, domain: str, tokens: int) -> torch.Tensor:
    """The first `tokens` tokens of the first held-out text of `domain` (never seen by distillation or the router)."""
    for row in load_domain_corpus(domain, "heldout"):
        ids = tokenizer(row["text"], return_tensors="pt").input_ids
        if ids.shape[1] >= tokens:
            return ids[:, :tokens]
    raise ValueError(f"no held-out {domain} text of {tokens} tokens")


def run(target, drafter, prompts, config, session, max_new_tokens):
    """Generates for each prompt in turn within one session; returns outputs, seconds and stats."""
    outputs, seconds, stats = [], 0.0, DraftStats()
    for input_ids in prompts:
        start = time.perf_counter()
        if session is None:
            out = target.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            out = target.generate(
                input_ids, max_new_tokens=max_new_tokens, do_sample=False, assistant_model=drafter,
                evospec_config=config, evospec_session=session, evospec_stats=stats,
            )  # fmt: skip
        seconds += time.perf_counter() - start
        outputs.append(out)
    return outputs, seconds, stats


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
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
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
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # warm-up: first-call costs (shortlist build, semantic table load) out of the timings
    warm = domain_prompt(tokenizer, "code", 16)
    run(target, drafter, [warm], config, EvoSpecSession(drafter, alignment, online=False), 8)

    results = {}
    for name in args.scenarios.split(","):
        prompts = [domain_prompt(tokenizer, d, args.prompt_tokens) for d in SCENARIOS[name]]
        reference, plain_s, _ = run(target, drafter, prompts, config, None, args.max_new_tokens)
        new_tokens = sum(o.shape[1] - p.shape[1] for o, p in zip(reference, prompts))
        row = {"new_tokens": new_tokens, "plain_tokens_per_s": round(new_tokens / plain_s, 2)}
        for label, online in (("off", False), ("on", True)):
            session = EvoSpecSession(drafter, alignment, online=online)
            outputs, seconds, stats = run(target, drafter, prompts, config, session, args.max_new_tokens)
            for i, (got, expected) in enumerate(zip(outputs, reference)):
                if not torch.equal(got, expected):
                    raise SystemExit(f"MISMATCH: {name} prompt {i} with alignment {label} differs from plain greedy")
            s = session.stats
            if online:
                row["agreement_before"] = round(agreement(drafter, outputs, prompts), 4)
                with session.applied():
                    row["agreement_after"] = round(agreement(drafter, outputs, prompts), 4)
            row[label] = {
                "tokens_per_s": round(new_tokens / seconds, 2),
                "tau": round(stats.mean_accepted_length, 3),
                "acceptance_rate": round(stats.acceptance_rate, 3),
                "accepted_per_round": stats.accepted_per_round,
                "updates": s.updates,
                "rollbacks": s.rollbacks,
                "update_ms_median": sorted(s.update_ms)[len(s.update_ms) // 2] if s.update_ms else None,
                "update_s_total": round(sum(s.update_ms) / 1e3, 2),
                "losses": s.losses,
            }
        results[name] = row
        print(
            f"{name}: plain {row['plain_tokens_per_s']} tok/s | off {row['off']['tokens_per_s']} tok/s tau "
            f"{row['off']['tau']} | on {row['on']['tokens_per_s']} tok/s tau {row['on']['tau']} "
            f"({row['on']['updates']} updates, {row['on']['update_ms_median']} ms each, {row['on']['rollbacks']} rollbacks); "
            f"agreement on this text {row['agreement_before']} -> {row['agreement_after']}",
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
        for label, style in (("off", "--"), ("on", "-")):
            accepted = torch.tensor(row[label]["accepted_per_round"], dtype=torch.float32) + 1
            kernel = torch.ones(1, 1, min(window, len(accepted))) / min(window, len(accepted))
            smooth = torch.nn.functional.conv1d(accepted[None, None], kernel)[0, 0]
            ax.plot(range(len(smooth)), smooth.tolist(), style, label=f"alignment {label}")
        ax.set_title(name)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel(f"tau (running mean of {window} rounds)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
