"""MSG_COPY reads by position, so a queue that changes during a whole-queue copy can
yield a list that never existed. The copy must notice, even when IPC_STAT cannot."""

from __future__ import annotations

import os
import signal
import struct
from typing import Callable, List, Optional, Tuple

import ipcbind
from ipcbind import GETNCNT, IPC_NOWAIT, MSG_COPY, SETVAL, _seam
from sysv_helpers import wait_until

N = 200
ROUNDS = 20
COPIES_PER_ROUND = 10


def _rotate_gated(q: int, gate: int) -> None:
    """For each unit taken from ``gate``: take the head and append a message of the
    same size, with the next sequence number."""
    seq = N
    while True:
        ipcbind.semop(gate, [(0, -1)])
        ipcbind.msgrcv(q)
        ipcbind.msgsnd(q, 1, struct.pack(">Q", seq))
        seq += 1


Copy = Tuple[List[int], bytes, List[int]]


def _seqs(copy: Copy) -> List[int]:
    mtypes, text, _ = copy
    return [struct.unpack(">Q", text[i * 8:i * 8 + 8])[0] for i in range(len(mtypes))]


def _untorn(seqs: List[int]) -> bool:
    # Between its receive and its send the consumer leaves N - 1 messages.
    return len(seqs) >= N - 1 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def _head(q: int) -> int:
    return int(struct.unpack(">Q", ipcbind.msgrcv(q, None, 0, MSG_COPY | IPC_NOWAIT)[1])[0])


def test_copy_of_whole_queue_is_never_torn_by_a_rotating_consumer(
        msq: int, make_semset: Callable[..., int]) -> None:
    # A consumer taking the head and a producer adding a message of the same size,
    # within the same second and from the same process, leave every field IPC_STAT
    # shows as it was: only the messages themselves tell. The rotator turns only while
    # the gate holds units, so the test drives the rounds: in each, copies race a
    # rotator seen to be turning (any copy returned must be whole), then one copy is
    # taken with the rotator seen waiting at the gate (it must be returned, whole).
    gate = make_semset()
    for seq in range(N):
        ipcbind.msgsnd(msq, 1, struct.pack(">Q", seq))
    pid = os.fork()
    if pid == 0:
        try:
            _rotate_gated(msq, gate)
        finally:
            os._exit(0)
    raced = torn = 0
    try:
        for _ in range(ROUNDS):
            start = _head(msq)
            ipcbind.semctl(gate, 0, SETVAL, 30000)
            wait_until(lambda: _head(msq) != start, what="the rotator turning")
            for _ in range(COPIES_PER_ROUND):
                got = _seam.msgcopy_all(msq)
                if got is not None:
                    raced += 1
                    torn += not _untorn(_seqs(got))
            ipcbind.semctl(gate, 0, SETVAL, 0)
            wait_until(lambda: ipcbind.semctl(gate, 0, GETNCNT) == 1,
                       what="the rotator waiting at the gate")
            still: Optional[Copy] = _seam.msgcopy_all(msq)
            assert still is not None, "a copy of a queue nobody touches was refused"
            assert _seqs(still) == list(range(_head(msq), _head(msq) + N))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert torn == 0, f"{torn} of {raced} copies taken while the queue turned were torn"
