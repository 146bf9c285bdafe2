import json
import logging
import os
import re
from pathlib import Path

import pytest

from evospec_hf import EvoSpecConfig, OnlineAlignmentConfig
from evospec_hf.utils import check_int


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
        # values of the wrong type: each raised a raw TypeError (or nothing until `generate`) before
        pytest.param({"confidence_threshold": "0.5"}, "confidence_threshold", id="threshold-str"),
        pytest.param({"static_shortlist_path": 123}, "static_shortlist_path", id="static-path-int"),
        pytest.param({"router_path": 123}, "router_path", id="router-path-int"),
        pytest.param({"router_path": b"router"}, "router_path", id="router-path-bytes"),
        pytest.param({"fast_verify_head": 1}, "fast_verify_head", id="fast-verify-int"),
        pytest.param({"shortlist_size": True}, "shortlist_size", id="size-bool"),
        pytest.param({"lookup_tokens": 2.0}, "lookup_tokens", id="lookup-float"),
        pytest.param({"draft_schedule": None}, "draft_schedule", id="schedule-none"),
        pytest.param({"head_backend": ["torch"]}, "head_backend", id="backend-list"),
        pytest.param({"shortlist": None}, "shortlist", id="shortlist-none"),
        pytest.param({"entropy_stop": 1}, "entropy_stop", id="entropy-stop-int"),
        pytest.param({"lossy_js_scale": -0.5}, "lossy_js_scale", id="lossy-scale-negative"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`") as info:
        EvoSpecConfig(**kwargs)
    assert repr(kwargs[field]) in str(info.value)  # the message shows the value


def test_paths_may_be_str_or_pathlike():
    config = EvoSpecConfig(shortlist="static", static_shortlist_path=Path("freq.json"), router_path="router")
    assert config.to_dict()["static_shortlist_path"] == "freq.json"  # written to JSON as a str


@pytest.mark.parametrize(
    "field, value",
    [
        pytest.param("shortlist", "statc", id="shortlist-typo"),  # drafted from EOS/pad only
        pytest.param("num_draft_tokens", 0, id="zero-drafts"),  # crashed in torch.stack
        pytest.param("lookup_tokens", -3, id="negative-lookup"),  # accepted
        pytest.param("draft_schedule", "fast", id="unknown-schedule"),  # accepted
        pytest.param("confidence_threshold", "0.5", id="threshold-str"),
        pytest.param("router_path", 123, id="router-path-int"),
    ],
)
def test_validate_catches_fields_changed_after_construction(field, value):
    """`generate` calls `validate()`: a field assigned after construction gets the same error as at construction."""
    config = EvoSpecConfig()
    setattr(config, field, value)
    with pytest.raises(ValueError, match=f"`{field}`.*{re.escape(repr(value))}"):
        config.validate()


def test_validate_checks_relations_between_fields_changed_later():
    config = EvoSpecConfig(num_draft_tokens=4, max_draft_tokens=8)
    config.max_draft_tokens = 2
    with pytest.raises(ValueError, match="`num_draft_tokens` \\(4\\) must not exceed `max_draft_tokens` \\(2\\)"):
        config.validate()


@pytest.mark.parametrize(
    "value, minimum, message",
    [
        pytest.param(True, 1, "`n` must be a positive integer, got True.", id="bool"),
        pytest.param(2.0, 1, "`n` must be a positive integer, got 2.0.", id="float"),
        pytest.param(-1, 0, "`n` must be a non-negative integer, got -1.", id="negative"),
        pytest.param(1, 2, "`n` must be an integer >= 2, got 1.", id="below-minimum"),
        pytest.param("3", None, "`n` must be an integer, got '3'.", id="str-any-int"),
    ],
)
def test_check_int_is_the_one_integer_rule(value, minimum, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_int("n", value, minimum=minimum)
    check_int("n", None, minimum=minimum, optional=True)
    check_int("n", 5, minimum=minimum)


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
    with pytest.raises(ValueError, match="shortlist_sise"):
        EvoSpecConfig.from_pretrained(EvoSpecConfig().save_pretrained(tmp_path / "ok"), shortlist_sise=3)


# -- the config files: EvoSpecConfig and OnlineAlignmentConfig share one mechanism ------------------------------
CONFIG_FILES = [
    pytest.param(EvoSpecConfig, "evospec_config.json", "evospec-config", {"num_draft_tokens": 4}, id="evospec"),
    pytest.param(
        OnlineAlignmentConfig, "evospec_online_alignment.json", "evospec-online-alignment",
        {"update_every": 2, "curriculum_growth": 2, "curriculum_acceptance_gain": 0.1}, id="online-alignment",
    ),
]  # fmt: skip


@pytest.mark.parametrize("cls, file_name, format_name, fields", CONFIG_FILES)
def test_config_files_carry_a_format_and_version(tmp_path, cls, file_name, format_name, fields):
    config = cls(**fields)
    path = config.save_pretrained(tmp_path)
    assert os.path.basename(path) == file_name
    data = json.loads(open(path).read())
    assert data["format"] == format_name and data["version"] == 1
    assert cls.from_pretrained(tmp_path) == config and cls.from_pretrained(path) == config


@pytest.mark.parametrize("cls, file_name, format_name, fields", CONFIG_FILES)
def test_a_config_file_of_the_previous_release_loads_with_a_warning(tmp_path, caplog, cls, file_name, format_name, fields):
    (tmp_path / file_name).write_text(json.dumps(fields))  # no format, no version
    with caplog.at_level(logging.WARNING, logger="evospec_hf.config"):
        assert cls.from_pretrained(tmp_path) == cls(**fields)
    assert "no 'format' and 'version'" in caplog.text and file_name in caplog.text


@pytest.mark.parametrize("cls, file_name, format_name, fields", CONFIG_FILES)
@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param({"format": "evospec-drafter", "version": 1}, "its 'format' is 'evospec-drafter'", id="other-format"),
        pytest.param({"version": 2}, "has format version 2, but this evospec_hf reads versions 1 to 1", id="newer"),
        pytest.param({"version": "1"}, "corrupt: its 'version' is '1'", id="string-version"),
        pytest.param([], "corrupt: it holds []", id="json-list"),
        pytest.param("{not json", "corrupt", id="not-json"),
    ],
)
def test_config_files_of_another_kind_or_version_are_refused(tmp_path, cls, file_name, format_name, fields, content,
                                                              message):  # fmt: skip
    if isinstance(content, dict):
        content = json.dumps({"format": format_name, "version": 1, **fields, **content})
    elif not isinstance(content, str):
        content = json.dumps(content)
    (tmp_path / file_name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        cls.from_pretrained(tmp_path)
    assert str(tmp_path / file_name) in str(info.value)


def test_the_two_config_files_are_not_mistaken_for_each_other(tmp_path):
    path = OnlineAlignmentConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not an EvoSpecConfig file: its 'format' is 'evospec-online-alignment'"):
        EvoSpecConfig.from_pretrained(path)


def test_a_bad_value_in_a_config_file_names_the_file_and_the_field(tmp_path):
    (tmp_path / "evospec_config.json").write_text(json.dumps({"format": "evospec-config", "version": 1, "num_draft_tokens": 0}))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'evospec_config.json'}: `num_draft_tokens`")):
        EvoSpecConfig.from_pretrained(tmp_path)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"EvoSpecConfig file '{tmp_path / 'evospec_config.json'}' does not exist")):
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


@pytest.mark.parametrize("value", [True, 1, "js", "lossy", "ADASD-JS", ["adasd-js"]])
def test_lossy_acceptance_is_refused_unless_asked_for_by_name(value):
    """The one field that changes the output is off unless its rule is named exactly."""
    assert EvoSpecConfig().lossy_acceptance is None
    with pytest.raises(ValueError, match="`lossy_acceptance` changes the output"):
        EvoSpecConfig(lossy_acceptance=value)
    assert EvoSpecConfig(lossy_acceptance="adasd-js").lossy_acceptance == "adasd-js"
