"""Logits processors: `ShortlistLogitsProcessor` restricts full-vocabulary scores to a shortlist;
`LossyJSAcceptance` is AdaSD's lossy acceptance of drafts close to the target's distribution (opt-in)."""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor

from ..vocab import Shortlist


class ShortlistLogitsProcessor(LogitsProcessor):
    """Sets every score outside the shortlist to -inf; composes with any other `LogitsProcessor`.

    It follows a live `Shortlist` (context tokens entering it are seen at the next call) or a fixed tensor of ids.
    evospec_hf's drafter never computes the full scores this would mask: `Shortlist.expand` builds the same result
    from the shortlist logits alone. Use the processor to restrict any model's `generate`, e.g. to measure what a
    drafter would propose under a shortlist.

    Args:
        shortlist: a `Shortlist`, or a `torch.LongTensor` of shape `(n,)` holding the allowed token ids.
    """

    def __init__(self, shortlist: Shortlist | torch.Tensor):
        if not isinstance(shortlist, (Shortlist, torch.Tensor)):
            raise TypeError(f"shortlist must be a Shortlist or a tensor of token ids, got {type(shortlist).__name__}")
        self.shortlist = shortlist

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """`scores`: `(batch_size, vocab_size)`; returns a new tensor of the same shape."""
        ids = self.shortlist.token_ids if isinstance(self.shortlist, Shortlist) else self.shortlist
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[ids.to(scores.device)] = True
        return scores.masked_fill(~keep, float("-inf"))


class LossyJSAcceptance(LogitsProcessor):
    """AdaSD's adaptive lossy acceptance (`EvoSpecConfig.lossy_acceptance="adasd-js"`): a draft the target would not
    have chosen is accepted anyway when the drafter's and the target's distributions at its position are close.

    LOSSY: greedy output is no longer plain greedy's. The candidate generator appends it to the call's own logits
    processors, where transformers' assisted decoding applies them to the target's scores at each verified position
    before comparing the drafts with the target's argmax. At a drafter draft's position it measures the
    Jensen-Shannon distance (base 2, in [0, 1]) between the target's distribution and the draft's (over the draft
    step's shortlist), and:

    - the target's argmax is the draft (an exact acceptance): the distance joins a decayed mean, the threshold's base;
    - otherwise, if the distance is below `scale` times that mean, the draft becomes the argmax (a lossy acceptance),
      else the draft is rejected as usual and the rest of the round is not looked at.

    So the threshold follows how far apart the two distributions typically are when they agree, with no value to set
    (`scale`, 1 by default, trades quality for speed and draws the curve in docs/guides/adasd-hispec.md). Copied drafts (context lookup)
    carry no distribution and are judged as usual. Costs one softmax over the target's scores per judged position.

    Args:
        scale: multiplies the adaptive threshold (0 accepts nothing lossily).
        decay: weight of the past in the mean distance of exact acceptances.
        stats: a `DraftStats` whose `lossy_accepted` counts the lossy acceptances.
    """

    def __init__(self, scale: float = 1.0, decay: float = 0.9, stats=None):
        self.scale, self.decay, self.stats = scale, decay, stats
        self.mean_distance: float | None = None
        self.draft, self.start, self.done = None, 0, True

    @property
    def threshold(self) -> float:
        """Distances below this accept a draft lossily (0 until an exact acceptance was measured)."""
        return 0.0 if self.mean_distance is None else self.scale * self.mean_distance

    def begin(self, draft, start: int) -> None:
        """The round's drafts go to the target; they follow `start` tokens."""
        self.draft, self.start, self.done = draft, start, not draft.steps

    def observe(self, distance: float) -> None:
        """The distance at an exact acceptance."""
        old = self.mean_distance
        self.mean_distance = distance if old is None else self.decay * old + (1.0 - self.decay) * distance

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        i = input_ids.shape[1] - self.start
        if self.done or not 0 <= i < len(self.draft.steps):
            return scores
        step, token = self.draft.steps[i], int(self.draft.tokens[i])
        distance = js_distance(scores[0], step.ids, step.logits[0])
        if int(scores[0].argmax()) == token:
            self.observe(distance)
            return scores
        if distance < self.threshold:
            scores = scores.clone()
            scores[0, token] = scores[0].max() + 1.0
            if self.stats is not None:
                self.stats.lossy_accepted += 1
            return scores
        self.done = True  # rejected: transformers keeps nothing after this position
        return scores


def js_distance(target_logits: torch.Tensor, ids: torch.Tensor | None, draft_logits: torch.Tensor) -> float:
    """Jensen-Shannon distance (the square root of the divergence in bits, in [0, 1]) between the target's
    distribution (`target_logits`, `(vocab_size,)`) and a draft distribution over `ids` (`draft_logits`, `(n,)`;
    `ids` None: over the whole vocabulary). Reads the target's probabilities at `ids` only (and its normaliser): the
    mass outside them, where the draft has none, contributes in closed form."""
    log_p = target_logits.float().log_softmax(dim=-1)
    p = (log_p if ids is None else log_p[ids]).exp()
    q = draft_logits.float().softmax(dim=-1)
    m = 0.5 * (p + q)
    kl_p = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum()
    kl_q = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum()
    outside = (1.0 - p.sum()).clamp(min=0.0)  # target mass where q = 0: there m = p / 2, so p log(p / m) = p log 2
    divergence = 0.5 * (kl_p + outside * math.log(2.0) + kl_q) / math.log(2.0)
    return float(divergence.clamp(0.0, 1.0).sqrt())
