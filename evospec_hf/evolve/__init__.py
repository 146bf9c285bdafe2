"""Where the drafter evolves: online LoRA alignment from the target's verification feedback, kept per session."""

from .kd import full_kd_loss, topk_kd_loss
from .online import AlignmentStats, OnlineAligner, OnlineAlignmentConfig
from .session import EvoSpecSession

__all__ = [
    "AlignmentStats",
    "EvoSpecSession",
    "OnlineAligner",
    "OnlineAlignmentConfig",
    "full_kd_loss",
    "topk_kd_loss",
]
