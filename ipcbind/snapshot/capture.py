"""Reading a namespace: every queue, semaphore set and segment, and its limits."""

from __future__ import annotations

import errno
import warnings
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

from .. import syscalls as sc
from .._limits import msgmax
from ..errors import SegmentLeftOutWarning, gone
from ..msg import COPY_ATTEMPTS, copy_all
from ..namespace import (enter_namespace, list_queues, list_segments, list_semaphore_sets,
                         namespace_id)
from .freeze import freeze_namespace
from .model import _TAKEN_AT_FORMAT, QueueState, SegmentState, SemaphoreSetState, Snapshot
from .progress import Progress, _copied, _Counts, _need_callable, _size
from .sysctl import _read_limits


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
