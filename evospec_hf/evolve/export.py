"""A session's serving export: the tokens of its conversation by count, for a serving engine's hot vocabulary.

`conversation_table` turns the session's n-gram index (the unigram counts that `shortlist="evospec"` keeps while it
generates) into a `FrequencyTable`; its `save_token_map(path, size, fill=<the drafter's static table>)` writes
SGLang's `--speculative-token-map` file (README, "Serving engines").
"""

from __future__ import annotations

import torch

from ..vocab.frequency import FrequencyTable
from ..vocab.indexes import NGramIndex


def conversation_table(index: NGramIndex | None, vocab_size: int) -> FrequencyTable:
    """The tokens `index` counted, most frequent first (an empty table when `index` is None)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    unigrams = index.counts.get((), {}) if index is not None else {}
    for token, count in unigrams.items():
        counts[token] = count
    return FrequencyTable.from_counts(counts, source="EvoSpecSession: the conversation's tokens")
