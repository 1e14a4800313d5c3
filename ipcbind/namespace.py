"""IPC namespaces: work inside another process's namespace, and see what it holds.

Every queue, semaphore set and shared memory segment lives in an IPC namespace; a container usually has
its own. :func:`enter_namespace` moves the *calling thread* into the namespace of a
process, given its pid, and always moves it back::

    from ipcbind.namespace import enter_namespace, list_queues

    with enter_namespace(container_pid):
        for msqid, ds in list_queues():
            print(msqid, ds.qnum)

Threads: ``setns(2)`` with ``CLONE_NEWIPC`` changes only the thread that calls it,
so while one thread is inside, the others stay where they were (and keep working
on their own namespace's objects). An id means nothing outside its namespace: use
the ids you get inside the ``with`` block, in that thread, before it ends. Threads
and processes started inside the block start in the entered namespace.

"Our namespace" below is always the calling thread's (``/proc/thread-self/ns/ipc``),
which inside :func:`enter_namespace` is the entered one.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple, TypeVar, Union

import psutil

from . import _seam
from . import syscalls as sc
from .errors import GONE_ERRNOS, NamespaceReturnError
from .syscalls import MsqidDs, SemidDs, ShmidDs

__all__ = [
    "NamespaceId",
    "NamespaceReturnError",
    "enter_namespace",
    "list_queues",
    "list_semaphore_sets",
    "list_segments",
    "namespace_id",
    "namespace_pids",
    "shares_namespace",
]

NamespaceId = Tuple[int, int]
"""A namespace's identity: the (st_dev, st_ino) of its ``/proc/.../ns/ipc`` file."""

_SELF = "/proc/thread-self/ns/ipc"
_UNUSED = GONE_ERRNOS  # an index nothing is at (any more)
_DS = TypeVar("_DS", MsqidDs, SemidDs, ShmidDs)


def _ns_path(pid: Optional[int]) -> str:
    if pid is None:
        return _SELF
    return _pid_ns_path(pid)


def _pid_ns_path(pid: object) -> str:
    """The namespace file of ``pid``, which must be a process id (None is refused)."""
    if pid is None:
        raise TypeError("pid must be an int (a process id), not None")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise ValueError(f"pid must be a positive process id, got {pid}")
    return f"/proc/{pid}/ns/ipc"


def _proc_error(err: OSError, pid: Optional[int], what: str) -> OSError:
    """Explain a failure to reach /proc/PID/ns/ipc."""
    if err.errno == errno.ENOENT or err.errno == errno.ESRCH:
        return ProcessLookupError(errno.ESRCH, f"{what}: no process with pid {pid}")
    if err.errno in (errno.EACCES, errno.EPERM):
        return PermissionError(
            err.errno, f"{what}: cannot open /proc/{pid}/ns/ipc: needs the right to trace "
            f"pid {pid} (same user, or CAP_SYS_PTRACE)")
    return err


def namespace_id(pid: Optional[int] = None) -> NamespaceId:
    """The identity of the IPC namespace of ``pid`` (None: the calling thread's).

    Raises:
        TypeError: ``pid`` is neither an int nor None.
        ProcessLookupError: no such process.
        PermissionError: its namespace file cannot be read (another user's process).
    """
    path = _ns_path(pid)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _proc_error(e, pid, "namespace_id") from None
    return st.st_dev, st.st_ino


def shares_namespace(pid: int) -> bool:
    """Whether process ``pid`` is in the calling thread's IPC namespace.

    Raises:
        TypeError: ``pid`` is not an int (None included: there is no default).
        ProcessLookupError: no such process.
        PermissionError: its namespace cannot be seen (another user's process).
    """
    _pid_ns_path(pid)
    return namespace_id(pid) == namespace_id()


def namespace_pids(pid: Optional[int] = None) -> List[int]:
    """The pids (sorted) of the processes in the IPC namespace of ``pid``.

    ``pid`` None: the calling thread's namespace. A process's namespace is its main
    thread's. Processes whose namespace cannot be seen (other users' processes,
    without privilege) and processes that exit meanwhile are not listed.

    Raises:
        TypeError: ``pid`` is neither an int nor None.
        ProcessLookupError: no such process.
    """
    target = namespace_id(pid)
    found = []
    for p in psutil.pids():
        try:
            st = os.stat(f"/proc/{p}/ns/ipc")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == target:
            found.append(p)
    return found


@contextmanager
def enter_namespace(pid: int) -> Iterator[NamespaceId]:
    """Move the calling thread into the IPC namespace of process ``pid``; move it back on exit.

    Yields the entered namespace's :data:`NamespaceId`. If ``pid`` already shares
    the calling thread's namespace, nothing moves (and no privilege is needed).
    Only the calling thread moves (see the module's notes on threads); leave the
    block in the same thread that entered it.

    Raises:
        TypeError: ``pid`` is not an int (None included: there is no default).
        ProcessLookupError: no such process.
        PermissionError: entering needs CAP_SYS_ADMIN in the user namespace that owns
            the target namespace (and reading its /proc entry needs the right to
            trace the process).
        NamespaceReturnError: on exit, the thread could not be moved back (it is
            raised even while another exception propagates, which it then chains).
    """
    target_path = _pid_ns_path(pid)
    original = os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(original)
        home: NamespaceId = (st.st_dev, st.st_ino)
        try:
            target = os.open(target_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _proc_error(e, pid, "enter_namespace") from None
        try:
            st = os.fstat(target)
            there: NamespaceId = (st.st_dev, st.st_ino)
            if there == home:
                yield there
                return
            try:
                # The check in finally looks at where the thread really is, so a
                # signal landing right after setns cannot skip the way back.
                try:
                    _seam.setns_ipc(target)
                except PermissionError as e:
                    err = e.errno or errno.EPERM
                    raise PermissionError(
                        err, f"entering the IPC namespace of pid {pid} needs CAP_SYS_ADMIN "
                        f"in the user namespace that owns it (setns: {os.strerror(err)})"
                    ) from None
                yield there
            finally:
                _return_home(original, home, pid)
        finally:
            os.close(target)
    finally:
        os.close(original)


def _return_home(original: int, home: NamespaceId, pid: int) -> None:
    """Move the calling thread back into ``home`` (open as ``original``) if it left it."""
    try:
        if namespace_id() == home:
            return
        _seam.setns_ipc(original)
        now = namespace_id()
    except OSError as e:
        try:
            stuck: Optional[NamespaceId] = namespace_id()
        except OSError:
            stuck = None
        raise NamespaceReturnError(pid, stuck, e) from e
    if now != home:
        raise NamespaceReturnError(pid, now, OSError(errno.EINVAL, "setns left the thread "
                                                     "elsewhere"))


def list_queues() -> List[Tuple[int, MsqidDs]]:
    """Every message queue of the calling thread's namespace: ``[(msqid, MsqidDs)]`` by id.

    Uses MSG_STAT_ANY, which, like /proc/sysvipc/msg, needs no read permission on
    the queues. A queue removed while the list is taken is left out. Where the kernel
    does not know MSG_STAT_ANY (Linux < 4.17, and qemu-user, which refuses it), the
    queues are read with MSG_STAT, which needs read permission: a queue the caller
    cannot read then raises PermissionError rather than going unlisted.
    """
    highest, _ = sc.msgctl(0, sc.MSG_INFO)
    return _listing("msg", highest, lambda index, cmd: sc.msgctl(index, cmd),
                    sc.MSG_STAT_ANY, sc.MSG_STAT)


def list_semaphore_sets() -> List[Tuple[int, SemidDs]]:
    """Every semaphore set of the calling thread's namespace: ``[(semid, SemidDs)]`` by id.

    Uses SEM_STAT_ANY (no read permission needed). A set removed meanwhile is left
    out. Without SEM_STAT_ANY (Linux < 4.17, qemu-user), SEM_STAT is used, as
    :func:`list_queues` does with MSG_STAT.
    """
    highest, _ = sc.semctl(0, 0, sc.SEM_INFO)
    return _listing("sem", highest, lambda index, cmd: sc.semctl(index, 0, cmd),
                    sc.SEM_STAT_ANY, sc.SEM_STAT)


def list_segments() -> List[Tuple[int, ShmidDs]]:
    """Every shared memory segment of the calling thread's namespace: ``[(shmid, ShmidDs)]``
    by id, those marked for removal but still attached included.

    Uses SHM_STAT_ANY (no read permission needed). A segment removed meanwhile is left
    out. Without SHM_STAT_ANY (Linux < 4.17, qemu-user), SHM_STAT is used, as
    :func:`list_queues` does with MSG_STAT.
    """
    highest, _ = sc.shmctl(0, sc.SHM_INFO)
    return _listing("shm", highest, lambda index, cmd: sc.shmctl(index, cmd),
                    sc.SHM_STAT_ANY, sc.SHM_STAT)


_WHAT = {"msg": "queue", "sem": "semaphore set", "shm": "shared memory segment"}

# Per kind ("msg", "sem", "shm"): whether *_STAT_ANY is known to work here (True), known to
# be refused (False) or not yet seen (absent). The kernel does not change under us.
_stat_any_works: Dict[str, bool] = {}

_Stat = Callable[[int, int], Tuple[int, _DS]]


def _listing(kind: str, highest: int, stat: _Stat[_DS], stat_any: int,
             stat_cmd: int) -> List[Tuple[int, _DS]]:
    found = []
    for index in range(highest + 1):
        works = _stat_any_works.get(kind)
        if works is not False:
            got = _outcome(stat, index, stat_any, _UNUSED)
            if not isinstance(got, int):
                found.append(got)
                _stat_any_works[kind] = True
                continue
            if works or got != errno.EINVAL:
                continue
        # *_STAT_ANY refused this index: either nothing is there, or the kernel does
        # not know the command. Plain *_STAT tells them apart.
        plain = _outcome(stat, index, stat_cmd, _UNUSED + (errno.EACCES,))
        if plain in _UNUSED:
            continue
        if works is None:
            # Something is there now. The command is unknown only if it fails again
            # while the same object stays there: other processes make and remove
            # objects between these calls, and a refusal, once concluded, is kept.
            again = _outcome(stat, index, stat_any, _UNUSED)
            if not isinstance(again, int):
                _stat_any_works[kind] = True
                found.append(again)
                continue
            if again != errno.EINVAL or not _same(_outcome(stat, index, stat_cmd,
                                                           _UNUSED + (errno.EACCES,)), plain):
                continue  # the object changed meanwhile: left to the next listing to judge
            _stat_any_works[kind] = False
        if isinstance(plain, int):
            raise PermissionError(
                plain, f"cannot list the {_WHAT[kind]} at index {index}: this kernel does not "
                f"know {kind.upper()}_STAT_ANY (Linux < 4.17, or an emulator), and "
                f"{kind.upper()}_STAT needs read permission")
        found.append(plain)
    return sorted(found, key=lambda item: item[0])


def _outcome(stat: _Stat[_DS], index: int, cmd: int,
             expected: Tuple[int, ...]) -> Union[Tuple[int, _DS], int]:
    """``stat(index, cmd)``, or the errno it failed with if that is one of ``expected``."""
    try:
        return stat(index, cmd)
    except OSError as e:
        if e.errno not in expected:
            raise
        return int(e.errno)


def _same(a: Union[Tuple[int, _DS], int], b: Union[Tuple[int, _DS], int]) -> bool:
    """Whether two outcomes at one index are the same object (or the same errno)."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a[0] == b[0]
