"""Interoperability with C programs and with util-linux's ipcs: the same kernel
objects, seen from both sides, agree byte for byte and field for field."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from typing import Callable, Dict, Iterator, List, Tuple

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


# ---- shared memory ---------------------------------------------------------------------------

SHM_WRITER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>

int main(int argc, char **argv)
{
    int id = atoi(argv[1]);
    size_t size = (size_t)atol(argv[2]), i;
    unsigned char *p = shmat(id, NULL, 0);
    if (p == (void *)-1) { perror("shmat"); return 1; }
    for (i = 0; i < size; i++) p[i] = (unsigned char)((i * 31 + 7) & 0xff);
    memcpy(p, "from C\0", 7);
    if (shmdt(p)) { perror("shmdt"); return 1; }
    return 0;
}
"""

SHM_READER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/shm.h>

int main(int argc, char **argv)
{
    int id = atoi(argv[1]);
    size_t n = (size_t)atol(argv[2]), i;
    const unsigned char *p = shmat(id, NULL, SHM_RDONLY);
    if (p == (void *)-1) { perror("shmat"); return 1; }
    for (i = 0; i < n; i++) printf("%02x", p[i]);
    printf("\n");
    return shmdt(p) ? 1 : 0;
}
"""

SHM_HOLDER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/shm.h>

int main(int argc, char **argv)
{
    void *p = shmat(atoi(argv[1]), NULL, 0);
    char c;
    if (p == (void *)-1) { perror("shmat"); return 1; }
    printf("attached\n");
    fflush(stdout);
    return read(0, &c, 1) < 0;   /* attached until stdin closes */
}
"""


def pattern(size: int) -> bytes:
    return b"from C\0" + bytes((i * 31 + 7) & 0xFF for i in range(7, size))


@pytest.fixture
def shm_segment() -> Iterator[ipc.SharedMemory]:
    with ipc.SharedMemory.create(3 * 4096 + 5, mode=0o640) as s:
        yield s


@needs_cc
def test_bytes_written_by_c_are_read_back_exactly(shm_segment: ipc.SharedMemory,
                                                  build: Callable[[str, str], str]) -> None:
    run(build("shm_writer", SHM_WRITER_C), shm_segment.id, shm_segment.size)
    assert shm_segment.read() == pattern(shm_segment.size)
    with shm_segment.attach(readonly=True) as att, memoryview(att) as view:
        assert view.tobytes() == pattern(shm_segment.size)


@needs_cc
def test_bytes_written_by_python_are_read_exactly_by_c(shm_segment: ipc.SharedMemory,
                                                       build: Callable[[str, str], str]) -> None:
    data = bytes(range(256)) * 40 + b"\0end"
    shm_segment.write(data)
    with shm_segment.attach() as att, memoryview(att) as view:
        view[-5:] = b"tail!"
    out = run(build("shm_reader", SHM_READER_C), shm_segment.id, shm_segment.size).strip()
    assert bytes.fromhex(out) == data + bytes(shm_segment.size - len(data) - 5) + b"tail!"


def _c_holding(build: Callable[[str, str], str], shmid: int) -> "subprocess.Popen[str]":
    holder = subprocess.Popen([build("shm_holder", SHM_HOLDER_C), str(shmid)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == "attached\n"
    return holder


def _let_go(holder: "subprocess.Popen[str]") -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


@needs_cc
@needs_ipcs
def test_ipcs_m_i_agrees_with_shmctl(shm_segment: ipc.SharedMemory,
                                     build: Callable[[str, str], str]) -> None:
    holder = _c_holding(build, shm_segment.id)
    try:
        shm_segment.write(b"x")  # attached here too: nattch 2
        # A forked child inherits the attachment and its exec detaches it, making it
        # the lpid; subprocess forks on 3.9 and vforks since 3.10: know ipcs's pid.
        ipcs = subprocess.Popen([IPCS, "-m", "-i", str(shm_segment.id)],
                                stdout=subprocess.PIPE, text=True)
        out, _ = ipcs.communicate(timeout=30)
        assert ipcs.returncode == 0
        ds = shm_segment.stat()
    finally:
        _let_go(holder)
    f = fields(out)
    assert int(f["shmid"]) == shm_segment.id
    assert (int(f["uid"]), int(f["gid"]), int(f["cuid"]), int(f["cgid"])) == (
        ds.uid, ds.gid, ds.cuid, ds.cgid)
    assert int(f["access_perms"], 8) == ds.mode == 0o640
    assert (int(f["bytes"]), int(f["nattch"])) == (ds.segsz, ds.nattch) == (shm_segment.size, 2)
    assert (int(f["cpid"]), int(f["lpid"])) == (ds.cpid, ds.lpid)
    assert ds.cpid == os.getpid() and ds.lpid in (os.getpid(), ipcs.pid)
    for name, t in (("att_time", ds.atime), ("change_time", ds.ctime)):
        shown = re.search(rf"{name}=(.*\S)", out)
        assert shown is not None and shown.group(1) == time.ctime(t)


@needs_cc
@needs_ipcs
def test_ipcs_m_row_shows_a_segment_removed_while_attached_as_dest(
        shm_segment: ipc.SharedMemory, build: Callable[[str, str], str]) -> None:
    holder = _c_holding(build, shm_segment.id)
    try:
        ipc.shmctl(shm_segment.id, ipc.IPC_RMID)
        rows = [line.split() for line in run(IPCS, "-m").splitlines()]
        ds = shm_segment.stat()
        mode = fields(run(IPCS, "-m", "-i", shm_segment.id))["mode"]
    finally:
        _let_go(holder)
    row = next(r for r in rows if len(r) >= 6 and r[1] == str(shm_segment.id))
    assert int(row[0], 16) == ds.key == 0
    assert (int(row[3], 8), int(row[4]), int(row[5])) == (ds.mode, ds.segsz, ds.nattch)
    assert row[6:] == ["dest"] and ds.dest
    assert int(mode, 8) == 0o1000 | ds.mode  # SHM_DEST, which ShmidDs.dest reads


@needs_ipcs
def test_a_segment_made_by_ipcmk_is_read_by_from_id() -> None:
    out = run(shutil.which("ipcmk") or pytest.skip("needs util-linux's ipcmk"), "-M", "1000",
              "-p", "0600")
    shmid = int(re.findall(r"\d+", out)[-1])
    s = ipc.SharedMemory.from_id(shmid)
    try:
        assert (s.size, s.read(), s.created) == (1000, bytes(1000), False)
        assert ipc.SharedMemory.open(s.key) == s
    finally:
        s.remove()
