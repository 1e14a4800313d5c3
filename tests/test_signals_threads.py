"""Blocking calls against threads and signals: the GIL is released, EINTR is
retried per PEP 475 with the remaining timeout, a handler's exception propagates
without losing a message, removal wakes a blocked caller with EIDRM, and
msgsnd/msgrcv timeouts fire in the thread that asked for them only."""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional

import pytest

import ipcbind as ipc
from ipcbind import GETNCNT, IPC_NOWAIT, IPC_RMID, IPC_SET, IPC_STAT
from ipcbind._ffi import ffi, lib
from conftest import reap, start_child
from sysv_helpers import wait_blocked, wait_until

MAIN_TASK = f"/proc/{os.getpid()}/task/{os.getpid()}"


class HandlerError(Exception):
    """Raised by a test's signal handler."""


@pytest.fixture
def alarm() -> Iterator[Callable[..., None]]:
    """alarm(handler, first, interval=0): arm ITIMER_REAL with a SIGALRM handler;
    the timer is stopped and the old handler restored at teardown."""
    old = signal.getsignal(signal.SIGALRM)

    def arm(handler: Callable[[int, Any], None], first: float, interval: float = 0) -> None:
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, first, interval)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def task_dir(thread: threading.Thread) -> str:
    return f"/proc/self/task/{thread.native_id}"


class Caller(threading.Thread):
    """A thread running one call, keeping its result or exception and when it ended."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.ended = 0.0

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as e:  # handed to the test
            self.error = e
        self.ended = time.monotonic()


# ---- the GIL ------------------------------------------------------------------------------

def test_blocking_msgrcv_releases_the_gil(msq: int) -> None:
    """If msgrcv held the GIL, this thread could not send until the receiver's
    2 s timeout; it would then get TimeoutError instead of the message."""
    receiver = Caller(lambda: ipc.msgrcv(msq, timeout=2))
    receiver.start()
    wait_blocked(task_dir(receiver), "msgrcv")
    ipc.msgsnd(msq, 3, b"from another thread")
    receiver.join(10)
    assert receiver.error is None
    assert receiver.result == (3, b"from another thread")


def test_blocking_semop_releases_the_gil(semset: int) -> None:
    waiter = Caller(lambda: ipc.semop(semset, [(0, -1)], timeout=2))
    waiter.start()
    wait_blocked(task_dir(waiter), "semtimedop")
    ipc.semop(semset, [(0, 1)])
    waiter.join(10)
    assert waiter.error is None
    assert ipc.semctl(semset, 0, ipc.GETVAL) == 0


# ---- PEP 475 -----------------------------------------------------------------------------

RECEIVE: Dict[str, Callable[[int], Any]] = {
    "msgrcv": lambda q: ipc.msgrcv(q),
    "MessageQueue.receive": lambda q: tuple(ipc.MessageQueue.from_id(q).receive()),
}
SEND: Dict[str, Callable[[int, int, bytes], None]] = {
    "msgsnd": lambda q, mtype, data: ipc.msgsnd(q, mtype, data),
    "MessageQueue.send": lambda q, mtype, data: ipc.MessageQueue.from_id(q).send(data, mtype),
}


@pytest.mark.parametrize("via", sorted(RECEIVE))
def test_receive_is_retried_after_a_handler_that_returns(
        msq: int, alarm: Callable[..., None], via: str) -> None:
    calls: List[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        ipc.msgsnd(msq, 9, b"sent by the handler")
    alarm(handler, 0.1)
    assert RECEIVE[via](msq) == (9, b"sent by the handler")
    assert calls == [signal.SIGALRM]


@pytest.mark.parametrize("via", sorted(RECEIVE))
def test_receive_handler_exception_propagates_and_the_message_stays_queued(
        msq: int, alarm: Callable[..., None], via: str) -> None:
    def handler(signum: int, frame: Any) -> None:
        ipc.msgsnd(msq, 9, b"queued before the raise")
        raise HandlerError()
    alarm(handler, 0.1)
    with pytest.raises(HandlerError):
        RECEIVE[via](msq)
    assert ipc.msgctl(msq, IPC_STAT).qnum == 1
    assert ipc.msgrcv(msq, None, 0, IPC_NOWAIT) == (9, b"queued before the raise")


def test_timed_msgrcv_handler_exception_propagates_at_once(
        msq: int, alarm: Callable[..., None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        raise HandlerError()
    alarm(handler, 0.1)
    t0 = time.monotonic()
    with pytest.raises(HandlerError):
        ipc.msgrcv(msq, timeout=10)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("via", sorted(SEND))
def test_send_is_retried_after_a_handler_that_returns(
        msq: int, alarm: Callable[..., None], via: str) -> None:
    ipc.msgctl(msq, IPC_SET, {"qbytes": 1})
    ipc.msgsnd(msq, 1, b"a")
    calls: List[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        ipc.msgrcv(msq, None, 0, IPC_NOWAIT)   # makes room
    alarm(handler, 0.1)
    SEND[via](msq, 2, b"b")
    assert calls == [signal.SIGALRM]
    assert ipc.msgrcv(msq, None, 0, IPC_NOWAIT) == (2, b"b")


def test_semop_is_retried_after_a_handler_that_returns(semset: int, alarm: Callable[..., None]
                                                       ) -> None:
    def handler(signum: int, frame: Any) -> None:
        ipc.semop(semset, [(0, 1)])
    alarm(handler, 0.1)
    ipc.semop(semset, [(0, -1)])
    assert ipc.semctl(semset, 0, ipc.GETVAL) == 0


def test_semop_handler_exception_propagates_and_nothing_is_applied(
        semset: int, alarm: Callable[..., None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        raise HandlerError()
    alarm(handler, 0.1)
    with pytest.raises(HandlerError):
        ipc.semop(semset, [(0, 1), (0, -2)])
    assert ipc.semctl(semset, 0, ipc.GETVAL) == 0
    assert ipc.semctl(semset, 0, ipc.GETPID) == 0


def failing_handler(other: int, finish: Callable[[], None]) -> Callable[[int, Any], None]:
    """A SIGALRM handler whose own call fails (ENOMSG, caught) each time; on its
    third run it also calls ``finish``, which lets the interrupted call succeed."""
    runs: List[int] = []

    def handler(signum: int, frame: Any) -> None:
        runs.append(signum)
        with pytest.raises(ipc.NoMessageError):
            ipc.msgrcv(other, None, 0, IPC_NOWAIT)
        if len(runs) == 3:
            signal.setitimer(signal.ITIMER_REAL, 0)
            finish()
    return handler


def test_a_handler_whose_own_call_fails_does_not_change_msgrcvs_errno(
        make_queue: Callable[..., int], alarm: Callable[..., None]) -> None:
    q, other = make_queue(), make_queue()
    alarm(failing_handler(other, lambda: ipc.msgsnd(q, 5, b"at last")), 0.05, 0.05)
    assert ipc.msgrcv(q) == (5, b"at last")


def test_a_handler_whose_own_call_fails_does_not_change_msgsnds_errno(
        make_queue: Callable[..., int], alarm: Callable[..., None]) -> None:
    q, other = make_queue(), make_queue()
    ipc.msgctl(q, IPC_SET, {"qbytes": 1})
    ipc.msgsnd(q, 1, b"a")
    alarm(failing_handler(other, lambda: ipc.msgrcv(q, None, 0, IPC_NOWAIT)), 0.05, 0.05)
    ipc.msgsnd(q, 2, b"b")
    assert ipc.msgrcv(q, None, 0, IPC_NOWAIT) == (2, b"b")


def test_a_handler_whose_own_call_fails_does_not_change_queue_receives_errno(
        make_queue: Callable[..., int], alarm: Callable[..., None]) -> None:
    q, other = make_queue(), make_queue()
    alarm(failing_handler(other, lambda: ipc.msgsnd(q, 5, b"at last")), 0.05, 0.05)
    assert ipc.MessageQueue.from_id(q).receive() == (5, b"at last")


def test_a_handler_whose_own_call_fails_does_not_change_queue_sends_errno(
        make_queue: Callable[..., int], alarm: Callable[..., None]) -> None:
    q, other = make_queue(), make_queue()
    ipc.msgctl(q, IPC_SET, {"qbytes": 1})
    ipc.msgsnd(q, 1, b"a")
    alarm(failing_handler(other, lambda: ipc.msgrcv(q, None, 0, IPC_NOWAIT)), 0.05, 0.05)
    ipc.MessageQueue.from_id(q).send(b"b", 2)
    assert ipc.msgrcv(q, None, 0, IPC_NOWAIT) == (2, b"b")


def test_a_handler_whose_own_call_fails_does_not_change_semops_errno(
        semset: int, make_queue: Callable[..., int], alarm: Callable[..., None]) -> None:
    alarm(failing_handler(make_queue(), lambda: ipc.semop(semset, [(0, 1)])), 0.05, 0.05)
    ipc.semop(semset, [(0, -1)], timeout=10)
    assert ipc.semctl(semset, 0, ipc.GETVAL) == 0


class Spoiler:
    """Runs a real SIGUSR1 handler, whose own call fails with ENOMSG, right after the
    next call into the compiled shim returns: before the caller's next line, which is
    where the handler of a signal that arrived during the call runs. A profile hook
    sees the C call return and raises the signal there; signal.raise_signal runs the
    Python handler before it returns."""

    def __init__(self, empty_queue: int) -> None:
        self.empty_queue = empty_queue
        self.saved_errno_after_handler: Optional[int] = None

    def handler(self, signum: int, frame: Any) -> None:
        with pytest.raises(ipc.NoMessageError):
            ipc.msgrcv(self.empty_queue, None, 0, IPC_NOWAIT)
        self.saved_errno_after_handler = ffi.errno

    def hook(self, frame: Any, event: str, arg: Any) -> None:
        if event == "c_return" and getattr(arg, "__self__", None) is lib:
            sys.setprofile(None)
            signal.raise_signal(signal.SIGUSR1)

    def run(self, call: Callable[[], Any]) -> None:
        old = signal.signal(signal.SIGUSR1, self.handler)
        sys.setprofile(self.hook)
        try:
            call()
        finally:
            sys.setprofile(None)
            signal.signal(signal.SIGUSR1, old)


def _missing_key() -> int:
    while True:
        key = random.randrange(1, 2 ** 31)
        try:
            ipc.msgget(key)
        except FileNotFoundError:
            return key


class Objects(NamedTuple):
    """What the calls below fail on, all made before the hook is set."""

    q: int
    s: int
    gone_q: int
    gone_s: int
    missing_key: int
    missing_path: str


GET_AND_CTL_FAILURES = {
    "ftok-ENOENT": (lambda o: ipc.ftok(o.missing_path, 1), errno.ENOENT),
    "msgget-ENOENT": (lambda o: ipc.msgget(o.missing_key), errno.ENOENT),
    "semget-EINVAL": (lambda o: ipc.semget(ipc.IPC_PRIVATE, 0, ipc.IPC_CREAT | 0o600),
                      errno.EINVAL),
    "msgctl-unknown-cmd-EINVAL": (lambda o: ipc.msgctl(o.q, 0x7FFF), errno.EINVAL),
    "msgctl-IPC_SET-removed-EINVAL": (lambda o: ipc.msgctl(o.gone_q, IPC_SET, {"mode": 0o600}),
                                      errno.EINVAL),
    "semctl-SETVAL-ERANGE": (lambda o: ipc.semctl(o.s, 0, ipc.SETVAL, 40000), errno.ERANGE),
    "semctl-GETALL-removed-EINVAL": (lambda o: ipc.semctl(o.gone_s, 0, ipc.GETALL),
                                     errno.EINVAL),
    "semctl-unknown-cmd-EINVAL": (lambda o: ipc.semctl(o.s, 0, 0x7FFF), errno.EINVAL),
    "setns-EBADF": (lambda o: ipc._seam.setns_ipc(-1), errno.EBADF),
}


@pytest.mark.parametrize("case", sorted(GET_AND_CTL_FAILURES))
def test_a_handler_whose_own_call_fails_does_not_change_get_and_ctl_errnos(
        case: str, make_queue: Callable[..., int], make_semset: Callable[..., int],
        tmp_path: Path) -> None:
    call, expected = GET_AND_CTL_FAILURES[case]
    gone_q, gone_s = make_queue(), make_semset()
    ipc.msgctl(gone_q, IPC_RMID)
    ipc.semctl(gone_s, 0, IPC_RMID)
    objects = Objects(make_queue(), make_semset(), gone_q, gone_s, _missing_key(),
                      str(tmp_path / "none"))
    spoiler = Spoiler(make_queue())
    with pytest.raises(OSError) as got:
        spoiler.run(lambda: call(objects))
    assert spoiler.saved_errno_after_handler == errno.ENOMSG, "the handler did not run"
    assert got.value.errno == expected, got.value


def three_signals(alarm: Callable[..., None]) -> List[float]:
    """SIGALRM at 0.3, 0.6 and 0.9 s; the list returned gets the time.monotonic() at
    which each handler ran."""
    handled: List[float] = []

    def handler(signum: int, frame: Any) -> None:
        handled.append(time.monotonic())
        if len(handled) == 3:
            signal.setitimer(signal.ITIMER_REAL, 0)
    alarm(handler, 0.3, 0.3)
    return handled


def ended_as_retried(t0: float, handled: List[float], timeout: float) -> bool:
    """Whether a call with ``timeout`` begun at ``t0`` ended as one retried with the
    time that remained: not before ``t0 + timeout``, and before a call restarted
    from zero after the last handler could have ended, however late the handlers
    ran (the margin is the time from ``t0`` to the last handler, 0.9 s at least)."""
    end = time.monotonic()
    return len(handled) == 3 and t0 + timeout - 0.05 <= end < handled[-1] + timeout


def test_semop_timeout_is_not_restarted_by_signals(semset: int, alarm: Callable[..., None]
                                                   ) -> None:
    """Signals at 0.3, 0.6 and 0.9 s: retried with the remaining time the call ends
    near 1 s; restarted from zero it would end a second after the last signal."""
    handled = three_signals(alarm)
    t0 = time.monotonic()
    with pytest.raises(BlockingIOError) as e:
        ipc.semop(semset, [(0, -1)], timeout=1.0)
    assert ended_as_retried(t0, handled, 1.0), (t0, handled, time.monotonic())
    assert e.value.errno == errno.EAGAIN


def test_msgrcv_timeout_is_not_restarted_by_signals(msq: int, alarm: Callable[..., None]
                                                    ) -> None:
    handled = three_signals(alarm)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ipc.msgrcv(msq, timeout=1.0)
    assert ended_as_retried(t0, handled, 1.0), (t0, handled, time.monotonic())


# ---- EIDRM for a blocked caller -------------------------------------------------------

def remove_when_blocked(word: str, remove: Callable[[], None]) -> int:
    """A child that removes an object once this process's main thread sleeps in
    ``word``; it removes it anyway after 10 s so that nothing hangs."""
    def child() -> int:
        try:
            wait_blocked(MAIN_TASK, word)
        finally:
            remove()
        return 0
    return start_child(child)


def test_blocked_msgrcv_gets_eidrm_when_another_process_removes_the_queue(
        make_queue: Callable[..., int]) -> None:
    q = make_queue()
    pid = remove_when_blocked("msgrcv", lambda: ipc.msgctl(q, IPC_RMID))
    with pytest.raises(ipc.IdentifierRemovedError) as e:
        ipc.msgrcv(q)
    assert e.value.errno == errno.EIDRM
    assert f"msgrcv(msqid={q})" in str(e.value)
    assert reap(pid) == 0


def test_blocked_msgsnd_gets_eidrm_when_another_process_removes_the_full_queue(
        make_queue: Callable[..., int]) -> None:
    q = make_queue()
    ipc.msgctl(q, IPC_SET, {"qbytes": 1})
    ipc.msgsnd(q, 1, b"x")
    pid = remove_when_blocked("msgsnd", lambda: ipc.msgctl(q, IPC_RMID))
    with pytest.raises(ipc.IdentifierRemovedError) as e:
        ipc.msgsnd(q, 1, b"y")
    assert e.value.errno == errno.EIDRM
    assert reap(pid) == 0


def test_blocked_semop_gets_eidrm_when_another_process_removes_the_set(
        make_semset: Callable[..., int]) -> None:
    s = make_semset()

    def child() -> int:
        try:
            wait_until(lambda: ipc.semctl(s, 0, GETNCNT) == 1, what="semop waiting")
        finally:
            ipc.semctl(s, 0, IPC_RMID)
        return 0
    pid = start_child(child)
    with pytest.raises(ipc.IdentifierRemovedError) as e:
        ipc.semop(s, [(0, -1)])
    assert e.value.errno == errno.EIDRM
    assert reap(pid) == 0


def test_timed_msgrcv_gets_eidrm_not_timeout_when_the_queue_is_removed(
        make_queue: Callable[..., int]) -> None:
    q = make_queue()
    pid = remove_when_blocked("msgrcv", lambda: ipc.msgctl(q, IPC_RMID))
    with pytest.raises(ipc.IdentifierRemovedError):
        ipc.msgrcv(q, timeout=10)
    assert reap(pid) == 0


# ---- timeouts --------------------------------------------------------------------------------

def test_msgrcv_timeout_raises_timeouterror_and_takes_nothing(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"not the wanted type")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        ipc.msgrcv(msq, None, 2, timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 5
    assert e.value.errno == errno.ETIMEDOUT
    assert f"msgrcv(msqid={msq})" in str(e.value)
    s = ipc.msgctl(msq, IPC_STAT)
    assert (s.qnum, s.lrpid) == (1, 0)


def test_msgrcv_timeout_0_on_an_empty_queue_times_out_at_once(msq: int) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ipc.msgrcv(msq, timeout=0)
    assert time.monotonic() - t0 < 5


def test_msgrcv_with_timeout_returns_a_queued_message_at_once(msq: int) -> None:
    ipc.msgsnd(msq, 4, b"ready")
    assert ipc.msgrcv(msq, timeout=0) == (4, b"ready")


def test_msgsnd_timeout_raises_timeouterror_and_sends_nothing(msq: int) -> None:
    ipc.msgctl(msq, IPC_SET, {"qbytes": 1})
    ipc.msgsnd(msq, 1, b"x")
    with pytest.raises(TimeoutError) as e:
        ipc.msgsnd(msq, 2, b"y", timeout=0.2)
    assert e.value.errno == errno.ETIMEDOUT
    s = ipc.msgctl(msq, IPC_STAT)
    assert (s.qnum, s.cbytes) == (1, 1)
    assert ipc.msgrcv(msq, None, 0, IPC_NOWAIT) == (1, b"x")


def test_timeouts_in_several_threads_fire_each_in_its_own_thread(
        make_queue: Callable[..., int]) -> None:
    """Four threads time out together while a fifth, without a timeout, stays
    blocked until its message comes: no timer signal reaches the wrong thread."""
    shared = make_queue()
    patient_q = make_queue()
    timed = [Caller(lambda: ipc.msgrcv(shared, timeout=0.3)) for _ in range(4)]
    patient = Caller(lambda: ipc.msgrcv(patient_q))
    t0 = time.monotonic()
    for t in timed + [patient]:
        t.start()
    for t in timed:
        t.join(10)
        assert isinstance(t.error, TimeoutError)
        assert 0.25 <= t.ended - t0 < 5
    assert patient.is_alive()
    ipc.msgsnd(patient_q, 1, b"at last")
    patient.join(10)
    assert patient.error is None
    assert patient.result == (1, b"at last")


def test_many_timed_calls_in_threads_all_end(make_queue: Callable[..., int]) -> None:
    q = make_queue()
    callers = [Caller(lambda i=i: ipc.msgrcv(q, None, 1000 + i, timeout=0.01 * (i % 5)))
               for i in range(16)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(10)
        assert not c.is_alive()
        assert isinstance(c.error, TimeoutError)


def test_semop_timeouts_in_several_threads_are_eagain(semset: int) -> None:
    callers = [Caller(lambda: ipc.semop(semset, [(0, -1)], timeout=0.2)) for _ in range(4)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(10)
        assert isinstance(c.error, BlockingIOError)


# ---- a handler that receives while a received message is on its way out -----------------

@pytest.fixture
def usr1() -> Iterator[Callable[[Callable[[int, Any], None]], None]]:
    """usr1(handler): install a SIGUSR1 handler; the old one comes back at teardown."""
    old = signal.getsignal(signal.SIGUSR1)
    yield lambda handler: signal.signal(signal.SIGUSR1, handler) and None
    signal.signal(signal.SIGUSR1, old)


def send_and_signal(q: int, ack: int, count: int) -> Callable[[], int]:
    """A child's body: send message i, at once SIGUSR1 the parent, wait for its ack.

    The signal lands while the parent wakes up with the message, so its handler
    runs before the parent has copied the message out of the shim's buffer."""
    parent = os.getpid()

    def child() -> int:
        for i in range(count):
            ipc.msgsnd(q, 1 + i % 3, b"message %d" % i)
            os.kill(parent, signal.SIGUSR1)
            ipc.msgrcv(ack)
        return 0
    return child


def test_a_handler_receiving_in_the_same_thread_does_not_overwrite_the_message(
        make_queue: Callable[..., int], usr1: Callable[..., None]) -> None:
    q, other, ack = make_queue(), make_queue(), make_queue()
    ipc.msgsnd(other, 99, b"H" * 8000)
    busy = [False]

    def handler(signum: int, frame: Any) -> None:
        # The next signal can come while this handler holds other's only message (it
        # may run after the ack, on a slow machine): a nested run would find none.
        if busy[0]:
            return
        busy[0] = True
        try:
            ipc.msgsnd(other, *ipc.msgrcv(other, None, 0, IPC_NOWAIT))
        finally:
            busy[0] = False
    usr1(handler)
    pid = start_child(send_and_signal(q, ack, 40))
    got = []
    try:
        for _ in range(40):
            got.append(ipc.msgrcv(q))
            ipc.msgsnd(ack, 1, b"")
    finally:
        ipc.msgctl(ack, IPC_RMID)
        reap(pid)
    assert got == [(1 + i % 3, b"message %d" % i) for i in range(40)]


def test_a_handler_batch_receiving_does_not_overwrite_a_batch(
        make_queue: Callable[..., int], usr1: Callable[..., None]) -> None:
    from ipcbind._seam import ANY_SIZE, msgcopy_all as _msgcopy_all, msgrcv_many as _msgrcv_many
    q, other, ack = make_queue(), make_queue(), make_queue()
    for i in range(3):
        ipc.msgsnd(other, 50 + i, b"peeked %d" % i)

    def handler(signum: int, frame: Any) -> None:
        _msgcopy_all(other)
        _msgrcv_many(other, 0, ANY_SIZE, 0, IPC_NOWAIT, None)
    usr1(handler)
    pid = start_child(send_and_signal(q, ack, 40))
    got = []
    try:
        for _ in range(40):
            mtypes, text, ends, err = _msgrcv_many(q, 1, ANY_SIZE, 0, 0, None)
            got.append((mtypes, text, ends, err))
            ipc.msgsnd(ack, 1, b"")
    finally:
        ipc.msgctl(ack, IPC_RMID)
        reap(pid)
    expected = []
    for i in range(40):
        text = b"message %d" % i
        expected.append(([1 + i % 3], text, [len(text)], 0))
    assert got == expected


def test_timeouts_too_long_for_the_kernel_mean_no_limit(msq: int, semset: int) -> None:
    for timeout in (1e10, 10 ** 400, float("inf")):
        ipc.msgsnd(msq, 1, b"x", timeout=timeout)
        assert ipc.msgrcv(msq, timeout=timeout) == (1, b"x")
        ipc.semop(semset, [(0, 1)], timeout=timeout)
        ipc.semop(semset, [(0, -1)], timeout=timeout)
