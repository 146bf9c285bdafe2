"""Why learning between calls pays or not: a stream's verification records, replayed under many learning settings.

    python scripts/replay_learning_stream.py --stream code --out results/streams/replay-code

Generating is what makes `scripts/evaluate_learning_streams.py` slow (the target verifies every round), and what is
learned between calls depends only on what the calls recorded. So this script generates the stream once, with a
session that records and never learns, and keeps each call's records (the target's top-k logits at the verified
positions) and output. Then, for each setting, it replays the stream without the target: before call k's records
are learned, the learned adapter and the starting ("shipped") adapter are compared on call k's output, teacher-forced
(the governor's measure: how often each one's greedy token is the target's); then the updates call k earned run on
the replay buffer. A setting pays when the learned adapter beats the shipped one on the calls it has not seen.

Settings: `--lrs`, `--anchors`, `--teach-rejected` (both values by default) and `--pause-updates` (how many updates
a pause runs, as a multiple of what the call earned). Writes `replay.json` and `replay.md`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from evaluate_learning_streams import stream_prompts  # the same folder: Python puts it on the path

import evospec_hf
from evospec_hf import EvoSpecConfig, EvoSpecDrafter, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.evolve.online import AlignerState, AlignmentStats, OnlineAligner
from evospec_hf.models.drafter import feature_layers_of
from evospec_hf.ops import logit_transform
from evospec_hf.utils import unwrap_peft


def record_stream(target, drafter, prompts, config, max_new_tokens) -> list[dict]:
    """Each call's new replay records, output and first generated index, from a session that never learns."""
    recorder = EvoSpecSession(drafter, OnlineAlignmentConfig(replay_size=10**6, updates_per_pause=0, governor=False))
    calls = []
    for input_ids in prompts:
        seen = len(recorder._state.replay)
        target.generate(
            input_ids, max_new_tokens=max_new_tokens, do_sample=False, assistant_model=drafter,
            evospec_config=config, evospec_session=recorder,
        )  # fmt: skip
        aligner = recorder._aligner
        calls.append({
            "records": list(recorder._state.replay)[seen:], "sequence": aligner.last_sequence,
            "features": aligner.last_features, "first": input_ids.shape[1],
        })  # fmt: skip
        print(f"  recorded call {len(calls)}: {len(calls[-1]['records'])} rounds", flush=True)
    return calls


def lora(model) -> dict:
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def replay(drafter, calls, settings: OnlineAlignmentConfig, pause_updates: float, shipped_hits: list) -> dict:
    """One setting over the recorded stream; returns per-call agreements of the learned and shipped adapters."""
    model = unwrap_peft(drafter)
    params = lora(drafter)
    initial = {name: p.detach().clone() for name, p in params.items()}
    head = drafter.get_output_embeddings()
    aligner = OnlineAligner(
        model.base_model, head.weight.detach(), None if head.bias is None else head.bias.detach(),
        logit_transform(drafter), params, settings, AlignerState(settings), AlignmentStats(),
        feature_drafter=model if feature_layers_of(model) is not None else None, anchor=initial,
    )  # fmt: skip
    learned = []
    try:
        for p in params.values():
            p.requires_grad_(True)
        for call in calls:
            learned.append(aligner.agreement(call["sequence"], call["first"], call["features"]))
            aligner.state.replay.extend(call["records"])
            earned = len(call["records"]) // settings.update_every
            for _ in range(round(earned * pause_updates)):
                aligner.update()
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(initial[name])
                p.requires_grad_(False)
    rows = [
        {"call": i + 1, "learned": h / max(n, 1), "shipped": s / max(n2, 1), "positions": n}
        for i, ((h, n), (s, n2)) in enumerate(zip(learned, shipped_hits))
    ]
    later = rows[1:]
    return {
        "calls": rows,
        "updates": aligner.stats.updates,
        "rollbacks": aligner.stats.rollbacks,
        "gain": sum(r["learned"] - r["shipped"] for r in later) / max(len(later), 1),
        "gain_last5": sum(r["learned"] - r["shipped"] for r in rows[-5:]) / 5,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-feature-l1")
    parser.add_argument("--stream", default="code")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lrs", default="5e-4,1e-4")
    parser.add_argument("--anchors", default="0,0.05,0.2")
    parser.add_argument("--teach-rejected", default="true,false")
    parser.add_argument("--pause-updates", default="1,4")
    parser.add_argument("--out", default="results/streams/replay")
    args = parser.parse_args()

    drafter_config = EvoSpecDrafter.read_config(args.checkpoint)
    target, tokenizer = evospec_hf.load_target(drafter_config["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=target, merge_adapter=False)
    config = EvoSpecConfig(shortlist="static", shortlist_size=16384, lookup_tokens=0, fast_verify_head=False)
    prompts = stream_prompts(tokenizer, args.stream, args.prompts)
    print(f"recording {len(prompts)} calls of the {args.stream} stream", flush=True)
    calls = record_stream(target, drafter, prompts, config, args.max_new_tokens)

    # the shipped adapter's agreement on each call, once (the drafter holds its own weights)
    probe = OnlineAligner(
        unwrap_peft(drafter).base_model, drafter.get_output_embeddings().weight.detach(), None, None, lora(drafter),
        OnlineAlignmentConfig(), AlignerState(OnlineAlignmentConfig()), AlignmentStats(),
        feature_drafter=unwrap_peft(drafter) if feature_layers_of(unwrap_peft(drafter)) is not None else None,
    )  # fmt: skip
    shipped = [probe.agreement(c["sequence"], c["first"], c["features"]) for c in calls]

    results = []
    grid = itertools.product(
        [float(x) for x in args.lrs.split(",")], [float(x) for x in args.anchors.split(",")],
        [x == "true" for x in args.teach_rejected.split(",")], [float(x) for x in args.pause_updates.split(",")],
    )  # fmt: skip
    for lr, anchor, teach, pause in grid:
        settings = OnlineAlignmentConfig(lr=lr, anchor=anchor, teach_rejected=teach)
        row = replay(drafter, calls, settings, pause, shipped)
        row["setting"] = {"lr": lr, "anchor": anchor, "teach_rejected": teach, "pause_updates": pause}
        results.append(row)
        print(
            f"lr {lr} anchor {anchor} teach_rejected {teach} x{pause}: {row['updates']} updates, agreement gain "
            f"over the shipped adapter on unseen calls {row['gain']:+.2%} (last 5 calls {row['gain_last5']:+.2%})",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps({"stream": args.stream, "results": results}, indent=1))
    shipped_mean = sum(h / max(n, 1) for h, n in shipped) / len(shipped)
    lines = [
        f"Stream `{args.stream}`, {len(calls)} calls; the shipped adapter's agreement on them: {shipped_mean:.1%}.",
        "",
        "| lr | anchor | teach rejected | updates per pause | updates | gain, calls 2+ | gain, last 5 calls |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["setting"]
        lines.append(
            f"| {s['lr']:g} | {s['anchor']:g} | {'yes' if s['teach_rejected'] else 'no'} | {s['pause_updates']:g}x | "
            f"{r['updates']} | {r['gain']:+.2%} | {r['gain_last5']:+.2%} |"
        )
    (out / "replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
