"""The local `evaluate` metric modules (`evospec_hf/bench/metrics`) load without the Hub and score as expected."""

import pytest

from evospec_hf.bench.metrics import load_metric


def test_rouge_and_chrf_load_locally_and_rank_closer_text_higher():
    rouge, chrf = load_metric("rouge"), load_metric("chrf")
    reference = ["the court held that the contract was void for lack of consideration"]
    close = ["the court held that the contract was void for want of consideration"]
    far = ["a recipe for bread needs flour, water and salt"]
    assert rouge.compute(predictions=reference, references=reference)["rougeL"] == pytest.approx(1.0)
    assert rouge.compute(predictions=close, references=reference)["rougeL"] > rouge.compute(
        predictions=far, references=reference)["rougeL"]  # fmt: skip
    assert chrf.compute(predictions=reference, references=reference)["score"] == pytest.approx(100.0)
    assert chrf.compute(predictions=close, references=reference)["score"] > chrf.compute(
        predictions=far, references=reference)["score"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")
