"""chrF (character n-gram F-score) as an `evaluate` metric module, read from this file (`evaluate.load(<path>)`),
not the Hub. The score comes from `sacrebleu`'s CHRF, as in the Hub's `chrf` module (0-100)."""

import datasets
import evaluate


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, 2015.",
            inputs_description="predictions: list of str; references: list of str (one per prediction).",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        from sacrebleu.metrics import CHRF

        return {"score": float(CHRF().corpus_score(list(predictions), [list(references)]).score)}
