"""The transformers integration: the candidate generator (where the drafter runs), the logits processor, the hook."""

from .candidate_generator import DraftStats, EvoSpecCandidateGenerator
from .integration import custom_generate, evospec_drafting, install, uninstall
from .logits_process import ShortlistLogitsProcessor

__all__ = [
    "DraftStats",
    "EvoSpecCandidateGenerator",
    "ShortlistLogitsProcessor",
    "custom_generate",
    "evospec_drafting",
    "install",
    "uninstall",
]
