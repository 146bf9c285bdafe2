"""Broken or mismatched drafter checkpoints: every one is refused with an error that names the file or the mismatch."""

import json
import logging
import shutil

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from evospec_hf import EvoSpecDrafter
from evospec_hf.models import drafter_from_target
from evospec_hf.models.drafter import target_architecture

from ..conftest import VOCAB_SIZE, tiny_gemma3, tiny_llama

ADAPTER_WEIGHTS = "adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, layers=3)


@pytest.fixture(scope="module")
def checkpoint(target, tmp_path_factory):
    """A saved 1-layer LoRA drafter of the 3-layer tiny Llama `target`."""
    from peft import LoraConfig, get_peft_model

    drafter = get_peft_model(drafter_from_target(target, 1), LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
    return EvoSpecDrafter.save_pretrained(drafter, tmp_path_factory.mktemp("ckpt") / "drafter", "tiny-llama")


def copy_of(checkpoint, tmp_path, name="copy"):
    folder = tmp_path / name
    shutil.copytree(checkpoint, folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "evospec_drafter.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_missing_adapter_weights_name_the_file(target, checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    (folder / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors are missing") as info:
        EvoSpecDrafter.from_pretrained(folder, target=target)
    assert str(folder) in str(info.value)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated-half"),
        pytest.param(lambda data: data[:20], id="truncated-in-header"),
        pytest.param(lambda data: b"\0" * len(data), id="zeroed"),
    ],
)
def test_corrupt_adapter_weights_are_called_corrupt_not_a_misfit(target, checkpoint, tmp_path, damage):
    folder = copy_of(checkpoint, tmp_path)
    weights = folder / ADAPTER_WEIGHTS
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ValueError, match="is corrupt or truncated") as info:
        EvoSpecDrafter.from_pretrained(folder, target=target)
    assert str(weights) in str(info.value) and "does not fit" not in str(info.value)


def test_a_genuine_shape_mismatch_still_says_does_not_fit(checkpoint):
    """Same class, model_type, hidden size, layers and vocabulary; only the MLP width differs: the adapter's
    up_proj LoRA has the wrong shape, which only loading the weights can tell."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="does not fit a 1-layer drafter"):
        EvoSpecDrafter.from_pretrained(checkpoint, target=LlamaForCausalLM(config).eval())


@pytest.mark.parametrize(
    "other_target, differs",
    [
        # a Gemma 3 of the same vocabulary, hidden size and depth: only the class and model type give it away
        pytest.param(lambda: tiny_gemma3(seed=0, layers=3), "the model_class and model_type differ", id="gemma3"),
        pytest.param(lambda: tiny_llama(seed=0, layers=4), "the num_hidden_layers differs", id="deeper-llama"),
    ],
)
def test_a_target_of_another_architecture_is_refused(checkpoint, other_target, differs):
    with pytest.raises(ValueError, match="is a drafter for tiny-llama \\(LlamaForCausalLM") as info:
        EvoSpecDrafter.from_pretrained(checkpoint, target=other_target())
    assert differs in str(info.value)


def test_a_version_1_checkpoint_loads_with_a_warning(target, checkpoint, tmp_path, caplog):
    folder = copy_of(checkpoint, tmp_path)
    edit_config(folder, version=1, target_architecture=None)
    with caplog.at_level(logging.WARNING, logger="evospec_hf.models.checkpoint"):
        drafter = EvoSpecDrafter.from_pretrained(folder, target=target)
    assert drafter.config.get_text_config().num_hidden_layers == 1
    assert "version-1" in caplog.text and "architecture" in caplog.text
    # unchecked means unchecked: a version-1 checkpoint cannot refuse a target of another architecture
    EvoSpecDrafter.from_pretrained(folder, target=tiny_llama(seed=0, layers=4))


@pytest.mark.parametrize(
    "changes, message",
    [
        pytest.param({"version": 3}, "version 3, but this evospec_hf reads versions 1 to 2", id="newer-version"),
        pytest.param({"format": "evospec-config"}, "its 'format' is 'evospec-config'", id="other-format"),
        pytest.param({"target_architecture": None}, "corrupt: KeyError: 'target_architecture'", id="v2-without-record"),
        pytest.param({"target_architecture": {"model_class": "LlamaForCausalLM"}}, "model_type", id="partial-record"),
        pytest.param({"num_layers": 1.5}, "`num_layers` must be a positive integer", id="float-layers"),
        pytest.param({"version": "2"}, "'version' is '2'", id="string-version"),
    ],
)
def test_bad_checkpoint_configs_name_the_file(target, checkpoint, tmp_path, changes, message):
    folder = copy_of(checkpoint, tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(ValueError, match=message) as info:
        EvoSpecDrafter.from_pretrained(folder, target=target)
    assert str(folder / "evospec_drafter.json") in str(info.value)


def test_saving_a_drafter_that_records_no_target_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    drafter = get_peft_model(tiny_llama(seed=1, layers=1), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="drafter_from_target"):
        EvoSpecDrafter.save_pretrained(drafter, tmp_path / "x", "tiny-llama")
    assert not (tmp_path / "x" / "evospec_drafter.json").exists()


@pytest.mark.parametrize(
    "name, model_class, config",
    [
        pytest.param(
            "gemma-3-270m-drafter-l2", Gemma3ForCausalLM,
            Gemma3TextConfig(vocab_size=262144, hidden_size=640, num_hidden_layers=18), id="gemma-3-270m",
        ),
        pytest.param(
            "smollm2-135m-drafter-l2", LlamaForCausalLM,
            LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30), id="smollm2-135m",
        ),
    ],
)  # fmt: skip
def test_shipped_checkpoints_record_their_target(name, model_class, config):
    """The shipped `evospec_drafter.json` files hold what `save_pretrained` writes for their targets (built on the
    meta device from the targets' published sizes: no weights, no download)."""
    from pathlib import Path

    folder = Path(__file__).parents[2] / "checkpoints" / name
    recorded = EvoSpecDrafter.read_config(folder)
    with torch.device("meta"):
        model = model_class(config)
    assert recorded["version"] == 2
    assert recorded["target_architecture"] == target_architecture(model)
    assert recorded["vocab_size"] == model.get_output_embeddings().weight.shape[0]
