"""`LearningGovernor`: whether a session's online learning pays, decided call by call from measurements.

After each call, the adapter the call drafted with ("learned") and the session's starting adapter ("shipped") are
compared on that call's own output, teacher-forced: how often each one's greedy token is the token the target
produced. Neither had learned from that text (between calls, the updates on it come later; in the loop, the
adapter is the one from the call's start), so the comparison says what learning bought on new text.

From the two agreements `a`, the expected tokens per round of a drafter offering `k` tokens a round (the mean of
the call's drafter rounds) is `(1 - a^(k+1)) / (1 - a)` (each draft accepted independently with probability `a`).
The call's drafter rounds would have been `tau_learned / tau_shipped` times as many with the shipped adapter, so
learning saved `drafting seconds x drafter share x (tau_learned / tau_shipped - 1)` (negative when the learned
adapter is worse). The drafter share is the fraction of the call's rounds that the drafter drafted: rounds copied
from the context (prompt lookup) are the same whichever adapter is in. Its cost is the time the call spent on
learning: updates inside the loop, and waiting for background learning to yield.

Once `calls` calls were drafted with a learned adapter, learning stays on only while the saved seconds over the last
`calls` such calls exceed the cost. When it stops, the session keeps drafting with the learned adapter if its gain
over those calls was positive, and goes back to the shipped adapter otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..utils import expected_tokens_per_round


@dataclass
class CallMeasure:
    """One call, as the governor sees it."""

    seconds: float  # the call's wall time
    waited: float  # seconds of it spent on learning (updates inside the loop, waiting for background learning)
    drafted: float  # tokens offered to the target per round (mean)
    learned: tuple  # (hits, positions) of the adapter the call drafted with, on the call's output
    shipped: tuple  # (hits, positions) of the starting adapter, on the same positions
    drafter_share: float = 1.0  # the fraction of the call's rounds the drafter drafted (the rest were copies)

    @classmethod
    def of_call(
        cls, seconds: float, blocked: float, update_ms: list, rounds: list, learned: tuple, shipped: tuple
    ) -> CallMeasure:
        """A call's measure from what its session recorded: its wall time, the seconds it waited for background
        learning (`blocked`), its in-loop updates (`update_ms`), its rounds as `(tokens drafted, copied from the
        context)` pairs, and the two adapters' `(hits, positions)` on its output."""
        drafted = [d for d, copied in rounds if not copied]  # the adapter's own rounds (copies do not change)
        waited = blocked + sum(update_ms) / 1e3
        share = len(drafted) / max(len(rounds), 1)
        return cls(seconds, waited, sum(drafted) / max(len(drafted), 1), learned, shipped, share)


@dataclass
class Verdict:
    call: int  # the session's call number (1-based)
    positions: int  # the call's output positions both adapters were compared on
    agreement_learned: float
    agreement_shipped: float
    saved_s: float
    cost_s: float
    drafter_share: float  # the fraction of the call's rounds the drafter drafted (the rest were copies)
    learning: bool  # learning stays on after this call
    use_learned: bool  # the next calls draft with the learned adapter (else the shipped one)

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


class LearningGovernor:
    """Keeps learning on while it pays (see the module's docstring). `observe` takes each measured call."""

    def __init__(self, calls: int):
        self.calls = calls
        self.learning, self.use_learned = True, True
        self._window: list[tuple[float, float]] = []  # (saved, cost) of the calls drafted with a learned adapter

    def observe(self, call: int, measure: CallMeasure) -> Verdict:
        learned = measure.learned[0] / max(measure.learned[1], 1)
        shipped = measure.shipped[0] / max(measure.shipped[1], 1)
        ratio = expected_tokens_per_round(learned, measure.drafted) / expected_tokens_per_round(shipped, measure.drafted)
        saved = max(measure.seconds - measure.waited, 0.0) * measure.drafter_share * (ratio - 1)
        self._window = (self._window + [(saved, measure.waited)])[-self.calls :]
        if self.learning and len(self._window) == self.calls:
            gain = sum(s for s, _ in self._window)
            if gain <= sum(c for _, c in self._window):
                self.learning, self.use_learned = False, gain > 0
        return Verdict(
            call, measure.learned[1], learned, shipped, saved, measure.waited, measure.drafter_share, self.learning,
            self.use_learned,
        )  # fmt: skip
