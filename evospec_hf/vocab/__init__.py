"""Where the drafter's shortlist is decided: its sources (static frequency lists, context tokens) and its slots."""

from .frequency import FrequencyTable
from .shortlist import Shortlist, build_shortlist

__all__ = ["FrequencyTable", "Shortlist", "build_shortlist"]
