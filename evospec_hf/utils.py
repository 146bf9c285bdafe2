"""Small helpers shared across sub-packages."""

from __future__ import annotations


def unwrap_peft(model):
    """The transformers model beneath a peft wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def drafter_folder(drafter) -> str:
    """The folder a drafter was loaded from ('' when it was built in memory): where its shortlist files live."""
    return getattr(unwrap_peft(drafter), "name_or_path", "") or ""
