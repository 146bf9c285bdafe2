"""Drafter checkpoints: save, load from a folder or from a Hub-format cache (offline), custom_generate, errors."""

import hashlib
import json
import os
import shutil
import warnings

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter, FrequencyTable
from evospec_hf.models import drafter_from_target

from ..conftest import VOCAB_SIZE, tiny_llama

PROMPT = torch.tensor([[5, 9, 13, 4, 7]])


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, layers=3)


@pytest.fixture(scope="module")
def checkpoint(target, tmp_path_factory):
    """A saved 1-layer LoRA drafter of `target`, with a static table, and the PeftModel it came from."""
    from peft import LoraConfig, get_peft_model

    drafter = get_peft_model(drafter_from_target(target, 1), LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    table = FrequencyTable.from_token_ids([torch.arange(VOCAB_SIZE).repeat(2)], VOCAB_SIZE)
    folder = EvoSpecDrafter.save_pretrained(drafter, tmp_path_factory.mktemp("ckpt") / "drafter", "tiny-llama", table, "# card\n")
    return folder, drafter


def test_folder_layout(checkpoint):
    folder, _ = checkpoint
    names = {p.name for p in folder.iterdir()}
    assert {"evospec_drafter.json", "adapter", "evospec_frequency.json", "README.md", "custom_generate"} <= names
    assert str(folder.resolve()) in (folder / "custom_generate" / "generate.py").read_text()
    config = json.loads((folder / "evospec_drafter.json").read_text())
    assert config["num_layers"] == 1 and config["vocab_size"] == VOCAB_SIZE
    # what the drafter was built from: the 3-layer target, not the 1-layer drafter
    assert config["version"] == 2 and config["target_architecture"] == {
        "model_class": "LlamaForCausalLM", "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 3,
    }  # fmt: skip


def test_loaded_drafter_equals_the_saved_one(target, checkpoint):
    folder, peft_drafter = checkpoint
    loaded = EvoSpecDrafter.from_pretrained(folder, target=target)
    assert loaded.get_input_embeddings() is target.get_input_embeddings()
    with torch.no_grad():
        torch.testing.assert_close(loaded(PROMPT).logits, peft_drafter(PROMPT).logits, atol=2e-3, rtol=2e-3)  # fp16 adapter
    # shortlist="static" finds the table shipped in the folder; output is still exactly plain greedy
    expected = target.generate(PROMPT, max_new_tokens=12, do_sample=False)
    got = target.generate(
        PROMPT, max_new_tokens=12, do_sample=False, assistant_model=loaded,
        evospec_config=EvoSpecConfig(shortlist="static", shortlist_size=30),
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_loading_a_drafter_warns_nothing(target, checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. not transformers' deprecation of what peft reads while it wraps
        EvoSpecDrafter.from_pretrained(checkpoint[0], target=target)


def lay_out_hub_cache(folder, cache_dir, repo_id, commit="0123456789abcdef0123456789abcdef01234567"):
    """Copies `folder` into `cache_dir` the way huggingface_hub stores a downloaded repo: blobs, snapshot links, ref."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for src in folder.rglob("*"):
        if src.is_file():
            data = src.read_bytes()
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo_dir / "snapshots" / commit / src.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)


def test_load_by_repo_id_from_the_offline_hub_cache(target, checkpoint, tmp_path, monkeypatch):
    folder, peft_drafter = checkpoint
    lay_out_hub_cache(folder, tmp_path / "hub", "evospec/tiny-drafter")
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set the constant so no request can leave the machine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = EvoSpecDrafter.from_pretrained("evospec/tiny-drafter", target=target, cache_dir=tmp_path / "hub")
    with torch.no_grad():
        torch.testing.assert_close(loaded(PROMPT).logits, peft_drafter(PROMPT).logits, atol=2e-3, rtol=2e-3)  # fp16 adapter
    with pytest.raises(OSError, match="not in the Hugging Face cache"):
        EvoSpecDrafter.from_pretrained("evospec/not-cached", target=target, cache_dir=tmp_path / "hub")


def test_custom_generate_from_the_folder(target, checkpoint):
    folder, _ = checkpoint
    expected = target.generate(PROMPT, max_new_tokens=10, do_sample=False)
    got = target.generate(
        PROMPT, max_new_tokens=10, do_sample=False, custom_generate=str(folder), trust_remote_code=True,
        evospec_config=EvoSpecConfig(shortlist="static+context", shortlist_size=40, context_slots=10),
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_broken_checkpoints_say_what_is_wrong(target, checkpoint, tmp_path):
    folder, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="evospec_drafter.json is missing"):
        EvoSpecDrafter.from_pretrained(tmp_path, target=target)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(folder, corrupt)
    (corrupt / "evospec_drafter.json").write_text('{"format": "evospec-drafter", "target"')
    with pytest.raises(ValueError, match="corrupt"):
        EvoSpecDrafter.from_pretrained(corrupt, target=target)

    no_adapter = tmp_path / "no_adapter"
    shutil.copytree(folder, no_adapter)
    shutil.rmtree(no_adapter / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        EvoSpecDrafter.from_pretrained(no_adapter, target=target)

    with pytest.raises(ValueError, match="vocabulary of 96"):
        EvoSpecDrafter.from_pretrained(folder, target=tiny_llama(seed=0, layers=3, vocab_size=VOCAB_SIZE + 4))

    with pytest.raises(TypeError, match="PeftModel"):
        EvoSpecDrafter.save_pretrained(tiny_llama(seed=1), tmp_path / "x", "tiny-llama")


def test_a_feature_drafter_round_trips(target, tmp_path):
    """A feature drafter's checkpoint records the layers it reads; loading rebuilds its input projections, with the
    trained ones from the adapter, and it drafts from the target's hidden states through `custom_generate` too."""
    from peft import LoraConfig, get_peft_model

    from evospec_hf.models import feature_drafter_from_target
    from evospec_hf.models.drafter import feature_inputs, feature_layers_of
    from evospec_hf.utils import unwrap_peft

    lora = LoraConfig(r=4, target_modules=["q_proj", "up_proj"], modules_to_save=["evospec_fuse", "evospec_combine"])
    drafter = get_peft_model(feature_drafter_from_target(target, 1, feature_layers=(1, -1)), lora)
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            if "lora_B" in name or "evospec" in name:
                p.normal_(0, 0.3)
    folder = EvoSpecDrafter.save_pretrained(drafter, tmp_path / "feature", "tiny-llama")
    assert json.loads((folder / "evospec_drafter.json").read_text())["feature_layers"] == [1, -1]
    loaded = EvoSpecDrafter.from_pretrained(folder, target=target)
    assert feature_layers_of(loaded) == [1, -1]
    states = torch.randn(1, PROMPT.shape[1], 64)
    with torch.no_grad():
        outputs = [
            unwrap_peft(model).model(inputs_embeds=feature_inputs(model, PROMPT, features=states)).last_hidden_state
            for model in (loaded, drafter)
        ]
    torch.testing.assert_close(*outputs, atol=2e-3, rtol=2e-3)  # fp16 adapter
    expected = target.generate(PROMPT, max_new_tokens=12, do_sample=False)
    stats = DraftStats()
    got = target.generate(
        PROMPT, max_new_tokens=12, do_sample=False, custom_generate=str(folder), trust_remote_code=True,
        evospec_config=EvoSpecConfig(shortlist="full", lookup_tokens=0), evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, expected) and stats.drafter_drafted > 0
