"""The curriculum's input: the ranks the generator hands to `OnlineAligner.record` are the drafter's real ranks.

A rank says how many of the drafter's shortlist tokens it scored above the target's token at a verified position (0:
it drafted that token; `OUTSIDE_SHORTLIST`: it could not have). Here it is recomputed from first principles, with
one forward pass of the drafter over the verified sequence and the shortlist rebuilt from the text, and compared with
what the generator reported.
"""

import pytest
import torch

from evospec_hf import EvoSpecConfig, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.evolve.online import OUTSIDE_SHORTLIST, OnlineAligner

from ..conftest import EOS, PAD, VOCAB_SIZE, noisy_copy, tiny_llama

# the drafter's logits come from a KV-cached loop in generate and from one full forward pass here: they may differ in
# the last bits, so a tie within this margin may be counted either way
TOLERANCE = 1e-4
SHORTLIST_SIZE = 8  # 'context': EOS, pad and the 6 most recently seen tokens, so many target tokens fall outside


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


def spy_on_record(monkeypatch) -> list:
    """Every round the learner is told about, as (sequence, drafts, accepted drafts, ranks)."""
    rounds, record = [], OnlineAligner.record

    def spying_record(self, sequence, scores, num_matches, ranks, **kwargs):
        rounds.append((sequence.clone(), scores.shape[1] - 1, int(num_matches), ranks.clone()))
        record(self, sequence, scores, num_matches, ranks, **kwargs)

    monkeypatch.setattr(OnlineAligner, "record", spying_record)
    return rounds


def context_shortlist(prefix: torch.Tensor) -> set:
    """The 'context' shortlist while drafting after `prefix`: EOS and pad, then the least recently seen tokens
    evicted first, so the `SHORTLIST_SIZE - 2` most recently seen other tokens."""
    fixed = {EOS, PAD}
    recent = []
    for token in reversed(prefix.tolist()):
        if token not in fixed and token not in recent:
            recent.append(token)
    return fixed | set(recent[: SHORTLIST_SIZE - len(fixed)])


def rank_bounds(logits: torch.Tensor, token: int, shortlist: set | None) -> tuple[int, int]:
    """(fewest, most) tokens of the shortlist (None: the whole vocabulary) that the drafter scores above `token`,
    counting logits within `TOLERANCE` of the token's either way; (OUTSIDE_SHORTLIST,) * 2 if it is not in it."""
    members = torch.ones_like(logits, dtype=torch.bool)
    if shortlist is not None:
        if token not in shortlist:
            return OUTSIDE_SHORTLIST, OUTSIDE_SHORTLIST
        members = torch.zeros_like(members)
        members[list(shortlist)] = True
    members[token] = False
    others, score = logits[members], logits[token]
    return int((others > score + TOLERANCE).sum()), int((others >= score - TOLERANCE).sum())


@pytest.mark.parametrize(
    "mode, sampling",
    [("full", False), ("context", False), ("context", True)],
    ids=["full-greedy", "context-greedy", "context-sampling"],
)
def test_the_learner_gets_the_drafters_rank_of_each_target_token(target, monkeypatch, mode, sampling):
    # a session that records every round but never updates: the drafter drafts with the same weights all along
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.6), OnlineAlignmentConfig(update_every=10**6))
    config = EvoSpecConfig(
        shortlist=mode, shortlist_size=SHORTLIST_SIZE, num_draft_tokens=4, lookup_tokens=0, draft_schedule="heuristic"
    )
    rounds = spy_on_record(monkeypatch)
    torch.manual_seed(0)
    sample = dict(do_sample=True, temperature=0.7, top_k=None, top_p=None) if sampling else dict(do_sample=False)
    for seed in range(2):
        target.generate(
            prompt(seed), max_new_tokens=30, assistant_model=session.drafter, evospec_config=config,
            evospec_session=session, **sample,
        )  # fmt: skip
    assert len(rounds) == session.stats.rounds > 10 and session.stats.updates == 0

    reported, expected_low = [], []
    with session.applied(), torch.no_grad():
        for sequence, num_drafted, num_matches, ranks in rounds:
            verified = num_matches + 1
            assert ranks.shape == (verified,)
            logits = session.drafter(input_ids=sequence[None]).logits[0].float()
            prefix_length = sequence.shape[0] - verified  # the sequence the drafter drafted after
            shortlist = context_shortlist(sequence[:prefix_length]) if mode == "context" else None
            for i in range(verified):
                if i >= num_drafted:  # the target's bonus token after every draft was accepted: no draft step there
                    low = high = 0
                else:
                    position = prefix_length + i
                    low, high = rank_bounds(logits[position - 1], int(sequence[position]), shortlist)
                assert low <= int(ranks[i]) <= high, (
                    f"round {len(reported)}: position {i} of {verified} ({num_matches} of {num_drafted} drafts "
                    f"accepted), reported rank {int(ranks[i])}, the drafter's rank is in [{low}, {high}]"
                )
                reported.append(int(ranks[i]))
                expected_low.append(low)
    # the check had teeth: near and far misses were reported, and with a small shortlist tokens outside it
    assert any(0 < low < OUTSIDE_SHORTLIST for low in expected_low)
    assert (OUTSIDE_SHORTLIST in reported) == (mode == "context")
    if not sampling:  # a greedy draft the target accepted was the drafter's first choice
        for sequence, num_drafted, num_matches, ranks in rounds:
            assert ranks[:num_matches].eq(0).all()


def test_a_drafter_far_from_the_target_has_nothing_to_teach_at_a_tight_bound(target):
    """With the curriculum at rank 1 and only the newest round in a batch, an update is skipped whenever the round's
    first draft missed by more than one token. A far drafter misses like that in most rounds; if every reported rank
    were 0, no update could ever be skipped."""
    config = OnlineAlignmentConfig(
        update_every=1, batch_size=1, min_replay=1, warmup_updates=0, window=16, curriculum_start_rank=1,
        curriculum_patience=10**6, learn="in-loop", teach_rejected=False,
    )  # fmt: skip
    session = EvoSpecSession(tiny_llama(seed=7), config)  # an unrelated model: it rarely agrees with the target
    drafting = EvoSpecConfig(shortlist="full", num_draft_tokens=4, lookup_tokens=0, draft_schedule="heuristic")
    target.generate(
        prompt(0), max_new_tokens=30, do_sample=False, assistant_model=session.drafter, evospec_config=drafting,
        evospec_session=session,
    )  # fmt: skip
    assert session.stats.skipped > session.stats.rounds // 2
    assert session.stats.max_rank == [1] * session.stats.updates  # the bound never grew
