"""`BackgroundLearner`: the thread that runs a session's learning between calls.

After a call, the session starts it (`start`) when work is owed. The thread asks the session for its next job
(`next_job`) and runs the jobs one at a time, each with the drafter held alone. It takes the drafter only when no
call holds it or waits for it (`DrafterLock.exclusive_if_idle`), so it never makes a call wait in line, and it gives
the drafter back after every job; a job abandons its work half-way when its `should_stop()` turns true (a call
wants the drafter, or the learner was paused). The thread ends when no job is left, when `pause` stops it (a call on
the session is about to start), and with the interpreter. What made it fail is raised again on the caller's thread,
by `raise_error`.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable

from ..locks import DrafterLock

_LEARNING: weakref.WeakKeyDictionary[threading.Thread, threading.Event] = weakref.WeakKeyDictionary()


@atexit.register
def _stop_learning_at_exit() -> None:
    """Background learning stops with the interpreter (a daemon thread killed inside a torch op can abort it)."""
    for thread, stop in list(_LEARNING.items()):
        stop.set()
        thread.join(timeout=5)


class BackgroundLearner:
    """Runs one session's jobs on a background thread (at most one thread at a time).

    Args:
        lock: the drafter's `DrafterLock`.
        next_job: the session's next job, or None when none is left. Called on the thread before each job (and by
            `start`, to see whether there is work); a job is a callable that takes `should_stop`.
    """

    def __init__(self, lock: DrafterLock, next_job: Callable[[], Callable | None]):
        self.lock = lock
        self.next_job = next_job
        self.thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Starts the thread, unless it runs or no job is waiting."""
        with self._guard:
            if self.thread is None and self.next_job() is not None:
                self._stop = threading.Event()
                self.thread = threading.Thread(target=self._run, args=(self._stop,), name="evospec-learn", daemon=True)
                self.thread.start()
                _LEARNING[self.thread] = self._stop

    def pause(self) -> float:
        """Stops the thread now and waits for it to let go of the drafter: at most the rest of one job's forward
        pass (it cannot hold the drafter when this thread does, so then it does not wait). Returns the seconds
        waited. The jobs it had not done are still owed: the next `start` runs them."""
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return 0.0
        started = time.perf_counter()
        self._stop.set()
        if not self.lock.held_by_me():  # (else it would wait for this thread's own lock)
            thread.join()
        return time.perf_counter() - started

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until no job is left (the thread still yields to calls on other threads); False if `timeout`
        seconds passed first."""
        thread = self.thread
        if thread is not None and self.lock.held_by_me():
            raise RuntimeError(
                "wait_learning() cannot run while this thread holds the drafter: it would wait for itself."
            )
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        return True

    def raise_error(self) -> None:
        """Re-raises, on the caller's thread, what made the thread fail (once)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("evospec_hf's learning between calls failed") from error

    def _run(self, stop: threading.Event) -> None:
        def should_stop() -> bool:
            return stop.is_set() or self.lock.contended()

        try:
            while not stop.is_set():
                with self._guard:
                    job = self.next_job()
                    if job is None:
                        self.thread = None
                        return
                with self.lock.exclusive_if_idle() as taken:
                    if taken:
                        job(should_stop)
                if not taken:  # a call uses or wants the drafter: come back when it is free
                    stop.wait(0.02)
        except BaseException as err:  # noqa: BLE001 - re-raised on a caller's thread by `raise_error`
            self._error = err
        with self._guard:  # stopped (or failed): the next `start` starts a new thread
            if self.thread is threading.current_thread():
                self.thread = None
