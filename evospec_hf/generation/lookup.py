"""Context lookup, a candidate source: drafts copied from the sequence itself (prompt-lookup decoding), no drafter.

Where the last `n` tokens of the sequence occurred before, the tokens that followed that occurrence are a cheap
guess at what follows now. Code, legal boilerplate and chat that quotes its prompt repeat long spans, and there a
copied draft is accepted far more often than a small drafter's (transformers' `prompt_lookup_num_tokens` applies the
same idea to plain generation).

The table maps every n-gram of the sequence (`min_ngram <= n <= max_ngram`) to the position just after its latest
occurrence. It grows by the tokens verified since the last round, so a lookup costs `max_ngram` dict probes and
nothing proportional to the sequence or the vocabulary. `LookupSource` offers it to the candidate generator, which
asks it before the drafter.
"""

from __future__ import annotations

import torch

from .rounds import Draft


class ContextLookup:
    """N-gram table over one growing token sequence.

    Args:
        max_ngram: the longest suffix of the sequence that is matched; shorter ones are tried after it.
        min_ngram: the shortest suffix that may produce a draft.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.follows: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest occurrence

    def extend(self, sequence) -> None:
        """Reads the tokens of `sequence` (a 1-D tensor or list: the whole sequence so far) not seen yet.

        The sequence only grows between calls: it is the verified text, and verified tokens are never taken back.
        """
        new = sequence[len(self.tokens) :]
        new = new.tolist() if hasattr(new, "tolist") else list(new)
        tokens = self.tokens
        for token in new:
            end = len(tokens)  # index of `token`: the n-grams ending just before it are followed by it
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self.follows[tuple(tokens[end - n : end])] = end
            tokens.append(token)

    def propose(self, limit: int) -> tuple[list[int], int]:
        """Up to `limit` tokens that followed the longest earlier occurrence of the sequence's suffix, and that
        suffix's length (`([], 0)` if none occurred)."""
        tokens = self.tokens
        for n in range(min(self.max_ngram, len(tokens)), self.min_ngram - 1, -1):
            start = self.follows.get(tuple(tokens[len(tokens) - n :]))
            if start is not None:
                return tokens[start : start + limit], n
        return [], 0


class LookupSource:
    """Candidate source: the continuation of the sequence's last tokens' latest earlier occurrence, if any.

    Copied drafts carry no logits, so transformers verifies them by token match (greedy) or against a token sampled
    from the target (sampling): lossless either way.
    """

    name = "lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.table = ContextLookup(max_ngram, min_ngram)

    def propose(self, input_ids: torch.LongTensor, limit: int) -> Draft | None:
        """Up to `limit` copied tokens after `input_ids` (`(1, seq_len)`), or None when the suffix never occurred."""
        self.table.extend(input_ids[0])
        copied, match = self.table.propose(limit)
        if not copied:
            return None
        return Draft(self.name, input_ids.new_tensor(copied), match=match)

    def close(self) -> None:
        pass
