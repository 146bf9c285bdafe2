"""HiSpec's hierarchical verification (`intermediate_verifier`): the target's own first layers and an exit head trim
each round's drafts; greedy output stays plain greedy's in every mode, and the drafts kept are exactly those the
exit agrees with."""

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, FrequencyTable
from evospec_hf.distill.exit_head import final_norm
from evospec_hf.generation.hispec import IntermediateVerifier, shallow_target, verifier_parts
from evospec_hf.generation.rounds import Draft
from evospec_hf.models.exit_head import ExitHead

from ..conftest import ARCHITECTURES, VOCAB_SIZE, centroid_router, noisy_copy

MODES = ["full", "static", "context", "static+context", "router", "router+context", "evospec"]


def exit_folder(target, folder, layer=1, scale=0.0, seed=0):
    """An exit head for `target` after `layer` layers: the identity plus a little noise (`scale`)."""
    head = ExitHead(target.config.get_text_config().hidden_size, layer)
    with torch.no_grad():
        head.proj.weight.add_(scale * torch.randn(head.proj.weight.shape, generator=torch.Generator().manual_seed(seed)))
    head.save_pretrained(folder, target, "tiny")
    return str(folder)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def setup(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"hispec-{request.param}")
    target = ARCHITECTURES[request.param](seed=0, layers=3)
    table = folder / "freq.json"
    FrequencyTable.from_token_ids([list(range(VOCAB_SIZE))] + [list(range(40))] * 3, VOCAB_SIZE).save(table)
    return target, noisy_copy(target, seed=1), exit_folder(target, folder / "exit"), str(table), folder


@pytest.mark.parametrize("layer", [1, 2])
def test_the_shallow_body_is_the_targets_first_layers_and_final_norm(setup, layer):
    """What the verifier reads is what the exit head is trained on: the target's hidden state after `layer` layers,
    through its final norm (and the layers are the target's own modules, not copies)."""
    target = setup[0]
    ids = torch.randint(3, VOCAB_SIZE, (1, 10), generator=torch.Generator().manual_seed(0))
    shallow = shallow_target(target, layer)
    with torch.no_grad():
        got = shallow.base_model(input_ids=ids).last_hidden_state
        expected = final_norm(target)(target(ids, output_hidden_states=True).hidden_states[layer])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert shallow.base_model.get_input_embeddings() is target.get_input_embeddings()


@pytest.mark.parametrize("mode", MODES)
def test_greedy_with_the_intermediate_verifier_equals_plain_greedy(setup, mode):
    target, drafter, exit_path, table, folder = setup
    kwargs = dict(shortlist=mode, shortlist_size=40, context_slots=16, num_draft_tokens=4, draft_schedule="heuristic",
                  lookup_tokens=0, intermediate_verifier=exit_path, static_shortlist_path=table)  # fmt: skip
    if "router" in mode or mode == "evospec":
        kwargs["router_path"] = centroid_router(target, folder / f"router-{mode}")
    stats = DraftStats()
    for seed in range(2):
        prompt = torch.randint(3, VOCAB_SIZE, (1, 10), generator=torch.Generator().manual_seed(seed))
        expected = target.generate(prompt, max_new_tokens=24, do_sample=False)
        got = target.generate(prompt, max_new_tokens=24, do_sample=False, assistant_model=drafter,
                              evospec_config=EvoSpecConfig(**kwargs), evospec_stats=stats)  # fmt: skip
        assert torch.equal(got, expected), f"{mode} prompt {seed}"
    assert stats.verifier_checked >= stats.drafted > 0
    assert stats.drafter_accepted > 0


def test_the_drafts_kept_are_those_the_exit_agrees_with(setup):
    """Greedy: a round is cut before the first draft the exit does not rank first (among the shortlist and that
    draft); sampling: after it."""
    target, _, _, table, folder = setup
    path = exit_folder(target, folder / "noisy-exit", layer=2, scale=0.3, seed=4)
    ids = FrequencyTable.load(table).top(40)
    parts = verifier_parts(target, path, ids)
    norm, weight = final_norm(target), target.get_output_embeddings().weight
    cuts = 0
    for seed in range(8):
        gen = torch.Generator().manual_seed(10 + seed)
        prefix = torch.randint(3, VOCAB_SIZE, (1, 9), generator=gen)
        tokens = torch.randint(3, VOCAB_SIZE, (5,), generator=gen)
        with torch.no_grad():
            states = target(torch.cat([prefix[0], tokens])[None], output_hidden_states=True).hidden_states[2]
            hidden = parts.exit_head(norm(states[0, prefix.shape[1] - 1 : -1]))
            # each draft against the shortlist and itself: is it the exit's best there?
            top = [(hidden[i] @ weight[ids].T).max() for i in range(5)]  # (equal up to rounding counts as first)
            agrees = [bool(hidden[i] @ weight[tokens[i]] >= top[i] - 1e-4 * (1 + top[i].abs())) for i in range(5)]
        agree = torch.tensor(agrees).long().cumprod(0).sum().item()  # drafts before the first disagreement
        for do_sample, expected in ((False, agree), (True, min(5, agree + 1))):
            verifier = IntermediateVerifier(parts, do_sample=do_sample)
            assert verifier.keep(prefix, Draft("drafter", tokens)) == expected, (seed, do_sample)
        cuts += agree < 5
    assert cuts > 0  # the check saw cuts


def test_an_exit_head_for_another_target_is_refused(setup, tmp_path):
    target = setup[0]
    other = ARCHITECTURES["llama"](seed=0, layers=4) if type(target).__name__ != "LlamaForCausalLM" else (
        ARCHITECTURES["gpt2"](seed=0, layers=3))  # fmt: skip
    path = exit_folder(other, tmp_path / "exit")
    with pytest.raises(ValueError, match="was made for"):
        ExitHead.from_pretrained(path, target)
    with pytest.raises(FileNotFoundError, match="train-exit-head"):
        ExitHead.from_pretrained(tmp_path, target)


def test_without_a_static_list_the_error_names_the_intermediate_verifier(setup):
    """HiSpec verifies over the static list whatever `shortlist` says: a missing list is reported as its need."""
    target, drafter, exit_path, _, _ = setup
    config = EvoSpecConfig(shortlist="context", shortlist_size=40, intermediate_verifier=exit_path)
    with pytest.raises(FileNotFoundError, match=r"`intermediate_verifier` \(it verifies over the static list"):
        target.generate(torch.tensor([[4, 5, 6, 7]]), max_new_tokens=4, assistant_model=drafter, evospec_config=config)
