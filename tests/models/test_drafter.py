import pytest
import torch

from evospec_hf import EvoSpecConfig
from evospec_hf.models.drafter import drafter_from_target

from ..conftest import ARCHITECTURES, VOCAB_SIZE


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_drafter_is_the_targets_first_layers(arch):
    target = ARCHITECTURES[arch](seed=0, layers=4)
    drafter = drafter_from_target(target, 2)
    # embeddings and head are the target's own modules: no 262k x d copies
    assert drafter.get_input_embeddings() is target.get_input_embeddings()
    assert drafter.get_output_embeddings() is target.get_output_embeddings()
    assert drafter.config.get_text_config().num_hidden_layers == 2
    assert drafter.config.get_text_config().vocab_size == VOCAB_SIZE
    ids = torch.randint(3, VOCAB_SIZE, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # copies, not re-initialised: the state after layer 1 is the target's (the last one returned is normed)
        expected = target(ids, output_hidden_states=True).hidden_states[1]
        got = drafter(ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(got, expected)
    expected = target.generate(ids, max_new_tokens=12, do_sample=False)
    got = target.generate(ids, max_new_tokens=12, do_sample=False, assistant_model=drafter, evospec_config=EvoSpecConfig())
    assert torch.equal(got, expected)


def test_layer_count_is_checked():
    target = ARCHITECTURES["llama"](seed=0, layers=3)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="num_layers"):
            drafter_from_target(target, bad)


def test_a_peft_wrapped_drafter_drafts_through_its_adapters():
    """A LoRA-wrapped drafter (as distillation and online alignment make) is drafted from, adapters included."""
    from peft import LoraConfig, get_peft_model

    target = ARCHITECTURES["llama"](seed=0, layers=3)
    drafter = get_peft_model(drafter_from_target(target, 1), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # make the adapter matter
    ids = torch.randint(3, VOCAB_SIZE, (1, 8), generator=torch.Generator().manual_seed(1))
    expected = target.generate(ids, max_new_tokens=10, do_sample=False)
    got = target.generate(
        ids, max_new_tokens=10, do_sample=False, assistant_model=drafter,
        evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=40),
    )  # fmt: skip
    assert torch.equal(got, expected)
