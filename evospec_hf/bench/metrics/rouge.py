"""ROUGE (F-measure) as an `evaluate` metric module, read from this file (`evaluate.load(<path>)`), not the Hub.

The scores come from Google's `rouge_score` package, as in the Hub's `rouge` module: rouge1, rouge2 and rougeL,
with stemming. Used by `benchmarks/lossy.py` to compare a lossy method's text with plain greedy text.
"""

import datasets
import evaluate


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description="predictions: list of str; references: list of str (one per prediction).",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        from rouge_score import rouge_scorer, scoring

        types = ["rouge1", "rouge2", "rougeL"]
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
        aggregator = scoring.BootstrapAggregator()
        for prediction, reference in zip(predictions, references):
            aggregator.add_scores(scorer.score(reference, prediction))
        result = aggregator.aggregate()
        return {name: float(result[name].mid.fmeasure) for name in types}
