"""Where the drafter's shortlist is decided: its sources (static frequency lists, context tokens) and its slots."""

from .frequency import FrequencyTable, build_drafter_emission_table, build_frequency_table, resolve_static_table
from .shortlist import Shortlist, build_shortlist

__all__ = [
    "FrequencyTable", "build_drafter_emission_table", "build_frequency_table", "resolve_static_table", "Shortlist",
    "build_shortlist",
]  # fmt: skip
