"""The drafter loop itself: drafts stay in the shortlist, the returned logits have the documented shape."""

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecCandidateGenerator, EvoSpecConfig, ShortlistLogitsProcessor

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_gemma3, tiny_llama


@pytest.fixture
def captured(monkeypatch):
    """Records (generator, candidate_ids, candidate_logits, input_len, shortlist ids then) of every drafting round."""
    rounds = []
    original = EvoSpecCandidateGenerator.get_candidates

    def spy(self, input_ids, **kwargs):
        ids, logits = original(self, input_ids, **kwargs)
        vocabulary = self.drafter.vocabulary
        shortlist = None if vocabulary.shortlist is None else vocabulary.shortlist.token_ids.clone()
        rounds.append((self, ids, logits, input_ids.shape[1], shortlist))
        return ids, logits

    monkeypatch.setattr(EvoSpecCandidateGenerator, "get_candidates", spy)
    return rounds


@pytest.mark.parametrize("do_sample", [pytest.param(False, id="greedy"), pytest.param(True, id="sample")])
def test_drafts_and_logits_respect_the_shortlist(captured, static_table_path, do_sample):
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=1)
    config = EvoSpecConfig(
        shortlist="static+context", shortlist_size=30, context_slots=10, static_shortlist_path=static_table_path,
        num_draft_tokens=3, draft_schedule="constant",
    )  # fmt: skip
    input_ids = torch.randint(3, VOCAB_SIZE, (1, 10), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    target.generate(input_ids, max_new_tokens=20, do_sample=do_sample, assistant_model=drafter, evospec_config=config)
    assert captured
    for _, ids, logits, input_len, shortlist in captured:
        drafts = ids[0, input_len:]
        assert torch.isin(drafts, shortlist).all()
        if not do_sample:  # greedy verification compares tokens: no vocabulary-sized logits are built for it
            assert logits is None
            continue
        if logits is None:  # no room left before max_length: nothing drafted
            assert drafts.numel() == 0
            continue
        assert logits.shape == (1, drafts.numel(), VOCAB_SIZE) and logits.dtype == torch.float32
        assert torch.isin(drafts, shortlist).all()
        allowed = torch.isin(torch.arange(VOCAB_SIZE), shortlist)
        assert torch.isinf(logits[0][:, ~allowed]).all()
        # (sampling's top-k warper also masks some tokens inside the shortlist, so only some are finite)
        assert torch.isfinite(logits[0][:, allowed]).any(dim=-1).all()
        assert len(shortlist) <= 30


def test_context_source_learns_generated_tokens(captured):
    target = tiny_llama(seed=0)
    config = EvoSpecConfig(shortlist="context", shortlist_size=60, num_draft_tokens=2)
    input_ids = torch.tensor([[5, 6, 7]])
    out = target.generate(input_ids, max_new_tokens=15, do_sample=False, assistant_model=noisy_copy(target, 1), evospec_config=config)
    generator = captured[-1][0]
    seen_before_last_round = out[0, : captured[-1][3]]
    assert generator.drafter.vocabulary.shortlist.contains(seen_before_last_round).all()


def test_sliding_window_drafter_cache_survives_many_rounds():
    """Gemma 3's sliding layers (window 4 here) must crop correctly over 60 tokens and rejected drafts."""
    target = tiny_gemma3(seed=0)
    drafter = noisy_copy(target, seed=3, scale=0.2)
    input_ids = torch.randint(3, VOCAB_SIZE, (1, 9), generator=torch.Generator().manual_seed(1))
    stats = DraftStats()
    expected = target.generate(input_ids, max_new_tokens=60, do_sample=False)
    got = target.generate(
        input_ids, max_new_tokens=60, do_sample=False, assistant_model=drafter,
        evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=64, num_draft_tokens=5), evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert 0 < stats.accepted < stats.drafted  # both accepted and rejected drafts occurred


def test_heuristic_schedule_moves_draft_length(captured):
    target = tiny_llama(seed=0)
    config = EvoSpecConfig(num_draft_tokens=2, max_draft_tokens=6, draft_schedule="heuristic", lookup_tokens=0)
    target.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=30, do_sample=False, assistant_model=target, evospec_config=config)
    lengths = [ids.shape[1] - n for _, ids, _, n, _ in captured]
    assert lengths[0] == 2 and max(lengths) == 6  # a self-drafting target is always accepted: 2, 4, 6, 6, ...


def test_confidence_threshold_stops_rounds_early(captured):
    target = tiny_llama(seed=0)
    unrelated = tiny_llama(seed=5, layers=1)  # a random drafter is never confident
    config = EvoSpecConfig(num_draft_tokens=6, draft_schedule="constant", confidence_threshold=0.5, lookup_tokens=0)
    target.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=10, do_sample=False, assistant_model=unrelated, evospec_config=config)
    lengths = [ids.shape[1] - n for _, ids, _, n, _ in captured]
    assert lengths[:-1] == [1] * (len(lengths) - 1) and lengths[-1] in (0, 1)  # the last round may have no room


def test_logits_processor_equals_expand():
    """`Shortlist.expand(shortlist logits)` is the processor applied to full logits, without computing them."""
    from evospec_hf.vocab import Shortlist

    weight = torch.randn(40, 6)
    shortlist = Shortlist(weight, None, size=8, fixed_ids=torch.tensor([3, 1]), context_slots=6)
    shortlist.observe(torch.tensor([7, 30, 12]))
    hidden = torch.randn(1, 6)
    masked = ShortlistLogitsProcessor(shortlist)(torch.tensor([[0]]), hidden @ weight.T)
    torch.testing.assert_close(masked, shortlist.expand(shortlist.logits(hidden)))
    by_ids = ShortlistLogitsProcessor(torch.tensor([3, 1, 7, 30, 12]))(torch.tensor([[0]]), hidden @ weight.T)
    torch.testing.assert_close(by_ids, masked)


def test_logits_processor_composes_with_user_processors():
    """In any `generate` call, the processor keeps every token inside the shortlist, next to other processors."""
    from transformers import LogitsProcessorList

    model = tiny_llama(seed=0)
    allowed = torch.tensor([2, 10, 11, 12, 13, 40, 41])
    out = model.generate(
        torch.tensor([[4, 5, 6]]), max_new_tokens=20, do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=2,
        logits_processor=LogitsProcessorList([ShortlistLogitsProcessor(allowed)]),
    )  # fmt: skip
    new = out[0, 3:]
    assert torch.isin(new, allowed).all()
    assert new.unique().numel() > 1  # the user's repetition processors still act within the shortlist


def test_two_calls_inside_one_block_each_finish_before_the_next(static_table_path):
    """`evospec_drafting` used by hand around two generate calls (with a session): the first call's generator is
    closed (adapter handed back, shortlist back in the pool, exactly once) before the second one starts."""
    from evospec_hf import EvoSpecSession, evospec_drafting
    from evospec_hf.vocab.shortlist import _POOLS

    target = tiny_llama(seed=0)
    session = EvoSpecSession(noisy_copy(target, seed=1))
    config = EvoSpecConfig(
        shortlist="static+context", shortlist_size=30, context_slots=10, static_shortlist_path=static_table_path
    )
    input_ids = torch.tensor([[4, 5, 6, 7]])
    expected = target.generate(input_ids, max_new_tokens=10, do_sample=False)
    outs, generators = [], []
    with evospec_drafting(target, config, session=session) as drafting:
        for _ in range(2):
            outs.append(target.generate(input_ids, max_new_tokens=10, do_sample=False, assistant_model=session.drafter))
            generators.append(drafting.generator)
    assert all(torch.equal(out, expected) for out in outs) and generators[0] is not generators[1]
    assert session._outside is None  # detached
    generators[1].close()  # closing again gives nothing back twice
    idle = [s for shortlists in _POOLS._idle[session.drafter.get_output_embeddings()].values() for s in shortlists]
    assert idle and len({id(s) for s in idle}) == len(idle)  # each shortlist given back once
