"""`StopCheck`: cut a round's drafts where plain `generate` would stop, so no round runs past a stop.

transformers' assisted-decoding loop checks the stopping criteria once per round, on the whole sequence. A round
adds several tokens, so a criterion that looks at the last token (a user `StoppingCriteria` on a token id) or at the
text's end (`stop_strings=`) sees only the end of the round, and generation runs past the token that should have
stopped it. The loop itself cuts at EOS and at `max_length`, and nothing else.

Every token a round adds is a draft the target accepted, except the last, which is the target's own. So it is
enough that no draft but the last of a round can be a stopping point: before the target verifies, the drafts are
cut just before the first one at which a criterion fires (`seq + drafts[:i + 1]`). If the target accepts every kept
draft, its own token comes next and the loop's check sees it last, exactly where plain greedy stops; if it rejects
one earlier, no criterion fired on the accepted drafts before it. Output, scores and streamed text then equal plain
greedy's.

Criteria are called on drafted prefixes that the target may still reject, with `scores=None` (the target has not
scored them yet). transformers' criteria are functions of the sequence; a user criterion that keeps state per call
or reads `scores` should be written to allow that.
"""

from __future__ import annotations

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .rounds import Draft


class StopCheck:
    """The stopping criteria that can fire inside a round.

    Args:
        criteria: the call's prepared `StoppingCriteriaList` (None: nothing to check). `MaxLengthCriteria` and
            `EosTokenCriteria` are left out: the generator never drafts past `max_length`, and transformers' loop
            already cuts a round at its first EOS.
    """

    def __init__(self, criteria: StoppingCriteriaList | None):
        kept = [c for c in (criteria or []) if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]
        self.criteria = StoppingCriteriaList(kept)

    def __bool__(self) -> bool:
        return len(self.criteria) > 0

    def trim(self, input_ids: torch.LongTensor, draft: Draft) -> Draft:
        """`draft` without the drafts from the first one at which a criterion fires.

        Args:
            input_ids: `(1, seq_len)` the sequence before the drafts.
        """
        if not self.criteria or len(draft) == 0:
            return draft
        sequence = torch.cat([input_ids, draft.tokens.to(input_ids.device)[None, :]], dim=-1)
        start = input_ids.shape[1]
        for i in range(len(draft)):
            if bool(self.criteria(sequence[:, : start + i + 1], None).any()):
                return draft.truncate(i)
        return draft
