"""The target's LM head during verification, on CPU.

Verifying k drafts needs the target's full-vocabulary logits at k + 1 positions: `F.linear(H, W)` with H of shape
`(k + 1, d)` and W of shape `(V, d)`. For a few rows, CPU BLAS picks its kernels by shape, and which order is faster
depends on the machine and the row count. Measured on two 2-core machines, V = 262,144, d = 640
(`python scripts/bench_lm_head.py`, README):

- on one, `F.linear` over 2-8 rows took 3-4x its one-row time, while `W @ H.T` stayed close to it;
- on another, `F.linear` over 2-3 rows cost the same as one row and `W @ H.T` twice that, while from 8 rows on
  `F.linear` was the slower by up to 2x.

So no fixed rule is right. `VerifyHead` times both on the model's own verification calls, twice each per row
count, then keeps the faster for that row count (for the life of the model). Both give the same values up to
float rounding (about 1e-6 here), like `F.linear` over k + 1 rows against one row at a time: the
greedy-equivalence tests run through this path.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F


def columns_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed as `(weight @ rows.T).T` when `x` holds more than one row."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1:
        return F.linear(x, weight, bias)
    out = (weight @ rows.T).T.contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class VerifyHead:
    """`F.linear(x, weight, bias)`, by whichever of `F.linear` and `columns_linear` was faster for x's row count.

    The first `2 * trials` calls with a given row count alternate the two and time them; later calls use the one
    with the lower best time. One row always runs `F.linear` (both are the same call then).
    """

    IMPLEMENTATIONS = (F.linear, columns_linear)
    NAMES = ("F.linear", "W @ H.T")

    def __init__(self, trials: int = 2):
        self.trials = trials
        self.times: dict[int, tuple[list, list]] = {}  # rows -> seconds per call of each implementation
        self.choice: dict[int, int] = {}  # rows -> index into IMPLEMENTATIONS, once decided

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= 1:
            return F.linear(x, weight, bias)
        choice = self.choice.get(rows)
        if choice is not None:
            return self.IMPLEMENTATIONS[choice](x, weight, bias)
        times = self.times.setdefault(rows, ([], []))
        which = 0 if len(times[0]) <= len(times[1]) else 1
        start = time.perf_counter()
        out = self.IMPLEMENTATIONS[which](x, weight, bias)
        times[which].append(time.perf_counter() - start)
        if min(len(t) for t in times) >= self.trials:
            self.choice[rows] = min((0, 1), key=lambda i: min(times[i]))
        return out

    def describe(self) -> dict:
        """`{rows: implementation name}` for the row counts decided so far."""
        return {rows: self.NAMES[i] for rows, i in sorted(self.choice.items())}


@contextlib.contextmanager
def columns_verify_head(model):
    """Within the block, the model's LM head (a plain `nn.Linear` on CPU) runs through a `VerifyHead`, kept on
    the module so that what it measured serves later calls; otherwise nothing changes. The head's module and
    weights are untouched: only its `forward` is shadowed on the instance. Yields the `VerifyHead` (or None)."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu" or "forward" in vars(head):
        yield None
        return
    tuned = vars(head).get("_evospec_verify_head")
    if tuned is None:
        tuned = head._evospec_verify_head = VerifyHead()
    head.forward = lambda x: tuned(x, head.weight, head.bias)
    try:
        yield tuned
    finally:
        del head.forward
