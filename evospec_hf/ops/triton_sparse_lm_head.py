"""Triton kernel: LM-head logits for a shortlist of token ids, reading the rows in place (no gather copy).

Each program computes `BLOCK_N` logits of one position: it loads the token ids of its block, then walks the hidden
dimension in `BLOCK_D` chunks, reading `weight[token_id, d0:d0 + BLOCK_D]` straight from the full matrix and
accumulating in fp32. The torch reference is `sparse_lm_head.sparse_lm_head_reference`.

Token ids are used as integer row offsets (not a table of pointers), which keeps the kernel runnable by the Triton
interpreter (`TRITON_INTERPRET=1`) so CPU CI can check it against the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _sparse_lm_head_kernel(
    # pointers
    hidden_ptr,  # (M, D) drafter hidden states
    weight_ptr,  # (V, D) full LM-head matrix
    token_ids_ptr,  # (N,) shortlisted token ids
    bias_ptr,  # (V,) LM-head bias, unused unless HAS_BIAS
    out_ptr,  # (M, N) float32 logits
    # sizes
    N,
    D,
    # strides (the innermost stride of hidden and weight is 1)
    stride_hidden_m,
    stride_weight_v,
    stride_out_m,
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # int64 row offsets: vocab_size * hidden_size can exceed 2**31 (e.g. 262,144 x 8,192).
    rows = tl.load(token_ids_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        h = tl.load(hidden_ptr + m * stride_hidden_m + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        w = tl.load(
            weight_ptr + rows[:, None] * stride_weight_v + offs_d[None, :],
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * h[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_out_m + offs_n, acc, mask=mask_n)


_AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w)
    for bn, bd, w in [(32, 128, 4), (64, 64, 4), (64, 128, 4), (128, 64, 8), (16, 256, 4)]
]
_autotuned_kernel = triton.autotune(configs=_AUTOTUNE_CONFIGS, key=["N", "D"])(_sparse_lm_head_kernel)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_sparse_lm_head(
    hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Same contract as `sparse_lm_head_reference`: `(M, D), (V, D), (N,) -> (M, N)` float32 logits."""
    # 1. check shapes
    if hidden.dim() != 2 or weight.dim() != 2 or token_ids.dim() != 1:
        raise ValueError(
            f"expected hidden (M, D), weight (V, D) and token_ids (N,), got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)} and {tuple(token_ids.shape)}"
        )
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size {hidden.shape[1]} does not match the LM head's {weight.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    token_ids = token_ids.contiguous()
    num_positions, hidden_size = hidden.shape
    shortlist_len = token_ids.shape[0]

    # 2. allocate
    out = torch.empty((num_positions, shortlist_len), dtype=torch.float32, device=hidden.device)
    if shortlist_len == 0 or num_positions == 0:
        return out

    # 3. launch: one program per (block of shortlisted tokens, position)
    args = (
        hidden, weight, token_ids, bias if bias is not None else weight, out,
        shortlist_len, hidden_size,
        hidden.stride(0), weight.stride(0), out.stride(0),
    )  # fmt: skip
    if _interpreting():
        # The interpreter cannot time configs; one fixed block shape keeps CPU CI fast.
        grid = (triton.cdiv(shortlist_len, 64), num_positions)
        _sparse_lm_head_kernel[grid](*args, HAS_BIAS=bias is not None, BLOCK_N=64, BLOCK_D=64)
    else:
        grid = lambda meta: (triton.cdiv(shortlist_len, meta["BLOCK_N"]), num_positions)  # noqa: E731
        _autotuned_kernel[grid](*args, HAS_BIAS=bias is not None)
    return out
