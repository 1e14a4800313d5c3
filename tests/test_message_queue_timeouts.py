"""MessageQueue timeouts against the real kernel: they fire, they do not poll, they
wake on arrival, they lose and duplicate nothing across many threads, and the
program's own signal handlers keep working. Bounds are generous (seconds): the
machine is shared; the real latency is measured by bench/timeout_latency.py."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from ipcbind import MessageQueue, NoMessageError

SLACK = 2.0  # seconds a wake-up may be late on a busy machine


def fill(q: MessageQueue) -> None:
    room = q.stat().qbytes
    while room:
        n = min(room, 8192)
        q.send(b"f" * n)
        room -= n


def send_later(q: MessageQueue, delay: float, data: bytes = b"late", mtype: int = 1) -> None:
    threading.Timer(delay, q.send, args=(data, mtype)).start()


# ---- receive ----------------------------------------------------------------------

def test_receive_timeout_raises_timeout_error_after_the_deadline(q: MessageQueue) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        q.receive(timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.3 + SLACK


def test_receive_timeout_error_is_an_oserror_with_etimedout(q: MessageQueue) -> None:
    with pytest.raises(TimeoutError) as e:
        q.receive(timeout=0.01)
    assert e.value.errno == errno.ETIMEDOUT
    assert f"msqid={q.id}" in str(e.value)


def test_receive_timeout_returns_a_message_already_there(q: MessageQueue) -> None:
    q.send(b"ready")
    assert q.receive(timeout=5).data == b"ready"


def test_receive_timeout_wakes_when_a_message_arrives(q: MessageQueue) -> None:
    send_later(q, 0.2)
    start = time.monotonic()
    assert q.receive(timeout=30).data == b"late"
    assert time.monotonic() - start < 0.2 + SLACK


def test_receive_timeout_wakes_for_a_message_from_another_process(q: MessageQueue) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(0.2)
            q.send(b"from child")
        finally:
            os._exit(0)
    try:
        start = time.monotonic()
        assert q.receive(timeout=30).data == b"from child"
        assert time.monotonic() - start < 0.2 + SLACK
    finally:
        os.waitpid(pid, 0)


def test_receive_timeout_with_type_ignores_other_types(q: MessageQueue) -> None:
    q.send(b"other", 1)
    with pytest.raises(TimeoutError):
        q.receive(2, timeout=0.1)
    assert len(q) == 1


def test_receive_timeout_takes_nothing_when_it_fires(q: MessageQueue) -> None:
    with pytest.raises(TimeoutError):
        q.receive(timeout=0.05)
    q.send(b"after")
    assert q.receive(block=False).data == b"after"


def test_receive_timeout_zero_on_empty_raises_timeout_at_once(q: MessageQueue) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        q.receive(timeout=0)
    assert time.monotonic() - start < SLACK


def test_receive_timeout_zero_returns_a_queued_message(q: MessageQueue) -> None:
    q.send(b"now")
    assert q.receive(timeout=0).data == b"now"


def test_receive_waiting_does_not_poll(q: MessageQueue) -> None:
    """A receiver waiting 2 s must use well under 1% of a core (< 20 ms)."""
    cpu = time.thread_time()
    with pytest.raises(TimeoutError):
        q.receive(timeout=2)
    assert time.thread_time() - cpu < 0.02


def test_receive_timeout_with_options(q: MessageQueue) -> None:
    q.send(b"0123456789", 3)
    assert q.receive(3, timeout=1, maxsize=4, truncate=True).data == b"0123"
    q.send(b"a", 1)
    q.send(b"b", 2)
    assert q.receive(1, timeout=1, except_type=True).mtype == 2


BAD_TIMEOUTS = [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError),
                (True, TypeError), (False, TypeError)]


@pytest.mark.parametrize("timeout, exc", BAD_TIMEOUTS)
def test_receive_refuses_a_bad_timeout(q: MessageQueue, timeout: object, exc: type) -> None:
    with pytest.raises(exc, match="timeout"):
        q.receive(timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout, exc", BAD_TIMEOUTS)
def test_send_and_batches_refuse_a_bad_timeout(q: MessageQueue, timeout: object,
                                               exc: type) -> None:
    for call in (lambda: q.send(b"x", timeout=timeout),  # type: ignore[arg-type]
                 lambda: q.send_many([(1, b"x")], timeout=timeout),  # type: ignore[arg-type]
                 lambda: q.receive_many(1, timeout=timeout)):  # type: ignore[arg-type]
        with pytest.raises(exc, match="timeout"):
            call()
    assert len(q) == 0


def test_receive_timeout_needs_block(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="block"):
        q.receive(block=False, timeout=1)


def test_infinite_timeout_waits_like_no_timeout(q: MessageQueue) -> None:
    send_later(q, 0.1)
    assert q.receive(timeout=float("inf")).data == b"late"


def test_receive_many_timeout_raises_timeout_error(q: MessageQueue) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        q.receive_many(5, timeout=0.2)
    assert 0.2 <= time.monotonic() - start < 0.2 + SLACK


def test_receive_many_timeout_zero_raises_timeout_on_empty(q: MessageQueue) -> None:
    with pytest.raises(TimeoutError):
        q.receive_many(5, timeout=0)


def test_receive_many_timeout_wakes_on_arrival(q: MessageQueue) -> None:
    send_later(q, 0.2)
    assert q.receive_many(5, timeout=30) == [(1, b"late")]


# ---- send -------------------------------------------------------------------------

def test_send_timeout_on_a_full_queue_raises_timeout_and_sends_nothing(q: MessageQueue) -> None:
    fill(q)
    before = q.stat()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        q.send(b"no room", timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 0.3 + SLACK
    after = q.stat()
    assert (after.qnum, after.cbytes) == (before.qnum, before.cbytes)


def test_send_timeout_wakes_when_room_appears(q: MessageQueue) -> None:
    fill(q)
    threading.Timer(0.2, q.receive).start()
    start = time.monotonic()
    q.send(b"fits now", timeout=30)
    assert time.monotonic() - start < 0.2 + SLACK
    assert q.peek_all()[-1].data == b"fits now"


def test_send_timeout_zero_on_a_full_queue_raises_timeout(q: MessageQueue) -> None:
    fill(q)
    with pytest.raises(TimeoutError):
        q.send(b"x", timeout=0)


def test_send_timeout_zero_sends_when_there_is_room(q: MessageQueue) -> None:
    q.send(b"x", timeout=0)
    assert len(q) == 1


def test_send_timeout_needs_block(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="block"):
        q.send(b"x", block=False, timeout=1)


def test_send_timeout_still_refuses_a_type_below_1(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="mtype"):
        q.send(b"x", 0, timeout=1)


# ---- threads ----------------------------------------------------------------------

def test_threads_waiting_at_once_each_time_out_at_their_own_deadline(q: MessageQueue) -> None:
    timeouts = [0.2, 0.5, 0.8, 1.1]
    elapsed: List[float] = [0.0] * len(timeouts)
    errors: List[BaseException] = []

    def wait(i: int) -> None:
        start = time.monotonic()
        try:
            q.receive(timeout=timeouts[i])
        except TimeoutError:
            elapsed[i] = time.monotonic() - start
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(timeouts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for timeout, took in zip(timeouts, elapsed):
        assert timeout <= took < timeout + SLACK


def test_many_threads_with_short_timeouts_lose_and_duplicate_nothing(q: MessageQueue) -> None:
    """A producer process sends numbered messages in bursts and pauses; receiver
    threads keep receiving with short timeouts, so timers fire all the time,
    also while messages arrive. Every number must arrive exactly once."""
    total = 3000
    got: List[int] = []
    timeouts = [0]
    lock = threading.Lock()
    done = threading.Event()

    def consume(timeout: float) -> None:
        while not done.is_set():
            try:
                n = int(q.receive(timeout=timeout).data)
            except TimeoutError:
                with lock:
                    timeouts[0] += 1
                continue
            with lock:
                got.append(n)
                if len(got) == total:
                    done.set()

    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            for i in range(total):
                q.send(str(i).encode())
                if i % 50 == 49:
                    time.sleep(0.005)
            code = 0
        finally:
            os._exit(code)
    threads = [threading.Thread(target=consume, args=(0.001 * (k + 1),)) for k in range(6)]
    for t in threads:
        t.start()
    try:
        assert done.wait(60), f"only {len(got)} of {total} messages arrived"
    finally:
        done.set()
        for t in threads:
            t.join(10)
        os.waitpid(pid, 0)
    assert sorted(got) == list(range(total))
    assert timeouts[0] > 0
    with pytest.raises(NoMessageError):
        q.receive(block=False)


# ---- signals ----------------------------------------------------------------------

def test_ctrl_c_interrupts_a_receive_with_a_long_timeout(tmp_path: Path) -> None:
    """A process waiting in receive(timeout=60) gets SIGINT, as from Ctrl-C: it must
    raise KeyboardInterrupt at once and remove its queue on the way out."""
    code = textwrap.dedent("""
        import sys, time
        from ipcbind import MessageQueue
        with MessageQueue.create() as q:
            print(q.id, flush=True)
            start = time.monotonic()
            try:
                q.receive(timeout=60)
            except KeyboardInterrupt:
                print(f"interrupted after {time.monotonic() - start:.3f}", flush=True)
                sys.exit(3)
    """)
    # Run outside the source tree, where "-c" would import the package uncompiled.
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert child.stdout is not None
        msqid = int(child.stdout.readline())
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 3, err
    assert float(out.split()[-1]) < 0.3 + SLACK
    with pytest.raises(OSError):
        MessageQueue.from_id(msqid).stat()


@contextmanager
def signal_after(delay: float, handler: Callable[..., None]) -> Iterator[None]:
    """Install handler for SIGUSR1 and send SIGUSR1 to this thread after delay.
    The timer is joined before the old handler is back, so that a late signal
    cannot meet the default action (which ends the process)."""
    old = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(delay, signal.pthread_kill,
                            args=(threading.get_ident(), signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        signal.signal(signal.SIGUSR1, old)


def test_a_custom_signal_handler_runs_and_the_receive_goes_on(q: MessageQueue) -> None:
    ran: List[float] = []

    def handler(*_: object) -> None:
        ran.append(time.monotonic())
        send_later(q, 0.2)  # the message comes only after the handler has run

    start = time.monotonic()
    with signal_after(0.2, handler):
        assert q.receive(timeout=30).data == b"late"
    assert len(ran) == 1
    assert ran[0] - start < 0.2 + SLACK


def test_a_signal_handler_keeps_the_deadline(q: MessageQueue) -> None:
    ran: List[int] = []
    start = time.monotonic()
    with signal_after(0.2, lambda *_: ran.append(1)):
        with pytest.raises(TimeoutError):
            q.receive(timeout=1.5)
        assert 1.5 <= time.monotonic() - start < 1.5 + SLACK
    assert ran == [1]


class Stop(Exception):
    pass


def raise_stop(*_: object) -> None:
    raise Stop


def test_an_exception_from_a_signal_handler_propagates_out_of_receive(q: MessageQueue) -> None:
    start = time.monotonic()
    with signal_after(0.2, raise_stop):
        with pytest.raises(Stop):
            q.receive(timeout=30)
    assert time.monotonic() - start < 0.2 + SLACK
    q.send(b"kept")
    assert q.receive(block=False).data == b"kept"


def test_an_exception_from_a_signal_handler_propagates_out_of_send(q: MessageQueue) -> None:
    fill(q)
    with signal_after(0.2, raise_stop):
        with pytest.raises(Stop):
            q.send(b"x", timeout=30)


# The same without a timeout: the single-call fast paths must retry after EINTR too.

def test_a_signal_handler_runs_and_a_receive_without_timeout_goes_on(q: MessageQueue) -> None:
    ran: List[int] = []

    def handler(*_: object) -> None:
        ran.append(1)
        send_later(q, 0.2)

    with signal_after(0.2, handler):
        assert q.receive().data == b"late"
    assert ran == [1]


def test_an_exception_from_a_signal_handler_propagates_out_of_receive_without_timeout(
        q: MessageQueue) -> None:
    with signal_after(0.2, raise_stop):
        with pytest.raises(Stop):
            q.receive()


def test_a_signal_handler_runs_and_a_send_without_timeout_goes_on(q: MessageQueue) -> None:
    fill(q)
    ran: List[int] = []

    def handler(*_: object) -> None:
        ran.append(1)
        threading.Timer(0.2, q.receive).start()

    with signal_after(0.2, handler):
        q.send(b"after the signal")
    assert ran == [1]
    assert q.peek_all()[-1].data == b"after the signal"


def test_an_exception_from_a_signal_handler_propagates_out_of_send_without_timeout(
        q: MessageQueue) -> None:
    fill(q)
    with signal_after(0.2, raise_stop):
        with pytest.raises(Stop):
            q.send(b"x")
