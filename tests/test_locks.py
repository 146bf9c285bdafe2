"""`drafter_lock` on its own: one lock per drafter, shared by readers, held alone by a writer."""

import threading
import time

import pytest

from evospec_hf.evolve.adapter_store import with_lora
from evospec_hf.locks import DrafterLock, drafter_lock

from .conftest import tiny_llama


def test_a_drafter_and_its_peft_wrapper_have_one_lock():
    drafter = tiny_llama(seed=0)
    lock = drafter_lock(drafter)
    assert drafter_lock(drafter) is lock and drafter_lock(with_lora(drafter, rank=4)) is lock
    assert drafter_lock(tiny_llama(seed=0)) is not lock


def test_readers_share_and_a_writer_waits_for_them():
    lock, order = DrafterLock(), []

    def write():
        with lock.exclusive():
            order.append("writer")

    with lock.shared():
        with lock.shared():  # the same thread again (e.g. generate inside `session.applied()`)
            pass
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.1)
        assert lock.contended()  # the writer waits
        with lock.exclusive_if_idle() as taken:
            assert not taken  # a background learner never goes first
        order.append("reader done")
    writer.join(10)
    assert order == ["reader done", "writer"]


def test_asking_for_it_alone_while_holding_it_is_refused():
    lock = DrafterLock()
    with lock.shared():
        with pytest.raises(RuntimeError, match="would wait for itself"):
            with lock.exclusive():
                pass
    with lock.exclusive_if_idle() as taken:
        assert taken and lock.held_by_me()
    assert not lock.held_by_me()
