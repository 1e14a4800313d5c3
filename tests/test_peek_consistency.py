"""MSG_COPY reads by position, so a queue that changes during a whole-queue copy can
yield a list that never existed. The copy must notice, even when IPC_STAT cannot."""

from __future__ import annotations

import os
import signal
import struct
import time

import ipcbind
from ipcbind import syscalls

N = 200


def _rotate_forever(q: int) -> None:
    """Take the head and append a message of the same size, with the next sequence number."""
    seq = N
    while True:
        ipcbind.msgrcv(q)
        ipcbind.msgsnd(q, 1, struct.pack(">Q", seq))
        seq += 1


def test_copy_of_whole_queue_is_never_torn_by_a_rotating_consumer(msq: int) -> None:
    # A consumer taking the head and a producer adding a message of the same size,
    # within the same second and from the same process, leave every field IPC_STAT
    # shows as it was: only the messages themselves tell.
    for seq in range(N):
        ipcbind.msgsnd(msq, 1, struct.pack(">Q", seq))
    pid = os.fork()
    if pid == 0:
        try:
            _rotate_forever(msq)
        finally:
            os._exit(0)
    copies = torn = 0
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            got = syscalls._msgcopy_all(msq)
            if got is None:
                continue
            copies += 1
            seqs = [struct.unpack(">Q", got[1][i * 8:i * 8 + 8])[0] for i in range(len(got[0]))]
            # Between its receive and its send the consumer leaves N - 1 messages.
            if len(seqs) < N - 1 or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                torn += 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert copies > 0, "no copy was consistent: the test proved nothing"
    assert torn == 0, f"{torn} of {copies} copies were torn"
