"""`SourceStreamer`: streams evospec_hf's output with where each token came from.

transformers' assisted loop hands a streamer each round's new tokens at once, right after the verification: the
drafts the target accepted, then the target's own token. `DraftStats` records each round's draft source when the
drafts go to the target (`sources_per_round`), before that hand-over, so the streamer can label every token:

- "drafted": a draft of the drafter that the target accepted;
- "copied": a draft copied from the context (`lookup_tokens`) that the target accepted;
- "target": the target's own token, the one after a round's accepted drafts (where a draft was rejected, it is the
  target's correction).

    stats = DraftStats()
    streamer = SourceStreamer(tokenizer, stats)
    thread = Thread(target=model.generate, kwargs=dict(..., assistant_model=drafter, evospec_config=config,
                                                      evospec_stats=stats, streamer=streamer))
    thread.start()
    for pieces in streamer:          # one list of (text, label) per round
        ...
"""

from __future__ import annotations

import queue

from transformers.generation.streamers import BaseStreamer

from .stats import DraftStats

LABELS = ("drafted", "copied", "target")
_LABEL_OF_SOURCE = {"drafter": "drafted", "lookup": "copied"}


class SourceStreamer(BaseStreamer):
    """A streamer for `generate(..., streamer=...)` whose items are a round's `(text, label)` pieces, one per token.

    Args:
        tokenizer: decodes the tokens (special tokens skipped).
        stats: the `DraftStats` passed to the same call as `evospec_stats`.
        timeout: seconds the iterator waits for the next round before `queue.Empty` (None: forever).

    After the call, `tokens` and `labels` hold every new token and its label, and `"".join(text for text, _ in
    pieces)` over all items is the decoded output.
    """

    def __init__(self, tokenizer, stats: DraftStats, timeout: float | None = None):
        self.tokenizer, self.stats, self.timeout = tokenizer, stats, timeout
        self.tokens: list[int] = []
        self.labels: list[str] = []
        self._prompt_pending = True
        self._read: list[int] = []  # the tokens the reader has decoded
        self._emitted = ""  # their text handed out so far
        self._queue: queue.Queue = queue.Queue()
        self._done = object()

    # -- called by `generate`, inside its round loop: record and hand over, no decoding here ---------------------
    def put(self, value) -> None:
        ids = value.flatten().tolist()
        if self._prompt_pending:  # `generate` streams the prompt first: not output
            self._prompt_pending = False
            return
        source = self.stats.sources_per_round[-1] if self.stats.sources_per_round else ""
        drafted = _LABEL_OF_SOURCE.get(source, "target")
        labels = [drafted] * (len(ids) - 1) + ["target"]  # the accepted drafts, then the target's own token
        self.tokens += ids
        self.labels += labels
        self._queue.put((ids, labels))

    def end(self) -> None:
        self._queue.put(self._done)

    # -- the reader's side: decoding ---------------------------------------------------------------------------
    def _pieces(self, ids: list[int], labels: list[str]) -> list[tuple[str, str]]:
        pieces = []
        for token, label in zip(ids, labels):
            self._read.append(token)
            text = self.tokenizer.decode(self._read, skip_special_tokens=True)
            text = text.rstrip("\ufffd")  # a character split across tokens: wait for its last byte
            piece = text[len(self._emitted) :] if text.startswith(self._emitted) else ""
            self._emitted += piece
            pieces.append((piece, label))
        return pieces

    def __iter__(self):
        return self

    def __next__(self) -> list[tuple[str, str]]:
        item = self._queue.get(timeout=self.timeout)
        if item is not self._done:
            return self._pieces(*item)
        tail = self.tokenizer.decode(self._read, skip_special_tokens=True)[len(self._emitted) :]
        if tail:  # text held back at the end (an unfinished character) that never resolved
            self._emitted += tail
            self._queue.put(self._done)
            return [(tail, self.labels[-1] if self.labels else "target")]
        raise StopIteration
