"""What one draft-and-verify round carries between its parts.

A candidate source proposes a `Draft`; the target verifies it in transformers' loop; the generator then hands a
`RoundResult` to the draft length rule and to its `RoundObserver`s (the stats, the learner), which is the only way
round feedback travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..vocab.shortlist import OUTSIDE_SHORTLIST


@dataclass
class DraftStep:
    """One drafted token's view of the drafter.

    Attributes:
        ids: `(n,)` the token id of each column of `logits`, or None when the columns are the vocabulary.
        logits: `(1, n)` the (processed) draft logits the token was chosen from.
        hidden: `(1, hidden_size)` the drafter's final hidden state at that step.
        entropy: the entropy (nats) of the step's draft distribution, when a rule reads it (`entropy_stop`).
    """

    ids: torch.Tensor | None
    logits: torch.Tensor
    hidden: torch.Tensor
    entropy: float | None = None


@dataclass
class Draft:
    """A round's proposal.

    Attributes:
        source: the candidate source's name ("lookup", "drafter"), or "" when nothing could be drafted.
        tokens: `(k,)` the drafted token ids.
        logits: `(1, k, vocab_size)` float32 draft logits (-inf outside the step's vocabulary), or None when the
            drafts carry no distribution (copied from the context): transformers then checks them by token match.
        steps: one `DraftStep` per drafted token (drafter rounds only).
        vocabulary: the `DraftVocabulary` the drafter drafted through (None: every token, or no drafter step).
        seconds: wall time to produce it; `head_seconds` of it in the drafter's LM head, over `head_steps` steps (as
            many as `steps`, or more when drafts were cut after they were drafted).
        match: for copied drafts, the length of the suffix found earlier in the sequence (longer matches are
            accepted more often); 0 otherwise.
        entropy_stopped: whether the entropy stop ended the round before its length.
    """

    source: str
    tokens: torch.Tensor
    logits: torch.Tensor | None = None
    steps: list = field(default_factory=list)
    vocabulary: object | None = None
    seconds: float = 0.0
    head_seconds: float = 0.0
    match: int = 0
    head_steps: int = 0
    entropy_stopped: bool = False

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def truncate(self, length: int) -> "Draft":
        """The first `length` drafts (the same object when nothing is cut)."""
        if length >= len(self):
            return self
        logits = None if self.logits is None else self.logits[:, :length]
        return Draft(
            self.source, self.tokens[:length], logits, self.steps[:length], self.vocabulary, self.seconds,
            self.head_seconds, match=self.match, head_steps=self.head_steps, entropy_stopped=self.entropy_stopped,
        )  # fmt: skip

    def vocabulary_hits(self, targets: torch.Tensor) -> tuple[int, int]:
        """(checked, inside): of the verified positions that had a draft step, how many of the target's tokens
        `targets` (`(num_verified,)`) the step's vocabulary held. A membership test over the step's vocabulary,
        never over the whole vocabulary."""
        checked = min(targets.shape[0], len(self.steps))
        if checked == 0:
            return 0, 0
        if self.vocabulary is None:
            return checked, checked
        hidden = torch.cat([step.hidden for step in self.steps[:checked]])
        return checked, int(self.vocabulary.holds(hidden, targets[:checked]).sum())

    def ranks(self, targets: torch.Tensor) -> torch.LongTensor:
        """For each verified position, how many tokens the drafter scored above the target's token there (0: it
        drafted it; `OUTSIDE_SHORTLIST`: it could not propose it). Positions without a draft step (the bonus
        token, copied drafts) count as 0."""
        ranks = torch.zeros(targets.shape[0], dtype=torch.long)
        for i, step in enumerate(self.steps[: targets.shape[0]]):
            if step.ids is None:
                score = step.logits[0, targets[i]]
            else:
                column = (step.ids == targets[i]).nonzero()
                score = step.logits[0, column[0, 0]] if column.numel() else None
            if score is None or score == float("-inf"):  # outside the vocabulary (or masked there)
                ranks[i] = OUTSIDE_SHORTLIST
            else:
                ranks[i] = int((step.logits[0] > score).sum())
        return ranks


@dataclass
class RoundResult:
    """A verified round, as transformers reports it to the candidate generator.

    Attributes:
        draft: what was proposed.
        accepted: how many drafts the target accepted.
        input_ids: `(1, seq_len)` the sequence after verification (the accepted drafts and the target's own token
            are its last `accepted + 1` tokens).
        scores: `(1, len(draft) + 1, vocab_size)` the target's processed logits at the verified positions.
        verify_seconds: wall time from the hand-over of the drafts to this feedback.
        prefill: whether this was the call's first verification, which also read the whole prompt.
    """

    draft: Draft
    accepted: int
    input_ids: torch.LongTensor
    scores: torch.Tensor
    verify_seconds: float
    prefill: bool

    @property
    def drafted(self) -> int:
        return len(self.draft)

    @property
    def targets(self) -> torch.LongTensor:
        """`(accepted + 1,)` the target's tokens at the verified positions."""
        return self.input_ids[0, self.input_ids.shape[1] - self.accepted - 1 :]


class RoundObserver(Protocol):
    """Receives each round's feedback from the candidate generator."""

    def handed_over(self, draft: Draft) -> None:
        """The drafts go to the target now (it verifies next)."""

    def verified(self, result: RoundResult) -> None:
        """The target verified the last drafts."""
