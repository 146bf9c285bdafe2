"""`SourceStreamer`: each new token labelled by where it came from, consistent with the rounds and the output."""

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, SourceStreamer

from ..conftest import noisy_copy, tiny_llama


class SpacedTokenizer:
    """Decodes token i as the word "t<i>", words separated by spaces (every prefix of the output decodes to a
    prefix of the whole)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{int(i)}" for i in ids)


@pytest.fixture(scope="module")
def pair():
    target = tiny_llama(seed=0)
    return target, noisy_copy(target, seed=1)


@pytest.mark.parametrize("lookup_tokens", [0, 10], ids=["drafter-only", "lookup"])
def test_labels_follow_the_rounds_and_the_text_joins_to_the_output(pair, lookup_tokens):
    target, drafter = pair
    # the target's own text, then its start again: the target repeats itself, so the context lookup can copy
    seed = torch.arange(3, 9)[None]
    own = target.generate(seed, max_new_tokens=24, do_sample=False)
    prompt = torch.cat([own, seed], dim=-1)
    stats, tokenizer = DraftStats(), SpacedTokenizer()
    streamer = SourceStreamer(tokenizer, stats)
    config = EvoSpecConfig(
        shortlist="full", num_draft_tokens=4, lookup_tokens=lookup_tokens, draft_schedule="heuristic"
    )
    out = target.generate(
        prompt, max_new_tokens=40, do_sample=False, assistant_model=drafter, evospec_config=config,
        evospec_stats=stats, streamer=streamer,
    )  # fmt: skip
    rounds = list(streamer)
    new = out[0, prompt.shape[1] :].tolist()
    assert streamer.tokens == new
    assert "".join(text for pieces in rounds for text, _ in pieces) == tokenizer.decode(new)
    # round by round: the accepted drafts carry their source's label, then one token of the target's own
    assert len(rounds) == stats.rounds == len(stats.sources_per_round)
    for pieces, accepted, source in zip(rounds, stats.accepted_per_round, stats.sources_per_round):
        labels = [label for _, label in pieces]
        expected = {"drafter": "drafted", "lookup": "copied"}.get(source)
        assert labels == [expected] * accepted + ["target"]
    kinds = set(streamer.labels)
    assert "target" in kinds
    assert ("copied" in kinds) == (lookup_tokens > 0)
    assert lookup_tokens > 0 or "drafted" in kinds


def test_a_character_split_across_tokens_waits_for_its_last_piece():
    class BytesTokenizer:  # token i is byte i: UTF-8 characters span several tokens
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    stats = DraftStats(sources_per_round=["", "drafter"])
    streamer = SourceStreamer(BytesTokenizer(), stats)
    streamer.put(torch.tensor([[65]]))  # the prompt
    streamer.put(torch.tensor([0xC3, 0xA9, 0x21]))  # "é!" in three tokens: two accepted drafts and the target's
    streamer.end()
    pieces = next(iter(streamer))
    assert pieces == [("", "drafted"), ("é", "drafted"), ("!", "target")]
    assert streamer.labels == ["drafted", "drafted", "target"]
