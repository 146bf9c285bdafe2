"""`DraftStats` (generation/stats.py): scripted rounds with hand-computed totals, and a generate call counted
from the outside (the target's forward passes, the tokens it returned)."""

from types import SimpleNamespace

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.generation.rounds import Draft, DraftStep, RoundResult

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_llama


class NothingHeld:
    def holds(self, hidden, token_ids):
        return torch.zeros(token_ids.shape, dtype=torch.bool)


def steps(count):
    return [DraftStep(None, torch.zeros(1, 4), torch.zeros(1, 1)) for _ in range(count)]


def play(stats, draft, accepted, verify_seconds, prefill=False):
    """One round as the candidate generator reports it: hand-over, then verification."""
    stats.handed_over(draft)
    sequence = torch.arange(20 + accepted + 1)[None]
    stats.verified(RoundResult(draft, accepted, sequence, None, verify_seconds, prefill))


def test_rounds_add_up_to_hand_computed_totals():
    stats = DraftStats()
    # a drafter round of 3 over the whole vocabulary, 2 accepted
    play(stats, Draft("drafter", torch.arange(3), None, steps(3), seconds=0.02, head_seconds=0.01, head_steps=3), 2,
         0.05, prefill=True)  # fmt: skip
    # 4 tokens copied from the context, all accepted
    play(stats, Draft("lookup", torch.arange(4), seconds=0.001, match=2), 4, 0.04)
    # nothing drafted
    play(stats, Draft("drafter", torch.arange(0)), 0, 0.03)
    # a drafter round the entropy stop cut after 2 of 3 head steps; its vocabulary held none of the targets
    cut = Draft("drafter", torch.arange(2), None, steps(2), vocabulary=NothingHeld(), seconds=0.03, head_seconds=0.02,
                head_steps=3, entropy_stopped=True)  # fmt: skip
    play(stats, cut, 0, 0.06)

    assert (stats.rounds, stats.drafted, stats.accepted) == (4, 9, 6)
    assert stats.accepted_per_round == [2, 4, 0, 0]
    assert stats.sources_per_round == ["drafter", "lookup", "", "drafter"]
    assert (stats.lookup_rounds, stats.lookup_drafted, stats.lookup_accepted) == (1, 4, 4)
    assert (stats.drafter_drafted, stats.drafter_accepted) == (5, 2)
    assert stats.entropy_stops == 1
    assert stats.head_steps == 6  # 3 + 3 (the cut step's head ran)
    assert stats.head_seconds == pytest.approx(0.03) and stats.draft_seconds == pytest.approx(0.051)
    assert stats.verify_seconds == pytest.approx(0.18)
    # verified positions with a drafter step: 3 of round 1 (every token proposable), 1 of round 4 (not held)
    assert (stats.checked, stats.in_shortlist) == (4, 3)
    assert stats.shortlist_recall == pytest.approx(0.75)
    assert stats.mean_accepted_length == pytest.approx((6 + 4) / 4)
    assert stats.acceptance_rate == pytest.approx(6 / 9)
    assert stats.head_ms_per_step == pytest.approx(1e3 * 0.03 / 6)


def test_empty_stats_divide_by_nothing():
    stats = DraftStats()
    assert (stats.mean_accepted_length, stats.acceptance_rate, stats.shortlist_recall, stats.head_ms_per_step) == (
        0.0, 0.0, 0.0, 0.0
    )  # fmt: skip


def test_rows_and_screens_add_up():
    first, second = DraftStats(), DraftStats()
    play(first, Draft("drafter", torch.arange(3), None, steps(3), head_steps=3), 1, 0.5)
    play(second, Draft("lookup", torch.arange(2), match=1), 2, 0.7)
    play(second, Draft("drafter", torch.arange(1), None, steps(1), head_steps=1), 0, 0.7)
    total = DraftStats()
    total.add_rows([first, second], verify_seconds=0.9)
    assert (total.rounds, total.drafted, total.accepted) == (3, 6, 3)
    assert total.accepted_per_round == [1, 2, 0] and total.sources_per_round == ["drafter", "lookup", "drafter"]
    assert (total.lookup_rounds, total.lookup_drafted, total.lookup_accepted) == (1, 2, 2)
    assert (total.head_steps, total.checked, total.in_shortlist) == (4, 3, 3)
    assert total.verify_seconds == 0.9  # the batch's, not the rows' sum (they shared it)
    assert total.rows == [first, second]

    screen = SimpleNamespace(calls=2, positions=5, survivors=[3, 4], fallbacks=1, full_calls=7)
    total.add_screen(screen)
    total.add_screen(screen)
    assert (total.screen_calls, total.screen_positions, total.screen_fallbacks, total.screen_full_calls) == (
        4, 10, 2, 14
    )  # fmt: skip
    assert total.screen_survivors == [3, 4, 3, 4]


def test_a_generate_call_is_counted_as_the_target_ran():
    """Rounds are the target's forward passes; each round yields its accepted drafts and one token of the target's.
    One `DraftStats` over two calls holds both."""
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=1, scale=0.3)
    forwards = []
    target.register_forward_hook(lambda *args: forwards.append(1))
    config = EvoSpecConfig(shortlist="full", lookup_tokens=0, draft_schedule="heuristic", fast_verify_head=False)
    stats = DraftStats()
    new_tokens = 0
    for seed in (0, 1):
        prompt = torch.randint(3, VOCAB_SIZE, (1, 10), generator=torch.Generator().manual_seed(seed))
        out = target.generate(
            prompt, max_new_tokens=30, do_sample=False, assistant_model=drafter, evospec_stats=stats,
            evospec_config=config,
        )  # fmt: skip
        new_tokens += out.shape[1] - prompt.shape[1]
    assert stats.rounds == len(forwards) == len(stats.accepted_per_round)
    assert stats.accepted + stats.rounds == new_tokens == 60
    assert 0 < stats.accepted < stats.drafted  # the premise: some drafts accepted, some not
    assert sum(stats.accepted_per_round) == stats.accepted
