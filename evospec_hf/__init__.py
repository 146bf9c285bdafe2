"""evospec_hf: speculative decoding for Hugging Face transformers with a context-dependent drafter shortlist.

    import evospec_hf
    out = model.generate(**inputs, assistant_model=drafter,
                         evospec_config=evospec_hf.EvoSpecConfig(shortlist="static", shortlist_size=16384,
                                                                 static_shortlist_path="freq.json"))

Importing the package lets `generate` accept `evospec_config=`; calls without it are unchanged.
"""

from .config import EvoSpecConfig
from .evolve import EvoSpecSession, OnlineAlignmentConfig
from .generation import (
    DraftStats,
    calibrate,
    EvoSpecCandidateGenerator,
    ShortlistLogitsProcessor,
    SourceStreamer,
    custom_generate,
    evospec_drafting,
    install,
    screened_greedy,
    uninstall,
)
from .models import EvoSpecDrafter, load_target
from .vocab import FrequencyTable, Shortlist

__version__ = "0.1.0"

install()

__all__ = [
    "DraftStats",
    "calibrate",
    "EvoSpecCandidateGenerator",
    "EvoSpecConfig",
    "EvoSpecDrafter",
    "EvoSpecSession",
    "FrequencyTable",
    "Shortlist",
    "ShortlistLogitsProcessor",
    "SourceStreamer",
    "custom_generate",
    "evospec_drafting",
    "install",
    "load_target",
    "OnlineAlignmentConfig",
    "screened_greedy",
    "uninstall",
]
