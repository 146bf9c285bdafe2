"""Hub `custom_generate` checkpoints: the files the Hub's convention asks for, generate.py run the way transformers
runs it (from a folder, and offline by repo id from the Hub cache), the shipped checkpoints' copies of those files,
and the drafter cache behind generate.py."""

import gc
import hashlib
import shutil
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
import yaml

from evospec_hf import DraftStats, EvoSpecDrafter, FrequencyTable
from evospec_hf.models import drafter_from_target
from evospec_hf.models.targets import KNOWN_TARGETS
from evospec_hf.models.checkpoint import hub_files, write_hub_files

from ..conftest import VOCAB_SIZE, run_together, tiny_llama
from .test_checkpoint import lay_out_hub_cache

PROMPT = torch.tensor([[5, 9, 13, 4, 7, 5, 9, 13]])
BIG_VOCAB = 16400  # above generate.py's default shortlist size: its default is then "static+context"
SHIPPED = sorted(p.parent for p in (Path(__file__).parents[2] / "checkpoints").glob("*/evospec_drafter.json"))


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), "the model card has no YAML front matter"
    return yaml.safe_load(card[4 : card.index("\n---\n", 3)])


def save_checkpoint(target, folder):
    """A 1-layer LoRA drafter of `target` saved in `folder` (its generate.py naming the folder's absolute path)."""
    from peft import LoraConfig, get_peft_model

    drafter = get_peft_model(drafter_from_target(target, 1), LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
    vocab_size = target.config.vocab_size
    table = FrequencyTable.from_token_ids([torch.arange(vocab_size).repeat(2)], vocab_size)
    return EvoSpecDrafter.save_pretrained(drafter, folder, "tiny-llama", table, "---\nlicense: mit\n---\n# card\n")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, layers=3, vocab_size=BIG_VOCAB)


@pytest.fixture(scope="module")
def checkpoint(target, tmp_path_factory):
    return save_checkpoint(target, tmp_path_factory.mktemp("hub") / "drafter")


def test_a_saved_checkpoint_follows_the_custom_generate_convention(checkpoint):
    from transformers.dynamic_module_utils import check_imports, check_python_requirements, get_imports

    generate_py = checkpoint / "custom_generate" / "generate.py"
    assert f'CHECKPOINT = "{checkpoint.resolve()}"' in generate_py.read_text()
    requirements = (checkpoint / "custom_generate" / "requirements.txt").read_text().split()
    assert [line.split(">=")[0] for line in requirements] == ["evospec_hf"]
    # what transformers' loader checks before it runs generate.py: the requirements, and that its imports are installed
    check_python_requirements(str(checkpoint), requirements_file="custom_generate/requirements.txt")
    check_imports(generate_py)
    assert set(get_imports(generate_py)) <= {"evospec_hf"} | sys.stdlib_module_names
    card = (checkpoint / "README.md").read_text()
    assert front_matter(card) == {
        "license": "mit", "library_name": "evospec_hf", "tags": ["custom_generate"], "base_model": "tiny-llama",
    }  # fmt: skip
    assert card.endswith("---\n# card\n")
    assert write_hub_files(checkpoint, str(checkpoint.resolve())) == []  # what save_pretrained wrote is up to date


@pytest.mark.parametrize("vocab_size", [BIG_VOCAB, VOCAB_SIZE])
def test_custom_generate_from_a_folder_runs_evospec(vocab_size, target, checkpoint, tmp_path):
    """As transformers runs a Hub custom_generate: from the folder, with no evospec argument but the stats."""
    if vocab_size != BIG_VOCAB:  # a vocabulary no larger than the default shortlist: generate.py drafts over all of it
        target = tiny_llama(seed=0, layers=3, vocab_size=vocab_size)
        checkpoint = save_checkpoint(target, tmp_path / "drafter")
    inputs = {"input_ids": PROMPT, "attention_mask": torch.ones_like(PROMPT)}
    expected = target.generate(**inputs, max_new_tokens=16, do_sample=False)
    stats = DraftStats()
    got = target.generate(
        **inputs, max_new_tokens=16, do_sample=False, custom_generate=str(checkpoint), trust_remote_code=True,
        evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert stats.rounds > 0 and stats.drafter_drafted > 0, "generate.py did not run evospec_hf's drafting"
    with pytest.raises(ValueError, match="trust_remote_code"):
        target.generate(**inputs, max_new_tokens=4, custom_generate=str(checkpoint), trust_remote_code=False)


def test_custom_generate_by_repo_id_from_the_offline_hub_cache(target, checkpoint, tmp_path, monkeypatch):
    """The folder as `push_to_hub` uploads it (generate.py naming the repo), found in the Hub cache, offline."""
    import huggingface_hub.constants

    staged = tmp_path / "staged"
    shutil.copytree(checkpoint, staged)
    write_hub_files(staged, checkpoint_id="evospec/tiny-hub-drafter")
    # transformers keeps a Hub repo's generate.py by commit in its modules cache, beyond this test: a commit per
    # content, so that a generate.py cached by an earlier run is never the one that runs
    commit = hashlib.sha1((staged / "custom_generate" / "generate.py").read_bytes()).hexdigest()
    lay_out_hub_cache(staged, tmp_path / "hub", "evospec/tiny-hub-drafter", commit=commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    expected = target.generate(PROMPT, max_new_tokens=16, do_sample=False)
    stats = DraftStats()
    got = target.generate(
        PROMPT, max_new_tokens=16, do_sample=False, custom_generate="evospec/tiny-hub-drafter", trust_remote_code=True,
        evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert stats.rounds > 0 and stats.drafter_drafted > 0, "generate.py did not run evospec_hf's drafting"


@pytest.mark.parametrize("folder", SHIPPED, ids=[folder.name for folder in SHIPPED])
def test_shipped_checkpoints_hold_what_the_code_writes(folder):
    """The shipped custom_generate files and card front matter are generated, never edited by hand: they must equal
    what the template and `hub_files` make now (their generate.py asks for `assistant_model=`: they move)."""
    for name, text in hub_files(folder, checkpoint_id="").items():
        assert (folder / name).read_text() == text, (
            f"{folder / name} differs from what evospec_hf writes now: run "
            f"`python scripts/write_hub_files.py {folder.relative_to(Path(__file__).parents[2])}`."
        )
    metadata = front_matter((folder / "README.md").read_text())
    assert "custom_generate" in metadata["tags"]
    assert metadata["base_model"] == KNOWN_TARGETS[EvoSpecDrafter.read_config(folder)["target"]].hub_model


def test_there_are_shipped_checkpoints():
    assert len(SHIPPED) == 4, [folder.name for folder in SHIPPED]


def test_the_cached_drafter_is_kept_per_target_and_goes_with_it(checkpoint):
    first, second = (tiny_llama(seed=0, layers=3, vocab_size=BIG_VOCAB) for _ in range(2))
    drafter = EvoSpecDrafter.from_pretrained_cached(checkpoint, target=first)
    assert EvoSpecDrafter.from_pretrained_cached(str(checkpoint), target=first) is drafter
    other = EvoSpecDrafter.from_pretrained_cached(checkpoint, target=second)
    assert other is not drafter and other.get_input_embeddings() is second.get_input_embeddings()
    # generating through custom_generate uses the cached drafter, and keeps nothing that holds the target
    stats = DraftStats()
    first.generate(
        PROMPT, max_new_tokens=8, do_sample=False, custom_generate=str(checkpoint), trust_remote_code=True,
        evospec_stats=stats,
    )  # fmt: skip
    assert stats.drafter_drafted > 0
    assert EvoSpecDrafter.from_pretrained_cached(checkpoint, target=first) is drafter
    drafter_ref, target_ref = weakref.ref(drafter), weakref.ref(first)
    del first, drafter
    gc.collect()
    assert target_ref() is None and drafter_ref() is None, "the cached drafter outlived its target"
    assert EvoSpecDrafter.from_pretrained_cached(checkpoint, target=second) is other


def test_two_threads_asking_at_once_get_one_drafter(monkeypatch):
    loads = []

    def slow_load(path_or_repo_id, target=None):
        loads.append(path_or_repo_id)
        time.sleep(0.2)  # both threads are inside the cache by now, unless it is locked
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(EvoSpecDrafter, "from_pretrained", staticmethod(slow_load))
    target = torch.nn.Linear(1, 1)
    first, second = run_together([lambda: EvoSpecDrafter.from_pretrained_cached("org/repo", target=target)] * 2)
    assert first is second and loads == ["org/repo"]
