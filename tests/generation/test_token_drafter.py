"""Where the drafter runs: each drafted token is the drafter's argmax over exactly its step's vocabulary.

Greedy equivalence cannot see a drafter that drafts badly (the target corrects it), so this checks the drafts
themselves against an independent computation: the drafter's full logits from a plain forward pass, restricted to
the shortlist's slots plus the tokens of the clusters the router picks at that step.
"""

import pytest
import torch

from evospec_hf import EvoSpecConfig
from evospec_hf.generation.token_drafter import TokenDrafter
from evospec_hf.vocab.shortlist import expand_to_vocab

from ..conftest import VOCAB_SIZE, tiny_gemma3, tiny_llama

MODES = ["full", "static", "context", "static+context", "router", "router+context", "evospec"]


@pytest.fixture
def drafted(monkeypatch):
    """Records (input_ids, draft, slot ids, the vocabulary) of every drafter round."""
    rounds = []
    original = TokenDrafter.propose

    def spy(self, input_ids, limit):
        draft = original(self, input_ids, limit)
        for step in draft.steps:  # a step's ids may view the live slots, which later rounds rewrite
            step.ids = None if step.ids is None else step.ids.clone()
        shortlist = self.vocabulary.shortlist
        slots = None if shortlist is None else shortlist.token_ids.clone()
        rounds.append((input_ids.clone(), draft, slots, self.vocabulary))
        return draft

    monkeypatch.setattr(TokenDrafter, "propose", spy)
    return rounds


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("mode", MODES)
def test_each_draft_is_the_argmax_over_exactly_the_step_vocabulary(
    drafted, build, mode, static_table_path, router_folder
):
    target, drafter = build(seed=0), build(seed=5, layers=1)  # an unrelated drafter: its own argmax is often outside
    config = EvoSpecConfig(
        shortlist=mode, shortlist_size=40, context_slots=12, static_shortlist_path=static_table_path,
        router_path=router_folder, lookup_tokens=0, draft_schedule="constant", num_draft_tokens=4,
    )  # fmt: skip
    input_ids = torch.randint(3, VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(0))
    target.generate(input_ids, max_new_tokens=16, do_sample=False, assistant_model=drafter, evospec_config=config)
    assert drafted
    outside_global = 0
    for prefix, draft, slots, vocabulary in drafted:
        for i, token in enumerate(draft.tokens.tolist()):
            sequence = torch.cat([prefix, draft.tokens[None, :i]], dim=-1)
            with torch.no_grad():
                full = drafter(sequence).logits[0, -1]  # the model's own head, softcapping included
                hidden = drafter.model(sequence).last_hidden_state[0, -1:]
            allowed = torch.ones(VOCAB_SIZE, dtype=torch.bool)
            if slots is not None:
                allowed = torch.isin(torch.arange(VOCAB_SIZE), slots)
            if vocabulary.routed is not None:
                # the clusters get the slots' budget left: shortlist_size - (special tokens + context_slots)
                budget = config.shortlist_size - vocabulary.shortlist.capacity
                clusters = torch.tensor(vocabulary.routed.select(hidden, budget))
                allowed |= torch.isin(vocabulary.routed.clusters.cluster_of, clusters)
            expected = int(full.masked_fill(~allowed, float("-inf")).argmax())
            assert token == expected, f"{mode}: step {i} drafted {token}, the argmax over its vocabulary is {expected}"
            outside_global += int(full.argmax()) != expected
            # the step's logits over the vocabulary (as transformers receives them when sampling): finite exactly on
            # the step's vocabulary, with the drafter's values there
            step = draft.steps[i]
            step_logits = step.logits[0] if step.ids is None else expand_to_vocab(step.ids, step.logits, VOCAB_SIZE)[0]
            assert torch.equal(torch.isfinite(step_logits), allowed)
            torch.testing.assert_close(step_logits[allowed], full[allowed], atol=1e-4, rtol=1e-4)
    if mode != "full":
        assert outside_global > 0  # the restriction mattered at some step, or the test would prove little
