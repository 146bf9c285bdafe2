"""`LearningGovernor` on its own: learning stays on only while the seconds it saves cover the seconds it costs."""

import pytest

from evospec_hf.evolve.governor import CallMeasure, LearningGovernor
from evospec_hf.utils import expected_tokens_per_round as expected_tau


def test_expected_tau():
    assert expected_tau(0.0, 4) == pytest.approx(1.0)  # nothing accepted: the target's own token only
    assert expected_tau(0.5, 1) == pytest.approx(1.5)
    assert expected_tau(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tau(0.9, 4) > expected_tau(0.8, 4) > expected_tau(0.8, 1)
    assert expected_tau(1.0, 4) == 5.0  # every draft accepted
    assert expected_tau(0.6, 2.5) == pytest.approx((1 - 0.6**3.5) / 0.4)  # a mean draft length


def call(learned: float, shipped: float, waited: float = 0.0, seconds: float = 4.0) -> CallMeasure:
    hits = (round(learned * 100), 100), (round(shipped * 100), 100)
    return CallMeasure(seconds, waited, drafted=4.0, learned=hits[0], shipped=hits[1])


def run(governor, measures):
    return [governor.observe(i + 1, m) for i, m in enumerate(measures)]


def test_a_worse_adapter_turns_learning_off_and_goes_back_to_the_shipped_one():
    verdicts = run(LearningGovernor(calls=3), [call(0.55, 0.60)] * 4)
    assert [v.learning for v in verdicts] == [True, True, False, False]  # it waits for `calls` measured calls
    assert verdicts[2].saved_s < 0 and not verdicts[-1].use_learned


def test_a_better_adapter_keeps_learning_while_it_costs_nothing():
    verdicts = run(LearningGovernor(calls=3), [call(0.65, 0.60)] * 6)
    assert all(v.learning and v.use_learned for v in verdicts)
    assert verdicts[0].saved_s > 0 and verdicts[0].cost_s == 0


def test_a_better_adapter_that_costs_more_than_it_saves_stops_learning_but_is_kept():
    measures = [call(0.62, 0.60, waited=0.5)] * 3
    saved = LearningGovernor(calls=3).observe(1, measures[0]).saved_s
    assert 0 < saved < 0.5  # the gain is real but smaller than the time the calls waited
    verdicts = run(LearningGovernor(calls=3), measures)
    assert not verdicts[-1].learning and verdicts[-1].use_learned


def test_the_saving_is_the_calls_drafting_time_times_the_tau_ratio():
    verdict = LearningGovernor(calls=1).observe(1, call(0.7, 0.6, waited=1.0, seconds=5.0))
    ratio = expected_tau(0.7, 4) / expected_tau(0.6, 4)
    assert verdict.saved_s == pytest.approx(4.0 * (ratio - 1))


def test_copied_rounds_are_no_saving():
    """A call half of whose rounds were copies (prompt lookup) saves half as much from the same agreements."""
    whole = LearningGovernor(calls=1).observe(1, call(0.7, 0.6))
    half = LearningGovernor(calls=1).observe(1, CallMeasure(4.0, 0.0, 4.0, (70, 100), (60, 100), drafter_share=0.5))
    assert whole.saved_s > 0 and half.saved_s == pytest.approx(whole.saved_s / 2)
    assert half.drafter_share == 0.5


def test_a_calls_measure_counts_only_the_drafters_rounds_and_the_time_spent_learning():
    rounds = [(4, False), (6, True), (2, False), (3, True)]  # (tokens drafted, copied from the context)
    measure = CallMeasure.of_call(2.0, 0.25, [100.0, 50.0], rounds, (8, 10), (6, 10))
    assert measure == CallMeasure(2.0, 0.25 + 0.15, 3.0, (8, 10), (6, 10), drafter_share=0.5)
    empty = CallMeasure.of_call(1.0, 0.0, [], [], (0, 0), (0, 0))
    assert (empty.drafted, empty.drafter_share, empty.waited) == (0.0, 0.0, 0.0)
