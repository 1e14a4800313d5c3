"""Calls repeated many times do not grow the process.

Each test runs in a forked child: after a warm-up that lets every buffer reach its
working size, it measures the resident set size (/proc/self/statm) and the POSIX
timers the process owns (/proc/self/timers, where the kernel has it), makes many
more calls, and measures again. The growth allowed, 2 MiB, is what a leak of 21
bytes per call shows after 100,000 calls (the default) and of 2 bytes per call
after the million calls that ``pytest --stress`` makes of each kind (twice that
for ``peek_all``, which makes half as many calls); any block glibc's malloc hands
out takes at least 32.
"""

from __future__ import annotations

import gc
import os
import struct
import threading
from typing import Callable, Dict, List, Optional

import pytest

import ipcbind
from ipcbind import (
    IPC_INFO,
    IPC_STAT,
    MessageQueue,
    NoMessageError,
    SemaphoreSet,
    TooBigError,
)
from conftest import run_in_child

pytestmark = pytest.mark.stress

GROWTH_LIMIT = 2 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
MSGMAX = ipcbind.msgctl(0, IPC_INFO)[1].msgmax
# From empty to the largest message the kernel takes: the receive buffers grow to
# msgmax and the batch buffers are trimmed again after large batches.
PAYLOADS = [bytes(range(256)) * (size // 256) + bytes(size % 256)
            for size in (0, 1, 100, 1000, MSGMAX)]
FIGURES = struct.Struct("=qqqq")  # RSS before, after; timers before, after (-1: unknown)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def timers() -> int:
    """POSIX timers of this process, -1 where the kernel does not list them."""
    try:
        with open("/proc/self/timers") as f:
            return sum(1 for line in f if line.startswith("ID:"))
    except FileNotFoundError:
        return -1


def measure(run: Callable[[int], None], warmup: int, count: int, timeout: float) -> List[int]:
    """Runs run(warmup) then run(count) in a forked child; returns RSS and timer
    counts measured between and after."""
    r, w = os.pipe()
    try:
        def child() -> int:
            os.close(r)
            run(warmup)
            gc.collect()
            before, timers_before = rss(), timers()
            run(count)
            gc.collect()
            os.write(w, FIGURES.pack(before, rss(), timers_before, timers()))
            return 0

        status = run_in_child(child, timeout=timeout)
        os.close(w)
        w = -1
        assert status == 0, f"the measuring child failed with status {status}"
        with os.fdopen(r, "rb") as f:
            r = -1
            return list(FIGURES.unpack(f.read()))
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def assert_no_growth(what: str, figures: List[int], platform: Optional[int] = None) -> None:
    """``platform``: what the same loop costs without ipcbind (bytes), not counted."""
    before, after, timers_before, timers_after = figures
    own = "" if platform is None else f", {platform / 1024:+.0f} KiB of it the platform's own"
    print(f"{what}: RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
          f"({(after - before) / 1024:+.0f} KiB{own}); POSIX timers {timers_before} -> "
          f"{timers_after}")
    platform = platform or 0
    assert after - before - platform < GROWTH_LIMIT, (
        f"{what}: the process grew by {(after - before - platform) / 1024:.0f} KiB "
        f"more than the same loop without ipcbind")
    assert timers_after == timers_before, (
        f"{what}: {timers_after - timers_before} POSIX timer(s) left behind")


# ---- the kinds of calls: each kind(q, s, n) makes about n calls into ipcbind ----------

def preload(q: MessageQueue, count: int) -> None:
    for i in range(count):
        q.send(PAYLOADS[i % len(PAYLOADS)][:1000], 1 + i)


def send_receive(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    for i in range(n // 2):
        q.send(PAYLOADS[i % len(PAYLOADS)], 1 + i % 3)
        q.receive()


def msgsnd_msgrcv(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    for i in range(n // 2):
        ipcbind.msgsnd(q.id, 1 + i % 3, PAYLOADS[i % len(PAYLOADS)])
        ipcbind.msgrcv(q.id, MSGMAX if i % 2 else None, -3)


def peek(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    preload(q, 3)
    for i in range(n):
        q.peek(i % 3)


def peek_all(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    # Each call grows the copy buffer on the way as it meets a longer message.
    preload(q, 3)
    for _ in range(n):
        q.peek_all()


def batches(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    small = [(1 + j, PAYLOADS[1]) for j in range(4)]
    large = [(1 + j, PAYLOADS[3]) for j in range(4)]
    for i in range(n // 2):
        q.send_many(large if i % 2 else small)
        q.receive_many(4)


def semaphores(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    sem = s[0]
    for _ in range(n // 4):
        sem.acquire(undo=True)
        sem.release(undo=True)
        s.op([(0, -1), (1, -1)], undo=True)
        ipcbind.semop(s.id, [(0, 1, ipcbind.SEM_UNDO), (1, 1, ipcbind.SEM_UNDO)])


def timed(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    sem = s[0]
    for i in range(n // 4):
        q.send(PAYLOADS[i % len(PAYLOADS)], timeout=10)
        q.receive(timeout=10)
        sem.acquire(timeout=10)
        sem.release()


def failures(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    q.send(PAYLOADS[3], 9)
    sem = s[0]
    sem.value = 0
    for _ in range(n // 4):
        try:
            q.receive(5, block=False)
        except NoMessageError:
            pass
        try:
            q.receive(9, maxsize=10)
        except TooBigError:
            pass
        try:
            q.peek(5)
        except NoMessageError:
            pass
        try:
            sem.acquire(block=False)
        except BlockingIOError:
            pass


def status(q: MessageQueue, s: SemaphoreSet, n: int) -> None:
    for _ in range(n // 4):
        q.stat()
        ipcbind.msgctl(q.id, IPC_STAT)
        s.values
        s.stat()


KINDS: Dict[str, Callable[[MessageQueue, SemaphoreSet, int], None]] = {
    f.__name__: f for f in (send_receive, msgsnd_msgrcv, peek, peek_all, batches,
                            semaphores, timed, failures, status)}


# Each peek_all makes eight system calls: half as many keep its time near the others'.
SLOW = {"peek_all": 2}


def calls(stress: bool) -> int:
    return 1_000_000 if stress else 100_000


@pytest.mark.parametrize("kind", list(KINDS))
def test_repeated_calls_do_not_grow_the_process(
        kind: str, make_queue: Callable[..., int], make_semset: Callable[..., int],
        stress: bool) -> None:
    q = MessageQueue.from_id(make_queue())
    s = SemaphoreSet.from_id(make_semset(2))
    s.values = [1, 1]
    n = calls(stress) // SLOW.get(kind, 1)
    figures = measure(lambda count: KINDS[kind](q, s, count), n // 10, n,
                      timeout=600 if stress else 120)
    assert_no_growth(f"{n} calls ({kind})", figures)


def test_threads_that_receive_once_and_exit_do_not_grow_the_process(
        make_queue: Callable[..., int], stress: bool) -> None:
    # Each thread gets buffers of its own (a receive slot grown to the message, a
    # batch for peek_all), which only the thread's exit can free.
    q = MessageQueue.from_id(make_queue())
    preload(q, 3)

    def one() -> None:
        q.receive(100, timeout=10)
        q.peek_all()

    def run(count: int) -> None:
        for _ in range(count):
            q.send(PAYLOADS[-1], 100)
            t = threading.Thread(target=one)
            t.start()
            t.join()

    def idle(count: int) -> None:
        for _ in range(count):
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()

    # Threads may cost the platform memory of their own: qemu-user keeps some 280
    # KiB of every guest thread that has exited. Only growth beyond that is ours.
    n = 20_000 if stress else 2_000
    timeout = 600 if stress else 120
    before, after, _, _ = measure(idle, n // 10, n, timeout=timeout)
    assert_no_growth(f"{n} threads", measure(run, n // 10, n, timeout=timeout),
                     platform=max(0, after - before))


def test_timeouts_that_expire_leave_nothing_behind(
        make_queue: Callable[..., int], make_semset: Callable[..., int], stress: bool) -> None:
    # An expired timeout leaves through the EINTR path of the timer's signal.
    q = MessageQueue.from_id(make_queue())
    sem = SemaphoreSet.from_id(make_semset())[0]

    def run(count: int) -> None:
        for _ in range(count // 2):
            try:
                q.receive(timeout=0.001)
            except TimeoutError:
                pass
            try:
                sem.acquire(timeout=0.001)
            except TimeoutError:
                pass

    n = 10_000 if stress else 600
    assert_no_growth(f"{n} expired timeouts",
                     measure(run, n // 10, n, timeout=600 if stress else 120))
