"""Context lookup: the n-gram table, and greedy equivalence when rounds draft by copying from the sequence."""

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.generation.lookup import ContextLookup

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_gemma3, tiny_llama


def lookup_of(tokens, **kwargs):
    lookup = ContextLookup(**kwargs)
    lookup.extend(torch.as_tensor(tokens))
    return lookup


def test_copies_what_followed_the_latest_occurrence_of_the_longest_suffix():
    #            0  1  2  3  4  5  6  7  8  9 10
    tokens = [5, 6, 7, 1, 9, 6, 7, 2, 3, 6, 7]
    # suffix (6, 7) last occurred at 5-6, followed by 2, 3, ...; (9, 6, 7) at 4-6 is longer but the suffix is (3, 6, 7)
    assert lookup_of(tokens).propose(3) == ([2, 3, 6], 2)
    assert lookup_of(tokens, max_ngram=3).propose(10) == ([2, 3, 6, 7], 2)  # runs up to the end of the sequence
    # a 3-gram match wins over a more recent 1-gram one
    assert lookup_of([1, 2, 3, 8, 8, 3, 4, 1, 2, 3]).propose(2) == ([8, 8], 3)


def test_no_draft_without_an_earlier_occurrence():
    assert lookup_of([1, 2, 3, 4]).propose(4) == ([], 0)  # the suffix itself is not an earlier occurrence
    assert lookup_of([]).propose(4) == ([], 0)
    # (2, 9) never occurred and single tokens may not match
    assert lookup_of([9, 1, 2, 9], min_ngram=2).propose(4) == ([], 0)
    assert lookup_of([9, 1, 2, 9], min_ngram=1).propose(4) == ([1, 2, 9], 1)


def test_reading_in_pieces_equals_reading_at_once():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (200,), generator=gen)
    whole, pieces = lookup_of(tokens), ContextLookup()
    for end in range(0, 201, 7):
        pieces.extend(tokens[:end])
        assert pieces.propose(5) == lookup_of(tokens[:end]).propose(5)
    pieces.extend(tokens)
    assert pieces.follows == whole.follows and pieces.tokens == whole.tokens == tokens.tolist()


def test_invalid_orders():
    with pytest.raises(ValueError, match="min_ngram"):
        ContextLookup(max_ngram=2, min_ngram=3)
    with pytest.raises(ValueError, match="min_ngram"):
        ContextLookup(max_ngram=2, min_ngram=0)


def repetitive_prompt(seed):
    """A random phrase said twice: the lookup finds continuations from the first round on."""
    phrase = torch.randint(3, VOCAB_SIZE, (1, 8), generator=torch.Generator().manual_seed(seed))
    return torch.cat([phrase, phrase[:, :5]], dim=-1)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("mode", ["full", "static+context", "evospec"])
def test_greedy_with_context_lookup_equals_plain_greedy(build, mode, static_table_path, router_folder):
    target = build(seed=0)
    drafter = noisy_copy(target, seed=1)
    options = {"static_shortlist_path": static_table_path} if "static" in mode else {}
    if mode == "evospec":
        options["router_path"] = router_folder
    config = EvoSpecConfig(
        shortlist=mode, shortlist_size=40, context_slots=16, num_draft_tokens=3, lookup_tokens=6, **options
    )
    stats = DraftStats()
    for seed in range(3):
        input_ids = repetitive_prompt(seed)
        expected = target.generate(input_ids, max_new_tokens=30, do_sample=False)
        got = target.generate(
            input_ids, max_new_tokens=30, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{mode} prompt {seed}"
    # both kinds of rounds ran, and the copied ones are counted within the totals
    assert 0 < stats.lookup_rounds < stats.rounds, stats
    assert 0 < stats.lookup_drafted < stats.drafted and stats.lookup_accepted <= stats.accepted, stats
    assert stats.head_steps == stats.drafted - stats.lookup_drafted  # no drafter step in a lookup round


def test_lookup_respects_max_length_and_eos():
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=1)
    config = EvoSpecConfig(shortlist="full", lookup_tokens=8)
    input_ids = repetitive_prompt(4)
    for kwargs in ({"max_length": input_ids.shape[1] + 3}, {"max_new_tokens": 1}):
        expected = target.generate(input_ids, do_sample=False, **kwargs)
        got = target.generate(input_ids, do_sample=False, assistant_model=drafter, evospec_config=config, **kwargs)
        assert torch.equal(got, expected), kwargs
    plain = target.generate(input_ids, max_new_tokens=8, do_sample=False)
    stop = int(plain[0, input_ids.shape[1] + 3])
    expected = target.generate(input_ids, max_new_tokens=20, do_sample=False, eos_token_id=stop)
    got = target.generate(
        input_ids, max_new_tokens=20, do_sample=False, eos_token_id=stop, assistant_model=drafter, evospec_config=config
    )
    assert torch.equal(got, expected)
