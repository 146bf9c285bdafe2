"""`Draft` and `RoundResult` (generation/rounds.py) against hand-computed cases and a brute-force rank."""

import torch

from evospec_hf.evolve.online import OUTSIDE_SHORTLIST
from evospec_hf.generation.rounds import Draft, DraftStep, RoundResult

INF = float("inf")


def step(logits, ids=None, hidden=0.0):
    return DraftStep(None if ids is None else torch.tensor(ids), torch.tensor([logits]), torch.tensor([[hidden]]))


class EvenTokensWhereHiddenIsPositive:
    """A stand-in vocabulary: step i holds the even token ids when its hidden state is positive, nothing else."""

    def holds(self, hidden, token_ids):
        assert hidden.shape == (token_ids.shape[0], 1)  # one hidden state per checked position
        return (token_ids % 2 == 0) & (hidden[:, 0] > 0)


def test_truncate_keeps_the_first_drafts_and_their_logits():
    logits = torch.arange(12.0).reshape(1, 4, 3)
    steps = [step([float(i)]) for i in range(4)]
    draft = Draft("drafter", torch.tensor([5, 6, 7, 8]), logits, steps, seconds=0.5, head_seconds=0.25, match=3,
                  head_steps=4, entropy_stopped=True)  # fmt: skip
    cut = draft.truncate(2)
    assert len(draft) == 4 and len(cut) == 2
    assert cut.tokens.tolist() == [5, 6] and cut.logits.tolist() == [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
    assert cut.steps == steps[:2]
    assert (cut.source, cut.seconds, cut.head_seconds, cut.match, cut.head_steps, cut.entropy_stopped) == (
        "drafter", 0.5, 0.25, 3, 4, True
    )
    assert draft.truncate(4) is draft and draft.truncate(9) is draft
    assert len(Draft("lookup", torch.tensor([1, 2, 3])).truncate(1)) == 1  # copied drafts carry no logits


def test_ranks_count_the_tokens_scored_above_the_targets():
    steps = [
        step([0.1, 2.0, -1.0, 2.0, 0.5]),  # the whole vocabulary
        step([1.0, -INF, 3.0], ids=[7, 3, 9]),  # three columns, token 3 masked
        step([1.0, -INF, 3.0], ids=[7, 3, 9]),
        step([1.0, -INF, 3.0], ids=[7, 3, 9]),
        step([0.1, 2.0, -1.0, 2.0, 0.5]),
    ]
    draft = Draft("drafter", torch.tensor([1, 9, 9, 9, 1]), None, steps)
    # 0.5 has 2.0 and 2.0 above; token 7 has 3.0 above; 3 is masked; 5 is no column; 1 ties with 3 (not above it);
    # the sixth position has no step (the target's own token): 0
    targets = torch.tensor([4, 7, 3, 5, 1, 2])
    assert draft.ranks(targets).tolist() == [2, 1, OUTSIDE_SHORTLIST, OUTSIDE_SHORTLIST, 0, 0]
    assert draft.ranks(targets[:2]).tolist() == [2, 1]  # fewer verified positions than steps


def test_ranks_match_a_brute_force_over_the_vocabulary():
    gen = torch.Generator().manual_seed(0)
    vocab = 20
    for _ in range(20):
        steps, full = [], []
        for _ in range(5):
            logits = torch.randn(1, 8, generator=gen).round(decimals=1)  # rounded: ties happen
            logits[0, torch.rand(8, generator=gen) < 0.2] = -INF
            if torch.rand(1, generator=gen) < 0.3:  # a step over the whole vocabulary
                logits = torch.randn(1, vocab, generator=gen).round(decimals=1)
                steps.append(DraftStep(None, logits, torch.zeros(1, 1)))
                full.append(logits[0].tolist())
            else:
                ids = torch.randperm(vocab, generator=gen)[:8]
                steps.append(DraftStep(ids, logits, torch.zeros(1, 1)))
                scores = [-INF] * vocab
                for column, token in enumerate(ids.tolist()):
                    scores[token] = logits[0, column].item()
                full.append(scores)
        targets = torch.randint(0, vocab, (6,), generator=gen)
        expected = []
        for i, target in enumerate(targets.tolist()):
            if i >= len(full):
                expected.append(0)
            elif full[i][target] == -INF:
                expected.append(OUTSIDE_SHORTLIST)
            else:
                expected.append(sum(1 for score in full[i] if score > full[i][target]))
        assert Draft("drafter", targets[:5], None, steps).ranks(targets).tolist() == expected


def test_vocabulary_hits_check_each_drafted_position_in_its_steps_vocabulary():
    steps = [step([0.0], hidden=1.0), step([0.0], hidden=-1.0), step([0.0], hidden=1.0)]
    draft = Draft("drafter", torch.tensor([2, 2, 3]), None, steps, vocabulary=EvenTokensWhereHiddenIsPositive())
    # 2 at a positive step: held; 2 at a negative step: not; 3 is odd; the fourth position had no step
    assert draft.vocabulary_hits(torch.tensor([2, 2, 3, 8])) == (3, 1)
    assert draft.vocabulary_hits(torch.tensor([4, 6])) == (2, 1)
    assert draft.vocabulary_hits(torch.tensor([], dtype=torch.long)) == (0, 0)
    every_token = Draft("drafter", torch.tensor([2, 2, 3]), None, steps)  # no vocabulary: all tokens proposable
    assert every_token.vocabulary_hits(torch.tensor([1, 3, 5, 7])) == (3, 3)
    assert Draft("lookup", torch.tensor([2, 2])).vocabulary_hits(torch.tensor([2, 2, 2])) == (0, 0)  # no steps


def test_a_round_result_reads_the_verified_positions_at_the_end_of_the_sequence():
    draft = Draft("drafter", torch.tensor([12, 13, 20]))
    result = RoundResult(draft, 2, torch.tensor([[10, 11, 12, 13, 14]]), torch.zeros(1, 4, 5), 0.1, prefill=False)
    assert result.drafted == 3
    assert result.targets.tolist() == [12, 13, 14]  # the two accepted drafts and the target's own token
    none = RoundResult(draft, 0, torch.tensor([[10, 11, 19]]), torch.zeros(1, 4, 5), 0.1, prefill=True)
    assert none.targets.tolist() == [19]
