"""A send refused for its size copies nothing first, and no send keeps a huge buffer."""

from __future__ import annotations

import gc

import pytest

from conftest import run_in_child
from nschild import needs_ns_root

from ipcbind import IPC_CREAT, IPC_PRIVATE, IPC_RMID, MessageQueue, msgctl, msgget

SIZE = 256 << 20


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def _send_and_measure(limits: bool) -> int:
    """In a child: send SIZE bytes; 0 if refused or sent as expected and RSS came back."""
    if limits:
        from sysv_helpers import unshare_with_msg_limits
        unshare_with_msg_limits(SIZE, SIZE)
    q = MessageQueue(msgget(IPC_PRIVATE, IPC_CREAT | 0o600))
    try:
        before = _rss()
        data = bytearray(SIZE)
        try:
            q.send(data)
            sent = True
        except ValueError:
            sent = False
        del data
        gc.collect()  # the refused message's traceback holds it in a cycle until then
        grown = _rss() - before
        if sent != limits:
            return 2
        # With the buffer given back, an empty message still has its type to copy.
        q.send(b"", block=False)
        return 0 if grown < 32 << 20 else 3
    finally:
        msgctl(q.id, IPC_RMID)


def test_send_refused_for_exceeding_msgmax_keeps_no_copy_of_the_message() -> None:
    assert run_in_child(lambda: _send_and_measure(False), timeout=60) == 0


@needs_ns_root
def test_send_of_a_huge_message_keeps_no_buffer_of_its_size_afterwards() -> None:
    assert run_in_child(lambda: _send_and_measure(True), timeout=60) == 0
