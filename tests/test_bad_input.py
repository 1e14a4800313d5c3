"""Bad input, table by table: every public function and method, and every command.

Each row is a call with something wrong in it (a wrong type, a number out of range, a
removed id, a huge size, a closed or foreign file) and the exception it must raise,
with a check on its message where the message is the point. None may crash, hang, or
leave an IPC object behind: as root each test runs in an IPC namespace of its own,
which must hold nothing once the test's own objects are removed.

"Before any system call": rows whose names end in ``-first`` aim the call at a
removed identifier. Had the call reached the kernel, the kernel would have answered
EINVAL; the Python-level error shows it was refused first.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import mmap
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Tuple, Type, Union

import pytest

import ipcbind
from ipcbind import (GETALL, GETVAL, IPC_CREAT, IPC_NOWAIT, IPC_PRIVATE, IPC_SET,
                     IPC_STAT, MSG_COPY, SETALL, SETVAL, MessageQueue, SemaphoreSet)
from ipcbind import _seam
from ipcbind import syscalls as sc
from ipcbind.cli import main
from ipcbind.namespace import (enter_namespace, list_queues, list_segments, list_semaphore_sets,
                               namespace_id,
                               namespace_pids, shares_namespace)
from ipcbind.pytest_plugin import queue_messages, semaphore_values, wait_for_messages
from ipcbind.snapshot import (Limits, QueueState, SemaphoreSetState, SnapshotFormatError, _digest,
                              dump, dumps, freeze_namespace, load, loads, restore, snapshot)

NO_SUCH_PID = 4194305  # above the kernel's PID_MAX_LIMIT: never a process


@dataclass
class Env:
    """What a row may use: live objects, removed ones, and files."""

    q: MessageQueue          # a queue holding one message, (1, b"hello")
    s: SemaphoreSet          # a set of two semaphores, values [1, 0]
    gone_q: MessageQueue     # a queue that was removed
    gone_s: SemaphoreSet     # a set that was removed (its size known from before)
    tmp: Path
    msgmax: int
    isolated: bool           # in an IPC namespace of its own

    @property
    def gq(self) -> int:
        return self.gone_q.id

    @property
    def gs(self) -> int:
        return self.gone_s.id

    def file(self, name: str, content: Union[bytes, str]) -> str:
        path = self.tmp / name
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        return str(path)

    def closed(self, mode: str = "r") -> Any:
        f = open(self.file("closed", "{}"), mode)
        f.close()
        return f

    def snap(self) -> ipcbind.Snapshot:
        """A snapshot of the two live objects, made without reading the namespace
        (outside one of its own it holds other users' objects, changing)."""
        q, s = self.q.stat(), self.s.stat()
        return ipcbind.Snapshot(
            "2026-01-01T00:00:00.000000Z", namespace_id()[1], None, None,
            Limits(8192, 16384, 32000, 32000, 1024000000, 500, 32000),
            (QueueState(self.q.id, q.key & 0xFFFFFFFF, q.uid, q.gid, q.cuid, q.cgid, q.mode,
                        q.qbytes, ((1, b"hello"),)),),
            (SemaphoreSetState(self.s.id, s.key & 0xFFFFFFFF, s.uid, s.gid, s.cuid, s.cgid,
                               s.mode, (1, 0)),))

    def own_namespace(self) -> None:
        """Skip unless the test has an IPC namespace of its own (root)."""
        if not self.isolated:
            pytest.skip("ipcbind dump reads the whole namespace; outside one of its own "
                        "(that needs root) it would meet other users' unreadable objects")


@pytest.fixture
def isolated() -> Iterator[bool]:
    """A fresh IPC namespace for the test where the process may make one (root), so
    that whatever a call leaves behind is seen; elsewhere the host's. Yields whether
    it is isolated."""
    home = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _seam.unshare_ipc()
        except PermissionError:
            yield False
            return
        try:
            yield True
        finally:
            _seam.setns_ipc(home)
    finally:
        os.close(home)


@pytest.fixture
def env(isolated: bool, tmp_path: Path) -> Iterator[Env]:
    q = MessageQueue.create()
    s = SemaphoreSet.create(2, values=[1, 0])
    gone_q = MessageQueue.create()
    gone_q.remove()
    gone_s = SemaphoreSet.create(2)
    gone_s.remove()
    try:
        q.send(b"hello")
        yield Env(q, s, gone_q, gone_s, tmp_path, sc.msgctl(0, sc.IPC_INFO)[1].msgmax, isolated)
    finally:
        for made in (q, s):
            try:
                made.remove()
            except OSError:
                pass
    if isolated:
        assert list_queues() == list_semaphore_sets() == list_segments() == [], \
            "an IPC object was left behind"


class Row(NamedTuple):
    name: str
    call: Callable[[Env], Any]
    exc: Union[Type[BaseException], Tuple[Type[BaseException], ...]]
    match: Optional[str] = None     # a regular expression the message must contain
    errnos: Optional[Tuple[int, ...]] = None   # the OSError's errno must be one of these


GONE = (errno.EINVAL, errno.EIDRM)
AN_OBJECT = object()


def rows(*table: Row) -> Any:
    return pytest.mark.parametrize("row", table, ids=[r.name for r in table])


def check(row: Row, env: Env) -> None:
    with pytest.raises(row.exc, match=row.match) as got:
        row.call(env)
    if row.errnos is not None:
        assert got.value.errno in row.errnos, got.value
    assert str(got.value), f"{type(got.value).__name__} without a message"


def _released() -> memoryview:
    view = memoryview(b"abc")
    view.release()
    return view


def _closed_mmap() -> mmap.mmap:
    m = mmap.mmap(-1, 16)
    m.close()
    return m


# ---- the syscall-shaped functions --------------------------------------------------

SYSCALLS = (
    Row("ftok-path-None", lambda e: ipcbind.ftok(None, 1), TypeError),  # type: ignore[arg-type]
    Row("ftok-path-int", lambda e: ipcbind.ftok(5, 1), TypeError),  # type: ignore[arg-type]
    Row("ftok-path-NUL", lambda e: ipcbind.ftok("a\0b", 1), ValueError, "NUL"),
    Row("ftok-path-missing", lambda e: ipcbind.ftok(str(e.tmp / "none"), 1), FileNotFoundError,
        "none"),
    Row("ftok-proj-str", lambda e: ipcbind.ftok(str(e.tmp), "a"), TypeError, "proj_id"),
    Row("ftok-proj-float", lambda e: ipcbind.ftok(str(e.tmp), 1.5), TypeError, "proj_id"),
    Row("ftok-proj-2**70", lambda e: ipcbind.ftok(str(e.tmp), 2 ** 70), OverflowError, "proj_id"),
    Row("msgget-key-str", lambda e: ipcbind.msgget("1"), TypeError, "key"),
    Row("msgget-key-float", lambda e: ipcbind.msgget(1.0), TypeError, "key"),
    Row("msgget-key-None", lambda e: ipcbind.msgget(None), TypeError, "key"),
    Row("msgget-key-bytes", lambda e: ipcbind.msgget(b"\x01"), TypeError, "key"),
    Row("msgget-key-object", lambda e: ipcbind.msgget(AN_OBJECT), TypeError, "key"),
    Row("msgget-key-2**32", lambda e: ipcbind.msgget(2 ** 32), OverflowError, "key"),
    Row("msgget-key-below-int", lambda e: ipcbind.msgget(-2 ** 31 - 1), OverflowError, "key"),
    Row("msgget-key-2**70", lambda e: ipcbind.msgget(2 ** 70), OverflowError, "key"),
    Row("msgget-flags-str", lambda e: ipcbind.msgget(IPC_PRIVATE, "x"), TypeError, "flags"),
    Row("msgget-flags-None", lambda e: ipcbind.msgget(IPC_PRIVATE, None), TypeError, "flags"),
    Row("msgget-flags-2**63", lambda e: ipcbind.msgget(IPC_PRIVATE, 2 ** 63), OverflowError,
        "flags"),
    Row("msgsnd-data-str-first", lambda e: ipcbind.msgsnd(e.gq, 1, "hi"), TypeError, "encode"),
    Row("msgsnd-data-None-first", lambda e: ipcbind.msgsnd(e.gq, 1, None), TypeError, "data"),
    Row("msgsnd-data-int-first", lambda e: ipcbind.msgsnd(e.gq, 1, 5), TypeError, "data"),
    Row("msgsnd-data-object-first", lambda e: ipcbind.msgsnd(e.gq, 1, AN_OBJECT), TypeError,
        "data"),
    Row("msgsnd-data-released-first", lambda e: ipcbind.msgsnd(e.gq, 1, _released()),
        ValueError, "released"),
    Row("msgsnd-data-strided-first",
        lambda e: ipcbind.msgsnd(e.gq, 1, memoryview(b"abcd")[::2]), TypeError, "contiguous"),
    Row("msgsnd-mtype-2**63-first", lambda e: ipcbind.msgsnd(e.gq, 2 ** 63, b"x"),
        OverflowError, "mtype"),
    Row("msgsnd-mtype-2**70-first", lambda e: ipcbind.msgsnd(e.gq, 2 ** 70, b"x"),
        OverflowError, "mtype"),
    Row("msgsnd-mtype-str-first", lambda e: ipcbind.msgsnd(e.gq, "1", b"x"), TypeError, "mtype"),
    Row("msgsnd-mtype-float-first", lambda e: ipcbind.msgsnd(e.gq, 1.0, b"x"), TypeError,
        "mtype"),
    Row("msgsnd-mtype-bytes-first", lambda e: ipcbind.msgsnd(e.gq, b"\x01", b"x"), TypeError,
        "mtype"),
    Row("msgsnd-msqid-2**31", lambda e: ipcbind.msgsnd(2 ** 31, 1, b"x"), OverflowError, "msqid"),
    Row("msgsnd-msqid-None", lambda e: ipcbind.msgsnd(None, 1, b"x"), TypeError, "msqid"),
    Row("msgsnd-flags-str-first", lambda e: ipcbind.msgsnd(e.gq, 1, b"x", "0"), TypeError,
        "flags"),
    Row("msgsnd-timeout-str-first", lambda e: ipcbind.msgsnd(e.gq, 1, b"x", timeout="1"),
        TypeError, "timeout"),
    Row("msgsnd-timeout-negative-first", lambda e: ipcbind.msgsnd(e.gq, 1, b"x", timeout=-1),
        ValueError, "timeout"),
    Row("msgsnd-timeout-nan-first",
        lambda e: ipcbind.msgsnd(e.gq, 1, b"x", timeout=float("nan")), ValueError, "timeout"),
    Row("msgsnd-removed", lambda e: ipcbind.msgsnd(e.gq, 1, b"x"), OSError, r"msgsnd\(msqid=",
        GONE),
    Row("msgsnd-mtype-0-kernel", lambda e: ipcbind.msgsnd(e.q.id, 0, b"x"), OSError, None,
        (errno.EINVAL,)),
    Row("msgsnd-longer-than-msgmax-kernel",
        lambda e: ipcbind.msgsnd(e.q.id, 1, bytes(e.msgmax + 1)), OSError, None, (errno.EINVAL,)),
    Row("msgrcv-maxsize-negative-first", lambda e: ipcbind.msgrcv(e.gq, -1), ValueError,
        "maxsize"),
    Row("msgrcv-maxsize-2**64-first", lambda e: ipcbind.msgrcv(e.gq, 2 ** 64), OverflowError,
        "maxsize"),
    Row("msgrcv-maxsize-str-first", lambda e: ipcbind.msgrcv(e.gq, "10"), TypeError, "maxsize"),
    Row("msgrcv-maxsize-float-first", lambda e: ipcbind.msgrcv(e.gq, 1.5), TypeError, "maxsize"),
    Row("msgrcv-msgtyp-2**63-first", lambda e: ipcbind.msgrcv(e.gq, None, 2 ** 63),
        OverflowError, "msgtyp"),
    Row("msgrcv-msgtyp-str-first", lambda e: ipcbind.msgrcv(e.gq, None, "1"), TypeError,
        "msgtyp"),
    Row("msgrcv-flags-2**40-first", lambda e: ipcbind.msgrcv(e.gq, None, 0, 2 ** 40),
        OverflowError, "flags"),
    Row("msgrcv-timeout-negative-first", lambda e: ipcbind.msgrcv(e.gq, timeout=-1), ValueError,
        "timeout"),
    Row("msgrcv-timeout-object-first", lambda e: ipcbind.msgrcv(e.gq, timeout=AN_OBJECT),
        TypeError, "timeout"),
    Row("msgrcv-removed", lambda e: ipcbind.msgrcv(e.gq, flags=IPC_NOWAIT), OSError,
        r"msgrcv\(msqid=", GONE),
    Row("msgrcv-maxsize-2**63-kernel", lambda e: ipcbind.msgrcv(e.q.id, 2 ** 63, 0, IPC_NOWAIT),
        OSError, None, (errno.EINVAL,)),
    Row("msgrcv-copy-past-the-end", lambda e: ipcbind.msgrcv(e.q.id, None, 5,
                                                             MSG_COPY | IPC_NOWAIT),
        ipcbind.NoMessageError),
    Row("msgctl-cmd-str", lambda e: ipcbind.msgctl(e.gq, "x"), TypeError, "cmd"),
    Row("msgctl-cmd-2**40", lambda e: ipcbind.msgctl(e.gq, 2 ** 40), OverflowError, "cmd"),
    Row("msgctl-msqid-2**31", lambda e: ipcbind.msgctl(2 ** 31, IPC_STAT), OverflowError,
        "msqid"),
    Row("msgctl-msqid-float", lambda e: ipcbind.msgctl(1.0, IPC_STAT), TypeError, "msqid"),
    Row("msgctl-removed", lambda e: ipcbind.msgctl(e.gq, IPC_STAT), OSError, r"msgctl\(msqid=",
        GONE),
    Row("msgctl-unknown-cmd-kernel", lambda e: ipcbind.msgctl(e.q.id, 999), OSError, None,
        (errno.EINVAL,)),
    Row("msgctl-set-None-first", lambda e: ipcbind.msgctl(e.gq, IPC_SET, None), TypeError,
        "mapping"),
    Row("msgctl-set-unknown-field-first", lambda e: ipcbind.msgctl(e.gq, IPC_SET, {"key": 1}),
        ValueError, "key"),
    Row("msgctl-set-mode-str-first", lambda e: ipcbind.msgctl(e.gq, IPC_SET, {"mode": "600"}),
        TypeError, "mode"),
    Row("msgctl-set-uid-negative-first", lambda e: ipcbind.msgctl(e.gq, IPC_SET, {"uid": -1}),
        OverflowError, "uid"),
    Row("msgctl-set-mode-2**32-first",
        lambda e: ipcbind.msgctl(e.gq, IPC_SET, {"mode": 2 ** 32}), OverflowError, "mode"),
    Row("msgctl-set-qbytes-2**64-first",
        lambda e: ipcbind.msgctl(e.gq, IPC_SET, {"qbytes": 2 ** 64}), OverflowError, "qbytes"),
    Row("semget-key-str", lambda e: ipcbind.semget("k", 1), TypeError, "key"),
    Row("semget-key-2**70", lambda e: ipcbind.semget(2 ** 70, 1), OverflowError, "key"),
    Row("semget-nsems-str", lambda e: ipcbind.semget(IPC_PRIVATE, "1"), TypeError, "nsems"),
    Row("semget-nsems-2**40", lambda e: ipcbind.semget(IPC_PRIVATE, 2 ** 40), OverflowError,
        "nsems"),
    Row("semget-nsems-negative-kernel", lambda e: ipcbind.semget(IPC_PRIVATE, -1,
                                                                 IPC_CREAT | 0o600),
        OSError, r"semget\(key=", (errno.EINVAL,)),
    Row("semget-nsems-100000-kernel", lambda e: ipcbind.semget(IPC_PRIVATE, 100000,
                                                               IPC_CREAT | 0o600),
        OSError, None, (errno.EINVAL,)),
    Row("semget-flags-None", lambda e: ipcbind.semget(IPC_PRIVATE, 1, None), TypeError, "flags"),
    Row("semop-ops-None-first", lambda e: ipcbind.semop(e.gs, None), TypeError, "ops"),
    Row("semop-ops-int-first", lambda e: ipcbind.semop(e.gs, 5), TypeError, "ops"),
    Row("semop-op-short-first", lambda e: ipcbind.semop(e.gs, [(0,)]), TypeError, r"ops\[0\]"),
    Row("semop-op-long-first", lambda e: ipcbind.semop(e.gs, [(0, 1, 0, 0)]), TypeError,
        r"ops\[0\]"),
    Row("semop-op-dict-first", lambda e: ipcbind.semop(e.gs, [{"sem_num": 0}]), TypeError,
        r"ops\[0\]"),
    Row("semop-sem_num-negative-first", lambda e: ipcbind.semop(e.gs, [(-1, 1)]), OverflowError,
        "sem_num"),
    Row("semop-sem_op-2**15-first", lambda e: ipcbind.semop(e.gs, [(0, 2 ** 15)]), OverflowError,
        "sem_op"),
    Row("semop-sem_op-str-first", lambda e: ipcbind.semop(e.gs, [(0, "1")]), TypeError,
        "sem_op"),
    Row("semop-sem_op-float-first", lambda e: ipcbind.semop(e.gs, [(0, 1.0)]), TypeError,
        "sem_op"),
    Row("semop-sem_flg-2**16-first", lambda e: ipcbind.semop(e.gs, [(0, 1, 2 ** 16)]),
        OverflowError, "sem_flg"),
    Row("semop-timeout-str-first", lambda e: ipcbind.semop(e.gs, [(0, 1)], "1"), TypeError,
        "timeout"),
    Row("semop-timeout-negative-first", lambda e: ipcbind.semop(e.gs, [(0, 1)], -1), ValueError,
        "timeout"),
    Row("semop-semid-2**31", lambda e: ipcbind.semop(2 ** 31, [(0, 1)]), OverflowError, "semid"),
    Row("semop-semid-str", lambda e: ipcbind.semop("s", [(0, 1)]), TypeError, "semid"),
    Row("semop-removed", lambda e: ipcbind.semop(e.gs, [(0, 1)]), OSError, r"semop\(semid=",
        GONE),
    Row("semop-100000-ops-kernel", lambda e: ipcbind.semop(e.s.id, [(0, 1)] * 100000),
        ipcbind.TooBigError),
    Row("semop-sem_num-past-the-set-kernel", lambda e: ipcbind.semop(e.s.id, [(5, 1)]), OSError,
        None, (errno.EFBIG,)),
    Row("semop-no-ops-kernel", lambda e: ipcbind.semop(e.s.id, []), OSError, None,
        (errno.EINVAL,)),
    Row("semctl-semid-str", lambda e: ipcbind.semctl("x", 0, GETVAL), TypeError, "semid"),
    Row("semctl-semnum-str", lambda e: ipcbind.semctl(e.gs, "0", GETVAL), TypeError, "semnum"),
    Row("semctl-semnum-2**40", lambda e: ipcbind.semctl(e.gs, 2 ** 40, GETVAL), OverflowError,
        "semnum"),
    Row("semctl-cmd-None", lambda e: ipcbind.semctl(e.gs, 0, None), TypeError, "cmd"),
    Row("semctl-removed", lambda e: ipcbind.semctl(e.gs, 0, GETVAL), OSError, r"semctl\(semid=",
        GONE),
    Row("semctl-getall-removed", lambda e: ipcbind.semctl(e.gs, 0, GETALL), OSError, None, GONE),
    Row("semctl-semnum-past-the-set-kernel", lambda e: ipcbind.semctl(e.s.id, 5, GETVAL),
        OSError, None, (errno.EINVAL,)),
    Row("semctl-setval-str-first", lambda e: ipcbind.semctl(e.gs, 0, SETVAL, "1"), TypeError,
        "SETVAL"),
    Row("semctl-setval-None-first", lambda e: ipcbind.semctl(e.gs, 0, SETVAL), TypeError,
        "SETVAL"),
    Row("semctl-setval-2**40-first", lambda e: ipcbind.semctl(e.gs, 0, SETVAL, 2 ** 40),
        OverflowError, "SETVAL"),
    Row("semctl-setval-negative-kernel", lambda e: ipcbind.semctl(e.s.id, 0, SETVAL, -1),
        ipcbind.OutOfRangeError),
    Row("semctl-setval-32768-kernel", lambda e: ipcbind.semctl(e.s.id, 0, SETVAL, 32768),
        ipcbind.OutOfRangeError),
    Row("semctl-setall-None-first", lambda e: ipcbind.semctl(e.gs, 0, SETALL), TypeError,
        "SETALL"),
    Row("semctl-setall-int-first", lambda e: ipcbind.semctl(e.gs, 0, SETALL, 5), TypeError,
        "SETALL"),
    Row("semctl-setall-str-first", lambda e: ipcbind.semctl(e.gs, 0, SETALL, "ab"), TypeError,
        "SETALL"),
    Row("semctl-setall-2**16-first", lambda e: ipcbind.semctl(e.gs, 0, SETALL, [2 ** 16, 0]),
        OverflowError, r"SETALL value \[0\]"),
    Row("semctl-setall-negative-first", lambda e: ipcbind.semctl(e.gs, 0, SETALL, [0, -1]),
        OverflowError, r"SETALL value \[1\]"),
    Row("semctl-setall-100000-values",
        lambda e: ipcbind.semctl(e.s.id, 0, SETALL, [0] * 100000), ValueError, "100000"),
    Row("semctl-setall-too-few", lambda e: ipcbind.semctl(e.s.id, 0, SETALL, [1]), ValueError,
        "2 values"),
    Row("semctl-set-mode-None-first", lambda e: ipcbind.semctl(e.gs, 0, IPC_SET, {"mode": None}),
        TypeError, "mode"),
    Row("semctl-set-gid-2**32-first",
        lambda e: ipcbind.semctl(e.gs, 0, IPC_SET, {"gid": 2 ** 32}), OverflowError, "gid"),
    Row("semctl-set-qbytes-first", lambda e: ipcbind.semctl(e.gs, 0, IPC_SET, {"qbytes": 1}),
        ValueError, "qbytes"),
    Row("semctl-set-list-first", lambda e: ipcbind.semctl(e.gs, 0, IPC_SET, [("mode", 1)]),
        TypeError, "mapping"),
)


@rows(*SYSCALLS)
def test_syscall_layer_refuses(row: Row, env: Env) -> None:
    check(row, env)


# ---- MessageQueue and Message --------------------------------------------------------

def _receive_async(q: MessageQueue, **kw: Any) -> Any:
    return asyncio.run(q.receive_async(**kw))


QUEUE = (
    Row("init-str", lambda e: MessageQueue("1"), TypeError, "queue id"),
    Row("init-None", lambda e: MessageQueue(None), TypeError, "queue id"),
    Row("init-bool", lambda e: MessageQueue(True), TypeError, "queue id"),
    Row("init-negative", lambda e: MessageQueue(-1), ValueError, "queue id"),
    Row("from_id-2**31", lambda e: MessageQueue.from_id(2 ** 31), ValueError, "queue id"),
    Row("from_id-2**70", lambda e: MessageQueue.from_id(2 ** 70), ValueError, "queue id"),
    Row("create-mode-str", lambda e: MessageQueue.create(mode="0600"), TypeError, "mode"),
    Row("create-mode-setuid", lambda e: MessageQueue.create(mode=0o4600), ValueError, "mode"),
    Row("create-mode-negative", lambda e: MessageQueue.create(mode=-1), ValueError, "mode"),
    Row("create-key-str", lambda e: MessageQueue.create(key="k"), TypeError, "key"),
    Row("create-key-2**32", lambda e: MessageQueue.create(key=2 ** 32), OverflowError, "key"),
    Row("create-key-2**70", lambda e: MessageQueue.create(key=2 ** 70), OverflowError, "key"),
    Row("open-private", lambda e: MessageQueue.open(IPC_PRIVATE), ValueError, "IPC_PRIVATE"),
    Row("open-key-None", lambda e: MessageQueue.open(None), TypeError, "key"),
    Row("open-key-2**63", lambda e: MessageQueue.open(2 ** 63), OverflowError, "key"),
    Row("send-str", lambda e: e.q.send("hello"), TypeError, "encode"),
    Row("send-None", lambda e: e.q.send(None), TypeError, "data"),
    Row("send-list", lambda e: e.q.send([1, 2]), TypeError, "data"),
    Row("send-closed-mmap", lambda e: e.q.send(_closed_mmap()), ValueError, "closed"),
    Row("send-mtype-0", lambda e: e.q.send(b"x", 0), ValueError, "mtype"),
    Row("send-mtype-negative", lambda e: e.q.send(b"x", -5), ValueError, "mtype"),
    Row("send-mtype-2**63", lambda e: e.q.send(b"x", 2 ** 63), OverflowError, "mtype"),
    Row("send-mtype-str", lambda e: e.q.send(b"x", "1"), TypeError, "mtype"),
    Row("send-mtype-float", lambda e: e.q.send(b"x", 1.0), TypeError, "mtype"),
    Row("send-longer-than-msgmax", lambda e: e.q.send(bytes(e.msgmax + 1)), ValueError,
        "msgmax"),
    Row("send-longer-than-msgmax-timed", lambda e: e.q.send(bytes(e.msgmax + 1), timeout=1),
        ValueError, "msgmax"),
    Row("send-timeout-negative", lambda e: e.q.send(b"x", timeout=-1), ValueError, "timeout"),
    Row("send-timeout-str", lambda e: e.q.send(b"x", timeout="1"), TypeError, "timeout"),
    Row("send-timeout-without-block", lambda e: e.q.send(b"x", block=False, timeout=1),
        ValueError, "block"),
    Row("send-removed", lambda e: e.gone_q.send(b"x"), OSError, r"msgsnd\(msqid=", GONE),
    Row("send-removed-timed", lambda e: e.gone_q.send(b"x", timeout=1), OSError, None, GONE),
    Row("send_many-None", lambda e: e.q.send_many(None), TypeError, "iterable"),
    Row("send_many-not-pairs", lambda e: e.q.send_many([1]), TypeError, "message 0"),
    Row("send_many-str-data", lambda e: e.q.send_many([(1, b"a"), (1, "b")]), TypeError,
        "message 1.*encode"),
    Row("send_many-closed-mmap", lambda e: e.q.send_many([(1, _closed_mmap())]), ValueError,
        "closed"),
    Row("send_many-mtype-str", lambda e: e.q.send_many([("1", b"x")]), TypeError,
        "mtype of message 0"),
    Row("send_many-mtype-2**70", lambda e: e.q.send_many([(2 ** 70, b"x")]), OverflowError,
        "mtype of message 0"),
    Row("send_many-mtype-0", lambda e: e.q.send_many([(1, b"a"), (0, b"x")]), ValueError,
        "mtype"),
    Row("send_many-longer-than-msgmax", lambda e: e.q.send_many([(1, bytes(e.msgmax + 1))]),
        ValueError, "msgmax"),
    Row("send_many-timeout-negative", lambda e: e.q.send_many([(1, b"x")], timeout=-1),
        ValueError, "timeout"),
    Row("send_many-removed", lambda e: e.gone_q.send_many([(1, b"x")]), OSError, None, GONE),
    Row("receive-mtype-str", lambda e: e.q.receive("1"), TypeError, "msgtyp"),
    Row("receive-mtype-2**63", lambda e: e.q.receive(2 ** 63), OverflowError, "msgtyp"),
    Row("receive-maxsize-negative", lambda e: e.q.receive(maxsize=-1), ValueError, "maxsize"),
    Row("receive-maxsize-str", lambda e: e.q.receive(maxsize="1"), TypeError, "maxsize"),
    Row("receive-maxsize-bool", lambda e: e.q.receive(maxsize=True), TypeError, "maxsize"),
    Row("receive_many-maxsize-bool", lambda e: e.q.receive_many(1, maxsize=True), TypeError,
        "maxsize"),
    Row("receive_async-maxsize-bool", lambda e: _receive_async(e.q, maxsize=True), TypeError,
        "maxsize"),
    Row("receive-timeout-negative", lambda e: e.q.receive(timeout=-1), ValueError, "timeout"),
    Row("receive-timeout-bytes", lambda e: e.q.receive(timeout=b"1"), TypeError, "timeout"),
    Row("receive-timeout-without-block", lambda e: e.q.receive(block=False, timeout=1),
        ValueError, "block"),
    Row("receive-except-type-0", lambda e: e.q.receive(except_type=True), ValueError,
        "except_type"),
    Row("receive-truncate-without-maxsize", lambda e: e.q.receive(truncate=True), ValueError,
        "maxsize"),
    Row("receive-removed", lambda e: e.gone_q.receive(block=False), OSError, None, GONE),
    Row("receive-removed-timed", lambda e: e.gone_q.receive(timeout=1), OSError, None, GONE),
    Row("receive-huge-maxsize-too-small", lambda e: e.q.receive(maxsize=2, block=False),
        ipcbind.TooBigError),
    Row("receive_many-0", lambda e: e.q.receive_many(0), ValueError, "max_count"),
    Row("receive_many-str", lambda e: e.q.receive_many("1"), TypeError, "max_count"),
    Row("receive_many-bool", lambda e: e.q.receive_many(True), TypeError, "max_count"),
    Row("receive_many-2**70", lambda e: e.q.receive_many(2 ** 70), OverflowError, "max_count"),
    Row("receive_many-maxsize-negative", lambda e: e.q.receive_many(1, maxsize=-1), ValueError,
        "maxsize"),
    Row("receive_many-timeout-negative", lambda e: e.q.receive_many(1, timeout=-1), ValueError,
        "timeout"),
    Row("receive_many-mtype-2**63", lambda e: e.q.receive_many(1, 2 ** 63), OverflowError,
        "msgtyp"),
    Row("receive_many-mtype-str", lambda e: e.q.receive_many(1, "1"), TypeError, "msgtyp"),
    Row("receive_many-removed", lambda e: e.gone_q.receive_many(5, block=False), OSError, None,
        GONE),
    Row("receive_async-timeout-negative", lambda e: _receive_async(e.q, timeout=-1), ValueError,
        "timeout"),
    Row("receive_async-truncate", lambda e: _receive_async(e.q, truncate=True), ValueError,
        "maxsize"),
    Row("receive_async-removed", lambda e: _receive_async(e.gone_q, timeout=1), OSError, None,
        GONE),
    Row("peek-negative", lambda e: e.q.peek(-1), ValueError, "index"),
    Row("peek-str", lambda e: e.q.peek("0"), TypeError, "index"),
    Row("peek-float", lambda e: e.q.peek(0.0), TypeError, "index"),
    Row("peek-2**63", lambda e: e.q.peek(2 ** 63), OverflowError, "peek: index"),
    Row("peek-past-the-end", lambda e: e.q.peek(1), ipcbind.NoMessageError),
    Row("peek-removed", lambda e: e.gone_q.peek(), OSError, None, GONE),
    Row("peek_all-0", lambda e: e.q.peek_all(0), ValueError, "attempts"),
    Row("peek_all-None", lambda e: e.q.peek_all(None), TypeError, "attempts"),
    Row("peek_all-removed", lambda e: e.gone_q.peek_all(), OSError, None, GONE),
    Row("iter-removed", lambda e: list(e.gone_q), OSError, None, GONE),
    Row("len-removed", lambda e: len(e.gone_q), OSError, None, GONE),
    Row("stat-removed", lambda e: e.gone_q.stat(), OSError, r"msgctl\(msqid=", GONE),
    Row("remove-removed", lambda e: e.gone_q.remove(), OSError, None, GONE),
    Row("key-removed", lambda e: MessageQueue.from_id(e.gq).key, OSError, None, GONE),
)


@rows(*QUEUE)
def test_message_queue_refuses(row: Row, env: Env) -> None:
    check(row, env)


def test_message_is_a_plain_pair_that_refuses_a_wrong_arity() -> None:
    with pytest.raises(TypeError):
        ipcbind.Message(1)  # type: ignore[call-arg]


def test_a_refused_send_queues_nothing(env: Env) -> None:
    for data, mtype in (("text", 1), (None, 1), (b"x", 0), (b"x", 2 ** 63),
                        (bytes(env.msgmax + 1), 1)):
        with pytest.raises((TypeError, ValueError, OverflowError)):
            env.q.send(data, mtype)  # type: ignore[arg-type]
    assert env.q.peek_all() == [(1, b"hello")]


def test_a_refused_receive_takes_nothing(env: Env) -> None:
    for kw in ({"maxsize": -1}, {"timeout": -1}, {"mtype": 2 ** 63}, {"truncate": True},
               {"maxsize": 2}):
        with pytest.raises((TypeError, ValueError, OverflowError, ipcbind.TooBigError)):
            env.q.receive(block=False, **kw)
    assert env.q.peek_all() == [(1, b"hello")]


def test_huge_maxsize_takes_the_message_without_reserving_it(env: Env) -> None:
    assert env.q.receive(maxsize=2 ** 62, block=False) == (1, b"hello")
    env.q.send(b"again")
    assert env.q.receive_many(2 ** 62, maxsize=2 ** 62, block=False) == [(1, b"again")]


# ---- SemaphoreSet and Semaphore ------------------------------------------------------

def _set_values(s: SemaphoreSet, values: Any) -> None:
    s.values = values


def _set_value(s: SemaphoreSet, i: int, value: Any) -> None:
    s[i].value = value


SEMAPHORES = (
    Row("create-nsems-0", lambda e: SemaphoreSet.create(0), ValueError, "nsems"),
    Row("create-nsems-negative", lambda e: SemaphoreSet.create(-1), ValueError, "nsems"),
    Row("create-nsems-str", lambda e: SemaphoreSet.create("1"), TypeError, "nsems"),
    Row("create-nsems-float", lambda e: SemaphoreSet.create(1.0), TypeError, "nsems"),
    Row("create-nsems-bool", lambda e: SemaphoreSet.create(True), TypeError, "nsems"),
    Row("create-nsems-2**40", lambda e: SemaphoreSet.create(2 ** 40), OverflowError, "nsems"),
    Row("create-nsems-100000-kernel", lambda e: SemaphoreSet.create(100000), OSError, None,
        (errno.EINVAL,)),
    Row("create-mode-above-0o777", lambda e: SemaphoreSet.create(1, mode=0o1000), ValueError,
        "mode"),
    Row("create-mode-None", lambda e: SemaphoreSet.create(1, mode=None), TypeError, "mode"),
    Row("create-values-too-many", lambda e: SemaphoreSet.create(1, values=[1, 2]), ValueError,
        "values"),
    Row("create-values-100000", lambda e: SemaphoreSet.create(2, values=[0] * 100000),
        ValueError, "100000"),
    Row("create-values-negative", lambda e: SemaphoreSet.create(1, values=[-1]), ValueError,
        r"values\[0\]"),
    Row("create-values-32768", lambda e: SemaphoreSet.create(1, values=[32768]), ValueError,
        r"values\[0\]"),
    Row("create-values-str", lambda e: SemaphoreSet.create(1, values=["1"]), TypeError,
        r"values\[0\]"),
    Row("create-values-int", lambda e: SemaphoreSet.create(1, values=5), TypeError, "values"),
    Row("create-key-str", lambda e: SemaphoreSet.create(1, key="k"), TypeError, "key"),
    Row("create-key-2**70", lambda e: SemaphoreSet.create(1, key=2 ** 70), OverflowError, "key"),
    Row("open-private", lambda e: SemaphoreSet.open(IPC_PRIVATE), ValueError, "IPC_PRIVATE"),
    Row("open-key-float", lambda e: SemaphoreSet.open(1.5), TypeError, "key"),
    Row("from_id-str", lambda e: SemaphoreSet.from_id("1"), TypeError, "semid"),
    Row("from_id-2**40", lambda e: SemaphoreSet.from_id(2 ** 40), ValueError, "semid"),
    Row("from_id-removed", lambda e: SemaphoreSet.from_id(e.gs), OSError, None, GONE),
    Row("index-past-the-end", lambda e: e.s[2], IndexError, "index 2"),
    Row("index-before-the-start", lambda e: e.s[-3], IndexError, "index -3"),
    Row("index-2**70", lambda e: e.s[2 ** 70], IndexError, "out of range"),
    Row("index-str", lambda e: e.s["0"], TypeError, "index"),
    Row("index-float", lambda e: e.s[0.0], TypeError, "index"),
    Row("index-bool", lambda e: e.s[True], TypeError, "index"),
    Row("len-removed", lambda e: len(SemaphoreSet(e.gs, 0, None, False)), OSError, None, GONE),
    Row("op-None", lambda e: e.s.op(None), TypeError, "ops"),
    Row("op-empty", lambda e: e.s.op([]), ValueError, "no operations"),
    Row("op-short", lambda e: e.s.op([(0,)]), TypeError, r"ops\[0\]"),
    Row("op-index-past-the-end", lambda e: e.s.op([(2, 1)]), IndexError, "index 2"),
    Row("op-delta-2**15", lambda e: e.s.op([(0, 2 ** 15)]), OverflowError, "sem_op"),
    Row("op-delta-str", lambda e: e.s.op([(0, "1")]), TypeError, "sem_op"),
    Row("op-flags-str", lambda e: e.s.op([(0, 1, "x")]), TypeError, "flags"),
    Row("op-timeout-negative", lambda e: e.s.op([(0, 1)], timeout=-1), ValueError, "timeout"),
    Row("op-timeout-without-block", lambda e: e.s.op([(0, 1)], timeout=1, block=False),
        ValueError, "block"),
    Row("op-100000-ops-kernel", lambda e: e.s.op([(0, 1)] * 100000), ipcbind.TooBigError),
    Row("op-above-semvmx-kernel", lambda e: e.s.op([(0, 32767)]), ipcbind.OutOfRangeError),
    Row("op-removed", lambda e: e.gone_s.op([(0, 1)]), OSError, None, GONE),
    Row("values-None", lambda e: _set_values(e.s, None), TypeError, "values"),
    Row("values-too-few", lambda e: _set_values(e.s, [1]), ValueError, "values"),
    Row("values-100000", lambda e: _set_values(e.s, [0] * 100000), ValueError, "100000"),
    Row("values-32768", lambda e: _set_values(e.s, [32768, 0]), ValueError, r"values\[0\]"),
    Row("values-str", lambda e: _set_values(e.s, ["a", "b"]), TypeError, r"values\[0\]"),
    Row("values-removed", lambda e: e.gone_s.values, OSError, None, GONE),
    Row("set-values-removed", lambda e: _set_values(e.gone_s, [1, 1]), OSError, None, GONE),
    Row("stat-removed", lambda e: e.gone_s.stat(), OSError, r"semctl\(semid=", GONE),
    Row("remove-removed", lambda e: e.gone_s.remove(), OSError, None, GONE),
    Row("acquire-0", lambda e: e.s[0].acquire(0), ValueError, "delta"),
    Row("acquire-negative", lambda e: e.s[0].acquire(-1), ValueError, "delta"),
    Row("acquire-32768", lambda e: e.s[0].acquire(32768), ValueError, "delta"),
    Row("acquire-2**70", lambda e: e.s[0].acquire(2 ** 70), ValueError, "delta"),
    Row("acquire-str", lambda e: e.s[0].acquire("1"), TypeError, "delta"),
    Row("acquire-float", lambda e: e.s[0].acquire(1.0), TypeError, "delta"),
    Row("acquire-bool", lambda e: e.s[0].acquire(True), TypeError, "delta"),
    Row("acquire-timeout-negative-first", lambda e: e.gone_s[0].acquire(timeout=-1), ValueError,
        "timeout"),
    Row("acquire-timeout-str-first", lambda e: e.gone_s[0].acquire(timeout="1"), TypeError,
        "timeout"),
    Row("acquire-timeout-without-block", lambda e: e.s[0].acquire(block=False, timeout=1),
        ValueError, "block"),
    Row("acquire-would-wait", lambda e: e.s[1].acquire(block=False), BlockingIOError),
    Row("acquire-removed", lambda e: e.gone_s[0].acquire(), OSError, r"semop\(semid=", GONE),
    Row("acquire-removed-timed", lambda e: e.gone_s[0].acquire(timeout=1), OSError, None, GONE),
    Row("release-0", lambda e: e.s[0].release(0), ValueError, "delta"),
    Row("release-2**70", lambda e: e.s[0].release(2 ** 70), ValueError, "delta"),
    Row("release-None", lambda e: e.s[0].release(None), TypeError, "delta"),
    Row("release-above-semvmx-kernel", lambda e: e.s[0].release(32767), ipcbind.OutOfRangeError),
    Row("release-removed", lambda e: e.gone_s[0].release(), OSError, None, GONE),
    Row("wait_zero-timeout-negative-first", lambda e: e.gone_s[0].wait_zero(timeout=-1),
        ValueError, "timeout"),
    Row("wait_zero-timeout-without-block", lambda e: e.s[0].wait_zero(block=False, timeout=1),
        ValueError, "block"),
    Row("wait_zero-timeout-object", lambda e: e.s[0].wait_zero(timeout=AN_OBJECT), TypeError,
        "timeout"),
    Row("wait_zero-removed", lambda e: e.gone_s[0].wait_zero(block=False), OSError, None, GONE),
    Row("value-negative-first", lambda e: _set_value(e.gone_s, 0, -1), ValueError, "value"),
    Row("value-32768-first", lambda e: _set_value(e.gone_s, 0, 32768), ValueError, "value"),
    Row("value-str-first", lambda e: _set_value(e.gone_s, 0, "1"), TypeError, "value"),
    Row("value-None-first", lambda e: _set_value(e.gone_s, 0, None), TypeError, "value"),
    Row("value-removed", lambda e: e.gone_s[0].value, OSError, None, GONE),
    Row("pid-removed", lambda e: e.gone_s[0].pid, OSError, None, GONE),
    Row("waiting-removed", lambda e: e.gone_s[0].waiting, OSError, None, GONE),
    Row("waiting_for_zero-removed", lambda e: e.gone_s[0].waiting_for_zero, OSError, None, GONE),
    Row("with-removed", lambda e: e.gone_s[0].__enter__(), OSError, None, GONE),
)


@rows(*SEMAPHORES)
def test_semaphore_set_refuses(row: Row, env: Env) -> None:
    check(row, env)


def test_a_refused_op_changes_no_value(env: Env) -> None:
    for ops in ([(0, -1), (2, 1)], [(0, -1), (1, 2 ** 15)], [(0, -1), (1, "1")],
                [(0, -1), (1, 32767), (1, 1)]):
        with pytest.raises((IndexError, OverflowError, TypeError, ipcbind.OutOfRangeError)):
            env.s.op(ops)
    assert env.s.values == [1, 0]


# ---- shared memory ----------------------------------------------------------------------

def _on_segment(use: Callable[[ipcbind.SharedMemory], Any]) -> Callable[[Env], Any]:
    """A row's call on a segment of 4096 bytes made for it and removed after it."""
    def call(env: Env) -> Any:
        with ipcbind.SharedMemory.create(4096) as m:
            return use(m)
    return call


def _gone_segment() -> int:
    with ipcbind.SharedMemory.create(4096) as m:
        return m.id


SEGMENTS = (
    Row("create-size-0", lambda e: ipcbind.SharedMemory.create(0), ValueError, "size"),
    Row("create-size-negative", lambda e: ipcbind.SharedMemory.create(-1), ValueError, "size"),
    Row("create-size-str", lambda e: ipcbind.SharedMemory.create("1"), TypeError, "size"),
    Row("create-size-2**64", lambda e: ipcbind.SharedMemory.create(2 ** 64),
        OverflowError, "size"),
    Row("create-mode-setuid", lambda e: ipcbind.SharedMemory.create(1, mode=0o4600), ValueError,
        "mode"),
    Row("create-key-2**32", lambda e: ipcbind.SharedMemory.create(1, key=2 ** 32), OverflowError,
        "key"),
    Row("open-private", lambda e: ipcbind.SharedMemory.open(IPC_PRIVATE), ValueError,
        "IPC_PRIVATE"),
    Row("from_id-negative", lambda e: ipcbind.SharedMemory.from_id(-1), ValueError, "id"),
    Row("from_id-removed", lambda e: ipcbind.SharedMemory.from_id(_gone_segment()), OSError,
        "no shared memory segment", GONE),
    Row("read-past-the-end", _on_segment(lambda m: m.read(2, 4095)), ValueError, "past the end"),
    Row("read-size-None-offset-past", _on_segment(lambda m: m.read(offset=4097)), ValueError,
        "past the end"),
    Row("read-size-None-offset-past-names-the-offset",
        _on_segment(lambda m: m.read(offset=5000)), ValueError,
        "offset 5000 is past the end of the 4096-byte segment"),
    Row("read-offset-str", _on_segment(lambda m: m.read(1, "0")), TypeError, "offset"),
    Row("write-past-the-end", _on_segment(lambda m: m.write(b"xx", 4095)), ValueError,
        "nothing written"),
    Row("write-str", _on_segment(lambda m: m.write("x")), TypeError, "encode"),
    Row("write-non-contiguous", _on_segment(lambda m: m.write(memoryview(b"abcd")[::2])),
        TypeError, "C-contiguous"),
    Row("write-None", _on_segment(lambda m: m.write(None)), TypeError, "bytes-like"),
    Row("write-closed-mmap", _on_segment(lambda m: m.write(_closed_mmap())), ValueError,
        "closed"),
    Row("attach-removed", lambda e: ipcbind.SharedMemory(_gone_segment()).attach(), OSError,
        r"shmat\(shmid=", GONE),
    Row("shmget-size-negative-first", lambda e: ipcbind.shmget(IPC_PRIVATE, -1, IPC_CREAT),
        OverflowError, "size"),
    Row("shmat-flags-str", lambda e: ipcbind.shmat(_gone_segment(), "0"), TypeError, "flags"),
    Row("shmdt-not-an-attachment", lambda e: ipcbind.shmdt(b"x"), TypeError, "shmat"),
    Row("shmctl-set-qbytes-first", lambda e: ipcbind.shmctl(_gone_segment(), IPC_SET,
                                                             {"qbytes": 1}), ValueError, "qbytes"),
    Row("shmctl-removed", lambda e: ipcbind.shmctl(_gone_segment(), IPC_STAT), OSError,
        r"shmctl\(shmid=", GONE),
)


@rows(*SEGMENTS)
def test_shared_memory_refuses(row: Row, env: Env) -> None:
    check(row, env)


# ---- semundo -------------------------------------------------------------------------

def _proc(env: Env, semundo: Union[bytes, str, None], *, pid: str = "100") -> str:
    """A directory laid out like /proc, with <pid>/semundo holding ``semundo``
    (a directory there when None)."""
    root = env.tmp / "proc"
    (root / pid).mkdir(parents=True, exist_ok=True)
    target = root / pid / "semundo"
    if semundo is None:
        target.mkdir()
    else:
        target.write_bytes(semundo.encode() if isinstance(semundo, str) else semundo)
    return str(root)


SEMUNDO = (
    Row("read-pid-str", lambda e: ipcbind.read_semundo("1"), TypeError, "pid"),
    Row("read-pid-float", lambda e: ipcbind.read_semundo(1.0), TypeError, "pid"),
    Row("read-pid-bool", lambda e: ipcbind.read_semundo(True), TypeError, "pid"),
    Row("read-pid-0", lambda e: ipcbind.read_semundo(0), ValueError, "pid"),
    Row("read-pid-negative", lambda e: ipcbind.read_semundo(-1), ValueError, "pid"),
    Row("read-pid-2**70", lambda e: ipcbind.read_semundo(2 ** 70), ProcessLookupError,
        "no such process"),
    Row("read-no-such-pid", lambda e: ipcbind.read_semundo(NO_SUCH_PID), ProcessLookupError,
        str(NO_SUCH_PID)),
    Row("read-proc_root-None", lambda e: ipcbind.read_semundo(proc_root=None), TypeError),
    Row("read-proc_root-a-file", lambda e: ipcbind.read_semundo(
        100, proc_root=e.file("f", "x")), NotADirectoryError),
    Row("read-proc_root-empty", lambda e: ipcbind.read_semundo(100, proc_root=str(e.tmp)),
        ProcessLookupError, "process 100"),
    Row("read-semundo-a-directory", lambda e: ipcbind.read_semundo(100, proc_root=_proc(e, None)),
        IsADirectoryError),
    Row("read-binary", lambda e: ipcbind.read_semundo(
        100, proc_root=_proc(e, bytes(range(256)))), ValueError, "line 1"),
    Row("read-json", lambda e: ipcbind.read_semundo(100, proc_root=_proc(e, '{"1": [2]}')),
        ValueError, "line 1.*not a decimal integer"),
    Row("read-short-overflow", lambda e: ipcbind.read_semundo(100, proc_root=_proc(e, "1 32768")),
        ValueError, "line 1.*short"),
    Row("read-semid-2**31", lambda e: ipcbind.read_semundo(100, proc_root=_proc(e, "2147483648 1")),
        ValueError, "line 1.*semid"),
    Row("read-5000-digits", lambda e: ipcbind.read_semundo(
        100, proc_root=_proc(e, "1 " + "9" * 5000)), ValueError, "semundo: line 1"),
    Row("read-5000-digit-semid", lambda e: ipcbind.read_semundo(
        100, proc_root=_proc(e, "\n\n" + "1" * 5000 + " 1")), ValueError, "semundo: line 3"),
    Row("read-no-adjustment", lambda e: ipcbind.read_semundo(100, proc_root=_proc(e, "5\n")),
        ValueError, "line 1.*no adjustment"),
    Row("write-non-contiguous", _on_segment(lambda m: m.write(memoryview(b"abcd")[::2])),
        TypeError, "C-contiguous"),
    Row("write-None", lambda e: ipcbind.write_semundo(None), TypeError, "mapping"),
    Row("write-list", lambda e: ipcbind.write_semundo([(1, [1])]), TypeError, "mapping"),
    Row("write-semid-str", lambda e: ipcbind.write_semundo({"1": [1]}), TypeError, "semid"),
    Row("write-semid-negative", lambda e: ipcbind.write_semundo({-1: [1]}), ValueError, "semid"),
    Row("write-semid-2**31", lambda e: ipcbind.write_semundo({2 ** 31: [1]}), ValueError,
        "semid"),
    Row("write-adjustments-str", lambda e: ipcbind.write_semundo({1: "12"}), TypeError,
        "adjustments"),
    Row("write-adjustments-empty", lambda e: ipcbind.write_semundo({1: []}), ValueError,
        "no adjustment"),
    Row("write-adjustment-2**15", lambda e: ipcbind.write_semundo({1: [2 ** 15]}), ValueError,
        "short"),
    Row("write-adjustment-bool", lambda e: ipcbind.write_semundo({1: [True]}), TypeError,
        "adjustment"),
    Row("write-adjustment-float", lambda e: ipcbind.write_semundo({1: [1.0]}), TypeError,
        "adjustment"),
    Row("write-other-pid", lambda e: ipcbind.write_semundo({1: [1]}, pid=1), ValueError,
        "only the calling process"),
    Row("write-pid-str", lambda e: ipcbind.write_semundo({1: [1]}, pid="1"), TypeError, "pid"),
    Row("write-mainline", lambda e: ipcbind.write_semundo({1: [1]}) if not
        ipcbind.semundo_supported() else pytest.skip("this kernel has the file"),
        ipcbind.SemundoNotSupportedError),
    Row("write-proc_root-empty", lambda e: ipcbind.write_semundo({1: [1]}, proc_root=str(e.tmp)),
        ProcessLookupError),
    Row("supported-proc_root-None", lambda e: ipcbind.semundo_supported(proc_root=None),
        TypeError),
    Row("restore-None", lambda e: ipcbind.restore_semundo(None), TypeError, "mapping"),
    Row("restore-removed-set", lambda e: ipcbind.restore_semundo({e.gs: [1]}), OSError,
        "no such semaphore set", GONE),
    Row("restore-longer-than-the-set", lambda e: ipcbind.restore_semundo({e.s.id: [1, 1, 1]}),
        ValueError, "2 semaphores"),
    Row("restore-adjustment-2**15", lambda e: ipcbind.restore_semundo({e.s.id: [2 ** 15]}),
        ValueError, "short"),
    Row("restore-adjustment-str", lambda e: ipcbind.restore_semundo({e.s.id: ["1"]}), TypeError,
        "adjustment"),
    Row("tracked-takes-no-argument", lambda e: ipcbind.tracked_semundo(1), TypeError),
)


@rows(*SEMUNDO)
def test_semundo_refuses(row: Row, env: Env) -> None:
    check(row, env)


def test_a_refused_restore_semundo_leaves_values_and_undo_state(env: Env) -> None:
    before = ipcbind.tracked_semundo()
    for entries in ({env.s.id: [1], env.gs: [1]}, {env.s.id: [1], 5: "x"}):
        with pytest.raises((OSError, TypeError)):
            ipcbind.restore_semundo(entries)  # type: ignore[arg-type]
    assert env.s.values == [1, 0]
    assert ipcbind.tracked_semundo() == before


# ---- namespaces ---------------------------------------------------------------------

def _enter(pid: Any) -> None:
    with enter_namespace(pid):
        pass


NAMESPACES = (
    Row("namespace_id-str", lambda e: namespace_id("1"), TypeError, "pid"),
    Row("namespace_id-float", lambda e: namespace_id(1.0), TypeError, "pid"),
    Row("namespace_id-bool", lambda e: namespace_id(True), TypeError, "pid"),
    Row("namespace_id-0", lambda e: namespace_id(0), ValueError, "pid"),
    Row("namespace_id-negative", lambda e: namespace_id(-1), ValueError, "pid"),
    Row("namespace_id-no-such-pid", lambda e: namespace_id(NO_SUCH_PID), ProcessLookupError,
        str(NO_SUCH_PID)),
    Row("namespace_id-2**70", lambda e: namespace_id(2 ** 70), ProcessLookupError),
    Row("shares_namespace-str", lambda e: shares_namespace("1"), TypeError, "pid"),
    Row("shares_namespace-None", lambda e: shares_namespace(None), TypeError, "pid"),
    Row("shares_namespace-bool", lambda e: shares_namespace(True), TypeError, "pid"),
    Row("shares_namespace-float", lambda e: shares_namespace(1.0), TypeError, "pid"),
    Row("shares_namespace-no-such-pid", lambda e: shares_namespace(NO_SUCH_PID),
        ProcessLookupError),
    Row("namespace_pids-bytes", lambda e: namespace_pids(b"1"), TypeError, "pid"),
    Row("namespace_pids-0", lambda e: namespace_pids(0), ValueError, "pid"),
    Row("enter_namespace-str", lambda e: _enter("1"), TypeError, "pid"),
    Row("enter_namespace-None", lambda e: _enter(None), TypeError, "pid"),
    Row("enter_namespace-bool", lambda e: _enter(True), TypeError, "pid"),
    Row("enter_namespace-float", lambda e: _enter(1.0), TypeError, "pid"),
    Row("enter_namespace-0", lambda e: _enter(0), ValueError, "pid"),
    Row("enter_namespace-no-such-pid", lambda e: _enter(NO_SUCH_PID), ProcessLookupError,
        str(NO_SUCH_PID)),
    Row("list_queues-takes-no-argument", lambda e: list_queues(1), TypeError),
    Row("list_semaphore_sets-takes-no-argument", lambda e: list_semaphore_sets(1), TypeError),
)


@rows(*NAMESPACES)
def test_namespace_functions_refuse(row: Row, env: Env) -> None:
    check(row, env)


def test_enter_namespace_of_a_bad_pid_leaves_no_descriptor_open(env: Env) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for pid in ("1", None, 0, NO_SUCH_PID):
        with pytest.raises((TypeError, ValueError, ProcessLookupError)):
            _enter(pid)
    assert len(os.listdir("/proc/self/fd")) == before


# ---- snapshots and their files --------------------------------------------------------

def _other_json(e: Env) -> str:
    return e.file("other.json", json.dumps({"name": "ipcbind", "version": 1, "queues": []}))


def _snapshot_text(e: Env) -> str:
    return dumps(e.snap())


def _edited(e: Env) -> str:
    doc = json.loads(_snapshot_text(e))
    doc["queues"][0]["qbytes"] += 1
    return json.dumps(doc)


def _version_3(e: Env) -> str:
    doc = json.loads(_snapshot_text(e))
    doc["version"] = 3
    return json.dumps(doc)


def _taken_at(e: Env, when: str) -> str:
    doc = json.loads(_snapshot_text(e))
    doc["taken_at"] = when
    del doc["checksum"]
    doc["checksum"] = _digest(doc)
    return json.dumps(doc)


def _binary(e: Env) -> str:
    return e.file("binary", bytes(range(256)) * 4)


SNAPSHOTS = (
    Row("snapshot-pid-str", lambda e: snapshot("1"), TypeError, "pid"),
    Row("snapshot-pid-0", lambda e: snapshot(0), ValueError, "pid"),
    Row("snapshot-no-such-pid", lambda e: snapshot(NO_SUCH_PID), ProcessLookupError),
    Row("snapshot-retries-0", lambda e: snapshot(retries=0), ValueError, "retries"),
    Row("snapshot-retries-str", lambda e: snapshot(retries="3"), TypeError, "retries"),
    Row("snapshot-retries-float", lambda e: snapshot(retries=3.0), TypeError, "retries"),
    Row("snapshot-progress-int", lambda e: snapshot(progress=5), TypeError, "progress"),
    Row("snapshot-freeze-own-namespace", lambda e: snapshot(freeze=True), ValueError, "own"),
    Row("snapshot-freeze-own-pid", lambda e: snapshot(os.getpid(), freeze=True), ValueError,
        "own"),
    Row("freeze_namespace-str", lambda e: freeze_namespace("1").__enter__(), TypeError, "pid"),
    Row("restore-None", lambda e: restore(None), TypeError, "Snapshot"),
    Row("restore-text", lambda e: restore(_snapshot_text(e)), TypeError, "Snapshot"),
    Row("restore-pid-str", lambda e: restore(e.snap(), "1"), TypeError, "pid"),
    Row("restore-progress-str", lambda e: restore(e.snap(), progress="bar"), TypeError,
        "progress"),
    Row("restore-into-itself", lambda e: restore(e.snap()), ipcbind.RestoreConflictError,
        "exists"),
    Row("dumps-None", lambda e: dumps(None), TypeError, "Snapshot"),
    Row("dumps-dict", lambda e: dumps({"queues": []}), TypeError, "Snapshot"),
    Row("dump-None", lambda e: dump(None, str(e.tmp / "out")), TypeError, "Snapshot"),
    Row("dump-to-an-fd", lambda e: dump(e.snap(), 1), TypeError, "int"),
    Row("dump-to-None", lambda e: dump(e.snap(), None), TypeError, "None"),
    Row("dump-to-a-closed-file", lambda e: dump(e.snap(), e.closed("w")), ValueError, "closed"),
    Row("dump-to-a-read-only-file", lambda e: dump(e.snap(), open(e.file("ro", ""))),
        io.UnsupportedOperation),
    Row("dump-to-a-directory", lambda e: dump(e.snap(), e.tmp), IsADirectoryError),
    Row("dump-into-a-missing-directory", lambda e: dump(e.snap(), e.tmp / "no" / "f"),
        FileNotFoundError, r"/no/f'$"),
    Row("loads-None", lambda e: loads(None), TypeError, "str or bytes"),
    Row("loads-int", lambda e: loads(5), TypeError, "str or bytes"),
    Row("loads-empty", lambda e: loads(""), SnapshotFormatError, "not JSON"),
    Row("loads-binary", lambda e: loads(bytes(range(256))), SnapshotFormatError, "UTF-8"),
    Row("loads-list", lambda e: loads("[]"), SnapshotFormatError, "not an ipcbind snapshot"),
    Row("loads-other-format", lambda e: loads('{"format": "criu"}'), SnapshotFormatError,
        "not an ipcbind snapshot"),
    Row("loads-version-3", lambda e: loads(_version_3(e)), SnapshotFormatError, "version 3"),
    Row("loads-edited", lambda e: loads(_edited(e)), SnapshotFormatError, "checksum"),
    Row("loads-taken_at-month-99",
        lambda e: loads(_taken_at(e, "2026-99-01T00:00:00.000000Z")), SnapshotFormatError,
        "taken_at: .* is not a real date and time"),
    Row("loads-taken_at-february-29-of-2025",
        lambda e: loads(_taken_at(e, "2025-02-29T00:00:00.000000Z")), SnapshotFormatError,
        "taken_at: .* is not a real date and time"),
    Row("loads-taken_at-second-60",
        lambda e: loads(_taken_at(e, "2026-01-01T00:00:60.000000Z")), SnapshotFormatError,
        "taken_at: .* is not a real date and time"),
    Row("loads-5000-digit-number", lambda e: loads("9" * 5000), SnapshotFormatError,
        "snapshot file"),
    Row("loads-5000-digit-field", lambda e: loads('{"format": "ipcbind-snapshot", "version": '
                                                  + "1" * 5000 + "}"),
        SnapshotFormatError, "snapshot file"),
    Row("loads-deeply-nested", lambda e: loads("[" * 100000), SnapshotFormatError,
        "snapshot file"),
    Row("load-None", lambda e: load(None), TypeError, "None"),
    Row("load-an-fd", lambda e: load(0), TypeError, "int"),
    Row("load-a-closed-file", lambda e: load(e.closed()), ValueError, "closed"),
    Row("load-a-write-only-file", lambda e: load(open(e.file("wo", ""), "w")),
        io.UnsupportedOperation),
    Row("load-a-directory", lambda e: load(e.tmp), IsADirectoryError),
    Row("load-a-missing-file", lambda e: load(e.tmp / "none"), FileNotFoundError),
    Row("load-dev-null", lambda e: load("/dev/null"), SnapshotFormatError, "not JSON"),
    Row("load-a-binary-file", lambda e: load(_binary(e)), SnapshotFormatError, "UTF-8"),
    Row("load-a-binary-file-object", lambda e: load(open(_binary(e), "rb")), SnapshotFormatError,
        "UTF-8"),
    Row("load-another-json-format", lambda e: load(_other_json(e)), SnapshotFormatError,
        "not an ipcbind snapshot"),
)


@rows(*SNAPSHOTS)
def test_snapshot_functions_refuse(row: Row, env: Env) -> None:
    check(row, env)


def test_dump_into_a_device_writes_through_it(env: Env) -> None:
    """A path that names no regular file (here a link to /dev/null) is written into,
    not replaced by a new file."""
    link = env.tmp / "sink"
    link.symlink_to("/dev/null")
    dump(env.snap(), link)
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert [p.name for p in env.tmp.iterdir()] == ["sink"]


def test_dump_into_a_fifo_writes_through_it(env: Env) -> None:
    fifo = env.tmp / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stdout.write("
                               f"str(len(open({str(fifo)!r}).read())))"],
                              stdout=subprocess.PIPE, text=True)
    try:
        dump(env.snap(), fifo)
        out, _ = reader.communicate(timeout=30)
    finally:
        reader.kill()
        reader.wait()
    assert int(out) == len(_snapshot_text(env))
    assert fifo.is_fifo()


# ---- the pytest plugin's helpers -------------------------------------------------------

PLUGIN = (
    Row("queue_messages-None", lambda e: queue_messages(None), TypeError, "message queue"),
    Row("queue_messages-str", lambda e: queue_messages("1"), TypeError, "message queue"),
    Row("queue_messages-negative", lambda e: queue_messages(-1), ValueError, "queue id"),
    Row("queue_messages-removed", lambda e: queue_messages(e.gq), OSError, None, GONE),
    Row("wait_for_messages-count-str", lambda e: wait_for_messages(e.q, "1"), TypeError,
        "count"),
    Row("wait_for_messages-count-negative", lambda e: wait_for_messages(e.q, -1), ValueError,
        "count"),
    Row("wait_for_messages-timeout-negative", lambda e: wait_for_messages(e.q, 1, -1),
        ValueError, "timeout"),
    Row("wait_for_messages-timeout-str", lambda e: wait_for_messages(e.q, 1, "1"), TypeError,
        "timeout"),
    Row("wait_for_messages-removed", lambda e: wait_for_messages(e.gq, 1), OSError, None, GONE),
    Row("wait_for_messages-too-few", lambda e: wait_for_messages(e.q, 2, 0), AssertionError,
        "holds 1 message"),
    Row("semaphore_values-None", lambda e: semaphore_values(None), TypeError, "semaphore set"),
    Row("semaphore_values-bool", lambda e: semaphore_values(True), TypeError, "semaphore set"),
    Row("semaphore_values-2**40", lambda e: semaphore_values(2 ** 40), ValueError, "semid"),
    Row("semaphore_values-removed", lambda e: semaphore_values(e.gs), OSError, None, GONE),
)


@rows(*PLUGIN)
def test_plugin_helpers_refuse(row: Row, env: Env) -> None:
    check(row, env)


# ---- the command line ----------------------------------------------------------------

class Cli(NamedTuple):
    name: str
    argv: Callable[[Env], List[str]]
    code: int
    match: Optional[str] = None   # in the error line


def cli_rows(*table: Cli) -> Any:
    return pytest.mark.parametrize("case", table, ids=[c.name for c in table])


def _huge_int_file(e: Env) -> str:
    return e.file("huge.json", '{"version": ' + "9" * 5000 + "}")


def _restore(*args: str) -> List[str]:
    return ["restore", "--own-namespace", *args]


def _dump(e: Env, *args: str) -> List[str]:
    e.own_namespace()
    return ["dump", *args]


def _semundo_binary(e: Env) -> List[str]:
    return ["semundo", "100", "--proc-root", _proc(e, bytes(range(256)))]


COMMANDS = (
    Cli("nothing", lambda e: [], 2, "required"),
    Cli("unknown-command", lambda e: ["bogus"], 2, "invalid choice"),
    Cli("unknown-option", lambda e: ["ls", "--bogus"], 2, "unrecognized"),
    Cli("pid-0", lambda e: ["--pid", "0", "ls"], 2, "not a pid"),
    Cli("pid-word", lambda e: ["ls", "--pid", "me"], 2, "not a pid"),
    Cli("pid-no-such", lambda e: ["ls", "--pid", str(NO_SUCH_PID)], 3, "no process"),
    Cli("pid-2**70", lambda e: ["ls", "--pid", str(2 ** 70)], 3, "no process"),
    Cli("ls-extra-argument", lambda e: ["ls", "1"], 2, "unrecognized"),
    Cli("peek-no-id", lambda e: ["peek"], 2, "required"),
    Cli("peek-id-word", lambda e: ["peek", "q"], 2, "not a number"),
    Cli("peek-id-negative", lambda e: ["peek", "--", "-1"], 2, ">= 0"),
    Cli("peek-id-2**31", lambda e: ["peek", str(2 ** 31)], 2, "2147483648"),
    Cli("peek-id-2**70", lambda e: ["peek", str(2 ** 70)], 2, "queue id"),
    Cli("peek-removed", lambda e: ["peek", str(e.gq)], 3, "no message queue"),
    Cli("peek-index-past-the-end", lambda e: ["peek", str(e.q.id), "--index", "1"], 3,
        "no message at index 1"),
    Cli("peek-index-2**63", lambda e: ["peek", str(e.q.id), "--index", str(2 ** 63)], 2,
        "index"),
    Cli("peek-index-2**70", lambda e: ["peek", str(e.q.id), "--index", str(2 ** 70)], 2,
        "index"),
    Cli("peek-format-xml", lambda e: ["peek", str(e.q.id), "--format", "xml"], 2,
        "invalid choice"),
    Cli("dump-retries-0", lambda e: ["dump", "--retries", "0"], 2, ">= 1"),
    Cli("dump-freeze-own", lambda e: ["dump", "--freeze"], 2, "--freeze"),
    Cli("dump-to-a-directory", lambda e: _dump(e, "-o", str(e.tmp)), 1, "directory"),
    Cli("dump-into-a-missing-directory", lambda e: _dump(e, "-o", "no/f"), 3,
        "no such file: no/f"),
    Cli("restore-no-file", lambda e: ["restore"], 2, "required"),
    Cli("restore-missing-file", lambda e: _restore(str(e.tmp / "none")), 3, "no such file"),
    Cli("restore-a-directory", lambda e: _restore(str(e.tmp)), 1, "directory"),
    Cli("restore-dev-null", lambda e: _restore("/dev/null"), 5, "not JSON"),
    Cli("restore-a-binary-file", lambda e: _restore(_binary(e)), 5, "UTF-8"),
    Cli("restore-another-json-format", lambda e: _restore(_other_json(e)), 5,
        "not an ipcbind snapshot"),
    Cli("restore-a-5000-digit-number", lambda e: _restore(_huge_int_file(e)), 5,
        "snapshot file"),
    Cli("restore-version-3", lambda e: _restore(e.file("v3", _version_3(e))), 5, "version"),
    Cli("restore-edited", lambda e: _restore(e.file("ed", _edited(e))), 5, "checksum"),
    Cli("restore-into-itself", lambda e: _restore(e.file("same", _snapshot_text(e))), 6,
        "exists"),
    Cli("semundo-no-pid", lambda e: ["semundo"], 2, "required"),
    Cli("semundo-pid-0", lambda e: ["semundo", "0"], 2, "not a pid"),
    Cli("semundo-pid-word", lambda e: ["semundo", "self"], 2, "not a pid"),
    Cli("semundo-no-such-pid", lambda e: ["semundo", str(NO_SUCH_PID)], 3, "no such process"),
    Cli("semundo-mainline", lambda e: ["semundo", str(os.getpid())],
        0 if ipcbind.semundo_supported() else 7, None),
    Cli("semundo-binary-file", _semundo_binary, 1, "line 1"),
    Cli("semundo-proc-root-dev-null", lambda e: ["semundo", "1", "--proc-root", "/dev/null"], 1,
        "Not a directory"),
    Cli("demo-json", lambda e: ["demo", "--json"], 2, "unrecognized"),
)


@cli_rows(*COMMANDS)
def test_command_refuses(case: Cli, env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    code = main(case.argv(env), out=out)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    if code:
        *usage, last = err.strip().splitlines()
        assert last.startswith("ipcbind: error: "), err
        assert all(line.startswith(("usage: ", " ")) for line in usage), err
        if case.match:
            assert case.match in last, last


@pytest.mark.parametrize("stdin", [b"", b"\xff\xfe", b"[1, 2]"], ids=["empty", "binary", "list"])
def test_restore_from_stdin_refuses_what_is_no_snapshot(
        stdin: bytes, env: Env, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    assert main(["restore", "-", "--own-namespace"], out=io.StringIO()) == 5
    assert capsys.readouterr().err.startswith("ipcbind: error: ")


def test_restore_from_a_closed_stdin_is_an_error_not_a_traceback(
        env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.TextIOWrapper(io.BytesIO(b""))
    closed.close()
    monkeypatch.setattr(sys, "stdin", closed)
    assert main(["restore", "-", "--own-namespace"], out=io.StringIO()) == 1
    assert capsys.readouterr().err.startswith("ipcbind: error: ")


def test_dump_into_dev_null_succeeds(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.own_namespace()
    link = env.tmp / "null"
    link.symlink_to("/dev/null")
    assert main(["dump", "-o", str(link)], out=io.StringIO()) == 0
    assert link.is_symlink()


@pytest.mark.parametrize("argv, code", [
    (["peek", str(2 ** 70)], 2),
    (["restore", "/dev/null", "--own-namespace"], 5),
    (["semundo", "0"], 2),
], ids=["peek-2**70", "restore-dev-null", "semundo-pid-0"])
def test_python_m_ipcbind_refuses_without_traceback(argv: List[str], code: int,
                                                    tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ipcbind", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("ipcbind: error: ")
    assert done.stdout == ""
