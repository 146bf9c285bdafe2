"""The target's LM head during verification, on CPU.

Verifying k drafts needs the target's full-vocabulary logits at k + 1 positions: `F.linear(H, W)` with H of shape
`(k + 1, d)` and W of shape `(V, d)`. For a few rows, CPU BLAS picks its kernels by shape, and which order is faster
depends on the machine and the row count. Measured on two 2-core machines, V = 262,144, d = 640
(`python scripts/bench_lm_head.py`, README):

- on one, `F.linear` over 2-8 rows took 3-4x its one-row time, while `W @ H.T` stayed close to it;
- on another, `F.linear` over 2-3 rows cost the same as one row and `W @ H.T` twice that, while from 8 rows on
  `F.linear` was the slower by up to 2x.

So no fixed rule is right. `VerifyHead` times both on the model's own verification calls, twice each per row
count, then keeps the faster for that row count. Its choices are kept per machine and head shape in the
calibration cache (`calibration.py`), so a new process on the same machine times nothing again. Both give the same
values up to float rounding (about 1e-6 in fp32; the same bits in fp16/bf16 at the head shapes measured), like
`F.linear` over k + 1 rows against one row at a time: the greedy-equivalence tests run through this path. (In
half precision the verified tokens can still differ from plain greedy's, through the decoder body rather than the
head: README, "Half precision"; `scripts/measure_half_precision.py`.)

**Who goes through it** (`columns_verify_head`): only the target model's own forward, on a thread that is inside a
`columns_verify_head(target)` block. A drafter that shares the head module (`drafter_from_target`), a plain
`generate` on another thread, or anything else calling the head runs `nn.Linear` as usual. Several threads may
hold blocks on one target at once: the shadow and the hooks are refcounted, installed by the first block and
removed by the last.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref

import torch
import torch.nn.functional as F

from .calibration import machine_costs, save_machine_costs


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

    Args:
        trials (`int`): timed calls of each implementation per row count.
        choices (`dict`, *optional*): `{rows: implementation name}` already decided; filled as row counts are
            decided. Pass a calibration table (`machine_costs(head, "verify_head")`) to keep them per machine.
    """

    IMPLEMENTATIONS = (F.linear, columns_linear)
    NAMES = ("F.linear", "W @ H.T")

    def __init__(self, trials: int = 2, choices: dict | None = None):
        self.trials = trials
        self.choices = {} if choices is None else choices
        self.times: dict[int, tuple[list, list]] = {}  # rows -> seconds per call of each implementation
        self._lock = threading.Lock()  # several threads may verify through one head

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= 1:
            return F.linear(x, weight, bias)
        name = self.choices.get(rows)
        if name in self.NAMES:
            return self.IMPLEMENTATIONS[self.NAMES.index(name)](x, weight, bias)
        with self._lock:
            times = self.times.setdefault(rows, ([], []))
            which = 0 if len(times[0]) <= len(times[1]) else 1
        start = time.perf_counter()
        out = self.IMPLEMENTATIONS[which](x, weight, bias)
        elapsed = time.perf_counter() - start
        with self._lock:
            times[which].append(elapsed)
            if min(len(t) for t in times) >= self.trials and rows not in self.choices:
                self.choices[rows] = self.NAMES[min((0, 1), key=lambda i: min(times[i]))]
        return out

    def describe(self) -> dict:
        """`{rows: implementation name}` for the row counts decided so far."""
        return {rows: name for rows, name in sorted(self.choices.items()) if name in self.NAMES}


# -- which calls go through it ------------------------------------------------------------------------------------
# While a block is open, forward hooks on the target mark, on the running thread, that the target's own forward is
# running for that block. The head's `forward`, shadowed on the instance, asks the thread whether it runs inside
# such a forward; if not it runs `nn.Linear`. The first block installs, the last removes. State lives in these side
# tables and in thread-local lists, never as attributes on the user's modules.

_lock = threading.Lock()
_local = threading.local()  # .blocks: (target, shadow) of the thread's open blocks; .forwards: its hooked forwards
_shadows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # head module -> _HeadShadow
_hooked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # target -> [open blocks, hook handles]


def _thread_list(name: str) -> list:
    value = getattr(_local, name, None)
    if value is None:
        value = []
        setattr(_local, name, value)
    return value


class _HeadShadow:
    """One head's shadowed `forward` and its `VerifyHead`."""

    def __init__(self, head: torch.nn.Linear):
        self.head = weakref.ref(head)
        self.tuned = VerifyHead(choices=machine_costs(head, "verify_head"))
        self.forward = None  # the function set as `head.forward` while blocks are open
        self.users = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head()
        forwards = _thread_list("forwards")
        if forwards and forwards[-1][1] is self:  # the innermost hooked forward: a target's, in an open block
            return self.tuned(x, head.weight, head.bias)
        return torch.nn.Linear.forward(head, x)

    def acquire(self) -> None:  # under _lock
        head = self.head()
        if "forward" not in vars(head):
            self.forward = head.forward = self.run
        self.users += 1

    def release(self) -> None:  # under _lock
        self.users -= 1
        if self.users == 0:
            head = self.head()
            if head is not None and vars(head).get("forward") is self.forward:
                del head.forward
            self.forward = None


def _hook(target) -> None:  # under _lock
    """Forward hooks on `target` marking, on the running thread, whether this forward is one of an open block."""

    def before(module, args):
        shadow = next((s for t, s in reversed(_thread_list("blocks")) if t is module), None)
        _thread_list("forwards").append((module, shadow))

    def after(module, args, output):
        forwards = _thread_list("forwards")
        # the hooks can be added while another thread's forward runs: pop only what this forward pushed
        if forwards and forwards[-1][0] is module:
            forwards.pop()

    entry = _hooked.get(target)
    if entry is None:
        handles = (target.register_forward_pre_hook(before), target.register_forward_hook(after, always_call=True))
        entry = _hooked[target] = [0, handles]
    entry[0] += 1


def _unhook(target) -> None:  # under _lock
    entry = _hooked[target]
    entry[0] -= 1
    if entry[0] == 0:
        for handle in entry[1]:
            handle.remove()
        del _hooked[target]


@contextlib.contextmanager
def columns_verify_head(model):
    """Within the block, `model`'s own forwards *on this thread* compute its LM head (a plain `nn.Linear` on CPU)
    through a `VerifyHead`; nothing else changes. The head's module and weights are untouched; other callers of the
    head (a drafter sharing it, other threads, this thread outside `model`'s forward) run `nn.Linear`.

    Blocks may be open on several threads at once, on one model or several. What `VerifyHead` decided is kept per
    machine and head shape (`calibration.py`) and written to the cache file when the block ends.

    Yields the `VerifyHead`, or None (and changes nothing) when the head is not a plain CPU `nn.Linear` or its
    `forward` is already replaced by someone else (e.g. accelerate's offloading hooks).
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu":
        yield None
        return
    with _lock:
        shadow = _shadows.get(head)
        if shadow is None:
            shadow = _shadows[head] = _HeadShadow(head)
        if vars(head).get("forward", shadow.forward) is not shadow.forward:
            shadow = None
        else:
            shadow.acquire()
            _hook(model)
    if shadow is None:
        yield None
        return
    blocks = _thread_list("blocks")
    block = (model, shadow)
    blocks.append(block)
    try:
        yield shadow.tuned
    finally:
        del blocks[max(i for i, b in enumerate(blocks) if b is block)]  # this block (blocks may nest)
        with _lock:
            _unhook(model)
            shadow.release()
        save_machine_costs()
