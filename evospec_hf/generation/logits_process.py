"""`ShortlistLogitsProcessor`: restricts full-vocabulary scores to a shortlist."""

from __future__ import annotations

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
