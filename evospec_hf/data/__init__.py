"""Text on the machine for training and evaluating drafters, with a fixed train / held-out split.

- `corpora`: four domains (code, law, general, medical), as before: `load_domain_corpus`, `token_chunks`.
- `mixture`: ten kinds of text people send to `generate` (code, prose, questions, chat, math, translation, ...):
  `load_mixture`, `mixture_chunks`.
- `continuations`: the target's own greedy continuations of mixture prompts (self-distillation data), written by
  `evospec-hf continuations`: `load_continuations`, `continuation_chunks`.
"""

from .continuations import continuation_chunks, load_continuations
from .corpora import DOMAINS, load_domain_corpus, token_chunks
from .mixture import KINDS, documents, iter_documents, load_mixture, mixture_chunks
from .sources import SourceMissing

__all__ = [
    "DOMAINS",
    "KINDS",
    "SourceMissing",
    "continuation_chunks",
    "documents",
    "iter_documents",
    "load_continuations",
    "load_domain_corpus",
    "load_mixture",
    "mixture_chunks",
    "token_chunks",
]  # fmt: skip
