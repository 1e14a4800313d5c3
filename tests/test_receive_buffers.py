"""A received message waits in a buffer of the calling thread until Python copies it
out; a signal handler that receives on the same thread in between must not overwrite it."""

from __future__ import annotations

import signal
import struct
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

    def take_one(signum: int, frame: object) -> None:
        try:
            in_handler.append(struct.unpack(">Q", ipcbind.msgrcv(msq, flags=IPC_NOWAIT)[1])[0])
        except NoMessageError:
            pass

    in_main: List[int] = []
    old = signal.signal(signal.SIGALRM, take_one)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
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
