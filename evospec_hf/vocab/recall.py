"""Shortlist recall: the share of the target's greedy next tokens that the drafter's shortlist holds.

Used by `evospec-hf train-router` (router quality) and `benchmarks/shortlist_recall.py` (every mode). The
simulation runs the generator's own `DraftVocabulary` teacher-forced over a known text, in rounds: at the start of
a round the vocabulary observes the text so far, then the round's draft positions are checked with
`DraftVocabulary.holds` (the slots, plus the clusters the router picks at each position).
"""

from __future__ import annotations

import torch

from ..models.drafter import feature_layers_of, shifted_feature_inputs
from ..utils import decoder_body, unwrap_peft
from .draft_vocab import DraftVocabulary
from .indexes import NGramIndex


@torch.no_grad()
def drafter_hidden_states(drafter, ids: torch.Tensor, target=None) -> torch.Tensor:
    """`(T,)` token ids -> `(T, hidden_size)`: row i is the drafter's final hidden state from which it predicts the
    token after position i (what its LM head and its router read), teacher-forced.

    A feature drafter reads the target's hidden states, so it needs `target`: its pair at position i - 1 (the
    target's state there, and token i) predicts token i + 1; row 0 has no pair and is zeros.
    """
    model = unwrap_peft(drafter)
    layers = feature_layers_of(model)
    if layers is None:
        return decoder_body(model)(input_ids=ids[None]).last_hidden_state[0]
    if target is None:
        raise ValueError("a feature drafter's hidden states need the target's: pass `target=`")
    states = target(ids[None], output_hidden_states=list(layers)).hidden_states
    features = torch.cat([states[i] for i in layers], dim=-1)
    pairs = shifted_feature_inputs(model, ids[None], features=features)
    hidden = decoder_body(model)(inputs_embeds=pairs).last_hidden_state[0]
    return torch.cat([hidden.new_zeros(1, hidden.shape[-1]), hidden])


@torch.no_grad()
def target_greedy_next(target, ids: torch.Tensor) -> torch.Tensor:
    """`(T,)` token ids -> `(T,)` the target's greedy next token after each position (teacher-forced)."""
    return target(ids[None]).logits[0].argmax(-1)


@torch.no_grad()
def simulate_recall(
    config,
    drafter,
    ids: torch.Tensor,
    truth: torch.Tensor,
    hidden: torch.Tensor,
    always_ids: torch.Tensor,
    static_table=None,
    ngram: NGramIndex | None = None,
    round_len: int = 4,
    start: int = 0,
) -> tuple[int, int]:
    """(hits, positions) of the vocabulary an `EvoSpecConfig` describes, over positions `start..T-1` of one text.

    Args:
        ids, truth, hidden: the text `(T,)`, the target's greedy next token after each position `(T,)`, the
            drafter's hidden states `(T, d)`.
        always_ids: EOS and pad ids, as generation puts them in.
        static_table: the `FrequencyTable` for 'static' (None: found as generation finds it).
        ngram: for 'evospec', an `NGramIndex` to keep across texts (as an `EvoSpecSession` does); None: a fresh one.
        round_len: positions drafted per round (the context is observed once per round, before drafting).
        start: positions before it are read (observed) but not counted, e.g. the text before a topic switch.
    """
    vocab = DraftVocabulary.build(config, drafter, always_ids, ngram=ngram, static_table=static_table, pooled=False)
    hits = positions = 0
    length = ids.numel()
    for p in range(1, length + 1, round_len):  # a round knows ids[:p] and drafts the tokens after it
        vocab.observe(ids[:p])
        first, end = max(p - 1, start), min(p - 1 + round_len, length)
        if first < end:
            hits += int(vocab.holds(hidden[first:end], truth[first:end]).sum())
            positions += end - first
    return hits, positions
