"""With `do_sample=True`, evospec_hf's output distribution is the target's (speculative sampling is lossless).

With a token drafter and with a feature drafter. On an 8-token vocabulary at temperature 0.7 (so draft logits must be *processed* before they serve as q, the bug
transformers once had), the exact distribution of the first two generated tokens is computed from the target and
compared with 2,500 evospec_hf samples by a chi-square test. Two negative controls show the test has the power to
catch the failures that matter: samples from the drafter, and from the target renormalised on the shortlist (what an
uncorrected shortlist would produce).
"""

import dataclasses

import pytest
import torch

from evospec_hf import DraftStats, EvoSpecConfig, FrequencyTable

from ..conftest import EOS, tiny_llama

VOCAB = 8
PROMPT = torch.tensor([[1, 3, 4]])
NUM_SAMPLES = 2500
TEMPERATURE = 0.7


def chi_square_p_value(counts: dict, expected_probs: dict, num_samples: int) -> float:
    """Goodness of fit of observed outcome counts to exact probabilities; cells expecting < 5 are pooled."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0.0, 0.0, 0
    for outcome, prob in expected_probs.items():
        expected, observed = prob * num_samples, counts.get(outcome, 0)
        if expected < 5:
            pooled_obs, pooled_exp = pooled_obs + observed, pooled_exp + expected
            continue
        stat += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    assert sum(counts.values()) == num_samples and set(counts) <= set(expected_probs)
    dof = torch.tensor((cells - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))


def two_token_distribution(model, allowed=None, prompt=PROMPT) -> dict:
    """Exact P(first two generated tokens) of `model` after `prompt` at TEMPERATURE (EOS ends the sequence).

    With `allowed`, each step's distribution is renormalised on those ids (the uncorrected-shortlist failure)."""

    def step(ids):
        with torch.no_grad():
            logits = model(ids).logits[0, -1].double() / TEMPERATURE
        if allowed is not None:
            logits[~torch.isin(torch.arange(VOCAB), allowed)] = float("-inf")
        return logits.softmax(-1)

    probs = {}
    first = step(prompt)
    for a in range(VOCAB):
        if a == EOS:
            probs[(a,)] = float(first[a])
            continue
        second = step(torch.cat([prompt, torch.tensor([[a]])], dim=1))
        for b in range(VOCAB):
            probs[(a, b)] = float(first[a] * second[b])
    return probs


def sample_counts(sample_fn, num_samples) -> dict:
    counts = {}
    for outcome in sample_fn(num_samples):
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def outcomes_of(sequences):
    return [tuple(row[PROMPT.shape[1] :].tolist()[: 1 if row[PROMPT.shape[1]] == EOS else 2]) for row in sequences]


def evospec_counts(target, drafter, config, stats) -> dict:
    """Outcome counts of NUM_SAMPLES evospec_hf generations. A third token leaves room for a second round, where the
    lookup can copy from the prompt and a feature drafter drafts (it has the target's hidden states from then on)."""

    def samples(n):
        torch.manual_seed(1234)
        for _ in range(n):
            out = target.generate(
                PROMPT, max_new_tokens=3, do_sample=True, temperature=TEMPERATURE, top_k=None,
                assistant_model=drafter, evospec_config=config, evospec_stats=stats,
            )  # fmt: skip
            yield outcomes_of(out)[0]

    return sample_counts(samples, NUM_SAMPLES)


def peaked(model, logit_std=2.0):
    """Scales the LM head so logits spread like a trained model's (random init gives near-uniform distributions,
    under which temperature hardly matters and the test would have no power)."""
    with torch.no_grad():
        hidden = model.model(PROMPT).last_hidden_state
        model.lm_head.weight.mul_(logit_std / model.lm_head(hidden).std())
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    target = peaked(tiny_llama(seed=0, vocab_size=VOCAB))
    drafter = peaked(tiny_llama(seed=3, layers=1, vocab_size=VOCAB))
    path = tmp_path_factory.mktemp("freq") / "freq8.json"
    FrequencyTable.from_token_ids([[0, 1, 1, 2, 2, 2, 3, 3, 3, 3]], VOCAB).save(path)
    config = EvoSpecConfig(
        shortlist="static", shortlist_size=4, static_shortlist_path=str(path), num_draft_tokens=2, draft_schedule="constant"
    )
    return target, drafter, config


@pytest.mark.slow
@pytest.mark.parametrize("lookup_tokens", [0, 2], ids=["drafter", "with-context-lookup"])
def test_sampling_keeps_the_target_distribution(setup, lookup_tokens):
    target, drafter, config = setup
    config = dataclasses.replace(config, lookup_tokens=lookup_tokens)
    exact = two_token_distribution(target)
    stats = DraftStats()

    p_value = chi_square_p_value(evospec_counts(target, drafter, config, stats), exact, NUM_SAMPLES)
    assert p_value > 1e-3, p_value
    # both branches of speculative sampling ran: accepted drafts and rejections resampled from the residual
    assert 0 < stats.accepted < stats.drafted
    if lookup_tokens:  # rounds whose drafts were copied from the context (transformers' token-matching branch)
        assert 0 < stats.lookup_rounds < stats.rounds, stats


@pytest.mark.slow
def test_sampling_keeps_the_target_distribution_with_a_feature_drafter(setup):
    """The feature drafter (EAGLE-style) reads the target's hidden states: its first draft comes in the second
    round, so the second token goes through speculative sampling with its processed logits as q."""
    from evospec_hf.models import feature_drafter_from_target

    target, _, config = setup
    drafter = feature_drafter_from_target(target, 1)
    exact = two_token_distribution(target)
    stats = DraftStats()

    config = dataclasses.replace(config, lookup_tokens=0)
    p_value = chi_square_p_value(evospec_counts(target, drafter, config, stats), exact, NUM_SAMPLES)
    assert p_value > 1e-3, p_value
    assert 0 < stats.drafter_accepted < stats.drafter_drafted, stats


@pytest.mark.parametrize("control", ["drafter", "uncorrected-shortlist"])
def test_the_chi_square_test_catches_wrong_distributions(setup, control):
    target, drafter, config = setup
    exact = two_token_distribution(target)
    if control == "drafter":

        def samples(n):
            torch.manual_seed(0)
            out = drafter.generate(
                PROMPT.repeat(n, 1), max_new_tokens=2, do_sample=True, temperature=TEMPERATURE, top_k=None, pad_token_id=0
            )
            return outcomes_of(out)
    else:
        wrong = two_token_distribution(target, allowed=torch.tensor([0, 1, 2, 3]))
        outcomes = list(wrong)

        def samples(n):
            gen = torch.Generator().manual_seed(0)
            picks = torch.multinomial(torch.tensor([wrong[o] for o in outcomes]), n, replacement=True, generator=gen)
            return [outcomes[i] for i in picks.tolist()]

    assert chi_square_p_value(sample_counts(samples, NUM_SAMPLES), exact, NUM_SAMPLES) < 1e-6


@pytest.mark.slow
def test_sampling_keeps_the_target_distribution_with_the_entropy_stop(setup):
    """AdaSD's entropy stop decides from the draft distribution's entropy, never from the drafted token: exact."""
    target, drafter, config = setup
    config = dataclasses.replace(config, lookup_tokens=0, entropy_stop=True, num_draft_tokens=2)
    stats = DraftStats()
    p_value = chi_square_p_value(evospec_counts(target, drafter, config, stats), two_token_distribution(target),
                                 NUM_SAMPLES)  # fmt: skip
    assert p_value > 1e-3, p_value
    assert 0 < stats.accepted < stats.drafted


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["as-shipped", "cut-before-the-disagreement"])
def test_sampling_with_the_intermediate_verifier(setup, tmp_path, monkeypatch, rule):
    """HiSpec keeps the target's distribution only because, when sampling, it still offers the first draft its exit
    disagrees with (dropping that draft would make whether it is verified depend on its own value). Cutting before
    it, as greedy does, must be caught by the test."""
    from evospec_hf.generation.hispec import IntermediateVerifier
    from evospec_hf.models.exit_head import ExitHead

    target, drafter, config = setup
    folder = tmp_path / "exit"
    ExitHead(target.config.hidden_size, 1).save_pretrained(folder, target, "tiny")
    config = dataclasses.replace(config, lookup_tokens=0, intermediate_verifier=str(folder), num_draft_tokens=2)
    if rule != "as-shipped":
        original = IntermediateVerifier.__init__
        monkeypatch.setattr(IntermediateVerifier, "__init__", lambda self, parts, do_sample=False: original(self, parts))
    stats = DraftStats()
    p_value = chi_square_p_value(evospec_counts(target, drafter, config, stats), two_token_distribution(target),
                                 NUM_SAMPLES)  # fmt: skip
    assert stats.verifier_removed > 0, stats  # the verifier cut rounds
    if rule == "as-shipped":
        assert p_value > 1e-3, p_value
    else:
        assert p_value < 1e-3, p_value
