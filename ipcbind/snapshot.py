"""Snapshot and restore of an IPC namespace's message queues and semaphore sets.

:func:`snapshot` reads every queue (every message in order, with MSG_COPY, so
nothing is taken) and every semaphore set of a namespace, with the limits that
matter; :func:`dumps`/:func:`dump` write it in the documented JSON format (see
README, "Snapshot file format") and :func:`loads`/:func:`load` read it back,
rejecting damaged or foreign files with :class:`SnapshotFormatError`.
:func:`restore` recreates it, with the same ids, in a namespace, all or nothing.

Consistency: each queue is read in one pass that compares IPC_STAT before and
after and copies the first and last message again (see
:meth:`ipcbind.MessageQueue.peek_all`); a queue that keeps changing raises
:class:`~ipcbind.errors.QueueChangedError`.
Objects are read one after the other, so without ``freeze=True`` two objects may
be seen at different moments. ``freeze=True`` stops the namespace's processes
(cgroup v2 freezer, else SIGSTOP) for the duration and always lets them go again.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import platform
import re
import stat
import tempfile
import warnings
from functools import partial
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import (IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple, TypeVar, Union)

import psutil

from . import syscalls as sc
from ._limits import INT_MAX, SEMVMX, U32_MAX, msgmax
from .errors import (BlockedCall, FreezeError, FreezeRefusedError, FreezeWarning,
                     RestoreConflictError, RestoreError, SnapshotFormatError, gone)
from .msg import COPY_ATTEMPTS, copy_all
from .namespace import (enter_namespace, list_queues, list_semaphore_sets, namespace_id,
                        namespace_pids)

__all__ = [
    "FORMAT",
    "VERSION",
    "Limits",
    "QueueState",
    "SemaphoreSetState",
    "Snapshot",
    "Restored",
    "SnapshotFormatError",
    "RestoreError",
    "RestoreConflictError",
    "FreezeError",
    "FreezeRefusedError",
    "FreezeWarning",
    "BlockedCall",
    "blocked_semops",
    "snapshot",
    "restore",
    "freeze_namespace",
    "dumps",
    "dump",
    "loads",
    "load",
]

FORMAT = "ipcbind-snapshot"
"""The value of the ``format`` field of every snapshot file."""
VERSION = 1
"""The snapshot file format version this ipcbind writes and reads."""

_MTYPE_MAX = 2 ** 63 - 1
_FREEZE_WAIT = 10.0
# ASCII digits only: \d would also take other scripts' digits.
_TAKEN_AT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
_TAKEN_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Progress = Callable[[int, int, str], None]
"""progress(done, total, what): called before each object is read or recreated."""


# ---- the data ---------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The namespace's limits (``/proc/sys/kernel/msgmax``, ``msgmnb``, ``msgmni``, ``sem``)."""

    msgmax: int
    msgmnb: int
    msgmni: int
    semmsl: int
    semmns: int
    semopm: int
    semmni: int


@dataclass(frozen=True)
class QueueState:
    """One message queue: ``messages`` is a tuple of ``(mtype, data)``, head first.

    ``key`` is unsigned (0..2**32-1), as ``ipcs`` shows it; ``mode`` the permission bits.
    ``cuid``/``cgid`` (the creator) are recorded but a restore cannot set them: the
    kernel makes the restoring process the creator.
    """

    id: int
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    qbytes: int
    messages: Tuple[Tuple[int, bytes], ...]


@dataclass(frozen=True)
class SemaphoreSetState:
    """One semaphore set: ``values`` holds one value per semaphore."""

    id: int
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    values: Tuple[int, ...]


@dataclass(frozen=True)
class Snapshot:
    """A namespace's queues and semaphore sets at one time.

    ``taken_at``: ISO 8601 UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the loader refuses a
    time that is not on the calendar, such as month 13). ``namespace``: inode number
    of the namespace read. ``pid``: the pid whose namespace was read (None: the
    caller's own). ``frozen``: how its processes were held still: None, ``"cgroup"``,
    ``"sigstop"`` or ``"cgroup+sigstop"``.
    """

    taken_at: str
    namespace: int
    pid: Optional[int]
    frozen: Optional[str]
    limits: Limits
    queues: Tuple[QueueState, ...]
    semaphore_sets: Tuple[SemaphoreSetState, ...]


@dataclass(frozen=True)
class Restored:
    """What :func:`restore` created: the ids of the queues and of the semaphore sets."""

    queues: Tuple[int, ...]
    semaphore_sets: Tuple[int, ...]


# ---- reading a namespace ------------------------------------------------------------

def _read_int(name: str) -> int:
    with open(f"/proc/sys/kernel/{name}") as f:
        return int(f.read())


def _write_proc(name: str, value: str) -> None:
    try:
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(value)
    except PermissionError as e:
        raise PermissionError(e.errno, f"cannot write /proc/sys/kernel/{name}: needs root in "
                              "the user namespace that owns this IPC namespace") from None


def _read_limits() -> Limits:
    with open("/proc/sys/kernel/sem") as f:
        semmsl, semmns, semopm, semmni = (int(v) for v in f.read().split())
    return Limits(_read_int("msgmax"), _read_int("msgmnb"), _read_int("msgmni"),
                  semmsl, semmns, semopm, semmni)


def _write_limits(limits: Limits) -> None:
    _write_proc("msgmax", str(limits.msgmax))
    _write_proc("msgmnb", str(limits.msgmnb))
    _write_proc("msgmni", str(limits.msgmni))
    _write_proc("sem", f"{limits.semmsl} {limits.semmns} {limits.semopm} {limits.semmni}")


def _unreadable(kind: str, ident: int, e: PermissionError) -> PermissionError:
    return PermissionError(e.errno, f"snapshot: no read permission on {kind} {ident} "
                           "(reading every object needs root or CAP_IPC_OWNER)")


_State = TypeVar("_State")


def _read(kind: str, ident: int, read: Callable[[], _State]) -> Optional[_State]:
    """``read()``, or None if the object went meanwhile; without read permission
    the error names the object."""
    try:
        return read()
    except PermissionError as e:
        raise _unreadable(kind, ident, e) from None
    except OSError as e:
        if gone(e):
            return None
        raise


def _read_queue(msqid: int, retries: int) -> Optional[QueueState]:
    def read() -> QueueState:
        ds = sc.msgctl(msqid, sc.IPC_STAT)
        messages = tuple(copy_all(msqid, retries))
        return QueueState(msqid, ds.key, ds.uid, ds.gid, ds.cuid, ds.cgid, ds.mode, ds.qbytes,
                          messages)

    return _read("queue", msqid, read)


def _read_semset(semid: int) -> Optional[SemaphoreSetState]:
    def read() -> SemaphoreSetState:
        ds = sc.semctl(semid, 0, sc.IPC_STAT)
        values = tuple(sc.semctl(semid, 0, sc.GETALL))
        return SemaphoreSetState(semid, ds.key, ds.uid, ds.gid, ds.cuid, ds.cgid, ds.mode,
                                 values)

    return _read("semaphore set", semid, read)


def _need_callable(call: str, progress: Optional[Progress]) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(f"{call}: progress must be callable as progress(done, total, what) "
                        f"or None, not {type(progress).__name__}")


def snapshot(pid: Optional[int] = None, *, freeze: bool = False, retries: int = COPY_ATTEMPTS,
             progress: Optional[Progress] = None,
             interrupt_blocked_semops: bool = False) -> Snapshot:
    """Read every queue and semaphore set of a namespace, taking nothing.

    Args:
        pid: read the namespace of this process (see :func:`~ipcbind.namespace.enter_namespace`);
            None reads the calling thread's own.
        freeze: stop the namespace's processes while reading (see :func:`freeze_namespace`);
            needs ``pid`` in another namespace than ours.
        retries: how many times a queue that changed while it was read is read again.
        progress: called as ``progress(done, total, what)`` before each object.
        interrupt_blocked_semops: freeze even processes in semop or semtimedop, which
            then fail with EINTR (see :func:`freeze_namespace`).

    Returns:
        The :class:`Snapshot`. Objects removed while it is taken are left out.

    Raises:
        QueueChangedError: a queue changed during each of ``retries`` reads.
        PermissionError: an object is not readable, or the namespace cannot be entered.
        NotSupportedError: the kernel has no MSG_COPY (no CONFIG_CHECKPOINT_RESTORE).
        FreezeRefusedError: ``freeze`` would interrupt a blocked semop or semtimedop.
        FreezeError: ``freeze`` could not stop the processes.
    """
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"snapshot: retries must be an int, not {type(retries).__name__}")
    if retries < 1:
        raise ValueError(f"snapshot: retries must be >= 1, got {retries}")
    _need_callable("snapshot", progress)
    holder = (freeze_namespace(pid, interrupt_blocked_semops=interrupt_blocked_semops)
              if freeze else nullcontext(None))
    inside = enter_namespace(pid) if pid is not None else nullcontext(None)
    with holder as frozen, inside:
        ns = namespace_id()[1]
        limits = _read_limits()
        queue_ids = [i for i, _ in list_queues()]
        semset_ids = [i for i, _ in list_semaphore_sets()]
        total = len(queue_ids) + len(semset_ids)
        queues = []
        for n, msqid in enumerate(queue_ids):
            if progress:
                progress(n, total, f"queue {msqid}")
            q = _read_queue(msqid, retries)
            if q is not None:
                queues.append(q)
        sets = []
        for n, semid in enumerate(semset_ids, len(queue_ids)):
            if progress:
                progress(n, total, f"semaphore set {semid}")
            s = _read_semset(semid)
            if s is not None:
                sets.append(s)
        if progress:
            progress(total, total, "done")
    taken = datetime.now(timezone.utc).strftime(_TAKEN_AT_FORMAT)
    return Snapshot(taken, ns, pid, frozen, limits, tuple(queues), tuple(sets))


# ---- freezing -------------------------------------------------------------------------

def _cgroup2_root() -> Optional[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _cgroup_of(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def _procs_below(path: str) -> List[int]:
    found: List[int] = []
    for d, _, _ in os.walk(path):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def _in_frozen_cgroup(pid: int) -> bool:
    """Whether pid sits in a frozen (or freezing) cgroup v2: held already, and a SIGSTOP
    would wait for a thaw that is not ours to make."""
    root = _cgroup2_root()
    rel = _cgroup_of(pid)
    if root is None or rel is None or rel == "/":
        return False
    path = os.path.join(root, rel.lstrip("/"))
    try:
        # cgroup.freeze says a freeze was asked for here (it may still be under way);
        # cgroup.events says the cgroup is frozen, also through an ancestor.
        with open(os.path.join(path, "cgroup.freeze")) as f:
            if f.read().strip() == "1":
                return True
        with open(os.path.join(path, "cgroup.events")) as f:
            return "frozen 1" in f.read().split("\n")
    except OSError:
        return False


_HELD_OR_GONE = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP,
                           psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


def _held_or_gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() in _HELD_OR_GONE
    except psutil.NoSuchProcess:
        return True


# The System V semaphore calls by syscall number, where the number is known. glibc's
# semop is the semtimedop syscall without a timeout.
_SEM_SYSCALLS_BY_MACHINE: Dict[str, Dict[int, str]] = {
    "x86_64": {65: "semop", 220: "semtimedop"},
    "aarch64": {193: "semop", 192: "semtimedop"},
}
_SEM_SYSCALLS = _SEM_SYSCALLS_BY_MACHINE.get(platform.machine(), {})


def _sem_call(pid: int, tid: int) -> Optional[str]:
    """The semaphore call thread ``tid`` of ``pid`` is in (asleep, stopped or frozen
    in it), or None."""
    task = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{task}/syscall") as f:
            fields = f.read().split()
    except FileNotFoundError:
        return None  # the thread has exited
    except OSError as e:
        unreadable = f"a call that cannot be seen ({task}/syscall: {e.strerror})"
    else:
        if fields and fields[0].isdigit() and _SEM_SYSCALLS:
            call = _SEM_SYSCALLS.get(int(fields[0]))
            if call == "semtimedop" and len(fields) > 4 and int(fields[4], 16) == 0:
                return "semop"
            return call
        unreadable = ""
    try:
        # Without a known syscall number the kernel function it sleeps in tells.
        with open(f"{task}/wchan") as f:
            if "semtimedop" in f.read():
                return "semop or semtimedop"
    except OSError:
        pass
    return unreadable or None


_ASLEEP = frozenset({psutil.STATUS_SLEEPING, psutil.STATUS_DISK_SLEEP})


def _blocked_in(pids: Sequence[int], asleep: bool = True) -> List[BlockedCall]:
    """The threads of ``pids`` in a semaphore call: only those asleep in it if
    ``asleep`` (one stopped by someone else was interrupted already, not by us)."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name, tids = proc.name(), sorted(t.id for t in proc.threads())
        except psutil.NoSuchProcess:
            continue
        for tid in tids:
            try:
                if asleep and psutil.Process(tid).status() not in _ASLEEP:
                    continue
            except psutil.NoSuchProcess:
                continue
            call = _sem_call(pid, tid)
            if call is not None:
                found.append(BlockedCall(pid, tid, name, call))
    return found


def blocked_semops(pid: Optional[int]) -> List[BlockedCall]:
    """The threads of the namespace of ``pid`` (None: ours) now in semop or semtimedop,
    which freezing would make fail with EINTR (docs/snapshots.md has the measurements)."""
    return _blocked_in([p for p in namespace_pids(pid) if p != os.getpid()])


def _wait_for(ready: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + _FREEZE_WAIT
    while not ready():
        if time.monotonic() > end:
            raise FreezeError(f"{what} did not stop within {_FREEZE_WAIT:g} s")
        time.sleep(0.002)


class _Holder:
    """Stops processes and remembers exactly what it stopped, to let it go again."""

    def __init__(self, pid: int, interrupt_blocked_semops: bool) -> None:
        self.pid = pid
        self.interrupt = interrupt_blocked_semops
        self.cgroups: List[str] = []
        self.stopped: List[psutil.Process] = []
        self.held: List[int] = []

    def method(self) -> Optional[str]:
        used = [m for m, on in (("cgroup", self.cgroups), ("sigstop", self.stopped)) if on]
        return "+".join(used) or None

    def freezable(self, pids: Sequence[int], members: Sequence[int]) -> Dict[str, List[int]]:
        """{cgroup directory: its pids} for the cgroups of ``pids`` the freezer can hold.

        Only a cgroup (with everything below it) that holds nothing but ``members``
        (this namespace's processes), and not us, is frozen as a whole.
        """
        root = _cgroup2_root()
        if root is None:
            return {}
        ours = _cgroup_of(os.getpid())
        allowed = set(members)
        groups: Dict[str, List[int]] = {}
        for p in pids:
            rel = _cgroup_of(p)
            if rel is None or rel == "/":
                continue
            groups.setdefault(rel, []).append(p)
        usable: Dict[str, List[int]] = {}
        for rel, ps in groups.items():
            path = os.path.join(root, rel.lstrip("/"))
            if ours is not None and (ours == rel or ours.startswith(rel.rstrip("/") + "/")):
                continue
            if not os.access(os.path.join(path, "cgroup.freeze"), os.W_OK):
                continue
            if not set(_procs_below(path)) <= allowed:
                continue
            usable[path] = ps
        return usable

    def freeze_cgroup(self, path: str, pids: Sequence[int]) -> None:
        with open(os.path.join(path, "cgroup.freeze")) as f:
            if f.read().strip() == "1":
                return  # frozen by someone else: theirs to thaw
        self.cgroups.append(path)
        self.held.extend(pids)
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("1")

        def frozen() -> bool:
            with open(os.path.join(path, "cgroup.events")) as f:
                return "frozen 1" in f.read().split("\n")

        _wait_for(frozen, f"cgroup {path}")

    def stop(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        if _held_or_gone(proc):
            return  # gone, a zombie, or stopped by someone else: theirs to continue
        self.stopped.append(proc)
        try:
            proc.suspend()
        except psutil.NoSuchProcess:
            return
        except psutil.AccessDenied:
            self.stopped.pop()
            raise _denied("SIGSTOP", pid) from None
        self.held.append(pid)
        _wait_for(lambda: _held_or_gone(proc), f"pid {pid}")

    def hold(self) -> None:
        handled: Set[int] = set()
        # Repeat until a pass finds no new process: one not yet stopped may fork.
        while True:
            current = [p for p in namespace_pids(self.pid) if p != os.getpid()]
            new = [p for p in current if p not in handled]
            if not new:
                break
            if not self.interrupt:
                blocked = _blocked_in(new)
                if blocked:
                    raise FreezeRefusedError(blocked)
            for path, ps in self.freezable(new, current).items():
                self.freeze_cgroup(path, ps)
                handled.update(ps)
            for p in new:
                if p not in handled and not _in_frozen_cgroup(p):
                    self.stop(p)
                handled.add(p)
        if not self.interrupt:
            # A thread may have entered a semop between the look and its stop; found
            # stopped in one, it either was about to return from it or was woken out
            # of it and fails with EINTR now. Which, nothing here can tell: say so.
            for b in _blocked_in(self.held, asleep=False):
                warnings.warn(FreezeWarning(
                    f"{b} when it was stopped: if it was waiting there, the call fails "
                    "with EINTR"), stacklevel=4)

    def release(self) -> None:
        failures: List[str] = []
        interrupted: Optional[BaseException] = None
        steps: List[Callable[[], None]] = []
        steps.extend(partial(_thaw_cgroup, path) for path in reversed(self.cgroups))
        steps.extend(partial(_continue, p) for p in reversed(self.stopped))
        for step in steps:
            # A Ctrl-C must not leave a process stopped: finish, then re-raise it.
            while True:
                try:
                    step()
                    break
                except KeyboardInterrupt as e:
                    interrupted = e
                except OSError as e:
                    failures.append(str(e))
                    break
        self.cgroups.clear()
        self.stopped.clear()
        self.held.clear()
        if interrupted is not None:
            raise interrupted
        if failures:
            raise FreezeError("could not thaw every process: " + "; ".join(failures))


def _thaw_cgroup(path: str) -> None:
    try:
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
    except FileNotFoundError:
        pass  # the cgroup is gone, and its processes with it


def _denied(what: str, pid: int) -> PermissionError:
    return PermissionError(errno.EPERM, f"{what} to pid {pid}: {os.strerror(errno.EPERM)} "
                           "(it needs the same user, or CAP_KILL)")


def _continue(proc: psutil.Process) -> None:
    try:
        proc.resume()
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        raise _denied("SIGCONT", proc.pid) from None


@contextmanager
def freeze_namespace(pid: Optional[int], *,
                     interrupt_blocked_semops: bool = False) -> Iterator[Optional[str]]:
    """Hold every process of the IPC namespace of ``pid`` still, and always let it go.

    Processes whose cgroup (v2) holds only processes of that namespace are frozen
    through the cgroup's ``cgroup.freeze``; the others get SIGSTOP, then SIGCONT.
    Processes that were already frozen or stopped are left as they were found.
    Yields how they were held (see :attr:`Snapshot.frozen`). The processes are
    let go on leaving the block, also on an error or Ctrl-C.

    A SIGSTOP is visible: a parent waiting with WUNTRACED, or a shell, sees the
    process stop and continue.

    Every way of holding a process (SIGSTOP, the cgroup v1 and v2 freezers, ptrace
    interrupt) makes a semop or semtimedop it is blocked in fail with EINTR. So unless
    ``interrupt_blocked_semops`` is true, a namespace with a thread in one is not
    frozen at all: :class:`FreezeRefusedError` names them (see :func:`blocked_semops`).

    Raises:
        ValueError: ``pid`` shares our namespace (that would stop every process of
            this system, this one included).
        FreezeRefusedError: a thread is in semop or semtimedop (nothing was frozen).
        FreezeError: a process did not stop in time, or could not be let go.

    Warns:
        FreezeWarning: a thread entered a semop between the look and its stop.
    """
    if not isinstance(interrupt_blocked_semops, bool):
        raise TypeError("freeze: interrupt_blocked_semops must be a bool, not "
                        f"{type(interrupt_blocked_semops).__name__}")
    if pid is None or namespace_id(pid) == namespace_id():
        raise ValueError("freeze: refusing to stop the processes of our own IPC namespace; "
                         "give the pid of a process in another namespace")
    holder = _Holder(pid, interrupt_blocked_semops)
    try:
        holder.hold()
        yield holder.method()
    finally:
        holder.release()


# ---- restoring --------------------------------------------------------------------------

def _set_next_id(kind: str, ident: int) -> None:
    try:
        _write_proc(f"{kind}_next_id", str(ident))
    except PermissionError as e:
        raise PermissionError(e.errno, f"cannot choose the id through /proc/sys/kernel/"
                              f"{kind}_next_id: that needs CAP_SYS_ADMIN or "
                              "CAP_CHECKPOINT_RESTORE over the namespace (root in the user "
                              "namespace that owns it)") from None


def _clear_next_id(kind: str) -> None:
    """Disarm next_id after a *get that failed before allocating (EEXIST, ENOSPC,
    EINVAL), so that no later object, anyone's, takes the id.

    The kernel refuses -1 there (EINVAL), but disarms it at every allocation: a
    throwaway private object consumes it. Where even that fails (no room for one
    more object), the id stays armed and the *get's own error is what counts.
    """
    if _read_int(f"{kind}_next_id") == -1:
        return
    try:
        if kind == "msg":
            sc.msgctl(sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600), sc.IPC_RMID)
        else:
            sc.semctl(sc.semget(sc.IPC_PRIVATE, 1, sc.IPC_CREAT | 0o600), 0, sc.IPC_RMID)
    except OSError:
        pass


class _Restorer:
    def __init__(self, snap: Snapshot, set_limits: bool) -> None:
        self.snap = snap
        self.set_limits = set_limits
        self.queues: List[int] = []
        self.sets: List[int] = []
        self.old_limits: Optional[Limits] = None

    def check_conflicts(self) -> None:
        have_q = {i: ds.key for i, ds in list_queues()}
        have_s = {i: ds.key for i, ds in list_semaphore_sets()}
        clashes = []
        for kind, have, wanted in (("queue", have_q, self.snap.queues),
                                   ("semaphore set", have_s, self.snap.semaphore_sets)):
            keys = {k: i for i, k in have.items() if k}
            for obj in wanted:
                if obj.id in have:
                    clashes.append(f"{kind} id {obj.id} exists")
                elif obj.key and obj.key in keys:
                    clashes.append(f"{kind} key {obj.key:#010x} exists (id {keys[obj.key]})")
        if clashes:
            more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
            raise RestoreConflictError("restore refused, it would clobber existing objects: "
                                       + "; ".join(clashes[:5]) + more)

    def queue(self, q: QueueState) -> None:
        where = f"queue {q.id}"
        msgmnb = _read_int("msgmnb")
        raise_mnb = self.set_limits and q.qbytes > msgmnb
        if raise_mnb:
            _write_proc("msgmnb", str(q.qbytes))
        try:
            _set_next_id("msg", q.id)
            try:
                msqid = sc.msgget(q.key, sc.IPC_CREAT | sc.IPC_EXCL | 0o600)
            finally:
                _clear_next_id("msg")
        finally:
            if raise_mnb:
                _write_proc("msgmnb", str(msgmnb))
        self.queues.append(msqid)
        if msqid != q.id:
            raise RestoreError(f"{where}: the kernel gave id {msqid} instead (another process "
                               "created an object at the same time?)")
        created = sc.msgctl(msqid, sc.IPC_STAT).qbytes
        if q.qbytes > created:
            try:
                sc.msgctl(msqid, sc.IPC_SET, {"qbytes": q.qbytes})
            except PermissionError:
                raise PermissionError(
                    errno.EPERM, f"{where}: qbytes {q.qbytes} is above this namespace's "
                    f"msgmnb {created} and raising it needs CAP_SYS_RESOURCE; restore with "
                    "the snapshot's limits (set_limits=True, --limits) into a namespace "
                    "you own") from None
        if q.messages:
            self.send(msqid, q)
        change: Dict[str, int] = {"uid": q.uid, "gid": q.gid, "mode": q.mode}
        if q.qbytes != sc.msgctl(msqid, sc.IPC_STAT).qbytes:
            change["qbytes"] = q.qbytes
        sc.msgctl(msqid, sc.IPC_SET, change)

    def send(self, msqid: int, q: QueueState) -> None:
        mtypes = [m for m, _ in q.messages]
        ends = []
        end = 0
        for _, data in q.messages:
            end += len(data)
            ends.append(end)
        text = b"".join(data for _, data in q.messages)
        try:
            sent = sc._msgsnd_many(msqid, mtypes, text, ends, sc.IPC_NOWAIT, None)
        except OSError as e:
            i = getattr(e, "sent", 0)
            size = len(q.messages[i][1]) if i < len(q.messages) else 0
            hint = ""
            if e.errno == errno.EINVAL:
                hint = (f" (larger than msgmax {msgmax()}? restore with the "
                        "snapshot's limits)")
            raise OSError(e.errno, f"queue {q.id}: message {i} ({size} bytes): "
                          f"{e.strerror}{hint}") from None
        if sent != len(mtypes):
            raise OSError(errno.EAGAIN, f"queue {q.id}: only {sent} of {len(mtypes)} messages "
                          f"fit (qbytes {sc.msgctl(msqid, sc.IPC_STAT).qbytes})")

    def semset(self, s: SemaphoreSetState) -> None:
        _set_next_id("sem", s.id)
        try:
            semid = sc.semget(s.key, len(s.values), sc.IPC_CREAT | sc.IPC_EXCL | 0o600)
        finally:
            _clear_next_id("sem")
        self.sets.append(semid)
        if semid != s.id:
            raise RestoreError(f"semaphore set {s.id}: the kernel gave id {semid} instead "
                               "(another process created an object at the same time?)")
        sc.semctl(semid, 0, sc.SETALL, list(s.values))
        sc.semctl(semid, 0, sc.IPC_SET, {"uid": s.uid, "gid": s.gid, "mode": s.mode})

    def run(self, progress: Optional[Progress]) -> Restored:
        self.check_conflicts()
        total = len(self.snap.queues) + len(self.snap.semaphore_sets)
        if self.set_limits:
            self.old_limits = _read_limits()
            _write_limits(self.snap.limits)
        n = 0
        for q in self.snap.queues:
            if progress:
                progress(n, total, f"queue {q.id}")
            self.queue(q)
            n += 1
        for s in self.snap.semaphore_sets:
            if progress:
                progress(n, total, f"semaphore set {s.id}")
            self.semset(s)
            n += 1
        if progress:
            progress(total, total, "done")
        return Restored(tuple(self.queues), tuple(self.sets))

    def undo(self) -> List[str]:
        """Remove what was created and put the limits back; what could not be undone."""
        left = []
        steps: List[Tuple[str, Callable[[], Any]]] = []
        for semid in reversed(self.sets):
            steps.append((f"semaphore set {semid}", partial(sc.semctl, semid, 0, sc.IPC_RMID)))
        for msqid in reversed(self.queues):
            steps.append((f"queue {msqid}", partial(sc.msgctl, msqid, sc.IPC_RMID)))
        if self.old_limits is not None:
            old = self.old_limits
            steps.append(("the namespace's previous limits", lambda: _write_limits(old)))
        interrupted: Optional[BaseException] = None
        for what, step in steps:
            while True:
                try:
                    step()
                    break
                except KeyboardInterrupt as e:
                    interrupted = e
                except OSError as e:
                    left.append(f"{what} ({e.strerror})")
                    break
        if interrupted is not None:
            raise interrupted
        return left


def restore(snap: Snapshot, pid: Optional[int] = None, *, set_limits: bool = False,
            progress: Optional[Progress] = None) -> Restored:
    """Recreate a snapshot's queues and semaphore sets, with the same ids, all or nothing.

    Each object gets its id through ``/proc/sys/kernel/msg_next_id`` / ``sem_next_id``,
    then its key, its messages in order (or values), and last its owner, mode and
    qbytes. Setting the ids needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) over
    the namespace.

    Args:
        snap: what to recreate.
        pid: recreate in the namespace of this process; None: the calling thread's.
        set_limits: first write the snapshot's limits (msgmax, msgmnb, msgmni, sem)
            into the namespace, and raise msgmnb while creating a queue whose qbytes
            is above it. Without it, a qbytes above msgmnb needs CAP_SYS_RESOURCE.
        progress: called as ``progress(done, total, what)`` before each object.

    Returns:
        :class:`Restored`, the ids created.

    Raises:
        RestoreConflictError: an object with one of the ids or keys exists; nothing
            was created.
        RestoreError: a step failed; everything created was removed (and the limits
            put back) before it was raised. Its ``__cause__`` is the failure.
        KeyboardInterrupt: as for RestoreError, removed first, then re-raised.
    """
    if not isinstance(snap, Snapshot):
        raise TypeError(f"restore: needs a Snapshot, not {type(snap).__name__}")
    _need_callable("restore", progress)
    inside = enter_namespace(pid) if pid is not None else nullcontext(None)
    with inside:
        r = _Restorer(snap, set_limits)
        try:
            return r.run(progress)
        except RestoreConflictError:
            raise
        except KeyboardInterrupt:
            r.undo()
            raise
        except Exception as e:
            made = len(r.queues) + len(r.sets)
            left = r.undo()
            raise RestoreError(f"restore failed: {e}; removed the {made} object(s) it had "
                               "created", left) from e


# ---- the file format ------------------------------------------------------------------

def _key_text(key: int) -> str:
    return f"{key:#010x}"


def _mode_text(mode: int) -> str:
    return f"{mode:04o}"


def _need_snapshot(call: str, snap: Any) -> None:
    if not isinstance(snap, Snapshot):
        raise TypeError(f"{call}: needs a Snapshot, not {type(snap).__name__}")


def _body(snap: Snapshot) -> Dict[str, Any]:
    lim = snap.limits
    return {
        "format": FORMAT,
        "version": VERSION,
        "taken_at": snap.taken_at,
        "namespace": {"inode": snap.namespace, "pid": snap.pid},
        "frozen": snap.frozen,
        "limits": {"msgmax": lim.msgmax, "msgmnb": lim.msgmnb, "msgmni": lim.msgmni,
                   "sem": [lim.semmsl, lim.semmns, lim.semopm, lim.semmni]},
        "queues": [{
            "id": q.id, "key": _key_text(q.key), "uid": q.uid, "gid": q.gid,
            "cuid": q.cuid, "cgid": q.cgid, "mode": _mode_text(q.mode), "qbytes": q.qbytes,
            "messages": [{"type": t, "size": len(d), "data": base64.b64encode(d).decode()}
                         for t, d in q.messages],
        } for q in snap.queues],
        "semaphore_sets": [{
            "id": s.id, "key": _key_text(s.key), "uid": s.uid, "gid": s.gid,
            "cuid": s.cuid, "cgid": s.cgid, "mode": _mode_text(s.mode), "values": list(s.values),
        } for s in snap.semaphore_sets],
    }


def _digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _line(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _block(items: List[str], indent: str) -> str:
    if not items:
        return "[]"
    return "[\n" + ",\n".join(indent + " " + i for i in items) + "\n" + indent + "]"


def dumps(snap: Snapshot) -> str:
    """The snapshot as the text of a snapshot file (JSON, see the README).

    One object, or one message, per line, so that a person can read it and diff two.
    """
    _need_snapshot("dumps", snap)
    body = _body(snap)
    body["checksum"] = _digest(body)
    fields = []
    for name, value in body.items():
        if name == "queues":
            queues = []
            for q in value:
                head = _line({k: v for k, v in q.items() if k != "messages"})[:-1]
                messages = _block([_line(m) for m in q["messages"]], "  ")
                queues.append(f'{head}, "messages": {messages}}}')
            text = _block(queues, " ")
        elif name == "semaphore_sets":
            text = _block([_line(s) for s in value], " ")
        else:
            text = _line(value)
        fields.append(f" {json.dumps(name)}: {text}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def dump(snap: Snapshot, file: Union[str, "os.PathLike[str]", IO[str]]) -> None:
    """Write the snapshot to a path or an open text file.

    A path that names a regular file, or nothing yet, is replaced atomically (a new
    file, renamed over it); one that names a device or a FIFO (``/dev/stdout``, a
    named pipe, also the pipe or socket ``/dev/stdout`` leads to) is written into, and
    stays what it is. A symbolic link is followed:
    its target is written (created if the link dangles, as a shell's ``>`` would)
    and the link stays a link. A new file is readable by its owner only (mode 0600:
    it holds the messages, which the queues' permissions may have kept private); a
    file replaced keeps its permission bits.
    """
    _need_snapshot("dump", snap)
    if not isinstance(file, (str, os.PathLike)):
        if not hasattr(file, "write"):
            raise TypeError(f"dump: needs a path or an open text file, "
                            f"not {type(file).__name__}")
        file.write(dumps(snap))
        return
    text = dumps(snap)
    path = os.fspath(file)
    # The rename must land on the link's target, in the target's directory: renamed
    # over the link itself, the new file would replace the link.
    target = os.path.realpath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None  # nothing there yet, or a dangling link: its target is created
    # What the path opens decides, not its resolved name: a link in /proc, such as
    # /dev/stdout, can point to a pipe or a deleted file, whose "target" (pipe:[1234])
    # is no path. Anything realpath does not reach is written into, as a device is.
    if st is not None and not (stat.S_ISDIR(st.st_mode) or _same_file(st, target)):
        with open(path, "w") as f:
            f.write(text)
        return
    keep = stat.S_IMODE(st.st_mode) if st is not None and stat.S_ISREG(st.st_mode) else None
    try:
        # mkstemp: a fresh name (O_EXCL, so nothing planted there is followed), mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".",
                                   suffix=".tmp", dir=os.path.dirname(target))
    except OSError as e:
        # Name the file asked for, not the temporary one beside its target.
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        with open(fd, "w") as f:
            if keep is not None:
                os.fchmod(fd, keep)  # a file replaced keeps its permissions
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _same_file(st: os.stat_result, path: str) -> bool:
    """Whether ``path`` is the regular file ``st`` describes."""
    try:
        other = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


class _Checker:
    """Reads a parsed file, raising SnapshotFormatError that names the bad field."""

    @staticmethod
    def fail(where: str, why: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"snapshot file: {where}: {why}")

    def obj(self, v: Any, where: str, fields: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(where, f"must be an object, not {type(v).__name__}")
        missing = [f for f in fields if f not in v]
        if missing:
            raise self.fail(where, f"missing {', '.join(missing)}")
        extra = sorted(set(v) - set(fields))
        if extra:
            raise self.fail(where, f"unknown field {', '.join(map(str, extra))}")
        return v

    def integer(self, v: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(where, f"must be an integer, not {json.dumps(v)[:40]}")
        if not lo <= v <= hi:
            raise self.fail(where, f"{v} is outside {lo}..{hi}")
        return int(v)

    def listof(self, v: Any, where: str) -> List[Any]:
        if not isinstance(v, list):
            raise self.fail(where, f"must be a list, not {type(v).__name__}")
        return v

    def text(self, v: Any, where: str, pattern: str) -> str:
        if not isinstance(v, str) or not re.fullmatch(pattern, v):
            raise self.fail(where, f"{json.dumps(v)[:40]} does not match {pattern}")
        return v

    def moment(self, v: Any, where: str) -> str:
        text = self.text(v, where, _TAKEN_AT)
        # The pattern lets month 99 or February 30 through; the calendar does not.
        try:
            datetime.strptime(text, _TAKEN_AT_FORMAT)
        except ValueError:
            raise self.fail(where, f"{json.dumps(text)} is not a real date and time") from None
        return text

    def key(self, v: Any, where: str) -> int:
        return int(self.text(v, where, r"0x[0-9a-f]{8}"), 16)

    def mode(self, v: Any, where: str) -> int:
        return int(self.text(v, where, r"0[0-7]{3}"), 8)

    def owner(self, o: Mapping[str, Any], where: str) -> Tuple[int, int, int, int]:
        return tuple(self.integer(o[f], f"{where}.{f}", 0, U32_MAX)  # type: ignore[return-value]
                     for f in ("uid", "gid", "cuid", "cgid"))

    def queue(self, v: Any, where: str) -> QueueState:
        o = self.obj(v, where, ("id", "key", "uid", "gid", "cuid", "cgid", "mode", "qbytes",
                                "messages"))
        messages = []
        for i, m in enumerate(self.listof(o["messages"], f"{where}.messages")):
            at = f"{where}.messages[{i}]"
            m = self.obj(m, at, ("type", "size", "data"))
            mtype = self.integer(m["type"], f"{at}.type", 1, _MTYPE_MAX)
            size = self.integer(m["size"], f"{at}.size", 0, INT_MAX)
            encoded = self.text(m["data"], f"{at}.data", r"[A-Za-z0-9+/]*={0,2}")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise self.fail(f"{at}.data", "is not valid base64") from None
            # The decoder ignores the spare bits of the last character ("AB==" reads as
            # "AA=="): a text that dumps() would not write is refused, not silently changed.
            if base64.b64encode(data).decode() != encoded:
                raise self.fail(f"{at}.data", "is not base64 as written (spare bits set)")
            if len(data) != size:
                raise self.fail(at, f"size says {size} bytes but data holds {len(data)}")
            messages.append((mtype, data))
        return QueueState(self.integer(o["id"], f"{where}.id", 0, INT_MAX),
                          self.key(o["key"], f"{where}.key"), *self.owner(o, where),
                          self.mode(o["mode"], f"{where}.mode"),
                          self.integer(o["qbytes"], f"{where}.qbytes", 0, 2 ** 63 - 1),
                          tuple(messages))

    def semset(self, v: Any, where: str) -> SemaphoreSetState:
        o = self.obj(v, where, ("id", "key", "uid", "gid", "cuid", "cgid", "mode", "values"))
        values = self.listof(o["values"], f"{where}.values")
        if not values:
            raise self.fail(f"{where}.values", "a set has at least one semaphore")
        return SemaphoreSetState(
            self.integer(o["id"], f"{where}.id", 0, INT_MAX),
            self.key(o["key"], f"{where}.key"),
            *self.owner(o, where), self.mode(o["mode"], f"{where}.mode"),
            tuple(self.integer(x, f"{where}.values[{i}]", 0, SEMVMX) for i, x in enumerate(values)))

    def limits(self, v: Any) -> Limits:
        o = self.obj(v, "limits", ("msgmax", "msgmnb", "msgmni", "sem"))
        sem = self.listof(o["sem"], "limits.sem")
        if len(sem) != 4:
            raise self.fail("limits.sem", f"must hold 4 numbers, not {len(sem)}")
        return Limits(*(self.integer(o[f], f"limits.{f}", 0, INT_MAX)
                        for f in ("msgmax", "msgmnb", "msgmni")),
                      *(self.integer(x, f"limits.sem[{i}]", 0, INT_MAX)
                        for i, x in enumerate(sem)))

    @staticmethod
    def unique(objs: Sequence[Any], where: str) -> None:
        ids: Set[int] = set()
        keys: Set[int] = set()
        for o in objs:
            if o.id in ids:
                raise _Checker.fail(where, f"id {o.id} appears twice")
            if o.key and o.key in keys:
                raise _Checker.fail(where, f"key {o.key:#010x} appears twice")
            ids.add(o.id)
            keys.add(o.key)

    def snapshot(self, doc: Any) -> Snapshot:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SnapshotFormatError(f"not an ipcbind snapshot file (no \"format\": "
                                      f"\"{FORMAT}\")")
        version = doc.get("version")
        # Exactly the integer: true and 1.0 equal 1 in Python but are not what is written.
        if type(version) is not int or version != VERSION:
            raise SnapshotFormatError(f"snapshot file version {json.dumps(version)[:20]} is "
                                      f"not supported (this ipcbind reads version {VERSION})")
        o = self.obj(doc, "top level", ("format", "version", "taken_at", "namespace", "frozen",
                                        "limits", "queues", "semaphore_sets", "checksum"))
        body = {k: v for k, v in o.items() if k != "checksum"}
        if o["checksum"] != _digest(body):
            raise SnapshotFormatError("snapshot file: checksum does not match the content "
                                      "(the file is damaged or was edited)")
        ns = self.obj(o["namespace"], "namespace", ("inode", "pid"))
        pid = ns["pid"]
        if pid is not None:
            pid = self.integer(pid, "namespace.pid", 1, INT_MAX)
        frozen = o["frozen"]
        if frozen is not None:
            frozen = self.text(frozen, "frozen", r"cgroup|sigstop|cgroup\+sigstop")
        queues = tuple(self.queue(q, f"queues[{i}]")
                       for i, q in enumerate(self.listof(o["queues"], "queues")))
        sets = tuple(self.semset(s, f"semaphore_sets[{i}]")
                     for i, s in enumerate(self.listof(o["semaphore_sets"], "semaphore_sets")))
        self.unique(queues, "queues")
        self.unique(sets, "semaphore_sets")
        return Snapshot(self.moment(o["taken_at"], "taken_at"),
                        self.integer(ns["inode"], "namespace.inode", 0, 2 ** 64 - 1), pid, frozen,
                        self.limits(o["limits"]), queues, sets)


def loads(text: Union[str, bytes]) -> Snapshot:
    """Read a snapshot from the text of a snapshot file.

    Raises:
        SnapshotFormatError: the text is not a complete, undamaged snapshot file of a
            version this ipcbind reads; the message names what is wrong.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SnapshotFormatError(f"snapshot file: not UTF-8 text ({e.reason} at byte "
                                      f"{e.start})") from None
    if not isinstance(text, str):
        raise TypeError(f"loads: needs str or bytes, not {type(text).__name__}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapshotFormatError(f"snapshot file: not JSON ({e.msg} at line {e.lineno}, "
                                  f"column {e.colno})") from None
    except RecursionError:
        raise SnapshotFormatError("snapshot file: not a snapshot (nested too deeply)") from None
    except ValueError as e:
        # Python's limit on the digits of an int it reads (sys.get_int_max_str_digits).
        raise SnapshotFormatError(f"snapshot file: not a snapshot "
                                  f"({str(e).split(';')[0]})") from None
    return _Checker().snapshot(doc)


def load(file: Union[str, "os.PathLike[str]", IO[Any]]) -> Snapshot:
    """Read a snapshot from a path or an open file (see :func:`loads`).

    Raises:
        OSError: the file cannot be read.
        SnapshotFormatError: as for :func:`loads`.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return loads(f.read())
    if not hasattr(file, "read"):
        raise TypeError(f"load: needs a path or an open file, not {type(file).__name__}")
    data = file.read()
    return loads(data)
