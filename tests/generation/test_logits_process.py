"""AdaSD's LOSSY acceptance (`LossyJSAcceptance`, `lossy_acceptance="adasd-js"`): the Jensen-Shannon distance, the
threshold that follows exact acceptances, and what it does to a `generate` call (opt-in, greedy only)."""

import math

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.generation.logits_process import LossyJSAcceptance, js_distance
from evospec_hf.generation.rounds import Draft, DraftStep

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_llama


def full_js_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """The textbook definition over the whole vocabulary, base 2."""
    m = 0.5 * (p + q)
    kl = lambda a, b: float((torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum())  # noqa: E731
    return math.sqrt((0.5 * kl(p, m) + 0.5 * kl(q, m)) / math.log(2))


def test_js_distance_over_a_shortlist_equals_the_full_definition():
    torch.manual_seed(0)
    target = torch.randn(50) * 2
    ids = torch.tensor([3, 7, 8, 20, 41])
    draft = torch.randn(5)
    q_full = torch.zeros(50)
    q_full[ids] = draft.softmax(-1)
    expected = full_js_distance(target.softmax(-1), q_full)
    assert js_distance(target, ids, draft) == pytest.approx(expected, abs=1e-5)
    assert js_distance(target, None, target) == pytest.approx(0.0, abs=1e-3)  # identical: 0
    one_hot = torch.full((50,), -1e4)
    one_hot[0] = 0.0
    assert js_distance(one_hot, torch.tensor([1]), torch.zeros(1)) == pytest.approx(1.0, abs=1e-4)  # disjoint: 1


def _round(processor, target_rows, draft_tokens, start=5):
    """Runs the processor as transformers' loop does: position by position, on the target's scores."""
    steps = [DraftStep(None, row[None].clone(), torch.zeros(1, 2)) for row in target_rows]
    processor.begin(Draft("drafter", torch.tensor(draft_tokens), steps=steps), start)
    out = []
    for i, row in enumerate(target_rows):
        out.append(processor(torch.zeros(1, start + i, dtype=torch.long), row[None].clone())[0])
    return out


def sharp(token, other=None, size=10, mix=0.0):
    """Logits of a distribution peaked on `token` (a share `mix` moved to `other`)."""
    p = torch.full((size,), 1e-4)
    p[token] = 1.0 - mix
    if other is not None:
        p[other] = mix
    return (p / p.sum()).log()


def test_the_threshold_follows_exact_acceptances_and_a_close_draft_is_accepted():
    stats = DraftStats()
    processor = LossyJSAcceptance(stats=stats)
    assert processor.threshold == 0.0
    # the draft's distribution is the target's at exact acceptances: distance 0, the mean starts low
    rows = [sharp(1, 2, mix=0.3)]
    processor.draft = None
    steps = [DraftStep(None, sharp(1, 2, mix=0.45)[None], torch.zeros(1, 2))]  # close to the target, argmax 1
    processor.begin(Draft("drafter", torch.tensor([1]), steps=steps), 5)
    processor(torch.zeros(1, 5, dtype=torch.long), rows[0][None].clone())
    low = processor.threshold
    assert 0 < low < 0.3
    # acceptances whose distributions lie further apart raise the threshold
    for _ in range(30):
        steps = [DraftStep(None, sharp(1, 2, mix=0.1)[None], torch.zeros(1, 2))]
        processor.begin(Draft("drafter", torch.tensor([1]), steps=steps), 5)
        processor(torch.zeros(1, 5, dtype=torch.long), sharp(1, 2, mix=0.45)[None])
    high = processor.threshold
    assert high > low
    # a draft of token 2 where the target prefers 1 by a hair (0.45 vs 0.55): close, so it becomes the argmax
    steps = [DraftStep(None, sharp(2, 1, mix=0.45)[None], torch.zeros(1, 2))]
    processor.begin(Draft("drafter", torch.tensor([2]), steps=steps), 5)
    scores = processor(torch.zeros(1, 5, dtype=torch.long), sharp(1, 2, mix=0.45)[None])
    assert int(scores[0].argmax()) == 2 and stats.lossy_accepted == 1
    # a draft far from the target's distribution is rejected, and the round's later positions are left alone
    far = [DraftStep(None, sharp(7)[None], torch.zeros(1, 2)), DraftStep(None, sharp(3)[None], torch.zeros(1, 2))]
    processor.begin(Draft("drafter", torch.tensor([7, 3]), steps=far), 5)
    first = processor(torch.zeros(1, 5, dtype=torch.long), sharp(1)[None])
    second = processor(torch.zeros(1, 6, dtype=torch.long), sharp(3, 4, mix=0.45)[None])
    assert int(first[0].argmax()) == 1 and stats.lossy_accepted == 1
    assert torch.equal(second, sharp(3, 4, mix=0.45)[None])
    assert processor.threshold == high  # nothing after the rejection was measured
    # exact acceptances at small distances bring it down again
    for _ in range(30):
        steps = [DraftStep(None, sharp(1)[None], torch.zeros(1, 2))]
        processor.begin(Draft("drafter", torch.tensor([1]), steps=steps), 5)
        processor(torch.zeros(1, 5, dtype=torch.long), sharp(1)[None])
    assert processor.threshold < high


def test_copied_drafts_are_judged_exactly():
    processor = LossyJSAcceptance()
    processor.mean_distance = 1.0  # anything close would pass
    processor.begin(Draft("lookup", torch.tensor([4])), 5)
    scores = sharp(1)[None]
    assert processor(torch.zeros(1, 5, dtype=torch.long), scores) is scores


def test_lossy_generation_trades_exactness_for_accepted_drafts():
    """With a drafter that is close to the target, lossy acceptance accepts more per round than exact verification,
    its output is no longer plain greedy's only where it accepted lossily, and a zero scale is exact."""
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=1, scale=0.08)
    prompt = torch.randint(3, VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(3))
    expected = target.generate(prompt, max_new_tokens=48, do_sample=False)
    base = dict(draft_schedule="constant", num_draft_tokens=4, lookup_tokens=0)
    exact, lossy = DraftStats(), DraftStats()
    got = target.generate(prompt, max_new_tokens=48, do_sample=False, assistant_model=drafter,
                          evospec_config=EvoSpecConfig(**base), evospec_stats=exact)  # fmt: skip
    assert torch.equal(got, expected)
    lossy_out = target.generate(
        prompt, max_new_tokens=48, do_sample=False, assistant_model=drafter,
        evospec_config=EvoSpecConfig(**base, lossy_acceptance="adasd-js", lossy_js_scale=2.0), evospec_stats=lossy,
    )  # fmt: skip
    assert lossy.lossy_accepted > 0
    assert lossy.acceptance_rate > exact.acceptance_rate
    assert not torch.equal(lossy_out, expected)
    zero = target.generate(
        prompt, max_new_tokens=48, do_sample=False, assistant_model=drafter,
        evospec_config=EvoSpecConfig(**base, lossy_acceptance="adasd-js", lossy_js_scale=0.0),
    )  # fmt: skip
    assert torch.equal(zero, expected)


def test_lossy_acceptance_is_greedy_only():
    target = tiny_llama(seed=0)
    with pytest.raises(ValueError, match="greedy decoding"):
        target.generate(
            torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=True, assistant_model=noisy_copy(target, 1),
            evospec_config=EvoSpecConfig(lossy_acceptance="adasd-js"),
        )  # fmt: skip
