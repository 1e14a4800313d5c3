"""Snapshot and restore of an IPC namespace's queues, semaphore sets and segments.

:func:`snapshot` reads every queue (every message in order, with MSG_COPY, so
nothing is taken), every semaphore set and every shared memory segment (its bytes
through a read-only attach) of a namespace, with the limits that matter;
:func:`dumps`/:func:`dump` write it in the documented JSON format (see
docs/snapshots.md, "Snapshot file format") and :func:`loads`/:func:`load` read it back,
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
import signal
import stat
import sys
import tempfile
import threading
import warnings
from functools import partial
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import (IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple, TypeVar, Union)

import psutil

from . import _seam
from . import syscalls as sc
from ._limits import INDEX_BITS, INT_MAX, SEMVMX, U32_MAX, msgmax
from .errors import (BlockedCall, FreezeError, FreezeRefusedError, FreezeWarning,
                     RestoreConflictError, RestoreError, SegmentLeftOutWarning,
                     SnapshotFormatError, gone)
from .msg import COPY_ATTEMPTS, copy_all
from .namespace import (enter_namespace, list_queues, list_segments, list_semaphore_sets,
                        namespace_id, namespace_pids)

__all__ = [
    "FORMAT",
    "VERSION",
    "Limits",
    "QueueState",
    "SemaphoreSetState",
    "SegmentState",
    "Snapshot",
    "Restored",
    "SnapshotFormatError",
    "RestoreError",
    "RestoreConflictError",
    "RestoreInterrupted",
    "FreezeError",
    "FreezeRefusedError",
    "FreezeWarning",
    "SegmentLeftOutWarning",
    "BlockedCall",
    "blocked_semops",
    "snapshot",
    "restore",
    "freeze_namespace",
    "dumps",
    "dump",
    "loads",
    "load",
    "DEFAULT_MAX_SIZE",
]

FORMAT = "ipcbind-snapshot"
"""The value of the ``format`` field of every snapshot file."""
VERSION = 2
"""The snapshot file format version this ipcbind writes (it reads 1 too: no segments)."""
_VERSIONS = (1, 2)

_MTYPE_MAX = 2 ** 63 - 1
_FREEZE_WAIT = 10.0
# ASCII digits only: \d would also take other scripts' digits.
_TAKEN_AT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
_TAKEN_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Progress = Callable[[int, int, str], None]
"""progress(done, total, what): called before each object is read or recreated, and
while a queue is copied (see :func:`snapshot`)."""


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
class _Identity:
    """What every kind of object has: ``key`` unsigned (0..2**32-1), as ``ipcs`` shows
    it; ``mode`` the permission bits. ``cuid``/``cgid`` (the creator) are recorded but
    a restore cannot set them: the kernel makes the restoring process the creator.
    """

    id: int
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int


@dataclass(frozen=True)
class QueueState(_Identity):
    """One message queue: ``messages`` is a tuple of ``(mtype, data)``, head first."""

    qbytes: int
    messages: Tuple[Tuple[int, bytes], ...]


@dataclass(frozen=True)
class SemaphoreSetState(_Identity):
    """One semaphore set: ``values`` holds one value per semaphore."""

    values: Tuple[int, ...]


@dataclass(frozen=True)
class SegmentState(_Identity):
    """One shared memory segment: ``data`` holds its ``size`` bytes.

    Reading it attaches it read-only for the copy, which sets its atime, dtime and
    lpid (and raises nattch meanwhile); a restore makes them those of its own attach.
    """

    size: int
    data: bytes


@dataclass(frozen=True)
class Snapshot:
    """A namespace's queues and semaphore sets at one time.

    ``taken_at``: ISO 8601 UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the loader refuses a
    time that is not on the calendar, such as month 13). ``namespace``: inode number
    of the namespace read. ``pid``: the pid whose namespace was read (None: the
    caller's own). ``frozen``: how its processes were held still: None, ``"cgroup"``,
    ``"sigstop"`` or ``"cgroup+sigstop"``. ``segments_left_out``: the ids of segments
    marked for removal (SHM_DEST) but still attached, which are not carried: their
    key is gone and they vanish with their last user, so a restore has nothing to
    recreate them as.
    """

    taken_at: str
    namespace: int
    pid: Optional[int]
    frozen: Optional[str]
    limits: Limits
    queues: Tuple[QueueState, ...]
    semaphore_sets: Tuple[SemaphoreSetState, ...]
    segments: Tuple[SegmentState, ...] = ()
    segments_left_out: Tuple[int, ...] = ()


@dataclass(frozen=True)
class Restored:
    """What :func:`restore` created: the ids of the queues, semaphore sets and segments;
    ``cleaned`` names what a killed restore had left and this one removed first."""

    queues: Tuple[int, ...]
    semaphore_sets: Tuple[int, ...]
    cleaned: Tuple[str, ...] = ()
    segments: Tuple[int, ...] = ()


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


def _write_limits(limits: Limits) -> bool:
    """Write the limits that differ from the namespace's; whether any did.

    Only those: a limit never changed needs no putting back (and no privilege)."""
    now = _read_limits()
    changed = False
    for name in ("msgmax", "msgmnb", "msgmni"):
        if getattr(now, name) != getattr(limits, name):
            _write_proc(name, str(getattr(limits, name)))
            changed = True
    sem = (limits.semmsl, limits.semmns, limits.semopm, limits.semmni)
    if (now.semmsl, now.semmns, now.semopm, now.semmni) != sem:
        _write_proc("sem", " ".join(map(str, sem)))
        changed = True
    return changed


def _unreadable(kind: str, ident: int, e: PermissionError) -> PermissionError:
    return PermissionError(e.errno, f"snapshot: no read permission on {kind} {ident} "
                           "(reading every object needs root or CAP_IPC_OWNER)")


def _copy_limited(msqid: int, e: OSError) -> OSError:
    """The error to raise for an E2BIG from MSG_COPY on queue ``msqid``: it holds a
    message longer than the current msgmax, and MSG_COPY copies at most msgmax bytes
    (the kernel's copy buffer is capped there) whatever buffer it is given. Any
    other error is returned as it is.

    A copy of every message meets it as EINVAL instead (MSG_NOERROR with a short
    buffer, a kernel quirk), which also means a queue removed meanwhile: only a queue
    that still exists is explained."""
    if e.errno not in (errno.E2BIG, errno.EINVAL):
        return e
    if e.errno == errno.EINVAL:
        try:
            sc.msgctl(msqid, sc.IPC_STAT)
        except OSError:
            return e
    return OSError(errno.E2BIG, f"queue {msqid} holds a message longer than msgmax "
                   f"({msgmax()} bytes now; it was raised when the message was "
                   "sent), and MSG_COPY copies at most msgmax bytes: raise "
                   "/proc/sys/kernel/msgmax in that namespace (root in a namespace you "
                   "own) to the longest message, then read it again")


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


def _read_queue(msqid: int, retries: int,
                copied: Optional[Callable[[int], None]] = None) -> Optional[QueueState]:
    def read() -> QueueState:
        ds = sc.msgctl(msqid, sc.IPC_STAT)
        try:
            messages = tuple(copy_all(msqid, retries, copied))
        except OSError as e:
            better = _copy_limited(msqid, e)
            if better is e:
                raise
            raise better from None
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


def _read_segment(shmid: int) -> Optional[SegmentState]:
    def read() -> SegmentState:
        with sc.shmat(shmid, sc.SHM_RDONLY) as att:
            data = att[:]
            # Read after the copy: the segment is attached, so it cannot go meanwhile.
            ds = sc.shmctl(shmid, sc.IPC_STAT)
        if ds.dest:
            # Removed during the copy: as any object removed while the snapshot is
            # taken, left out (it goes as soon as its users detach).
            raise OSError(errno.EIDRM, "removed")
        return SegmentState(shmid, ds.key, ds.uid, ds.gid, ds.cuid, ds.cgid, ds.mode,
                            ds.segsz, data)

    return _read("segment", shmid, read)


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
        progress: called as ``progress(done, total, what)`` before each object, and
            while a long queue is copied a few times a second with the same ``done``
            and a ``what`` that counts its messages copied (from another thread).
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
        listed = list_queues()
        semset_ids = [i for i, _ in list_semaphore_sets()]
        segments_listed = list_segments()
        total = len(listed) + len(semset_ids) + len(segments_listed)
        counts = _Counts(sum(ds.qnum for _, ds in listed), sum(ds.cbytes for _, ds in listed))
        queues = []
        for n, (msqid, ds) in enumerate(listed):
            copied = None
            if progress:
                about = f"queue {msqid}{counts.next(ds.qnum, ds.cbytes)}"
                progress(n, total, about)
                copied = _copied(progress, n, total, about, ds.qnum)
            q = _read_queue(msqid, retries, copied)
            if q is not None:
                queues.append(q)
        sets = []
        for n, semid in enumerate(semset_ids, len(listed)):
            if progress:
                progress(n, total, f"semaphore set {semid}")
            s = _read_semset(semid)
            if s is not None:
                sets.append(s)
        segments, left_out = _read_segments(segments_listed, len(listed) + len(semset_ids),
                                            total, progress)
        if progress:
            progress(total, total, "done")
    taken = datetime.now(timezone.utc).strftime(_TAKEN_AT_FORMAT)
    return Snapshot(taken, ns, pid, frozen, limits, tuple(queues), tuple(sets), segments,
                    left_out)


def _read_segments(listed: Sequence[Tuple[int, Any]], start: int, total: int,
                   progress: Optional[Progress]) -> Tuple[Tuple[SegmentState, ...],
                                                          Tuple[int, ...]]:
    """The segments carried, and the ids of those left out (marked for removal)."""
    size = sum(ds.segsz for _, ds in listed if not ds.dest)
    done = 0
    segments = []
    left_out = []
    for n, (shmid, ds) in enumerate(listed, start):
        if progress:
            progress(n, total, f"segment {shmid} ({_size(ds.segsz)}): "
                               f"{_size(done)}/{_size(size)} of segments done")
        if ds.dest:
            left_out.append(shmid)
            warnings.warn(SegmentLeftOutWarning(
                f"segment {shmid} is marked for removal (still attached, its key gone): "
                "left out of the snapshot"), stacklevel=3)
            continue
        seg = _read_segment(shmid)
        if seg is not None:
            segments.append(seg)
            done += seg.size
    return tuple(segments), tuple(left_out)



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

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A staging marker is a queue of mode 0000 whose key is one of 16 from "ipcb" in
# ASCII (set at creation, so even one killed before its message was sent is known),
# holding one message of type "ipcbrest" whose text begins with _MARK_HEAD.
_MARK_KEYS = range(0x69706362, 0x69706362 + 16)
_MARK_TYPE = 0x6970636272657374
_MARK_HEAD = "ipcbind-restore 1"
# A namespace holds one object per index, an id's low bits (15 on a kernel booted
# without ipcmni_extend): ids 0 and 32768 cannot both exist.
_INDEX_MASK = (1 << INDEX_BITS[0]) - 1
# The kinds, as /proc/sys/kernel/<kind>_next_id names them.
_KINDS = ("msg", "sem", "shm")


class RestoreInterrupted(KeyboardInterrupt):
    """A restore undone because SIGINT or SIGTERM came (``signum`` says which).

    A KeyboardInterrupt, so that Ctrl-C goes on as it would have, and for that reason
    neither an IpcbindError nor in ipcbind.errors: ``except Exception`` must not
    swallow a Ctrl-C. ``leftovers`` as for :class:`RestoreError`.
    """

    def __init__(self, signum: int, message: str, leftovers: Sequence[str] = ()) -> None:
        super().__init__(str(RestoreError(message, leftovers)))
        self.signum = signum
        self.leftovers = tuple(leftovers)


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Held:
    """SIGINT and SIGTERM held off while a restore works and while it is undone.

    In the main thread their handlers are replaced by one that only records the
    signal; a signal the caller blocks (pthread_sigmask) shows as pending instead.
    :meth:`arrived` tells the first that came, at the points where stopping is safe.
    On leaving, the handlers are put back and a recorded signal goes on to the handler
    it was meant for (the default Ctrl-C handler excepted when the restore raises
    :class:`RestoreInterrupted`, which already is its KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.old: Dict[int, Any] = {}
        self.got: List[int] = []

    def __enter__(self) -> "_Held":
        if threading.current_thread() is threading.main_thread():
            for sig in _HELD_SIGNALS:
                old = signal.getsignal(sig)
                if old not in (signal.SIG_IGN, None):
                    self.old[sig] = old
                    signal.signal(sig, self.record)
        return self

    def record(self, signum: int, frame: Any) -> None:
        self.got.append(signum)

    def arrived(self) -> Optional[int]:
        if self.got:
            return self.got[0]
        pending = signal.sigpending() & set(_HELD_SIGNALS)
        return min(pending) if pending else None

    def __exit__(self, kind: Any, *exc: Any) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)
        for sig in dict.fromkeys(self.got):
            old = self.old[sig]
            if old is signal.default_int_handler and kind is RestoreInterrupted:
                continue
            if callable(old):
                old(sig, None)
            else:
                os.kill(os.getpid(), sig)  # SIG_DFL: what the signal would have done


def _set_next_id(kind: str, ident: int) -> None:
    try:
        _write_proc(f"{kind}_next_id", str(ident))
    except PermissionError as e:
        raise PermissionError(e.errno, f"cannot choose the id through /proc/sys/kernel/"
                              f"{kind}_next_id: that needs CAP_SYS_ADMIN or "
                              "CAP_CHECKPOINT_RESTORE over the namespace (root in the user "
                              "namespace that owns it)") from None


def _throwaway(kind: str) -> None:
    if kind == "msg":
        sc.msgctl(sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600), sc.IPC_RMID)
    elif kind == "sem":
        sc.semctl(sc.semget(sc.IPC_PRIVATE, 1, sc.IPC_CREAT | 0o600), 0, sc.IPC_RMID)
    else:
        sc.shmctl(sc.shmget(sc.IPC_PRIVATE, 1, sc.IPC_CREAT | 0o600), sc.IPC_RMID)


@contextmanager
def _room_for_one(kind: str) -> Iterator[None]:
    """The namespace's limits widened for one more object of ``kind`` (one queue, a
    set of one semaphore, or a segment of one page), then put back."""
    widened: List[Tuple[str, str]] = []
    if kind == "msg":
        widened.append(("msgmni", str(_read_int("msgmni") + 1)))
    elif kind == "sem":
        with open("/proc/sys/kernel/sem") as f:
            semmsl, semmns, semopm, semmni = (int(v) for v in f.read().split())
        widened.append(("sem", f"{max(semmsl, 1)} {semmns + 1} {semopm} {semmni + 1}"))
    else:
        used_pages = sc.shmctl(0, sc.SHM_INFO)[1].shm_tot
        widened += [("shmmni", str(_read_int("shmmni") + 1)),
                    ("shmmax", str(max(_read_int("shmmax"), 1))),
                    ("shmall", str(max(_read_int("shmall"), used_pages + 1)))]
    old: List[Tuple[str, str]] = []
    try:
        for name, wide in widened:
            with open(f"/proc/sys/kernel/{name}") as f:
                old.append((name, f.read().strip()))
            _write_proc(name, wide)
        yield
    finally:
        for name, value in reversed(old):
            _write_proc(name, value)


def _clear_next_id(kind: str) -> None:
    """Disarm next_id after a *get that failed before allocating (EEXIST, ENOSPC,
    EINVAL), so that no later object, anyone's, takes the id.

    The kernel refuses -1 there (EINVAL), but disarms it at every allocation: a
    throwaway private object consumes it. Where a limit leaves no room for it (the
    failed *get's reason, often), the limit is widened for the throwaway alone. If
    even that fails, the id stays armed (the restore's undo names it) and the *get's
    own error is what counts.
    """
    if _read_int(f"{kind}_next_id") == -1:
        return
    try:
        _throwaway(kind)
    except OSError:
        try:
            with _room_for_one(kind):
                _throwaway(kind)
        except OSError:
            pass


def _proc_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), None if gone:
    with the pid, it names one process, as a reused pid gets a new start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _fingerprint(snap: Snapshot) -> str:
    """What a staging marker remembers of a snapshot: its objects' kinds, ids and keys."""
    objs = ([["q", q.id, q.key] for q in snap.queues]
            + [["s", s.id, s.key] for s in snap.semaphore_sets]
            + [["m", m.id, m.key] for m in snap.segments])
    return hashlib.sha256(json.dumps(objs).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Marker:
    msqid: int
    since: int  # the marker's ctime: every object the restore made is as new or newer
    pid: int
    start: str
    fingerprint: str
    limits: Optional[Limits]


def _read_marker(msqid: int, ds: Any) -> Optional[_Marker]:
    """The staging marker queue ``msqid`` (IPC_STAT ``ds``) stands for; None if it is
    none, or one whose maker was killed before it wrote it (it holds nothing)."""
    if ds.qnum != 1 or ds.cbytes > 512:
        return None
    try:
        mtype, data = sc.msgrcv(msqid, None, 0, sc.MSG_COPY | sc.IPC_NOWAIT)
    except OSError:
        return None
    fields = data.decode("ascii", "replace").split()
    if mtype != _MARK_TYPE or " ".join(fields[:2]) != _MARK_HEAD or len(fields) != 6:
        return None
    try:
        limits = None if fields[5] == "-" else Limits(*(int(v) for v in fields[5].split(",")))
        return _Marker(msqid, ds.ctime, int(fields[2]), fields[3], fields[4], limits)
    except (TypeError, ValueError):
        return None


class _Restorer:
    """One restore: what it made, in order, so that :meth:`undo` removes exactly that.

    Every object goes into its list in the statement after the *get that made it,
    with SIGINT and SIGTERM held off (see :class:`_Held`), so nothing falls between.
    A staging marker (a private queue holding one message that names this process
    and the namespace's previous limits) exists from before the first change to
    after the last: a restore killed with SIGKILL leaves it, and the next restore of
    the same objects finds it and cleans up first (:meth:`recover`).
    """

    def __init__(self, snap: Snapshot, set_limits: bool, held: _Held) -> None:
        self.snap = snap
        self.set_limits = set_limits
        self.held = held
        self.fingerprint = _fingerprint(snap)
        self.queues: List[int] = []
        self.sets: List[int] = []
        self.segments: List[int] = []
        self.old_limits: Optional[Limits] = None
        self.marker: Optional[int] = None

    def step(self) -> None:
        """A point where stopping is safe: stop here if a signal came."""
        sig = self.held.arrived()
        if sig is not None:
            raise _Interrupted(sig)

    def recover(self) -> List[str]:
        """Clean up after a restore of the same objects that was killed; what was removed.

        Raises RestoreConflictError if a restore is under way here, or if a killed
        one was restoring other objects.
        """
        cleaned: List[str] = []
        for msqid, ds in list_queues():
            if ds.key not in _MARK_KEYS or ds.mode & 0o777:
                continue
            mark = _read_marker(msqid, ds)
            if mark is None:
                if ds.qnum == 0:  # killed before anything else was changed
                    sc.msgctl(msqid, sc.IPC_RMID)
                    cleaned.append(f"an unwritten staging marker (queue {msqid})")
                continue
            if _proc_start(mark.pid) == mark.start:
                raise RestoreConflictError(f"restore refused: process {mark.pid} is restoring "
                                           f"into this namespace (queue {msqid} is its "
                                           "staging marker)")
            if mark.fingerprint != self.fingerprint:
                raise RestoreConflictError(
                    f"restore refused: a restore by process {mark.pid}, of other objects, was "
                    f"killed here before it finished (queue {msqid} is its staging marker); "
                    "restore that snapshot again to clean up, or remove its objects and "
                    f"queue {msqid} with ipcrm")
            cleaned += self.clean(mark)
        return cleaned

    def clean(self, mark: _Marker) -> List[str]:
        cleaned = []
        ctl: Callable[[int, int], Any]
        for kind, ids, ctl in (
                ("queue", [q.id for q in self.snap.queues], sc.msgctl),
                ("semaphore set", [s.id for s in self.snap.semaphore_sets],
                 lambda i, cmd: sc.semctl(i, 0, cmd)),
                ("segment", [m.id for m in self.snap.segments], sc.shmctl)):
            for ident in ids:
                try:
                    # As new as the marker: made by that restore (or given the id it
                    # left armed); older objects with these ids it would have refused.
                    if ctl(ident, sc.IPC_STAT).ctime >= mark.since:
                        ctl(ident, sc.IPC_RMID)
                        cleaned.append(f"{kind} {ident}")
                except OSError as e:
                    if not gone(e):
                        raise
        if mark.limits is not None and _write_limits(mark.limits):
            cleaned.append("the limits it had changed")
        for kind in _KINDS:
            _clear_next_id(kind)
        sc.msgctl(mark.msqid, sc.IPC_RMID)
        cleaned.append(f"its staging marker (queue {mark.msqid})")
        return cleaned

    def check_conflicts(self) -> None:
        clashes = []
        for kind, have, wanted in (
                ("queue", list_queues(), self.snap.queues),
                ("semaphore set", list_semaphore_sets(), self.snap.semaphore_sets),
                ("segment", list_segments(), self.snap.segments)):
            ids = {i & _INDEX_MASK: i for i, _ in have}
            keys = {ds.key: i for i, ds in have if ds.key}
            for obj in wanted:
                same = ids.get(obj.id & _INDEX_MASK)
                if same == obj.id:
                    clashes.append(f"{kind} id {obj.id} exists")
                elif same is not None:
                    clashes.append(f"{kind} id {obj.id} has the index of {kind} {same}, which "
                                   f"exists (one object per id modulo {_INDEX_MASK + 1})")
                elif obj.key and obj.key in keys:
                    clashes.append(f"{kind} key {obj.key:#010x} exists (id {keys[obj.key]})")
        if clashes:
            more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
            raise RestoreConflictError("restore refused, it would clobber existing objects: "
                                       + "; ".join(clashes[:5]) + more)

    def make_marker(self) -> None:
        taken = {i & _INDEX_MASK for i, _ in list_queues()}
        taken |= {q.id & _INDEX_MASK for q in self.snap.queues}
        # From the top, away from the indices the kernel and the snapshot use most.
        index = next(i for i in range(_INDEX_MASK, -1, -1) if i not in taken)
        used = {ds.key for _, ds in list_queues()} | {q.key for q in self.snap.queues}
        key = next((k for k in _MARK_KEYS if k not in used), None)
        if key is None:
            raise RestoreError(f"restore: no key free for the staging marker (the keys "
                               f"{_MARK_KEYS[0]:#x} to {_MARK_KEYS[-1]:#x} are all taken)")
        lim = self.old_limits
        limits = "-" if lim is None else ",".join(str(getattr(lim, f))
                                                  for f in Limits.__annotations__)
        text = (f"{_MARK_HEAD} {os.getpid()} {_proc_start(os.getpid())} {self.fingerprint} "
                f"{limits}").encode()
        _set_next_id("msg", index)
        try:
            # Mode 0000: only root (CAP_IPC_OWNER), who makes it, can use it.
            self.marker = sc.msgget(key, sc.IPC_CREAT | sc.IPC_EXCL | 0o000)
        finally:
            _clear_next_id("msg")
        try:
            sc.msgsnd(self.marker, _MARK_TYPE, text, sc.IPC_NOWAIT)
        except OSError as e:
            raise OSError(e.errno, f"cannot write the restore's staging marker (queue "
                          f"{self.marker}, {len(text)} bytes): {e.strerror}") from None

    def queue(self, q: QueueState) -> None:
        where = f"queue {q.id}"
        # Room to send every message: a queue can hold more than its qbytes (lowered
        # after the messages came), and the kernel counts each message as a byte too.
        room = max(q.qbytes, sum(len(d) for _, d in q.messages), len(q.messages))
        msgmnb = _read_int("msgmnb")
        # Without CAP_SYS_RESOURCE the kernel refuses every IPC_SET of a queue whose
        # qbytes is above msgmnb, the last one (owner and mode) included: msgmnb
        # stays raised until the queue is complete.
        raise_mnb = self.set_limits and room > msgmnb
        if raise_mnb:
            _write_proc("msgmnb", str(room))
        try:
            self.create_queue(q)
            created = sc.msgctl(q.id, sc.IPC_STAT).qbytes
            if room > created:
                try:
                    sc.msgctl(q.id, sc.IPC_SET, {"qbytes": room})
                except PermissionError:
                    raise PermissionError(
                        errno.EPERM, f"{where}: holding it needs qbytes {room}, above this "
                        f"namespace's msgmnb {created}, and raising it needs "
                        "CAP_SYS_RESOURCE; restore with the snapshot's limits "
                        "(set_limits=True, --limits) into a namespace you own") from None
            if q.messages:
                self.send(q.id, q)
            sc.msgctl(q.id, sc.IPC_SET, {"uid": q.uid, "gid": q.gid, "mode": q.mode,
                                         "qbytes": q.qbytes})
        finally:
            if raise_mnb:
                _write_proc("msgmnb", str(msgmnb))

    @staticmethod
    def create(kind: str, what: str, ident: int, get: Callable[[], int],
               made: List[int]) -> int:
        """``get()`` with ``ident`` armed in ``<kind>_next_id``, into ``made`` at once."""
        _set_next_id(kind, ident)
        try:
            got = get()
        finally:
            _clear_next_id(kind)
        made.append(got)
        if got != ident:
            raise RestoreError(f"{what} {ident}: the kernel gave id {got} instead (another "
                               "process created an object at the same time?)")
        return got

    def create_queue(self, q: QueueState) -> None:
        self.create("msg", "queue", q.id,
                    lambda: sc.msgget(q.key, sc.IPC_CREAT | sc.IPC_EXCL | 0o600), self.queues)

    def send(self, msqid: int, q: QueueState) -> None:
        mtypes = [m for m, _ in q.messages]
        ends = []
        end = 0
        for _, data in q.messages:
            end += len(data)
            ends.append(end)
        text = b"".join(data for _, data in q.messages)
        try:
            sent = _seam.msgsnd_many(msqid, mtypes, text, ends, sc.IPC_NOWAIT, None)
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
        semid = self.create(
            "sem", "semaphore set", s.id,
            lambda: sc.semget(s.key, len(s.values), sc.IPC_CREAT | sc.IPC_EXCL | 0o600),
            self.sets)
        sc.semctl(semid, 0, sc.SETALL, list(s.values))
        sc.semctl(semid, 0, sc.IPC_SET, {"uid": s.uid, "gid": s.gid, "mode": s.mode})

    def segment(self, m: SegmentState) -> None:
        def get() -> int:
            try:
                return sc.shmget(m.key, m.size, sc.IPC_CREAT | sc.IPC_EXCL | 0o600)
            except OSError as e:
                hint = ""
                if e.errno == errno.EINVAL:
                    hint = f" (larger than shmmax {_read_int('shmmax')}?)"
                elif e.errno == errno.ENOSPC:
                    hint = " (no room under shmmni or shmall)"
                raise OSError(e.errno, f"segment {m.id} ({m.size} bytes): {e.strerror}"
                              f"{hint}") from None

        shmid = self.create("shm", "segment", m.id, get, self.segments)
        with sc.shmat(shmid) as att:
            att[:] = m.data
        sc.shmctl(shmid, sc.IPC_SET, {"uid": m.uid, "gid": m.gid, "mode": m.mode})

    def run(self, progress: Optional[Progress]) -> Restored:
        cleaned = self.recover()
        self.check_conflicts()
        snap = self.snap
        if not (snap.queues or snap.semaphore_sets or snap.segments or self.set_limits):
            return Restored((), (), tuple(cleaned))
        self.old_limits = _read_limits()
        self.make_marker()
        if self.set_limits:
            _write_limits(snap.limits)
        total = len(snap.queues) + len(snap.semaphore_sets) + len(snap.segments)
        sizes = [sum(len(d) for _, d in q.messages) for q in snap.queues]
        counts = _Counts(sum(len(q.messages) for q in snap.queues), sum(sizes))
        for n, q in enumerate(snap.queues):
            self.step()
            if progress:
                progress(n, total, f"queue {q.id}{counts.next(len(q.messages), sizes[n])}")
            self.queue(q)
        for n, s in enumerate(snap.semaphore_sets, len(snap.queues)):
            self.step()
            if progress:
                progress(n, total, f"semaphore set {s.id}")
            self.semset(s)
        segment_bytes = sum(m.size for m in snap.segments)
        done = 0
        for n, m in enumerate(snap.segments, len(snap.queues) + len(snap.semaphore_sets)):
            self.step()
            if progress:
                progress(n, total, f"segment {m.id} ({_size(m.size)}): "
                                   f"{_size(done)}/{_size(segment_bytes)} of segments done")
            self.segment(m)
            done += m.size
        self.step()
        self.remove_marker()
        if progress:
            progress(total, total, "done")
        return Restored(tuple(self.queues), tuple(self.sets), tuple(cleaned),
                        tuple(self.segments))

    def made(self) -> int:
        return len(self.queues) + len(self.sets) + len(self.segments)

    def remove_marker(self) -> None:
        if self.marker is not None:
            sc.msgctl(self.marker, sc.IPC_RMID)
            self.marker = None

    def undo(self) -> List[str]:
        """Remove what was created and put the limits back; what could not be undone."""
        left = []
        steps: List[Tuple[str, Callable[[], Any]]] = []
        for shmid in reversed(self.segments):
            steps.append((f"segment {shmid}", partial(sc.shmctl, shmid, sc.IPC_RMID)))
        for semid in reversed(self.sets):
            steps.append((f"semaphore set {semid}", partial(sc.semctl, semid, 0, sc.IPC_RMID)))
        for msqid in reversed(self.queues):
            steps.append((f"queue {msqid}", partial(sc.msgctl, msqid, sc.IPC_RMID)))
        if self.old_limits is not None:
            old = self.old_limits
            steps.append(("the namespace's previous limits", lambda: _write_limits(old)))
        for kind in _KINDS:
            steps.append((f"{kind}_next_id", partial(_clear_next_id, kind)))
        steps.append(("the staging marker", self.remove_marker))
        for what, step in steps:
            try:
                step()
            except OSError as e:
                left.append(f"{what} ({e.strerror})")
        for kind in _KINDS:
            armed = _read_int(f"{kind}_next_id")
            if armed != -1:
                left.append(f"{kind}_next_id (still armed with {armed})")
        self.queues.clear()
        self.sets.clear()
        self.segments.clear()
        return left


def _copied(progress: Progress, n: int, total: int, about: str,
            qnum: int) -> Callable[[int], None]:
    """What reports the messages copied so far of one queue, while its copy runs."""
    def report(done: int) -> None:
        progress(n, total, f"{about}; copying {done}/{qnum}")
    return report


class _Counts:
    """Messages and bytes done so far out of all, for progress (``what`` of a queue)."""

    def __init__(self, messages: int, size: int) -> None:
        self.messages = messages
        self.bytes = size
        self.done_messages = self.done_bytes = 0

    def next(self, messages: int, size: int) -> str:
        """The text for the queue about to be read or made, which holds these."""
        text = (f" ({messages} messages, {_size(size)}): {self.done_messages}/{self.messages}"
                f" messages, {_size(self.done_bytes)}/{_size(self.bytes)} done")
        self.done_messages += messages
        self.done_bytes += size
        return text


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def restore(snap: Snapshot, pid: Optional[int] = None, *, set_limits: bool = False,
            progress: Optional[Progress] = None) -> Restored:
    """Recreate a snapshot's queues, semaphore sets and segments, with the same ids, all
    or nothing.

    Each object gets its id through ``/proc/sys/kernel/msg_next_id`` / ``sem_next_id`` /
    ``shm_next_id``, then its key, its messages in order (or values, or bytes), and
    last its owner, mode and qbytes. Setting the ids needs CAP_SYS_ADMIN (or
    CAP_CHECKPOINT_RESTORE) over the namespace. SIGINT and SIGTERM are held off while
    it works (in the main thread): one that comes makes it stop at the next object
    and undo everything.
    A restore killed outright (SIGKILL) leaves a staging marker, and the next restore
    of the same snapshot into that namespace removes what it left first.

    Args:
        snap: what to recreate.
        pid: recreate in the namespace of this process; None: the calling thread's.
        set_limits: first write the snapshot's limits (msgmax, msgmnb, msgmni, sem)
            into the namespace, and raise msgmnb while creating a queue whose qbytes
            is above it. Without it, a qbytes above msgmnb needs CAP_SYS_RESOURCE.
        progress: called as ``progress(done, total, what)`` before each object.

    Returns:
        :class:`Restored`, the ids created, and what it cleaned up first.

    Raises:
        RestoreConflictError: an object with one of the ids (or of their indices) or
            keys exists, or another restore is under way there; nothing was created.
        RestoreError: a step failed; everything created was removed (and the limits
            put back) before it was raised. Its ``__cause__`` is the failure.
        RestoreInterrupted: SIGINT or SIGTERM came; as for RestoreError, everything
            was removed first. A KeyboardInterrupt.
    """
    if not isinstance(snap, Snapshot):
        raise TypeError(f"restore: needs a Snapshot, not {type(snap).__name__}")
    _need_callable("restore", progress)
    inside = enter_namespace(pid) if pid is not None else nullcontext(None)
    with inside, _Held() as held:
        r = _Restorer(snap, set_limits, held)
        try:
            done = r.run(progress)
            r.step()
            return done
        except RestoreConflictError:
            raise
        except _Interrupted as e:
            made = r.made()
            left = r.undo()
            name = signal.Signals(e.signum).name
            raise RestoreInterrupted(e.signum, f"restore interrupted by {name}; removed the "
                                     f"{made} object(s) it had created", left) from None
        except KeyboardInterrupt:
            r.undo()
            raise
        except Exception as e:
            made = r.made()
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


def _body(snap: Snapshot, blobs: "_Blobs") -> Dict[str, Any]:
    """The file's fields; each segment's data stands in as a token of ``blobs``."""
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
        "segments": [{
            "id": m.id, "key": _key_text(m.key), "uid": m.uid, "gid": m.gid,
            "cuid": m.cuid, "cgid": m.cgid, "mode": _mode_text(m.mode), "size": m.size,
            "data": blobs.add(m.data),
        } for m in snap.segments],
        "segments_left_out": list(snap.segments_left_out),
    }


# Bytes per base64 piece of a segment's data: a multiple of 3, so that the pieces'
# base64 put together is the base64 of the whole.
_B64_PIECE = 3 << 18


class _Blobs:
    """Large byte strings kept out of the JSON text while it is made or read.

    Each stands in the text as a token, a string no file can hold by chance (it
    carries a number drawn for this use alone); :meth:`expand` puts the base64 of
    the bytes back, piece by piece, so that neither a dump nor a load ever holds a
    segment's base64 whole.
    """

    def __init__(self) -> None:
        self.nonce = os.urandom(8).hex()
        self.data: Dict[str, bytes] = {}
        self.pattern = re.compile(r'"\\u0000blob-' + self.nonce + r'-[0-9]+\\u0000"')

    def add(self, data: bytes) -> str:
        token = f"\0blob-{self.nonce}-{len(self.data)}\0"
        self.data[token] = data
        return token

    def take(self, token: str) -> Optional[bytes]:
        """The bytes ``token`` stands for, once (None: not a token of ours)."""
        return self.data.pop(token, None)

    def expand(self, text: str) -> Iterator[str]:
        """``text`` with every token (as JSON writes it) replaced by its data in base64."""
        at = 0
        for found in self.pattern.finditer(text):
            data = self.data.get(json.loads(found.group()))
            if data is None:
                continue
            yield text[at:found.start()] + '"'
            view = memoryview(data)
            for i in range(0, len(view), _B64_PIECE):
                yield base64.b64encode(view[i:i + _B64_PIECE]).decode("ascii")
            yield '"'
            at = found.end()
        yield text[at:]


def _digest(body: Mapping[str, Any], blobs: Optional[_Blobs] = None) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    h = hashlib.sha256()
    for piece in (blobs.expand(canonical) if blobs is not None else (canonical,)):
        h.update(piece.encode())
    return "sha256:" + h.hexdigest()


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
    return "".join(_pieces(snap))


def _pieces(snap: Snapshot) -> Iterator[str]:
    """The text of the snapshot file, in pieces: a segment's data comes in pieces of
    at most a megabyte of base64."""
    blobs = _Blobs()
    body = _body(snap, blobs)
    body["checksum"] = _digest(body, blobs)
    fields = []
    for name, value in body.items():
        if name == "queues":
            queues = []
            for q in value:
                head = _line({k: v for k, v in q.items() if k != "messages"})[:-1]
                messages = _block([_line(m) for m in q["messages"]], "  ")
                queues.append(f'{head}, "messages": {messages}}}')
            text = _block(queues, " ")
        elif name in ("semaphore_sets", "segments"):
            text = _block([_line(s) for s in value], " ")
        else:
            text = _line(value)
        fields.append(f" {json.dumps(name)}: {text}")
    return blobs.expand("{\n" + ",\n".join(fields) + "\n}\n")


def dump(snap: Snapshot, file: Union[str, "os.PathLike[str]", IO[str]]) -> None:
    """Write the snapshot to a path or an open text file.

    A path that leads to one of our descriptors (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``) is written into that descriptor as it is open (appending
    after ``>>``, into a pipe). A path that names a regular file, or nothing yet, is
    replaced atomically (a new file, renamed over it); one that names a device or a
    FIFO is written into, and stays what it is. A symbolic link is followed: its
    target is written (created if the link dangles, as a shell's ``>`` would) and the
    link stays a link. A new file is readable by its owner only (mode 0600: it holds
    the messages, which the queues' permissions may have kept private); a file
    replaced keeps its owner and group (or, where they cannot be kept, is left alone
    and PermissionError raised) and its permission bits, but never setuid, setgid or
    sticky. A directory is refused, naming the path given.
    """
    _need_snapshot("dump", snap)
    if not isinstance(file, (str, os.PathLike)):
        if not hasattr(file, "write"):
            raise TypeError(f"dump: needs a path or an open text file, "
                            f"not {type(file).__name__}")
        for piece in _pieces(snap):
            file.write(piece)
        return
    # Everything but the base64 of the segments is made here, before the file is
    # touched: a snapshot that cannot be written leaves it as it was.
    text = _pieces(snap)
    path = os.fspath(file)
    fd = _own_descriptor(path)
    if fd is not None:
        for piece in text:
            _write_all(fd, piece.encode())
        return
    # The rename must land on the link's target, in the target's directory: renamed
    # over the link itself, the new file would replace the link.
    target = os.path.realpath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None  # nothing there yet, or a dangling link: its target is created
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    # What the path opens decides, not its resolved name: a link in /proc can point
    # to a pipe or a deleted file, whose "target" (pipe:[1234]) is no path. Anything
    # realpath does not reach is written into, as a device is.
    if st is not None and not _same_file(st, target):
        with open(path, "w") as f:
            f.writelines(text)
        return
    replaced = st if st is not None and stat.S_ISREG(st.st_mode) else None
    try:
        # mkstemp: a fresh name (O_EXCL, so nothing planted there is followed), mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".",
                                   suffix=".tmp", dir=os.path.dirname(target))
    except OSError as e:
        # Name the file asked for, not the temporary one beside its target.
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        with open(fd, "w") as f:
            if replaced is not None:
                _keep_owner(fd, replaced, path)
                os.fchmod(fd, stat.S_IMODE(replaced.st_mode) & 0o777)
            f.writelines(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _keep_owner(fd: int, st: os.stat_result, path: str) -> None:
    if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        raise PermissionError(errno.EPERM, f"dump: {path} belongs to uid {st.st_uid}, gid "
                              f"{st.st_gid}, which a replacement made by uid {os.geteuid()} "
                              "cannot keep; left as it is (remove it first, or dump as its "
                              "owner)") from None


def _own_descriptor(path: str) -> Optional[int]:
    """The descriptor of this process that ``path`` leads to through /proc/self/fd or
    /dev/fd (where /dev/stdout leads), None if it leads elsewhere."""
    ours = {f"/proc/{os.getpid()}/fd",
            f"/proc/{os.getpid()}/task/{threading.get_native_id()}/fd"}
    p = os.path.abspath(path)
    for _ in range(40):  # as many links as the kernel follows
        parent, name = os.path.split(p)
        if name.isdigit() and os.path.realpath(parent) in ours:
            return int(name)
        if not os.path.islink(p):
            return None
        p = os.path.abspath(os.path.join(parent, os.readlink(p)))
    return None


def _write_all(fd: int, data: bytes) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and stream.fileno() == fd:
                stream.flush()
        except (OSError, ValueError):
            pass
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _same_file(st: os.stat_result, path: str) -> bool:
    """Whether ``path`` is the regular file ``st`` describes."""
    try:
        other = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


class _Checker:
    """Reads a parsed file, raising SnapshotFormatError that names the bad field.

    ``blobs``: the data strings the reader kept out of the parsed text."""

    def __init__(self, blobs: Optional[_Blobs] = None) -> None:
        self.blobs = blobs

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
            messages.append((mtype, self.data(m["data"], at, size)))
        return QueueState(self.integer(o["id"], f"{where}.id", 0, INT_MAX),
                          self.key(o["key"], f"{where}.key"), *self.owner(o, where),
                          self.mode(o["mode"], f"{where}.mode"),
                          self.integer(o["qbytes"], f"{where}.qbytes", 0, 2 ** 63 - 1),
                          tuple(messages))

    def data(self, v: Any, where: str, size: int) -> bytes:
        kept = self.blobs.take(v) if self.blobs is not None and isinstance(v, str) else None
        if kept is not None:
            # Checked as base64 as written while it was read (_Decoder).
            if len(kept) != size:
                raise self.fail(where, f"size says {size} bytes but data holds {len(kept)}")
            return kept
        encoded = self.text(v, f"{where}.data", r"[A-Za-z0-9+/]*={0,2}")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(f"{where}.data", "is not valid base64") from None
        # The decoder ignores the spare bits of the last character ("AB==" reads as
        # "AA=="): a text that dumps() would not write is refused, not silently changed.
        if base64.b64encode(data).decode() != encoded:
            raise self.fail(f"{where}.data", "is not base64 as written (spare bits set)")
        if len(data) != size:
            raise self.fail(where, f"size says {size} bytes but data holds {len(data)}")
        return data

    def segment(self, v: Any, where: str) -> SegmentState:
        o = self.obj(v, where, ("id", "key", "uid", "gid", "cuid", "cgid", "mode", "size",
                                "data"))
        size = self.integer(o["size"], f"{where}.size", 1, 2 ** 63 - 1)
        return SegmentState(self.integer(o["id"], f"{where}.id", 0, INT_MAX),
                            self.key(o["key"], f"{where}.key"), *self.owner(o, where),
                            self.mode(o["mode"], f"{where}.mode"), size,
                            self.data(o["data"], where, size))

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
        ids: Dict[int, int] = {}
        keys: Set[int] = set()
        for o in objs:
            same = ids.get(o.id & _INDEX_MASK)
            if same == o.id:
                raise _Checker.fail(where, f"id {o.id} appears twice")
            if same is not None:
                raise _Checker.fail(where, f"ids {same} and {o.id} share index "
                                    f"{o.id & _INDEX_MASK} (id modulo {_INDEX_MASK + 1}): no "
                                    "namespace holds both")
            if o.key and o.key in keys:
                raise _Checker.fail(where, f"key {o.key:#010x} appears twice")
            ids[o.id & _INDEX_MASK] = o.id
            keys.add(o.key)

    def snapshot(self, doc: Any) -> Snapshot:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SnapshotFormatError(f"not an ipcbind snapshot file (no \"format\": "
                                      f"\"{FORMAT}\")")
        version = doc.get("version")
        # Exactly the integer: true and 1.0 equal 1 in Python but are not what is written.
        if type(version) is not int or version not in _VERSIONS:
            raise SnapshotFormatError(f"snapshot file version {json.dumps(version)[:20]} is "
                                      "not supported (this ipcbind reads versions "
                                      f"{', '.join(map(str, _VERSIONS))})")
        # Version 1 is version 2 without segments.
        since2 = ("segments", "segments_left_out") if version >= 2 else ()
        o = self.obj(doc, "top level", ("format", "version", "taken_at", "namespace", "frozen",
                                        "limits", "queues", "semaphore_sets", *since2,
                                        "checksum"))
        body = {k: v for k, v in o.items() if k != "checksum"}
        if o["checksum"] != _digest(body, self.blobs):
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
        segments = tuple(self.segment(m, f"segments[{i}]")
                         for i, m in enumerate(self.listof(o.get("segments", []), "segments")))
        self.unique(segments, "segments")
        left_out = tuple(self.integer(x, f"segments_left_out[{i}]", 0, INT_MAX) for i, x in
                         enumerate(self.listof(o.get("segments_left_out", []),
                                               "segments_left_out")))
        return Snapshot(self.moment(o["taken_at"], "taken_at"),
                        self.integer(ns["inode"], "namespace.inode", 0, 2 ** 64 - 1), pid, frozen,
                        self.limits(o["limits"]), queues, sets, segments, left_out)


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
    return _parse(text, None)


def _parse(text: Union[str, bytes], blobs: Optional[_Blobs]) -> Snapshot:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SnapshotFormatError(f"snapshot file: not UTF-8 text ({e.reason} at byte "
                                      f"{e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
        return _Checker(blobs).snapshot(doc)
    except json.JSONDecodeError as e:
        raise SnapshotFormatError(f"snapshot file: not JSON ({e.msg} at line {e.lineno}, "
                                  f"column {e.colno})") from None
    except RecursionError:
        raise SnapshotFormatError("snapshot file: not a snapshot (nested too deeply)") from None
    except ValueError as e:
        # Python's limit on the digits of an int it reads (sys.get_int_max_str_digits).
        if isinstance(e, SnapshotFormatError):
            raise
        raise SnapshotFormatError(f"snapshot file: not a snapshot "
                                  f"({str(e).split(';')[0]})") from None


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object whose every member name is given once: a second one would be read
    in place of the first (or the other way round by another reader)."""
    obj: Dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise SnapshotFormatError(f"snapshot file: {json.dumps(name)[:40]} given twice "
                                      "in one object")
        obj[name] = value
    return obj


DEFAULT_MAX_SIZE = 1 << 30
"""The largest snapshot file :func:`load` reads unless told otherwise (1 GiB)."""
_CHUNK = 1 << 20


def load(file: Union[str, "os.PathLike[str]", IO[Any]], *,
         max_size: int = DEFAULT_MAX_SIZE) -> Snapshot:
    """Read a snapshot from a path or an open file (see :func:`loads`).

    At most ``max_size`` bytes are read: a longer file, or a stream that does not end
    (``/dev/zero``, an endless pipe), is refused; so is one that does not begin as a
    JSON object, as soon as its first bytes are read. A string longer than 64 KiB
    (the data of a segment, or of a long message) is decoded from base64 as it is
    read, a megabyte at a time, so a segment is held once (twice for a moment, as
    it becomes ``bytes``), never as text.

    Raises:
        OSError: the file cannot be read.
        SnapshotFormatError: as for :func:`loads`, or the file is larger than ``max_size``.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > max_size:
                raise _too_large(max_size, st.st_size)
            return _parse(*_read_bounded(f, max_size))
    if not hasattr(file, "read"):
        raise TypeError(f"load: needs a path or an open file, not {type(file).__name__}")
    return _parse(*_read_bounded(file, max_size))


def _too_large(max_size: int, size: Optional[int] = None) -> SnapshotFormatError:
    what = f"{size} bytes, " if size is not None else ""
    return SnapshotFormatError(f"snapshot file: {what}larger than {max_size} bytes (the limit "
                               "of what is read; raise it with max_size, --max-size)")


_BIG_STRING = 1 << 16
_B64_TEXT = re.compile(rb"[A-Za-z0-9+/=]*")


class _Decoder:
    """A base64 string decoded as it comes, refused unless it is base64 as written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.rest = b""
        self.ended = False

    @staticmethod
    def bad(why: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"snapshot file: a string of more than {_BIG_STRING} "
                                   f"characters {why} (only data, in base64, is that long)")

    def feed(self, piece: bytes) -> None:
        if not _B64_TEXT.fullmatch(piece):
            raise self.bad("is not base64")
        text = self.rest + piece
        whole = len(text) // 4 * 4
        if not whole:
            self.rest = text
            return
        if self.ended:
            raise self.bad("goes on after its padding")
        block = text[:whole]
        try:
            data = base64.b64decode(block, validate=True)
        except (binascii.Error, ValueError):
            raise self.bad("is not valid base64") from None
        if base64.b64encode(data) != block:
            raise self.bad("is not base64 as written (padding or spare bits)")
        self.ended = block.endswith(b"=")
        self.out += data
        self.rest = text[whole:]

    def finish(self) -> bytes:
        if self.rest:
            raise self.bad("is not valid base64 (its length is not a multiple of 4)")
        return bytes(self.out)


class _Scanner:
    """Splits a JSON text, fed in chunks, into the text without its long strings (in
    their place a token of ``blobs``) and their decoded bytes."""

    def __init__(self, blobs: _Blobs) -> None:
        self.blobs = blobs
        self.text: List[bytes] = []
        self.inside = False
        self.parts: List[bytes] = []
        self.length = 0
        self.slashes = 0  # backslashes ending the string so far
        self.decoder: Optional[_Decoder] = None
        self.plain = False

    def feed(self, chunk: bytes) -> None:
        # UTF-8 never has the bytes of " or \ inside another character's bytes.
        at = 0
        while at < len(chunk):
            end = chunk.find(b'"', at)
            if not self.inside:
                if end < 0:
                    self.text.append(chunk[at:])
                    return
                self.text.append(chunk[at:end])
                self.inside, self.parts, self.length, self.slashes = True, [], 0, 0
                self.decoder, self.plain = None, False
                at = end + 1
                continue
            piece = chunk[at:] if end < 0 else chunk[at:end]
            if end >= 0:
                run = len(piece) - len(piece.rstrip(b"\\"))
                if run == len(piece):
                    run += self.slashes
                if run % 2:  # an escaped quote: the string goes on
                    self.add(piece + b'"')
                    at = end + 1
                    continue
            self.add(piece)
            if end < 0:
                return
            self.close()
            at = end + 1

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        run = len(piece) - len(piece.rstrip(b"\\"))
        self.slashes = run + self.slashes if run == len(piece) else run
        if self.decoder is not None:
            self.decoder.feed(piece)
            return
        self.parts.append(piece)
        self.length += len(piece)
        if self.length > _BIG_STRING and not self.plain:
            whole = b"".join(self.parts)
            if _B64_TEXT.fullmatch(whole):
                self.decoder = _Decoder()
                self.decoder.feed(whole)
                self.parts = []
            else:
                self.plain = True  # not data: it stays in the text, and fails there

    def close(self) -> None:
        if self.decoder is not None:
            token = self.blobs.add(self.decoder.finish())
            self.text.append(json.dumps(token).encode())
        else:
            self.text.append(b'"' + b"".join(self.parts) + b'"')
        self.inside = False
        self.parts = []


def _read_bounded(f: IO[Any], max_size: int) -> Tuple[Union[str, bytes], Optional[_Blobs]]:
    """At most max_size bytes of f (more: refused), with its long strings decoded
    aside (a file read as bytes only); a stream that is not a regular file is refused
    as soon as it shows it does not begin as a JSON object (a regular file is read
    whole, for the full reason)."""
    try:
        stream = not stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        stream = True
    blobs = _Blobs()
    scanner = _Scanner(blobs)
    texts: List[str] = []
    size = 0
    started = False
    while True:
        chunk = f.read(min(_CHUNK, max_size + 1 - size))
        if not chunk:
            break
        if stream and not started:
            head = chunk.lstrip()[:1]
            if head:
                started = True
                if head not in (b"{", "{"):
                    raise SnapshotFormatError(f"snapshot file: not a snapshot (it begins with "
                                              f"{head!r}, not {{)")
        size += len(chunk)
        if size > max_size:
            raise _too_large(max_size)
        if isinstance(chunk, str):
            texts.append(chunk)
        else:
            scanner.feed(chunk)
    if texts:
        return "".join(texts), None
    return b"".join(scanner.text + scanner.parts), blobs
