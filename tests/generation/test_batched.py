"""Batched calls (`evospec_hf/generation/batched.py`): each row of a left-padded batch equals the same row of plain
batched greedy `generate`, on seven architectures, both drafters, every shortlist mode; rows end at different steps;
sampling keeps each row's distribution; bad input gets a clear error."""

import copy

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicCache

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecSession
from evospec_hf.generation.batched import realign_cache, trim_left
from evospec_hf.models import feature_drafter_from_target

from ..conftest import (
    ARCHITECTURES, PAD, VOCAB_SIZE, centroid_router, distilled_feature_drafter, more_architectures, noisy_copy,
    sharpened, target_text,
)  # fmt: skip
from .test_greedy_equivalence import MODES, config_for

BUILDERS = {**ARCHITECTURES, **more_architectures()}
LENGTHS = [5, 14, 9, 2]  # very different prompt lengths: the shortest row has 12 places of padding


def padded_batch(lengths=LENGTHS, seed=0):
    """Random prompts of these lengths, left-padded with PAD, and their attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, ids.shape[1] - n :] = torch.randint(3, VOCAB_SIZE, (n,), generator=gen)
        mask[i, ids.shape[1] - n :] = 1
    return ids, mask


def generate(target, ids, mask, max_new_tokens=20, **kwargs):
    return target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


@pytest.fixture(scope="module", params=list(BUILDERS))
def arch(request, tmp_path_factory):
    """(name, target, noisy-copy token drafter, untrained feature drafter, router folder)."""
    target = BUILDERS[request.param](seed=0)
    router = centroid_router(target, tmp_path_factory.mktemp(f"router-{request.param}"))
    return request.param, target, noisy_copy(target, seed=1), feature_drafter_from_target(target, 1), router


@pytest.mark.parametrize("mode", MODES)
def test_each_row_is_plain_batched_greedy(arch, mode, static_table_path):
    _, target, drafter, _, router = arch
    ids, mask = padded_batch()
    expected = generate(target, ids, mask)
    stats = DraftStats()
    config = config_for(mode, static_table_path, router)
    got = generate(target, ids, mask, assistant_model=drafter, evospec_config=config, evospec_stats=stats)
    assert torch.equal(got, expected), mode
    assert len(stats.rows) == len(LENGTHS) and all(row.rounds > 0 for row in stats.rows)
    assert stats.drafter_accepted > 0, stats  # the drafter's own drafts landed, not only the lookup's
    assert stats.screen_calls > 0 and stats.screen_fallbacks == 0  # verified through the int8 screen
    assert stats.rounds == sum(row.rounds for row in stats.rows)


@pytest.mark.parametrize("lookup_tokens", [0, 10], ids=["no-lookup", "lookup"])
def test_the_feature_drafter_in_a_batch(arch, lookup_tokens, static_table_path):
    """An EAGLE-style drafter reads the target's hidden states: each row gets its own, without the padding."""
    _, target, _, feature, router = arch
    ids, mask = padded_batch(seed=1)
    config = config_for("router+context", static_table_path, router, lookup_tokens=lookup_tokens)
    stats = DraftStats()
    got = generate(target, ids, mask, assistant_model=feature, evospec_config=config, evospec_stats=stats)
    assert torch.equal(got, generate(target, ids, mask))
    assert stats.drafter_drafted > 0
    if lookup_tokens == 0:
        assert stats.lookup_rounds == 0


def test_each_rows_feature_drafter_holds_that_rows_hidden_states(arch, monkeypatch):
    """What each row's drafter reads are the target's hidden states of that row alone: no padding, no other row."""
    from evospec_hf.generation.feature_drafter import FeatureDrafter

    _, target, _, feature, _ = arch
    seen = []
    propose = FeatureDrafter.propose

    def spy(self, input_ids, limit):
        if self.features is not None:
            seen.append((input_ids.clone(), self.features.clone()))
        return propose(self, input_ids, limit)

    monkeypatch.setattr(FeatureDrafter, "propose", spy)
    ids, mask = padded_batch(seed=1)
    generate(target, ids, mask, 12, eos_token_id=None, assistant_model=feature,
             evospec_config=EvoSpecConfig(shortlist="full", lookup_tokens=0))
    assert len(seen) >= len(LENGTHS)
    for input_ids, features in seen:
        with torch.no_grad():
            alone = target(input_ids[:, :-1], output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(features, alone, atol=1e-4, rtol=1e-4)


def test_a_trained_feature_drafter_drafts_for_each_row_as_for_that_prompt_alone(tmp_path):
    """Each row's drafter reads its own hidden states, without the padding: it gets as many drafts accepted in the
    batch as for the same prompt alone (up to float rounding of batched forwards)."""
    target = sharpened(ARCHITECTURES["gemma3"](seed=0, layers=3))
    drafter = distilled_feature_drafter(target, tmp_path, steps=60, chunks=target_text(target, 24))
    ids, mask = padded_batch(seed=2)
    config = EvoSpecConfig(shortlist="full", lookup_tokens=0, screen_head="on", draft_schedule="constant")
    stats = DraftStats()
    got = generate(target, ids, mask, 24, assistant_model=drafter, evospec_config=config, evospec_stats=stats)
    assert torch.equal(got, generate(target, ids, mask, max_new_tokens=24))
    for row, row_stats in zip(range(len(LENGTHS)), stats.rows):
        alone = DraftStats()
        prompt = ids[row : row + 1, mask[row] == 1]
        target.generate(prompt, max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_config=config,
                        evospec_stats=alone)  # fmt: skip
        assert alone.accepted > 0
        assert abs(row_stats.accepted - alone.accepted) <= max(2, alone.accepted // 5), (row, row_stats.accepted,
                                                                                       alone.accepted)  # fmt: skip


def ending_apart(target):
    """A padded batch, and a token plain greedy writes early in some of its rows, at different steps: as EOS (or a
    stopping criterion's token), the rows end apart."""
    for seed in range(3, 23):
        ids, mask = padded_batch(seed=seed)
        out = generate(target, ids, mask, max_new_tokens=20, eos_token_id=None)[:, ids.shape[1] :]
        for token in out.flatten().unique().tolist():
            ends = [(row == token).nonzero()[0].item() if (row == token).any() else len(row) for row in out]
            if min(ends) < len(out[0]) - 1 and len(set(ends)) > 2:
                return ids, mask, token
    raise AssertionError("no batch whose rows end at different steps")


@pytest.mark.parametrize("alignment", ["ragged", "min"])
def test_rows_that_end_early_are_padded_as_plain_generate_pads_them(arch, alignment, static_table_path):
    _, target, drafter, _, router = arch
    ids, mask, eos = ending_apart(target)
    expected = generate(target, ids, mask, eos_token_id=eos)
    config = config_for("evospec", static_table_path, router, batch_alignment=alignment)
    got = generate(target, ids, mask, eos_token_id=eos, assistant_model=drafter, evospec_config=config)
    assert torch.equal(got, expected)
    ends = [(row[ids.shape[1] :] == eos).nonzero()[0].item() if (row == eos).any() else None for row in expected]
    assert len(set(ends)) > 2, ends  # rows ended at different steps, padded after their EOS


@pytest.mark.parametrize("processors", [dict(min_new_tokens=6), dict(repetition_penalty=1.5, min_length=18)])
def test_logits_processors_see_each_row_as_plain_generate_does(arch, processors, static_table_path):
    """Processors read each row's ids as plain batched `generate` passes them (padded prompt, then new tokens):
    `min_new_tokens` and `min_length` count the padding, the repetition penalty reads the pad token."""
    _, target, drafter, _, router = arch
    ids, mask, eos = ending_apart(target)
    expected = generate(target, ids, mask, eos_token_id=eos, **processors)
    got = generate(target, ids, mask, eos_token_id=eos, assistant_model=drafter,
                   evospec_config=config_for("context", static_table_path, router), **processors)  # fmt: skip
    assert torch.equal(got, expected)


class EndsAfter(StoppingCriteria):
    """Per row: stops a row when its last token is `token` (a user's criterion, checked row by row)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_a_stopping_criterion_and_max_new_tokens_hold_per_row(arch, static_table_path):
    _, target, drafter, _, router = arch
    ids, mask, token = ending_apart(target)
    criteria = StoppingCriteriaList([EndsAfter(token)])
    for max_new_tokens in (1, 7, 20):
        expected = generate(target, ids, mask, max_new_tokens, stopping_criteria=criteria)
        got = generate(target, ids, mask, max_new_tokens, stopping_criteria=criteria, assistant_model=drafter,
                       evospec_config=config_for("full", static_table_path, router))  # fmt: skip
        assert torch.equal(got, expected), max_new_tokens


@pytest.mark.parametrize("with_eos", [False, True], ids=["no-eos", "eos"])
def test_stop_strings_end_rows_as_plain_generate_ends_them(with_eos):
    """With an EOS token plain `generate` pads a row after its stop; without one the row goes on until every row has
    met a stop (transformers pads only where an EOS criterion exists)."""
    from .test_stopping import tiny_tokenizer, varied

    tokenizer, words = tiny_tokenizer()
    target = varied(ARCHITECTURES["llama"](seed=0))  # varied text: two-token strings that fall where a row has them
    ids, mask = padded_batch(seed=4)
    plain = generate(target, ids, mask, 24, eos_token_id=None)[:, ids.shape[1] :]
    eos = next(t for t in range(3, VOCAB_SIZE) if t not in plain) if with_eos else None  # a token never written
    # one string per row, across two of its tokens, at a different step in each row
    stops = [words[plain[r, 3 + 2 * r].item()][-1] + words[plain[r, 4 + 2 * r].item()][0] for r in range(len(LENGTHS))]
    kwargs = dict(eos_token_id=eos, stop_strings=stops, tokenizer=tokenizer)
    expected = generate(target, ids, mask, 24, **kwargs)
    drafter = noisy_copy(target, seed=1)
    config = EvoSpecConfig(shortlist="full", draft_schedule="constant", num_draft_tokens=6, lookup_tokens=0)
    got = generate(target, ids, mask, 24, assistant_model=drafter, evospec_config=config, **kwargs)
    assert torch.equal(got, expected)
    assert expected.shape[1] < ids.shape[1] + 24  # every row met a string before max_new_tokens
    padded = (expected[:, ids.shape[1] :] == PAD).any(dim=1)
    assert padded.any() if with_eos else not padded.any()


def test_stop_strings_from_a_generation_config():
    from .test_stopping import tiny_tokenizer, varied

    tokenizer, words = tiny_tokenizer()
    target = varied(ARCHITECTURES["llama"](seed=0))
    ids, mask = padded_batch(seed=4)
    plain = generate(target, ids, mask, 24, eos_token_id=None)[:, ids.shape[1] :]
    config = copy.deepcopy(target.generation_config)
    strings = [(words[plain[r, 3 + 2 * r].item()], words[plain[r, 4 + 2 * r].item()]) for r in range(len(LENGTHS))]
    config.stop_strings = [first[-1] + second[0] for first, second in strings]  # as in the test above
    config.update(max_new_tokens=24, do_sample=False, eos_token_id=None)
    expected = target.generate(input_ids=ids, attention_mask=mask, generation_config=config, tokenizer=tokenizer)
    assert expected.shape[1] < ids.shape[1] + 24
    drafter, evospec = noisy_copy(target, seed=1), EvoSpecConfig(shortlist="full")
    got = target.generate(input_ids=ids, attention_mask=mask, generation_config=config, tokenizer=tokenizer,
                          assistant_model=drafter, evospec_config=evospec)  # fmt: skip
    assert torch.equal(got, expected) and config.stop_strings is not None  # the caller's config left as it was


def test_the_entropy_stop_and_the_cost_rule_in_a_batch(arch, static_table_path):
    """Each row's draft length rule runs as it does alone: the entropy stop ends a row's rounds where it ends the
    same prompt's rounds alone (the heuristic rule: no timings), and the "cost" rule keeps every row exact."""
    _, target, drafter, feature, router = arch
    ids, mask = padded_batch(seed=3)
    expected = generate(target, ids, mask, 24)
    for assistant in (drafter, feature):
        config = config_for("evospec", static_table_path, router, entropy_stop=True)
        stats = DraftStats()
        got = generate(target, ids, mask, 24, assistant_model=assistant, evospec_config=config, evospec_stats=stats)
        assert torch.equal(got, expected)
        assert stats.entropy_stops == sum(row.entropy_stops for row in stats.rows)
        alone = []
        for row in range(len(LENGTHS)):
            row_stats = DraftStats()
            target.generate(ids[row : row + 1, mask[row] == 1], max_new_tokens=24, do_sample=False,
                            assistant_model=assistant, evospec_config=config, evospec_stats=row_stats)  # fmt: skip
            alone.append(row_stats.entropy_stops > 0)
        assert [row.entropy_stops > 0 for row in stats.rows] == alone
        cost = config_for("evospec", static_table_path, router, entropy_stop=True, draft_schedule="cost")
        assert torch.equal(generate(target, ids, mask, 24, assistant_model=assistant, evospec_config=cost), expected)


def test_ragged_rows_keep_what_they_accepted(static_table_path):
    """'ragged' keeps every accepted draft, 'min' only the fewest any row accepted: with rows that accept very
    differently (a prompt the lookup can copy from, and random ones), 'min' needs more rounds; both exact."""
    target = ARCHITECTURES["llama"](seed=0)
    drafter = noisy_copy(target, seed=1)
    ids, mask = padded_batch(seed=4)
    expected = generate(target, ids, mask, max_new_tokens=24)
    tau = {}
    for alignment in ("ragged", "min"):
        stats = DraftStats()
        config = EvoSpecConfig(
            shortlist="full", num_draft_tokens=4, draft_schedule="constant", batch_alignment=alignment
        )
        got = generate(target, ids, mask, 24, assistant_model=drafter, evospec_config=config, evospec_stats=stats)
        assert torch.equal(got, expected), alignment
        tau[alignment] = [row.mean_accepted_length for row in stats.rows]
    assert sum(tau["ragged"]) > sum(tau["min"]), tau
    assert all(r >= m for r, m in zip(tau["ragged"], tau["min"])), tau


def test_the_head_computes_only_the_positions_read(static_table_path):
    """Rows draft different lengths; the padding after the shorter drafts never reaches the head: it computes each
    row's drafts and the position after them, nothing else."""
    target = ARCHITECTURES["llama"](seed=0)
    ids, mask = padded_batch(seed=6)
    stats = DraftStats()
    config = EvoSpecConfig(shortlist="full", screen_head="on", lookup_tokens=10, draft_schedule="heuristic")
    got = generate(target, ids, mask, 24, assistant_model=noisy_copy(target, seed=1), evospec_config=config,
                   evospec_stats=stats)  # fmt: skip
    assert torch.equal(got, generate(target, ids, mask, 24))
    assert stats.screen_positions == stats.drafted + stats.rounds, (stats.screen_positions, stats.drafted)
    assert stats.screen_fallbacks == 0 and stats.screen_full_calls == 0


def test_batch_costs_fit_a_fixed_part_and_a_cost_per_position():
    from evospec_hf.generation.batched import BatchCosts

    flat_then_steep = {k: 0.05 + 0.0001 * (k + 1) if k < 16 else 0.05 + 0.004 * (k + 1 - 16) for k in range(1, 64)}
    costs = BatchCosts({}, rows=4, max_draft=6)
    assert costs.table == {}  # nothing known: the rules draft their starting lengths
    for positions in (8, 12, 20, 9, 16, 24):
        costs.observe(positions, 0.05 + 0.01 * positions, rows=4)
    assert costs.table[1] == pytest.approx(0.05 / 4 + 0.01 * 2)
    assert costs.table[6] == pytest.approx(0.05 / 4 + 0.01 * 7)
    # from the single-row prior alone: nearly flat around few positions, steep around many
    few, many = BatchCosts(flat_then_steep, rows=2, max_draft=3), BatchCosts(flat_then_steep, rows=8, max_draft=3)
    many.observe(48, flat_then_steep[47], rows=8)  # a round of 48 positions, as the prior has it
    assert few.table[3] - few.table[1] < 0.001 and many.table[3] - many.table[1] > 0.005


def test_custom_generate_takes_a_batch(static_table_path):
    target = ARCHITECTURES["gemma3"](seed=0)
    ids, mask = padded_batch(seed=5)
    stats = DraftStats()
    got = target.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
        custom_generate=evospec_hf.custom_generate, drafter=noisy_copy(target, seed=1),
        evospec_config=EvoSpecConfig(shortlist="full"), evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, generate(target, ids, mask))
    assert len(stats.rows) == len(LENGTHS)


def test_return_dict_in_generate():
    target = ARCHITECTURES["llama"](seed=0)
    ids, mask = padded_batch()
    out = generate(target, ids, mask, return_dict_in_generate=True, assistant_model=noisy_copy(target, seed=1),
                   evospec_config=EvoSpecConfig(shortlist="full"))  # fmt: skip
    assert torch.equal(out.sequences, generate(target, ids, mask))


def test_realign_cache_moves_rows_right_and_crops():
    cache = DynamicCache()
    states = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 1, 6, 1) + 1  # rows 1..6 and 7..12
    cache.update(states.clone(), states.clone(), 0)
    realign_cache(cache, shifts=[0, 2], remove=2)
    keys = cache.layers[0].keys[:, 0, :, 0]
    assert keys.tolist() == [[1, 2, 3, 4], [0, 0, 7, 8]]  # row 1's first 2 states now end where row 0's 4 end
    trim_left(cache, 1)
    assert cache.layers[0].keys[:, 0, :, 0].tolist() == [[2, 3, 4], [0, 7, 8]]


# -- sampling: each row keeps the target's distribution ----------------------------------------------------------------


def test_sampling_keeps_each_rows_distribution():
    """Two prompts of different lengths, four copies of each per batch (independent samples), 2,500 samples per
    prompt: the first two tokens of each row match that prompt's exact distribution (chi-square, as for batch 1)."""
    from ..conftest import EOS
    from .test_sampling import (
        NUM_SAMPLES, TEMPERATURE, VOCAB, chi_square_p_value, peaked, sample_counts, two_token_distribution,
    )  # fmt: skip

    target = peaked(ARCHITECTURES["llama"](seed=0, vocab_size=VOCAB))
    drafter = peaked(ARCHITECTURES["llama"](seed=3, layers=1, vocab_size=VOCAB))
    prompts = [torch.tensor([[1, 3, 4]]), torch.tensor([[1, 5, 6, 3, 7]])]
    ids = torch.tensor([[PAD, PAD, 1, 3, 4], [1, 5, 6, 3, 7]]).repeat_interleave(4, dim=0)
    mask = (torch.arange(5) >= torch.tensor([2, 0]).repeat_interleave(4)[:, None]).long()
    config = EvoSpecConfig(shortlist="full", num_draft_tokens=2, draft_schedule="constant", lookup_tokens=2)
    stats = DraftStats()
    samples = [[], []]
    torch.manual_seed(1234)
    while len(samples[0]) < NUM_SAMPLES:
        out = target.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=True, temperature=TEMPERATURE, top_k=None,
            assistant_model=drafter, evospec_config=config, evospec_stats=stats,
        )  # fmt: skip
        for row, sequence in enumerate(out[:, 5:]):
            first = sequence[0].item()
            samples[row // 4].append((first,) if first == EOS else tuple(sequence[:2].tolist()))
    for prompt, drawn in zip(prompts, samples):
        exact = two_token_distribution(target, prompt=prompt)
        p_value = chi_square_p_value(sample_counts(lambda n: iter(drawn[:n]), NUM_SAMPLES), exact, NUM_SAMPLES)
        assert p_value > 1e-3, (prompt, p_value)
    assert 0 < stats.accepted < stats.drafted  # accepted drafts and resampled rejections both happened


# -- bad input ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    target = ARCHITECTURES["llama"](seed=0)
    return target, noisy_copy(target, seed=1)


def call(target, drafter, ids, mask=None, **kwargs):
    config = EvoSpecConfig(shortlist="full")
    return target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                           assistant_model=drafter, evospec_config=config, **kwargs)  # fmt: skip


def test_right_padding_is_refused(small):
    target, drafter = small
    ids, mask = padded_batch([3, 5])
    with pytest.raises(ValueError, match="padding_side"):
        call(target, drafter, ids, mask.flip(-1))


def test_padding_between_tokens_is_refused(small):
    target, drafter = small
    ids, mask = padded_batch([3, 5])
    mask[1, 2] = 0
    with pytest.raises(ValueError, match="between tokens"):
        call(target, drafter, ids, mask)


def test_a_mask_of_the_wrong_shape_is_refused(small):
    target, drafter = small
    ids, mask = padded_batch([3, 5])
    with pytest.raises(ValueError, match="must match"):
        target.generate(input_ids=ids, attention_mask=mask[:, 1:], max_new_tokens=4, do_sample=False,
                        custom_generate=evospec_hf.custom_generate, drafter=drafter)  # fmt: skip


def test_a_batch_of_embeddings_is_refused(small):
    target, drafter = small
    ids, mask = padded_batch([3, 5])
    embeds = target.get_input_embeddings()(ids)
    with pytest.raises(ValueError, match="inputs_embeds"):
        target.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, do_sample=False,
                        assistant_model=drafter, evospec_config=EvoSpecConfig(shortlist="full"))  # fmt: skip


def test_a_session_with_a_batch_is_refused(small):
    target, drafter = small
    ids, mask = padded_batch([3, 5])
    with pytest.raises(ValueError, match="one sequence at a time"):
        call(target, drafter, ids, mask, evospec_session=EvoSpecSession(drafter))


@pytest.mark.parametrize("flag", ["output_scores", "output_logits"])
def test_scores_of_a_batch_are_refused(small, flag):
    target, drafter = small
    ids, mask = padded_batch([3, 5])
    with pytest.raises(ValueError, match=flag):
        call(target, drafter, ids, mask, return_dict_in_generate=True, **{flag: True})


def test_a_streamer_with_a_batch_is_refused(small):
    from transformers.generation.streamers import BaseStreamer

    target, drafter = small
    ids, mask = padded_batch([3, 5])
    with pytest.raises(ValueError, match="streamer"):
        call(target, drafter, ids, mask, streamer=BaseStreamer())
