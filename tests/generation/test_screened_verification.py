"""The target's LM head screened in int8 during greedy verification (`EvoSpecConfig.screen_head`) and in plain
greedy (`evospec_hf.screened_greedy`): plain greedy's tokens on seven architectures, both drafters, lookup on and
off; the full head wherever a call reads more than the argmax; one int8 copy shared by threads and renewed when the
weights change."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.ops import screened_head
from evospec_hf.ops.screened_head import integer_product_is_exact

from ..conftest import (
    ARCHITECTURES, VOCAB_SIZE, distilled_feature_drafter, more_architectures, noisy_copy, run_together, sharpened,
    target_text,
)  # fmt: skip

pytestmark = pytest.mark.skipif(not integer_product_is_exact(), reason="no exact int8 product on this machine")

BUILDERS = {**ARCHITECTURES, **more_architectures()}
SCREEN = dict(screen_head="on")


def prompt(seed, length=12):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


def plain(target, input_ids, **kwargs):
    return target.generate(input_ids, max_new_tokens=24, do_sample=False, **kwargs)


@pytest.fixture(scope="module", params=list(BUILDERS))
def target(request):
    return BUILDERS[request.param](0)


@pytest.mark.parametrize("lookup_tokens", [0, 10], ids=["no-lookup", "lookup"])
def test_token_drafter_through_the_screen_is_plain_greedy(target, lookup_tokens):
    drafter = noisy_copy(target, seed=1)
    config = EvoSpecConfig(shortlist="context", shortlist_size=40, context_slots=16, lookup_tokens=lookup_tokens, **SCREEN)
    stats = DraftStats()
    for seed in range(3):
        expected = plain(target, prompt(seed))
        got = plain(target, prompt(seed), assistant_model=drafter, evospec_config=config, evospec_stats=stats)
        assert torch.equal(got, expected), f"prompt {seed}"
    assert stats.screen_calls == stats.rounds > 0 and stats.screen_fallbacks == 0
    assert stats.screen_positions == stats.rounds + stats.drafted  # every verified position went through it


def test_plain_greedy_through_the_screen(target):
    stats, new_tokens = DraftStats(), 0
    for seed in range(3):
        expected = plain(target, prompt(seed))
        got = plain(
            target, prompt(seed), custom_generate=evospec_hf.screened_greedy, evospec_config=EvoSpecConfig(**SCREEN),
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"prompt {seed}"
        new_tokens += got.shape[1] - 12
    assert stats.screen_calls == new_tokens and stats.screen_fallbacks == 0  # one forward per token
    assert max(stats.screen_survivors) < VOCAB_SIZE  # it excludes rows (96 rows, hidden 32: a few survive)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("lookup_tokens", [0, 10], ids=["no-lookup", "lookup"])
def test_feature_drafter_through_the_screen_is_plain_greedy(arch, lookup_tokens, tmp_path):
    target = sharpened(ARCHITECTURES[arch](seed=0, layers=3))
    drafter = distilled_feature_drafter(target, tmp_path, steps=40, chunks=target_text(target, 16))
    config = EvoSpecConfig(shortlist="full", lookup_tokens=lookup_tokens, **SCREEN)
    stats = DraftStats()
    for seed in range(2):
        expected = plain(target, prompt(seed))
        got = plain(target, prompt(seed), assistant_model=drafter, evospec_config=config, evospec_stats=stats)
        assert torch.equal(got, expected), f"prompt {seed}"
    assert stats.screen_calls == stats.rounds > 0


def test_a_head_with_a_bias():
    """A bias is part of each row's logit: the screen's argmax follows it (here it moves most tokens)."""
    target = ARCHITECTURES["llama"](seed=0)
    drafter = noisy_copy(target, seed=1)
    head = target.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.copy_(torch.randn(VOCAB_SIZE, generator=torch.Generator().manual_seed(0)) * 0.5)
    target.lm_head = biased
    stats = DraftStats()
    for seed in range(3):
        expected = plain(target, prompt(seed))
        got = plain(
            target, prompt(seed), assistant_model=drafter, evospec_config=EvoSpecConfig(shortlist="full", **SCREEN),
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected)
    assert stats.screen_calls > 0


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"repetition_penalty": 1.3}, id="repetition-penalty"),
        pytest.param({"logits_processor": [RepetitionPenaltyLogitsProcessor(1.3)]}, id="user-processor"),
        pytest.param({"output_scores": True, "return_dict_in_generate": True}, id="output-scores"),
        pytest.param({"output_logits": True, "return_dict_in_generate": True}, id="output-logits"),
    ],
)
@pytest.mark.parametrize("entry", ["assisted", "plain"])
def test_calls_that_read_more_than_the_argmax_get_the_full_head(extra, entry):
    target = ARCHITECTURES["gemma3"](seed=0)  # softcapped: the scores are the full head's after the transform
    kwargs = {"assistant_model": noisy_copy(target, seed=1)} if entry == "assisted" else {
        "custom_generate": evospec_hf.screened_greedy
    }  # fmt: skip
    stats = DraftStats()
    expected = plain(target, prompt(0), **extra)
    got = plain(target, prompt(0), evospec_config=EvoSpecConfig(**SCREEN), evospec_stats=stats, **kwargs, **extra)
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected)
    else:
        assert torch.equal(got.sequences, expected.sequences)
        for mine, theirs in zip(got.scores or got.logits, expected.scores or expected.logits):
            torch.testing.assert_close(mine[:, :VOCAB_SIZE], theirs, rtol=1e-5, atol=1e-5)
            assert bool(torch.isfinite(mine).all())  # every logit computed, none screened out
    assert stats.screen_calls == 0 and stats.screen_full_calls > 0


def sample(target, input_ids, seed, **kwargs):
    torch.manual_seed(seed)
    return target.generate(input_ids, max_new_tokens=24, do_sample=True, **kwargs)


@pytest.mark.parametrize("entry", ["assisted", "plain"])
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_top_k_sampling_through_the_screen_samples_the_same_tokens(arch, entry):
    """With a top-k filter the screen keeps every row of each position's top k with its exact logit, so the
    processed distribution is the full head's: with the same seed, the same tokens are sampled. (A constant draft
    length: the "cost" rule reads the clock, and a different length draws different random numbers.)"""
    target = BUILDERS[arch](0)
    kwargs = {"assistant_model": noisy_copy(target, seed=1)} if entry == "assisted" else {
        "custom_generate": evospec_hf.screened_greedy
    }  # fmt: skip
    stats = DraftStats()
    for seed in range(3):
        sampling = dict(top_k=8, top_p=0.9, temperature=0.7)
        off, on = (EvoSpecConfig(draft_schedule="constant", screen_head=mode) for mode in ("off", "on"))
        expected = sample(target, prompt(seed), seed, evospec_config=off, **kwargs, **sampling)
        got = sample(target, prompt(seed), seed, evospec_config=on, evospec_stats=stats, **kwargs, **sampling)
        assert torch.equal(got, expected), f"prompt {seed}"
    assert stats.screen_calls > 0 and stats.screen_full_calls == 0 and stats.screen_fallbacks == 0
    assert max(stats.screen_survivors) >= 8


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"top_k": 0}, id="no-top-k"),
        pytest.param({"top_k": 8, "repetition_penalty": 1.3}, id="penalty-before-top-k"),
    ],
)
def test_sampling_that_reads_every_probability_gets_the_full_head(extra):
    target = ARCHITECTURES["llama"](seed=0)
    stats = DraftStats()
    sample(
        target, prompt(0), 0, assistant_model=noisy_copy(target, seed=1), evospec_config=EvoSpecConfig(**SCREEN),
        evospec_stats=stats, **extra,
    )  # fmt: skip
    assert stats.screen_calls == 0 and stats.screen_full_calls > 0


def test_screen_plan():
    """Which calls may be screened, and how many rows per position each keeps exact."""
    from transformers import GenerationConfig, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

    from evospec_hf.generation.integration import screen_plan

    target = ARCHITECTURES["llama"](seed=0)

    def plan(**kwargs):
        config = GenerationConfig(**kwargs)
        processors = target._get_logits_processor(config, 12, prompt(0), None, LogitsProcessorList())
        return screen_plan(config, processors)

    assert plan(do_sample=False) == (1, None)
    assert plan(do_sample=True, top_k=40) == (40, None)
    assert plan(do_sample=True, top_k=40, temperature=0.5, top_p=0.9, min_p=0.1) == (40, None)
    assert plan(do_sample=True, top_k=None)[0] == 0
    assert plan(do_sample=True, top_k=40, top_h=0.5)[0] == 0  # another filter runs before the top k
    assert plan(do_sample=True, top_k=40, repetition_penalty=1.2)[0] == 0
    assert plan(do_sample=False, no_repeat_ngram_size=2)[0] == 0
    assert plan(do_sample=True, top_k=40, output_scores=True)[0] == 0
    assert plan(do_sample=True, top_k=20_000)[0] == 0  # more rows than the screen rescores
    custom = LogitsProcessorList([TopKLogitsWarper(5, filter_value=-1e4), TopPLogitsWarper(0.5)])
    assert screen_plan(GenerationConfig(do_sample=True), custom)[0] == 0  # it keeps a value for every row


def test_lossy_acceptance_gets_the_full_head():
    """AdaSD's lossy acceptance compares the draft and target distributions: it needs every logit."""
    target = ARCHITECTURES["llama"](seed=0)
    stats = DraftStats()
    config = EvoSpecConfig(entropy_stop=True, lossy_acceptance="adasd-js", **SCREEN)
    plain(target, prompt(0), assistant_model=noisy_copy(target, seed=1), evospec_config=config, evospec_stats=stats)
    assert stats.screen_calls == 0 and stats.screen_full_calls > 0


def test_off_leaves_the_head_alone():
    target = ARCHITECTURES["llama"](seed=0)
    stats = DraftStats()
    config = EvoSpecConfig(screen_head="off")
    plain(target, prompt(0), assistant_model=noisy_copy(target, seed=1), evospec_config=config, evospec_stats=stats)
    assert stats.screen_calls == 0 and stats.screen_full_calls == 0


def test_threads_share_one_int8_copy(monkeypatch):
    target = ARCHITECTURES["llama"](seed=0, vocab_size=VOCAB_SIZE)
    drafter = noisy_copy(target, seed=1)
    packed = []
    real_pack = screened_head.Int8Head.pack.__func__

    def counting_pack(cls, weight, bias=None):
        packed.append(weight.data_ptr())
        return real_pack(cls, weight, bias)

    monkeypatch.setattr(screened_head.Int8Head, "pack", classmethod(counting_pack))
    expected = [plain(target, prompt(seed)) for seed in range(6)]

    def call(seed):
        stats = DraftStats()
        kwargs = (
            {"assistant_model": drafter} if seed % 2 else {"custom_generate": evospec_hf.screened_greedy}
        )  # half the threads draft, half decode plainly: all share the target's head
        out = plain(target, prompt(seed), evospec_config=EvoSpecConfig(**SCREEN), evospec_stats=stats, **kwargs)
        return out, stats.screen_calls

    for _ in range(3):
        results = run_together([lambda seed=seed: call(seed) for seed in range(6)])
        for seed, (out, screened) in enumerate(results):
            assert torch.equal(out, expected[seed]) and screened > 0
    assert len(packed) == 1  # one copy, made once, read by every thread


def test_changed_weights_are_packed_again():
    target = ARCHITECTURES["llama"](seed=0)
    config = EvoSpecConfig(**SCREEN)
    screened = dict(custom_generate=evospec_hf.screened_greedy, evospec_config=config)
    assert torch.equal(plain(target, prompt(0), **screened), plain(target, prompt(0)))
    with torch.no_grad():  # a fine-tuning step, in place: a stale int8 copy would pick the old argmax
        target.lm_head.weight.copy_(torch.roll(target.lm_head.weight, 1, dims=0))
    assert torch.equal(plain(target, prompt(0), **screened), plain(target, prompt(0)))


def test_auto_times_the_screen_against_the_full_head():
    """`auto` times both for a row count, then keeps one: on a 96-row head the full head wins, so after the trials
    every call runs it; the output is plain greedy's either way."""
    target = ARCHITECTURES["llama"](seed=0)
    stats = DraftStats()
    out = plain(target, prompt(0), custom_generate=evospec_hf.screened_greedy, evospec_stats=stats)
    assert torch.equal(out, plain(target, prompt(0)))
    assert stats.screen_calls >= 2 and stats.screen_full_calls >= 2  # the trials of each (one row per step)
    assert stats.screen_calls + stats.screen_full_calls == out.shape[1] - 12
