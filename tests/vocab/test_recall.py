"""The recall simulation counts what generation's shortlist would hold, round by round."""

import torch

from evospec_hf import EvoSpecConfig
from evospec_hf.vocab.recall import simulate_recall

from ..conftest import tiny_llama


def test_context_recall_counts_tokens_seen_before_the_round():
    drafter = tiny_llama(seed=0)
    ids = torch.tensor([5, 6, 7, 5, 6, 7, 5, 6])
    truth = torch.cat([ids[1:], ids[:1]])  # the next token of the text itself
    config = EvoSpecConfig(shortlist="context", shortlist_size=20)
    hidden = torch.zeros(ids.numel(), 32)
    always = torch.tensor([2])
    # one position per round: only the first 6 and 7 are unseen when they are due
    assert simulate_recall(config, drafter, ids, truth, hidden, always, round_len=1) == (6, 8)
    assert simulate_recall(config, drafter, ids, truth, hidden, always, round_len=1, start=2) == (6, 6)
    # rounds of 4: the context is observed only at a round's start, so the first round knows only 5
    assert simulate_recall(config, drafter, ids, truth, hidden, always, round_len=4) == (5, 8)
    assert simulate_recall(config, drafter, ids, truth, hidden, always, round_len=8) == (3, 8)


def test_batched_router_membership_matches_select():
    from evospec_hf.vocab.clusters import TokenClusters
    from evospec_hf.vocab.router import ClusterRouter, RoutedHead

    torch.manual_seed(0)
    clusters = TokenClusters.from_assignment(torch.arange(96) % 12)
    routed = RoutedHead(ClusterRouter(32, 12), clusters, torch.randn(96, 32), None)
    hidden, truth = torch.randn(50, 32), torch.randint(0, 96, (50,))
    expected = [int(clusters.cluster_of[truth[t]]) in routed.select(hidden[t : t + 1], 20) for t in range(50)]
    assert routed.holds(hidden, truth, 20).tolist() == expected and any(expected) and not all(expected)
