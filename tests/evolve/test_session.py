"""Online alignment inside generate: output never changes, bad updates roll back, sessions stay apart."""

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.evolve.online import OnlineAligner

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_gemma3, tiny_llama

LEARN_FAST = dict(update_every=1, batch_size=2, window=16, lr=1e-2, curriculum_start_rank=None, min_replay=1, warmup_updates=0,
                 learn="in-loop", governor=False)


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


def adapter(session) -> dict:
    return {name: t.clone() for name, t in session._weights.items()}


def drafter_lora(session) -> dict:
    return {name: p.detach().clone() for name, p in session.drafter.named_parameters() if "lora_" in name}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


def generate(target, session, seed, config=None, stats=None, **kwargs):
    # the drafter drafts every round (no context lookup), so that every round teaches the same way, and the draft
    # lengths do not depend on timings (a seeded sample stays the same)
    config = config or EvoSpecConfig(
        shortlist="context", shortlist_size=40, num_draft_tokens=4, lookup_tokens=0, draft_schedule="heuristic"
    )
    kwargs = {"max_new_tokens": 30, "do_sample": False, **kwargs}
    return target.generate(
        prompt(seed), assistant_model=session.drafter, evospec_config=config, evospec_session=session,
        evospec_stats=stats, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("async_updates", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", ["full", "static+context", "router+context"])
def test_greedy_is_unchanged_while_the_drafter_learns(target, mode, async_updates, static_table_path, router_folder):
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST, async_updates=async_updates))
    before = adapter(session)
    config = EvoSpecConfig(
        shortlist=mode, shortlist_size=40, context_slots=16, num_draft_tokens=4,
        static_shortlist_path=static_table_path, router_path=router_folder,
    )  # fmt: skip
    for seed in range(3):
        assert torch.equal(generate(target, session, seed, config), target.generate(prompt(seed), max_new_tokens=30, do_sample=False))
    assert session.stats.updates > 5 and session.stats.rollbacks == 0
    assert not same(adapter(session), before)  # it did learn


def test_greedy_is_unchanged_when_the_drafter_keeps_its_stale_cache(target):
    config = OnlineAlignmentConfig(**LEARN_FAST, refresh_cache=False)
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), config)
    for seed in range(2):
        assert torch.equal(generate(target, session, seed), target.generate(prompt(seed), max_new_tokens=30, do_sample=False))
    assert session.stats.updates > 5


def test_sampling_with_a_learning_drafter_runs(target):
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST))
    torch.manual_seed(0)
    out = generate(target, session, 0, do_sample=True, temperature=0.8)
    assert out.shape[1] == 40 and session.stats.updates > 0


def test_a_nan_in_the_adapter_is_rolled_back(target, monkeypatch):
    # no loss bound: only the injected NaN may roll back (a loss spike before it would restore another adapter)
    config = OnlineAlignmentConfig(**LEARN_FAST, max_loss_ratio=1e9)
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), config)
    update, rollback, seen = OnlineAligner.update, OnlineAligner._rollback, {}

    def update_with_injection(self):
        if self.stats.updates == 3 and "last_good" not in seen:
            seen["last_good"] = {name: t.clone() for name, t in self.state.last_good.items()}
            with torch.no_grad():
                next(iter(self.params.values())).fill_(float("nan"))
        update(self)

    def recording_rollback(self):
        rollback(self)
        if "last_good" in seen:  # the rollback that follows the injection
            seen.setdefault("restored", {name: p.detach().clone() for name, p in self.params.items()})

    monkeypatch.setattr(OnlineAligner, "update", update_with_injection)
    monkeypatch.setattr(OnlineAligner, "_rollback", recording_rollback)
    for seed in range(2):
        assert torch.equal(generate(target, session, seed), target.generate(prompt(seed), max_new_tokens=30, do_sample=False))
    assert session.stats.rollbacks >= 1
    assert same(seen["restored"], seen["last_good"])  # exactly the last good adapter came back
    assert all(torch.isfinite(t).all() for t in session._weights.values())


def test_a_loss_past_the_bound_rolls_back_once_then_a_harder_text_is_accepted(target, monkeypatch):
    """Loss 1, 1, 1, then 10 (past 4x the average): roll back to the last good adapter. 10 again with that adapter:
    the text got harder (a topic switch), not the weights worse, so training goes on."""
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST))
    losses = iter([1.0, 1.0, 1.0, 10.0, 10.0, 10.0] + [10.0] * 100)

    def scripted_loss(self, batch, max_rank):
        scale = next(losses)
        first = next(iter(self.params.values()))
        return (first.sum() * 1e-6 + 1.0) * scale  # a loss with a gradient, of a chosen size

    monkeypatch.setattr(OnlineAligner, "_loss", scripted_loss)
    generate(target, session, 0)
    assert session.stats.rollbacks == 1
    assert session.stats.losses[:5] == pytest.approx([1.0, 1.0, 1.0, 10.0, 10.0], abs=1e-2)  # 4th rolled back, then on


def test_sessions_are_isolated(target, tmp_path):
    drafter = noisy_copy(target, seed=3, scale=0.3)
    alice = EvoSpecSession(drafter, OnlineAlignmentConfig(**LEARN_FAST))
    bob = EvoSpecSession(alice.drafter, OnlineAlignmentConfig(**LEARN_FAST))
    initial, drafter_own = adapter(bob), drafter_lora(alice)
    generate(target, alice, 0)
    learned = adapter(alice)
    assert not same(learned, initial)
    assert same(adapter(bob), initial)  # bob never saw alice's text
    assert same(drafter_lora(alice), drafter_own)  # the drafter got its own weights back
    # a call without a session drafts with the drafter's own weights: same output, same stats as before alice learned
    plain = lambda: target.generate(  # noqa: E731
        prompt(1), max_new_tokens=20, do_sample=False, assistant_model=alice.drafter,
        evospec_config=EvoSpecConfig(shortlist="full"), evospec_stats=DraftStats(),
    )  # fmt: skip
    plain()
    assert same(drafter_lora(alice), drafter_own)

    # shared on purpose: save and load
    alice.save_adapter(tmp_path / "alice")
    bob.load_adapter(tmp_path / "alice")
    assert same(adapter(bob), learned)
    bob.reset()
    assert same(adapter(bob), initial) and bob.stats.updates == 0


def test_session_errors(target):
    session = EvoSpecSession(noisy_copy(target, seed=3))
    with pytest.raises(ValueError, match="another drafter"):
        target.generate(
            prompt(0), max_new_tokens=5, assistant_model=tiny_llama(seed=9, layers=1),
            evospec_config=EvoSpecConfig(), evospec_session=session,
        )  # fmt: skip
    with pytest.raises(ValueError, match="need `evospec_config`"):
        target.generate(prompt(0), max_new_tokens=5, evospec_session=session)
    with pytest.raises(ValueError, match="lr"):
        OnlineAlignmentConfig(lr=0)
    with pytest.raises(ValueError, match="kd"):
        OnlineAlignmentConfig(kd="everything")


def test_a_session_adapts_a_gemma_drafter_with_sliding_window(router_folder):
    target = tiny_gemma3(seed=0)
    session = EvoSpecSession(noisy_copy(target, seed=4, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST))
    config = EvoSpecConfig(shortlist="router+context", shortlist_size=40, context_slots=16, router_path=router_folder)
    for seed in range(2):
        expected = target.generate(prompt(seed), max_new_tokens=30, do_sample=False)
        assert torch.equal(generate(target, session, seed, config), expected)
    assert session.stats.updates > 0


def test_trainable_layers_limits_learning_to_the_last_layers(target):
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST, trainable_layers=1))
    before = adapter(session)
    generate(target, session, 0)
    after = adapter(session)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".layers.1." in name for name in changed)  # the tiny target has 2 layers: 0 and 1
    with pytest.raises(ValueError, match="trainable_layers"):
        OnlineAlignmentConfig(trainable_layers=0)


def test_a_seeded_learning_session_is_reproducible_with_the_default_verification_head(target):
    """Learning amplifies rounding: teacher logits must not depend on the tuned head's timing trials (which pick a
    matmul order by the clock), so a learning session verifies with the plain head. Two identical sessions in one
    process, the first while the head's trials run and the second after they are decided, learn the same bits."""
    from evospec_hf.ops.calibration import forget_loaded

    forget_loaded()  # the head's choices for this shape are undecided again: the first session sees the trials
    learned = []
    for _ in range(2):
        session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST))
        config = EvoSpecConfig(shortlist="context", shortlist_size=40, num_draft_tokens=4, draft_schedule="heuristic")
        assert config.fast_verify_head
        for seed in range(3):
            generate(target, session, seed, config)
        assert session.stats.updates > 5
        learned.append(adapter(session))
    assert same(*learned)
