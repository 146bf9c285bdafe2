"""Final-logit softcapping (Gemma 2/3): the one place evospec_hf applies it, for drafting, checks and losses."""

from __future__ import annotations

import torch


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """`tanh(logits / cap) * cap`, or `logits` unchanged when `cap` is None."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def logit_softcap(model) -> float | None:
    """The model architecture's final-logit softcap (`config.final_logit_softcapping`), or None."""
    return getattr(model.config.get_text_config(), "final_logit_softcapping", None)
