"""The feature drafter (EAGLE-style): exact greedy output in every mode, with and without lookup and sessions; its
drafts are its own argmax over the step's vocabulary; briefly trained, it beats a token drafter trained as long."""

import copy

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecSession, OnlineAlignmentConfig
from evospec_hf.generation.feature_drafter import FeatureDrafter
from evospec_hf.models.drafter import feature_inputs
from evospec_hf.vocab import FrequencyTable

from ..conftest import (
    ARCHITECTURES, VOCAB_SIZE, centroid_router, distilled_feature_drafter, sharpened, target_text,
)  # fmt: skip

MODES = ["full", "static", "context", "static+context", "router", "router+context", "evospec"]
LEARN = dict(update_every=1, batch_size=2, window=16, lr=1e-3, curriculum_start_rank=None, min_replay=1, warmup_updates=0,
             learn="in-loop", governor=False)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def pair(request, tmp_path_factory):
    """(target, briefly distilled feature drafter, router folder made for the target's head, static table of the
    target's own text): the router and the table hold the tokens the target writes, so drafts through them land."""
    folder = tmp_path_factory.mktemp(f"feature-{request.param}")
    target = sharpened(ARCHITECTURES[request.param](seed=0, layers=3))
    chunks = target_text(target, 48)
    drafter = distilled_feature_drafter(target, folder, steps=100, chunks=chunks)
    table = folder / "freq.json"
    FrequencyTable.from_token_ids([ids for _, ids in chunks], VOCAB_SIZE, source="target text").save(table)
    return target, drafter, centroid_router(target, folder / "router"), str(table)


def config_for(mode, static_table_path, router, **overrides):
    # every verification through the target's int8 screen (`screen_head="on"`): its exactness is checked here too
    kwargs = dict(
        shortlist=mode, shortlist_size=40, context_slots=16, num_draft_tokens=4, draft_schedule="heuristic",
        screen_head="on",
    )  # fmt: skip
    if "static" in mode:
        kwargs["static_shortlist_path"] = static_table_path
    if "router" in mode or mode == "evospec":
        kwargs["router_path"] = router
    return EvoSpecConfig(**(kwargs | overrides))


def prompt(seed, length=10):
    return torch.randint(3, VOCAB_SIZE, (1, length), generator=torch.Generator().manual_seed(seed))


def greedy_stats(target, drafter, config, label: str) -> DraftStats:
    """Generates two prompts with `config`, asserts each output is plain greedy's, and returns the call's stats."""
    stats = DraftStats()
    for seed in range(2):
        expected = target.generate(prompt(seed), max_new_tokens=24, do_sample=False)
        got = target.generate(
            prompt(seed), max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{label} prompt {seed}"
    return stats


@pytest.mark.parametrize("lookup_tokens", [0, 10], ids=["no-lookup", "lookup"])
@pytest.mark.parametrize("mode", MODES)
def test_greedy_equals_plain_greedy(pair, mode, lookup_tokens):
    target, drafter, router, static_table_path = pair
    stats = greedy_stats(target, drafter, config_for(mode, static_table_path, router, lookup_tokens=lookup_tokens), mode)
    assert stats.screen_calls == stats.rounds and stats.screen_fallbacks == 0
    if lookup_tokens == 0:
        assert stats.lookup_rounds == 0
        assert stats.drafter_accepted > 0, stats  # the feature drafter itself had drafts accepted
    else:  # on a repetitive target the lookup may take every round
        assert stats.accepted > 0, stats


@pytest.mark.parametrize("mode", MODES)
def test_greedy_with_the_entropy_stop(pair, mode):
    """AdaSD's entropy stop (lossless) under the default "cost" schedule: plain greedy output."""
    target, drafter, router, static_table_path = pair
    config = config_for(mode, static_table_path, router, lookup_tokens=0, entropy_stop=True, draft_schedule="cost")
    assert greedy_stats(target, drafter, config, mode).drafter_accepted > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the compiled Triton head)")
@pytest.mark.parametrize("lookup_tokens", [0, 10], ids=["no-lookup", "lookup"])
@pytest.mark.parametrize("mode", MODES)
def test_greedy_on_cuda_with_the_triton_head(pair, mode, lookup_tokens):
    target, drafter, router, static_table_path = pair
    target, drafter = copy.deepcopy(target).cuda(), copy.deepcopy(drafter).cuda()
    config = config_for(mode, static_table_path, router, lookup_tokens=lookup_tokens, head_backend="triton")
    stats = DraftStats()
    for seed in range(2):
        input_ids = prompt(seed).cuda()
        expected = target.generate(input_ids, max_new_tokens=24, do_sample=False)
        got = target.generate(
            input_ids, max_new_tokens=24, do_sample=False, assistant_model=drafter, evospec_config=config,
            evospec_stats=stats,
        )  # fmt: skip
        assert torch.equal(got, expected), f"{mode} prompt {seed}"
    assert stats.accepted > 0, stats


def generate_as_greedy(target, session, config, between_calls=lambda: None):
    """Three calls on the session, each checked against plain greedy; `between_calls` runs after each."""
    for seed in range(3):
        expected = target.generate(prompt(seed), max_new_tokens=24, do_sample=False)
        got = target.generate(
            prompt(seed), max_new_tokens=24, do_sample=False, assistant_model=session.drafter, evospec_config=config,
            evospec_session=session,
        )  # fmt: skip
        assert torch.equal(got, expected)
        between_calls()


@pytest.mark.parametrize("mode", ["full", "router+context"])
def test_greedy_is_unchanged_while_the_feature_drafter_learns(pair, mode):
    target, drafter, router, static_table_path = pair
    session = EvoSpecSession(drafter, OnlineAlignmentConfig(**LEARN))
    before = {name: t.clone() for name, t in session._weights.items()}
    config = config_for(mode, static_table_path, router, lookup_tokens=0)
    generate_as_greedy(target, session, config)
    assert session.stats.updates > 5
    assert any(not torch.equal(before[name], t) for name, t in session._weights.items())  # it did learn
    replay = session._state.replay
    assert replay and all("features" in record for record in replay)  # it learns from the target's hidden states


def test_the_feature_drafter_learns_between_calls_and_the_governor_measures_it(pair):
    """The background thread re-reads the target's hidden states with the tokens, for updates and for the governor's
    comparison on each call's output."""
    target, drafter, router, static_table_path = pair
    session = EvoSpecSession(drafter, OnlineAlignmentConfig(**{**LEARN, "learn": "between-calls", "governor": True}))
    config = config_for("full", static_table_path, router, lookup_tokens=0)
    generate_as_greedy(target, session, config, between_calls=session.wait_learning)
    assert session.stats.idle_updates > 0 and session.stats.in_call_updates == 0
    verdicts = session.stats.governor
    # the last round of a call is not recorded (its hidden states come with a next round that never happens)
    assert [v["call"] for v in verdicts] == [2, 3] and all(10 < v["positions"] <= 24 for v in verdicts), verdicts


def test_each_draft_is_the_argmax_over_its_step_vocabulary(pair, monkeypatch):
    """Recomputed without the drafter's cache: the pairs of the verified positions, then its own states."""
    target, drafter, router, static_table_path = pair
    rounds = []
    original = FeatureDrafter.propose

    def spy(self, input_ids, limit):
        known = None if self.features is None else self.features.clone()
        draft = original(self, input_ids, limit)
        if draft is not None:
            slots = self.vocabulary.shortlist.token_ids.clone()
            rounds.append((input_ids.clone(), known, draft, slots))
        return draft

    monkeypatch.setattr(FeatureDrafter, "propose", spy)
    config = config_for("context", static_table_path, router, lookup_tokens=0, draft_schedule="constant")
    target.generate(prompt(3), max_new_tokens=20, do_sample=False, assistant_model=drafter, evospec_config=config)
    assert rounds
    model = drafter.get_base_model()
    for input_ids, features, draft, slots in rounds:
        with torch.no_grad():
            pairs = feature_inputs(model, input_ids[:, 1:], features=features)
            hidden = model.base_model(inputs_embeds=pairs).last_hidden_state[:, -1:]
            for i, token in enumerate(draft.tokens.tolist()):
                full = model.lm_head(hidden[0, -1]).float()
                allowed = torch.isin(torch.arange(VOCAB_SIZE), slots)
                assert token == int(full.masked_fill(~allowed, float("-inf")).argmax()), f"step {i}"
                own = feature_inputs(model, draft.tokens[None, i : i + 1], own=hidden[:, -1:])
                pairs = torch.cat([pairs, own], dim=1)
                hidden = model.base_model(inputs_embeds=pairs).last_hidden_state[:, -1:]


def test_a_briefly_trained_feature_drafter_beats_a_token_drafter_trained_as_long(tmp_path):
    """On a tiny target trained to copy, whose next token depends on the context as a real model's does: the same
    text, steps and learning rate, and the feature drafter's drafts are accepted far more often (about 90% against
    5%). It fails when the drafting loop breaks (a stale KV cache: 27% against 5%).

    What it does not show: that the target's hidden states are what wins here. Zeroing them gives about the same
    rate after 100 steps (84% against 90%): the drafter's layer, copied from the target's last one, already holds the
    target's copy head. On the random tiny targets above, whose next token is mostly a function of the last one, a
    token drafter from the target's first layer beats the feature drafter (47% against 36% after 100 steps). What
    the hidden states are worth on a real target is measured in the README (Gemma-3-270M)."""
    from evospec_hf.evolve.kd import topk_kd_loss
    from evospec_hf.models import drafter_from_target

    from ..conftest import copy_trained_target

    target, prompts = copy_trained_target()
    chunks = [("copy", ids) for ids in target.generate(prompts(32, 1), max_new_tokens=24, do_sample=False)]
    steps, lr = 100, 1e-2
    feature = distilled_feature_drafter(target, tmp_path, steps=steps, chunks=chunks, lr=lr)

    token = drafter_from_target(target, 1)
    trainable = [p for n, p in token.named_parameters() if ".layers." in n]  # its decoder layer, trained whole
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    head = target.lm_head.weight.detach()
    for step in range(steps):
        batch = torch.stack([chunks[(4 * step + i) % len(chunks)][1] for i in range(4)])
        with torch.no_grad():
            values, top = target(batch).logits[:, :-1].topk(16, dim=-1)
        hidden = token.model(batch).last_hidden_state[:, :-1]
        loss = topk_kd_loss(hidden.reshape(-1, hidden.shape[-1]), head, None, top.reshape(-1, 16), values.reshape(-1, 16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    token.eval()

    def acceptance(drafter):
        stats = DraftStats()
        config = EvoSpecConfig(lookup_tokens=0, draft_schedule="constant", num_draft_tokens=4)
        for prompt_ids in prompts(6, 77):
            target.generate(prompt_ids[None], max_new_tokens=16, do_sample=False, assistant_model=drafter,
                            evospec_config=config, evospec_stats=stats)  # fmt: skip
        return stats.drafter_accepted / stats.drafter_drafted

    feature_rate, token_rate = acceptance(feature), acceptance(token)
    assert feature_rate > token_rate + 0.3, (feature_rate, token_rate)


def test_a_first_round_lookup_draft_that_is_rejected(pair):
    """The prompt's last token occurred before, so the very first round copies a draft from the context before the
    feature drafter has any hidden state; the target's first forward then reads the prompt and that draft, and the
    drafter must keep only the hidden states of positions that were accepted."""
    target, drafter, router, static_table_path = pair
    rejected = 0
    for seed in range(8):
        ids = prompt(100 + seed, length=8)
        ids = torch.cat([ids, ids[:, 2:3]], dim=1)  # ends with a token seen before: lookup drafts what followed it
        expected = target.generate(ids, max_new_tokens=12, do_sample=False)
        stats = DraftStats()
        got = target.generate(
            ids, max_new_tokens=12, do_sample=False, assistant_model=drafter, evospec_stats=stats,
            evospec_config=config_for("full", static_table_path, router, lookup_tokens=4, draft_schedule="constant"),
        )  # fmt: skip
        assert torch.equal(got, expected), seed
        rejected += int(stats.accepted_per_round[0] < 4)
    assert rejected > 0  # the case happened
