"""Interoperability with C programs and with util-linux's ipcs: the same kernel
objects, seen from both sides, agree byte for byte and field for field."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Callable, Dict, List, Tuple

import pytest

import ipcbind as ipc
from ipcbind import GETALL, GETNCNT, GETPID, GETZCNT, IPC_NOWAIT, IPC_STAT, MSG_COPY
from conftest import CC, qemu_reads_lrpid_as_0, reap, start_child
from sysv_helpers import semop_then_exit, wait_until

IPCS = shutil.which("ipcs")
needs_cc = pytest.mark.skipif(CC is None, reason="needs a C compiler (gcc or cc)")
needs_ipcs = pytest.mark.skipif(IPCS is None, reason="needs util-linux's ipcs")

# The messages the C sender sends, in order; a C long mtype, NULs in the text.
C_MESSAGES: List[Tuple[int, bytes]] = [
    (1, b"hello\0world"),
    (2 ** 63 - 1, b""),
    (42, bytes(range(256))),
    (2 ** 40, b"\0" * 7),
    (3, bytes((i * 31 + 7) & 0xFF for i in range(4000))),
]

SENDER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/msg.h>

struct m { long mtype; char text[4000]; };

static int put(int q, long mtype, const char *text, size_t len)
{
    static struct m b;
    b.mtype = mtype;
    memcpy(b.text, text, len);
    if (msgsnd(q, &b, len, 0)) { perror("msgsnd"); return 1; }
    return 0;
}

int main(int argc, char **argv)
{
    int q = atoi(argv[1]);
    char all[256], zeros[7] = {0}, pattern[4000];
    int i;
    for (i = 0; i < 256; i++) all[i] = (char)i;
    for (i = 0; i < 4000; i++) pattern[i] = (char)((i * 31 + 7) & 0xff);
    return put(q, 1, "hello\0world", 11) || put(q, LONG_MAX, "", 0) ||
           put(q, 42, all, 256) || put(q, 1L << 40, zeros, 7) ||
           put(q, 3, pattern, 4000);
}
"""

RECEIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/msg.h>

struct m { long mtype; unsigned char text[8192]; };

int main(int argc, char **argv)
{
    int q = atoi(argv[1]), n = atoi(argv[2]), i;
    static struct m b;
    for (i = 0; i < n; i++) {
        ssize_t len = msgrcv(q, &b, sizeof b.text, 0, IPC_NOWAIT);
        ssize_t j;
        if (len < 0) { perror("msgrcv"); return 1; }
        printf("%ld %zd ", b.mtype, len);
        for (j = 0; j < len; j++) printf("%02x", b.text[j]);
        printf("\n");
    }
    return 0;
}
"""

SEMOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/sem.h>

int main(int argc, char **argv)
{
    int s = atoi(argv[1]);
    struct sembuf ops[2] = { { 0, 5, 0 }, { 1, 2, SEM_UNDO } };
    if (semop(s, ops, 2)) { perror("semop"); return 1; }
    return 0;
}
"""


def run(*argv: object) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- C programs -------------------------------------------------------------------------

@needs_cc
def test_messages_sent_by_c_are_read_back_exactly(msq: int, build: Callable[[str, str], str]
                                                  ) -> None:
    run(build("sender", SENDER_C), msq)
    got = [ipc.msgrcv(msq, None, 0, IPC_NOWAIT) for _ in C_MESSAGES]
    assert got == C_MESSAGES
    assert ipc.msgctl(msq, IPC_STAT).qnum == 0


@needs_cc
def test_messages_sent_by_c_can_be_peeked_with_msg_copy(msq: int,
                                                        build: Callable[[str, str], str]) -> None:
    run(build("sender", SENDER_C), msq)
    try:
        got = [ipc.msgrcv(msq, None, i, MSG_COPY | IPC_NOWAIT) for i in range(len(C_MESSAGES))]
    except ipc.NotSupportedError:
        pytest.skip("kernel without CONFIG_CHECKPOINT_RESTORE: MSG_COPY gives ENOSYS")
    assert got == C_MESSAGES
    assert ipc.msgctl(msq, IPC_STAT).qnum == len(C_MESSAGES)


@needs_cc
def test_messages_sent_by_python_are_read_exactly_by_c(msq: int,
                                                       build: Callable[[str, str], str]) -> None:
    for mtype, data in C_MESSAGES:
        ipc.msgsnd(msq, mtype, data)
    out = run(build("receiver", RECEIVER_C), msq, len(C_MESSAGES)).splitlines()
    assert out == [f"{t} {len(d)} {d.hex()}" for t, d in C_MESSAGES]


@needs_cc
def test_semop_by_c_with_sem_undo_is_seen_and_undone(make_semset: Callable[..., int],
                                                     build: Callable[[str, str], str]) -> None:
    s = make_semset(2)
    exe = build("semop", SEMOP_C)
    pid = start_child(lambda: os.execv(exe, [exe, str(s)]) or 1)
    assert reap(pid) == 0
    assert ipc.semctl(s, 0, GETALL) == [5, 0]
    assert ipc.semctl(s, 0, GETPID) == ipc.semctl(s, 1, GETPID) == pid


# ---- ipcs ---------------------------------------------------------------------------------

def fields(text: str) -> Dict[str, str]:
    """name=value pairs from ipcs -i output ("nsems = 3" included)."""
    return dict(re.findall(r"(\w+)\s*=\s*([^\s,]+)", text))


@needs_ipcs
@qemu_reads_lrpid_as_0
def test_ipcs_q_i_agrees_with_msgctl(make_queue: Callable[..., int]) -> None:
    q = make_queue(mode=0o640)
    ipc.msgsnd(q, 1, b"abc")
    ipc.msgsnd(q, 2, b"\0" * 10)
    pid = start_child(lambda: 0 if ipc.msgrcv(q, None, 1) == (1, b"abc") else 1)
    assert reap(pid) == 0
    f = fields(run(IPCS, "-q", "-i", q))
    s = ipc.msgctl(q, IPC_STAT)
    assert int(f["msqid"]) == q
    assert (int(f["uid"]), int(f["gid"]), int(f["cuid"]), int(f["cgid"])) == (
        s.uid, s.gid, s.cuid, s.cgid)
    assert int(f["mode"], 8) == s.mode == 0o640
    assert (int(f["cbytes"]), int(f["qbytes"]), int(f["qnum"])) == (s.cbytes, s.qbytes, s.qnum)
    assert (int(f["lspid"]), int(f["lrpid"])) == (s.lspid, s.lrpid) == (os.getpid(), pid)


@needs_ipcs
def test_ipcs_q_row_agrees_with_msgctl(make_queue: Callable[..., int]) -> None:
    q = make_queue(mode=0o604)
    for _ in range(3):
        ipc.msgsnd(q, 1, b"12345")
    rows = [line.split() for line in run(IPCS, "-q").splitlines()]
    row = next(r for r in rows if len(r) >= 6 and r[1] == str(q))
    s = ipc.msgctl(q, IPC_STAT)
    assert int(row[0], 16) == s.key
    assert int(row[3], 8) == s.mode
    assert (int(row[4]), int(row[5])) == (s.cbytes, s.qnum) == (15, 3)


@needs_ipcs
def test_ipcs_s_i_agrees_with_semctl(make_semset: Callable[..., int]) -> None:
    s = make_semset(3, mode=0o640)
    ipc.semctl(s, 0, ipc.SETALL, [1, 0, 7])
    ipc.semop(s, [(2, 1)])
    waiters = [start_child(lambda: semop_then_exit(s, [(1, -1)])),
               start_child(lambda: semop_then_exit(s, [(0, 0)]))]
    try:
        wait_until(lambda: (ipc.semctl(s, 1, GETNCNT), ipc.semctl(s, 0, GETZCNT)) == (1, 1),
                   what="both children waiting")
        out = run(IPCS, "-s", "-i", s)
    finally:
        ipc.semop(s, [(1, 1), (0, -1)])
        for pid in waiters:
            assert reap(pid) == 0
    f = fields(out)
    st = ipc.semctl(s, 0, IPC_STAT)
    assert int(f["semid"]) == s
    assert (int(f["uid"]), int(f["gid"]), int(f["cuid"]), int(f["cgid"])) == (
        st.uid, st.gid, st.cuid, st.cgid)
    assert int(f["mode"], 8) == st.mode == 0o640
    assert int(f["nsems"]) == st.nsems == 3
    table = [line.split() for line in out.splitlines() if re.match(r"^\d+\s+\d+\s+\d+", line)]
    assert [[int(v) for v in row[:5]] for row in table] == [
        [0, 1, 0, 1, os.getpid()],
        [1, 0, 1, 0, os.getpid()],
        [2, 8, 0, 0, os.getpid()],
    ]
