"""Shared memory segments against the real kernel: one test per fact of the kernel's
contract for shmget, shmat, shmdt and shmctl, and the syscall-shaped layer's own
rules (values refused before any call, errors naming the call and the id)."""

from __future__ import annotations

import dataclasses
import errno
import mmap
import os
import time
from typing import Callable

import pytest

import ipcbind as ipc
from ipcbind import (
    IPC_CREAT,
    IPC_EXCL,
    IPC_INFO,
    IPC_PRIVATE,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    SHM_EXEC,
    SHM_INFO,
    SHM_LOCK,
    SHM_NORESERVE,
    SHM_RDONLY,
    SHM_REMAP,
    SHM_RND,
    SHM_STAT,
    SHM_STAT_ANY,
    SHM_UNLOCK,
)
from conftest import NOBODY, index_of, needs_root, needs_stat_any, run_in_child, unused_segment_key
from sysv_helpers import IS_ROOT, proc_int, run_as_stranger

PAGE = mmap.PAGESIZE


def errno_of(call: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        call()
    return e.value.errno


# ---- shmget ---------------------------------------------------------------------------

def test_shmget_size_0_is_einval() -> None:
    assert errno_of(lambda: ipc.shmget(IPC_PRIVATE, 0, IPC_CREAT | 0o600)) == errno.EINVAL


def test_shmget_opening_with_a_larger_size_is_einval(make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    make_segment(size=5000, key=k)
    assert errno_of(lambda: ipc.shmget(k, 5001)) == errno.EINVAL


def test_shmget_opening_with_a_smaller_or_zero_size_gives_the_segment(
        make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    i = make_segment(size=5000, key=k)
    assert ipc.shmget(k, 1) == ipc.shmget(k, 0) == i


def test_shmget_missing_key_without_ipc_creat_is_enoent() -> None:
    k = unused_segment_key()
    with pytest.raises(FileNotFoundError) as e:
        ipc.shmget(k, 4096)
    assert "shmget(key=" in str(e.value)


def test_shmget_excl_on_an_existing_key_is_eexist(make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    make_segment(key=k)
    with pytest.raises(FileExistsError):
        ipc.shmget(k, 4096, IPC_CREAT | IPC_EXCL | 0o600)


def test_shmget_above_shmmax_is_einval() -> None:
    shmmax = ipc.shmctl(0, IPC_INFO)[1].shmmax
    if shmmax >= 2 ** 64 - 1:
        pytest.skip("shmmax is the largest size_t: no size is above it")
    assert errno_of(lambda: ipc.shmget(IPC_PRIVATE, shmmax + 1, IPC_CREAT | 0o600)) == \
        errno.EINVAL


def test_shmget_noreserve_makes_a_segment(make_segment: Callable[..., int]) -> None:
    i = make_segment(size=1 << 30, flags=IPC_CREAT | SHM_NORESERVE)
    assert ipc.shmctl(i, IPC_STAT).segsz == 1 << 30


def test_key_reads_unsigned_as_ipcs_prints_it(make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    assert k >= 2 ** 31
    i = make_segment(key=k)
    assert ipc.shmctl(i, IPC_STAT).key == k
    assert ipc.shmget(k - 2 ** 32, 0) == i  # the kernel's own (signed) form opens it too


# ---- shmat / shmdt ----------------------------------------------------------------------

def test_attachment_is_exactly_the_segments_size(make_segment: Callable[..., int]) -> None:
    i = make_segment(size=PAGE + 123)
    with ipc.shmat(i) as a:
        assert len(a) == PAGE + 123
        with memoryview(a) as v:
            assert v.nbytes == PAGE + 123 and not v.readonly


def test_a_new_segment_reads_zero(seg: int) -> None:
    with ipc.shmat(seg, SHM_RDONLY) as a:
        assert a[:] == bytes(4096)


def test_two_attachments_see_one_memory(seg: int) -> None:
    with ipc.shmat(seg) as a, ipc.shmat(seg, SHM_RDONLY) as b:
        a[100:105] = b"hello"
        assert b[100:105] == b"hello"
        assert ipc.shmctl(seg, IPC_STAT).nattch == 2


def test_shmdt_drops_nattch_and_sets_lpid_and_dtime(seg: int) -> None:
    a = ipc.shmat(seg)
    assert ipc.shmctl(seg, IPC_STAT).nattch == 1
    before = int(time.time())
    ipc.shmdt(a)
    ds = ipc.shmctl(seg, IPC_STAT)
    assert (ds.nattch, ds.lpid) == (0, os.getpid())
    assert ds.dtime >= before


def test_a_forked_child_inherits_attachments_and_its_exec_detaches_them(seg: int) -> None:
    """fork copies the attachments (nattch +1); execve detaches them, which makes the
    child the segment's lpid. A vfork (CPython's subprocess since 3.10) copies none."""
    with ipc.shmat(seg):
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sh", ["sh", "-c", "exit 0"])
        _, status = os.waitpid(pid, 0)
        ds = ipc.shmctl(seg, IPC_STAT)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (ds.nattch, ds.lpid) == (1, pid)


def test_rdonly_attach_is_read_only(seg: int) -> None:
    with ipc.shmat(seg, SHM_RDONLY) as a:
        assert a.readonly
        with memoryview(a) as v:
            assert v.readonly
        with pytest.raises(TypeError):
            a[0] = 1


def test_rdonly_attach_and_detach_change_only_atime_dtime_and_lpid(seg: int) -> None:
    with ipc.shmat(seg) as w:
        w[:4] = b"data"
    before = ipc.shmctl(seg, IPC_STAT)
    time.sleep(1.01)  # the times have a resolution of one second
    with ipc.shmat(seg, SHM_RDONLY) as r:
        assert r[:4] == b"data"
    after = ipc.shmctl(seg, IPC_STAT)
    changed = {f.name for f in dataclasses.fields(before)
               if getattr(before, f.name) != getattr(after, f.name)}
    assert changed == {"atime", "dtime"} or changed == {"atime", "dtime", "lpid"}


def test_shm_exec_attaches_a_segment_with_execute_permission(
        make_segment: Callable[..., int]) -> None:
    with ipc.shmat(make_segment(mode=0o700), SHM_EXEC) as a:
        a[0] = 7
        assert a[0] == 7


def test_shm_exec_needs_execute_permission(make_segment: Callable[..., int]) -> None:
    """Read and write permission are not enough for SHM_EXEC (root passes any check)."""
    shmid = make_segment(mode=0o666)
    if os.geteuid() != 0:
        assert errno_of(lambda: ipc.shmat(shmid, SHM_EXEC)) == errno.EACCES
        return

    def child() -> int:
        return errno_of(lambda: ipc.shmat(shmid, SHM_EXEC))
    assert run_in_child(child, uid=NOBODY) == errno.EACCES


def test_shm_rnd_without_an_address_has_no_effect(seg: int) -> None:
    with ipc.shmat(seg, SHM_RND) as a:
        assert len(a) == 4096


def test_shm_remap_without_an_address_is_einval(seg: int) -> None:
    assert errno_of(lambda: ipc.shmat(seg, SHM_REMAP)) == errno.EINVAL
    assert ipc.shmctl(seg, IPC_STAT).nattch == 0


def test_shmat_of_a_removed_segment_is_einval(seg: int) -> None:
    ipc.shmctl(seg, IPC_RMID)
    with pytest.raises(OSError) as e:
        ipc.shmat(seg)
    assert e.value.errno == errno.EINVAL and f"shmat(shmid={seg})" in str(e.value)


def test_shmdt_twice_is_einval_and_touches_nothing_else(make_segment: Callable[..., int]) -> None:
    first = ipc.shmat(make_segment())
    ipc.shmdt(first)
    other = make_segment()
    with ipc.shmat(other):  # it may well land where the first one was
        with pytest.raises(OSError) as e:
            ipc.shmdt(first)
        assert e.value.errno == errno.EINVAL
        assert ipc.shmctl(other, IPC_STAT).nattch == 1


def test_shmdt_of_something_else_is_typeerror() -> None:
    with pytest.raises(TypeError, match="shmat"):
        ipc.shmdt(mmap.mmap(-1, 4096))  # type: ignore[arg-type]


# ---- shmctl ------------------------------------------------------------------------------

def test_ipc_stat_reads_the_segment(seg: int) -> None:
    ds = ipc.shmctl(seg, IPC_STAT)
    assert (ds.key, ds.segsz, ds.nattch, ds.mode) == (0, 4096, 0, 0o600)
    assert (ds.uid, ds.gid, ds.cuid, ds.cgid) == (os.geteuid(), os.getegid()) * 2
    assert (ds.cpid, ds.lpid, ds.atime, ds.dtime) == (os.getpid(), 0, 0, 0)
    assert abs(ds.ctime - time.time()) < 5
    assert not ds.dest and not ds.locked


def test_ipc_rmid_on_an_attached_segment_marks_it_dest_and_makes_its_key_0(
        make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    i = make_segment(key=k)
    a = ipc.shmat(i)
    ipc.shmctl(i, IPC_RMID)
    ds = ipc.shmctl(i, IPC_STAT)  # still works while attached
    assert ds.dest and ds.key == 0 and ds.nattch == 1
    with pytest.raises(FileNotFoundError):
        ipc.shmget(k, 0)  # the key is free again
    ipc.shmdt(a)
    assert errno_of(lambda: ipc.shmctl(i, IPC_STAT)) == errno.EINVAL


def test_a_segment_marked_dest_can_still_be_attached_by_id(seg: int) -> None:
    with ipc.shmat(seg) as a:
        a[0] = 9
        ipc.shmctl(seg, IPC_RMID)
        with ipc.shmat(seg, SHM_RDONLY) as b:  # Linux allows it (shmctl(2))
            assert b[0] == 9
            assert ipc.shmctl(seg, IPC_STAT).nattch == 2


def test_ipc_set_changes_mode_and_ctime_keeps_the_rest(seg: int) -> None:
    before = ipc.shmctl(seg, IPC_STAT)
    ipc.shmctl(seg, IPC_SET, {"mode": 0o640})
    after = ipc.shmctl(seg, IPC_STAT)
    assert after.mode == 0o640
    assert (after.uid, after.gid, after.segsz) == (before.uid, before.gid, before.segsz)


def test_ipc_set_keeps_dest_of_a_marked_segment(seg: int) -> None:
    with ipc.shmat(seg):
        ipc.shmctl(seg, IPC_RMID)
        ipc.shmctl(seg, IPC_SET, {"mode": 0o644})
        ds = ipc.shmctl(seg, IPC_STAT)
        assert ds.dest and ds.mode == 0o644


def test_ipc_set_refuses_an_unknown_field_before_any_call(seg: int) -> None:
    with pytest.raises(ValueError, match="qbytes"):
        ipc.shmctl(seg, IPC_SET, {"qbytes": 1})


def test_shm_lock_and_unlock_set_and_clear_locked(seg: int) -> None:
    ipc.shmctl(seg, SHM_LOCK)
    assert ipc.shmctl(seg, IPC_STAT).locked
    ipc.shmctl(seg, SHM_UNLOCK)
    assert not ipc.shmctl(seg, IPC_STAT).locked


def test_shm_stat_by_index_gives_the_id(seg: int) -> None:
    idx = index_of(seg, ipc.shmctl, (SHM_STAT,))
    assert idx is not None
    ident, ds = ipc.shmctl(idx, SHM_STAT)
    assert ident == seg and ds.segsz == 4096


@needs_stat_any
def test_shm_stat_any_reads_a_segment_without_read_permission(
        make_segment: Callable[..., int]) -> None:
    i = make_segment(mode=0o000)
    idx = index_of(i, ipc.shmctl, (SHM_STAT_ANY,))
    assert idx is not None

    def child() -> int:
        assert errno_of(lambda: ipc.shmctl(i, IPC_STAT)) == errno.EACCES
        ident, ds = ipc.shmctl(idx, SHM_STAT_ANY)
        return 0 if (ident, ds.mode) == (i, 0) else 1

    assert run_as_stranger(child) == 0


def test_ipc_info_gives_the_namespaces_limits() -> None:
    highest, info = ipc.shmctl(0, IPC_INFO)
    assert highest >= 0
    assert (info.shmmax, info.shmmni, info.shmall) == (
        proc_int("shmmax"), proc_int("shmmni"), proc_int("shmall"))
    assert info.shmmin == 1


@needs_root
def test_shm_info_counts_the_segments_in_use() -> None:
    def child() -> int:  # in a namespace of its own, which nobody else changes
        from ipcbind._seam import unshare_ipc as _unshare_ipc
        _unshare_ipc()
        assert ipc.shmctl(0, SHM_INFO)[1].used_ids == 0
        ipc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
        i = ipc.shmget(IPC_PRIVATE, 3 * PAGE, IPC_CREAT | 0o600)
        highest, usage = ipc.shmctl(0, SHM_INFO)
        return 0 if (usage.used_ids, highest) == (2, index_of(i, ipc.shmctl, (SHM_STAT,))) else 1

    assert run_in_child(child) == 0


def test_shmctl_unknown_cmd_is_einval(seg: int) -> None:
    assert errno_of(lambda: ipc.shmctl(seg, 12345)) == errno.EINVAL


def test_shmctl_of_a_removed_segment_names_the_call_and_the_id(seg: int) -> None:
    ipc.shmctl(seg, IPC_RMID)
    with pytest.raises(OSError) as e:
        ipc.shmctl(seg, IPC_STAT)
    assert e.value.errno == errno.EINVAL and f"shmctl(shmid={seg})" in str(e.value)


# ---- permissions -------------------------------------------------------------------------

@pytest.mark.skipif(not IS_ROOT, reason="needs root (to drop to uid 65534)")
def test_shmget_shmat_and_ipc_stat_without_permission_are_eacces(
        make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    i = make_segment(key=k, mode=0o600)

    def child() -> int:
        assert errno_of(lambda: ipc.shmget(k, 0, 0o600)) == errno.EACCES
        assert errno_of(lambda: ipc.shmat(i)) == errno.EACCES
        assert errno_of(lambda: ipc.shmat(i, SHM_RDONLY)) == errno.EACCES
        assert errno_of(lambda: ipc.shmctl(i, IPC_STAT)) == errno.EACCES
        return 0

    assert run_as_stranger(child) == 0
    assert ipc.shmctl(i, IPC_STAT).nattch == 0


@pytest.mark.skipif(not IS_ROOT, reason="needs root (to drop to uid 65534)")
def test_shmget_without_permission_succeeds_when_the_flags_ask_for_none(
        make_segment: Callable[..., int]) -> None:
    k = unused_segment_key()
    i = make_segment(key=k, mode=0o600)
    # The kernel checks only the permission bits the flags ask for: none here.
    assert run_as_stranger(lambda: 0 if ipc.shmget(k, 0) == i else 1) == 0


@pytest.mark.skipif(not IS_ROOT, reason="needs root (to drop to uid 65534)")
def test_read_permission_allows_only_a_rdonly_attach(make_segment: Callable[..., int]) -> None:
    i = make_segment(mode=0o604)

    def child() -> int:
        assert errno_of(lambda: ipc.shmat(i)) == errno.EACCES
        with ipc.shmat(i, SHM_RDONLY) as a:
            return 0 if len(a) == 4096 else 1

    assert run_as_stranger(child) == 0


@pytest.mark.skipif(not IS_ROOT, reason="needs root (to drop to uid 65534)")
def test_ipc_set_and_ipc_rmid_by_a_stranger_are_eperm(seg: int) -> None:
    def child() -> int:
        assert errno_of(lambda: ipc.shmctl(seg, IPC_SET, {"mode": 0o666})) == errno.EPERM
        assert errno_of(lambda: ipc.shmctl(seg, IPC_RMID)) == errno.EPERM
        return 0

    assert run_as_stranger(child) == 0
    assert ipc.shmctl(seg, IPC_STAT).mode == 0o600


# ---- shm_next_id ------------------------------------------------------------------------

@needs_root
def test_shm_next_id_arms_the_next_segments_id() -> None:
    def child() -> int:
        from ipcbind._seam import unshare_ipc as _unshare_ipc
        _unshare_ipc()
        with open("/proc/sys/kernel/shm_next_id", "w") as f:
            f.write("4242")
        i = ipc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
        j = ipc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
        return 0 if i == 4242 and j != 4243 and proc_int("shm_next_id") == -1 else 1

    assert run_in_child(child) == 0


# ---- values refused before any system call -----------------------------------------------

@pytest.mark.parametrize("call, exc, word", [
    (lambda: ipc.shmget(IPC_PRIVATE, -1, IPC_CREAT), OverflowError, "size"),
    (lambda: ipc.shmget(IPC_PRIVATE, 2 ** 64, IPC_CREAT), OverflowError, "size"),
    (lambda: ipc.shmget(IPC_PRIVATE, "1", IPC_CREAT), TypeError, "size"),
    (lambda: ipc.shmget(2 ** 32, 4096), OverflowError, "key"),
    (lambda: ipc.shmget(IPC_PRIVATE, 4096, 2 ** 40), OverflowError, "flags"),
    (lambda: ipc.shmat("1"), TypeError, "shmid"),
    (lambda: ipc.shmat(2 ** 31), OverflowError, "shmid"),
    (lambda: ipc.shmat(0, 2 ** 31), OverflowError, "flags"),
    (lambda: ipc.shmctl("1", IPC_STAT), TypeError, "shmid"),
    (lambda: ipc.shmctl(0, None), TypeError, "cmd"),
    (lambda: ipc.shmctl(0, IPC_SET, [("mode", 1)]), TypeError, "mapping"),
    (lambda: ipc.shmctl(0, IPC_SET, {"mode": None}), TypeError, "mode"),
    (lambda: ipc.shmctl(0, IPC_SET, {"uid": 2 ** 32}), OverflowError, "uid"),
], ids=["size-negative", "size-2**64", "size-str", "key-2**32", "flags-2**40", "shmat-str",
        "shmat-2**31", "shmat-flags-2**31", "shmctl-str", "shmctl-cmd-None", "set-list",
        "set-mode-None", "set-uid-2**32"])
def test_unrepresentable_values_are_refused_before_any_call(
        call: Callable[[], object], exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):  # type: ignore[misc]
        call()
