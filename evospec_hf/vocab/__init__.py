"""Where the drafter's vocabulary is decided: `DraftVocabulary` (per step: slots, retrieval, router), its slots
(`Shortlist`), and their sources (static frequency tables, context tokens, retrieval indexes, the cluster router)."""

from .draft_vocab import DraftVocabulary
from .frequency import FrequencyTable, build_drafter_emission_table, build_frequency_table
from .shortlist import Shortlist, build_shortlist, release_shortlist

__all__ = [
    "DraftVocabulary", "FrequencyTable", "build_drafter_emission_table", "build_frequency_table", "Shortlist",
    "build_shortlist", "release_shortlist",
]  # fmt: skip
