"""The syscall-shaped layer: the System V IPC calls, one Python function each.

Arguments that fit their C type go to the kernel unchanged, so the caller sees the
kernel's own errno; arguments that cannot be represented raise ``TypeError``,
``ValueError`` or ``OverflowError`` before any system call. A failing call raises
``OSError`` (see :mod:`ipcbind.errors`). Blocking calls release the GIL and, per
PEP 475, are retried after EINTR once the program's signal handlers have run.

This is the only module that touches the compiled shim (``ipcbind._ffi``).
"""

from __future__ import annotations

import importlib
import io
import math
import mmap
import os
import sys
import time
from dataclasses import dataclass
from errno import EACCES, EAGAIN, EINTR, EINVAL, ETIMEDOUT
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple,
                    Union)

try:
    from ._ffi import ffi, lib
except ModuleNotFoundError as e:  # the unbuilt source tree, e.g. python -m from the checkout
    if e.name != f"{__package__}._ffi":
        raise
    raise ImportError(
        f"ipcbind's compiled shim is missing from {__file__.rsplit('/', 1)[0]}: that is the "
        "source tree, not a built copy. Run from another directory to use the installed "
        "ipcbind, or build it in place with 'pip install -e .'") from e
from ._limits import C_RANGES, INT_MAX, KEY_MASK, unsigned_key
from .errors import syscall_error, timeout_error

__all__ = [
    "IPC_PRIVATE", "IPC_CREAT", "IPC_EXCL", "IPC_NOWAIT", "IPC_RMID", "IPC_SET", "IPC_STAT",
    "IPC_INFO", "MSG_NOERROR", "MSG_EXCEPT", "MSG_COPY", "MSG_STAT", "MSG_INFO", "MSG_STAT_ANY",
    "SEM_UNDO", "GETPID", "GETVAL", "GETALL", "GETNCNT", "GETZCNT", "SETVAL", "SETALL",
    "SEM_STAT", "SEM_INFO", "SEM_STAT_ANY",
    "SHM_RDONLY", "SHM_RND", "SHM_EXEC", "SHM_REMAP", "SHM_LOCK", "SHM_UNLOCK", "SHM_STAT",
    "SHM_INFO", "SHM_STAT_ANY", "SHM_HUGETLB", "SHM_NORESERVE",
    "MsqidDs", "SemidDs", "ShmidDs", "MsgInfo", "SemInfo", "ShmInfo", "ShmUsage", "Attachment",
    "ftok", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semctl",
    "shmget", "shmat", "shmdt", "shmctl",
]

IPC_PRIVATE: int = lib.IPC_PRIVATE
IPC_CREAT: int = lib.IPC_CREAT
IPC_EXCL: int = lib.IPC_EXCL
IPC_NOWAIT: int = lib.IPC_NOWAIT
IPC_RMID: int = lib.IPC_RMID
IPC_SET: int = lib.IPC_SET
IPC_STAT: int = lib.IPC_STAT
IPC_INFO: int = lib.IPC_INFO
MSG_NOERROR: int = lib.MSG_NOERROR
MSG_EXCEPT: int = lib.MSG_EXCEPT
MSG_COPY: int = lib.MSG_COPY
MSG_STAT: int = lib.MSG_STAT
MSG_INFO: int = lib.MSG_INFO
MSG_STAT_ANY: int = lib.MSG_STAT_ANY
SEM_UNDO: int = lib.SEM_UNDO
GETPID: int = lib.GETPID
GETVAL: int = lib.GETVAL
GETALL: int = lib.GETALL
GETNCNT: int = lib.GETNCNT
GETZCNT: int = lib.GETZCNT
SETVAL: int = lib.SETVAL
SETALL: int = lib.SETALL
SEM_STAT: int = lib.SEM_STAT
SEM_INFO: int = lib.SEM_INFO
SEM_STAT_ANY: int = lib.SEM_STAT_ANY
SHM_RDONLY: int = lib.SHM_RDONLY
SHM_RND: int = lib.SHM_RND
SHM_EXEC: int = lib.SHM_EXEC
SHM_REMAP: int = lib.SHM_REMAP
SHM_LOCK: int = lib.SHM_LOCK
SHM_UNLOCK: int = lib.SHM_UNLOCK
SHM_STAT: int = lib.SHM_STAT
SHM_INFO: int = lib.SHM_INFO
SHM_STAT_ANY: int = lib.SHM_STAT_ANY
SHM_HUGETLB: int = lib.SHM_HUGETLB
SHM_NORESERVE: int = lib.SHM_NORESERVE
CLONE_NEWIPC: int = lib.CLONE_NEWIPC

_ANY_SIZE: int = lib.IPCB_ANY_SIZE
_NO_TIMEOUT = -1

Buffer = Union[bytes, bytearray, memoryview, Any]
"""Any object with the buffer protocol (bytes, bytearray, memoryview, array, mmap...)."""


# ---- the kernel's structures -----------------------------------------------------

@dataclass(frozen=True)
class MsqidDs:
    """A message queue's ``struct msqid_ds`` (what IPC_STAT returns). ``key`` is
    unsigned (0..2**32-1), as ``ipcs`` prints it."""

    __slots__ = ("key", "uid", "gid", "cuid", "cgid", "mode", "qnum", "cbytes", "qbytes",
                 "lspid", "lrpid", "stime", "rtime", "ctime")
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    qnum: int
    cbytes: int
    qbytes: int
    lspid: int
    lrpid: int
    stime: int
    rtime: int
    ctime: int


@dataclass(frozen=True)
class SemidDs:
    """A semaphore set's ``struct semid_ds`` (what IPC_STAT returns). ``key`` is
    unsigned (0..2**32-1), as ``ipcs`` prints it."""

    __slots__ = ("key", "uid", "gid", "cuid", "cgid", "mode", "nsems", "otime", "ctime")
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    nsems: int
    otime: int
    ctime: int


@dataclass(frozen=True)
class MsgInfo:
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
class SemInfo:
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
class ShmidDs:
    """A shared memory segment's ``struct shmid_ds`` (what IPC_STAT returns).

    ``mode`` holds the permission bits only; the kernel's SHM_DEST and SHM_LOCKED
    bits of it are ``dest`` (marked for removal: it goes once the last process
    detaches, and its key reads IPC_PRIVATE meanwhile) and ``locked`` (SHM_LOCK).
    """

    __slots__ = ("key", "uid", "gid", "cuid", "cgid", "mode", "segsz", "nattch", "cpid", "lpid",
                 "atime", "dtime", "ctime", "dest", "locked")
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
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
class ShmInfo:
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
class ShmUsage:
    """``struct shm_info``, what SHM_INFO gives: segments in use (``used_ids``), their
    pages (``shm_tot``), pages resident (``shm_rss``) and swapped (``shm_swp``)."""

    __slots__ = ("used_ids", "shm_tot", "shm_rss", "shm_swp", "swap_attempts", "swap_successes")
    used_ids: int
    shm_tot: int
    shm_rss: int
    shm_swp: int
    swap_attempts: int
    swap_successes: int


_PERM_BITS = 0o777
_SHM_DEST: int = lib.SHM_DEST
_SHM_LOCKED: int = lib.SHM_LOCKED


def _msqid_ds(ds: Any) -> MsqidDs:
    p = ds.msg_perm
    return MsqidDs(unsigned_key(p.__key), p.uid, p.gid, p.cuid, p.cgid, p.mode & _PERM_BITS, ds.msg_qnum,
                   ds.__msg_cbytes, ds.msg_qbytes, ds.msg_lspid, ds.msg_lrpid, ds.msg_stime,
                   ds.msg_rtime, ds.msg_ctime)


def _semid_ds(ds: Any) -> SemidDs:
    p = ds.sem_perm
    return SemidDs(unsigned_key(p.__key), p.uid, p.gid, p.cuid, p.cgid, p.mode & _PERM_BITS, ds.sem_nsems,
                   ds.sem_otime, ds.sem_ctime)


def _shmid_ds(ds: Any) -> ShmidDs:
    p = ds.shm_perm
    return ShmidDs(unsigned_key(p.__key), p.uid, p.gid, p.cuid, p.cgid, p.mode & _PERM_BITS,
                   ds.shm_segsz, ds.shm_nattch, ds.shm_cpid, ds.shm_lpid, ds.shm_atime,
                   ds.shm_dtime, ds.shm_ctime, bool(p.mode & _SHM_DEST),
                   bool(p.mode & _SHM_LOCKED))


def _fields(cls: Any, cdata: Any) -> Any:
    return cls(*(getattr(cdata, name) for name in cls.__slots__))


# ---- argument checks (only reached when cffi refused an argument) -----------------

def _index(call: str, name: str, value: Any) -> int:
    """value as a Python int, or TypeError naming the argument."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise TypeError(
            f"{call}: {name} must be an integer, not {type(value).__name__}") from None


def _check_int(call: str, name: str, value: Any, ctype: str) -> None:
    """Raise TypeError or OverflowError, naming the argument, if value can't be a C ctype."""
    value = _index(call, name, value)
    lo, hi = C_RANGES[ctype]
    if not lo <= value <= hi:
        raise OverflowError(f"{call}: {name}={value} does not fit a C {ctype} ({lo}..{hi})")


def _explain(call: str, exc: Exception, **args: Tuple[Any, str]) -> Exception:
    """The clearest error for arguments cffi refused: the first one that is wrong."""
    for name, (value, ctype) in args.items():
        try:
            _check_int(call, name, value, ctype)
        except (TypeError, OverflowError) as better:
            return better
    return exc


def _as_buffer(call: str, data: Any) -> Any:
    if isinstance(data, str):
        raise TypeError(f"{call}: data must be a bytes-like object, not str (encode it first)")
    try:
        return ffi.from_buffer(data)
    except TypeError:
        raise TypeError(
            f"{call}: data must be a bytes-like object, not {type(data).__name__}") from None
    except BufferError as e:
        raise TypeError(f"{call}: data must be a C-contiguous buffer ({e})") from None


def _size(call: str, maxsize: Optional[int]) -> int:
    if maxsize is None:
        return _ANY_SIZE
    size = _index(call, "maxsize", maxsize)
    if size < 0:
        raise ValueError(f"{call}: maxsize must be >= 0, got {size}")
    _check_int(call, "maxsize", size, "size_t")
    # SIZE_MAX means "any size" to the shim; the kernel refuses it anyway (EINVAL).
    return size if size != _ANY_SIZE else _ANY_SIZE - 1


# Longer timeouts (about 146 years, infinity included) mean no limit: the shim
# takes nanoseconds in a C long long.
_LONGEST_TIMEOUT = 2.0 ** 62 / 1e9


def _deadline(call: str, timeout: Optional[float]) -> Optional[float]:
    """The monotonic time a call with this timeout must end by; None for no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{call}: timeout must be a number of seconds or None, "
                        f"not {type(timeout).__name__}")
    if timeout > _LONGEST_TIMEOUT:
        return None
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{call}: timeout must be >= 0 seconds, got {timeout}")
    return time.monotonic() + timeout


def _remaining_ns(deadline: Optional[float]) -> int:
    if deadline is None:
        return _NO_TIMEOUT
    left = deadline - time.monotonic()
    return int(left * 1e9) if left > 0 else 0


def _failure(err: int, call: str, timeout: Optional[float]) -> OSError:
    """The exception for a failed wait: the shim's ETIMEDOUT (a deadline that msgsnd
    and msgrcv do not have in the kernel) becomes TimeoutError."""
    return timeout_error(call, timeout) if err == ETIMEDOUT else syscall_error(err, call)


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
    key = ffi.new("key_t *")
    err = lib.ipcb_ftok(raw, proj, key)
    if err:
        raise OSError(err, f"ftok(proj_id={proj_id}): {os.strerror(err)}", os.fsdecode(raw))
    return int(key[0])


def _key(call: str, key: int) -> int:
    """key_t is a C int; keys are often written as unsigned hex (ipcs shows 0x8badf00d)."""
    if isinstance(key, int) and not isinstance(key, bool) and INT_MAX < key <= KEY_MASK:
        return key - (KEY_MASK + 1)
    _check_int(call, "key", key, "int")
    return key


def msgget(key: int, flags: int = 0) -> int:
    """msgget(2): the identifier of the queue for ``key`` (IPC_CREAT to create it).

    ``key`` may also be given unsigned (0..2**32-1), as ``ipcs`` prints it.
    """
    return _get("msgget", lib.ipcb_msgget, key, flags)


def _get(call: str, c_get: Callable[..., int], key: int, flags: int,
         *size: Tuple[str, int, str]) -> int:
    """A *get call: ``c_get(key, [size,] flags)``. ``size`` is the (name, value, C type)
    of the kind's size argument (nsems, size), if it has one."""
    k = _key(call, key)
    try:
        r = c_get(k, *(value for _, value, _ in size), flags)
    except (TypeError, OverflowError) as e:
        raise _explain(call, e, **{name: (value, ctype) for name, value, ctype in size},
                       flags=(flags, "int")) from None
    if r < 0:
        raise syscall_error(-r, f"{call}(key={key:#x})")
    return int(r)


_send = lib.ipcb_send
_unpack = ffi.unpack
_tuple_new = tuple.__new__


def msgsnd(msqid: int, mtype: int, data: Buffer, flags: int = 0, *,
           timeout: Optional[float] = None) -> None:
    """msgsnd(2): queue ``data`` (any bytes-like object) as a message of type ``mtype``.

    With IPC_NOWAIT a full queue raises ``BlockingIOError`` (EAGAIN). ``timeout``
    (seconds) bounds the wait for room on a full queue and raises ``TimeoutError``.
    """
    if type(data) is not bytes:
        data = _as_buffer("msgsnd", data)
    _msgsnd(msqid, mtype, data, flags, timeout)


def _msgsnd_failed(err: int, msqid: int, mtype: int, data: Any, flags: int) -> None:
    """Raise the error ``err`` of a ``_send`` call; after EINTR (the signal handlers
    have run by now, per PEP 475), send again."""
    if err != EINTR:
        raise syscall_error(err, f"msgsnd(msqid={msqid})")
    _msgsnd(msqid, mtype, data, flags, None)


def _msgsnd(msqid: int, mtype: int, data: Any, flags: int, timeout: Optional[float]) -> None:
    """msgsnd of ``data`` (bytes, or what :func:`_as_buffer` made) with the PEP 475
    retry loop."""
    deadline = _deadline("msgsnd", timeout)
    try:
        while True:
            err = lib.ipcb_msgsnd(msqid, mtype, data, len(data), flags, _remaining_ns(deadline))
            if not err:
                return
            if err != EINTR:
                raise _failure(err, f"msgsnd(msqid={msqid})", timeout)
    except (TypeError, OverflowError) as e:
        raise _explain("msgsnd", e, msqid=(msqid, "int"), mtype=(mtype, "long"),
                       flags=(flags, "int")) from None


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
    got: Tuple[int, bytes] = _msgrcv(msqid, maxsize, msgtyp, flags, timeout, tuple)
    return got


def _lent_message(m: Any, cls: Any) -> Any:
    """The message in the lent receive buffer ``m``, as ``(mtype, data)`` in a ``cls``
    (a tuple or a subclass, built with ``tuple.__new__``: ``cls.__new__`` is not
    called); the buffer is given back once it is copied."""
    got = _tuple_new(cls, (m.mtype, _unpack(m.mtext, m.len)))
    m.lent = 0
    return got


def _msgrcv_failed(err: int, msqid: int, msgtyp: int, flags: int, cls: Any) -> Any:
    """Raise the error ``err`` of a receive of any size without a timeout; after
    EINTR (the signal handlers have run by now, per PEP 475), receive again."""
    if err != EINTR:
        raise syscall_error(err, f"msgrcv(msqid={msqid})")
    return _msgrcv(msqid, None, msgtyp, flags, None, cls)


def _msgrcv(msqid: int, maxsize: Optional[int], msgtyp: int, flags: int,
            timeout: Optional[float], cls: Any) -> Any:
    """msgrcv with the PEP 475 retry loop; ``(mtype, data)`` in a ``cls``, as
    :func:`_lent_message` makes it."""
    size = _size("msgrcv", maxsize)
    deadline = _deadline("msgrcv", timeout)
    try:
        while True:
            m = lib.ipcb_msgrcv(msqid, size, msgtyp, flags, _remaining_ns(deadline))
            err = m.err
            if not err:
                return _lent_message(m, cls)
            m.lent = 0
            if err != EINTR:
                raise _failure(err, f"msgrcv(msqid={msqid})", timeout)
    except (TypeError, OverflowError) as e:
        raise _explain("msgrcv", e, msqid=(msqid, "int"), msgtyp=(msgtyp, "long"),
                       flags=(flags, "int")) from None


_MSG_SET_FIELDS = {"uid", "gid", "mode", "qbytes"}


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
    if cmd in (IPC_INFO, MSG_INFO):
        info = ffi.new("struct msginfo *")
        r = lib.ipcb_msgctl(msqid, cmd, ffi.cast("struct msqid_ds *", info))
        if r < 0:
            raise syscall_error(-r, call)
        return r, _fields(MsgInfo, info)
    ds = ffi.new("struct msqid_ds *")
    if cmd == IPC_SET:
        changes = _settable(call, arg, _MSG_SET_FIELDS)
        _set_msqid_ds(call, ffi.new("struct msqid_ds *"), changes)  # refuses bad values first
        _current(call, msqid, MSG_STAT_ANY, lambda i, c: lib.ipcb_msgctl(i, c, ds))
        _set_msqid_ds(call, ds, changes)
    return _ctl_result(call, lib.ipcb_msgctl(msqid, cmd, ds), cmd, ds, _msqid_ds,
                       (MSG_STAT, MSG_STAT_ANY), (IPC_SET, IPC_RMID))


def _ctl_result(call: str, r: int, cmd: int, ds: Any, convert: Callable[[Any], Any],
                stat_cmds: Tuple[int, ...], none_cmds: Tuple[int, ...]) -> Any:
    """What a *ctl call into ``ds`` returned: its structure for IPC_STAT, ``(id, its
    structure)`` for the ``stat_cmds`` (by index), None for the ``none_cmds``, else the
    kernel's result; a failure raises."""
    if r < 0:
        raise syscall_error(-r, call)
    if cmd == IPC_STAT:
        return convert(ds)
    if cmd in stat_cmds:
        return r, convert(ds)
    if cmd in none_cmds:
        return None
    return r


# An id's low bits are its index: 15 bits, or 24 with the ipcmni_extend boot option.
_INDEX_BITS = (15, 24)


def _current(call: str, ident: int, stat_any: int, stat: Callable[[int, int], int]) -> None:
    """Fill a struct with the object's current values, even without read permission.

    ``stat(id_or_index, cmd)`` runs msgctl/semctl/shmctl into that struct (-errno on
    failure, as the shim returns it). IPC_STAT needs
    read permission, but IPC_SET needs only ownership and SETALL only write
    permission, so on EACCES the object is read by its index with MSG_STAT_ANY /
    SEM_STAT_ANY / SHM_STAT_ANY and the call itself is left to the kernel to allow or refuse.
    """
    r = stat(ident, IPC_STAT)
    if r >= 0:
        return
    err = -r
    if err == EACCES:
        refused = True
        for bits in _INDEX_BITS:
            r = stat(ident & ((1 << bits) - 1), stat_any)
            if r == ident:
                return
            refused = refused and r == -EINVAL
        if refused:
            # Linux < 4.17 and qemu-user answer *_STAT_ANY with EINVAL even for an
            # index in use: without read permission nothing else can read the values.
            name = {MSG_STAT_ANY: "MSG_STAT_ANY", SEM_STAT_ANY: "SEM_STAT_ANY",
                    SHM_STAT_ANY: "SHM_STAT_ANY"}[stat_any]
            raise PermissionError(
                err, f"{call}: {os.strerror(err)}: needs the current values, and without read "
                f"permission only {name} can read them, which this kernel refuses "
                f"(it came with Linux 4.17)")
    raise syscall_error(err, call)


def _settable(call: str, arg: Any, allowed: Set[str]) -> Mapping[str, int]:
    if not isinstance(arg, Mapping):
        raise TypeError(f"{call}: IPC_SET needs a mapping with any of "
                        f"{', '.join(sorted(allowed))}, not {type(arg).__name__}")
    unknown = set(arg) - allowed
    if unknown:
        raise ValueError(f"{call}: IPC_SET cannot change {', '.join(sorted(map(str, unknown)))}"
                         f" (only {', '.join(sorted(allowed))})")
    return arg


def _put(call: str, target: Any, field: str, name: str, value: Any) -> None:
    try:
        setattr(target, field, value)
    except OverflowError:
        struct = ffi.typeof(target)
        if struct.kind == "pointer":
            struct = struct.item
        ctype = dict(struct.fields)[field].type.cname
        raise OverflowError(f"{call}: IPC_SET {name}={value!r} does not fit its C field "
                            f"({ctype})") from None
    except TypeError:
        raise TypeError(f"{call}: IPC_SET {name} must be an integer, "
                        f"not {type(value).__name__}") from None


def _assign(call: str, perm: Any, changes: Mapping[str, int], *skip: str) -> None:
    for name, value in changes.items():
        if name not in skip:
            _put(call, perm, name, name, value)


_PERM_SET_FIELDS = {"uid", "gid", "mode"}


def _set_perm(call: str, arg: Any, ds: Any, perm: str, ident: int, stat_any: int,
              stat: Callable[[int, int], int]) -> None:
    """IPC_SET of a semaphore set or segment: ``ds`` filled with the object's current
    values (see :func:`_current`), then with ``arg``'s uid, gid and mode, which are
    refused first, before any call, if they do not fit."""
    changes = _settable(call, arg, _PERM_SET_FIELDS)
    # A field of a struct does not keep the struct alive: the scratch one must stay
    # referenced while it is written into.
    scratch = ffi.new(ffi.typeof(ds))
    _assign(call, getattr(scratch, perm), changes)
    _current(call, ident, stat_any, stat)
    _assign(call, getattr(ds, perm), changes)


def _set_msqid_ds(call: str, ds: Any, changes: Mapping[str, int]) -> None:
    _assign(call, ds.msg_perm, changes, "qbytes")
    if "qbytes" in changes:
        _put(call, ds, "msg_qbytes", "qbytes", changes["qbytes"])


# ---- semaphores -------------------------------------------------------------------

def semget(key: int, nsems: int, flags: int = 0) -> int:
    """semget(2): the identifier of the semaphore set for ``key`` (IPC_CREAT to create it)."""
    return _get("semget", lib.ipcb_semget, key, flags, ("nsems", nsems, "int"))


SemOp = Union[Tuple[int, int], Tuple[int, int, int]]


def _sembufs(ops: Iterable[SemOp]) -> Any:
    try:
        seq = ops if isinstance(ops, (list, tuple)) else list(ops)
    except TypeError:
        raise TypeError(f"semop: ops must be an iterable of (sem_num, sem_op[, sem_flg]), "
                        f"not {type(ops).__name__}") from None
    # cffi would also take (sem_num,) or a dict, filling the missing fields with 0.
    for i, op in enumerate(seq):
        if not isinstance(op, (tuple, list)) or not 2 <= len(op) <= 3:
            raise TypeError(f"semop: ops[{i}] must be (sem_num, sem_op[, sem_flg]), got {op!r}")
    try:
        return ffi.new("struct sembuf[]", seq)
    except (TypeError, ValueError, OverflowError):
        pass
    for i, op in enumerate(seq):
        for name, value, ctype in zip(("sem_num", "sem_op", "sem_flg"), op,
                                      ("unsigned short", "short", "short")):
            _check_int("semop", f"ops[{i}].{name}", value, ctype)
    raise TypeError(f"semop: ops could not be converted: {seq!r}")


def semop(semid: int, ops: Iterable[SemOp], timeout: Optional[float] = None) -> None:
    """semop(2) / semtimedop(2): apply all ``ops`` atomically, or none of them.

    ``ops``: (sem_num, sem_op) or (sem_num, sem_op, sem_flg) tuples; sem_flg may hold
    IPC_NOWAIT and SEM_UNDO. ``timeout`` in seconds uses semtimedop (0: do not wait);
    when it expires the kernel's EAGAIN is raised (``BlockingIOError``).
    """
    buf = _sembufs(ops)
    deadline = _deadline("semop", timeout)
    ns = _NO_TIMEOUT if deadline is None else _remaining_ns(deadline)
    try:
        while True:
            err = lib.ipcb_semop(semid, buf, len(buf), ns)
            if not err:
                return
            if err != EINTR:
                raise syscall_error(err, f"semop(semid={semid})")
            ns = _remaining_ns(deadline)
    except (TypeError, OverflowError) as e:
        raise _explain("semop", e, semid=(semid, "int")) from None


_SEM_INT_CMDS = frozenset((GETVAL, GETPID, GETNCNT, GETZCNT))


def _nsems(call: str, semid: int) -> int:
    ds = ffi.new("struct semid_ds *")
    _current(call, semid, SEM_STAT_ANY, lambda i, c: lib.ipcb_semctl_ds(i, 0, c, ds))
    return int(ds.sem_nsems)


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
        r = lib.ipcb_semctl_val(semid, semnum, cmd, val)
        if r < 0:
            raise syscall_error(-r, call)
        return r if cmd in _SEM_INT_CMDS else None
    if cmd == GETALL:
        values = ffi.new("unsigned short[]", _nsems(call, semid))
        r = lib.ipcb_semctl_array(semid, GETALL, values)
        if r < 0:
            raise syscall_error(-r, call)
        return list(values)
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
        r = lib.ipcb_semctl_array(semid, SETALL, ffi.new("unsigned short[]", wanted))
        if r < 0:
            raise syscall_error(-r, call)
        return None
    if cmd in (IPC_INFO, SEM_INFO):
        info = ffi.new("struct seminfo *")
        r = lib.ipcb_semctl_ds(semid, semnum, cmd, ffi.cast("struct semid_ds *", info))
        if r < 0:
            raise syscall_error(-r, call)
        return r, _fields(SemInfo, info)
    ds = ffi.new("struct semid_ds *")
    if cmd == IPC_SET:
        _set_perm(call, arg, ds, "sem_perm", semid, SEM_STAT_ANY,
                  lambda i, c: lib.ipcb_semctl_ds(i, 0, c, ds))
    return _ctl_result(call, lib.ipcb_semctl_ds(semid, semnum, cmd, ds), cmd, ds, _semid_ds,
                       (SEM_STAT, SEM_STAT_ANY), (IPC_SET,))


# ---- shared memory ------------------------------------------------------------------

def shmget(key: int, size: int, flags: int = 0) -> int:
    """shmget(2): the identifier of the segment for ``key`` (IPC_CREAT to create one of
    ``size`` bytes; opening an existing one needs ``size`` no larger than it, 0 fits)."""
    return _get("shmget", lib.ipcb_shmget, key, flags, ("size", size, "size_t"))


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


def _segment_size(call: str, shmid: int) -> int:
    """The size of a segment this process holds attached (so the id cannot change)."""
    ds = ffi.new("struct shmid_ds *")
    _current(call, shmid, SHM_STAT_ANY, lambda i, c: lib.ipcb_shmctl(i, c, ds))
    return int(ds.shm_segsz)


def shmat(shmid: int, flags: int = 0) -> Attachment:
    """shmat(2) at an address of the kernel's choosing: the segment as an :class:`Attachment`.

    ``flags`` go to the kernel as they are (as ``shmat(shmid, NULL, flags)`` in C):
    SHM_RDONLY attaches read-only, SHM_EXEC executable, SHM_RND is without effect
    and SHM_REMAP needs an address, so the kernel refuses it (EINVAL).
    """
    call = f"shmat(shmid={shmid})"
    at = ffi.new("void **")
    try:
        err = lib.ipcb_shmat(shmid, flags, at)
    except (TypeError, OverflowError) as e:
        raise _explain("shmat", e, shmid=(shmid, "int"), flags=(flags, "int")) from None
    if err:
        raise syscall_error(err, call)
    # The mapping the attachment's mmap holds becomes the segment's, in place: the
    # segment stays attached at the kernel's address (at[0]) until then, so its id
    # cannot name another segment meanwhile. Whatever interrupts this, at[0] says
    # whether that first attachment is still to be detached.
    try:
        size = _segment_size(call, shmid)
        readonly = bool(flags & SHM_RDONLY)
        att = mmap.mmap.__new__(Attachment, -1, size, lib.MAP_PRIVATE | lib.MAP_NORESERVE,
                                mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE)
        att._shmid = shmid
        att._readonly = readonly
        with ffi.from_buffer(att) as place:
            err = lib.ipcb_shmat_move(shmid, flags, at, place)
    finally:
        if at[0] != ffi.NULL:
            lib.ipcb_shmdt(at[0])
    if err:
        mmap.mmap.close(att)
        raise syscall_error(err, call)
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
    if cmd in (IPC_INFO, SHM_INFO):
        info = ffi.new("struct shminfo *" if cmd == IPC_INFO else "struct shm_info *")
        r = lib.ipcb_shmctl(shmid, cmd, ffi.cast("struct shmid_ds *", info))
        if r < 0:
            raise syscall_error(-r, call)
        return r, _fields(ShmInfo if cmd == IPC_INFO else ShmUsage, info)
    ds = ffi.new("struct shmid_ds *")
    if cmd == IPC_SET:
        _set_perm(call, arg, ds, "shm_perm", shmid, SHM_STAT_ANY,
                  lambda i, c: lib.ipcb_shmctl(i, c, ds))
    return _ctl_result(call, lib.ipcb_shmctl(shmid, cmd, ds), cmd, ds, _shmid_ds,
                       (SHM_STAT, SHM_STAT_ANY), (IPC_SET, IPC_RMID, SHM_LOCK, SHM_UNLOCK))


# ---- for the layers above: batches in C, the undo ledger, namespaces ---------------
# Not part of the syscall-shaped API; names start with an underscore.

def _take_batch(b: Any) -> Tuple[List[int], bytes, List[int], int, int]:
    """``(mtypes, text, ends, err, changed)`` of a batch the shim lent; gives it back.

    Message i is ``text[ends[i-1]:ends[i]]``.
    """
    n = b.count
    got = ((ffi.unpack(b.mtypes, n), ffi.unpack(b.text, b.used), ffi.unpack(b.ends, n))
           if n else ([], b"", []))
    err, changed = b.err, b.changed
    b.lent = 0
    return got[0], got[1], got[2], err, changed


def _msgsnd_many(msqid: int, mtypes: Sequence[int], text: bytes, ends: Sequence[int],
                 flags: int, timeout: Optional[float]) -> int:
    """Send len(mtypes) messages (message i is text[ends[i-1]:ends[i]]) in one call
    into C; returns how many were sent.

    With IPC_NOWAIT a full queue ends the batch early (the count says how far it
    got). Any other failure raises, with ``.sent`` set to the count already sent.
    """
    try:
        c_types = ffi.new("long[]", mtypes)
    except (TypeError, OverflowError) as e:
        for i, t in enumerate(mtypes):
            _check_int("send_many", f"mtype of message {i}", t, "long")
        raise e
    c_ends = ffi.new("size_t[]", ends)
    c_err = ffi.new("int *")
    deadline = _deadline("send_many", timeout)
    total = len(c_types)
    done = 0
    while True:
        done = int(lib.ipcb_msgsnd_many(msqid, done, total, c_types, text, c_ends, flags,
                                        _remaining_ns(deadline), c_err))
        if done == total:
            return done
        err = c_err[0]
        if err == EINTR:
            continue
        if err == EAGAIN and flags & IPC_NOWAIT:
            return done
        exc = _failure(err, f"send_many(msqid={msqid})", timeout)
        exc.sent = done  # type: ignore[attr-defined]
        raise exc


def _msgrcv_many(msqid: int, max_count: int, maxsize: Optional[int], msgtyp: int, flags: int,
                 timeout: Optional[float]) -> Tuple[List[int], bytes, List[int], int]:
    """Receive up to max_count messages in one call into C.

    The first message is waited for as ``flags``/``timeout`` say, the rest are taken
    only while already queued. Returns ``(mtypes, text, ends, err)``: ``err`` is the
    errno that ended the batch after at least one message (0 if none); failing
    before the first message raises. Messages taken are always returned.
    """
    size = _size("receive_many", maxsize)
    _check_int("receive_many", "max_count", max_count, "size_t")
    deadline = _deadline("receive_many", timeout)
    while True:
        try:
            b = lib.ipcb_msgrcv_many(msqid, max_count, size, msgtyp, flags,
                                     _remaining_ns(deadline))
        except (TypeError, OverflowError) as e:
            raise _explain("receive_many", e, msqid=(msqid, "int"), msgtyp=(msgtyp, "long"),
                           flags=(flags, "int")) from None
        if b == ffi.NULL:
            raise MemoryError("receive_many: no memory for the receive buffers")
        mtypes, text, ends, err, _ = _take_batch(b)
        if mtypes or not err:
            return mtypes, text, ends, err
        if err != EINTR:
            raise _failure(err, f"receive_many(msqid={msqid})", timeout)


def _msgcopy_all(msqid: int, copied: Optional[Callable[[int], None]] = None,
                 interval: float = 0.25) -> Optional[Tuple[List[int], bytes, List[int]]]:
    """Copy every message with MSG_COPY in one call into C, taking none.

    Returns ``(mtypes, text, ends)``, or None when IPC_STAT before and after differ,
    the queue ran short, or the first or last message is no longer the one copied:
    the copy may be torn and should be taken again.

    ``copied``, if given, is called with the number of messages copied so far every
    ``interval`` seconds while the copy runs (from another thread: the copy is one
    call into C, which a consistent copy needs), and never after this returns.
    """
    b = lib.ipcb_msgcopy_all(msqid, ffi.NULL) if copied is None else _copy_watched(
        msqid, copied, interval)
    if b == ffi.NULL:
        raise MemoryError("peek_all: no memory for the copy buffers")
    mtypes, text, ends, err, changed = _take_batch(b)
    if err:
        raise syscall_error(err, f"msgrcv(msqid={msqid}, MSG_COPY)")
    if changed:
        return None
    return mtypes, text, ends


def _copy_watched(msqid: int, copied: Callable[[int], None], interval: float) -> Any:
    """ipcb_msgcopy_all with a thread that reports its count of copied messages."""
    import threading  # here: import ipcbind does not need it

    count = ffi.new("size_t *")
    stop = threading.Event()
    failed: List[BaseException] = []

    def watch() -> None:
        seen = 0
        while not stop.wait(interval):
            now = int(count[0])
            if now != seen:
                seen = now
                try:
                    copied(now)
                except BaseException as e:  # raised in the copying thread, below
                    failed.append(e)
                    return

    watcher = threading.Thread(target=watch, name=f"ipcbind-copy-{msqid}", daemon=True)
    watcher.start()
    try:
        b = lib.ipcb_msgcopy_all(msqid, count)
    finally:
        stop.set()
        watcher.join()
    if failed:
        if b != ffi.NULL:
            _take_batch(b)  # gives the lent batch back
        raise failed[0]
    return b


def _semop1(semid: int, num: int, op: int, flg: int, timeout: Optional[float]) -> None:
    """semop with a single operation, without building an array in Python."""
    deadline = _deadline("semop", timeout)
    ns = _NO_TIMEOUT if deadline is None else _remaining_ns(deadline)
    try:
        while True:
            err = lib.ipcb_semop1(semid, num, op, flg, ns)
            if not err:
                return
            if err != EINTR:
                raise syscall_error(err, f"semop(semid={semid})")
            ns = _remaining_ns(deadline)
    except (TypeError, OverflowError) as e:
        raise _explain("semop", e, semid=(semid, "int"), sem_num=(num, "unsigned short"),
                       sem_op=(op, "short"), sem_flg=(flg, "short")) from None


def _ledger() -> Dict[int, List[int]]:
    """The SEM_UNDO adjustments this process made through ipcbind: {semid: [adj, ...]}.

    Lists are as long as the highest semaphore number used plus one; sets whose
    adjustments are all back at zero are left out.
    """
    cap = 64
    while True:
        out = ffi.new("int[]", cap)
        need = lib.ipcb_ledger_dump(out, cap)
        if need <= cap:
            break
        cap = need + 16
    result: Dict[int, List[int]] = {}
    i = 0
    while i < need:
        semid, n = out[i], out[i + 1]
        adjs = list(out[i + 2:i + 2 + n])
        if any(adjs):
            result[semid] = adjs
        i += 2 + n
    return result


def _ledger_drop(semid: int) -> None:
    """Forget the ledger's entry for a set that no longer exists."""
    lib.ipcb_ledger_drop(semid)


def _setns_ipc(fd: int) -> None:
    """setns(2) into the IPC namespace open as ``fd``, for the calling thread."""
    err = lib.ipcb_setns_ipc(fd)
    if err:
        raise syscall_error(err, f"setns(fd={fd}, CLONE_NEWIPC)")


def _unshare_ipc() -> None:
    """unshare(2) a fresh IPC namespace, for the calling thread."""
    err = lib.ipcb_unshare_ipc()
    if err:
        raise syscall_error(err, "unshare(CLONE_NEWIPC)")


def _wake_signal() -> int:
    """The real-time signal that interrupts msgsnd/msgrcv at a deadline (-1: none free)."""
    return int(lib.ipcb_wake_signal())


# The semaphore hot path: a C function of a single argument is called by cffi
# without an argument tuple, which saves about a quarter of the time of a
# five-argument call. Each returns 0, or the errno for _semop_packed_failed.
_semop_packed = lib.ipcb_semop_packed
_semop_packed_undo = lib.ipcb_semop_packed_undo


def _semop_pack(semid: int, num: int, op: int) -> int:
    """The argument of _semop_packed for one operation (semid >= 0, op in -32768..32767)."""
    return semid | num << 32 | op << 48


def _semop_packed_failed(err: int, semid: int, num: int, op: int, flg: int) -> None:
    """Raise the error ``err`` of a _semop_packed call; after EINTR (the signal
    handlers have run by now, per PEP 475), do the operation again."""
    if err != EINTR:
        raise syscall_error(err, f"semop(semid={semid})")
    _semop1(semid, num, op, flg, None)


# MessageQueue.receive's common case without the accelerator: one integer each way
# through ipcb_recv_packed, whose layout src/shim.c states; the message is read from
# one view of the shim's arena of receive buffers.
_recv_packed = lib.ipcb_recv_packed
_RECV_NOWAIT: int = lib.IPCB_RECV_NOWAIT
_RECV_RARE: int = lib.IPCB_RECV_RARE
_SHIFT: int = lib.IPCB_PACK_SHIFT
_LOW = (1 << _SHIFT) - 1
_TEXT: int = ffi.offsetof("struct ipcb_rmsg", "mtext")
_CHUNK_MASK = _LOW & -lib.IPCB_CHUNK
_GIVE_BACK = b"\0"  # a chunk's first byte is its lent flag


def _arena() -> Any:
    size = ffi.new("size_t *")
    start = lib.ipcb_arena(size)
    # Without an arena, ipcb_recv_packed never returns an offset into it.
    return ffi.buffer(start, size[0]) if start != ffi.NULL else b""


_ARENA = _arena()


def _receive(msqid: int, msgtyp: int, nowait: bool, cls: Any) -> Any:
    """msgrcv of a message of any size without a timeout, as ``(mtype, data)`` in a
    ``cls`` (see :func:`_lent_message`); IPC_NOWAIT if ``nowait``."""
    if type(msgtyp) is int:  # another type's << might not be an int's
        try:
            r = _recv_packed(msgtyp << _SHIFT | msqid | (_RECV_NOWAIT if nowait else 0))
        except OverflowError:  # msgtyp beyond a C int
            pass
        else:
            if r >= 0:
                chunk = r & _CHUNK_MASK
                text = _ARENA[chunk + _TEXT:r & _LOW]
                _ARENA[chunk] = _GIVE_BACK
                return _tuple_new(cls, (r >> _SHIFT, text))
            if r <= _RECV_RARE:
                return _lent_message(lib.ipcb_rslot(_RECV_RARE - r), cls)
            return _msgrcv_failed(-r, msqid, msgtyp, IPC_NOWAIT if nowait else 0, cls)
    return _msgrcv(msqid, None, msgtyp, IPC_NOWAIT if nowait else 0, None, cls)


# ---- the optional accelerator (src/accel.c) -------------------------------------------
# C methods that replace MessageQueue.send/receive and Semaphore.acquire/release
# (and the Semaphore's with) and hand every case but the common one to the Python
# methods they replace. They call the shim's own functions, through the table
# whose address it gives here: one shim, one set of receive buffers, one ledger.

ACCELERATOR_VARIABLE = "IPCBIND_ACCELERATOR"


def _load_accelerator() -> Any:
    """ipcbind._accel bound to this shim; None where it is not built (PyPy,
    free-threaded builds, a failed build) or IPCBIND_ACCELERATOR=0 turns it off."""
    if os.environ.get(ACCELERATOR_VARIABLE) == "0":
        return None
    try:
        accel = importlib.import_module(f"{__package__}._accel")
    except ImportError:
        return None
    try:
        accel.bind(int(ffi.cast("uintptr_t", lib.ipcb_calls())))
    except ImportError as e:  # built from other sources than the shim: left unused
        import warnings

        warnings.warn(f"{e}; ipcbind runs without its accelerator", RuntimeWarning, stacklevel=2)
        return None
    return accel


_ACCEL = _load_accelerator()


def _accelerate_queue(queue_cls: type, message_cls: type,
                      send_failed: Callable[[int, int, int, Any, int], None]) -> None:
    """Give ``queue_cls`` the accelerator's send and receive, which return ``message_cls``;
    ``send_failed(err, msqid, mtype, data, flags)`` raises what a failed send raises."""
    if _ACCEL is not None:
        _ACCEL.accelerate_queue(queue_cls, message_cls, send_failed, _msgrcv_failed)


def _accelerate_semaphore(cls: type) -> None:
    """Give ``cls`` the accelerator's acquire, release, __enter__ and __exit__."""
    if _ACCEL is not None:
        _ACCEL.accelerate_semaphore(cls, _semop_packed_failed)
