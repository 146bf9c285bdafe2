"""Bad input gets a clear error, never a silent wrong answer."""

import json

import pytest
import torch

import evospec_hf
from evospec_hf import EvoSpecConfig

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_gpt2, tiny_llama

PROMPT = torch.tensor([[4, 5, 6, 7]])


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def drafter(target):
    return noisy_copy(target, seed=1)


def test_different_vocabularies(target):
    other = tiny_llama(seed=1, vocab_size=VOCAB_SIZE + 8)
    with pytest.raises(ValueError, match="tokenizer"):  # transformers itself refuses first, asking for tokenizers
        target.generate(PROMPT, max_new_tokens=3, assistant_model=other, evospec_config=EvoSpecConfig())
    # a drafter whose LM head is padded differently while the configs agree is caught by evospec_hf
    padded = tiny_llama(seed=1)
    padded.lm_head = torch.nn.Linear(32, VOCAB_SIZE + 8, bias=False)
    with pytest.raises(ValueError, match="differs from the target's"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=padded, evospec_config=EvoSpecConfig())


def test_shortlist_larger_than_vocabulary(target, drafter):
    with pytest.raises(ValueError, match="larger than the drafter's vocabulary"):
        target.generate(
            PROMPT, max_new_tokens=3, assistant_model=drafter,
            evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=VOCAB_SIZE + 1),
        )  # fmt: skip


@pytest.mark.parametrize("size", [0, -3])
def test_non_positive_shortlist_size(size):
    with pytest.raises(ValueError, match="shortlist_size"):
        EvoSpecConfig(shortlist="context", shortlist_size=size)


def test_static_file_missing_corrupt_or_for_another_vocabulary(target, drafter, tmp_path):
    def run(path):
        config = EvoSpecConfig(shortlist="static", shortlist_size=10, static_shortlist_path=str(path))
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=config)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "evospec-frequency-table", "version": 1, "vocab_size": ')
    with pytest.raises(ValueError, match="corrupt"):
        run(corrupt)
    other = tmp_path / "other.json"
    evospec_hf.FrequencyTable.from_token_ids([[1, 2, 3]], vocab_size=500).save(other)
    with pytest.raises(ValueError, match="built for a vocabulary of 500"):
        run(other)
    assert json.loads(other.read_text())["vocab_size"] == 500


def test_missing_drafter(target):
    with pytest.raises(ValueError, match="assistant_model"):
        target.generate(PROMPT, max_new_tokens=3, evospec_config=EvoSpecConfig())
    with pytest.raises(ValueError, match="drafter="):
        target.generate(PROMPT, max_new_tokens=3, custom_generate=evospec_hf.custom_generate, evospec_config=EvoSpecConfig())


def test_config_of_the_wrong_type(target, drafter):
    with pytest.raises(TypeError, match="EvoSpecConfig"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config={"shortlist": "full"})


def test_beams_and_conflicting_strategies(target, drafter):
    with pytest.raises(ValueError, match="num_beams"):  # transformers runs beam search, ignoring the assistant
        target.generate(PROMPT, max_new_tokens=3, num_beams=2, assistant_model=drafter, evospec_config=EvoSpecConfig())
    with pytest.raises(ValueError, match="num_beams"):
        target.generate(
            PROMPT, max_new_tokens=3, num_beams=2, custom_generate=evospec_hf.custom_generate, drafter=drafter,
            evospec_config=EvoSpecConfig(),
        )  # fmt: skip


@pytest.mark.parametrize(
    "flag", [dict(prompt_lookup_num_tokens=3), dict(assistant_early_exit=1), dict(use_mtp=True),
             dict(speculation_type="dflash")], ids=lambda flag: next(iter(flag)),
)  # fmt: skip
@pytest.mark.parametrize("rows", [1, 2])
def test_transformers_other_drafting_strategies_are_refused_by_name(target, drafter, flag, rows):
    (name,) = flag
    prompt = PROMPT.repeat(rows, 1)
    with pytest.raises(ValueError, match=f"`{name}` selects another drafting strategy"):
        target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, assistant_model=drafter,
                        evospec_config=EvoSpecConfig(), **flag)  # fmt: skip


def test_drafter_of_another_dtype_is_handled(target):
    """A half-precision drafter drafts in its own dtype; the output still equals plain greedy."""
    drafter = noisy_copy(target, seed=1).to(torch.bfloat16)
    expected = target.generate(PROMPT, max_new_tokens=12, do_sample=False)
    got = target.generate(
        PROMPT, max_new_tokens=12, do_sample=False, assistant_model=drafter,
        evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=50),
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_unsupported_head_is_refused(target):
    """A drafter whose logits are not lm_head(base_model(x)) would draft from a wrong distribution silently."""
    drafter = tiny_gpt2(seed=3)
    drafter.config.vocab_size = VOCAB_SIZE
    original_forward = drafter.forward

    def scaled_forward(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out

    drafter.forward = scaled_forward
    with pytest.raises(ValueError, match="cannot shortlist this architecture"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=EvoSpecConfig())


def test_static_without_any_table_explains_both_ways(target, drafter):
    with pytest.raises(FileNotFoundError, match="static_shortlist_path.*build-static-shortlist"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=EvoSpecConfig(shortlist="static", shortlist_size=10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"evospec_stats": {}}, "`evospec_stats` must be a DraftStats", id="stats-dict"),
        pytest.param({"evospec_session": "abc"}, "`evospec_session` must be an EvoSpecSession", id="session-str"),
    ],
)
def test_arguments_of_the_wrong_kind_are_named(target, drafter, kwargs, match):
    with pytest.raises(TypeError, match=match):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=EvoSpecConfig(), **kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("shortlist", "statc"), ("num_draft_tokens", 0), ("lookup_tokens", -3), ("draft_schedule", "fast")],
)
def test_a_config_changed_after_construction_is_checked_when_generate_starts(target, drafter, field, value):
    config = EvoSpecConfig()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=f"`{field}`"):
        target.generate(PROMPT, max_new_tokens=3, assistant_model=drafter, evospec_config=config)
    with pytest.raises(ValueError, match=f"`{field}`"):  # the custom_generate path too
        target.generate(
            PROMPT, max_new_tokens=3, custom_generate=evospec_hf.custom_generate, drafter=drafter,
            evospec_config=config,
        )  # fmt: skip
