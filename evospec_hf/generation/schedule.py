"""`CostAwareLength`: each round's draft length, chosen for tokens per second (`draft_schedule="cost"`).

A round with k drafts costs k drafter steps plus one verification over k + 1 positions, and yields on average
`1 + a + a^2 + ... + a^k` tokens when each draft is accepted with probability `a` (the last term is the target's own
token). The best k is where that ratio peaks, and it depends on things only a measurement knows: the drafter's
acceptance on this text, and what a verification over k + 1 positions costs on this machine. On a CPU that cost is
a step function of k (BLAS switches kernels by row count; see `evospec_hf/ops/verify_head.py`), so no fixed rule
fits every machine.

The schedule measures both as it goes:

- acceptance per draft source (the drafter, the context lookup): decayed counts of accepted drafts and of
  rejections, the maximum-likelihood estimate of `a` under a geometric model, starting from one of each;
- verification seconds per k: a moving average of the measured rounds, kept with the target across `generate`
  calls (a property of the model and the machine, not of the text);
- drafter seconds per step: a moving average.

A k never measured is assumed to cost what the nearest shorter measured k costs. That is optimistic, so the
schedule tries it once, and from then on it knows.
"""

from __future__ import annotations


class CostAwareLength:
    """Chooses draft lengths that maximise expected tokens per second.

    Args:
        verify_seconds: `{k: seconds}` table of verification costs, shared across calls on one target (filled here).
        decay: weight of the past in the acceptance counts, per round of the same source.
        smoothing: weight of the past in the moving averages of seconds.
    """

    def __init__(self, verify_seconds: dict | None = None, decay: float = 0.9, smoothing: float = 0.7):
        self.verify_seconds = {} if verify_seconds is None else verify_seconds
        self.decay, self.smoothing = decay, smoothing
        self.counts: dict[str, list[float]] = {}  # source -> [accepted, rejections]
        self.step_seconds: dict[str, float] = {}  # source -> seconds per drafted token (absent: free, the lookup)

    def acceptance(self, source: str) -> float:
        accepted, rejected = self.counts.get(source, (1.0, 1.0))
        return accepted / (accepted + rejected)

    def choose(self, source: str, upper: int, start: int | None = None) -> int:
        """The draft length in `1..upper` with the most expected tokens per second for `source` (`start`, or
        `upper`, while no verification has been measured)."""
        if upper <= 1 or not self.verify_seconds:
            return max(1, min(upper, start or upper))
        a, step = self.acceptance(source), self.step_seconds.get(source, 0.0)
        best, best_rate, expected, power = 1, -1.0, 1.0, 1.0
        for k in range(1, upper + 1):
            power *= a
            expected += power  # 1 + a + ... + a^k
            rate = expected / (k * step + self._verify_cost(k))
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def _verify_cost(self, k: int) -> float:
        if k in self.verify_seconds:
            return self.verify_seconds[k]
        shorter = [j for j in self.verify_seconds if j < k]
        return self.verify_seconds[max(shorter) if shorter else min(self.verify_seconds)]

    def observe(
        self, source: str, drafted: int, accepted: int, verify_seconds: float | None, draft_seconds: float
    ) -> None:
        """One verified round of `source`: its drafts, how many were accepted, and what it cost (`verify_seconds`
        None: not a round's cost, e.g. the first verification of a call, which also reads the prompt)."""
        if drafted <= 0:
            return
        counts = self.counts.setdefault(source, [1.0, 1.0])
        counts[0] = self.decay * counts[0] + accepted
        counts[1] = self.decay * counts[1] + (1.0 if accepted < drafted else 0.0)
        if verify_seconds is not None:
            self.verify_seconds[drafted] = self._smooth(self.verify_seconds.get(drafted), verify_seconds)
        if source == "drafter":
            self.step_seconds[source] = self._smooth(self.step_seconds.get(source), draft_seconds / drafted)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else self.smoothing * old + (1.0 - self.smoothing) * new
