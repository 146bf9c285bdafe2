"""Drafter LM head over a shortlist of token ids: the plain-torch reference and the backend choice.

The Triton kernel (`triton_sparse_lm_head.py`, beside this file) reads the shortlisted rows of the full LM-head
matrix in place. The torch path cannot do that without copying the rows (`weight[token_ids]` is a gather, slower
than the full head at 16k of 262k rows on a CPU), so `evospec_hf.vocab.Shortlist` keeps the rows packed and only
copies the rows that enter the shortlist; `packed_lm_head` is then a plain matmul.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F


def sparse_lm_head_reference(
    hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of the shortlisted tokens only.

    Args:
        hidden: `(num_positions, hidden_size)` final hidden states of the drafter.
        weight: `(vocab_size, hidden_size)` LM-head matrix.
        token_ids: `(shortlist_len,)` integer token ids.
        bias: optional `(vocab_size,)` LM-head bias.

    Returns:
        `torch.float32` tensor of shape `(num_positions, shortlist_len)`: `hidden @ weight[token_ids].T (+ bias)`.
    """
    rows = weight.index_select(0, token_ids.long())
    out = hidden.to(torch.float32) @ rows.to(torch.float32).T
    if bias is not None:
        out += bias.index_select(0, token_ids.long()).to(torch.float32)
    return out


def packed_lm_head(hidden: torch.Tensor, packed_weight: torch.Tensor, packed_bias: torch.Tensor | None) -> torch.Tensor:
    """Logits from pre-packed shortlist rows: `(num_positions, hidden) x (shortlist_len, hidden) -> float32`."""
    return F.linear(hidden, packed_weight, packed_bias).to(torch.float32)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_head_backend(requested: str, device: torch.device) -> str:
    """Picks the backend once per generation: 'triton' needs a CUDA device and Triton, else 'torch'."""
    if requested == "torch":
        return "torch"
    usable = device.type == "cuda" and triton_available()
    if requested == "triton":
        if not triton_available():
            raise ValueError("`head_backend`='triton' but Triton is not installed: `pip install triton`.")
        if device.type != "cuda":
            raise ValueError(
                f"`head_backend`='triton' needs the drafter on a CUDA device, but it is on {device}. "
                "Use head_backend='auto' or 'torch' on CPU."
            )
        return "triton"
    return "triton" if usable else "torch"
