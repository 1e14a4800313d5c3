"""The syscall-shaped layer: the System V IPC calls, one Python function each.

Arguments that fit their C type go to the kernel unchanged, so the caller sees the
kernel's own errno; arguments that cannot be represented raise ``TypeError``,
``ValueError`` or ``OverflowError`` before any system call. A failing call raises
``OSError`` (see :mod:`ipcbind.errors`). Blocking calls release the GIL and, per
PEP 475, are retried after EINTR once the program's signal handlers have run.

Each function checks its arguments, calls the seam (``ipcbind._seam``, the one
module that touches the compiled shim) and gives the result its public shape.
"""

from __future__ import annotations

import io
import mmap
import os
import sys
from dataclasses import dataclass
from errno import EINVAL
from typing import Any, Iterable, Mapping, Optional, Set, Tuple, Union

from . import _seam
from ._args import check_int as _check_int, index as _index
# The C constants under their C names, each defined once, in the seam.
from ._seam import *  # noqa: F401,F403
from .errors import syscall_error

__all__ = [
    "MsqidDs", "SemidDs", "ShmidDs", "MsgInfo", "SemInfo", "ShmInfo", "ShmUsage", "Attachment",
    "ftok", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semctl",
    "shmget", "shmat", "shmdt", "shmctl",
]
__all__ += _seam.__all__

Buffer = Union[bytes, bytearray, memoryview, Any]
"""Any object with the buffer protocol (bytes, bytearray, memoryview, array, mmap...)."""


# ---- the kernel's structures -----------------------------------------------------

class _Struct:
    """What the structures share: pickling and copying by their fields (a frozen
    dataclass with ``__slots__`` cannot be rebuilt by setting its attributes)."""

    __slots__ = ()

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        fields = getattr(self, "__dataclass_fields__")
        return type(self), tuple(getattr(self, name) for name in fields)


@dataclass(frozen=True)
class _IpcPerm(_Struct):
    """The ``struct ipc_perm`` every object's structure begins with: ``key`` unsigned
    (0..2**32-1), as ``ipcs`` prints it; owner and creator; ``mode`` the permission bits."""

    __slots__ = ("key", "uid", "gid", "cuid", "cgid", "mode")
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int


@dataclass(frozen=True)
class MsqidDs(_IpcPerm):
    """A message queue's ``struct msqid_ds`` (what IPC_STAT returns). ``key`` is
    unsigned (0..2**32-1), as ``ipcs`` prints it."""

    __slots__ = ("qnum", "cbytes", "qbytes", "lspid", "lrpid", "stime", "rtime", "ctime")
    qnum: int
    cbytes: int
    qbytes: int
    lspid: int
    lrpid: int
    stime: int
    rtime: int
    ctime: int


@dataclass(frozen=True)
class SemidDs(_IpcPerm):
    """A semaphore set's ``struct semid_ds`` (what IPC_STAT returns). ``key`` is
    unsigned (0..2**32-1), as ``ipcs`` prints it."""

    __slots__ = ("nsems", "otime", "ctime")
    nsems: int
    otime: int
    ctime: int


@dataclass(frozen=True)
class MsgInfo(_Struct):
    """``struct msginfo``. With IPC_INFO the fields are the limits; with MSG_INFO,
    ``msgpool`` counts queues in use, ``msgmap`` messages and ``msgtql`` bytes queued."""

    __slots__ = ("msgpool", "msgmap", "msgmax", "msgmnb", "msgmni", "msgssz", "msgtql", "msgseg")
    msgpool: int
    msgmap: int
    msgmax: int
    msgmnb: int
    msgmni: int
    msgssz: int
    msgtql: int
    msgseg: int


@dataclass(frozen=True)
class SemInfo(_Struct):
    """``struct seminfo``. With IPC_INFO the fields are the limits; with SEM_INFO,
    ``semusz`` counts sets in use and ``semaem`` semaphores in use."""

    __slots__ = ("semmap", "semmni", "semmns", "semmnu", "semmsl", "semopm", "semume",
                 "semusz", "semvmx", "semaem")
    semmap: int
    semmni: int
    semmns: int
    semmnu: int
    semmsl: int
    semopm: int
    semume: int
    semusz: int
    semvmx: int
    semaem: int


@dataclass(frozen=True)
class ShmidDs(_IpcPerm):
    """A shared memory segment's ``struct shmid_ds`` (what IPC_STAT returns).

    ``mode`` holds the permission bits only; the kernel's SHM_DEST and SHM_LOCKED
    bits of it are ``dest`` (marked for removal: it goes once the last process
    detaches, and its key reads IPC_PRIVATE meanwhile) and ``locked`` (SHM_LOCK).
    """

    __slots__ = ("segsz", "nattch", "cpid", "lpid", "atime", "dtime", "ctime", "dest", "locked")
    segsz: int
    nattch: int
    cpid: int
    lpid: int
    atime: int
    dtime: int
    ctime: int
    dest: bool
    locked: bool


@dataclass(frozen=True)
class ShmInfo(_Struct):
    """``struct shminfo``, the limits IPC_INFO gives: largest segment (``shmmax``, bytes),
    smallest (``shmmin``), most segments (``shmmni``), most attached per process
    (``shmseg``, not enforced by Linux), and all segments' pages together (``shmall``)."""

    __slots__ = ("shmmax", "shmmin", "shmmni", "shmseg", "shmall")
    shmmax: int
    shmmin: int
    shmmni: int
    shmseg: int
    shmall: int


@dataclass(frozen=True)
class ShmUsage(_Struct):
    """``struct shm_info``, what SHM_INFO gives: segments in use (``used_ids``), their
    pages (``shm_tot``), pages resident (``shm_rss``) and swapped (``shm_swp``)."""

    __slots__ = ("used_ids", "shm_tot", "shm_rss", "shm_swp", "swap_attempts", "swap_successes")
    used_ids: int
    shm_tot: int
    shm_rss: int
    shm_swp: int
    swap_attempts: int
    swap_successes: int


def _ctl_result(kind: str, call: str, ident: int, cmd: int, cls: Any, stat_cmds: Tuple[int, ...],
                none_cmds: Tuple[int, ...], semnum: int = 0) -> Any:
    """What a *ctl call with a structure returns: ``cls`` of it for IPC_STAT, ``(id,
    cls)`` for the ``stat_cmds`` (by index), None for the ``none_cmds``, else the
    kernel's result; a failure raises."""
    r, ds = _seam.ctl(kind, call, ident, cmd, cls, semnum)
    if cmd == IPC_STAT:
        return ds
    if cmd in stat_cmds:
        return r, ds
    if cmd in none_cmds:
        return None
    return r


def _settable(call: str, arg: Any, allowed: Set[str]) -> Mapping[str, int]:
    if not isinstance(arg, Mapping):
        raise TypeError(f"{call}: IPC_SET needs a mapping with any of "
                        f"{', '.join(sorted(allowed))}, not {type(arg).__name__}")
    unknown = set(arg) - allowed
    if unknown:
        raise ValueError(f"{call}: IPC_SET cannot change {', '.join(sorted(map(str, unknown)))}"
                         f" (only {', '.join(sorted(allowed))})")
    return arg


_PERM_SET_FIELDS = {"uid", "gid", "mode"}
_MSG_SET_FIELDS = _PERM_SET_FIELDS | {"qbytes"}


# ---- message queues -----------------------------------------------------------------

_PROJ_IDS = range(1, 256)


def ftok(path: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"], proj_id: int) -> int:
    """ftok(3): a System V key from an existing file and a project id, 1..255.

    ftok uses only the low 8 bits of ``proj_id`` (256 would give the key of 0) and
    POSIX leaves 0 unspecified, so anything outside 1..255 is refused with
    ``ValueError`` rather than silently folded onto another key.
    """
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("ftok: path contains a NUL byte")
    proj = _index("ftok", "proj_id", proj_id)
    _check_int("ftok", "proj_id", proj, "int")
    if proj not in _PROJ_IDS:
        raise ValueError(f"ftok: proj_id must be in 1..255 (ftok keeps only its low 8 bits, "
                         f"and 0 is unspecified), got {proj}")
    return _seam.ftok(raw, proj)


def msgget(key: int, flags: int = 0) -> int:
    """msgget(2): the identifier of the queue for ``key`` (IPC_CREAT to create it).

    ``key`` may also be given unsigned (0..2**32-1), as ``ipcs`` prints it.
    """
    return _seam.get("msgget", key, flags)


def msgsnd(msqid: int, mtype: int, data: Buffer, flags: int = 0, *,
           timeout: Optional[float] = None) -> None:
    """msgsnd(2): queue ``data`` (any bytes-like object) as a message of type ``mtype``.

    With IPC_NOWAIT a full queue raises ``BlockingIOError`` (EAGAIN). ``timeout``
    (seconds) bounds the wait for room on a full queue and raises ``TimeoutError``.
    """
    if type(data) is not bytes:
        data = _seam.as_buffer("msgsnd", data)
    _seam.msgsnd(msqid, mtype, data, flags, timeout)


def msgrcv(msqid: int, maxsize: Optional[int] = None, msgtyp: int = 0, flags: int = 0, *,
           timeout: Optional[float] = None) -> Tuple[int, bytes]:
    """msgrcv(2): take a message from the queue; returns ``(mtype, data)``.

    ``maxsize=None`` makes room for any message, so E2BIG never happens; an int
    has the kernel's meaning (E2BIG, or truncation with MSG_NOERROR). ``msgtyp``
    0 takes the first message, > 0 the first of that type (with MSG_EXCEPT: the
    first of another type), < 0 the first of the lowest type <= ``-msgtyp``. With
    MSG_COPY (and IPC_NOWAIT) ``msgtyp`` is a 0-based index and the message stays.
    ``timeout`` (seconds) bounds the wait and raises ``TimeoutError``.
    """
    size = _seam.ANY_SIZE if maxsize is None else _seam.receive_size("msgrcv", maxsize)
    got: Tuple[int, bytes] = _seam.msgrcv(msqid, size, msgtyp, flags, timeout, tuple)
    return got


def msgctl(msqid: int, cmd: int, arg: Optional[Mapping[str, int]] = None) -> Any:
    """msgctl(2).

    IPC_STAT -> :class:`MsqidDs`; IPC_SET (``arg``: a mapping with any of uid, gid,
    mode, qbytes) -> None; IPC_RMID -> None; MSG_STAT / MSG_STAT_ANY (``msqid`` is an
    index) -> ``(id, MsqidDs)``; IPC_INFO / MSG_INFO -> ``(highest_index, MsgInfo)``.
    Any other ``cmd`` goes to the kernel as it is and its result is returned.
    """
    call = f"msgctl(msqid={msqid})"
    _check_int("msgctl", "msqid", msqid, "int")
    _check_int("msgctl", "cmd", cmd, "int")
    if cmd == IPC_SET:
        return _seam.ctl_set("msg", call, msqid, _settable(call, arg, _MSG_SET_FIELDS))
    return _ctl_result("msg", call, msqid, cmd, MsgInfo if cmd in (IPC_INFO, MSG_INFO) else MsqidDs,
                       (MSG_STAT, MSG_STAT_ANY, IPC_INFO, MSG_INFO), (IPC_RMID,))


# ---- semaphores -------------------------------------------------------------------

def semget(key: int, nsems: int, flags: int = 0) -> int:
    """semget(2): the identifier of the semaphore set for ``key`` (IPC_CREAT to create it)."""
    return _seam.get("semget", key, flags, ("nsems", nsems, "int"))


SemOp = Union[Tuple[int, int], Tuple[int, int, int]]


def semop(semid: int, ops: Iterable[SemOp], timeout: Optional[float] = None) -> None:
    """semop(2) / semtimedop(2): apply all ``ops`` atomically, or none of them.

    ``ops``: (sem_num, sem_op) or (sem_num, sem_op, sem_flg) tuples; sem_flg may hold
    IPC_NOWAIT and SEM_UNDO. ``timeout`` in seconds uses semtimedop (0: do not wait);
    when it expires the kernel's EAGAIN is raised (``BlockingIOError``).
    """
    _seam.semop(semid, ops, timeout)


_SEM_INT_CMDS = frozenset((GETVAL, GETPID, GETNCNT, GETZCNT))


def _nsems(call: str, semid: int) -> int:
    return _seam.current("sem", call, semid, "sem_nsems")


def semctl(semid: int, semnum: int, cmd: int, arg: Any = None) -> Any:
    """semctl(2).

    GETVAL, GETPID, GETNCNT, GETZCNT -> int; SETVAL (``arg`` int) -> None;
    GETALL -> list of int; SETALL (``arg`` one int per semaphore) -> None;
    IPC_STAT -> :class:`SemidDs`; IPC_SET (``arg``: mapping with any of uid, gid, mode)
    -> None; IPC_RMID -> None; SEM_STAT / SEM_STAT_ANY (``semid`` is an index) ->
    ``(id, SemidDs)``; IPC_INFO / SEM_INFO -> ``(highest_index, SemInfo)``.
    Any other ``cmd`` goes to the kernel as it is and its result is returned.
    """
    call = f"semctl(semid={semid}, semnum={semnum})"
    _check_int("semctl", "semid", semid, "int")
    _check_int("semctl", "semnum", semnum, "int")
    _check_int("semctl", "cmd", cmd, "int")
    if cmd in _SEM_INT_CMDS or cmd in (SETVAL, IPC_RMID):
        val = 0
        if cmd == SETVAL:
            _check_int("semctl", "SETVAL value", arg, "int")
            val = arg
        r = _seam.semctl_val(call, semid, semnum, cmd, val)
        return r if cmd in _SEM_INT_CMDS else None
    if cmd == GETALL:
        return _seam.semctl_getall(call, semid, _nsems(call, semid))
    if cmd == SETALL:
        try:
            wanted = list(arg)
        except TypeError:
            raise TypeError(f"{call}: SETALL needs a sequence of int, "
                            f"not {type(arg).__name__}") from None
        for i, v in enumerate(wanted):
            _check_int("semctl", f"SETALL value [{i}]", v, "unsigned short")
        n = _nsems(call, semid)
        if len(wanted) != n:
            raise ValueError(f"{call}: SETALL needs {n} values (one per semaphore), "
                             f"got {len(wanted)}")
        return _seam.semctl_setall(call, semid, wanted)
    if cmd == IPC_SET:
        return _seam.ctl_set("sem", call, semid, _settable(call, arg, _PERM_SET_FIELDS))
    return _ctl_result("sem", call, semid, cmd, SemInfo if cmd in (IPC_INFO, SEM_INFO) else SemidDs,
                       (SEM_STAT, SEM_STAT_ANY, IPC_INFO, SEM_INFO), (), semnum)


# ---- shared memory ------------------------------------------------------------------

def shmget(key: int, size: int, flags: int = 0) -> int:
    """shmget(2): the identifier of the segment for ``key`` (IPC_CREAT to create one of
    ``size`` bytes; opening an existing one needs ``size`` no larger than it, 0 fits)."""
    return _seam.get("shmget", key, flags, ("size", size, "size_t"))


def _plain(arg: Any) -> Any:
    """An argument of an mmap method as mmap would convert it, converted first."""
    if type(arg) is slice:
        return slice(*(None if x is None else _index("attachment", "index", x)
                       for x in (arg.start, arg.stop, arg.step)))
    if isinstance(arg, int) or (not isinstance(arg, (bytes, bytearray, memoryview, str))
                                and hasattr(type(arg), "__index__")):
        return _index("attachment", "index", arg)
    return arg


def _converting_first(name: str) -> Any:
    """mmap's method ``name``, given arguments that were converted to int first.

    Before Python 3.11, mmap's methods check that the map is open and only then
    convert their arguments: an ``__index__`` that detached in between made them
    read or write through the pointer of a closed map. Converted first, no code of
    the caller runs inside them."""
    method = getattr(mmap.mmap, name)

    def converted(self: Attachment, *args: Any) -> Any:
        return method(self, *map(_plain, args))

    converted.__name__ = name
    converted.__doc__ = method.__doc__
    return converted


# madvise options that would take the mapping from under the attachment: without it
# in a forked child, poisoned, or a guard region (Linux 6.13), any access kills the
# process. The values are the kernel's, for a Python whose mmap does not name them.
_MADV_REFUSED = frozenset(getattr(mmap, n, v) for n, v in (
    ("MADV_DONTFORK", 10), ("MADV_HWPOISON", 100), ("MADV_SOFT_OFFLINE", 101),
    ("MADV_GUARD_INSTALL", 102)))
# Only the options Python's mmap names are passed on: a kernel's newer ones may be
# as fatal as MADV_GUARD_INSTALL, which no mmap module knew of when it came.
_MADV_ALLOWED = frozenset(getattr(mmap, n) for n in dir(mmap)
                          if n.startswith("MADV_")) - _MADV_REFUSED


class Attachment(mmap.mmap):
    """A shared memory segment attached to this process: what :func:`shmat` returns.

    It is a :class:`mmap.mmap` of the segment, so ``memoryview(att)`` is the whole
    segment (read-only if attached with SHM_RDONLY), ``len(att)`` its size, and
    slicing, ``find`` and the file-like methods work on it. ``close()``, ``shmdt(att)``
    or leaving a ``with`` block detaches it. Memory safety rests on the mmap's own
    count of exported buffers:

    - detaching while a ``memoryview`` (or any buffer) of it is alive raises
      ``BufferError`` and leaves it attached: release the views first;
    - after detaching, every use raises ``ValueError``; the address is never
      handed to the kernel again, since it may belong to something else by then;
    - an attachment that is garbage-collected is detached (a live view keeps it);
    - a forked child inherits the mapping (the kernel counts it in ``nattch``):
      the attachment works there, and detaching it in the child leaves the
      parent's attached;
    - a segment removed (IPC_RMID) while attached stays readable and writable
      until the last detach: the kernel keeps it.

    Not resizable; ``madvise`` refuses MADV_DONTFORK, the poisoning and guard options
    and any the mmap module does not name.
    """

    __slots__ = ("_shmid", "_readonly")
    _shmid: int
    _readonly: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Attachment:
        raise TypeError("attachments are made by shmat() or SharedMemory.attach()")

    @property
    def shmid(self) -> int:
        """The identifier of the attached segment."""
        return self._shmid

    @property
    def readonly(self) -> bool:
        """Whether it was attached with SHM_RDONLY."""
        return self._readonly

    def close(self) -> None:
        """Detach (as shmdt); BufferError while views of it are alive. Again: nothing."""
        try:
            super().close()
        except BufferError:
            raise BufferError(
                f"shmdt(shmid={self._shmid}): the attachment has views in use (memoryview "
                "or other buffers); release them before detaching") from None

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Below protocol 2, pickle's fallback would call mmap(att) and complain that an
        # attachment is not an integer.
        raise TypeError(f"shmid {self._shmid}: an attachment cannot be pickled or copied, "
                        "it is this process's mapping; pass the shmid (or the SharedMemory)")

    def size(self) -> int:
        """The segment's size in bytes (mmap's own would fstat a file, and an attachment
        has none)."""
        return len(self)

    def resize(self, newsize: int) -> None:
        """Refused: a segment's size is fixed when it is created."""
        raise io.UnsupportedOperation(f"shmid {self._shmid}: a shared memory segment "
                                      "cannot be resized")

    def madvise(self, option: int, *args: int) -> None:
        """mmap.madvise, except the options that would unmap, poison or guard the
        segment, and those that mmap does not name."""
        option = _index("madvise", "option", option)
        if option in _MADV_REFUSED:
            raise ValueError(f"madvise: option {option} would take the segment from under "
                             "the attachment; refused")
        if option not in _MADV_ALLOWED:
            raise ValueError(f"madvise: option {option} is not one of the mmap module's "
                             "MADV_ constants; refused, as it might take the segment from "
                             "under the attachment")
        super().madvise(option, *map(_plain, args))

    # Even in 3.13, flush converts its arguments after its check: then it syncs the
    # addresses its offset names, and fails with whatever msync says of them.
    flush = _converting_first("flush")
    # CPython fixed the others in 3.12 and within 3.11's patch releases (gh-103987):
    # 3.11.2 still gave SIGSEGV here, so every 3.11 converts first.
    if sys.version_info < (3, 12):
        __getitem__ = _converting_first("__getitem__")
        __setitem__ = _converting_first("__setitem__")
        read = _converting_first("read")
        find = _converting_first("find")
        rfind = _converting_first("rfind")
        seek = _converting_first("seek")
        move = _converting_first("move")
        write_byte = _converting_first("write_byte")

    def __repr__(self) -> str:
        state = "detached" if self.closed else f"{len(self)} bytes"
        return (f"<Attachment shmid={self._shmid} {state}"
                f"{' readonly' if self._readonly else ''}>")


def shmat(shmid: int, flags: int = 0) -> Attachment:
    """shmat(2) at an address of the kernel's choosing: the segment as an :class:`Attachment`.

    ``flags`` go to the kernel as they are (as ``shmat(shmid, NULL, flags)`` in C):
    SHM_RDONLY attaches read-only, SHM_EXEC executable, SHM_RND is without effect
    and SHM_REMAP needs an address, so the kernel refuses it (EINVAL).
    """
    att: Attachment = _seam.shmat(f"shmat(shmid={shmid})", shmid, flags, Attachment)
    return att


def shmdt(attachment: Attachment) -> None:
    """shmdt(2): detach. ``BufferError`` while views of it are alive; an attachment
    detached already raises EINVAL, as the kernel does for an address not attached."""
    if not isinstance(attachment, Attachment):
        raise TypeError(f"shmdt: needs an attachment from shmat(), not "
                        f"{type(attachment).__name__}")
    if attachment.closed:
        raise syscall_error(EINVAL, f"shmdt(shmid={attachment.shmid}): already detached")
    attachment.close()


def shmctl(shmid: int, cmd: int, arg: Optional[Mapping[str, int]] = None) -> Any:
    """shmctl(2).

    IPC_STAT -> :class:`ShmidDs`; IPC_SET (``arg``: a mapping with any of uid, gid, mode)
    -> None; IPC_RMID, SHM_LOCK, SHM_UNLOCK -> None; SHM_STAT / SHM_STAT_ANY (``shmid``
    is an index) -> ``(id, ShmidDs)``; IPC_INFO -> ``(highest_index, ShmInfo)``;
    SHM_INFO -> ``(highest_index, ShmUsage)``. Any other ``cmd`` goes to the kernel
    as it is and its result is returned.
    """
    call = f"shmctl(shmid={shmid})"
    _check_int("shmctl", "shmid", shmid, "int")
    _check_int("shmctl", "cmd", cmd, "int")
    if cmd == IPC_SET:
        return _seam.ctl_set("shm", call, shmid, _settable(call, arg, _PERM_SET_FIELDS))
    cls = ShmInfo if cmd == IPC_INFO else ShmUsage if cmd == SHM_INFO else ShmidDs
    return _ctl_result("shm", call, shmid, cmd, cls, (SHM_STAT, SHM_STAT_ANY, IPC_INFO, SHM_INFO),
                       (IPC_RMID, SHM_LOCK, SHM_UNLOCK))
