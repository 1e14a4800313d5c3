"""The optional accelerator (src/accel.c, ipcbind._accel): where it is used, how it is
turned off, and what its C methods must do exactly as the Python methods do. The
whole suite runs once with it and once without (IPCBIND_ACCELERATOR=0, .ci/run)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
import textwrap
import threading
from typing import Any, Callable, List

import pytest

import ipcbind
from ipcbind import Message, MessageQueue, SemaphoreSet
from conftest import run_in_child
from sysv_helpers import wait_blocked

ACCELERATED = [("MessageQueue", "send"), ("MessageQueue", "receive"), ("Semaphore", "acquire"),
               ("Semaphore", "release"), ("Semaphore", "__enter__"), ("Semaphore", "__exit__")]

builds_accelerator = pytest.mark.skipif(
    platform.python_implementation() != "CPython"
    or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="the accelerator is built for CPython with a GIL only")


def method_kinds(**env: str) -> List[str]:
    """The type name of each accelerated method, in a fresh interpreter with ``env``."""
    code = textwrap.dedent(f"""
        import ipcbind
        for cls, name in {ACCELERATED!r}:
            print(type(getattr(ipcbind, cls).__dict__[name]).__name__)
        print(ipcbind._seam.ACCEL is not None)
        """)
    clean = {k: v for k, v in os.environ.items() if k != "IPCBIND_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-c", code], env=dict(clean, **env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@builds_accelerator
def test_accelerator_replaces_the_hot_methods_where_it_is_built() -> None:
    assert method_kinds() == ["method_descriptor"] * len(ACCELERATED) + ["True"]


def test_accelerator_variable_0_leaves_the_python_methods() -> None:
    assert method_kinds(IPCBIND_ACCELERATOR="0") == ["function"] * len(ACCELERATED) + ["False"]


def test_accelerator_refuses_a_table_of_calls_of_another_layout(q: MessageQueue) -> None:
    # An accelerator left from an older build must not call into a newer shim:
    # ipcbind then runs without it, with a warning.
    from ipcbind._ffi import ffi

    accel = ipcbind._seam.ACCEL
    if accel is None:
        pytest.skip("the accelerator is off or not built")
    other = ffi.new("size_t[8]")  # a table whose size field says 0 bytes
    with pytest.raises(ImportError, match="table of calls has 0 bytes"):
        accel.bind(int(ffi.cast("uintptr_t", other)))
    q.send(b"still bound to the shim")
    assert q.receive() == (1, b"still bound to the shim")


def test_accelerated_methods_keep_the_python_docstrings() -> None:
    assert MessageQueue.receive.__doc__ is not None
    assert MessageQueue.receive.__doc__.startswith("Takes one message from the queue.")


# ---- arguments the C methods leave to Python ---------------------------------------------

def test_send_with_an_unknown_keyword_raises_type_error(q: MessageQueue) -> None:
    with pytest.raises(TypeError, match="kind"):
        q.send(b"x", kind=1)  # type: ignore[call-arg]
    assert len(q) == 0


def test_receive_given_mtype_twice_raises_type_error(q: MessageQueue) -> None:
    q.send(b"x")
    with pytest.raises(TypeError, match="mtype"):
        q.receive(0, mtype=0)  # type: ignore[misc]
    assert len(q) == 1


def test_acquire_with_too_many_arguments_raises_type_error(semset: int) -> None:
    sem = SemaphoreSet.from_id(semset)[0]
    with pytest.raises(TypeError):
        sem.acquire(1, False, None, True, "extra")  # type: ignore[call-arg]


def test_receive_by_keyword_returns_a_message(q: MessageQueue) -> None:
    q.send(b"abc", mtype=7)
    got = q.receive(block=False, mtype=7)
    assert type(got) is Message and got == (7, b"abc") and got.data == b"abc"


def test_methods_of_a_subclass_use_its_queue(make_mq: Callable[..., MessageQueue]) -> None:
    class Tagged(MessageQueue):
        pass

    sub = Tagged.from_id(make_mq().id)
    sub.send(b"via the subclass", 3)
    assert sub.receive(block=False) == (3, b"via the subclass")


def test_release_by_keyword_with_undo_returns_the_adjustment(semset: int) -> None:
    sem = SemaphoreSet.from_id(semset)[0]
    sem.release(delta=2, undo=True)
    assert ipcbind._seam.ledger() == {semset: [-2]}
    sem.acquire(delta=2, undo=True)
    assert ipcbind._seam.ledger() == {}


# ---- blocking without a timeout releases the GIL ------------------------------------------
# In a child with a deadline: a call that kept the GIL while it waits would hang
# the thread that should wake it.

def blocked_then_woken(call: Callable[[], Any], where: str, wake: Callable[[], None]) -> int:
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.append(call()), daemon=True)
    t.start()
    wait_blocked(f"/proc/self/task/{t.native_id}", where)
    wake()
    t.join(10)
    return 0 if len(got) == 1 and not t.is_alive() else 1


def test_blocking_receive_releases_the_gil(q: MessageQueue) -> None:
    def child() -> int:
        return blocked_then_woken(q.receive, "msgrcv", lambda: q.send(b"wake", 2))
    assert run_in_child(child, timeout=30) == 0
    assert len(q) == 0


def test_blocking_send_to_a_full_queue_releases_the_gil(q: MessageQueue) -> None:
    filled = 0
    while True:
        try:
            q.send(b"x" * 1024, block=False)
        except BlockingIOError:
            break
        filled += 1

    def child() -> int:
        return blocked_then_woken(lambda: q.send(b"y" * 1024), "msgsnd", q.receive)
    assert run_in_child(child, timeout=30) == 0
    assert len(q) == filled


def test_blocking_acquire_releases_the_gil(semset: int) -> None:
    sem = SemaphoreSet.from_id(semset)[0]

    def child() -> int:
        return blocked_then_woken(sem.acquire, "semtimedop", sem.release)
    assert run_in_child(child, timeout=30) == 0
    assert sem.value == 0


# ---- reference counts ---------------------------------------------------------------------

def test_calls_on_every_path_leave_reference_counts_unchanged(
        q: MessageQueue, semset: int) -> None:
    # A C method that kept or dropped one reference too many would move a count
    # by the number of calls (or crash); the Python methods must not either.
    sem = SemaphoreSet.from_id(semset)[0]
    data = b"counted"
    mtype = int("70001")  # not a cached small int: only this test refers to it
    watched = [q, sem, data, Message, mtype]
    # Shared by the whole interpreter, these move by a few for other reasons; a
    # reference kept or dropped per call moves them by the number of calls.
    singletons = [None, True, False]

    def every_path() -> None:
        q.send(data, mtype)
        q.receive()                                  # taken in C
        q.send(data, mtype=mtype, block=False)
        q.receive(mtype, block=True)
        for call in (lambda: q.receive(block=False),     # ENOMSG: the errno to Python
                     lambda: q.receive(True, False),     # bool: Python's own path
                     lambda: q.send("text")):            # str: a TypeError from Python
            try:
                call()
            except (ipcbind.NoMessageError, TypeError):
                pass
        sem.release(undo=True)
        with sem:
            pass
        sem.acquire(undo=True)
        try:
            sem.acquire(block=False)                 # EAGAIN: the errno to Python
        except BlockingIOError:
            pass

    every_path()
    before = [sys.getrefcount(o) for o in watched]
    shared = [sys.getrefcount(o) for o in singletons]
    calls = 2000
    for _ in range(calls):
        every_path()
    assert [sys.getrefcount(o) for o in watched] == before
    moved = [sys.getrefcount(o) - n for o, n in zip(singletons, shared)]
    assert all(abs(m) < calls // 2 for m in moved), moved
