import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig
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
    got = target.generate(
        ids, max_new_tokens=12, do_sample=False, assistant_model=drafter, evospec_config=EvoSpecConfig()
    )
    assert torch.equal(got, expected)


def test_layer_count_is_checked():
    target = ARCHITECTURES["llama"](seed=0, layers=3)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="num_layers"):
            drafter_from_target(target, bad)


def merged_by_hand(target, drafter, num_layers: int):
    """The drafter's base layers with each LoRA delta `(lora_alpha / r) * B @ A` added to its weight, computed here
    from the adapter's A and B matrices: a plain model that must draft exactly as the adapted drafter does."""
    merged = drafter_from_target(target, num_layers)
    lora = drafter.peft_config["default"]
    scaling = lora.lora_alpha / lora.r
    params = dict(drafter.named_parameters())
    changed = 0
    with torch.no_grad():
        for name, a in params.items():
            if ".lora_A." not in name:
                continue
            b = params[name.replace(".lora_A.", ".lora_B.")]
            path = name.removeprefix("base_model.model.").split(".lora_A.")[0]
            merged.get_submodule(path).weight.add_(scaling * b @ a)
            changed += 1
    assert changed == 4  # q_proj and down_proj of each of the two layers
    return merged


def test_a_peft_wrapped_drafter_drafts_through_its_adapters():
    """A LoRA-wrapped drafter (as distillation and online alignment make) is drafted from, adapters included: its
    draft logits are those of its base weights plus the LoRA deltas (merged by hand), not those of its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LogitsProcessorList

    from evospec_hf.generation.token_drafter import TokenDrafter
    from evospec_hf.vocab import DraftVocabulary

    target = ARCHITECTURES["llama"](seed=0, layers=3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    drafter = get_peft_model(drafter_from_target(target, 2), lora).eval()
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # make the adapter matter
    merged = merged_by_hand(target, drafter, 2)
    ids = torch.randint(3, VOCAB_SIZE, (1, 8), generator=torch.Generator().manual_seed(1))

    def drafted(limit=6):
        loop = TokenDrafter(drafter, DraftVocabulary(drafter.get_output_embeddings()), LogitsProcessorList(), False)
        draft = loop.propose(ids, limit)
        return draft.tokens, draft.logits[0]

    tokens, logits = drafted()
    with torch.no_grad():  # the merged model, teacher-forced on the drafts: the logits each draft was read from
        expected = merged(torch.cat([ids, tokens[None, :-1]], dim=1)).logits[0, ids.shape[1] - 1 :]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(tokens, expected.argmax(-1))
    with drafter.disable_adapter():  # the oracle tells the adapter apart: without it the logits are far off
        _, base_logits = drafted()
    assert (base_logits - expected).abs().max() > 0.1  # 1,000 times the tolerance above

    # through generate: the merged model as the target accepts every draft of the adapted drafter
    config = EvoSpecConfig(shortlist="full", lookup_tokens=0)
    stats = DraftStats()
    got = merged.generate(
        ids, max_new_tokens=16, do_sample=False, assistant_model=drafter, evospec_config=config, evospec_stats=stats
    )
    assert torch.equal(got, merged.generate(ids, max_new_tokens=16, do_sample=False))
    assert stats.drafted >= 8 and stats.accepted == stats.drafted, stats.accepted_per_round
    with drafter.disable_adapter():
        base = DraftStats()
        merged.generate(
            ids, max_new_tokens=16, do_sample=False, assistant_model=drafter, evospec_config=config, evospec_stats=base
        )
    assert base.accepted < base.drafted  # (the check above can fail)

    # and against the target it was made from, the output is the target's own
    expected = target.generate(ids, max_new_tokens=10, do_sample=False)
    got = target.generate(
        ids, max_new_tokens=10, do_sample=False, assistant_model=drafter,
        evospec_config=EvoSpecConfig(shortlist="context", shortlist_size=40),
    )  # fmt: skip
    assert torch.equal(got, expected)
