"""Several threads at once (a Space serves several visitors from one process): calls that share a target, a drafter
or a session each draft as if alone, or wait for each other. Never a raw error, never a changed drafter.

Each thread's result is compared with the same call run alone: its output must equal plain greedy, and its draft
statistics (what was drafted and accepted, round by round) must equal the lone run's, which they would not if the
calls shared drafting state (context slots, KV cache, draft lengths) or saw each other's weights.
"""

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecSession, OnlineAlignmentConfig

from ..conftest import VOCAB_SIZE, noisy_copy, run_together, tiny_llama

THREADS, REPEATS = 4, 5
# draft lengths that do not depend on timings, and the plain head (whose timing trials could round differently):
# every run of a call is then the same, alone or not
STEADY = dict(draft_schedule="heuristic", num_draft_tokens=3, fast_verify_head=False)
LEARN_FAST = dict(
    update_every=1, batch_size=2, window=16, lr=1e-2, curriculum_start_rank=None, min_replay=1, warmup_updates=0,
    learn="in-loop", governor=False,
)


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


def lora(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def by_layer(weights: dict) -> dict:
    """LoRA weights keyed without peft's wrapper prefix (a drafter wrapped twice names them differently)."""
    return {name.removeprefix("base_model.model."): t for name, t in weights.items()}


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


@pytest.mark.parametrize("mode", ["context", "static+context", "router+context", "evospec"])
def test_calls_sharing_a_target_and_a_drafter_each_draft_as_if_alone(target, mode, static_table_path, router_folder):
    drafter = noisy_copy(target, seed=1, scale=0.1)
    config = EvoSpecConfig(
        shortlist=mode, shortlist_size=40, context_slots=16, static_shortlist_path=static_table_path,
        router_path=router_folder, **STEADY,
    )  # fmt: skip

    def call(seed):
        stats = DraftStats()
        out = target.generate(
            prompt(seed), max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        return out, stats.accepted_per_round, stats.drafted

    alone = {seed: call(seed) for seed in range(THREADS)}
    plain = {seed: target.generate(prompt(seed), max_new_tokens=24, do_sample=False) for seed in range(THREADS)}
    for _ in range(REPEATS):
        together = run_together([lambda seed=seed: call(seed) for seed in range(THREADS)])
        for seed, (out, per_round, drafted) in enumerate(together):
            assert torch.equal(out, plain[seed])
            assert (per_round, drafted) == alone[seed][1:], f"thread {seed} drafted differently beside others"


def test_plain_generate_beside_evospec_calls_is_untouched(target):
    drafter = noisy_copy(target, seed=1)
    expected = target.generate(prompt(9), max_new_tokens=20, do_sample=False)

    def evospec():
        return target.generate(
            prompt(9), max_new_tokens=20, do_sample=False, assistant_model=drafter, evospec_config=EvoSpecConfig()
        )

    def plain():
        return target.generate(prompt(9), max_new_tokens=20, do_sample=False)

    def hf_assisted():  # transformers' own assisted decoding must still get transformers' own candidate generator
        return target.generate(prompt(9), max_new_tokens=20, do_sample=False, assistant_model=hf_drafter)

    hf_drafter, hf_rounds = noisy_copy(target, seed=1), []
    original = hf_drafter.generate
    hf_drafter.generate = lambda *a, **k: hf_rounds.append(1) or original(*a, **k)  # transformers drafts through it
    for _ in range(REPEATS):
        hf_rounds.clear()
        for out in run_together([evospec, plain, hf_assisted, evospec]):
            assert torch.equal(out, expected)
        assert hf_rounds
    assert "_get_candidate_generator" not in vars(target) and "forward" not in vars(target.lm_head)


def test_one_session_from_two_threads_takes_turns(target):
    """Two visitors' calls on one session: they wait for each other; each is exact and both are learned from."""
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST))
    own = lora(session.drafter)
    config = EvoSpecConfig(shortlist="context", shortlist_size=40, lookup_tokens=0, **STEADY)

    def call(seed):
        return target.generate(
            prompt(seed), max_new_tokens=20, do_sample=False, assistant_model=session.drafter, evospec_config=config,
            evospec_session=session,
        )  # fmt: skip

    for _ in range(3):
        for seed, out in enumerate(run_together([lambda s=s: call(s) for s in range(2)])):
            assert torch.equal(out, target.generate(prompt(seed), max_new_tokens=20, do_sample=False))
    assert session.stats.updates > 0 and session.stats.rollbacks == 0
    assert all(torch.equal(p, own[name]) for name, p in lora(session.drafter).items())  # the drafter's own weights


def test_sessions_on_one_drafter_stay_apart_and_leave_the_drafter_as_it_was(target):
    """Two sessions on one drafter, used at once: each learns exactly what it learns when run alone, and the drafter's
    own adapter is untouched afterwards (a new session starts from it)."""
    drafter = noisy_copy(target, seed=3, scale=0.3)
    config = EvoSpecConfig(shortlist="context", shortlist_size=40, lookup_tokens=0, **STEADY)

    def sessions():
        first = EvoSpecSession(drafter, OnlineAlignmentConfig(**LEARN_FAST))
        return first, EvoSpecSession(first.drafter, OnlineAlignmentConfig(**LEARN_FAST, seed=1))

    def conversation(session, seed):
        outs = []
        for turn in range(2):
            outs.append(target.generate(
                prompt(10 * seed + turn), max_new_tokens=20, do_sample=False, assistant_model=session.drafter,
                evospec_config=config, evospec_session=session,
            ))  # fmt: skip
        return outs

    alone = sessions()
    own = by_layer(lora(alone[0].drafter))
    expected_outs = [conversation(session, seed) for seed, session in enumerate(alone)]
    learned_alone = [by_layer(session._weights) for session in alone]

    together = sessions()
    outs = run_together([lambda s=s, session=session: conversation(session, s) for s, session in enumerate(together)])
    for seed in range(2):
        assert all(torch.equal(a, b) for a, b in zip(outs[seed], expected_outs[seed]))
        learned = by_layer(together[seed]._weights)
        assert learned.keys() == learned_alone[seed].keys()
        assert all(torch.equal(learned[name], learned_alone[seed][name]) for name in learned), f"session {seed}"
    after = by_layer(lora(together[0].drafter))
    assert after.keys() == own.keys() and all(torch.equal(after[name], own[name]) for name in own)
    fresh = by_layer(EvoSpecSession(together[0].drafter)._weights)  # a new session starts from the drafter's own
    assert all(torch.equal(fresh[name], own[name]) for name in own)


def test_session_methods_wait_for_a_call_on_another_thread(target, tmp_path):
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), OnlineAlignmentConfig(**LEARN_FAST))
    config = EvoSpecConfig(shortlist="context", shortlist_size=40, lookup_tokens=0, **STEADY)

    def call():
        return target.generate(
            prompt(4), max_new_tokens=30, do_sample=False, assistant_model=session.drafter, evospec_config=config,
            evospec_session=session,
        )  # fmt: skip

    def save():
        session.save_adapter(tmp_path / "adapter")
        return "saved"

    def evaluate():
        with session.applied():
            return session.drafter(prompt(5)).logits.shape

    out, saved, shape = run_together([call, save, evaluate])
    assert torch.equal(out, target.generate(prompt(4), max_new_tokens=30, do_sample=False))
    assert saved == "saved" and (tmp_path / "adapter" / "adapter_config.json").is_file() and shape[-1] == VOCAB_SIZE


def test_a_session_call_inside_applied_is_refused_clearly(target):
    session = EvoSpecSession(noisy_copy(target, seed=3), OnlineAlignmentConfig(**LEARN_FAST))
    config = EvoSpecConfig(shortlist="context", shortlist_size=40)
    with session.applied():
        # drafting with the session's adapter, without learning, is fine inside the block
        target.generate(prompt(1), max_new_tokens=5, assistant_model=session.drafter, evospec_config=config)
        with pytest.raises(RuntimeError, match="would wait for itself"):
            target.generate(
                prompt(1), max_new_tokens=5, assistant_model=session.drafter, evospec_config=config,
                evospec_session=session,
            )  # fmt: skip
