"""`DraftVocabulary` (vocab/draft_vocab.py): which tokens a draft step may propose and with which logits, checked
against plain-torch logits, a by-hand recency rule and a by-hand router rule."""

import torch

from evospec_hf import EvoSpecConfig
from evospec_hf.vocab import DraftVocabulary, Shortlist
from evospec_hf.vocab.clusters import TokenClusters
from evospec_hf.vocab.router import ClusterRouter, RoutedHead

from ..conftest import EOS, PAD, VOCAB_SIZE, tiny_gemma3

VOCAB, HIDDEN = 50, 8


def head(seed=0):
    torch.manual_seed(seed)
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=True)
    with torch.no_grad():
        lm_head.weight.mul_(5.0)  # logits of a few units, where a softcap of 2 to 4 bites
    return lm_head


def capped(x, cap):
    return cap * torch.tanh(x / cap)


def plain_logits(lm_head, hidden, ids=None):
    """The head's logits of `ids` (all tokens when None), by hand."""
    weight, bias = lm_head.weight.detach(), lm_head.bias.detach()
    ids = torch.arange(VOCAB) if ids is None else ids
    return hidden @ weight[ids].T + bias[ids]


def finite(ids, logits) -> dict:
    """{token: logit} over the columns that can be drafted; fails if a token has two such columns."""
    out = {}
    for token, value in zip(ids.tolist(), logits[0].tolist()):
        if value != float("-inf"):
            assert token not in out, f"token {token} proposed twice"
            out[token] = value
    return out


def most_recent(stream, fixed, slots) -> set:
    """The `slots` most recently seen distinct tokens of `stream` that have no fixed slot: what least-recently-seen
    eviction keeps."""
    kept = []
    for token in reversed(stream):
        if token not in fixed and token not in kept:
            kept.append(token)
    return set(kept[:slots])


class ScriptedRetrieval:
    """Stands in for the n-gram and semantic indexes: hands out scripted tokens, records what it was asked."""

    def __init__(self, rounds):
        self.rounds, self.asked = list(rounds), []

    def retrieve(self, sequence, num_observed):
        self.asked.append((sequence.tolist(), num_observed))
        return torch.tensor(self.rounds.pop(0))


def test_without_a_shortlist_every_token_has_its_softcapped_logit():
    lm_head = head()
    hidden = torch.randn(1, HIDDEN)
    ids, logits = DraftVocabulary(lm_head, logit_cap=2.0).logits(hidden)
    assert ids is None and logits.dtype == torch.float32
    torch.testing.assert_close(logits, capped(plain_logits(lm_head, hidden), 2.0))
    assert logits.abs().max() < 2.0 < plain_logits(lm_head, hidden).abs().max()  # the cap did bite
    _, uncapped = DraftVocabulary(lm_head).logits(hidden)
    torch.testing.assert_close(uncapped, plain_logits(lm_head, hidden))
    assert DraftVocabulary(lm_head).holds(torch.randn(3, HIDDEN), torch.tensor([0, 7, 49])).tolist() == [True] * 3


def test_retrieved_tokens_enter_before_the_new_context_tokens_and_old_ones_are_not_read_again():
    lm_head = head()
    fixed = [EOS, PAD]
    shortlist = Shortlist(lm_head.weight.detach(), lm_head.bias.detach(), 5, torch.tensor(fixed), context_slots=3)
    rounds = [([5, 9, PAD, 12], [40]), ([5, 9, PAD, 12, 9, 30], [41])]  # (the sequence, what is retrieved)
    retrieval = ScriptedRetrieval([retrieved for _, retrieved in rounds])
    vocabulary = DraftVocabulary(lm_head, shortlist, retrieval=retrieval, observes_context=True, logit_cap=3.0)
    hidden = torch.randn(1, HIDDEN)
    stream, observed = [], 0
    for sequence, retrieved in rounds:
        vocabulary.observe(torch.tensor(sequence))
        stream += retrieved + sequence[observed:]  # the rule: retrieved first, then the tokens not read before
        observed = len(sequence)
        wanted = set(fixed) | most_recent(stream, fixed, 3)
        ids, logits = vocabulary.logits(hidden)
        assert set(ids.tolist()) == wanted
        torch.testing.assert_close(logits, capped(plain_logits(lm_head, hidden, ids), 3.0))
        held = vocabulary.holds(hidden.expand(VOCAB, HIDDEN), torch.arange(VOCAB))
        assert set(held.nonzero().flatten().tolist()) == wanted
    # round 1: 40 came first, so the three context tokens evicted it; round 2 read only 9 and 30, after 41
    assert set(ids.tolist()) == {EOS, PAD, 9, 30, 41}
    assert [asked for _, asked in retrieval.asked] == [0, 4]


def test_without_context_observing_nothing_enters():
    lm_head = head()
    shortlist = Shortlist(lm_head.weight.detach(), None, 4, torch.tensor([EOS, PAD]), context_slots=2)
    retrieval = ScriptedRetrieval([[40]])
    vocabulary = DraftVocabulary(lm_head, shortlist, retrieval=retrieval, observes_context=False)
    vocabulary.observe(torch.tensor([5, 9]))
    assert set(vocabulary.logits(torch.randn(1, HIDDEN))[0].tolist()) == {EOS, PAD} and retrieval.asked == []


def test_the_routers_clusters_join_the_slots_and_a_token_in_both_is_proposed_once():
    lm_head = head()
    weight, bias = lm_head.weight.detach(), lm_head.bias.detach()
    membership = torch.arange(VOCAB) % 5  # five clusters of 10
    torch.manual_seed(1)
    router = ClusterRouter(HIDDEN, 5)
    routed = RoutedHead(router, TokenClusters.from_assignment(membership), weight, bias)
    fixed = [EOS, PAD]
    shortlist = Shortlist(weight, bias, 6, torch.tensor(fixed), context_slots=4)
    vocabulary = DraftVocabulary(lm_head, shortlist, routed=routed, router_budget=25, observes_context=True,
                                 logit_cap=4.0)  # fmt: skip
    vocabulary.observe(torch.arange(10, 14))  # tokens of every cluster but one: some are routed too
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        hidden = torch.randn(1, HIDDEN, generator=gen)
        # the router's rule by hand: the two best clusters (10 + 10 tokens fit in 25, a third would not)
        best = torch.topk(router(hidden)[0], 2).indices.tolist()
        slots = set(fixed) | {10, 11, 12, 13}
        wanted = slots | {t for t in range(VOCAB) if int(membership[t]) in best}
        assert {int(membership[t]) for t in (10, 11, 12, 13)} & set(best)  # a routed token also has a slot
        ids, logits = vocabulary.logits(hidden)
        assert ids[: len(slots)].tolist() == shortlist.token_ids.tolist()  # the slots first
        proposed = finite(ids, logits)
        assert set(proposed) == wanted
        expected = capped(plain_logits(lm_head, hidden, torch.tensor(sorted(wanted))), 4.0)[0].tolist()
        got = [proposed[t] for t in sorted(wanted)]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected))
        held = vocabulary.holds(hidden.expand(VOCAB, HIDDEN), torch.arange(VOCAB))
        assert set(held.nonzero().flatten().tolist()) == wanted


def test_build_gives_the_router_the_slots_left(router_folder):
    """shortlist_size 40 with 16 context slots and 2 always-in ids (EOS, pad): the router may add 22 tokens."""
    drafter = tiny_gemma3(seed=0)  # softcapped at 30
    lm_head = drafter.get_output_embeddings()
    config = EvoSpecConfig(shortlist="router+context", shortlist_size=40, context_slots=16, router_path=router_folder)
    vocabulary = DraftVocabulary.build(config, drafter, torch.tensor([EOS, PAD]), pooled=False)
    vocabulary.observe(torch.tensor([5, 6, 7]))
    router = ClusterRouter.load(router_folder)
    membership = TokenClusters.load(router_folder).cluster_of
    sizes = torch.bincount(membership).tolist()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        hidden = torch.randn(1, 32, generator=gen)
        chosen, used = [], 0
        for c in torch.topk(router(hidden)[0], len(sizes)).indices.tolist():
            if chosen and used + sizes[c] > 40 - 16 - 2:
                break
            chosen, used = chosen + [c], used + sizes[c]
        wanted = {EOS, PAD, 5, 6, 7} | {t for t in range(VOCAB_SIZE) if int(membership[t]) in chosen}
        ids, logits = vocabulary.logits(hidden)
        proposed = finite(ids, logits)
        assert set(proposed) == wanted
        full = capped(hidden @ lm_head.weight.detach().T, 30.0)[0]
        torch.testing.assert_close(torch.tensor([proposed[t] for t in sorted(wanted)]), full[sorted(wanted)])
    full_vocabulary = DraftVocabulary.build(EvoSpecConfig(shortlist="full"), drafter, torch.tensor([EOS, PAD]))
    ids, logits = full_vocabulary.logits(hidden)
    assert ids is None
    torch.testing.assert_close(logits, capped(hidden @ lm_head.weight.detach().T, 30.0))
