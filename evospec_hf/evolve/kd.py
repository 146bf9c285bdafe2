"""Distillation losses for the drafter against its target: top-k (what evospec_hf trains with) and full vocabulary.

Both take the drafter's final hidden states at the positions being taught and the target's logits there, and return
the cross-entropy of the target's distribution under the drafter's (its gradient is the KL divergence's). The LM
head stays frozen: it is shared with the target and only multiplies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.softcap import LogitTransform, softcap as _softcap


def topk_kd_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    softcap: float | LogitTransform | None = None,
) -> torch.Tensor:
    """KD restricted to the teacher's top-k: the drafter's softmax runs over the union of the batch's top-k ids
    (plus optional `negatives`), never over the whole vocabulary.

    Args:
        hidden: `(P, d)` drafter hidden states, one per taught position.
        head_weight, head_bias: the drafter's (frozen) LM head, `(V, d)` and `(V,)` or None.
        teacher_ids, teacher_logits: `(P, k)` the target's top-k token ids and their logits.
        weights: `(P,)` per-position weights (e.g. a curriculum's); None weighs all positions equally.
        negatives: extra token ids to include in the drafter's softmax (e.g. random ones, as distillation does).
        softcap: what the drafter applies after its head (a softcap, or its `LogitTransform`), as in generation.

    Returns:
        the weighted mean cross-entropy, a scalar.
    """
    pool = teacher_ids.flatten() if negatives is None else torch.cat([teacher_ids.flatten(), negatives.to(teacher_ids.device)])
    candidates = torch.unique(pool)  # sorted, so each teacher id's column is a binary search away
    bias = None if head_bias is None else head_bias.index_select(0, candidates)
    logits = _softcap(F.linear(hidden, head_weight.index_select(0, candidates), bias).float(), softcap)
    columns = torch.searchsorted(candidates, teacher_ids)
    log_q = logits.log_softmax(-1).gather(1, columns)
    per_position = -(teacher_logits.float().softmax(-1) * log_q).sum(-1)
    return _weighted_mean(per_position, weights)


def full_kd_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor | None = None,
    softcap: float | LogitTransform | None = None,
) -> torch.Tensor:
    """Standard KD over the full vocabulary: full LM-head logits `(P, V)` for the drafter, and their gradients.

    The baseline that EvoSpec's paper compares against; `teacher_logits` is `(P, V)`.
    """
    logits = _softcap(F.linear(hidden, head_weight, head_bias).float(), softcap)
    per_position = -(teacher_logits.float().softmax(-1) * logits.log_softmax(-1)).sum(-1)
    return _weighted_mean(per_position, weights)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1e-8)
