"""ipcbind.namespace against real IPC namespaces (forked children that unshare)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Dict, List

import pytest

from conftest import NOBODY, needs_root, needs_stat_any, run_in_child
from nschild import needs_ns_root, ns_child

from ipcbind import namespace as ns_module
from ipcbind import _seam
from ipcbind import syscalls as sc
from ipcbind.namespace import (
    NamespaceReturnError,
    enter_namespace,
    list_queues,
    list_segments,
    list_semaphore_sets,
    namespace_id,
    namespace_pids,
    shares_namespace,
)

NO_SUCH_PID = 4194305  # above the largest pid_max Linux allows


def _make_objects() -> Dict[str, int]:
    q = sc.msgget(0x1234, sc.IPC_CREAT | 0o640)
    sc.msgsnd(q, 3, b"inside")
    s = sc.semget(0x5678, 2, sc.IPC_CREAT | 0o600)
    sc.semctl(s, 0, sc.SETALL, [4, 5])
    return {"q": q, "s": s}


def test_namespace_id_of_own_pid_is_the_calling_threads() -> None:
    assert namespace_id(os.getpid()) == namespace_id()


def test_shares_namespace_is_true_for_our_own_process() -> None:
    assert shares_namespace(os.getpid())


def test_enter_namespace_of_none_is_a_type_error_not_a_no_op() -> None:
    with pytest.raises(TypeError, match="pid must be an int.*not None"):
        with enter_namespace(None):  # type: ignore[arg-type]
            pass


def test_shares_namespace_of_none_is_a_type_error_not_true() -> None:
    with pytest.raises(TypeError, match="pid must be an int.*not None"):
        shares_namespace(None)  # type: ignore[arg-type]


def test_namespace_id_and_namespace_pids_of_none_are_the_calling_threads() -> None:
    assert namespace_id(None) == namespace_id(os.getpid())
    assert os.getpid() in namespace_pids(None)


def test_unknown_pid_raises_process_lookup_error() -> None:
    with pytest.raises(ProcessLookupError, match=f"no process with pid {NO_SUCH_PID}"):
        namespace_id(NO_SUCH_PID)
    with pytest.raises(ProcessLookupError):
        with enter_namespace(NO_SUCH_PID):
            pass


@pytest.mark.parametrize("bad", [0, -3, True, "12"])
def test_bad_pid_is_refused_before_any_system_call(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        namespace_id(bad)  # type: ignore[arg-type]


@needs_stat_any
def test_entering_our_own_namespace_needs_no_privilege(msq: int) -> None:
    def child() -> int:
        with enter_namespace(os.getpid()) as ns:
            ids = [i for i, _ in list_queues()]
            return 0 if ns == namespace_id() and msq in ids else 1

    if os.geteuid() == 0:
        assert run_in_child(child, uid=NOBODY) == 0
    else:
        assert run_in_child(child) == 0


@needs_ns_root
def test_shares_namespace_is_false_for_a_process_in_a_fresh_namespace() -> None:
    with ns_child() as (pid, _):
        assert not shares_namespace(pid)
        assert namespace_id(pid) != namespace_id()


@needs_ns_root
def test_namespace_pids_lists_the_namespaces_processes_only() -> None:
    with ns_child() as (pid, _):
        assert namespace_pids(pid) == [pid]
        ours = namespace_pids()
        assert os.getpid() in ours and pid not in ours


@needs_ns_root
def test_enter_namespace_shows_that_namespaces_objects_and_not_ours(msq: int) -> None:
    with ns_child(_make_objects) as (pid, made):
        with enter_namespace(pid) as ns:
            assert namespace_id() == ns == namespace_id(pid)
            queues = dict(list_queues())
            sets = dict(list_semaphore_sets())
            values = sc.semctl(made["s"], 0, sc.GETALL)
            copy = sc.msgrcv(made["q"], None, 0, sc.MSG_COPY | sc.IPC_NOWAIT)
        assert list(queues) == [made["q"]] and msq not in queues
        assert queues[made["q"]].key == 0x1234 and queues[made["q"]].mode == 0o640
        assert list(sets) == [made["s"]] and sets[made["s"]].nsems == 2
        assert values == [4, 5] and copy == (3, b"inside")
        assert namespace_id() != ns
        assert msq in dict(list_queues())


@needs_ns_root
def test_enter_namespace_moves_back_when_the_block_raises() -> None:
    home = namespace_id()
    with ns_child() as (pid, _):
        with pytest.raises(KeyError):
            with enter_namespace(pid):
                assert namespace_id() != home
                raise KeyError("boom")
    assert namespace_id() == home


@needs_ns_root
def test_enter_namespace_moves_only_the_calling_thread() -> None:
    home = namespace_id()
    seen: List[object] = []
    go = threading.Event()

    def other() -> None:
        go.wait(10)
        seen.append(namespace_id())

    t = threading.Thread(target=other)
    t.start()
    try:
        with ns_child() as (pid, _):
            with enter_namespace(pid) as ns:
                go.set()
                t.join()
                assert namespace_id() == ns
    finally:
        go.set()
        t.join()
    assert seen == [home]


@needs_ns_root
def test_threads_started_inside_enter_namespace_start_in_that_namespace() -> None:
    seen: List[object] = []
    with ns_child() as (pid, _):
        with enter_namespace(pid) as ns:
            t = threading.Thread(target=lambda: seen.append(namespace_id()))
            t.start()
            t.join()
    assert seen == [ns]


@needs_root
def test_entering_without_cap_sys_admin_raises_permission_error_saying_so() -> None:
    def preexec() -> None:
        _seam.unshare_ipc()
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    # exec makes the nobody-owned target traceable by nobody again, so only
    # setns itself can refuse.
    target = subprocess.Popen(["sleep", "30"], preexec_fn=preexec)
    try:
        def child() -> int:
            try:
                with enter_namespace(target.pid):
                    return 1
            except PermissionError as e:
                return 0 if "CAP_SYS_ADMIN" in str(e) else 2

        assert run_in_child(child, uid=NOBODY) == 0
    finally:
        target.kill()
        target.wait()


@needs_root
def test_unreadable_namespace_file_raises_permission_error_saying_so() -> None:
    def child() -> int:
        try:
            namespace_id(1)
        except PermissionError as e:
            return 0 if "CAP_SYS_PTRACE" in str(e) else 2
        return 1

    assert run_in_child(child, uid=NOBODY) == 0


@needs_ns_root
def test_failing_to_move_back_raises_namespace_return_error() -> None:
    with ns_child() as (pid, _):
        def child() -> int:
            try:
                with enter_namespace(pid) as ns:
                    os.setuid(NOBODY)  # drops CAP_SYS_ADMIN: the way back is closed
            except NamespaceReturnError as e:
                return 0 if e.stuck_in == ns == namespace_id() and "STILL" in str(e) else 2
            return 1

        assert run_in_child(child) == 0


@needs_ns_root
def test_listing_reads_with_plain_stat_where_stat_any_is_refused() -> None:
    # Where the kernel refuses MSG_STAT_ANY/SEM_STAT_ANY (Linux < 4.17, qemu-user), the
    # listing reads each object with MSG_STAT/SEM_STAT instead. This kernel knows both,
    # so the test tells the module the kernel refuses them, in a child, and compares.
    def child(pid: int) -> int:
        with enter_namespace(pid):
            want = list_queues(), list_semaphore_sets()
            ns_module._stat_any_works.update(msg=False, sem=False)
            got = list_queues(), list_semaphore_sets()
        return 0 if got == want and len(got[0]) == len(got[1]) == 1 else 1

    with ns_child(_make_objects) as (pid, _):
        assert run_in_child(lambda: child(pid)) == 0


def _one_queue_above_a_free_index() -> int:
    first = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
    kept = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
    sc.msgctl(first, sc.IPC_RMID)
    return kept


def _make_and_remove_a_queue(kept: int) -> None:
    sc.msgctl(sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600), sc.IPC_RMID)


@needs_ns_root
@needs_stat_any
def test_listing_while_another_process_makes_and_removes_objects_keeps_using_stat_any(
        ) -> None:
    # The first listing learns whether the kernel knows MSG_STAT_ANY, from an index
    # where it fails and MSG_STAT finds an object. A queue made and removed between
    # those calls must not pass for a refusal: the listing would then need read
    # permission for good. Each round here starts with nothing learnt.
    def child(pid: int, kept: int) -> int:
        _seam.setns_ipc(os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and ns_module._stat_any_works.get("msg") is not False:
            ns_module._stat_any_works.clear()
            list_queues()
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            listed = [msqid for msqid, _ in list_queues()]
        except PermissionError:
            return 1
        return 0 if kept in listed else 2

    with ns_child(_one_queue_above_a_free_index, _make_and_remove_a_queue) as (pid, kept):
        assert run_in_child(lambda: child(pid, kept), timeout=60) == 0


@needs_ns_root
@needs_stat_any
def test_listing_without_stat_any_raises_permission_error_for_an_unreadable_object() -> None:
    # Plain MSG_STAT needs read permission: an object the caller cannot read must not
    # go unlisted in silence.
    def child(pid: int) -> int:
        _seam.setns_ipc(os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if len(list_semaphore_sets()) != 1:  # SEM_STAT_ANY lists the 0600 set of root
            return 1
        ns_module._stat_any_works["sem"] = False
        try:
            list_semaphore_sets()
        except PermissionError as e:
            return 0 if "index" in str(e) and "SEM_STAT_ANY" in str(e) else 2
        return 3

    with ns_child(_make_objects) as (pid, _):
        assert run_in_child(lambda: child(pid)) == 0


_HELD: List[sc.Attachment] = []  # in the namespace child: attachments that outlive setup


def _make_segments() -> Dict[str, int]:
    kept = sc.shmget(0x9ABC, 5000, sc.IPC_CREAT | 0o640)
    dest = sc.shmget(0x9ABD, 4096, sc.IPC_CREAT | 0o600)
    _HELD.append(sc.shmat(dest))
    sc.shmctl(dest, sc.IPC_RMID)
    return {"kept": kept, "dest": dest}


@needs_ns_root
def test_list_segments_shows_that_namespaces_segments_marked_ones_included() -> None:
    with ns_child(_make_segments) as (pid, made):
        with enter_namespace(pid):
            segments = dict(list_segments())
        assert sorted(segments) == sorted(made.values())
        kept, dest = segments[made["kept"]], segments[made["dest"]]
        assert (kept.key, kept.mode, kept.segsz, kept.nattch, kept.dest) == (
            0x9ABC, 0o640, 5000, 0, False)
        assert (dest.key, dest.nattch, dest.dest, dest.cpid) == (0, 1, True, pid)


@needs_ns_root
def test_list_segments_reads_with_plain_shm_stat_where_shm_stat_any_is_refused() -> None:
    def child(pid: int) -> int:
        with enter_namespace(pid):
            want = list_segments()
            ns_module._stat_any_works["shm"] = False
            got = list_segments()
        return 0 if got == want and len(got) == 2 else 1

    with ns_child(_make_segments) as (pid, _):
        assert run_in_child(lambda: child(pid)) == 0


@needs_ns_root
@needs_stat_any
def test_list_segments_without_stat_any_raises_permission_error_for_an_unreadable_one() -> None:
    def child(pid: int) -> int:
        _seam.setns_ipc(os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if len(list_segments()) != 2:  # SHM_STAT_ANY lists root's segments of mode 0600
            return 1
        ns_module._stat_any_works["shm"] = False
        try:
            list_segments()
        except PermissionError as e:
            return 0 if "shared memory segment at index" in str(e) else 2
        return 3

    with ns_child(_make_segments) as (pid, _):
        assert run_in_child(lambda: child(pid)) == 0
