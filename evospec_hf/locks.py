"""`drafter_lock`: who may use a drafter's weights, shared by every `generate` call and every session on it.

Threads (a Space serves several visitors from one process): every `generate` call holds its drafter's
`drafter_lock`. Calls without a session only read the drafter's weights and share it; a call with a session swaps
weights in, so it holds the drafter alone, and so do the session's own methods (`reset`, `save_adapter`,
`load_adapter`, `applied`) and a new session wrapping the drafter. Such calls wait for each other: two threads on
one session, or two sessions on one drafter, take turns, and the drafter's own weights are back after each.
Background learning holds the drafter alone too, one update at a time, and never makes a call wait in line behind it.

It lives below `generation/` (which takes it for each call) and `evolve/` (whose sessions take it for their own
methods and their learning between calls), so that neither reaches into the other for it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch

from .utils import unwrap_peft


class DrafterLock:
    """Who uses a drafter's weights: any number of calls that only read them (`shared`), or one that changes them
    (`exclusive`: a session's call, or a session's own method). Waiting exclusive users go before new readers.

    A thread that holds the lock may open `shared` again (e.g. to generate inside `session.applied()`); asking for
    `exclusive` while holding it in any way would wait for itself, so it raises instead.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._holders: dict[int, int] = {}  # thread id -> blocks it holds
        self._exclusive: int | None = None  # the thread holding it exclusively
        self._waiting_exclusive = 0
        self._waiting = 0  # threads waiting for it in any way (a background learner yields to them)

    @contextlib.contextmanager
    def shared(self):
        me = threading.get_ident()
        with self._condition:
            if me not in self._holders:
                self._waiting += 1
                try:
                    while self._exclusive is not None or self._waiting_exclusive:
                        self._condition.wait()
                finally:
                    self._waiting -= 1
            self._holders[me] = self._holders.get(me, 0) + 1
        try:
            yield
        finally:
            self._leave(me)

    @contextlib.contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._condition:
            if me in self._holders:
                raise RuntimeError(
                    "this thread is already using the drafter (e.g. a generate call with a session inside another "
                    "call or inside `session.applied()`); a session swaps the drafter's weights and would wait for "
                    "itself."
                )
            self._waiting_exclusive += 1
            self._waiting += 1
            try:
                while self._holders:
                    self._condition.wait()
            finally:
                self._waiting_exclusive -= 1
                self._waiting -= 1
            self._holders[me], self._exclusive = 1, me
        try:
            yield
        finally:
            self._leave(me)

    @contextlib.contextmanager
    def exclusive_if_idle(self):
        """`exclusive` for a background learner: taken only when nobody holds the lock or waits for it (so it never
        makes a call wait in line); yields whether it was taken."""
        me = threading.get_ident()
        with self._condition:
            taken = not self._holders and not self._waiting
            if taken:
                self._holders[me], self._exclusive = 1, me
        try:
            yield taken
        finally:
            if taken:
                self._leave(me)

    def contended(self) -> bool:
        """Whether some thread is waiting for the lock (a call that wants the drafter)."""
        return self._waiting > 0

    def held_by_me(self) -> bool:
        return threading.get_ident() in self._holders

    def _leave(self, me: int) -> None:
        with self._condition:
            self._holders[me] -= 1
            if self._holders[me] == 0:
                del self._holders[me]
                if self._exclusive == me:
                    self._exclusive = None
            self._condition.notify_all()


_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, DrafterLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def drafter_lock(drafter) -> DrafterLock:
    """The `DrafterLock` of a drafter (the same for its peft wrapper and the model beneath)."""
    model = unwrap_peft(drafter)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = DrafterLock()
        return lock
