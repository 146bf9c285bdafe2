"""How many tokens a round drafts: one protocol (`DraftLength`), one class per rule (`EvoSpecConfig.draft_schedule`).

- `ConstantLength` ("constant"): always each source's starting length.
- `HeuristicLength` ("heuristic", transformers' own rule): +2 after a round whose drafts were all accepted, -1
  otherwise, per source.
- `CostAwareLength` ("cost", the default): the length with the most expected tokens per second, below.
- `EntropyStop` (`EvoSpecConfig.entropy_stop`, AdaSD's lossless half): wraps any of these; within the length the
  wrapped rule chose, a round stops before a drafted token whose draft entropy is above a learned threshold.

Each source has a starting length and an upper bound (`DraftLength.limits`): the drafter starts at
`num_draft_tokens` and stays within `max_draft_tokens`; the context lookup copies up to `lookup_tokens`. A rule
learns from the verified rounds the candidate generator passes it (`verified`) and never reads the vocabulary.
The room left before `max_length` is the generator's business, not the rule's.

## The "cost" rule

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

from typing import Protocol

from ..utils import expected_tokens_per_round
from .rounds import Draft, RoundResult


class DraftLength(Protocol):
    """A draft length rule. `limits`: `{source name: (starting length, upper bound)}`."""

    limits: dict

    def length(self, source: str) -> int:
        """How many tokens `source` may draft this round (at least 1, or 0 for a row of a batch where drafting does
        not pay; at most its upper bound)."""

    def prefer(self, draft: Draft) -> bool:
        """Whether to verify `draft` (a source's proposal) rather than ask the next source (the drafter)."""

    def verified(self, result: RoundResult) -> None:
        """The round was verified: learn from it."""


def source_limits(config) -> dict:
    """`{source: (start, upper)}` of an `EvoSpecConfig`: the drafter's, and the context lookup's."""
    return {
        "drafter": (config.num_draft_tokens, config.max_draft_tokens),
        "lookup": (config.lookup_tokens, config.lookup_tokens),
    }


def draft_length_rule(config, verify_seconds: dict | None = None, in_batch: bool = False) -> DraftLength:
    """The rule `config.draft_schedule` names (inside an `EntropyStop` with `config.entropy_stop`).
    `verify_seconds`: the target's `{k: seconds}` table for "cost"; `in_batch`: for a row of a batched call (see
    `CostAwareLength`)."""
    limits = source_limits(config)
    if config.draft_schedule == "cost":
        rule = CostAwareLength(verify_seconds, limits=limits, in_batch=in_batch)
    elif config.draft_schedule == "heuristic":
        rule = HeuristicLength(limits)
    else:
        rule = ConstantLength(limits)
    return EntropyStop(rule) if config.entropy_stop else rule


class ConstantLength:
    """Every round of a source drafts its starting length; a copy from the context is always taken."""

    def __init__(self, limits: dict):
        self.limits = limits

    def length(self, source: str) -> int:
        return self.limits[source][0]

    def prefer(self, draft: Draft) -> bool:
        return True

    def verified(self, result: RoundResult) -> None:
        pass


class HeuristicLength:
    """transformers' rule, per source: +2 after a round whose drafts were all accepted, else -1, within 1..upper.

    The lookup's length and the drafter's adapt apart, each to its own rounds; both restart at every call.
    """

    def __init__(self, limits: dict):
        self.limits = limits
        self.lengths = {source: start for source, (start, _) in limits.items()}

    def length(self, source: str) -> int:
        return self.lengths[source]

    def prefer(self, draft: Draft) -> bool:
        return True  # a copy from the context is always taken

    def verified(self, result: RoundResult) -> None:
        source = result.draft.source
        if source not in self.lengths or result.drafted == 0:
            return
        upper = self.limits[source][1]
        length = self.lengths[source]
        self.lengths[source] = min(length + 2, upper) if result.accepted == result.drafted else max(1, length - 1)


class CostAwareLength:
    """Chooses draft lengths that maximise expected tokens per second.

    Args:
        verify_seconds: `{k: seconds}` table of verification costs, shared across calls on one target (filled here).
        decay: weight of the past in the acceptance counts, per round of the same source.
        smoothing: weight of the past in the moving averages of seconds.
        limits: `{source: (start, upper)}`, for `length`.
        in_batch: the rule of one row of a batched call. The batched loop keeps `verify_seconds` (a round's
            verification is shared by all rows; `generation/batched.py`, `BatchCosts`), so the rule only reads it,
            and a round may draft nothing (length 0) where no draft pays for the positions it adds to the batch.
    """

    def __init__(
        self,
        verify_seconds: dict | None = None,
        decay: float = 0.9,
        smoothing: float = 0.7,
        limits: dict | None = None,
        in_batch: bool = False,
    ):
        self.limits = limits or {}
        self.in_batch = in_batch
        self.shortest = 0 if in_batch else 1
        self.verify_seconds = {} if verify_seconds is None else verify_seconds
        self.decay, self.smoothing = decay, smoothing
        self.counts: dict[str, list[float]] = {}  # source -> [accepted, rejections]
        self.step_seconds: dict[str, float] = {}  # source -> seconds per drafted token (absent: free, the lookup)

    def length(self, source: str) -> int:
        start, upper = self.limits[source]
        return self.choose(source, upper, start=start)

    def prefer(self, draft: Draft) -> bool:
        """A copy from the context goes to the target only if it promises at least the drafter's tokens per second.

        A copy costs no drafting, but its acceptance depends on how long the matched suffix was: a single matching
        token predicts the next ones far worse than three. So copies are counted per match length, and the copy's
        expected tokens per second at its length is compared with the drafter's best (with the drafter's own
        acceptance and step time). Until the drafter's rounds are measured the copy is taken, as before, and so is
        the first copy from each match length (declined copies teach nothing, so an untried length would never be
        tried once the drafter looks good).
        """
        if draft.source != "lookup" or not self.verify_seconds or "drafter" not in self.step_seconds:
            return True  # not a copy, or the drafter's cost not measured yet
        key = _match_key(draft)
        if key not in self.counts:
            return True  # copies from a match this long never tried in this call: try one, then it knows
        a = self.acceptance(key)
        copy_rate = expected_tokens_per_round(a, len(draft)) / self._verify_cost(len(draft))
        return copy_rate >= self._best("drafter", self.limits["drafter"][1])[1]

    def verified(self, result: RoundResult) -> None:
        # the call's first verification also reads the whole prompt: its time is not a draft length's cost
        verify_seconds = None if result.prefill else result.verify_seconds
        self.observe(result.draft.source, result.drafted, result.accepted, verify_seconds, result.draft.seconds)
        if result.draft.match and result.drafted > 0:  # copies also counted by the length of their match
            self._count(_match_key(result.draft), result.drafted, result.accepted)

    def acceptance(self, source: str) -> float:
        accepted, rejected = self.counts.get(source, (1.0, 1.0))
        return accepted / (accepted + rejected)

    def choose(self, source: str, upper: int, start: int | None = None) -> int:
        """The draft length in `1..upper` with the most expected tokens per second for `source` (`start`, or
        `upper`, while no verification has been measured)."""
        if upper <= 1 or not self.verify_seconds:
            return max(1, min(upper, start or upper))
        return self._best(source, upper)[0]

    def _best(self, source: str, upper: int) -> tuple[int, float]:
        """The length in `1..upper` with the most expected tokens per second for `source`, and that rate."""
        a, step = self.acceptance(source), self.step_seconds.get(source, 0.0)
        rates = [(expected_tokens_per_round(a, k) / (k * step + self._verify_cost(k)), -k) for k in range(self.shortest, upper + 1)]
        rate, k = max(rates)  # the shortest length among equal rates
        return -k, rate

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
        self._count(source, drafted, accepted)
        if verify_seconds is not None and not self.in_batch:
            self.verify_seconds[drafted] = self._smooth(self.verify_seconds.get(drafted), verify_seconds)
        if source == "drafter":
            self.step_seconds[source] = self._smooth(self.step_seconds.get(source), draft_seconds / drafted)

    def _count(self, key: str, drafted: int, accepted: int) -> None:
        counts = self.counts.setdefault(key, [1.0, 1.0])
        counts[0] = self.decay * counts[0] + accepted
        counts[1] = self.decay * counts[1] + (1.0 if accepted < drafted else 0.0)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else self.smoothing * old + (1.0 - self.smoothing) * new


def _match_key(draft: Draft) -> str:
    return f"lookup@{draft.match}"


class EntropyStop:
    """AdaSD's entropy stop around another rule: the wrapped rule picks each round's length, and the drafter stops
    early before a token whose draft distribution is too uncertain to be accepted.

    The threshold has no setting. Every verified drafter round tells, for each proposed token, the entropy of the
    distribution it was drafted from and whether the target accepted it (the drafts up to the first rejection); the
    rule keeps decayed means of the entropies of accepted drafts and of rejected ones, and stops before a token whose
    entropy is above their midpoint. Better drafts on easier text raise the accepted mean and the threshold (longer
    rounds); rejections at lower entropies lower it (shorter rounds). Nothing is stopped before a first rejection.
    A round's first draft is always proposed: with no draft the target's forward yields one token anyway, and the
    first drafts keep measuring entropies the threshold would otherwise cut off.

    The wrapped rule sees the shortened rounds as they are, so the "cost" rule's acceptance, measured on the drafts
    that remain, rises and it allows longer rounds, which the entropy stop then ends where the drafter is unsure.

    Args:
        rule: the draft length rule it wraps (`limits`, `length` and `prefer` are its).
        decay: weight of the past in the two means, per observed draft.
    """

    def __init__(self, rule: DraftLength, decay: float = 0.95):
        self.rule, self.decay = rule, decay
        self.limits = rule.limits
        self.means: dict[bool, float | None] = {True: None, False: None}  # accepted? -> mean entropy

    @property
    def threshold(self) -> float:
        """The entropy (nats) above which a draft is not proposed: infinite until a draft was rejected, and until
        one was accepted the accepted mean is taken as 0 (a certain draft)."""
        accepted, rejected = self.means[True], self.means[False]
        if rejected is None:
            return float("inf")
        return 0.5 * ((accepted or 0.0) + rejected)

    def keep_drafting(self, entropy: float) -> bool:
        """Whether to propose a token drafted from a distribution of this entropy (the drafter asks per token)."""
        return entropy <= self.threshold

    def length(self, source: str) -> int:
        return self.rule.length(source)

    def prefer(self, draft: Draft) -> bool:
        return self.rule.prefer(draft)

    def verified(self, result: RoundResult) -> None:
        self.rule.verified(result)
        steps = result.draft.steps
        for i, step in enumerate(steps[: result.accepted + 1]):  # the accepted drafts and the first rejected one
            if step.entropy is not None:
                self.observe(step.entropy, accepted=i < result.accepted)

    def observe(self, entropy: float, accepted: bool) -> None:
        """One verified draft: the entropy it was drafted at, and whether the target accepted it."""
        old = self.means[accepted]
        self.means[accepted] = entropy if old is None else self.decay * old + (1.0 - self.decay) * entropy
