"""Online learning on streams of calls, as a person uses a session: a prompt, the answer, a pause to read it, the next.

    python benchmarks/learning_streams.py --out results/streams

Three streams of held-out prompts (`evospec_hf.bench.prompts`: texts no shipped drafter, router or list was trained
on): `code` and `law` (20 texts each, one domain), and `mixed` (24 prompts, switching topic every call: chat,
questions, math, translation, summaries, code, law, medical in turn). Each stream runs once per mode, each mode with
a fresh `EvoSpecSession` on the same drafter:

- `off`: the session never learns;
- `in-loop`: updates inside the decoding loop (`learn="in-loop"`), no pull to the
  starting adapter, no teaching of rejected positions, no governor;
- `between-calls`: the defaults: a call only drafts; its updates run in the background during the pause after it,
  pulled to the starting adapter, rejected positions taught, the governor deciding whether to keep learning.

The modes run side by side: call i of each mode, in an order that rotates with i, each call followed by the pause
(`--pause`, 5 s: a person reading the answer; `between-calls` learns then). So a slow spell of the machine (this CPU's
speed drifts by several percent over minutes) hits every mode alike. Every mode's output must equal `off`'s (which
is plain greedy's, as the test suite checks): the run stops otherwise.

Writes `streams.json` (per call: seconds, new tokens, rounds, tau, updates during and after it, the time it waited
for background learning, the governor's verdicts), `streams.md` (a table) and `streams.png` (latency and tau per
call).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.bench.prompts import builtin_prompts

MIXED_SETS = ("chat", "qa", "math", "translation", "summary", "code", "law", "medical")
MODES = ("off", "in-loop", "between-calls")


def stream_prompts(tokenizer, name: str, count: int) -> list[torch.Tensor]:
    if name != "mixed":
        return [p["input_ids"] for p in builtin_prompts(tokenizer, sets=[name], per_set=count)]
    per_set = -(-count // len(MIXED_SETS))
    by_set = [builtin_prompts(tokenizer, sets=[s], per_set=per_set) for s in MIXED_SETS]
    return [by_set[i % len(MIXED_SETS)][i // len(MIXED_SETS)]["input_ids"] for i in range(per_set * len(MIXED_SETS))]


def alignment(mode: str, base: dict) -> OnlineAlignmentConfig:
    if mode == "in-loop":  # updates inside the loop
        return OnlineAlignmentConfig(**base, learn="in-loop", anchor=0.0, teach_rejected=False, governor=False)
    return OnlineAlignmentConfig(**base)


def one_call(target, drafter, input_ids, config, session, max_new_tokens, number: int) -> tuple:
    stats = session.stats
    before = {"updates": stats.updates, "idle": stats.idle_updates, "verdicts": len(stats.governor)}
    call_stats = DraftStats()
    start = time.perf_counter()
    out = target.generate(
        input_ids, max_new_tokens=max_new_tokens, do_sample=False, assistant_model=drafter, evospec_config=config,
        evospec_session=session, evospec_stats=call_stats,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return out, {
        "call": number, "seconds": round(seconds, 3), "new_tokens": out.shape[1] - input_ids.shape[1],
        "rounds": call_stats.rounds, "accepted": call_stats.accepted, "tau": round(call_stats.mean_accepted_length, 3),
        "updates_in_call": session.stats.updates - before["updates"], "blocked_ms": session.stats.blocked_ms[-1],
        "before": before,
    }  # fmt: skip


def run_stream(target, drafter, prompts, config, sessions: dict, max_new_tokens, pause) -> tuple[dict, dict]:
    """The stream's calls, the modes side by side: call i of every mode, in an order that rotates with i, each
    followed by the pause. Side by side, a slow spell of the machine hits every mode alike."""
    modes = list(sessions)
    outputs, calls = {m: [] for m in modes}, {m: [] for m in modes}
    for i, input_ids in enumerate(prompts):
        for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
            out, call = one_call(target, drafter, input_ids, config, sessions[mode], max_new_tokens, i + 1)
            outputs[mode].append(out)
            calls[mode].append(call)
            if pause:
                time.sleep(pause)
        for mode in modes:  # what happened after the call: the pauses are over
            call, stats = calls[mode][-1], sessions[mode].stats
            before = call.pop("before")
            call["updates_after"] = stats.idle_updates - before["idle"]
            call["learning"] = sessions[mode].learning
            call["verdicts"] = stats.governor[before["verdicts"] :]
        print(
            f"  call {i + 1}: " + " | ".join(
                f"{m} {calls[m][-1]['seconds']:.2f} s tau {calls[m][-1]['tau']} "
                f"({calls[m][-1]['updates_in_call']} in / {calls[m][-1]['updates_after']} after)"
                for m in modes
            ),
            flush=True,
        )  # fmt: skip
    for session in sessions.values():
        session.wait_learning()
    return outputs, calls


def summary(calls: list, last: int) -> dict:
    tail = calls[-last:]
    rounds = sum(c["rounds"] for c in tail)
    return {
        "mean_seconds": round(sum(c["seconds"] for c in calls) / len(calls), 3),
        "tokens_per_s": round(sum(c["new_tokens"] for c in calls) / sum(c["seconds"] for c in calls), 2),
        "tau": round(sum(c["accepted"] + c["rounds"] for c in calls) / sum(c["rounds"] for c in calls), 3),
        "end_tau": round((sum(c["accepted"] for c in tail) + rounds) / rounds, 3),
        "end_seconds": round(sum(c["seconds"] for c in tail) / len(tail), 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-feature-l1")
    parser.add_argument("--streams", default="code,law,mixed")
    parser.add_argument("--prompts", type=int, default=20, help="per stream (mixed: rounded up to a multiple of 8)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--shortlist", default="static")
    parser.add_argument("--shortlist-size", type=int, default=16384)
    parser.add_argument("--lookup-tokens", type=int, default=0, help="prompt lookup drafts (0: the drafter only)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds after each call (a person reading)")
    parser.add_argument("--update-every", type=int, default=4)
    parser.add_argument("--trainable-layers", type=int, default=None)
    parser.add_argument("--end-calls", type=int, default=5, help="the calls that make a stream's end figures")
    parser.add_argument("--out", default="results/streams")
    args = parser.parse_args()

    drafter_config = EvoSpecDrafter.read_config(args.checkpoint)
    target, tokenizer = evospec_hf.load_target(drafter_config["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=target, merge_adapter=False)
    # the same verification in every mode: a learning session does not use the tuned head (`fast_verify_head`),
    # whose timing trials would make a seeded session's teacher logits differ run to run
    config = EvoSpecConfig(
        shortlist=args.shortlist, shortlist_size=args.shortlist_size, lookup_tokens=args.lookup_tokens,
        fast_verify_head=False,
    )
    base = {"update_every": args.update_every, "trainable_layers": args.trainable_layers}
    modes = args.modes.split(",")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    warm = builtin_prompts(tokenizer, sets=["general"], per_set=1, prompt_tokens=16)[0]["input_ids"]
    # first-call costs (shortlist build, head packing) out of the timings, without teaching any session
    target.generate(
        warm, max_new_tokens=8, do_sample=False, assistant_model=drafter, evospec_config=config,
        evospec_session=EvoSpecSession(drafter, online=False),
    )  # fmt: skip
    results = {}
    for name in args.streams.split(","):
        prompts = stream_prompts(tokenizer, name, args.prompts)
        print(f"{name}: {len(prompts)} calls per mode ({', '.join(modes)})", flush=True)
        sessions = {mode: EvoSpecSession(drafter, alignment(mode, base), online=mode != "off") for mode in modes}
        outputs, calls = run_stream(target, drafter, prompts, config, sessions, args.max_new_tokens, args.pause)
        results[name] = {}
        for mode in modes:
            for i, (got, expected) in enumerate(zip(outputs[mode], outputs[modes[0]])):
                if not torch.equal(got, expected):
                    raise SystemExit(f"MISMATCH: {name} call {i + 1} in mode {mode} differs from {modes[0]}")
            s = sessions[mode].stats
            results[name][mode] = {
                "calls": calls[mode], **summary(calls[mode], args.end_calls), "updates": s.updates,
                "idle_updates": s.idle_updates, "yielded": s.yielded, "rollbacks": s.rollbacks, "governor": s.governor,
                "update_ms_median": sorted(s.update_ms)[len(s.update_ms) // 2] if s.update_ms else None,
            }  # fmt: skip
            print(f"  {mode}: {results[name][mode] | {'calls': '...', 'governor': len(s.governor)}}", flush=True)

    meta = {
        "checkpoint": args.checkpoint, "config": config.to_dict(), "max_new_tokens": args.max_new_tokens,
        "pause": args.pause, "end_calls": args.end_calls, "threads": torch.get_num_threads(),
        "alignment": {mode: alignment(mode, base).to_dict() for mode in modes if mode != "off"},
    }  # fmt: skip
    (out_dir / "streams.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        (
            f"| stream | mode | calls | mean s/call | vs off | tok/s | tau | tau, last {args.end_calls} calls | "
            "vs off | updates (in calls / between) | waited for learning (ms, max) | governor |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]

    def vs(a: float, b: float) -> str:
        return f"{a / b - 1:+.1%}"

    for name, row in results.items():
        off = row.get("off")
        for mode, r in row.items():
            verdict = "on" if not r["governor"] else (
                "on" if r["governor"][-1]["learning"] else
                f"off after call {next(v['call'] for v in r['governor'] if not v['learning'])}"
                f" ({'learned' if r['governor'][-1]['use_learned'] else 'shipped'} adapter kept)"
            )  # fmt: skip
            if mode != "between-calls":
                verdict = ""
            lines.append(
                f"| {name} | {mode} | {len(r['calls'])} | {r['mean_seconds']} | "
                f"{vs(r['mean_seconds'], off['mean_seconds']) if off else ''} | {r['tokens_per_s']} | {r['tau']} | "
                f"{r['end_tau']} | {vs(r['end_tau'], off['end_tau']) if off else ''} | "
                f"{r['updates'] - r['idle_updates']} / {r['idle_updates']} | "
                f"{max(c['blocked_ms'] for c in r['calls'])} | {verdict} |"
            )
    (out_dir / "streams.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out_dir / "streams.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.5 * len(results), 6), squeeze=False, sharex="col")
    styles = {"off": "k--", "in-loop": "r:", "between-calls": "b-"}
    for col, (name, row) in enumerate(results.items()):
        for mode, r in row.items():
            x = [c["call"] for c in r["calls"]]
            axes[0][col].plot(x, [c["seconds"] for c in r["calls"]], styles.get(mode, "-"), label=mode)
            axes[1][col].plot(x, [c["tau"] for c in r["calls"]], styles.get(mode, "-"), label=mode)
        axes[0][col].set_title(name)
        axes[1][col].set_xlabel("call")
    axes[0][0].set_ylabel("latency per call (s)")
    axes[1][0].set_ylabel("tau")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
