"""The target's LM head during verification, on CPU.

Verifying k drafts needs the target's full-vocabulary logits at k + 1 positions: `F.linear(H, W)` with H of shape
`(k + 1, d)` and W of shape `(V, d)`. For a few rows, CPU BLAS picks its kernels by shape, and which order is faster
depends on the machine and the row count. Measured on two 2-core machines, V = 262,144, d = 640
(`python benchmarks/lm_head.py`, docs/benchmarks/gemma-3-270m.md):

- on one, `F.linear` over 2-8 rows took 3-4x its one-row time, while `W @ H.T` stayed close to it;
- on another, `F.linear` over 2-3 rows cost the same as one row and `W @ H.T` twice that, while from 8 rows on
  `F.linear` was the slower by up to 2x.

So no fixed rule is right. `VerifyHead` times both on the model's own verification calls, twice each per row
count, then keeps the faster for that row count. Its choices are kept per machine and head shape in the
calibration cache (`calibration.py`), so a new process on the same machine times nothing again. Both give the same
values up to float rounding (about 1e-6 in fp32; the same bits in fp16/bf16 at the head shapes measured), like
`F.linear` over k + 1 rows against one row at a time: the greedy-equivalence tests run through this path. (In
half precision the verified tokens can still differ from plain greedy's, through the decoder body rather than the
head: docs/benchmarks/half-precision.md; `benchmarks/half_precision.py`.)

**Who goes through it** (`columns_verify_head`): only the target model's own forward, on a thread that is inside a
`columns_verify_head(target)` block. A drafter that shares the head module (`drafter_from_target`), a plain
`generate` on another thread, or anything else calling the head runs `nn.Linear` as usual. Several threads may
hold blocks on one target at once: the shadow and the hooks are refcounted, installed by the first block and
removed by the last.

**The screen** (`screened_head.py`): a block opened with a `HeadScreen` whose `enabled` the caller sets (only it
knows whether the call is greedy with nothing that reads other logits) computes the head through the int8 screen
instead: the argmax at every position is the full head's, the other logits are -inf. With `mode="auto"` each row
count's first calls time the screen (with two activation rows per position, and with one) against the tuned full
head, twice each, and keep the fastest (kept per machine in the calibration cache, table `"screened_head"`);
`mode="on"` screens without timing (the measured variant where there is one, else two rows). The int8 copy is made on the
first screened call and kept with the head (made again if the weights change), shared by every thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .calibration import machine_costs, save_machine_costs
from .screened_head import Int8Head, screened_logits
from .softcap import LogitTransform, logit_transform


def columns_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed as `(weight @ rows.T).T` when `x` holds more than one row."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 1:
        return F.linear(x, weight, bias)
    out = (weight @ rows.T).T.contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def row_bucket(rows: int) -> int:
    """The row count whose measurements decide for `rows`: itself up to 16 (drafts of one sequence), above that
    the next multiple of 8, so that a batch's many row counts share a few trials."""
    return rows if rows <= 16 else -(-rows // 8) * 8


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
        rows = row_bucket(x.numel() // x.shape[-1])
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


@dataclass
class HeadScreen:
    """One call's say on screening the target's verification head, and what the screen did in that call.

    Attributes:
        mode: "auto" (screen the row counts where it was measured faster on this machine) or "on" (always).
        enabled: set by the caller once it knows the call may be screened (greedy, or sampling behind a top-k
            filter, and nothing else reads the logits); False runs the full head.
        top_k: how many best rows per position must be exact: 1 for greedy, the call's `top_k` when it samples.
        softcap: what the model applies after the head (`softcap.LogitTransform`: a softcap, a logit scale), or None.
        max_survivors: above this many rows to rescore, the full head runs (a fallback).
        calls: head calls computed through the screen; positions: their positions.
        survivors: rows that survived the screen, per position, in order (the argmax candidates rescored exactly).
        fallbacks: screened calls that ran the full head after all (too many survivors, a non-finite hidden state,
            a softcap tie), and `fallback_reasons` their reasons.
        full_calls: head calls of this block computed in full (the screen disabled, slower for that row count, or no
            int8 copy possible).
        rows_read: set by a caller that reads only some positions of its next forward (the batched loop: rows'
            drafts padded to the longest): a bool mask over the forward's flattened positions. The head computes
            those only; the others' logits are zeros.
    """

    mode: str = "auto"
    enabled: bool = False
    top_k: int = 1
    softcap: LogitTransform | None = None
    max_survivors: int = 16384
    calls: int = 0
    positions: int = 0
    survivors: list = field(default_factory=list)
    fallbacks: int = 0
    fallback_reasons: list = field(default_factory=list)
    full_calls: int = 0
    rows_read: torch.Tensor | None = None


class _Block:
    """One open `columns_verify_head` block: its model, the head's shadow, and the call's `HeadScreen` (or None)."""

    __slots__ = ("model", "shadow", "screen")

    def __init__(self, model, shadow, screen):
        self.model, self.shadow, self.screen = model, shadow, screen


# -- which calls go through it ------------------------------------------------------------------------------------
# While a block is open, forward hooks on the target mark, on the running thread, that the target's own forward is
# running for that block. The head's `forward`, shadowed on the instance, asks the thread whether it runs inside
# such a forward; if not it runs `nn.Linear`. The first block installs, the last removes. State lives in these side
# tables and in thread-local lists, never as attributes on the user's modules.

_lock = threading.Lock()
_local = threading.local()  # .blocks: the thread's open `_Block`s; .forwards: (module, block or None) of its forwards
_shadows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # head module -> _HeadShadow
_hooked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # target -> [open blocks, hook handles]


def _thread_list(name: str) -> list:
    value = getattr(_local, name, None)
    if value is None:
        value = []
        setattr(_local, name, value)
    return value


class _HeadShadow:
    """One head's shadowed `forward`, its `VerifyHead`, and its int8 copy for the screen."""

    # the screen with two activation rows per position (fewest survivors), with one (half the integer work), or
    # the full head: which is fastest depends on the machine and the row count
    SCREEN_NAMES = ("screen", "screen-one-row", "full")

    def __init__(self, head: torch.nn.Linear):
        self.head = weakref.ref(head)
        self.tuned = VerifyHead(choices=machine_costs(head, "verify_head"))
        self.forward = None  # the function set as `head.forward` while blocks are open
        self.users = 0
        self.int8: Int8Head | None = None
        self.int8_failed_key = None  # the weights an int8 copy could not be made of (not tried again)
        self.int8_source = None  # weak references to the weight and bias tensors `int8` (or the failure) is of
        self.screen_choices = {}  # top_k -> {rows: one of SCREEN_NAMES}, the machine's calibration tables
        self.screen_times: dict[tuple[int, int], tuple[list, ...]] = {}  # (top_k, rows) -> times of each name
        self._lock = threading.Lock()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head()
        forwards = _thread_list("forwards")
        block = forwards[-1][1] if forwards else None
        if block is None or block.shadow is not self:  # not the innermost forward of a target in an open block
            return torch.nn.Linear.forward(head, x)
        screen = block.screen
        read = None if screen is None else screen.rows_read
        if read is not None and read.numel() == x.numel() // x.shape[-1] and not bool(read.all()):
            flat = x.reshape(-1, x.shape[-1])
            inner = self.logits(flat[read], head, screen)
            out = inner.new_zeros(flat.shape[0], inner.shape[-1])
            out[read] = inner
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return self.logits(x, head, screen)

    def logits(self, x: torch.Tensor, head, screen: HeadScreen | None) -> torch.Tensor:
        """The head on `x`: screened where the call allows it and it runs, in full otherwise."""
        if screen is not None and screen.enabled:
            logits = self.screened(x, head, screen)
            if logits is not None:
                return logits
        if screen is not None:
            screen.full_calls += 1
        return self.tuned(x, head.weight, head.bias)

    def int8_head(self, head) -> Int8Head | None:
        """The head's int8 copy, made (again) if its weights changed since; None where none can be made."""
        key = Int8Head.source_key(head.weight, head.bias)
        with self._lock:
            same = self.same_source(head)
            if same and self.int8 is not None and self.int8.key == key:
                return self.int8
            if same and self.int8_failed_key == key:
                return None
            self.int8 = None  # the old copy goes before the new one is made (peak memory)
            self.int8_source = (weakref.ref(head.weight), None if head.bias is None else weakref.ref(head.bias))
            self.int8 = Int8Head.pack(head.weight.detach(), None if head.bias is None else head.bias.detach())
            self.int8_failed_key = None if self.int8 is not None else key
            return self.int8

    def same_source(self, head) -> bool:
        """Whether `head` still holds the very tensors the int8 copy was made of. The key (storage address and
        version) alone could match a replacement allocated where a freed weight was."""
        if self.int8_source is None:
            return False
        weight, bias = self.int8_source
        return weight() is head.weight and (head.bias is None if bias is None else bias() is head.bias)

    def screened(self, x: torch.Tensor, head, screen: HeadScreen) -> torch.Tensor | None:
        """The screened head's logits for `x`, or None where the full head runs (no int8 copy, measured slower for
        this row count, or a fallback of the screen)."""
        if x.dtype != torch.float32 or head.weight.dtype != torch.float32:
            return None
        int8 = self.int8_head(head)
        if int8 is None:
            return None
        rows = x.numel() // x.shape[-1]
        key = (screen.top_k, row_bucket(rows))
        choice = self.choices(screen.top_k).get(key[1])
        timed = screen.mode == "auto" and choice not in self.SCREEN_NAMES
        if timed:  # the trials: each variant in turn, `trials` times each
            with self._lock:
                times = self.screen_times.setdefault(key, tuple([] for _ in self.SCREEN_NAMES))
                choice = self.SCREEN_NAMES[min(range(len(times)), key=lambda i: len(times[i]))]
        elif screen.mode == "on" and choice in (None, "full"):
            choice = "screen"
        if choice == "full":
            if not timed:
                return None
            start = time.perf_counter()
            out = self.tuned(x, head.weight, head.bias)
            self._timed(key, choice, time.perf_counter() - start)
            screen.full_calls += 1
            return out
        start = time.perf_counter()
        flat = x.reshape(rows, x.shape[-1])
        logits, result = screened_logits(
            flat, int8, head.weight, head.bias, max_survivors=screen.max_survivors, softcap=screen.softcap,
            residual=choice == "screen", top_k=screen.top_k,
        )  # fmt: skip
        if result.fallback is not None:
            screen.fallbacks += 1
            screen.fallback_reasons.append(result.fallback)
            logits = self.tuned(x, head.weight, head.bias).reshape(rows, -1)
        if timed:
            self._timed(key, choice, time.perf_counter() - start)
        screen.calls += 1
        screen.positions += rows
        screen.survivors.extend(result.survivors)
        return logits.reshape(*x.shape[:-1], logits.shape[-1])

    def choices(self, top_k: int) -> dict:
        """`{rows: name}` decided on this machine for screens that keep `top_k` rows per position."""
        table = self.screen_choices.get(top_k)
        if table is None:
            name = "screened_head" if top_k == 1 else f"screened_head_top{top_k}"
            table = self.screen_choices[top_k] = machine_costs(self.head(), name)
        return table

    def _timed(self, key: tuple[int, int], name: str, seconds: float) -> None:
        table = self.choices(key[0])
        with self._lock:
            times = self.screen_times.setdefault(key, tuple([] for _ in self.SCREEN_NAMES))
            times[self.SCREEN_NAMES.index(name)].append(seconds)
            if min(len(t) for t in times) >= self.tuned.trials and key[1] not in table:
                best = min(range(len(times)), key=lambda i: min(times[i]))
                table[key[1]] = self.SCREEN_NAMES[best]

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
        block = next((b for b in reversed(_thread_list("blocks")) if b.model is module), None)
        _thread_list("forwards").append((module, block))

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
def columns_verify_head(model, screen: HeadScreen | None = None):
    """Within the block, `model`'s own forwards *on this thread* compute its LM head (a plain `nn.Linear` on CPU)
    through a `VerifyHead`, or through the int8 screen while `screen.enabled` is set (`HeadScreen`); nothing else
    changes. The head's module and weights are untouched; other callers of the head (a drafter sharing it, other
    threads, this thread outside `model`'s forward) run `nn.Linear`.

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
    if screen is not None:
        screen.softcap = logit_transform(model)
    blocks = _thread_list("blocks")
    block = _Block(model, shadow, screen)
    blocks.append(block)
    try:
        yield shadow.tuned
    finally:
        del blocks[max(i for i, b in enumerate(blocks) if b is block)]  # this block (blocks may nest)
        with _lock:
            _unhook(model)
            shadow.release()
        save_machine_costs()


def screen_copy_bytes(model) -> int | None:
    """Memory held by the int8 copy of `model`'s head for the screen, or None if none was made."""
    shadow = _shadows.get(model.get_output_embeddings())
    int8 = None if shadow is None else shadow.int8
    return None if int8 is None else int8.nbytes


def screen_pending(model, rows: int, top_k: int = 1) -> bool:
    """Whether `screen_head="auto"` has yet to time the screen against the full head for `rows` rows (keeping
    `top_k` rows per position) on this machine (False where the screen cannot run: no block was opened on `model`,
    not fp32, or no int8 copy possible)."""
    head = model.get_output_embeddings()
    shadow = _shadows.get(head)
    if shadow is None or head.weight.dtype != torch.float32:
        return False
    failed_key = shadow.int8_failed_key
    if failed_key is not None and shadow.same_source(head) and failed_key == Int8Head.source_key(head.weight, head.bias):
        return False
    return row_bucket(rows) not in shadow.choices(top_k)
