"""OnlineAligner on its own: what the curriculum teaches, and what the replay buffer keeps."""

import torch

from evospec_hf import EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.evolve.online import OUTSIDE_SHORTLIST, OnlineAligner
from evospec_hf.utils import unwrap_peft

from ..conftest import VOCAB_SIZE, tiny_llama


def aligner(**overrides):
    config = OnlineAlignmentConfig(**{"update_every": 1, "min_replay": 1, "warmup_updates": 0, "window": 8,
                                     "learn": "in-loop", **overrides})
    session = EvoSpecSession(tiny_llama(seed=1), config)
    params = {name: p for name, p in session.drafter.named_parameters() if "lora_" in name}
    for p in params.values():
        p.requires_grad_(True)
    head = unwrap_peft(session.drafter).get_output_embeddings()
    return OnlineAligner(unwrap_peft(session.drafter).base_model, head.weight.detach(), None, None, params, config,
                         session._state, session.stats, anchor=session._initial)  # fmt: skip


def feed(al, ranks, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sequence = torch.randint(3, VOCAB_SIZE, (length,), generator=gen)
    scores = torch.randn(1, len(ranks), VOCAB_SIZE, generator=gen)
    al.record(sequence, scores, len(ranks) - 1, torch.tensor(ranks))


def test_the_curriculum_teaches_near_misses_first_and_widens():
    al = aligner(curriculum_start_rank=4, curriculum_patience=2)
    feed(al, [OUTSIDE_SHORTLIST, 50])  # far misses only: nothing to teach at a bound of 4
    al.update()
    assert al.stats.skipped == 1 and al.stats.updates == 0
    feed(al, [0, 3])  # an accepted position and a near miss
    al.update()
    al.update()
    assert al.stats.updates == 2 and al.stats.max_rank == [4, 4]
    assert al.state.max_rank == 16  # widened after `curriculum_patience` updates without improvement


def test_a_corrupt_teacher_row_never_enters_the_buffer_but_masked_tokens_do():
    al = aligner()
    sequence = torch.arange(3, 15)
    nan_scores = torch.zeros(1, 2, VOCAB_SIZE)
    nan_scores[0, 1, 5] = float("nan")
    al.record(sequence, nan_scores, 1, torch.zeros(2, dtype=torch.long))
    assert len(al.state.replay) == 0
    masked = torch.zeros(1, 2, VOCAB_SIZE)
    masked[0, :, 10:] = float("-inf")  # e.g. top-k sampling warpers
    al.record(sequence, masked, 1, torch.zeros(2, dtype=torch.long))
    assert len(al.state.replay) == 1
    record = al.state.replay[0]
    assert record["tokens"].shape[0] == 8 and record["teacher_ids"].shape == (2, 32)


def test_full_kd_keeps_whole_rows_and_topk_keeps_k():
    topk, full = aligner(kd="topk", topk=5), aligner(kd="full")
    for al in (topk, full):
        feed(al, [0, 1, 2])
        al.update()
        assert al.stats.updates == 1
    assert topk.state.replay[0]["teacher_ids"].shape == (3, 5)
    assert full.state.replay[0]["teacher_full"].shape == (3, VOCAB_SIZE)


def test_the_anchor_pulls_each_update_back_toward_the_starting_adapter():
    """The same first step with and without the pull: the anchored weights move (1 - anchor) as far."""
    steps = {}
    for anchor in (0.0, 0.25):
        torch.manual_seed(0)  # the same fresh LoRA initialisation for both
        al = aligner(anchor=anchor)
        start = {name: p.detach().clone() for name, p in al.params.items()}
        feed(al, [0, 1, 2])
        al.update()
        assert al.stats.updates == 1
        steps[anchor] = {name: p.detach() - start[name] for name, p in al.params.items()}
    assert any(bool(step.abs().max() > 0) for step in steps[0.0].values())
    for name, step in steps[0.0].items():
        torch.testing.assert_close(steps[0.25][name], 0.75 * step)


def test_a_rejected_position_is_taught_whatever_the_curriculums_bound(monkeypatch):
    """The target's correction of a rejected draft is taught even when the drafter ranked it far down (as OSD
    does); a round whose drafts were all accepted has no such position."""
    import evospec_hf.evolve.online as online

    taught = []
    loss = online.topk_kd_loss
    monkeypatch.setattr(online, "topk_kd_loss", lambda *a, **k: taught.append(a[5].tolist()) or loss(*a, **k))
    sequence = torch.arange(3, 15)
    scores = torch.randn(1, 3, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    for teach in (False, True):
        al = aligner(curriculum_start_rank=1, teach_rejected=teach, batch_size=1)
        al.record(sequence, scores[:, :2], 1, torch.tensor([0, 50]))  # one draft, accepted, then the bonus token
        al.update()
        al.record(sequence, scores, 1, torch.tensor([0, 50]))  # two drafts, the second rejected: 50 is its rank
        al.update()
    # the positions each update taught (1: taught): the accepted draft, and the correction only when asked
    assert taught == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
