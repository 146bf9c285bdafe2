import json

import pytest

from evospec_hf import EvoSpecConfig


def test_defaults_are_valid_and_full():
    config = EvoSpecConfig()
    assert config.shortlist == "full" and config.shortlist_sources == ()


def test_the_issue_contract_constructs():
    """`EvoSpecConfig(shortlist="static", shortlist_size=16384)`: the table is found at generate time."""
    assert EvoSpecConfig(shortlist="static", shortlist_size=16384).static_shortlist_path is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        pytest.param({"shortlist": "bogus"}, "shortlist", id="unknown-mode"),
        pytest.param({"shortlist": "full+context"}, "shortlist", id="full-in-union"),
        pytest.param({"shortlist": "context+context"}, "shortlist", id="repeated-source"),
        pytest.param({"shortlist_size": 0}, "shortlist_size", id="size-zero"),
        pytest.param({"shortlist_size": -5}, "shortlist_size", id="size-negative"),
        pytest.param({"shortlist_size": 1.5}, "shortlist_size", id="size-float"),
        pytest.param(
            {"shortlist": "static+context", "static_shortlist_path": "f.json", "shortlist_size": 10, "context_slots": 10},
            "context_slots",
            id="context-slots-fill-budget",
        ),
        pytest.param({"context_slots": -1}, "context_slots", id="context-slots-negative"),
        pytest.param({"num_draft_tokens": 0}, "num_draft_tokens", id="draft-zero"),
        pytest.param({"num_draft_tokens": 20, "max_draft_tokens": 4}, "num_draft_tokens", id="draft-over-max"),
        pytest.param({"draft_schedule": "fast"}, "draft_schedule", id="schedule"),
        pytest.param({"lookup_tokens": -1}, "lookup_tokens", id="lookup-negative"),
        pytest.param({"lookup_max_ngram": 0}, "lookup_max_ngram", id="lookup-ngram-zero"),
        pytest.param({"lookup_min_ngram": 3, "lookup_max_ngram": 2}, "lookup_min_ngram", id="lookup-min-over-max"),
        pytest.param({"confidence_threshold": 1.5}, "confidence_threshold", id="threshold"),
        pytest.param({"head_backend": "cuda"}, "head_backend", id="backend"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        EvoSpecConfig(**kwargs)


def test_save_and_load_round_trip(tmp_path):
    config = EvoSpecConfig(
        shortlist="static+context", shortlist_size=512, context_slots=64, static_shortlist_path="freq.json",
        num_draft_tokens=4, draft_schedule="constant", confidence_threshold=0.3,
    )  # fmt: skip
    path = config.save_pretrained(tmp_path)
    assert json.loads(open(path).read())["shortlist_size"] == 512
    assert EvoSpecConfig.from_pretrained(tmp_path) == config
    assert EvoSpecConfig.from_pretrained(path, shortlist_size=256).shortlist_size == 256


def test_load_rejects_unknown_fields(tmp_path):
    (tmp_path / "evospec_config.json").write_text(json.dumps({"shortlist": "full", "shortlist_sise": 3}))
    with pytest.raises(ValueError, match="shortlist_sise"):
        EvoSpecConfig.from_pretrained(tmp_path)


def test_evospec_mode_is_router_context_and_retrieval():
    config = EvoSpecConfig(shortlist="evospec", shortlist_size=64, context_slots=16)
    assert config.shortlist_sources == ("router", "context") and config.uses_retrieval
    assert not EvoSpecConfig(shortlist="router+context", shortlist_size=64, context_slots=16).uses_retrieval
    for shortlist in ("evospec+context", "router+evospec"):
        with pytest.raises(ValueError, match="evospec"):
            EvoSpecConfig(shortlist=shortlist)
    with pytest.raises(ValueError, match="context_slots"):
        EvoSpecConfig(shortlist="evospec", shortlist_size=16, context_slots=16)
    for kwargs, field in [({"semantic_neighbors": -1}, "semantic_neighbors"), ({"ngram_order": 0}, "ngram_order"),
                          ({"ngram_continuations": 1.5}, "ngram_continuations")]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            EvoSpecConfig(shortlist="evospec", **kwargs)
