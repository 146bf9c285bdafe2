"""`BackgroundLearner` on its own, with a list of jobs for a session: it runs them in order on its own thread, only
while no call holds or wants the drafter, stops when paused, and hands an error back to the caller."""

import threading
import time
import weakref

import pytest

from evospec_hf.evolve import learner as learner_module
from evospec_hf.evolve.learner import BackgroundLearner
from evospec_hf.locks import DrafterLock


class Jobs:
    """A session's owed work: `pending` items, each done by one job (taken off the list when it runs)."""

    def __init__(self, items, work=None):
        self.pending, self.done = list(items), []
        self.work = work or (lambda item, should_stop: None)

    def next_job(self):
        if not self.pending:
            return None

        def job(should_stop):
            item = self.pending[0]
            self.work(item, should_stop)
            self.done.append((item, threading.get_ident()))
            self.pending.pop(0)

        return job


def test_it_runs_the_jobs_in_order_off_the_calling_thread_then_ends():
    jobs = Jobs(range(5))
    learner = BackgroundLearner(DrafterLock(), jobs.next_job)
    learner.start()
    assert learner.wait(timeout=30)
    assert [item for item, _ in jobs.done] == [0, 1, 2, 3, 4]
    assert all(thread != threading.get_ident() for _, thread in jobs.done)
    assert learner.thread is None
    learner.start()  # no work left: no thread
    assert learner.thread is None


def test_it_waits_while_a_call_holds_the_drafter():
    lock, jobs = DrafterLock(), Jobs(range(3))
    learner = BackgroundLearner(lock, jobs.next_job)
    with lock.shared():  # a call drafting
        learner.start()
        time.sleep(0.2)
        assert jobs.done == []
    assert learner.wait(timeout=30) and len(jobs.done) == 3


def test_pause_stops_it_halfway_and_the_rest_runs_after_the_next_start():
    started = threading.Event()

    def long_update(item, should_stop):  # an update that gives up as soon as it should
        started.set()
        while item == 0 and not should_stop():
            time.sleep(0.005)

    jobs = Jobs(range(3), long_update)
    learner = BackgroundLearner(DrafterLock(), jobs.next_job)
    learner.start()
    assert started.wait(30)
    assert learner.pause() >= 0 and learner.thread is None
    assert [item for item, _ in jobs.done] == [0] and jobs.pending == [1, 2]  # 0 gave up early, 1 and 2 are owed
    learner.start()
    assert learner.wait(timeout=30) and [item for item, _ in jobs.done] == [0, 1, 2]


def test_a_call_waiting_for_the_drafter_makes_a_job_stop():
    lock, seen = DrafterLock(), {}
    running = threading.Event()

    def update(item, should_stop):
        running.set()
        deadline = time.time() + 30
        while not should_stop() and time.time() < deadline:
            time.sleep(0.005)
        seen["stopped"] = should_stop()

    learner = BackgroundLearner(lock, Jobs([0], update).next_job)
    learner.start()
    assert running.wait(30)
    with lock.exclusive():  # a call wants the drafter: the job gives it up, then the call has it
        assert seen["stopped"]
    learner.pause()


def test_an_error_is_raised_on_the_callers_thread_once():
    def failing(item, should_stop):
        raise ValueError("bad update")

    learner = BackgroundLearner(DrafterLock(), Jobs([0], failing).next_job)
    learner.start()
    assert learner.wait(timeout=30) and learner.thread is None
    with pytest.raises(RuntimeError, match="learning between calls failed") as info:
        learner.raise_error()
    assert isinstance(info.value.__cause__, ValueError)
    learner.raise_error()  # once


def test_waiting_while_holding_the_drafter_is_refused():
    lock, jobs = DrafterLock(), Jobs(range(2))
    learner = BackgroundLearner(lock, jobs.next_job)
    with lock.shared():
        learner.start()
        with pytest.raises(RuntimeError, match="would wait for itself"):
            learner.wait()
        assert learner.pause() >= 0  # it cannot have the drafter now, so pausing does not wait for it
    learner.pause()


def test_the_exit_hook_stops_a_running_thread(monkeypatch):
    monkeypatch.setattr(learner_module, "_LEARNING", weakref.WeakKeyDictionary())  # (other tests' threads run on)

    def endless(item, should_stop):
        while not should_stop():
            time.sleep(0.005)

    learner = BackgroundLearner(DrafterLock(), Jobs([0], endless).next_job)
    learner.start()
    thread = learner.thread
    assert thread in learner_module._LEARNING
    learner_module._stop_learning_at_exit()
    assert not thread.is_alive()
