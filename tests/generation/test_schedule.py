"""`draft_schedule="cost"`: draft lengths chosen from measured acceptance and verification cost."""

from unittest.mock import patch

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.generation.rounds import Draft, DraftStep, RoundResult
from evospec_hf.generation.schedule import ConstantLength, CostAwareLength, EntropyStop, draft_length_rule
from evospec_hf.ops.calibration import forget_loaded, machine_costs

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_llama


def test_starts_at_the_given_length_until_something_is_measured():
    schedule = CostAwareLength()
    assert schedule.choose("drafter", upper=16, start=6) == 6
    assert schedule.choose("lookup", upper=4) == 4
    assert schedule.acceptance("drafter") == 0.5  # one accepted and one rejection, a priori


def test_a_step_in_the_verification_cost_caps_the_length():
    # verifying up to 2 drafts costs one plain step; from 3 on, twice that (a CPU kernel switch)
    costs = {1: 0.070, 2: 0.072, 3: 0.140, 4: 0.142, 5: 0.144, 6: 0.146}
    schedule = CostAwareLength(dict(costs))
    schedule.counts["lookup"] = [3.0, 1.0]  # acceptance 0.75, copying is free
    assert schedule.choose("lookup", upper=6) == 2
    schedule.counts["lookup"] = [99.0, 1.0]  # nearly always accepted: the long rounds pay for themselves
    assert schedule.choose("lookup", upper=6) == 6


def test_drafter_steps_count_against_longer_rounds():
    schedule = CostAwareLength({k: 0.070 for k in range(1, 9)})  # verification as cheap for any length
    schedule.counts["drafter"] = [4.0, 1.0]  # acceptance 0.8
    schedule.step_seconds["drafter"] = 0.0
    assert schedule.choose("drafter", upper=8) == 8
    schedule.step_seconds["drafter"] = 0.030  # each draft step costs 40% of a verification
    assert schedule.choose("drafter", upper=8) < 8


def test_unmeasured_lengths_look_as_cheap_as_the_nearest_shorter_one():
    schedule = CostAwareLength({2: 0.1})
    schedule.counts["lookup"] = [9.0, 1.0]
    assert schedule.choose("lookup", upper=5) == 5  # optimistic: so it gets tried and measured
    schedule.observe("lookup", drafted=5, accepted=1, verify_seconds=0.5, draft_seconds=0.0)
    assert schedule.verify_seconds[5] == 0.5
    assert schedule.choose("lookup", upper=5) < 5


def copy_of(length, match):
    return Draft("lookup", torch.arange(length), match=match)


def test_a_copy_goes_only_where_it_promises_the_drafters_tokens_per_second():
    limits = {"drafter": (4, 8), "lookup": (10, 10)}
    schedule = CostAwareLength({k: 0.070 for k in range(1, 11)}, limits=limits)
    assert schedule.prefer(copy_of(4, match=1))  # nothing known of either: copying is free, take it
    schedule.counts["drafter"] = [8.0, 1.0]  # a drafter accepted 8 times out of 9
    schedule.step_seconds["drafter"] = 0.005
    schedule.counts["lookup@1"] = [1.0, 4.0]  # one-token matches mostly rejected
    schedule.counts["lookup@3"] = [40.0, 1.0]  # three-token matches nearly always accepted
    assert not schedule.prefer(copy_of(4, match=1))
    assert schedule.prefer(copy_of(10, match=3))
    assert schedule.prefer(copy_of(10, match=2))  # never tried: tried once, so that it gets measured
    schedule.counts["lookup@2"] = [1.0, 3.0]
    assert not schedule.prefer(copy_of(10, match=2))
    assert schedule.prefer(Draft("drafter", torch.arange(3)))  # only copies are weighed


def test_copies_are_counted_by_the_length_of_their_match():
    schedule = CostAwareLength({1: 0.1}, decay=0.5, limits={"drafter": (4, 8), "lookup": (10, 10)})
    draft = copy_of(4, match=2)
    schedule.verified(RoundResult(draft, 1, torch.zeros(1, 8, dtype=torch.long), None, 0.1, prefill=False))
    assert schedule.counts["lookup@2"] == [1.5, 1.5] and schedule.counts["lookup"] == [1.5, 1.5]
    assert "lookup@1" not in schedule.counts


def test_a_copy_cut_by_the_stop_check_keeps_its_match_length():
    assert copy_of(6, match=3).truncate(2).match == 3


def test_the_other_rules_always_take_a_copy():
    config = EvoSpecConfig(draft_schedule="heuristic")
    assert draft_length_rule(config).prefer(copy_of(4, match=1))
    assert draft_length_rule(EvoSpecConfig(draft_schedule="constant")).prefer(copy_of(4, match=1))


def test_observations_move_acceptance_and_costs():
    schedule = CostAwareLength(decay=0.5, smoothing=0.5)
    schedule.observe("drafter", drafted=4, accepted=4, verify_seconds=0.2, draft_seconds=0.04)
    assert schedule.counts["drafter"] == [4.5, 0.5] and schedule.step_seconds["drafter"] == 0.01
    schedule.observe("drafter", drafted=4, accepted=0, verify_seconds=0.4, draft_seconds=0.08)
    assert schedule.counts["drafter"] == [2.25, 1.25]
    assert abs(schedule.verify_seconds[4] - 0.3) < 1e-12 and abs(schedule.step_seconds["drafter"] - 0.015) < 1e-12
    schedule.observe("drafter", drafted=0, accepted=0, verify_seconds=1.0, draft_seconds=0.0)  # nothing drafted
    assert 0 not in schedule.verify_seconds
    schedule.observe("drafter", drafted=2, accepted=2, verify_seconds=None, draft_seconds=0.02)  # the prefill round
    assert 2 not in schedule.verify_seconds and schedule.counts["drafter"] == [3.125, 0.625]


def test_greedy_is_exact_and_the_costs_stay_with_the_target():
    forget_loaded()  # the table is per machine and model shape: start this shape's empty, as a new process would
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=1)
    config = EvoSpecConfig(num_draft_tokens=3, max_draft_tokens=8, lookup_tokens=6, draft_schedule="cost")
    stats = DraftStats()
    for seed in range(3):
        phrase = torch.randint(3, VOCAB_SIZE, (1, 8), generator=torch.Generator().manual_seed(seed))
        input_ids = torch.cat([phrase, phrase[:, :4]], dim=-1)
        expected = target.generate(input_ids, max_new_tokens=30, do_sample=False)
        got = target.generate(
            input_ids, max_new_tokens=30, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), seed
    assert stats.rounds > 0 and 0 < stats.lookup_rounds < stats.rounds
    table = machine_costs(target, "verify_seconds")  # kept for this machine and model shape, across calls
    assert table and all(1 <= int(k) <= 8 and seconds > 0 for k, seconds in table.items())


def test_the_prefill_is_not_timed_as_a_round(monkeypatch):
    """The first verification of a call also reads the prompt: its time must not become a draft length's cost."""
    target = tiny_llama(seed=0)
    seen = []
    monkeypatch.setattr(CostAwareLength, "observe", lambda self, *args: seen.append(args))
    # at most 3 drafts a round, so every call has several rounds whatever lengths the measured costs favour
    config = EvoSpecConfig(num_draft_tokens=3, max_draft_tokens=3, lookup_tokens=0, draft_schedule="cost")
    for _ in range(2):  # each call's first round is a prefill
        target.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=12, do_sample=False, assistant_model=target,
                        evospec_config=config)  # fmt: skip
        first, *rest = seen
        assert first[3] is None and rest and all(args[3] is not None for args in rest)
        seen.clear()


def _drafter_round(entropies, accepted):
    """A verified drafter round whose drafts were drafted at `entropies`, of which the first `accepted` passed."""
    steps = [DraftStep(None, torch.zeros(1, 4), torch.zeros(1, 2), h) for h in entropies]
    draft = Draft("drafter", torch.arange(len(entropies)), steps=steps)
    sequence = torch.arange(10 + accepted + 1)[None]
    return RoundResult(draft, accepted, sequence, torch.zeros(1, len(entropies) + 1, 4), 0.01, False)


def test_the_entropy_threshold_follows_what_verification_accepts():
    rule = EntropyStop(ConstantLength({"drafter": (4, 8)}))
    assert rule.threshold == float("inf") and rule.keep_drafting(1e9)  # nothing stops before a rejection
    rule.verified(_drafter_round([0.5, 0.5], accepted=2))
    assert rule.threshold == float("inf")
    rule.verified(_drafter_round([3.0, 3.0], accepted=0))  # accepted at 0.5, rejected at 3.0
    assert rule.threshold == pytest.approx(1.75)
    assert rule.keep_drafting(1.7) and not rule.keep_drafting(1.8)
    start = rule.threshold
    for _ in range(20):  # acceptance rises: drafts at 2.5 pass too
        rule.verified(_drafter_round([2.5, 2.5, 2.5, 2.5], accepted=4))
    risen = rule.threshold
    assert risen > start
    for _ in range(20):  # acceptance falls: drafts at 1.0 are rejected
        rule.verified(_drafter_round([1.0, 1.0], accepted=0))
    assert rule.threshold < risen
    assert rule.means[False] < 3.0
    # only the drafts up to the first rejection count (the rest were never judged); copies carry no entropies
    before = dict(rule.means)
    rule.verified(RoundResult(Draft("lookup", torch.arange(3)), 1, torch.arange(12)[None], torch.zeros(1, 4, 4), 0.01, False))
    assert rule.means == before


def test_the_entropy_stop_wraps_the_configured_rule():
    rule = draft_length_rule(EvoSpecConfig(entropy_stop=True, draft_schedule="heuristic", num_draft_tokens=3))
    assert isinstance(rule, EntropyStop) and rule.length("drafter") == 3
    rule.verified(_drafter_round([0.1, 0.1, 0.1], accepted=3))  # all accepted: the heuristic lengthens by 2
    assert rule.length("drafter") == 5
    assert not isinstance(draft_length_rule(EvoSpecConfig()), EntropyStop)


def test_the_entropy_stop_ends_rounds_where_the_drafter_is_unsure():
    """Each proposed draft after the first was drafted at an entropy within the threshold; a drafter that is unsure
    everywhere (an unrelated model) gets rounds cut, and the output stays plain greedy's."""
    target, drafter = tiny_llama(seed=0), tiny_llama(seed=5, layers=1)
    seen = []
    config = EvoSpecConfig(entropy_stop=True, draft_schedule="constant", num_draft_tokens=6, lookup_tokens=0)

    class Spy(EntropyStop):
        def keep_drafting(self, entropy):
            keep = super().keep_drafting(entropy)
            seen.append((entropy, self.threshold, keep))
            return keep

    stats = DraftStats()
    input_ids = torch.randint(3, VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(0))
    expected = target.generate(input_ids, max_new_tokens=40, do_sample=False)
    with patch("evospec_hf.generation.schedule.EntropyStop", Spy):
        got = target.generate(
            input_ids, max_new_tokens=40, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
    assert torch.equal(got, expected)
    assert seen and all(keep == (entropy <= threshold) for entropy, threshold, keep in seen)
    assert stats.entropy_stops > 0 and stats.drafted < 6 * (stats.rounds - 1)  # rounds were cut
