"""A received message waits in a buffer of the calling thread until Python copies it
out; a signal handler that receives on the same thread in between must not overwrite it."""

from __future__ import annotations

import signal
import struct
import time
from typing import Callable, List

import pytest

import ipcbind
from ipcbind import IPC_NOWAIT, NoMessageError

N = 1500  # 8-byte messages: well inside a default queue's 16 KiB


def test_handler_receiving_between_call_and_copy_neither_loses_nor_duplicates(msq: int) -> None:
    # Python runs signal handlers right after a call into C returns, which is
    # exactly when the message is still in the shim's per-thread buffer.
    for seq in range(N):
        ipcbind.msgsnd(msq, 1, struct.pack(">Q", seq))
    in_handler: List[int] = []
    depth = [0]

    def take_one(signum: int, frame: object) -> None:
        # A handler outlasting the timer's interval is interrupted by the next one;
        # on a slow machine (an emulator) that nesting must stop somewhere.
        if depth[0] >= 100:
            return
        depth[0] += 1
        try:
            in_handler.append(struct.unpack(">Q", ipcbind.msgrcv(msq, flags=IPC_NOWAIT)[1])[0])
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
                in_main.append(struct.unpack(">Q", ipcbind.msgrcv(msq, flags=IPC_NOWAIT)[1])[0])
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
    from ipcbind import syscalls

    outer, inner = make_queue(), make_queue()
    for seq in range(50):
        ipcbind.msgsnd(outer, 1 + seq, struct.pack(">Q", seq))
        ipcbind.msgsnd(inner, 100 + seq, struct.pack(">Q", 1000 + seq))
    in_handler = []

    def copy_other(signum: int, frame: object) -> None:
        in_handler.append(syscalls._msgcopy_all(inner))

    old = signal.signal(signal.SIGALRM, copy_other)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)  # longer than one copy
        copies = [syscalls._msgcopy_all(outer) for _ in range(300)]
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
    lent = [lib.ipcb_recv(msq, 0, IPC_NOWAIT) for _ in range(depth)]
    try:
        assert [m.err for m in lent] == [0] * depth
        got = [(m.mtype, struct.unpack(">Q", ffi.unpack(m.mtext, m.len))[0]) for m in lent]
    finally:
        for m in lent:
            m.lent = 0
    assert got == [(1 + seq, seq) for seq in range(depth)]
