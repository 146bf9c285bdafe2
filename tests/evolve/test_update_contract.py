"""Two promises of an online update that output equality cannot see: what a rollback restores, and that random
negatives take part in the drafter's softmax."""

import torch

from evospec_hf import EvoSpecConfig, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.evolve.online import OnlineAligner

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_llama

# as in test_session.py
LEARN_FAST = dict(
    update_every=1, batch_size=2, window=16, lr=1e-2, curriculum_start_rank=None, min_replay=1, warmup_updates=0,
    learn="in-loop", governor=False,
)


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


def generate(target, session, seed):
    config = EvoSpecConfig(shortlist="full", num_draft_tokens=4, lookup_tokens=0, draft_schedule="heuristic")
    return target.generate(
        prompt(seed), max_new_tokens=30, do_sample=False, assistant_model=session.drafter, evospec_config=config,
        evospec_session=session,
    )  # fmt: skip


def test_a_rollback_restores_the_adapter_whose_loss_was_last_in_bounds(monkeypatch):
    """An update measures the loss of the current adapter, and only then steps. So the adapter known to be good is
    the one before the last step: the step's result was never measured, and restoring it would keep a bad step."""
    target = tiny_llama(seed=0)
    # no loss bound: only the injected NaN may roll back
    config = OnlineAlignmentConfig(**LEARN_FAST, max_loss_ratio=1e9)
    session = EvoSpecSession(noisy_copy(target, seed=3, scale=0.3), config)
    update, seen = OnlineAligner.update, {}

    def spying_update(self):
        adapter = {name: p.detach().clone() for name, p in self.params.items()}
        updates, rollbacks = self.stats.updates, self.stats.rollbacks
        if updates == 4 and "measured" not in seen:  # the step of update 4 went wrong
            seen["measured"] = seen["last_in_bounds"]
            with torch.no_grad():
                next(iter(self.params.values())).fill_(float("nan"))
        update(self)
        if self.stats.updates > updates:
            seen["last_in_bounds"] = adapter  # this adapter's loss was measured, in bounds, then stepped from
        if self.stats.rollbacks > rollbacks and "measured" in seen:
            seen.setdefault("restored", {name: p.detach().clone() for name, p in self.params.items()})

    monkeypatch.setattr(OnlineAligner, "update", spying_update)
    generate(target, session, 0)
    assert session.stats.rollbacks == 1 and session.stats.updates > 5
    restored, measured = seen["restored"], seen["measured"]
    assert restored.keys() == measured.keys()
    assert all(torch.equal(restored[name], measured[name]) for name in measured)


def test_random_negatives_join_the_drafters_softmax():
    """With `topk=1` and one record per batch, a round whose first draft was rejected gives a support of one token.
    A softmax over that one column is 1 whatever the drafter says: the loss is 0 and nothing is learned, unless
    `negatives` adds other tokens to the softmax."""

    def losses(negatives):
        config = OnlineAlignmentConfig(**{**LEARN_FAST, "batch_size": 1, "topk": 1, "negatives": negatives})
        session = EvoSpecSession(tiny_llama(seed=7), config)  # an unrelated drafter: its first draft is mostly wrong
        generate(tiny_llama(seed=0), session, 0)
        assert session.stats.updates > 10
        return session.stats.losses

    assert min(losses(negatives=0)) == 0.0  # the case exists: without negatives some updates teach nothing
    assert min(losses(negatives=256)) > 0.5
