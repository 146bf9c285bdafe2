"""Where the drafter evolves: online LoRA alignment from the target's verification feedback, kept per session."""

from .kd import full_kd_loss, topk_kd_loss
from .online import OnlineAlignmentConfig
from .session import EvoSpecSession

__all__ = [
    "EvoSpecSession",
    "OnlineAlignmentConfig",
    "full_kd_loss",
    "topk_kd_loss",
]
