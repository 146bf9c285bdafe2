"""Generation stops exactly where plain `generate` stops: user stopping criteria, stop strings, and what a streamer
and `output_scores` see, also when the stop falls in the middle of a multi-token round."""

import itertools

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.generation.rounds import Draft
from evospec_hf.generation.stopping import StopCheck

from ..conftest import ARCHITECTURES, VOCAB_SIZE, more_architectures, noisy_copy

# tiny random models with default initialisation mostly repeat one token; larger weights give varied text, so that
# a stop can fall in the middle of a round (Gemma 3's tiny model repeats one token even then: left out here)
BUILDERS = {"llama": ARCHITECTURES["llama"], "gpt2": ARCHITECTURES["gpt2"], **more_architectures()}
LONG_ROUNDS = dict(draft_schedule="constant", num_draft_tokens=8, lookup_tokens=0)


def varied(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model


@pytest.fixture(scope="module", params=list(BUILDERS))
def target(request):
    return varied(BUILDERS[request.param](0))


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


class StopOnToken(StoppingCriteria):
    """A user criterion that looks only at the last token, as many do."""

    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


class Collect(BaseStreamer):
    def __init__(self):
        self.tokens, self.ended = [], False

    def put(self, value):
        self.tokens += value.flatten().tolist()

    def end(self):
        self.ended = True


def a_stop_token(target, input_ids) -> tuple[int, int]:
    """A token of plain greedy's continuation that first appears at new position 3 or later: (token, position)."""
    new = target.generate(input_ids, max_new_tokens=24, do_sample=False)[0, input_ids.shape[1] :].tolist()
    for position in range(3, len(new)):
        if new[position] not in new[:position]:
            return new[position], position
    pytest.skip("the continuation repeats itself")


def run_both(target, input_ids, **kwargs):
    """Plain greedy and evospec_hf (the target drafting for itself: every draft is accepted, so rounds are long)."""
    streams = Collect(), Collect()
    common = dict(max_new_tokens=24, do_sample=False, return_dict_in_generate=True, output_scores=True, **kwargs)
    expected = target.generate(input_ids, streamer=streams[0], **common)
    stats = DraftStats()
    got = target.generate(
        input_ids, streamer=streams[1], assistant_model=target, evospec_config=EvoSpecConfig(**LONG_ROUNDS),
        evospec_stats=stats, **common,
    )  # fmt: skip
    return expected, got, streams, stats


def assert_same(expected, got, streams, prompt_length):
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == expected.sequences.shape[1] - prompt_length
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert streams[1].ended and streams[1].tokens == streams[0].tokens


def test_a_user_token_criterion_stops_mid_round(target):
    input_ids = prompt(0)
    token, position = a_stop_token(target, input_ids)
    expected, got, streams, stats = run_both(
        target, input_ids, stopping_criteria=StoppingCriteriaList([StopOnToken(token)])
    )
    assert expected.sequences.shape[1] == input_ids.shape[1] + position + 1  # plain greedy stopped on the token
    assert_same(expected, got, streams, input_ids.shape[1])
    assert stats.drafter_accepted > 0  # rounds of several tokens did run


def tiny_tokenizer():
    """A byte-pair tokenizer over VOCAB_SIZE ids (letters a-j and their pairs), built in memory: enough for
    `stop_strings`, which needs each token's text."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    letters = "abcdefghij"
    pairs = ["".join(p) for p in itertools.product(letters, repeat=2)][: VOCAB_SIZE - 13]
    words = ["<pad>", "<s>", "</s>"] + list(letters) + pairs
    core = Tokenizer(BPE({w: i for i, w in enumerate(words)}, [(p[0], p[1]) for p in pairs]))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    return tokenizer, words


def test_stop_strings_stop_mid_round(target):
    tokenizer, words = tiny_tokenizer()
    input_ids = prompt(1)
    _, position = a_stop_token(target, input_ids)
    plain = target.generate(input_ids, max_new_tokens=24, do_sample=False)[0, input_ids.shape[1] :].tolist()
    # a string across the boundary of two generated tokens: the last letter of one and the first of the next
    stop = words[plain[position - 1]][-1] + words[plain[position]][0]
    expected, got, streams, _ = run_both(target, input_ids, stop_strings=[stop], tokenizer=tokenizer)
    assert expected.sequences.shape[1] < input_ids.shape[1] + 24  # plain greedy did stop early
    assert_same(expected, got, streams, input_ids.shape[1])


def test_the_custom_generate_path_stops_too():
    target = varied(BUILDERS["qwen2"](0))
    input_ids = prompt(2)
    token, _ = a_stop_token(target, input_ids)
    criteria = StoppingCriteriaList([StopOnToken(token)])
    expected = target.generate(input_ids, max_new_tokens=24, do_sample=False, stopping_criteria=criteria)
    got = target.generate(
        input_ids, max_new_tokens=24, do_sample=False, stopping_criteria=criteria,
        custom_generate=evospec_hf.custom_generate, drafter=target, evospec_config=EvoSpecConfig(**LONG_ROUNDS),
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_lookup_rounds_and_partial_acceptance_stop_too():
    """Copied drafts and a drafter the target sometimes rejects: the same stop."""
    target = varied(BUILDERS["llama"](0))
    drafter = noisy_copy(target, seed=3, scale=0.05)
    phrase = prompt(8, length=8)
    input_ids = torch.cat([phrase, phrase, phrase[:, :3]], dim=-1)  # repeats itself: the lookup copies
    token, _ = a_stop_token(target, input_ids)
    criteria = StoppingCriteriaList([StopOnToken(token)])
    expected = target.generate(input_ids, max_new_tokens=24, do_sample=False, stopping_criteria=criteria)
    stats = DraftStats()
    got = target.generate(
        input_ids, max_new_tokens=24, do_sample=False, stopping_criteria=criteria, assistant_model=drafter,
        evospec_config=EvoSpecConfig(draft_schedule="constant", num_draft_tokens=6, lookup_tokens=6),
        evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert stats.lookup_accepted > 0 and stats.drafter_accepted > 0 and stats.accepted < stats.drafted


def test_stop_check_cuts_before_the_first_stopping_draft():
    check = StopCheck(StoppingCriteriaList([StopOnToken(7)]))
    input_ids = torch.tensor([[4, 5]])
    draft = Draft("drafter", torch.tensor([9, 8, 7, 6, 7]), logits=torch.zeros(1, 5, VOCAB_SIZE))
    cut = check.trim(input_ids, draft)
    assert cut.tokens.tolist() == [9, 8] and cut.logits.shape == (1, 2, VOCAB_SIZE)
    assert check.trim(input_ids, Draft("lookup", torch.tensor([7]))).tokens.numel() == 0
    assert check.trim(input_ids, Draft("lookup", torch.tensor([1, 2]))).tokens.tolist() == [1, 2]
    # max length and EOS are cut by transformers' loop already: nothing to check per draft
    from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

    assert not StopCheck(StoppingCriteriaList([MaxLengthCriteria(10), EosTokenCriteria(2)]))
