"""A received message waits in a buffer of the calling thread until Python copies it
out; a signal handler that receives on the same thread in between must not overwrite it."""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from typing import Callable, List, Tuple

import pytest

import ipcbind
from ipcbind import IPC_NOWAIT, NoMessageError
from conftest import run_in_child
from sysv_helpers import unshare_with_msg_limits

N = 1500  # 8-byte messages: well inside a default queue's 16 KiB


@pytest.mark.parametrize("via", ["msgrcv", "MessageQueue.receive"])
def test_handler_receiving_between_call_and_copy_neither_loses_nor_duplicates(
        msq: int, via: str) -> None:
    # Python runs signal handlers right after a call into C returns, which is
    # exactly when the message is still in the shim's per-thread buffer.
    for seq in range(N):
        ipcbind.msgsnd(msq, 1, struct.pack(">Q", seq))
    q = ipcbind.MessageQueue.from_id(msq)

    def receive() -> int:
        if via == "msgrcv":
            data = ipcbind.msgrcv(msq, flags=IPC_NOWAIT)[1]
        else:
            data = q.receive(block=False).data
        return int(struct.unpack(">Q", data)[0])

    in_handler: List[int] = []
    depth = [0]

    def take_one(signum: int, frame: object) -> None:
        # A handler outlasting the timer's interval is interrupted by the next one;
        # on a slow machine (an emulator) that nesting must stop somewhere.
        if depth[0] >= 100:
            return
        depth[0] += 1
        try:
            in_handler.append(receive())
        except NoMessageError:
            pass
        finally:
            depth[0] -= 1

    # An interval of a few receives: often between a call and its copy, rarely more
    # than one handler deep.
    start = time.perf_counter()
    for _ in range(100):
        ipcbind.msgsnd(msq, 2, b"x")
        ipcbind.msgrcv(msq, None, 2)
    interval = max(0.0001, 3 * (time.perf_counter() - start) / 100)
    in_main: List[int] = []
    old = signal.signal(signal.SIGALRM, take_one)
    try:
        signal.setitimer(signal.ITIMER_REAL, interval, interval)
        while True:
            try:
                in_main.append(receive())
            except NoMessageError:
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if not in_handler:
        pytest.skip("the timer never interrupted a receive: nothing was tested")
    got = sorted(in_main + in_handler)
    assert got == list(range(N)), (
        f"{len(got) - len(set(got))} duplicated, {N - len(set(got))} lost")


def test_copy_in_handler_between_call_and_read_leaves_the_outer_copy_intact(
        make_queue: Callable[..., int]) -> None:
    from ipcbind import _seam

    outer, inner = make_queue(), make_queue()
    for seq in range(50):
        ipcbind.msgsnd(outer, 1 + seq, struct.pack(">Q", seq))
        ipcbind.msgsnd(inner, 100 + seq, struct.pack(">Q", 1000 + seq))
    in_handler = []

    def copy_other(signum: int, frame: object) -> None:
        in_handler.append(_seam.msgcopy_all(inner))

    old = signal.signal(signal.SIGALRM, copy_other)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)  # longer than one copy
        copies = [_seam.msgcopy_all(outer) for _ in range(300)]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if not in_handler:
        pytest.skip("the timer never interrupted a copy: nothing was tested")
    want = (list(range(1, 51)), b"".join(struct.pack(">Q", s) for s in range(50)),
            [8 * (i + 1) for i in range(50)])
    assert [c for c in copies if c != want] == []


@pytest.mark.parametrize("depth", [1, 5, 40])
def test_receives_nested_deeper_than_any_fixed_number_of_buffers_keep_their_messages(
        msq: int, depth: int) -> None:
    # Handlers nest when signals come faster than a handler runs (an emulated CPU,
    # a loaded machine): each nested receive takes a buffer while every outer one
    # is still lent. Done here straight on the shim, without giving any back.
    from ipcbind._ffi import ffi, lib

    for seq in range(depth):
        ipcbind.msgsnd(msq, 1 + seq, struct.pack(">Q", seq))
    lent = [lib.ipcb_msgrcv(msq, lib.IPCB_ANY_SIZE, 0, IPC_NOWAIT, -1) for _ in range(depth)]
    try:
        assert [m.err for m in lent] == [0] * depth
        got = [(m.mtype, struct.unpack(">Q", ffi.unpack(m.mtext, m.len))[0]) for m in lent]
    finally:
        for m in lent:
            m.lent = 0
    assert got == [(1 + seq, seq) for seq in range(depth)]


def _received(r: int) -> Tuple[int, bytes]:
    """The message of an ipcb_recv_packed result, given back to the shim (the layout
    is src/shim.c's, in the constants the seam takes from it)."""
    from ipcbind import _seam

    if r >= 0:
        chunk = r & _seam._CHUNK_MASK
        got = (r >> _seam._SHIFT, _seam._ARENA[chunk + _seam._TEXT:r & _seam._LOW])
        _seam._ARENA[chunk] = _seam._GIVE_BACK
        return got
    assert r <= _seam._RECV_RARE, f"errno {-r}"
    m = _seam.lib.ipcb_rslot(_seam._RECV_RARE - r)
    got = (m.mtype, _seam.ffi.unpack(m.mtext, m.len))
    m.lent = 0
    return got


@pytest.mark.parametrize("depth", [1, 5, 40])
def test_packed_receives_nested_without_giving_back_keep_their_messages(
        msq: int, depth: int) -> None:
    from ipcbind._seam import _RECV_NOWAIT, _recv_packed

    for seq in range(depth):
        ipcbind.msgsnd(msq, 1 + seq, struct.pack(">Q", seq))
    lent = [_recv_packed(msq | _RECV_NOWAIT) for _ in range(depth)]
    assert all(r >= 0 for r in lent), "a message outside the arena"
    got = [(t, struct.unpack(">Q", d)[0]) for t, d in map(_received, lent)]
    assert got == [(1 + seq, seq) for seq in range(depth)]


def test_receive_slots_beyond_the_arena_come_from_malloc_and_keep_their_messages(
        make_queue: Callable[..., int]) -> None:
    # Two threads keep 700 slots lent each: 1400 fixed buffers, more than the arena's
    # 1024 chunks, so some are allocated outside it and take the slower result.
    from ipcbind._seam import _RECV_NOWAIT, _recv_packed

    per_thread = 700
    queues = [make_queue(), make_queue()]
    for msq in queues:
        for seq in range(per_thread):
            ipcbind.msgsnd(msq, 1 + seq % 5, struct.pack(">Q", seq))
    results: List[List[int]] = [[], []]
    barrier = threading.Barrier(2)

    def hold(i: int) -> None:
        results[i] = [_recv_packed(queues[i] | _RECV_NOWAIT) for _ in range(per_thread)]
        barrier.wait(timeout=30)  # both hold their slots at once
        results[i] = [_received(r) for r in results[i]]  # type: ignore[misc]

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    want = [(1 + seq % 5, struct.pack(">Q", seq)) for seq in range(per_thread)]
    assert results == [want, want]


def test_threads_give_their_arena_chunks_back_when_they_exit(q: ipcbind.MessageQueue) -> None:
    # Without that, 1100 threads that received one message each would have used up
    # the arena's 1024 chunks, and the last one's message would come outside it.
    from ipcbind._seam import _RECV_NOWAIT, _recv_packed

    got: List[ipcbind.Message] = []
    for i in range(1100):
        q.send(b"%d" % i)
        t = threading.Thread(target=lambda: got.append(q.receive()))
        t.start()
        t.join(timeout=30)
    assert [m.data for m in got] == [b"%d" % i for i in range(1100)]
    q.send(b"last", 7)
    last: List[int] = []
    t = threading.Thread(target=lambda: last.append(_recv_packed(q.id | _RECV_NOWAIT)))
    t.start()
    t.join(timeout=30)
    assert last[0] >= 0
    assert _received(last[0]) == (7, b"last")


@pytest.mark.parametrize("mtype", [2 ** 31 - 1, 2 ** 31, 2 ** 62])
def test_receive_returns_any_mtype(q: ipcbind.MessageQueue, mtype: int) -> None:
    q.send(b"abc", mtype)
    assert q.receive() == (mtype, b"abc")


@pytest.mark.parametrize("wanted", [-(2 ** 31), -(2 ** 31) - 1, 2 ** 31 - 1, 2 ** 31, 2 ** 40])
def test_receive_by_type_takes_the_right_message_for_any_mtype(
        q: ipcbind.MessageQueue, wanted: int) -> None:
    for mtype in (1, 2 ** 31 - 1, 2 ** 31, 2 ** 40):
        q.send(b"%d" % mtype, mtype)
    want = 1 if wanted < 0 else wanted
    assert q.receive(wanted, block=False) == (want, b"%d" % want)


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="needs root (to unshare an IPC namespace and raise msgmax)")
def test_receive_takes_messages_longer_than_the_fixed_buffer_and_short_ones_after() -> None:
    def child() -> int:
        from ipcbind._seam import _RECV_NOWAIT, _recv_packed

        unshare_with_msg_limits(msgmax=200000, msgmnb=400000)
        with ipcbind.MessageQueue.create() as q:
            big = os.urandom(150000)
            for mtype, data in ((1, b"small"), (2, big), (3, big[:8193]), (4, b"x" * 8192),
                                (5, b"after")):
                q.send(data, mtype)
            assert q.receive() == (1, b"small")
            assert q.receive() == (2, big)
            assert q.receive() == (3, big[:8193])
            assert q.receive() == (4, b"x" * 8192)
            r = _recv_packed(q.id | _RECV_NOWAIT)
            assert r >= 0, "a short message after long ones left outside the arena"
            assert _received(r) == (5, b"after")
        return 0
    assert run_in_child(child, timeout=30) == 0
