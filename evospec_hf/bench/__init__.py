"""Benchmark harness: methods side by side on the same prompts, in one process.

    python -m evospec_hf.bench --drafter checkpoints/gemma-3-270m-drafter-l2 --out results/bench/gemma

- `methods.py`: the decoding methods compared (target-only, transformers' assisted and prompt-lookup decoding,
  FR-Spec, VocabTrim, the router, evospec, evospec with online alignment).
- `prompts.py`: prompts from jsonl (evospec_hf's or Spec-Bench's form) or built-in held-out domain sets.
- `runner.py`: warm-up, interleaved runs, medians, and the check that lossless methods reproduce greedy output.
- `report.py`: JSON, markdown tables and plots.
"""

from .methods import Method, build_methods
from .prompts import BUILTIN_SETS, builtin_prompts, load_prompts
from .report import write_report
from .runner import MismatchError, run_benchmark

__all__ = [
    "BUILTIN_SETS", "Method", "MismatchError", "build_methods", "builtin_prompts", "load_prompts", "run_benchmark",
    "write_report",
]  # fmt: skip
