"""`OnlineAlignmentConfig`: its checks, and the curriculum fields that `OnlineAligner._advance_curriculum` reads."""

import re

import pytest
import torch

from evospec_hf import OnlineAlignmentConfig
from evospec_hf.evolve.online import AlignerState, AlignmentStats, OnlineAligner


def test_curriculum_defaults_are_the_former_constants():
    config = OnlineAlignmentConfig()
    assert (config.curriculum_growth, config.curriculum_end_rank) == (4, 4096)
    assert (config.curriculum_acceptance_gain, config.curriculum_acceptance_rounds) == (0.05, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"curriculum_growth": 1}, "`curriculum_growth` must be an integer >= 2, got 1.", id="growth-one"),
        pytest.param({"curriculum_growth": 4.0}, "`curriculum_growth` must be an integer >= 2, got 4.0.", id="growth-float"),
        pytest.param({"curriculum_end_rank": 0}, "`curriculum_end_rank` must be a positive integer, got 0.", id="end-zero"),
        pytest.param(
            {"curriculum_acceptance_gain": -0.1}, "`curriculum_acceptance_gain` must be a number >= 0, got -0.1.",
            id="gain-negative",
        ),
        pytest.param(
            {"curriculum_acceptance_gain": "0.05"}, "`curriculum_acceptance_gain` must be a number >= 0, got '0.05'.",
            id="gain-str",
        ),
        pytest.param(
            {"curriculum_acceptance_rounds": 0}, "`curriculum_acceptance_rounds` must be a positive integer, got 0.",
            id="rounds-zero",
        ),
        pytest.param(
            {"curriculum_acceptance_rounds": True}, "`curriculum_acceptance_rounds` must be a positive integer, got True.",
            id="rounds-bool",
        ),
        # the older fields get the same type checks
        pytest.param({"lr": "1e-3"}, "`lr` must be a number > 0, got '1e-3'.", id="lr-str"),
        pytest.param({"max_loss_ratio": 1}, "`max_loss_ratio` must be a number > 1, got 1.", id="loss-ratio-one"),
        pytest.param({"async_updates": "yes"}, "`async_updates` must be True or False, got 'yes'.", id="async-str"),
        pytest.param({"refresh_cache": 1}, "`refresh_cache` must be True or False, got 1.", id="refresh-int"),
        pytest.param({"kd": None}, "`kd` must be one of ('topk', 'full'), got None.", id="kd-none"),
        pytest.param({"seed": 1.5}, "`seed` must be an integer, got 1.5.", id="seed-float"),
        pytest.param({"batch_size": True}, "`batch_size` must be a positive integer, got True.", id="batch-bool"),
        pytest.param(
            {"curriculum_start_rank": 0}, "`curriculum_start_rank` must be None or a positive integer, got 0.",
            id="start-rank-zero",
        ),
        pytest.param(
            {"min_replay": 200, "replay_size": 128}, "`min_replay` (200) must not exceed `replay_size` (128)",
            id="min-replay-over-size",
        ),
        pytest.param({"learn": "async"}, "`learn` must be one of ('between-calls', 'in-loop'), got 'async'.", id="learn"),
        pytest.param({"anchor": 1.0}, "`anchor` must be a number >= 0 and < 1, got 1.0.", id="anchor-one"),
        pytest.param({"anchor": -0.1}, "`anchor` must be a number >= 0 and < 1, got -0.1.", id="anchor-negative"),
        pytest.param(
            {"updates_per_pause": -1}, "`updates_per_pause` must be None or a non-negative integer, got -1.",
            id="updates-per-pause-negative",
        ),
        pytest.param({"governor_calls": 0}, "`governor_calls` must be a positive integer, got 0.", id="governor-calls"),
        pytest.param({"governor": "on"}, "`governor` must be True or False, got 'on'.", id="governor-str"),
        pytest.param({"teach_rejected": 1}, "`teach_rejected` must be True or False, got 1.", id="teach-rejected-int"),
    ],
)  # fmt: skip
def test_invalid_values_name_the_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OnlineAlignmentConfig(**kwargs)


def test_validate_catches_fields_changed_after_construction():
    config = OnlineAlignmentConfig()
    config.curriculum_growth = 1
    with pytest.raises(ValueError, match="`curriculum_growth`"):
        config.validate()


def curriculum(**overrides) -> OnlineAligner:
    """An aligner whose curriculum can be stepped by hand: `_advance_curriculum` reads only the config, the state and
    the accepted tokens per round, so the model parts are placeholders."""
    config = OnlineAlignmentConfig(**{"curriculum_start_rank": 4, "curriculum_patience": 100, **overrides})
    params = {"placeholder": torch.nn.Parameter(torch.zeros(1))}
    return OnlineAligner(None, None, None, None, params, config, AlignerState(config), AlignmentStats())


def advance(aligner, accepted: list[int]) -> int | None:
    """Records rounds that accepted `accepted` tokens, ends an update, and returns the bound after it."""
    aligner.stats.accepted_per_round.extend(accepted)
    aligner._advance_curriculum()
    return aligner.state.max_rank


def test_growth_sets_how_much_the_bound_widens_per_stage():
    for growth, bounds in ((4, [16, 64]), (2, [8, 16])):
        aligner = curriculum(curriculum_patience=1, curriculum_growth=growth)
        assert [advance(aligner, [0]), advance(aligner, [0])] == bounds


def test_end_rank_sets_where_the_curriculum_ends():
    aligner = curriculum(curriculum_patience=1, curriculum_end_rank=16)
    assert advance(aligner, [0]) == 16  # not above the end rank: still bounded
    assert advance(aligner, [0]) is None  # 64 > 16: every position is taught from now on
    aligner = curriculum(curriculum_patience=1)
    assert [advance(aligner, [0]) for _ in range(5)] == [16, 64, 256, 1024, 4096]
    assert advance(aligner, [0]) is None  # 16384 > 4096


@pytest.mark.parametrize("gain, widens", [(0.05, True), (0.5, True), (1.5, False)])
def test_acceptance_gain_sets_when_a_stage_ends_early(gain, widens):
    aligner = curriculum(curriculum_acceptance_gain=gain)
    assert advance(aligner, [0] * 16) == 4  # the stage's first update: acceptance 0 when it began
    # acceptance rose by 1 token per round over the last 16 rounds; patience (100) is far off
    assert advance(aligner, [1] * 16) == (16 if widens else 4)


@pytest.mark.parametrize("rounds, widens", [(16, False), (2, True)])
def test_acceptance_rounds_set_the_window_acceptance_is_measured_over(rounds, widens):
    aligner = curriculum(curriculum_acceptance_gain=1.0, curriculum_acceptance_rounds=rounds)
    assert advance(aligner, [0] * 16) == 4
    # the last 2 rounds accepted 3 tokens each: +3 over 2 rounds, but only +0.375 over 16
    assert advance(aligner, [3, 3]) == (16 if widens else 4)
