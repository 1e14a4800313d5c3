"""Semaphore sets against the real kernel: one test per fact of the kernel's
contract for semop/semtimedop (SEM_UNDO included), semctl and semget."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from typing import Callable

import pytest

import ipcbind as ipc
from ipcbind import (
    GETALL,
    GETNCNT,
    GETPID,
    GETVAL,
    GETZCNT,
    IPC_CREAT,
    IPC_INFO,
    IPC_NOWAIT,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    SEM_INFO,
    SEM_STAT,
    SEM_STAT_ANY,
    SEM_UNDO,
    SETALL,
    SETVAL,
)
from conftest import NOBODY, index_of, needs_stat_any, reap, run_in_child, start_child
from sysv_helpers import (
    IS_ROOT,
    run_as_stranger,
    sem_limits,
    semop_then_exit,
    wait_until,
)

SEMVMX = 32767


def val(s: int, n: int = 0) -> int:
    return ipc.semctl(s, n, GETVAL)


def errno_of(call: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        call()
    return e.value.errno


# ---- semop: the order of its checks -------------------------------------------------

def test_semop_more_ops_than_semopm_is_e2big(semset: int) -> None:
    semopm = sem_limits()[2]
    with pytest.raises(ipc.TooBigError) as e:
        ipc.semop(semset, [(0, 0)] * (semopm + 1))
    assert e.value.errno == errno.E2BIG


def test_semop_e2big_comes_before_unknown_id_and_efbig(make_semset: Callable[..., int]) -> None:
    s = make_semset()
    too_many = [(1, 0)] * (sem_limits()[2] + 1)
    assert errno_of(lambda: ipc.semop(s, too_many)) == errno.E2BIG
    ipc.semctl(s, 0, IPC_RMID)
    assert errno_of(lambda: ipc.semop(s, too_many)) == errno.E2BIG


def test_semop_with_no_ops_is_einval(semset: int) -> None:
    assert errno_of(lambda: ipc.semop(semset, [])) == errno.EINVAL


def test_semop_on_an_unknown_id_is_einval(make_semset: Callable[..., int]) -> None:
    s = make_semset()
    ipc.semctl(s, 0, IPC_RMID)
    assert errno_of(lambda: ipc.semop(s, [(0, 1)])) == errno.EINVAL


def test_semop_on_a_negative_id_is_einval() -> None:
    assert errno_of(lambda: ipc.semop(-1, [(0, 1, IPC_NOWAIT)])) == errno.EINVAL


def test_semop_sem_num_at_or_past_nsems_is_efbig(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    assert errno_of(lambda: ipc.semop(s, [(0, 1), (2, 1)])) == errno.EFBIG
    assert ipc.semctl(s, 0, GETALL) == [0, 0]


def test_semop_efbig_comes_before_eacces() -> None:
    s = ipc.semget(ipc.IPC_PRIVATE, 1, IPC_CREAT | 0o000)

    def child() -> int:
        try:
            ipc.semop(s, [(1, 1)])
        except OSError as e:
            return 0 if e.errno == errno.EFBIG else 1
        return 2
    try:
        assert run_as_stranger(child) == 0
    finally:
        ipc.semctl(s, 0, IPC_RMID)


def test_semop_without_permission_is_eacces() -> None:
    s = ipc.semget(ipc.IPC_PRIVATE, 1, IPC_CREAT | 0o000)

    def child() -> int:
        try:
            ipc.semop(s, [(0, 1)])
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES else 1
        return 2
    try:
        assert run_as_stranger(child) == 0
        ipc.semctl(s, 0, IPC_SET, {"mode": 0o600})   # so that a normal user may look
        assert val(s) == 0
    finally:
        ipc.semctl(s, 0, IPC_RMID)


# ---- semop: results ---------------------------------------------------------------------

def test_semop_applies_all_ops_or_none(make_semset: Callable[..., int]) -> None:
    s = make_semset(3)
    ipc.semctl(s, 0, SETALL, [1, 0, SEMVMX])
    with pytest.raises(BlockingIOError):
        ipc.semop(s, [(0, -1), (1, -1, IPC_NOWAIT)])
    with pytest.raises(ipc.OutOfRangeError):
        ipc.semop(s, [(0, -1), (1, 1), (2, 1)])
    assert ipc.semctl(s, 0, GETALL) == [1, 0, SEMVMX]
    ipc.semop(s, [(0, -1), (1, 2), (1, -1)])
    assert ipc.semctl(s, 0, GETALL) == [0, 1, SEMVMX]


def test_semop_result_above_semvmx_is_erange(semset: int) -> None:
    ipc.semctl(semset, 0, SETVAL, SEMVMX)
    with pytest.raises(ipc.OutOfRangeError) as e:
        ipc.semop(semset, [(0, 1)])
    assert e.value.errno == errno.ERANGE
    assert val(semset) == SEMVMX


def test_semop_semadj_outside_short_range_is_erange() -> None:
    def child() -> int:
        s = ipc.semget(ipc.IPC_PRIVATE, 1, IPC_CREAT | 0o600)
        try:
            ipc.semop(s, [(0, SEMVMX, SEM_UNDO)])   # semadj -32767
            ipc.semop(s, [(0, -SEMVMX)])
            ipc.semop(s, [(0, 1, SEM_UNDO)])        # semadj -32768: still a short
            try:
                ipc.semop(s, [(0, 1, SEM_UNDO)])    # semadj -32769: out of range
            except ipc.OutOfRangeError as e:
                return 0 if e.errno == errno.ERANGE and val(s) == 1 else 1
            return 2
        finally:
            ipc.semctl(s, 0, IPC_RMID)
    assert run_in_child(child) == 0


def test_semop_would_block_with_ipc_nowait_is_eagain(semset: int) -> None:
    with pytest.raises(BlockingIOError) as e:
        ipc.semop(semset, [(0, -1, IPC_NOWAIT)])
    assert e.value.errno == errno.EAGAIN
    ipc.semop(semset, [(0, 1)])
    with pytest.raises(BlockingIOError):
        ipc.semop(semset, [(0, 0, IPC_NOWAIT)])


def test_semtimedop_timeout_is_eagain(semset: int) -> None:
    t0 = time.monotonic()
    with pytest.raises(BlockingIOError) as e:
        ipc.semop(semset, [(0, -1)], timeout=0.2)
    elapsed = time.monotonic() - t0
    assert e.value.errno == errno.EAGAIN
    assert 0.15 <= elapsed < 5
    with pytest.raises(BlockingIOError):
        ipc.semop(semset, [(0, -1)], timeout=0)


def test_semop_returns_when_another_process_makes_room(semset: int) -> None:
    pid = start_child(lambda: semop_then_exit(semset, [(0, 2)]))
    ipc.semop(semset, [(0, -2)], timeout=10)
    assert reap(pid) == 0
    assert val(semset) == 0


# ---- SEM_UNDO -------------------------------------------------------------------------

def test_semadj_is_applied_when_the_process_exits(semset: int) -> None:
    ipc.semctl(semset, 0, SETVAL, 2)

    def child() -> int:
        ipc.semop(semset, [(0, -1, SEM_UNDO)])
        return 0 if val(semset) == 1 else 1
    assert run_in_child(child) == 0
    assert val(semset) == 2


def test_semadj_is_not_inherited_by_fork(semset: int) -> None:
    def child() -> int:
        ipc.semop(semset, [(0, 1, SEM_UNDO)])
        if run_in_child(lambda: 0) != 0:
            return 1
        return 0 if val(semset) == 1 else 2
    assert run_in_child(child) == 0
    assert val(semset) == 0


def test_semadj_is_shared_by_threads_and_a_thread_exit_undoes_nothing(semset: int) -> None:
    def child() -> int:
        t = threading.Thread(target=ipc.semop, args=(semset, [(0, 3, SEM_UNDO)]))
        t.start()
        t.join()
        if val(semset) != 3:
            return 1
        ipc.semop(semset, [(0, -1, SEM_UNDO)])   # same semadj: now -2
        return 0
    assert run_in_child(child) == 0
    assert val(semset) == 0


@pytest.mark.skipif(not os.access(sys.executable, os.X_OK),
                    reason=f"{sys.executable} cannot be executed by this user")
def test_semadj_is_kept_across_execve(make_semset: Callable[..., int]) -> None:
    s = make_semset(3)
    code = ("import ipcbind as i, sys; s = int(sys.argv[1]); "
            "i.semop(s, [(1, 1)]); i.semop(s, [(2, -1)])")

    def child() -> int:
        ipc.semop(s, [(0, 1, SEM_UNDO)])
        os.execv(sys.executable, [sys.executable, "-c", code, str(s)])
        return 1
    pid = start_child(child)
    try:
        ipc.semop(s, [(1, -1)], timeout=10)      # the new program runs
        assert val(s) == 1
    finally:
        ipc.semop(s, [(2, 1)])
        assert reap(pid) == 0
    assert val(s) == 0


def start_undo_holder(s: int, op: int) -> int:
    """Fork a child that adds ``op`` to semaphore 0 with SEM_UNDO, then waits for
    semaphore 1 to be raised before it exits (and its adjustment is undone)."""
    def child() -> int:
        ipc.semop(s, [(0, op, SEM_UNDO)])
        ipc.semop(s, [(1, -1)])
        return 0
    return start_child(child)


def test_semadj_at_exit_is_clamped_to_zero(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    pid = start_undo_holder(s, 5)
    try:
        ipc.semop(s, [(0, -4)], timeout=10)      # leaves 1; the child will undo 5
    finally:
        ipc.semop(s, [(1, 1)])
        assert reap(pid) == 0
    assert val(s) == 0


def test_setval_zeroes_the_semadj_of_other_processes(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    pid = start_undo_holder(s, 1)
    try:
        ipc.semop(s, [(0, -1), (0, 1)], timeout=10)   # wait for the child's +1
        ipc.semctl(s, 0, SETVAL, 5)
    finally:
        ipc.semop(s, [(1, 1)])
        assert reap(pid) == 0
    assert val(s) == 5


def test_setall_zeroes_the_semadj_of_other_processes(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    pid = start_undo_holder(s, 1)
    try:
        ipc.semop(s, [(0, -1), (0, 1)], timeout=10)
        ipc.semctl(s, 0, SETALL, [5, 1])
    finally:
        assert reap(pid) == 0
    assert ipc.semctl(s, 0, GETALL) == [5, 0]


# ---- semctl -------------------------------------------------------------------------------

def test_semctl_setval_then_getval(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    assert ipc.semctl(s, 1, SETVAL, SEMVMX) is None
    assert (val(s, 0), val(s, 1)) == (0, SEMVMX)


def test_semctl_setall_then_getall(make_semset: Callable[..., int]) -> None:
    s = make_semset(3)
    assert ipc.semctl(s, 0, SETALL, (0, 7, SEMVMX)) is None
    assert ipc.semctl(s, 0, GETALL) == [0, 7, SEMVMX]


def test_semctl_setall_with_the_wrong_length_is_valueerror(make_semset: Callable[..., int]) -> None:
    s = make_semset(3)
    for values in ([1, 2], [1, 2, 3, 4]):
        with pytest.raises(ValueError, match="3 values"):
            ipc.semctl(s, 0, SETALL, values)
    assert ipc.semctl(s, 0, GETALL) == [0, 0, 0]


def test_semctl_setall_minus_1_is_overflowerror(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    with pytest.raises(OverflowError):
        ipc.semctl(s, 0, SETALL, [1, -1])
    assert ipc.semctl(s, 0, GETALL) == [0, 0]


def test_semctl_setall_above_semvmx_is_erange(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    with pytest.raises(ipc.OutOfRangeError) as e:
        ipc.semctl(s, 0, SETALL, [1, 40000])
    assert e.value.errno == errno.ERANGE
    assert ipc.semctl(s, 0, GETALL) == [0, 0]


def test_semctl_setval_out_of_range_is_erange(semset: int) -> None:
    for v in (-1, SEMVMX + 1):
        with pytest.raises(ipc.OutOfRangeError):
            ipc.semctl(semset, 0, SETVAL, v)
    assert val(semset) == 0


def test_semctl_semnum_out_of_range_is_einval(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    for cmd in (GETVAL, GETPID, GETNCNT, GETZCNT):
        assert errno_of(lambda: ipc.semctl(s, 2, cmd)) == errno.EINVAL
    assert errno_of(lambda: ipc.semctl(s, 2, SETVAL, 1)) == errno.EINVAL
    assert errno_of(lambda: ipc.semctl(s, -1, GETVAL)) == errno.EINVAL


def test_semctl_unknown_cmd_is_einval(semset: int) -> None:
    assert errno_of(lambda: ipc.semctl(semset, 0, 1234)) == errno.EINVAL


def test_semctl_getpid_is_the_last_process_to_operate(semset: int) -> None:
    assert ipc.semctl(semset, 0, GETPID) == 0
    pid = start_child(lambda: semop_then_exit(semset, [(0, 1)]))
    assert reap(pid) == 0
    assert ipc.semctl(semset, 0, GETPID) == pid
    ipc.semop(semset, [(0, -1)])
    assert ipc.semctl(semset, 0, GETPID) == os.getpid()


def test_semctl_getncnt_counts_a_process_waiting_for_an_increase(semset: int) -> None:
    pid = start_child(lambda: semop_then_exit(semset, [(0, -1)]))
    try:
        wait_until(lambda: ipc.semctl(semset, 0, GETNCNT) == 1, what="GETNCNT == 1")
        assert ipc.semctl(semset, 0, GETZCNT) == 0
    finally:
        ipc.semop(semset, [(0, 1)])
        assert reap(pid) == 0
    assert ipc.semctl(semset, 0, GETNCNT) == 0


def test_semctl_getzcnt_counts_a_process_waiting_for_zero(semset: int) -> None:
    ipc.semctl(semset, 0, SETVAL, 1)
    pid = start_child(lambda: semop_then_exit(semset, [(0, 0)]))
    try:
        wait_until(lambda: ipc.semctl(semset, 0, GETZCNT) == 1, what="GETZCNT == 1")
        assert ipc.semctl(semset, 0, GETNCNT) == 0
    finally:
        ipc.semop(semset, [(0, -1)])
        assert reap(pid) == 0
    assert ipc.semctl(semset, 0, GETZCNT) == 0


def test_semctl_ipc_stat_reports_the_set(make_semset: Callable[..., int]) -> None:
    t0 = int(time.time())
    s = make_semset(3, mode=0o640)
    st = ipc.semctl(s, 0, IPC_STAT)
    assert (st.key, st.mode, st.nsems, st.otime) == (0, 0o640, 3, 0)
    assert (st.uid, st.gid, st.cuid, st.cgid) == (os.geteuid(), os.getegid()) * 2
    assert t0 - 2 <= st.ctime <= time.time() + 2
    ipc.semop(s, [(2, 1)])
    assert t0 - 2 <= ipc.semctl(s, 0, IPC_STAT).otime <= time.time() + 2


def test_semctl_ipc_set_changes_the_mode(semset: int) -> None:
    assert ipc.semctl(semset, 0, IPC_SET, {"mode": 0o604}) is None
    assert ipc.semctl(semset, 0, IPC_STAT).mode == 0o604


def test_semctl_ipc_rmid_removes_the_set(make_semset: Callable[..., int]) -> None:
    s = make_semset()
    assert ipc.semctl(s, 0, IPC_RMID) is None
    assert errno_of(lambda: ipc.semctl(s, 0, GETVAL)) == errno.EINVAL


def own_sem_index(s: int) -> int:
    """The index of our own set, asking only for indices that can be ours."""
    index = index_of(s, lambda i, cmd: ipc.semctl(i, 0, cmd), (SEM_STAT_ANY, SEM_STAT))
    if index is None:
        raise AssertionError(f"no index gives back set {s}")
    return index


@needs_stat_any
def test_semctl_sem_stat_and_sem_stat_any_take_an_index_and_return_the_id(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(4)
    index = own_sem_index(s)
    for cmd in (SEM_STAT, SEM_STAT_ANY):
        found, st = ipc.semctl(index, 0, cmd)
        assert (found, st.nsems) == (s, 4)
    assert index <= ipc.semctl(0, 0, IPC_INFO)[0]


@needs_stat_any
def test_sem_stat_needs_read_permission_sem_stat_any_does_not() -> None:
    s = ipc.semget(ipc.IPC_PRIVATE, 1, IPC_CREAT | 0o000)
    try:
        index = own_sem_index(s)

        def child() -> int:
            try:
                ipc.semctl(index, 0, SEM_STAT)
                return 1
            except PermissionError as e:
                if e.errno != errno.EACCES:
                    return 2
            return 0 if ipc.semctl(index, 0, SEM_STAT_ANY)[0] == s else 3
        assert run_as_stranger(child) == 0
    finally:
        ipc.semctl(s, 0, IPC_RMID)


def test_semctl_ipc_info_reports_the_limits(semset: int) -> None:
    semmsl, semmns, semopm, semmni = sem_limits()
    highest, info = ipc.semctl(0, 0, IPC_INFO)
    assert (info.semmsl, info.semmns, info.semopm, info.semmni) == (semmsl, semmns, semopm,
                                                                     semmni)
    assert (info.semvmx, info.semaem) == (SEMVMX, SEMVMX)
    assert highest >= own_sem_index(semset)


def test_semctl_sem_info_counts_sets_and_semaphores_in_use(make_semset: Callable[..., int]) -> None:
    make_semset(5)
    _, info = ipc.semctl(0, 0, SEM_INFO)
    assert info.semusz >= 1
    assert info.semaem >= 5


# ---- semget -------------------------------------------------------------------------------

def test_semget_creating_with_nsems_0_is_einval() -> None:
    with pytest.raises(OSError) as e:
        ipc.semget(ipc.IPC_PRIVATE, 0, IPC_CREAT | 0o600)
    assert e.value.errno == errno.EINVAL


def test_semget_opening_with_more_nsems_than_the_set_has_is_einval(
        make_semset: Callable[..., int], random_key: Callable[[], int]) -> None:
    key = random_key()
    s = make_semset(2, key=key, flags=IPC_CREAT | ipc.IPC_EXCL)
    assert ipc.semget(key, 2) == s
    assert ipc.semget(key, 0) == s
    with pytest.raises(OSError) as e:
        ipc.semget(key, 3)
    assert e.value.errno == errno.EINVAL


def test_sem_ops_are_seen_by_another_process_in_order(semset: int) -> None:
    def child() -> int:
        for _ in range(50):
            ipc.semop(semset, [(0, 1)])
        return 0
    pid = start_child(child)
    for _ in range(50):
        ipc.semop(semset, [(0, -1)], timeout=10)
    assert reap(pid) == 0
    assert val(semset) == 0


@pytest.fixture
def random_key() -> Callable[[], int]:
    """A key that no object uses right now (objects made with it are the test's to remove)."""
    import random

    def pick() -> int:
        while True:
            key = random.randrange(1, 2 ** 31)
            free = True
            for get in (lambda: ipc.semget(key, 0), lambda: ipc.msgget(key)):
                try:
                    get()
                    free = False
                except FileNotFoundError:
                    pass
            if free:
                return key
    return pick


@needs_stat_any
def test_semctl_ipc_set_by_an_owner_without_read_permission_keeps_other_fields(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(mode=0o000)
    owner = NOBODY if IS_ROOT else os.geteuid()
    if IS_ROOT:
        ipc.semctl(s, 0, IPC_SET, {"uid": owner})

    def child() -> int:
        ipc.semctl(s, 0, IPC_SET, {"mode": 0o640})
        return 0
    assert run_in_child(child, uid=owner if IS_ROOT else None) == 0
    st = ipc.semctl(s, 0, IPC_STAT)
    assert (st.mode, st.uid, st.gid) == (0o640, owner, os.getegid())


@needs_stat_any
def test_semctl_setall_needs_only_write_permission(make_semset: Callable[..., int]) -> None:
    s = make_semset(2, mode=0o222)

    def child() -> int:
        ipc.semctl(s, 0, SETALL, [3, 4])
        try:
            ipc.semctl(s, 0, GETALL)
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES else 1
        return 2
    assert run_as_stranger(child) == 0
    ipc.semctl(s, 0, IPC_SET, {"mode": 0o600})
    assert ipc.semctl(s, 0, GETALL) == [3, 4]
