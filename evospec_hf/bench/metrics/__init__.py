"""Local `evaluate` metric modules (the Hub is not reachable): `load_metric("rouge")`, `load_metric("chrf")`."""

from pathlib import Path

METRICS = ("rouge", "chrf")


def load_metric(name: str):
    """The `evaluate` module `name` from this folder (needs the `quality` extra: rouge_score, sacrebleu)."""
    import evaluate

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; local metrics: {METRICS}")
    return evaluate.load(str(Path(__file__).with_name(f"{name}.py")))
