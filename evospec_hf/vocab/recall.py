"""Shortlist recall: the share of the target's greedy next tokens that the drafter's shortlist holds.

Used by `scripts/train_router.py` (router quality) and `scripts/eval_shortlist_recall.py` (every mode). The
simulation runs the generator's own pieces (`build_shortlist`, `RoutedHead`, `ContextRetrieval`) teacher-forced
over a known text, in rounds: at the start of a round the context source observes the text so far, then the
round's draft positions are scored with that shortlist and, for the router, each position's own clusters.
"""

from __future__ import annotations

import torch

from ..utils import unwrap_peft
from .indexes import NGramIndex, context_retrieval
from .router import load_routed_head
from .shortlist import build_shortlist


@torch.no_grad()
def drafter_hidden_states(drafter, ids: torch.Tensor) -> torch.Tensor:
    """`(T,)` token ids -> `(T, hidden_size)` final hidden states of the drafter (what its LM head reads)."""
    return unwrap_peft(drafter).base_model(input_ids=ids[None]).last_hidden_state[0]


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
    """(hits, positions) of the shortlist an `EvoSpecConfig` describes, over positions `start..T-1` of one text.

    Args:
        ids, truth, hidden: the text `(T,)`, the target's greedy next token after each position `(T,)`, the
            drafter's hidden states `(T, d)`.
        always_ids: EOS and pad ids, as generation puts them in.
        ngram: for 'evospec', an `NGramIndex` to keep across texts (as an `EvoSpecSession` does); None: a fresh one.
        round_len: positions drafted per round (the context is observed once per round, before drafting).
        start: positions before it are read (observed) but not counted, e.g. the text before a topic switch.
    """
    head = drafter.get_output_embeddings()
    weight = head.weight.detach()
    shortlist = build_shortlist(config, weight, None, always_ids, "torch", static_table=static_table)
    routed = None
    if "router" in config.shortlist_sources:
        routed = load_routed_head(config.router_path, drafter, head, config.shortlist_size - shortlist.capacity)
    retrieval = context_retrieval(config, drafter, head, ngram)
    routed_hit = torch.zeros_like(truth, dtype=torch.bool) if routed is None else routed_hits(routed, hidden, truth)
    observes = "context" in config.shortlist_sources
    hits = positions = 0
    num_observed = 0
    length = ids.numel()
    for p in range(1, length + 1, round_len):  # a round knows ids[:p] and drafts the tokens after it
        if observes:
            if retrieval is not None:
                shortlist.observe(retrieval.retrieve(ids[:p], num_observed))
            shortlist.observe(ids[num_observed:p])
            num_observed = p
        for t in range(p - 1, min(p - 1 + round_len, length)):
            if t < start:
                continue
            hits += bool(routed_hit[t]) or bool(shortlist.contains(truth[t : t + 1]))
            positions += 1
    return hits, positions


@torch.no_grad()
def routed_hits(routed, hidden: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """`(T,)` bool: whether the clusters `routed.select` picks at each position `(T, d)` hold that position's token."""
    ranked, count = routed.ranked_clusters(hidden)
    rank = (ranked == routed.clusters.cluster_of[truth][:, None]).float().argmax(-1)
    return rank < count
