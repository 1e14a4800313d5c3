"""The seam: the one module that imports the compiled shim (``ipcbind._ffi``).

Everything above reaches the kernel through the functions here, which take and
return Python values (ints, bytes, tuples, dicts of a structure's fields), never
cdata, and raise ``OSError`` (see :mod:`ipcbind.errors`) for what the kernel refused.
They follow PEP 475: after EINTR the signal handlers have run, and the call is made
again with what is left of its timeout. The seam owns what must not leak out of it:
the receive buffers the shim lends, batches, the undo ledger, namespace moves, and
the optional accelerator (src/accel.c), which calls the shim's own C functions.
"""

from __future__ import annotations

import importlib
import mmap
import os
from errno import EACCES, EAGAIN, EINTR, EINVAL, ETIMEDOUT
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

try:
    from ._ffi import ffi, lib
except ModuleNotFoundError as e:  # the unbuilt source tree, e.g. python -m from the checkout
    if e.name != f"{__package__}._ffi":
        raise
    raise ImportError(
        f"ipcbind's compiled shim is missing from {__file__.rsplit('/', 1)[0]}: that is the "
        "source tree, not a built copy. Run from another directory to use the installed "
        "ipcbind, or build it in place with 'pip install -e .'") from e
from ._args import NO_TIMEOUT, c_key, check_int, deadline, explain, index, remaining_ns
from ._limits import INDEX_BITS, unsigned_key
from .errors import syscall_error, timeout_error

# ---- the C constants, under their C names -----------------------------------------
# What ``from ._seam import *`` gives: the syscall layer re-exports every one.
__all__ = [
    "IPC_PRIVATE", "IPC_CREAT", "IPC_EXCL", "IPC_NOWAIT", "IPC_RMID", "IPC_SET", "IPC_STAT",
    "IPC_INFO", "MSG_NOERROR", "MSG_EXCEPT", "MSG_COPY", "MSG_STAT", "MSG_INFO", "MSG_STAT_ANY",
    "SEM_UNDO", "GETPID", "GETVAL", "GETALL", "GETNCNT", "GETZCNT", "SETVAL", "SETALL",
    "SEM_STAT", "SEM_INFO", "SEM_STAT_ANY",
    "SHM_RDONLY", "SHM_RND", "SHM_EXEC", "SHM_REMAP", "SHM_LOCK", "SHM_UNLOCK", "SHM_STAT",
    "SHM_INFO", "SHM_STAT_ANY", "SHM_HUGETLB", "SHM_NORESERVE",
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

ANY_SIZE: int = lib.IPCB_ANY_SIZE
"""A receive size that fits any message: the shim makes room for the longest."""

_PERM_BITS = 0o777
_SHM_DEST: int = lib.SHM_DEST
_SHM_LOCKED: int = lib.SHM_LOCKED


# ---- the kernel's structures, as Python values ----------------------------------------
# Each reader gives a structure's values in the order of the public dataclass's
# fields: the ipc_perm part (key unsigned, mode the permission bits), then the rest.

def _perm(p: Any) -> Tuple[int, ...]:
    return unsigned_key(p.__key), p.uid, p.gid, p.cuid, p.cgid, p.mode & _PERM_BITS


def _msqid_ds(ds: Any) -> Tuple[int, ...]:
    return _perm(ds.msg_perm) + (ds.msg_qnum, ds.__msg_cbytes, ds.msg_qbytes, ds.msg_lspid,
                                 ds.msg_lrpid, ds.msg_stime, ds.msg_rtime, ds.msg_ctime)


def _semid_ds(ds: Any) -> Tuple[int, ...]:
    return _perm(ds.sem_perm) + (ds.sem_nsems, ds.sem_otime, ds.sem_ctime)


def _shmid_ds(ds: Any) -> Tuple[int, ...]:
    mode = ds.shm_perm.mode
    return _perm(ds.shm_perm) + (ds.shm_segsz, ds.shm_nattch, ds.shm_cpid, ds.shm_lpid,
                                 ds.shm_atime, ds.shm_dtime, ds.shm_ctime,
                                 bool(mode & _SHM_DEST), bool(mode & _SHM_LOCKED))


class _Kind:
    """What the *ctl calls of one kind of object need: its C call into a structure
    (``call(id, cmd, ds)``), the structure, its ipc_perm field, its STAT_ANY
    command, its reader, and the structures of its IPC_INFO-like commands."""

    __slots__ = ("call", "ds", "perm", "stat_any", "values", "infos")

    def __init__(self, call: Callable[[int, int, Any], int], ds: str, perm: str,
                 stat_any: int, values: Callable[[Any], Tuple[int, ...]],
                 infos: Dict[int, str]) -> None:
        self.call = call
        self.ds = ffi.typeof(ds)
        self.perm = perm
        self.stat_any = stat_any
        self.values = values
        self.infos = {cmd: ffi.typeof(info) for cmd, info in infos.items()}


_KINDS = {
    "msg": _Kind(lib.ipcb_msgctl, "struct msqid_ds *",
                 "msg_perm", MSG_STAT_ANY, _msqid_ds,
                 {IPC_INFO: "struct msginfo *", MSG_INFO: "struct msginfo *"}),
    "sem": _Kind(lambda i, c, ds: lib.ipcb_semctl_ds(i, 0, c, ds), "struct semid_ds *",
                 "sem_perm", SEM_STAT_ANY, _semid_ds,
                 {IPC_INFO: "struct seminfo *", SEM_INFO: "struct seminfo *"}),
    "shm": _Kind(lib.ipcb_shmctl, "struct shmid_ds *",
                 "shm_perm", SHM_STAT_ANY, _shmid_ds,
                 {IPC_INFO: "struct shminfo *", SHM_INFO: "struct shm_info *"}),
}


def ctl(kind: str, call: str, ident: int, cmd: int, cls: Any, semnum: int = 0) -> Tuple[int, Any]:
    """msgctl/semctl/shmctl of ``kind`` ("msg", "sem", "shm") with a structure:
    ``(result, cls of the structure's values)``. IPC_INFO and *_INFO fill their own
    structure, whose fields ``cls`` names by their C names. ``semnum`` goes to semctl,
    whose other structure commands ignore it."""
    k = _KINDS[kind]
    info = k.infos.get(cmd)
    call_into = k.call if not semnum else (
        lambda i, c, ds: lib.ipcb_semctl_ds(i, semnum, c, ds))
    if info is None:
        ds = ffi.new(k.ds)
        r = call_into(ident, cmd, ds)
        if r < 0:
            raise syscall_error(-r, call)
        return r, cls(*k.values(ds))
    filled = ffi.new(info)
    r = call_into(ident, cmd, ffi.cast(k.ds, filled))
    if r < 0:
        raise syscall_error(-r, call)
    return r, cls(*(getattr(filled, name) for name in cls.__slots__))


def _current(call: str, k: _Kind, ident: int, ds: Any) -> None:
    """Fill ``ds`` with the object's current values, even without read permission.

    IPC_STAT needs read permission, but IPC_SET needs only ownership and SETALL only
    write permission, so on EACCES the object is read by its index with MSG_STAT_ANY /
    SEM_STAT_ANY / SHM_STAT_ANY and the call itself is left to the kernel to allow or
    refuse.
    """
    r = k.call(ident, IPC_STAT, ds)
    if r >= 0:
        return
    err = -r
    if err == EACCES:
        refused = True
        for bits in INDEX_BITS:
            r = k.call(ident & ((1 << bits) - 1), k.stat_any, ds)
            if r == ident:
                return
            refused = refused and r == -EINVAL
        if refused:
            # Linux < 4.17 and qemu-user answer *_STAT_ANY with EINVAL even for an
            # index in use: without read permission nothing else can read the values.
            name = {MSG_STAT_ANY: "MSG_STAT_ANY", SEM_STAT_ANY: "SEM_STAT_ANY",
                    SHM_STAT_ANY: "SHM_STAT_ANY"}[k.stat_any]
            raise PermissionError(
                err, f"{call}: {os.strerror(err)}: needs the current values, and without read "
                f"permission only {name} can read them, which this kernel refuses "
                f"(it came with Linux 4.17)")
    raise syscall_error(err, call)


def current(kind: str, call: str, ident: int, field: str) -> int:
    """One field (by its C name) of the object's current structure, read as
    :func:`_current` reads it."""
    k = _KINDS[kind]
    ds = ffi.new(k.ds)
    _current(call, k, ident, ds)
    return int(getattr(ds, field))


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


def _assign(call: str, ds: Any, perm: str, changes: Mapping[str, int]) -> None:
    """Write ``changes`` into ``ds``: uid, gid and mode into its ipc_perm, then qbytes
    into a queue's msg_qbytes (so a bad owner or mode is the error named first, whatever
    the mapping's order)."""
    for name, value in changes.items():
        if name != "qbytes":
            _put(call, getattr(ds, perm), name, name, value)
    if "qbytes" in changes:
        _put(call, ds, "msg_qbytes", "qbytes", changes["qbytes"])


def ctl_set(kind: str, call: str, ident: int, changes: Mapping[str, int]) -> None:
    """IPC_SET: the object's current values (see :func:`_current`) with ``changes``,
    which are refused first, before any call, if they do not fit their C fields."""
    k = _KINDS[kind]
    ds = ffi.new(k.ds)
    _assign(call, ds, k.perm, changes)
    _current(call, k, ident, ds)
    _assign(call, ds, k.perm, changes)
    r = k.call(ident, IPC_SET, ds)
    if r < 0:
        raise syscall_error(-r, call)


# ---- getting an identifier, ftok ---------------------------------------------------------

_GETS = {"msgget": lib.ipcb_msgget, "semget": lib.ipcb_semget, "shmget": lib.ipcb_shmget}


def get(call: str, key: int, flags: int, *size: Tuple[str, int, str]) -> int:
    """msgget/semget/shmget (``call``): the identifier. ``key`` may be unsigned, as
    ``ipcs`` shows it; ``size`` is the (name, value, C type) of the kind's size argument
    (nsems, size), if it has one."""
    k = c_key(call, key)
    try:
        r = _GETS[call](k, *(value for _, value, _ in size), flags)
    except (TypeError, OverflowError) as e:
        raise explain(call, e, **{name: (value, ctype) for name, value, ctype in size},
                      flags=(flags, "int")) from None
    if r < 0:
        raise syscall_error(-r, f"{call}(key={key if type(key) is int else k:#x})")
    return int(r)


def ftok(path: bytes, proj_id: int) -> int:
    """ftok(3) of an encoded path and a checked project id."""
    key = ffi.new("key_t *")
    err = lib.ipcb_ftok(path, proj_id, key)
    if err:
        raise OSError(err, f"ftok(proj_id={proj_id}): {os.strerror(err)}", os.fsdecode(path))
    return int(key[0])


# ---- sending and receiving one message ------------------------------------------------

def _failure(err: int, call: str, timeout: Optional[float]) -> OSError:
    """The exception for a failed wait: the shim's ETIMEDOUT (a deadline that msgsnd
    and msgrcv do not have in the kernel) becomes TimeoutError."""
    return timeout_error(call, timeout) if err == ETIMEDOUT else syscall_error(err, call)


# What _retried needs to explain a refused argument: (name, C type) of each of a C
# function's arguments before the timeout, None for those Python made itself.
_MSGSND_ARGS = (("msqid", "int"), ("mtype", "long"), None, None, ("flags", "int"))
_MSGRCV_ARGS = (("msqid", "int"), None, ("msgtyp", "long"), ("flags", "int"))
_SEMOP_ARGS = (("semid", "int"), None, None)
_SEMOP1_ARGS = (("semid", "int"), ("sem_num", "unsigned short"), ("sem_op", "short"),
                ("sem_flg", "short"))


def _retried(what: str, spec: Tuple[Optional[Tuple[str, str]], ...], timeout: Optional[float],
             r: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args, nanoseconds left)`` until it succeeds or fails with another errno than
    EINTR, which is raised as the failure of ``what`` of the id ``args[0]``; returns what
    ``fn`` returned. ``fn`` returns 0 or an errno, or a lent message whose ``err`` says
    which (given back here on failure). ``r`` is what a first call without timeout
    returned, or None to make the first call here: the callers make that first call
    themselves, which spares the common case a call of this function. ``spec`` names the
    arguments, to explain one that cffi refused."""
    end = None if timeout is None else deadline(what, timeout)
    try:
        while True:
            if r is None:
                r = fn(*args, NO_TIMEOUT if end is None else remaining_ns(end))
            if type(r) is int:
                err = r
            else:
                err = r.err
                if err:
                    r.lent = 0
            if not err:
                return r
            if err != EINTR:
                raise _failure(err, f"{what}({spec[0][0]}={args[0]})", timeout)  # type: ignore
            r = None
    except (TypeError, OverflowError) as e:
        raise explain(what, e, **{name_type[0]: (value, name_type[1])
                                  for name_type, value in zip(spec, args) if name_type}) from None


def as_buffer(call: str, data: Any) -> Any:
    """A buffer of ``data`` that :func:`msgsnd` takes, or TypeError naming what is wrong.
    Opaque above the seam: it is only handed back to msgsnd."""
    if isinstance(data, str):
        raise TypeError(f"{call}: data must be a bytes-like object, not str (encode it first)")
    try:
        return ffi.from_buffer(data)
    except TypeError:
        raise TypeError(
            f"{call}: data must be a bytes-like object, not {type(data).__name__}") from None
    except BufferError as e:
        raise TypeError(f"{call}: data must be a C-contiguous buffer ({e})") from None


send: Callable[[int, int, bytes, int, int], int] = lib.ipcb_send
"""send(msqid, mtype, data, len(data), flags): one msgsnd without timeout or retry;
0, or the errno for :func:`msgsnd_failed`."""


def msgsnd_failed(err: int, msqid: int, mtype: int, data: Any, flags: int) -> None:
    """Raise the error ``err`` of a :data:`send`; after EINTR send again."""
    if err != EINTR:
        raise syscall_error(err, f"msgsnd(msqid={msqid})")
    msgsnd(msqid, mtype, data, flags, None)


def msgsnd(msqid: int, mtype: int, data: Any, flags: int, timeout: Optional[float]) -> None:
    """msgsnd of ``data`` (bytes, or what :func:`as_buffer` made)."""
    err = None
    if timeout is None:
        try:
            err = lib.ipcb_msgsnd(msqid, mtype, data, len(data), flags, NO_TIMEOUT)
        except (TypeError, OverflowError):
            pass  # made again and explained below
        if err == 0:
            return
    _retried("msgsnd", _MSGSND_ARGS, timeout, err, lib.ipcb_msgsnd, msqid, mtype, data,
             len(data), flags)


_unpack = ffi.unpack
_tuple_new = tuple.__new__


def receive_size(call: str, maxsize: Optional[int]) -> int:
    """The receive buffer's size for ``maxsize`` (None: any message)."""
    if maxsize is None:
        return ANY_SIZE
    size = index(call, "maxsize", maxsize)
    if size < 0:
        raise ValueError(f"{call}: maxsize must be >= 0, got {size}")
    check_int(call, "maxsize", size, "size_t")
    # ANY_SIZE means "any size" to the shim; the kernel refuses it anyway (EINVAL).
    return size if size != ANY_SIZE else ANY_SIZE - 1


def _lent_message(m: Any, cls: Any) -> Any:
    """The message in the lent receive buffer ``m``, as ``(mtype, data)`` in a ``cls``
    (a tuple or a subclass, built with ``tuple.__new__``: ``cls.__new__`` is not
    called); the buffer is given back once it is copied."""
    got = _tuple_new(cls, (m.mtype, _unpack(m.mtext, m.len)))
    m.lent = 0
    return got


def msgrcv_failed(err: int, msqid: int, msgtyp: int, flags: int, cls: Any) -> Any:
    """Raise the error ``err`` of a receive of any size without a timeout; after
    EINTR receive again."""
    if err != EINTR:
        raise syscall_error(err, f"msgrcv(msqid={msqid})")
    return msgrcv(msqid, ANY_SIZE, msgtyp, flags, None, cls)


def msgrcv(msqid: int, size: int, msgtyp: int, flags: int, timeout: Optional[float],
           cls: Any) -> Any:
    """msgrcv into a buffer of ``size`` bytes (:data:`ANY_SIZE`: any message);
    ``(mtype, data)`` in a ``cls``, as :func:`_lent_message` makes it."""
    m = None
    if timeout is None:
        try:
            m = lib.ipcb_msgrcv(msqid, size, msgtyp, flags, NO_TIMEOUT)
        except (TypeError, OverflowError):
            pass  # made again and explained below
        else:
            if not m.err:
                return _lent_message(m, cls)
    m = _retried("msgrcv", _MSGRCV_ARGS, timeout, m, lib.ipcb_msgrcv, msqid, size, msgtyp, flags)
    return _lent_message(m, cls)


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


def receive(msqid: int, msgtyp: int, nowait: bool, cls: Any) -> Any:
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
            return msgrcv_failed(-r, msqid, msgtyp, IPC_NOWAIT if nowait else 0, cls)
    return msgrcv(msqid, ANY_SIZE, msgtyp, IPC_NOWAIT if nowait else 0, None, cls)


# ---- batches in C: many messages in one call ---------------------------------------------

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


def msgsnd_many(msqid: int, mtypes: Sequence[int], text: bytes, ends: Sequence[int],
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
            check_int("send_many", f"mtype of message {i}", t, "long")
        raise e
    c_ends = ffi.new("size_t[]", ends)
    c_err = ffi.new("int *")
    end = deadline("send_many", timeout)
    total = len(c_types)
    done = 0
    while True:
        done = int(lib.ipcb_msgsnd_many(msqid, done, total, c_types, text, c_ends, flags,
                                        remaining_ns(end), c_err))
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


def msgrcv_many(msqid: int, max_count: int, size: int, msgtyp: int, flags: int,
                timeout: Optional[float]) -> Tuple[List[int], bytes, List[int], int]:
    """Receive up to max_count messages of at most ``size`` bytes in one call into C.

    The first message is waited for as ``flags``/``timeout`` say, the rest are taken
    only while already queued. Returns ``(mtypes, text, ends, err)``: ``err`` is the
    errno that ended the batch after at least one message (0 if none); failing
    before the first message raises. Messages taken are always returned.
    """
    check_int("receive_many", "max_count", max_count, "size_t")
    end = deadline("receive_many", timeout)
    while True:
        try:
            b = lib.ipcb_msgrcv_many(msqid, max_count, size, msgtyp, flags, remaining_ns(end))
        except (TypeError, OverflowError) as e:
            raise explain("receive_many", e, msqid=(msqid, "int"), msgtyp=(msgtyp, "long"),
                          flags=(flags, "int")) from None
        if b == ffi.NULL:
            raise MemoryError("receive_many: no memory for the receive buffers")
        mtypes, text, ends, err, _ = _take_batch(b)
        if mtypes or not err:
            return mtypes, text, ends, err
        if err != EINTR:
            raise _failure(err, f"receive_many(msqid={msqid})", timeout)


def msgcopy_all(msqid: int, copied: Optional[Callable[[int], None]] = None,
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


# ---- semaphores -------------------------------------------------------------------------

def _sembufs(ops: Any) -> Any:
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
            check_int("semop", f"ops[{i}].{name}", value, ctype)
    raise TypeError(f"semop: ops could not be converted: {seq!r}")


def semop(semid: int, ops: Iterable[Any], timeout: Optional[float]) -> None:
    """semop/semtimedop of ``ops``, (sem_num, sem_op[, sem_flg]) tuples."""
    buf = _sembufs(ops)
    _retried("semop", _SEMOP_ARGS, timeout, None, lib.ipcb_semop, semid, buf, len(buf))


def semop1(semid: int, num: int, op: int, flg: int, timeout: Optional[float]) -> None:
    """semop with a single operation, without building an array in Python."""
    _retried("semop", _SEMOP1_ARGS, timeout, None, lib.ipcb_semop1, semid, num, op, flg)


# The semaphore hot path: a C function of a single argument is called by cffi
# without an argument tuple, which saves about a quarter of the time of a
# five-argument call. Each returns 0, or the errno for semop_packed_failed.
semop_packed: Callable[[int], int] = lib.ipcb_semop_packed
semop_packed_undo: Callable[[int], int] = lib.ipcb_semop_packed_undo


def semop_pack(semid: int, num: int, op: int) -> int:
    """The argument of semop_packed for one operation (semid >= 0, op in -32768..32767)."""
    return semid | num << 32 | op << 48


def semop_packed_failed(err: int, semid: int, num: int, op: int, flg: int) -> None:
    """Raise the error ``err`` of a semop_packed call; after EINTR do the operation again."""
    if err != EINTR:
        raise syscall_error(err, f"semop(semid={semid})")
    semop1(semid, num, op, flg, None)


def semctl_val(call: str, semid: int, semnum: int, cmd: int, val: int) -> int:
    """semctl with an int argument or none (GETVAL, SETVAL, IPC_RMID...): its result."""
    r = lib.ipcb_semctl_val(semid, semnum, cmd, val)
    if r < 0:
        raise syscall_error(-r, call)
    return int(r)


def semctl_getall(call: str, semid: int, nsems: int) -> List[int]:
    """GETALL into an array of ``nsems`` values."""
    values = ffi.new("unsigned short[]", nsems)
    r = lib.ipcb_semctl_array(semid, GETALL, values)
    if r < 0:
        raise syscall_error(-r, call)
    return list(values)


def semctl_setall(call: str, semid: int, values: Sequence[int]) -> None:
    """SETALL of checked values."""
    r = lib.ipcb_semctl_array(semid, SETALL, ffi.new("unsigned short[]", values))
    if r < 0:
        raise syscall_error(-r, call)


def ledger() -> Dict[int, List[int]]:
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


def ledger_drop(semid: int) -> None:
    """Forget the ledger's entry for a set that no longer exists."""
    lib.ipcb_ledger_drop(semid)


# ---- shared memory ------------------------------------------------------------------------

def shmat(call: str, shmid: int, flags: int, cls: Any) -> Any:
    """shmat(2) at an address of the kernel's choosing, as an instance of ``cls`` (an
    :class:`mmap.mmap` subclass whose ``__new__`` refuses: it is made here) whose mapping
    is the segment; ``_shmid`` and ``_readonly`` set."""
    at = ffi.new("void **")
    try:
        err = lib.ipcb_shmat(shmid, flags, at)
    except (TypeError, OverflowError) as e:
        raise explain("shmat", e, shmid=(shmid, "int"), flags=(flags, "int")) from None
    if err:
        raise syscall_error(err, call)
    # The mapping the attachment's mmap holds becomes the segment's, in place: the
    # segment stays attached at the kernel's address (at[0]) until then, so its id
    # cannot name another segment meanwhile. Whatever interrupts this, at[0] says
    # whether that first attachment is still to be detached.
    try:
        size = segment_size(call, shmid)
        readonly = bool(flags & SHM_RDONLY)
        att = mmap.mmap.__new__(cls, -1, size, lib.MAP_PRIVATE | lib.MAP_NORESERVE,
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


def segment_size(call: str, shmid: int) -> int:
    """The size of a segment this process holds attached (so the id cannot change)."""
    return current("shm", call, shmid, "shm_segsz")


# ---- namespaces, signals -------------------------------------------------------------------

def setns_ipc(fd: int) -> None:
    """setns(2) into the IPC namespace open as ``fd``, for the calling thread."""
    err = lib.ipcb_setns_ipc(fd)
    if err:
        raise syscall_error(err, f"setns(fd={fd}, CLONE_NEWIPC)")


def unshare_ipc() -> None:
    """unshare(2) a fresh IPC namespace, for the calling thread."""
    err = lib.ipcb_unshare_ipc()
    if err:
        raise syscall_error(err, "unshare(CLONE_NEWIPC)")


def wake_signal() -> int:
    """The real-time signal that interrupts msgsnd/msgrcv at a deadline (-1: none free)."""
    return int(lib.ipcb_wake_signal())


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
        accel.bind(calls_address())
    except ImportError as e:  # built from other sources than the shim: left unused
        import warnings

        warnings.warn(f"{e}; ipcbind runs without its accelerator", RuntimeWarning, stacklevel=2)
        return None
    return accel


def calls_address() -> int:
    """The address of the shim's table of C functions (src/calls.h)."""
    return int(ffi.cast("uintptr_t", lib.ipcb_calls()))


ACCEL = _load_accelerator()
"""The accelerator module in use, or None: the cffi path alone."""


def accelerate_queue(queue_cls: type, message_cls: type,
                     send_failed: Callable[[int, int, int, Any, int], None]) -> None:
    """Give ``queue_cls`` the accelerator's send and receive, which return ``message_cls``;
    ``send_failed(err, msqid, mtype, data, flags)`` raises what a failed send raises."""
    if ACCEL is not None:
        ACCEL.accelerate_queue(queue_cls, message_cls, send_failed, msgrcv_failed)


def accelerate_semaphore(cls: type) -> None:
    """Give ``cls`` the accelerator's acquire, release, __enter__ and __exit__."""
    if ACCEL is not None:
        ACCEL.accelerate_semaphore(cls, semop_packed_failed)
