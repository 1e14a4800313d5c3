"""Recreating a snapshot in a namespace, all or nothing: the ids through next_id, the
staging marker that lets a killed restore be cleaned up, and SIGINT/SIGTERM held off."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .. import _seam
from .. import syscalls as sc
from .._limits import msgmax
from ..errors import RestoreConflictError, RestoreError, gone
from ..namespace import enter_namespace, list_queues, list_segments, list_semaphore_sets
from .model import (_INDEX_MASK, Limits, QueueState, Restored, SegmentState,
                    SemaphoreSetState, Snapshot)
from .progress import Progress, _Counts, _need_callable, _size
from .sysctl import _read_int, _read_limits, _write_limits, _write_proc

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A staging marker is a queue of mode 0000 whose key is one of 16 from "ipcb" in
# ASCII (set at creation, so even one killed before its message was sent is known),
# holding one message of type "ipcbrest" whose text begins with _MARK_HEAD.
_MARK_KEYS = range(0x69706362, 0x69706362 + 16)
_MARK_TYPE = 0x6970636272657374
_MARK_HEAD = "ipcbind-restore 1"
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
