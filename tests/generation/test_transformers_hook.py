"""Living with transformers: the hook takes what a later transformers may pass, honours or refuses transformers' own
drafting options, and leaves the user's models as they were."""

import warnings

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin

import evospec_hf
from evospec_hf import DraftStats, EvoSpecCandidateGenerator, EvoSpecConfig

from ..conftest import noisy_copy, tiny_llama

PROMPT = torch.tensor([[4, 5, 6]])  # (tiny_llama(seed=0) ends [4, 5, 6, 7] at once)


@pytest.fixture
def captured(monkeypatch):
    """(generator, tokens drafted) of every drafting round."""
    rounds = []
    original = EvoSpecCandidateGenerator.get_candidates

    def spy(self, input_ids, **kwargs):
        ids, logits = original(self, input_ids, **kwargs)
        rounds.append((self, ids.shape[1] - input_ids.shape[1]))
        return ids, logits

    monkeypatch.setattr(EvoSpecCandidateGenerator, "get_candidates", spy)
    return rounds


def newer_transformers(monkeypatch, **extra):
    """transformers' assisted loop, asking for its candidate generator with keywords a later version might add."""
    original = GenerationMixin._assisted_decoding

    def assisted_decoding(self, *args, **kwargs):
        factory = self._get_candidate_generator
        self._get_candidate_generator = lambda **arguments: factory(**arguments, **extra)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "_assisted_decoding", assisted_decoding)


def test_keywords_a_later_transformers_adds_are_taken(monkeypatch):
    target = tiny_llama(seed=0)
    expected = target.generate(PROMPT, max_new_tokens=12, do_sample=False)
    newer_transformers(monkeypatch, synced_streams=None, cache_hint="dynamic")  # not about drafting: ignored
    drafter = noisy_copy(target, 1)
    got = target.generate(PROMPT, max_new_tokens=12, assistant_model=drafter, evospec_config=EvoSpecConfig())
    assert torch.equal(got, expected)


def test_a_drafting_keyword_a_later_transformers_adds_is_refused(monkeypatch):
    target = tiny_llama(seed=0)
    newer_transformers(monkeypatch, assistant_lookahead=4)
    with pytest.raises(ValueError, match="`assistant_lookahead=4`, a drafting option"):
        target.generate(PROMPT, max_new_tokens=12, assistant_model=target, evospec_config=EvoSpecConfig())


def generate_with(target, drafter, where: str, fields: dict, config: EvoSpecConfig, max_new_tokens: int = 16):
    """A batch-size-1 call that sets transformers' drafting `fields` on the call, in the `generation_config` it
    passes, on the drafter's generation config, or on the call of the `custom_generate` entry point."""
    common = dict(max_new_tokens=max_new_tokens, do_sample=False)
    if where == "call":
        return target.generate(PROMPT, **common, **fields, assistant_model=drafter, evospec_config=config)
    if where == "generation_config":
        passed = GenerationConfig(**common, **fields)
        return target.generate(PROMPT, generation_config=passed, assistant_model=drafter, evospec_config=config)
    if where == "drafter":
        for name, value in fields.items():
            setattr(drafter.generation_config, name, value)
        return target.generate(PROMPT, **common, assistant_model=drafter, evospec_config=config)
    assert where == "custom_generate"
    return target.generate(
        PROMPT, **common, **fields, custom_generate=evospec_hf.custom_generate, drafter=drafter, evospec_config=config
    )


WHERE = ["call", "generation_config", "drafter", "custom_generate"]


@pytest.mark.parametrize("where", WHERE)
def test_num_assistant_tokens_is_the_draft_length(captured, where):
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, 1)
    config = EvoSpecConfig(draft_schedule="constant", lookup_tokens=0)  # num_draft_tokens at its default, 6
    got = generate_with(target, drafter, where, {"num_assistant_tokens": 3}, config)
    assert torch.equal(got, target.generate(PROMPT, max_new_tokens=16, do_sample=False))
    assert captured and all(generator.evospec_config.num_draft_tokens == 3 for generator, _ in captured)
    assert [n for _, n in captured[:-1]] == [3] * (len(captured) - 1)  # (the last round may lack room)


@pytest.mark.parametrize("where", WHERE)
def test_num_assistant_tokens_schedule_is_the_draft_schedule(captured, where):
    target = tiny_llama(seed=0)  # drafting for itself: every draft is accepted, so "heuristic" grows by 2
    config = EvoSpecConfig(num_draft_tokens=2, max_draft_tokens=6, lookup_tokens=0)  # draft_schedule: default "cost"
    generate_with(target, target, where, {"num_assistant_tokens_schedule": "heuristic_transient"}, config, 30)
    assert captured and all(generator.evospec_config.draft_schedule == "heuristic" for generator, _ in captured)
    lengths = [n for _, n in captured]
    assert lengths[:3] == [2, 4, 6]


def test_a_schedule_set_to_transformers_default_on_the_call_is_honoured(captured):
    target = tiny_llama(seed=0)
    config = EvoSpecConfig(num_draft_tokens=2, max_draft_tokens=6, lookup_tokens=0)  # draft_schedule: "cost"
    target.generate(PROMPT, max_new_tokens=20, do_sample=False, num_assistant_tokens_schedule="constant",
                    assistant_model=target, evospec_config=config)  # fmt: skip
    assert captured and all(generator.evospec_config.draft_schedule == "constant" for generator, _ in captured)
    assert [n for _, n in captured[:-1]] == [2] * (len(captured) - 1)


@pytest.mark.parametrize("where", WHERE)
def test_assistant_confidence_threshold_is_the_confidence_threshold(captured, where):
    target = tiny_llama(seed=0)
    unrelated = tiny_llama(seed=5, layers=1)  # a random drafter is never confident
    config = EvoSpecConfig(num_draft_tokens=6, draft_schedule="constant", lookup_tokens=0)
    generate_with(target, unrelated, where, {"assistant_confidence_threshold": 0.5}, config, 10)
    assert captured and all(generator.evospec_config.confidence_threshold == 0.5 for generator, _ in captured)
    assert [n for _, n in captured[:-1]] == [1] * (len(captured) - 1)


@pytest.mark.parametrize("where", WHERE)
def test_transformers_heuristic_schedule_is_refused(where):
    target = tiny_llama(seed=0)
    with pytest.raises(ValueError, match=r"EvoSpecConfig\(draft_schedule='heuristic'\)"):
        generate_with(target, noisy_copy(target, 1), where, {"num_assistant_tokens_schedule": "heuristic"},
                      EvoSpecConfig())  # fmt: skip


@pytest.mark.parametrize(
    "fields, config, match",
    [
        ({"num_assistant_tokens": 3}, EvoSpecConfig(num_draft_tokens=5), r"EvoSpecConfig\(num_draft_tokens="),
        ({"num_assistant_tokens_schedule": "constant"}, EvoSpecConfig(draft_schedule="heuristic"), "draft_schedule"),
        ({"assistant_confidence_threshold": 0.3}, EvoSpecConfig(confidence_threshold=0.6), "confidence_threshold"),
        ({"num_assistant_tokens": 20}, EvoSpecConfig(), "must not exceed `max_draft_tokens`"),
    ],
    ids=["tokens", "schedule", "threshold", "above-max"],
)
@pytest.mark.parametrize("where", WHERE)
def test_transformers_fields_that_disagree_with_the_evospec_config_are_refused(where, fields, config, match):
    target = tiny_llama(seed=0)
    with pytest.raises(ValueError, match=match):
        generate_with(target, noisy_copy(target, 1), where, fields, config)


def test_a_batch_refuses_them_too():
    target = tiny_llama(seed=0)
    with pytest.raises(ValueError, match="draft_schedule"):
        target.generate(PROMPT.repeat(2, 1), max_new_tokens=4, num_assistant_tokens_schedule="heuristic",
                        assistant_model=target, evospec_config=EvoSpecConfig())  # fmt: skip


def test_transformers_defaults_left_alone_change_nothing_and_say_nothing(captured, capfd):
    target = tiny_llama(seed=0)
    config = EvoSpecConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target.generate(PROMPT, max_new_tokens=12, do_sample=False, assistant_model=noisy_copy(target, 1),
                        evospec_config=config)  # fmt: skip
    assert captured and all(generator.evospec_config is config for generator, _ in captured)
    assert capfd.readouterr().err == ""  # nor a line from transformers' logger


def state(model) -> tuple:
    """What a call could leave behind on a model: its generation config, every module's attributes, its hooks."""
    modules = list(model.modules())
    attributes = [sorted(vars(m)) for m in modules]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules]
    return model.generation_config.to_dict(), attributes, hooks, len(modules)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(dict(evospec_config=EvoSpecConfig()), id="default"),
        pytest.param(dict(evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=40)), id="context"),
        pytest.param(dict(evospec_config=EvoSpecConfig(), num_assistant_tokens=3), id="honoured-field"),
        pytest.param(dict(evospec_config=EvoSpecConfig(), drafter_schedule="heuristic"), id="refused-field"),
        pytest.param(dict(evospec_config=EvoSpecConfig(), batch=2), id="batch"),
        pytest.param(dict(evospec_config=EvoSpecConfig(), custom_generate=evospec_hf.custom_generate), id="custom"),
    ],
)
def test_a_call_leaves_the_models_as_they_were(call):
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, 1)
    call = dict(call)
    schedule = call.pop("drafter_schedule", None)
    if schedule is not None:  # transformers writes the draft length back into a drafter with this schedule
        drafter.generation_config.num_assistant_tokens_schedule = schedule
    prompt = PROMPT.repeat(call.pop("batch", 1), 1)
    if "custom_generate" in call:
        call["drafter"] = drafter
    else:
        call["assistant_model"] = drafter
    before = state(target), state(drafter)
    try:
        target.generate(prompt, max_new_tokens=12, do_sample=False, evospec_stats=DraftStats(), **call)
    except ValueError:
        assert schedule is not None  # refused: still nothing left behind
    assert (state(target), state(drafter)) == before
