"""Peak memory and time per update of online alignment: evospec_hf's top-k KD against full-vocabulary KD.

    python scripts/bench_online_memory.py --checkpoint checkpoints/gemma-3-270m-drafter-l2

Each variant runs in a fresh process (so no allocator cache carries over): load the target and the drafter, run one
warm-up `generate` with evospec_hf, then reset the kernel's peak-RSS counter (`/proc/self/clear_refs`) and run the
measured `generate` with an `EvoSpecSession`:

- `no learning`: a session with `online=False` (drafting alone: the reference);
- `top-k KD` (evospec_hf): the replay buffer keeps the target's top-k logits per verified position, and the loss
  runs the drafter's softmax over the batch's top-k ids;
- `full KD` (the standard baseline): the replay buffer keeps the target's full logits rows, and the loss computes
  full-vocabulary drafter logits and their gradients.

Both learning variants use the same adapter, batch, window, replay size and cadence. Reported: peak RSS above the
RSS before the call (what the call added), the replay buffer's own bytes, and the median time per update.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def worker(args) -> dict:
    import torch

    import evospec_hf
    from evospec_hf import EvoSpecConfig, EvoSpecDrafter, EvoSpecSession, OnlineAlignmentConfig
    from evospec_hf.data import load_domain_corpus

    target, tokenizer = evospec_hf.load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=target, merge_adapter=False)
    text = next(r["text"] for r in load_domain_corpus("code", "heldout") if len(r["text"]) > 2000)
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.prompt_tokens]
    config = EvoSpecConfig(shortlist="static+context", num_draft_tokens=4)
    alignment = OnlineAlignmentConfig(
        update_every=1, batch_size=args.batch_size, replay_size=args.replay_size, min_replay=min(16, args.replay_size),
        kd=args.kd or "topk", learn="in-loop", governor=False,  # what one call's updates cost, inside it
    )
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, assistant_model=drafter, evospec_config=config)
    target.generate(input_ids, evospec_session=EvoSpecSession(drafter, alignment, online=False), **common)  # warm-up

    session = EvoSpecSession(drafter, alignment, online=args.kd is not None)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    target.generate(input_ids, evospec_session=session, **common)
    peak = _status("VmHWM")
    replay = session._state.replay
    replay_bytes = sum(t.nbytes for record in replay for t in record.values() if isinstance(t, torch.Tensor))
    update_ms = sorted(session.stats.update_ms)
    return {
        "added_peak_mb": round((peak - before) / 2**20, 1),
        "rss_before_mb": round(before / 2**20, 1),
        "replay_records": len(replay),
        "replay_mb": round(replay_bytes / 2**20, 2),
        "updates": session.stats.updates,
        "update_ms_median": update_ms[len(update_ms) // 2] if update_ms else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-drafter-l2")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--replay-size", type=int, default=128)
    parser.add_argument("--kd", choices=["topk", "full"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = {}
    for label, kd in (("no learning", None), ("top-k KD (evospec_hf)", "topk"), ("full KD (baseline)", "full")):
        command = [sys.executable, __file__, "--worker", "--checkpoint", args.checkpoint,
                   "--prompt-tokens", str(args.prompt_tokens), "--max-new-tokens", str(args.max_new_tokens),
                   "--batch-size", str(args.batch_size), "--replay-size", str(args.replay_size)]  # fmt: skip
        if kd:
            command += ["--kd", kd]
        print(f"running {label} ...", flush=True)
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows[label] = json.loads(out.strip().splitlines()[-1])
    base = rows["no learning"]["added_peak_mb"]
    print(f"\n{args.max_new_tokens} new tokens, one update per round, batch {args.batch_size}, replay {args.replay_size}")
    print("| variant | peak added by the call (MB) | learning's share (MB) | replay buffer (MB) | updates | ms/update |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in rows.items():
        share = "" if label == "no learning" else f"{r['added_peak_mb'] - base:.1f}"
        print(f"| {label} | {r['added_peak_mb']} | {share} | {r['replay_mb']} | {r['updates']} | {r['update_ms_median'] or ''} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
