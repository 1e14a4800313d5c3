"""Another user against objects of root: EACCES for operations, EPERM for control.

Every test forks a child that switches to uid 65534, which only root may do; as
a normal user these tests skip (the EACCES cases also run without root, against
objects of mode 0 in test_msg_kernel.py and test_sem_kernel.py)."""

from __future__ import annotations

import errno
from typing import Callable

import ipcbind as ipc
from ipcbind import IPC_NOWAIT, IPC_RMID, IPC_SET, IPC_STAT, SETVAL
from conftest import NOBODY, needs_root, needs_stat_any, run_in_child

pytestmark = needs_root


def as_nobody(call: Callable[[], object], expected: int) -> int:
    """Run call as uid 65534; exit 0 when it fails with ``expected``."""
    def child() -> int:
        try:
            call()
        except OSError as e:
            return 0 if e.errno == expected else 1
        return 2
    return run_in_child(child, uid=NOBODY)


def test_msgsnd_by_another_user_is_eacces(msq: int) -> None:
    assert as_nobody(lambda: ipc.msgsnd(msq, 1, b"x", IPC_NOWAIT), errno.EACCES) == 0
    assert ipc.msgctl(msq, IPC_STAT).qnum == 0


def test_msgrcv_by_another_user_is_eacces_and_takes_nothing(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"x")
    assert as_nobody(lambda: ipc.msgrcv(msq, None, 0, IPC_NOWAIT), errno.EACCES) == 0
    assert ipc.msgctl(msq, IPC_STAT).qnum == 1


def test_msg_copy_by_another_user_is_eacces(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"x")
    call = lambda: ipc.msgrcv(msq, None, 0, ipc.MSG_COPY | IPC_NOWAIT)  # noqa: E731
    assert as_nobody(call, errno.EACCES) == 0


def test_msgctl_ipc_stat_by_another_user_is_eacces(msq: int) -> None:
    assert as_nobody(lambda: ipc.msgctl(msq, IPC_STAT), errno.EACCES) == 0


@needs_stat_any
def test_msgctl_ipc_set_by_another_user_is_eperm(msq: int) -> None:
    assert as_nobody(lambda: ipc.msgctl(msq, IPC_SET, {"mode": 0o666}), errno.EPERM) == 0
    assert ipc.msgctl(msq, IPC_STAT).mode == 0o600


def test_msgctl_ipc_rmid_by_another_user_is_eperm(msq: int) -> None:
    assert as_nobody(lambda: ipc.msgctl(msq, IPC_RMID), errno.EPERM) == 0
    ipc.msgctl(msq, IPC_STAT)


def test_a_user_made_owner_by_ipc_set_may_control_the_queue(msq: int) -> None:
    ipc.msgctl(msq, IPC_SET, {"uid": NOBODY, "gid": NOBODY})
    s = ipc.msgctl(msq, IPC_STAT)
    assert (s.uid, s.gid, s.cuid) == (NOBODY, NOBODY, 0)

    def child() -> int:
        ipc.msgsnd(msq, 1, b"mine now")
        ipc.msgctl(msq, IPC_SET, {"mode": 0o640})
        return 0
    assert run_in_child(child, uid=NOBODY) == 0
    assert ipc.msgctl(msq, IPC_STAT).mode == 0o640


def test_semop_by_another_user_is_eacces(semset: int) -> None:
    assert as_nobody(lambda: ipc.semop(semset, [(0, 1, IPC_NOWAIT)]), errno.EACCES) == 0
    assert ipc.semctl(semset, 0, ipc.GETVAL) == 0


def test_semctl_getval_and_setval_by_another_user_are_eacces(semset: int) -> None:
    assert as_nobody(lambda: ipc.semctl(semset, 0, ipc.GETVAL), errno.EACCES) == 0
    assert as_nobody(lambda: ipc.semctl(semset, 0, SETVAL, 3), errno.EACCES) == 0
    assert ipc.semctl(semset, 0, ipc.GETVAL) == 0


@needs_stat_any
def test_semctl_ipc_set_by_another_user_is_eperm(semset: int) -> None:
    assert as_nobody(lambda: ipc.semctl(semset, 0, IPC_SET, {"mode": 0o666}),
                     errno.EPERM) == 0
    assert ipc.semctl(semset, 0, IPC_STAT).mode == 0o600


def test_semctl_ipc_rmid_by_another_user_is_eperm(semset: int) -> None:
    assert as_nobody(lambda: ipc.semctl(semset, 0, IPC_RMID), errno.EPERM) == 0
    ipc.semctl(semset, 0, IPC_STAT)


def test_read_permission_is_enough_to_receive_write_to_send(make_queue: Callable[..., int]
                                                             ) -> None:
    readable = make_queue(mode=0o604)
    writable = make_queue(mode=0o602)
    ipc.msgsnd(readable, 1, b"for anyone")

    def child() -> int:
        if ipc.msgrcv(readable, None, 0, IPC_NOWAIT) != (1, b"for anyone"):
            return 1
        ipc.msgsnd(writable, 2, b"from nobody")
        try:
            ipc.msgsnd(readable, 1, b"x", IPC_NOWAIT)
            return 2
        except PermissionError:
            pass
        try:
            ipc.msgrcv(writable, None, 0, IPC_NOWAIT)
            return 3
        except PermissionError:
            return 0
    assert run_in_child(child, uid=NOBODY) == 0
    assert ipc.msgctl(writable, IPC_STAT).lspid > 0
    assert ipc.msgrcv(writable, None, 0, IPC_NOWAIT) == (2, b"from nobody")


def test_semop_waiting_for_zero_needs_read_altering_needs_write(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(mode=0o604)

    def child() -> int:
        ipc.semop(s, [(0, 0, IPC_NOWAIT)])
        try:
            ipc.semop(s, [(0, 1, IPC_NOWAIT)])
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES else 1
        return 2
    assert run_in_child(child, uid=NOBODY) == 0
    assert ipc.semctl(s, 0, ipc.GETVAL) == 0
