"""HiSpec's exit head training (`evospec_hf.distill.exit_head`): briefly trained on the target's own text, the exit
after the first layer agrees with the target more often than the plain early exit, and a restart resumes."""

import torch

from evospec_hf.distill.exit_head import exit_agreement, train_exit_head
from evospec_hf.distill.feature import cache_teacher
from evospec_hf.models.exit_head import ExitHead

from ..conftest import sharpened, target_text, tiny_llama


def test_a_trained_exit_head_agrees_more_and_training_resumes(tmp_path):
    target = sharpened(tiny_llama(seed=0, layers=3))
    for p in target.parameters():
        p.requires_grad_(False)
    chunks = target_text(target, 40)
    with torch.no_grad():
        train = [r for p in cache_teacher(target, chunks[:32], tmp_path / "t", [1], 16, progress=False) for r in torch.load(p)]
        held = [r for p in cache_teacher(target, chunks[32:], tmp_path / "h", [1], 16, progress=False) for r in torch.load(p)]
    head = ExitHead(target.config.hidden_size, 1)
    before = exit_agreement(target, head, held)["synthetic"]
    state = tmp_path / "state.pt"
    history = train_exit_head(target, head, train, 30, 4, 1e-2, state, negatives=16, save_every=10, progress=False)
    assert len(history) == 30 and state.exists()
    # a restart with a longer run continues from step 30 (the saved state), not from scratch
    history = train_exit_head(target, head, train, 80, 4, 1e-2, state, negatives=16, save_every=10, progress=False)
    assert len(history) == 80
    after = exit_agreement(target, head, held)["synthetic"]
    assert after > before + 0.1, (before, after)
    head.save_pretrained(tmp_path / "exit", target, "tiny")
    loaded = ExitHead.from_pretrained(tmp_path / "exit", target)
    assert loaded.layer == 1 and torch.equal(loaded.proj.weight, head.proj.weight)
