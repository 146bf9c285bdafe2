"""Learning between calls (`learn="between-calls"`, the default): a call only drafts; the updates it earned run in a
background thread after it returns, yield as soon as a call wants the drafter, and the governor turns learning off
when it does not pay."""

import threading
import time

import pytest
import torch
from transformers import StoppingCriteriaList

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.evolve.online import OnlineAligner

from ..conftest import VOCAB_SIZE, noisy_copy, run_together, tiny_gemma3, tiny_gpt2, tiny_llama

BETWEEN = dict(
    update_every=1, batch_size=2, window=16, lr=1e-2, curriculum_start_rank=None, min_replay=1, warmup_updates=0,
    governor=False,
)
# draft lengths that do not depend on timings, and the plain head: two runs of one call draft the same
STEADY = EvoSpecConfig(
    shortlist="context", shortlist_size=40, num_draft_tokens=4, lookup_tokens=0, draft_schedule="heuristic",
    fast_verify_head=False,
)  # fmt: skip
NEW_TOKENS = 30


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


def generate(target, drafter, seed, session=None, stats=None):
    return target.generate(
        prompt(seed), max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=drafter, evospec_config=STEADY,
        evospec_session=session, evospec_stats=stats,
    )  # fmt: skip


def drafter_lora(session) -> dict:
    return {name: p.detach().clone() for name, p in session.drafter.named_parameters() if "lora_" in name}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make_target", [tiny_llama, tiny_gemma3, tiny_gpt2], ids=["llama", "gemma3", "gpt2"])
def test_updates_run_only_between_calls_and_greedy_is_unchanged(make_target, monkeypatch):
    target = make_target(seed=0)
    threads = []
    update = OnlineAligner.update

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(OnlineAligner, "update", spy)
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**BETWEEN))
    own, learned = drafter_lora(session), dict(session._weights)
    for seed in range(3):
        expected = target.generate(prompt(seed), max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(generate(target, session.drafter, seed, session), expected)
        session.wait_learning()  # the person reads the answer; the session learns meanwhile
    assert threads and set(threads) == {"evospec-learn"}  # never on the generating thread
    stats = session.stats
    assert stats.updates > 5 and stats.idle_updates == stats.updates and stats.in_call_updates == 0
    assert stats.blocked_ms == [0.0, 0.0, 0.0]  # nothing was running when each call began
    assert not same(dict(session._weights), learned)  # it did learn
    assert same(drafter_lora(session), own)  # and the drafter has its own weights back


def test_a_call_on_the_session_stops_its_background_learning():
    """With far more updates owed than any pause could run, the next call would wait for ever if learning did not
    yield to it; after the call, learning picks up again."""
    target = tiny_llama(seed=0)
    session = EvoSpecSession(
        noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**BETWEEN, updates_per_pause=10**6)
    )
    generate(target, session.drafter, 0, session)
    while session.stats.idle_updates < 3:  # it learns
        time.sleep(0.01)
    expected = target.generate(prompt(1), max_new_tokens=NEW_TOKENS, do_sample=False)
    (got,) = run_together([lambda: generate(target, session.drafter, 1, session)], timeout=120)
    assert torch.equal(got, expected)
    assert session.stats.blocked_ms[-1] > 0  # it did have to stop something
    done = session.stats.idle_updates
    while session.stats.idle_updates < done + 3:  # and it goes on after the call
        time.sleep(0.01)
    session.reset()  # stops it and forgets
    assert session._worker is None and session.stats.updates == 0


def test_background_learning_yields_to_a_call_without_the_session_which_drafts_with_the_drafters_weights():
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=3, scale=0.3)
    session = EvoSpecSession(drafter, OnlineAlignmentConfig(**BETWEEN, updates_per_pause=10**6))
    alone = DraftStats()
    generate(target, session.drafter, 5, stats=alone)  # before the session learned anything
    generate(target, session.drafter, 0, session)
    while session.stats.idle_updates < 3:
        time.sleep(0.01)
    stats = DraftStats()
    (got,) = run_together([lambda: generate(target, session.drafter, 5, stats=stats)], timeout=120)
    assert torch.equal(got, target.generate(prompt(5), max_new_tokens=NEW_TOKENS, do_sample=False))
    # drafted exactly as before the session existed: the session's weights were never in the drafter during it
    assert stats.accepted_per_round == alone.accepted_per_round and stats.drafted == alone.drafted
    session.reset()


def test_the_governor_measures_each_call_on_its_own_output():
    target = tiny_llama(seed=0)
    session = EvoSpecSession(
        noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**{**BETWEEN, "governor": True})
    )
    generated = []
    for seed in range(3):
        generated.append(generate(target, session.drafter, seed, session).shape[1] - prompt(seed).shape[1])
        session.wait_learning()
    verdicts = session.stats.governor
    # the first call drafted with the starting adapter: nothing to compare; the next two are measured
    assert [v["call"] for v in verdicts] == [2, 3]
    # on every generated position, not only the verified ones
    assert [v["positions"] for v in verdicts] == generated[1:] and generated[1] == NEW_TOKENS



def test_the_governor_credits_the_adapter_only_with_the_rounds_the_drafter_drafted():
    """Rounds copied from the context (prompt lookup) are the same whichever adapter drafts: each verdict's drafter
    share is the fraction of its call's rounds that the drafter drafted, and only those count as saved seconds."""
    target = tiny_llama(seed=0)
    session = EvoSpecSession(
        noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**{**BETWEEN, "governor": True})
    )
    config = EvoSpecConfig(**{**STEADY.to_dict(), "lookup_tokens": 4})
    shares = []
    for seed in range(4):
        stats = DraftStats()
        target.generate(
            prompt(seed), max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=session.drafter,
            evospec_config=config, evospec_session=session, evospec_stats=stats,
        )  # fmt: skip
        session.wait_learning()
        shares.append((stats.rounds - stats.lookup_rounds) / stats.rounds)
    verdicts = session.stats.governor
    assert [v["call"] for v in verdicts] == [2, 3, 4]
    assert min(shares[1:]) < 1  # the premise: some measured call copied drafts
    assert [v["drafter_share"] for v in verdicts] == pytest.approx(shares[1:], abs=1e-4)


def test_the_governor_turns_learning_off_and_the_session_drafts_with_the_shipped_adapter_again():
    """At lr 1e-2 this tiny drafter gets worse on each next text (0.53 -> 0.27 agreement): the governor sees it on
    the calls' own outputs, stops learning, and the next call drafts with the starting adapter."""
    target = tiny_llama(seed=0)
    config = OnlineAlignmentConfig(**{**BETWEEN, "governor": True, "governor_calls": 2})
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), config)
    for seed in range(8):
        generate(target, session.drafter, seed, session)
        session.wait_learning()
        if not session.learning:
            break
    assert not session.learning, session.stats.governor
    window = session.stats.governor[-2:]  # the `governor_calls` calls it decided on
    assert sum(v["agreement_learned"] - v["agreement_shipped"] for v in window) < 0
    assert sum(v["saved_s"] for v in window) < 0 and not window[-1]["use_learned"]
    updates = session.stats.updates
    assert not same(session._weights, session._initial)  # it has a learned adapter, but drafts without it:
    seen = []

    def capture(input_ids, scores, **kwargs):  # a stopping criterion runs while the session's adapter is in
        seen.append(drafter_lora(session))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    target.generate(
        prompt(20), max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=session.drafter,
        evospec_config=STEADY, evospec_session=session, stopping_criteria=StoppingCriteriaList([capture]),
    )  # fmt: skip
    session.wait_learning()
    assert seen and all(same(weights, session._initial) for weights in seen)
    assert session.stats.updates == updates  # and learns no more


def test_the_governor_keeps_learning_that_pays():
    """A sharp target that a noisy copy can learn (`test_alignment_pays`): the learned adapter agrees with the
    target more than the starting one on each new text (+0.05 to +0.3), so learning stays on. Without the pull to
    the starting adapter: the default pull (0.2) keeps this drafter from learning it, and the governor stops."""
    from .test_alignment_pays import drafting_config, sharp_target

    target = sharp_target(seed=0)
    config = OnlineAlignmentConfig(
        update_every=1, batch_size=2, window=16, lr=1e-3, curriculum_start_rank=None, min_replay=1, warmup_updates=0,
        governor_calls=3, anchor=0.0,
    )  # fmt: skip
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.6), config)
    for seed in range(8):
        target.generate(
            prompt(seed), max_new_tokens=40, do_sample=False, assistant_model=session.drafter,
            evospec_config=drafting_config(), evospec_session=session,
        )  # fmt: skip
        session.wait_learning()
    verdicts = session.stats.governor
    assert session.learning and len(verdicts) >= 5, verdicts
    later = verdicts[-3:]
    assert sum(v["agreement_learned"] for v in later) > sum(v["agreement_shipped"] for v in later), verdicts
