"""The transformers integration: the hook on `generate` (`integration.py`), the candidate generator that orchestrates
a round (`candidate_generator.py`), its candidate sources (`lookup.py`, and `token_drafter.py`: where the drafter
runs), the draft length rules (`schedule.py`), the stop check (`stopping.py`), the stats, a streamer that labels
where each token came from (`streaming.py`), and the logits processor."""

from .costs import calibrate
from .candidate_generator import EvoSpecCandidateGenerator
from .integration import custom_generate, evospec_drafting, install, screened_greedy, uninstall
from .logits_process import ShortlistLogitsProcessor
from .stats import DraftStats
from .streaming import SourceStreamer

__all__ = [
    "DraftStats",
    "EvoSpecCandidateGenerator",
    "ShortlistLogitsProcessor",
    "SourceStreamer",
    "calibrate",
    "custom_generate",
    "evospec_drafting",
    "install",
    "screened_greedy",
    "uninstall",
]
