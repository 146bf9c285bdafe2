"""Triton kernel: the int8 screen of an LM head (`screened_head.py`), fused with its bound and a per-block maximum,
so the V approximate logits are never written out.

Each program takes `BLOCK_V` rows of the int8 head and every position at once. It walks the hidden dimension in
`BLOCK_D` chunks and accumulates both activation rows' integer products with `tl.dot` (int8 in, int32 out: exact).
It then forms each row's approximate logit and its upper bound, exactly as the torch path does, and stores per
position only the block's best approximate logit, the row holding it, and the block's best upper bound. The host
then (1) takes each position's best approximate row over the blocks and computes it exactly (the floor), (2) keeps
the blocks whose best upper bound reaches some position's floor, and (3) computes every row of those blocks exactly.
A block kept holds every survivor the torch path would keep (and some rows it would not): the argmax is the same.

The torch reference is `screened_head.screened_logits`; `screen_block_maxima_reference` is the reference of the
kernel itself. Rows are integer offsets (no pointer tables), so CPU CI runs it under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .screened_head import ROUND_UP, UNIT, quantize_positions


@triton.jit
def _screen_block_kernel(
    # pointers
    weight_ptr,  # (V, D) int8 head
    row_scale_ptr,  # (V,) fp32 int8 scale per row
    weight_error_ptr,  # (V,) fp32 ‖w − ŵ‖ + 2γ‖w‖, rounded up
    weight_norm_ptr,  # (V,) fp32 ‖ŵ‖, rounded up
    bias_ptr,  # (V,) fp32 bias and (V,) its margin, unused unless HAS_BIAS
    bias_margin_ptr,
    act_ptr,  # (2, BLOCK_P, D) int8 activation rows: first rows, then residual rows (positions padded with 0)
    act_scale_ptr,  # (2, BLOCK_P) fp32
    h_norm_ptr,  # (BLOCK_P,) fp32 ‖h‖, rounded up
    act_term_ptr,  # (BLOCK_P,) fp32 ‖h − ĥ‖ + float margin, rounded up
    best_ptr,  # (blocks, BLOCK_P) fp32 out: the block's best approximate logit per position
    best_row_ptr,  # (blocks, BLOCK_P) int32 out: its row
    upper_ptr,  # (blocks, BLOCK_P) fp32 out: the block's best upper bound per position
    # sizes
    V,
    D,
    P,
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    block = tl.program_id(0)
    rows = block * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < V
    rows64 = rows.to(tl.int64)  # V * D can exceed 2**31
    offs_p = tl.arange(0, BLOCK_P)
    first = tl.zeros((BLOCK_V, BLOCK_P), dtype=tl.int32)
    rest = tl.zeros((BLOCK_V, BLOCK_P), dtype=tl.int32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        w = tl.load(weight_ptr + rows64[:, None] * D + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0)
        a1 = tl.load(act_ptr + offs_p[None, :] * D + offs_d[:, None], mask=d_ok[:, None], other=0)
        a2 = tl.load(act_ptr + (BLOCK_P + offs_p[None, :]) * D + offs_d[:, None], mask=d_ok[:, None], other=0)
        first += tl.dot(w, a1, out_dtype=tl.int32)
        rest += tl.dot(w, a2, out_dtype=tl.int32)
    row_scale = tl.load(row_scale_ptr + rows, mask=row_ok, other=0.0)
    s1 = tl.load(act_scale_ptr + offs_p)
    s2 = tl.load(act_scale_ptr + BLOCK_P + offs_p)
    approx = (first.to(tl.float32) * row_scale[:, None]) * s1[None, :]
    approx += (rest.to(tl.float32) * row_scale[:, None]) * s2[None, :]
    upper = approx + tl.load(weight_error_ptr + rows, mask=row_ok, other=0.0)[:, None] * tl.load(h_norm_ptr + offs_p)[None, :]
    upper += tl.load(weight_norm_ptr + rows, mask=row_ok, other=0.0)[:, None] * tl.load(act_term_ptr + offs_p)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0)
        approx += bias[:, None]
        upper += bias[:, None] + tl.load(bias_margin_ptr + rows, mask=row_ok, other=0.0)[:, None]
    approx = tl.where(row_ok[:, None], approx, float("-inf"))
    upper = tl.where(row_ok[:, None], upper, float("-inf"))
    best = tl.max(approx, axis=0)
    best_row = tl.argmax(approx, axis=0).to(tl.int32) + block * BLOCK_V
    p_ok = offs_p < P
    tl.store(best_ptr + block * BLOCK_P + offs_p, best, mask=p_ok)
    tl.store(best_row_ptr + block * BLOCK_P + offs_p, best_row, mask=p_ok)
    tl.store(upper_ptr + block * BLOCK_P + offs_p, tl.max(upper, axis=0), mask=p_ok)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def bound_inputs(h: torch.Tensor, block_p: int) -> tuple:
    """The activation side of the screen for the kernel: int8 rows `(2, block_p, D)`, their scales `(2, block_p)`,
    and per position ‖h‖ and the activation term of the bound (rounded up), padded to `block_p` positions."""
    positions, d = h.shape
    q, scales, h_norm, miss = quantize_positions(h.float())
    act = torch.zeros(2, block_p, d, dtype=torch.int8, device=h.device)
    act[0, :positions], act[1, :positions] = q[:positions].to(torch.int8), q[positions:].to(torch.int8)
    act_scale = torch.ones(2, block_p, dtype=torch.float32, device=h.device)
    act_scale[0, :positions], act_scale[1, :positions] = scales[:positions], scales[positions:]
    norm = torch.zeros(block_p, dtype=torch.float32, device=h.device)
    term = torch.zeros(block_p, dtype=torch.float32, device=h.device)
    norm[:positions] = (h_norm * ROUND_UP).float()
    term[:positions] = ((miss + 8 * UNIT * (h_norm + miss)) * ROUND_UP).float()
    return act, act_scale, norm, term


def screen_block_maxima(
    h: torch.Tensor, q: torch.Tensor, row_scale: torch.Tensor, weight_error: torch.Tensor, weight_norm: torch.Tensor,
    bias: torch.Tensor | None = None, bias_margin: torch.Tensor | None = None, block_v: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Runs the kernel. `h` (P, D) fp32, `q` (V, D) int8 with `row_scale` (V,), the bound's factors (V,).

    Returns `(best, best_row, upper)`, each of shape `(blocks, P)`: per block of `block_v` rows, the best approximate
    logit per position, its row, and the best upper bound."""
    # 1. check shapes
    if h.dim() != 2 or q.dim() != 2 or h.shape[1] != q.shape[1]:
        raise ValueError(f"expected h (P, D) and q (V, D), got {tuple(h.shape)} and {tuple(q.shape)}")
    if q.dtype != torch.int8:
        raise ValueError(f"q must be int8, got {q.dtype}")
    positions, d = h.shape
    vocab = q.shape[0]
    block_p = max(16, triton.next_power_of_2(positions))  # tl.dot needs at least 16
    act, act_scale, norm, term = bound_inputs(h, block_p)
    blocks = triton.cdiv(vocab, block_v)
    # 2. allocate
    best = torch.empty(blocks, block_p, dtype=torch.float32, device=h.device)
    best_row = torch.empty(blocks, block_p, dtype=torch.int32, device=h.device)
    upper = torch.empty(blocks, block_p, dtype=torch.float32, device=h.device)
    # 3. launch: one program per block of rows, every position at once
    _screen_block_kernel[(blocks,)](
        q.contiguous(), row_scale, weight_error, weight_norm,
        bias if bias is not None else row_scale, bias_margin if bias_margin is not None else row_scale,
        act, act_scale, norm, term, best, best_row, upper,
        vocab, d, positions,
        HAS_BIAS=bias is not None, BLOCK_V=block_v, BLOCK_D=32 if _interpreting() else 128, BLOCK_P=block_p,
    )  # fmt: skip
    return best[:, :positions], best_row[:, :positions], upper[:, :positions]


def screen_block_maxima_reference(
    h, q, row_scale, weight_error, weight_norm, bias=None, bias_margin=None, block_v: int = 64
):  # fmt: skip
    """The kernel's contract in torch (int64 products, then the same float steps)."""
    positions = h.shape[0]
    act, act_scale, norm, term = bound_inputs(h, positions)
    # int64 products on the CPU (CUDA has no integer matmul), exact like the kernel's int32 accumulators
    first = (q.cpu().long() @ act[0].cpu().long().T).float().to(q.device)
    rest = (q.cpu().long() @ act[1].cpu().long().T).float().to(q.device)
    approx = first * row_scale[:, None] * act_scale[0][None, :] + rest * row_scale[:, None] * act_scale[1][None, :]
    upper = approx + weight_error[:, None] * norm[None, :] + weight_norm[:, None] * term[None, :]
    if bias is not None:
        approx = approx + bias[:, None]
        upper = upper + bias[:, None] + bias_margin[:, None]
    pad = (-q.shape[0]) % block_v
    approx = F.pad(approx, (0, 0, 0, pad), value=float("-inf")).view(-1, block_v, positions)
    upper = F.pad(upper, (0, 0, 0, pad), value=float("-inf")).view(-1, block_v, positions)
    best, where = approx.max(dim=1)
    offsets = torch.arange(approx.shape[0], device=q.device)[:, None] * block_v
    return best, (where + offsets).int(), upper.amax(dim=1)


def triton_screened_logits(h, q, row_scale, weight_error, weight_norm, weight, bias=None, bias_margin=None,
                           block_v: int = 64) -> tuple[torch.Tensor, int]:  # fmt: skip
    """The screened head through the kernel: `(P, V)` logits, exact in every row of a kept block and -inf elsewhere,
    whose argmax at every position is the full head's; and the number of rows computed exactly."""
    best, best_row, upper = screen_block_maxima(h, q, row_scale, weight_error, weight_norm, bias, bias_margin, block_v)
    positions = h.shape[0]
    top = best.argmax(dim=0)
    rows = best_row[top, torch.arange(positions, device=h.device)].long()
    gamma = 1.01 * h.shape[1] * UNIT
    best_weights = weight[rows]
    floor = (best_weights * h).sum(dim=1)
    slack = 2 * gamma * best_weights.norm(dim=1) * h.norm(dim=1)
    if bias is not None:
        floor, slack = floor + bias[rows], slack + 2 * gamma * bias[rows].abs()
    floor = floor - slack * ROUND_UP * (1 + 1e-4)  # the slack's own fp32 rounding, far inside this margin
    kept_blocks = (upper >= floor[None, :]).any(dim=1).nonzero().squeeze(1)
    kept = (kept_blocks[:, None] * block_v + torch.arange(block_v, device=h.device)[None, :]).flatten()
    kept = torch.unique(torch.cat([kept[kept < weight.shape[0]], rows]))
    logits = torch.full((positions, weight.shape[0]), float("-inf"), device=h.device)
    logits[:, kept] = F.linear(h, weight[kept], None if bias is None else bias[kept])
    return logits, int(kept.numel())
