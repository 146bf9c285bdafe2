"""The core promise: with `evospec_config`, greedy output equals plain greedy `generate`, token for token."""

import copy

import pytest
import torch
from transformers import TextStreamer

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig

from ..conftest import (
    ARCHITECTURES, VOCAB_SIZE, centroid_router, noisy_copy, tiny_cohere, tiny_inkling, tiny_llama4_text,
)  # fmt: skip

MODES = ["full", "static", "context", "static+context", "router", "router+context", "evospec"]


def config_for(mode, static_table_path, router=None, **overrides):
    # the 'heuristic' schedule: draft lengths that do not depend on timings, so the counts below are reproducible
    # ('cost', the default, is tested by `test_cost_schedule_equals_plain_greedy`)
    # `screen_head="on"`: every verification goes through the target's int8 screen (`auto` would time it against
    # the full head, which wins at these tiny sizes), so the tests below check the screen's exactness too
    kwargs = dict(
        shortlist=mode, shortlist_size=40, context_slots=16, num_draft_tokens=4, confidence_threshold=None,
        draft_schedule="heuristic", screen_head="on",
    )  # fmt: skip
    if "static" in mode:
        kwargs["static_shortlist_path"] = static_table_path
    if "router" in mode or mode == "evospec":
        kwargs["router_path"] = router
    kwargs.update(overrides)
    return EvoSpecConfig(**kwargs)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def pair(request, tmp_path_factory):
    """(name, target, drafters, router folder): a noisy copy of the target (high, imperfect agreement) and an
    unrelated 1-layer model; a router made for the target's head (`centroid_router`), so routed drafts can land."""
    build = ARCHITECTURES[request.param]
    target = build(seed=0)
    drafters = {"noisy-copy": noisy_copy(target, seed=1), "unrelated": build(seed=2, layers=1)}
    return request.param, target, drafters, centroid_router(target, tmp_path_factory.mktemp(f"router-{request.param}"))


def prompt(seed, length=12):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "drafter_kind, lookup_tokens",
    [("noisy-copy", 10), pytest.param("noisy-copy", 0, id="noisy-copy-no-lookup"), ("unrelated", 10)],
)
def test_greedy_equals_plain_greedy(pair, mode, drafter_kind, lookup_tokens, static_table_path):
    _, target, drafters, router = pair
    config = config_for(mode, static_table_path, router, lookup_tokens=lookup_tokens)
    stats = DraftStats()
    for seed in range(2):
        input_ids = prompt(seed)
        expected = target.generate(input_ids, max_new_tokens=24, do_sample=False)
        got = target.generate(
            input_ids, max_new_tokens=24, do_sample=False,
            assistant_model=drafters[drafter_kind], evospec_config=config, evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{mode}/{drafter_kind} prompt {seed}"
    assert stats.rounds > 0 and stats.drafted > stats.rounds  # several tokens drafted per round
    assert stats.screen_calls == stats.rounds and stats.screen_fallbacks == 0  # every verification was screened
    if drafter_kind == "noisy-copy":
        # the drafter itself (not only the context lookup) must get drafts accepted, or the test proves little
        assert stats.drafter_accepted > 0, stats
        if mode == "full":
            assert stats.mean_accepted_length > 2.0, stats
    if lookup_tokens == 0:
        assert stats.lookup_rounds == 0


@pytest.mark.parametrize(
    "build", [tiny_cohere, tiny_inkling, tiny_llama4_text], ids=["cohere", "inkling", "llama4_text"]
)
@pytest.mark.parametrize("drafter_kind", ["noisy-copy", "first-layer", "feature"])
@pytest.mark.parametrize("batch", [1, 2])
def test_scaled_heads_and_llama4_equal_plain_greedy(build, drafter_kind, batch):
    """Cohere scales its head's output (`logit_scale`), Inkling its input (`logits_mup_width_multiplier`); Llama 4
    returns MoE outputs and keeps its body where its `base_model_prefix` does not say. Drafters of three kinds draft
    through them, one prompt or a batch of two (Inkling's batch is refused by name)."""
    from evospec_hf.models import drafter_from_target, feature_drafter_from_target

    target = build(seed=0)
    if build is tiny_inkling and batch > 1:  # its cache's layers hold convolution states a batch cannot trim
        batch_ids = torch.randint(3, VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(60))
        with pytest.raises(ValueError, match=r"batched evospec_hf cannot run inkling_text \(InklingForCausalLM\)"):
            target.generate(batch_ids, max_new_tokens=4, assistant_model=noisy_copy(target, seed=1),
                            evospec_config=EvoSpecConfig())  # fmt: skip
        return
    drafter = {
        "noisy-copy": lambda: noisy_copy(target, seed=1),
        "first-layer": lambda: drafter_from_target(target, 1),
        "feature": lambda: feature_drafter_from_target(target, 1),
    }[drafter_kind]()
    config = EvoSpecConfig(
        shortlist="context", shortlist_size=40, num_draft_tokens=4, draft_schedule="heuristic", screen_head="on",
        lookup_tokens=0,
    )  # fmt: skip
    stats = DraftStats()
    for seed in range(2):
        input_ids = torch.randint(3, VOCAB_SIZE, (batch, 12), generator=torch.Generator().manual_seed(60 + seed))
        inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        expected = target.generate(**inputs, max_new_tokens=24, do_sample=False)
        got = target.generate(
            **inputs, max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{drafter_kind} prompt {seed}"
    assert stats.drafter_accepted > 0, stats  # the drafter drafted through the architecture's head


@pytest.mark.parametrize("mode", MODES)
def test_cost_schedule_equals_plain_greedy(pair, mode, static_table_path):
    """The default schedule picks lengths from measured timings: whatever it picks, the output is plain greedy's."""
    _, target, drafters, router = pair
    config = config_for(mode, static_table_path, router, draft_schedule="cost", max_draft_tokens=8)
    stats = DraftStats()
    for seed in range(3):
        input_ids = prompt(20 + seed)
        expected = target.generate(input_ids, max_new_tokens=24, do_sample=False)
        got = target.generate(
            input_ids, max_new_tokens=24, do_sample=False, assistant_model=drafters["noisy-copy"],
            evospec_config=config, evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{mode} prompt {seed}"
    assert stats.rounds > 0 and stats.drafter_accepted > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("schedule", ["cost", "constant"])
def test_entropy_stop_equals_plain_greedy(pair, mode, schedule, static_table_path):
    """AdaSD's entropy stop cuts rounds short (with the unrelated drafter and long rounds it must: `entropy_stops`);
    whatever it cuts, the output is plain greedy's."""
    _, target, drafters, router = pair
    config = config_for(mode, static_table_path, router, draft_schedule=schedule, entropy_stop=True, lookup_tokens=0)
    for kind in ("noisy-copy", "unrelated"):
        stats = DraftStats()
        for seed in range(2):
            input_ids = prompt(40 + seed)
            expected = target.generate(input_ids, max_new_tokens=24, do_sample=False)
            got = target.generate(
                input_ids, max_new_tokens=24, do_sample=False, assistant_model=drafters[kind],
                evospec_config=config, evospec_stats=stats,
            )  # fmt: skip
            assert torch.equal(got, expected), f"{mode}/{kind} prompt {seed}"
        if kind == "noisy-copy":
            assert stats.drafter_accepted > 0, stats
        elif schedule == "constant" and sum(a == 0 for a in stats.accepted_per_round) >= 3:
            # rejected often, so a threshold was learned early ("cost" drafts one token a round for such a drafter)
            assert stats.entropy_stops > 0, stats


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the compiled Triton head)")
@pytest.mark.parametrize("mode", MODES)
def test_greedy_on_cuda_with_the_triton_head(pair, mode, static_table_path):
    _, target, drafters, router = pair
    target, drafter = copy.deepcopy(target).cuda(), copy.deepcopy(drafters["noisy-copy"]).cuda()
    config = config_for(mode, static_table_path, router, head_backend="triton")
    stats = DraftStats()
    for seed in range(2):
        input_ids = prompt(seed).cuda()
        expected = target.generate(input_ids, max_new_tokens=24, do_sample=False)
        got = target.generate(
            input_ids, max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{mode} prompt {seed}"
    assert stats.mean_accepted_length > 1.0, stats


@pytest.mark.parametrize("mode", MODES)
def test_custom_generate_path_equals_plain_greedy(pair, mode, static_table_path):
    _, target, drafters, router = pair
    input_ids = prompt(5)
    expected = target.generate(input_ids, max_new_tokens=20, do_sample=False)
    got = target.generate(
        input_ids, max_new_tokens=20, do_sample=False,
        custom_generate=evospec_hf.custom_generate, drafter=drafters["noisy-copy"],
        evospec_config=config_for(mode, static_table_path, router),
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_custom_generate_path_works_without_the_hook(pair, static_table_path):
    _, target, drafters, router = pair
    input_ids = prompt(6)
    expected = target.generate(input_ids, max_new_tokens=12, do_sample=False)
    evospec_hf.uninstall()
    try:
        with pytest.raises(ValueError, match="evospec_config"):  # plain transformers refuses the unknown kwarg
            target.generate(input_ids, max_new_tokens=4, assistant_model=drafters["noisy-copy"], evospec_config=EvoSpecConfig())
        got = target.generate(
            input_ids, max_new_tokens=12, do_sample=False, custom_generate=evospec_hf.custom_generate,
            drafter=drafters["noisy-copy"], evospec_config=config_for("context", static_table_path, router),
        )  # fmt: skip
    finally:
        evospec_hf.install()
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mode", MODES)
def test_edge_cases(pair, mode, static_table_path):
    _, target, drafters, router = pair
    drafter = drafters["noisy-copy"]
    config = config_for(mode, static_table_path, router)
    input_ids = prompt(7)

    def both(**kwargs):
        expected = target.generate(input_ids, do_sample=False, **kwargs)
        got = target.generate(input_ids, do_sample=False, assistant_model=drafter, evospec_config=config, **kwargs)
        assert torch.equal(got, expected), kwargs
        return got

    assert both(max_new_tokens=1).shape[1] == input_ids.shape[1] + 1
    assert both(max_length=input_ids.shape[1] + 9).shape[1] == input_ids.shape[1] + 9
    # stopping on EOS: make the target's 5th greedy token the EOS id
    plain = target.generate(input_ids, max_new_tokens=8, do_sample=False)
    stop_token = int(plain[0, input_ids.shape[1] + 4])
    out = both(max_new_tokens=30, eos_token_id=stop_token)
    assert out[0, -1] == stop_token and out.shape[1] <= input_ids.shape[1] + 5
    # user logits processors apply to target and drafter alike
    both(max_new_tokens=16, repetition_penalty=1.3, no_repeat_ngram_size=2)


def test_streamer_receives_exactly_the_generated_tokens(pair, static_table_path):
    _, target, drafters, router = pair

    class Collect(TextStreamer):
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    input_ids = prompt(8)
    plain_streamer, evo_streamer = Collect(), Collect()
    expected = target.generate(input_ids, max_new_tokens=15, do_sample=False, streamer=plain_streamer)
    got = target.generate(
        input_ids, max_new_tokens=15, do_sample=False, streamer=evo_streamer,
        assistant_model=drafters["noisy-copy"], evospec_config=config_for("static+context", static_table_path, router),
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert evo_streamer.ended
    flat = [t for chunk in evo_streamer.chunks for t in chunk]
    assert flat == [t for chunk in plain_streamer.chunks for t in chunk] == got[0].tolist()


def test_generation_without_evospec_config_is_untouched(pair):
    """A call without `evospec_config` runs transformers' own code: HF assisted generation still uses HF's drafter."""
    _, target, drafters, router = pair
    input_ids = prompt(9)
    drafter = drafters["noisy-copy"]
    calls = []
    original = drafter.generate
    drafter.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        target.generate(input_ids, max_new_tokens=6, do_sample=False, assistant_model=drafter)
        assert calls, "plain assisted generation should call the drafter's generate()"
        calls.clear()
        target.generate(input_ids, max_new_tokens=6, do_sample=False, assistant_model=drafter, evospec_config=EvoSpecConfig())
        assert not calls, "evospec_hf must not pay generate() setup per round"
    finally:
        del drafter.generate
    assert "_get_candidate_generator" not in vars(target)


def test_return_dict_outputs_match(pair, static_table_path):
    _, target, drafters, router = pair
    input_ids = prompt(10)
    kwargs = dict(max_new_tokens=10, do_sample=False, return_dict_in_generate=True, output_scores=True)
    expected = target.generate(input_ids, **kwargs)
    got = target.generate(input_ids, assistant_model=drafters["noisy-copy"], evospec_config=config_for("context", static_table_path, router), **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == 10
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_the_literal_user_contract(tmp_path, static_table_path):
    """The issue's call, verbatim: the static table comes from the drafter's own folder."""
    from evospec_hf import FrequencyTable

    from ..conftest import tiny_llama

    target, drafter = tiny_llama(seed=0), tiny_llama(seed=0)
    drafter.save_pretrained(tmp_path)
    FrequencyTable.load(static_table_path).save(tmp_path)  # -> <drafter folder>/evospec_frequency.json
    drafter = type(drafter).from_pretrained(tmp_path).eval()
    inputs = {"input_ids": prompt(11), "attention_mask": torch.ones(1, 12, dtype=torch.long)}
    model = target
    out = model.generate(**inputs, assistant_model=drafter,
                         evospec_config=EvoSpecConfig(shortlist="static", shortlist_size=64),
                         max_new_tokens=32)  # fmt: skip
    assert torch.equal(out, model.generate(**inputs, max_new_tokens=32))


def test_uninstall_keeps_a_wrapper_installed_after_ours(pair):
    """Another library wraps `generate` after evospec_hf: `uninstall()` must not remove its wrapper with ours."""
    import functools

    from transformers import GenerationMixin

    _, target, drafters, _ = pair
    ours, seen = GenerationMixin.generate, []

    @functools.wraps(ours)
    def theirs(self, *args, **kwargs):
        seen.append(1)
        return ours(self, *args, **kwargs)

    GenerationMixin.generate = theirs
    try:
        evospec_hf.uninstall()
        assert GenerationMixin.generate is theirs  # still in place
        expected = target.generate(prompt(12), max_new_tokens=6, do_sample=False)
        assert seen  # their wrapper still runs, and ours now passes plain calls straight through
        with pytest.raises(ValueError, match="uninstall"):
            target.generate(
                prompt(12), max_new_tokens=6, assistant_model=drafters["noisy-copy"], evospec_config=EvoSpecConfig()
            )
        evospec_hf.install()  # ours is beneath theirs: it is enabled again, not wrapped a second time
        assert GenerationMixin.generate is theirs
        got = target.generate(
            prompt(12), max_new_tokens=6, do_sample=False, assistant_model=drafters["noisy-copy"],
            evospec_config=EvoSpecConfig(),
        )  # fmt: skip
        assert torch.equal(got, expected)
    finally:
        GenerationMixin.generate = ours
        evospec_hf.install()
