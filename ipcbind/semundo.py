"""Semaphore undo state: ``/proc/<pid>/semundo``, and what user space can do without it.

Every process that makes a semop with SEM_UNDO gets, per semaphore, a ``semadj``: the
negated sum of those operations, added back to the semaphore when the process exits.
A 2008 proposal would have shown it in ``/proc/<pid>/semundo`` (one line per set: the
semid, then one adjustment per semaphore) and let a process write its own back through
``/proc/self/semundo``. It never reached mainline: on today's kernels the file is
absent, and :func:`read_semundo` / :func:`write_semundo` raise
:class:`SemundoNotSupportedError` (ENOSYS) there.

Without the file, :func:`tracked_semundo` tells the undo state this process made
through ipcbind, and :func:`restore_semundo` makes the kernel hold given adjustments
for the calling process, without changing any semaphore's value. Together they save
and restore a worker's undo state.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _seam
from . import syscalls
from ._limits import INT_MAX, SEMADJ_MAX, SEMADJ_MIN
from .errors import OutOfRangeError, SemundoNotSupportedError, TooBigError, gone, syscall_error
from .syscalls import GETALL, IPC_INFO, IPC_NOWAIT, IPC_STAT, SEM_UNDO

__all__ = [
    "SemundoNotSupportedError",
    "read_semundo",
    "write_semundo",
    "semundo_supported",
    "restore_semundo",
    "tracked_semundo",
]

Semundo = Dict[int, List[int]]
"""Undo state: semid -> one adjustment (semadj) per semaphore of the set."""

PathArg = Union[str, "os.PathLike[str]"]

_TOKEN = re.compile(rb"[+-]?[0-9]+")
# Numbers with more significant digits fit neither a semid nor an adjustment.
_DIGITS = 40
# How much of a malformed line or word an error message quotes.
_SHOWN = 80
# The kernel retries nothing for us: when another process moves a value between our
# GETALL and our semop, the planned order may no longer fit and the call fails
# without effect. A few fresh attempts make that race practically invisible.
_ATTEMPTS = 5


# ---- the file -----------------------------------------------------------------------

def _pid_dir(call: str, pid: Optional[int]) -> str:
    """The directory name under proc_root for ``pid`` ("self" for None)."""
    if pid is None:
        return "self"
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"{call}: pid must be an int or None, not {type(pid).__name__}")
    if pid <= 0:
        raise ValueError(f"{call}: pid must be > 0, got {pid}")
    return str(pid)


def _absent(root: str, name: str, path: str) -> OSError:
    """The error for a semundo file that does not exist: no process, or no support."""
    proc_dir = os.path.join(root, name)
    if os.path.isdir(proc_dir):
        return SemundoNotSupportedError(path)
    what = "this process" if name == "self" else f"process {name}"
    return ProcessLookupError(errno.ESRCH, f"no such process: {what} ({proc_dir} does not exist)",
                              proc_dir)


def semundo_supported(*, proc_root: PathArg = "/proc") -> bool:
    """Whether the kernel provides ``/proc/<pid>/semundo`` (one stat of /proc/self/semundo).

    Args:
        proc_root: where proc is mounted.

    Returns:
        True when :func:`read_semundo` and :func:`write_semundo` can work.
    """
    return os.path.exists(os.path.join(os.fspath(proc_root), "self", "semundo"))


def read_semundo(pid: Optional[int] = None, *, proc_root: PathArg = "/proc") -> Semundo:
    """Read a process's undo state from ``<proc_root>/<pid>/semundo``.

    The file holds one line per semaphore set: the semid, then one adjustment per
    semaphore, separated by any whitespace; blank lines are ignored.

    Args:
        pid: the process; None for this one (``<proc_root>/self``).
        proc_root: where proc is mounted (a directory laid out like /proc for tests).

    Returns:
        ``{semid: [adj, ...]}`` in the file's order.

    Raises:
        ProcessLookupError: ESRCH, ``<proc_root>/<pid>`` does not exist.
        SemundoNotSupportedError: ENOSYS, the process exists but the file does not,
            as on every mainline kernel.
        PermissionError: EACCES from the kernel, passed through.
        ValueError: malformed content; the message names the line. Also a pid <= 0.
        TypeError: pid is not an int.
    """
    root = os.fspath(proc_root)
    name = _pid_dir("read_semundo", pid)
    path = os.path.join(root, name, "semundo")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _absent(root, name, path) from None
    return _parse(path, raw)


def _parse(path: str, raw: bytes) -> Semundo:
    result: Semundo = {}
    first_seen: Dict[int, int] = {}
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        tokens = line.split()
        if not tokens:
            continue

        def bad(why: str) -> ValueError:
            text = line.decode("ascii", "backslashreplace").strip()
            shown = repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}..."
            return ValueError(f"{path}: line {lineno}: {why}: {shown}")

        for tok in tokens:
            word = tok.decode("ascii", "backslashreplace")
            if not _TOKEN.fullmatch(tok):
                raise bad(f"{word[:_SHOWN]!r} is not a decimal integer")
            # Python refuses to convert very long digit strings (ValueError naming no line).
            if len(tok.lstrip(b"+-").lstrip(b"0")) > _DIGITS:
                raise bad(f"the {len(tok)}-character number {word[:12]}... is far outside "
                          "any valid range")
        semid, values = _number(tokens[0]), [_number(t) for t in tokens[1:]]
        if not 0 <= semid <= INT_MAX:
            raise bad(f"semid {semid} is not a valid identifier (0..{INT_MAX})")
        if not values:
            raise bad(f"semid {semid} has no adjustment (one per semaphore is needed)")
        for i, v in enumerate(values):
            if not SEMADJ_MIN <= v <= SEMADJ_MAX:
                raise bad(f"adjustment {v} of semaphore {i} is outside the C short range "
                          f"{SEMADJ_MIN}..{SEMADJ_MAX}")
        if semid in first_seen:
            raise bad(f"semid {semid} already appeared on line {first_seen[semid]}")
        first_seen[semid] = lineno
        result[semid] = values
    return result


def _number(tok: bytes) -> int:
    """A token of _TOKEN with at most _DIGITS significant digits, as an int (leading
    zeros dropped first: int() counts them against its limit on digits)."""
    value = int(tok.lstrip(b"+-").lstrip(b"0") or b"0")
    return -value if tok.startswith(b"-") else value


def _check_entries(call: str, entries: Mapping[int, Sequence[int]]) -> Semundo:
    """entries as a fresh dict of lists, or TypeError/ValueError saying what is wrong."""
    if not isinstance(entries, Mapping):
        raise TypeError(f"{call}: entries must be a mapping {{semid: [adj, ...]}}, "
                        f"not {type(entries).__name__}")
    clean: Semundo = {}
    for semid, adjs in entries.items():
        if isinstance(semid, bool) or not isinstance(semid, int):
            raise TypeError(f"{call}: semid must be an int, not {type(semid).__name__} "
                            f"({semid!r})")
        if not 0 <= semid <= INT_MAX:
            raise ValueError(f"{call}: semid {semid} is not a valid identifier (0..{INT_MAX})")
        if isinstance(adjs, (str, bytes, bytearray)) or not isinstance(adjs, Sequence):
            raise TypeError(f"{call}: set {semid}: adjustments must be a list of int, "
                            f"not {type(adjs).__name__}")
        if not adjs:
            raise ValueError(f"{call}: set {semid}: no adjustment given (one per semaphore)")
        values = []
        for i, v in enumerate(adjs):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{call}: set {semid}, semaphore {i}: adjustment must be an "
                                f"int, not {type(v).__name__} ({v!r})")
            if not SEMADJ_MIN <= v <= SEMADJ_MAX:
                raise ValueError(f"{call}: set {semid}, semaphore {i}: adjustment {v} is "
                                 f"outside the C short range {SEMADJ_MIN}..{SEMADJ_MAX}")
            values.append(v)
        clean[semid] = values
    return clean


def write_semundo(entries: Mapping[int, Sequence[int]], *, proc_root: PathArg = "/proc",
                  pid: Optional[int] = None) -> None:
    """Write this process's undo state to ``<proc_root>/self/semundo``.

    Each entry becomes a line ``semid adj0 adj1 ...``, the format :func:`read_semundo`
    reads, all in one write. Only the calling process can be written: the proposed
    kernel interface accepted writes to /proc/self/semundo only.

    Args:
        entries: ``{semid: [adj, ...]}``, each adjustment within -32768..32767.
        proc_root: where proc is mounted.
        pid: None or this process's pid; any other pid is refused.

    Raises:
        SemundoNotSupportedError: ENOSYS, the file does not exist (every mainline kernel);
            :func:`restore_semundo` works without it.
        ValueError: pid is another process; or an entry is out of range or empty.
        TypeError: entries is not a mapping of int to a list of int.
        OSError: whatever the kernel says about the write (EACCES, EINVAL...).
    """
    if pid is not None and int(_pid_dir("write_semundo", pid)) != os.getpid():
        raise ValueError(f"write_semundo: only the calling process's undo state can be "
                         f"written (/proc/self/semundo); pid {pid} is not this process "
                         f"({os.getpid()})")
    text = "".join(f"{semid} {' '.join(map(str, adjs))}\n"
                   for semid, adjs in _check_entries("write_semundo", entries).items())
    root = os.fspath(proc_root)
    path = os.path.join(root, "self", "semundo")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _absent(root, "self", path) from None
    try:
        data = memoryview(text.encode("ascii"))
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


# ---- undo state from user space ---------------------------------------------------------

Op = Tuple[int, int, int]


def _pairs(num: int, adj: int, value: int, semvmx: int) -> List[Op]:
    """Operations that move the semadj of semaphore ``num`` by ``adj`` and leave its
    value where it is, never outside 0..semvmx on the way.

    Each pair is a SEM_UNDO op and its opposite without SEM_UNDO (the kernel applies
    the ops of one call in order, checking each against the running value). The
    pair goes first in whichever direction has room. The larger room is at least
    semvmx // 2, so an adjustment larger than both rooms, or -32768 (whose opposite
    +32768 is not a short), is split into two pairs.
    """
    down, up = value, semvmx - value
    step_max = max(down, up)
    ops: List[Op] = []
    left = adj
    while left:
        step = max(-step_max, min(step_max, left))
        undo = (num, -step, SEM_UNDO | IPC_NOWAIT)
        plain = (num, step, IPC_NOWAIT)
        # The SEM_UNDO op moves the value by -step; it may go first if that fits.
        ops += [undo, plain] if 0 <= value - step <= semvmx else [plain, undo]
        left -= step
    return ops


def _plan(semid: int, adjs: List[int], semvmx: int) -> List[Op]:
    values = syscalls.semctl(semid, 0, GETALL)
    ops: List[Op] = []
    for num, adj in enumerate(adjs):
        if adj:
            ops += _pairs(num, adj, values[num], semvmx)
    return ops


def _max_ops(adjs: List[int], semvmx: int) -> int:
    """The most operations _pairs can need for these adjustments, whatever the values."""
    return sum(2 if abs(a) <= (semvmx + 1) // 2 else 4 for a in adjs if a)


def _overflowing(semid: int, adjs: List[int], semvmx: int) -> Optional[int]:
    """The first semaphore whose semadj cannot take its adjustment, found without change.

    Each probe is that semaphore's pairs followed by an op that always blocks
    (-32768 from a value of at most SEMVMX); with IPC_NOWAIT the call fails, and the
    kernel checks the semadj range of the pairs before it reaches the blocking op:
    ERANGE names the culprit, EAGAIN clears it.
    """
    values = syscalls.semctl(semid, 0, GETALL)
    for num, adj in enumerate(adjs):
        if not adj:
            continue
        probe = _pairs(num, adj, values[num], semvmx) + [(num, SEMADJ_MIN, IPC_NOWAIT)]
        try:
            syscalls.semop(semid, probe)
        except OSError as e:
            if e.errno == errno.ERANGE:
                return num
    return None


def _adjust(call: str, semid: int, adjs: List[int], semvmx: int) -> None:
    """Move this process's semadj of set ``semid`` by ``adjs`` in one semop, or not at all."""
    for _ in range(_ATTEMPTS):
        try:
            syscalls.semop(semid, _plan(semid, adjs, semvmx))
            return
        except OSError as e:
            err = e.errno or 0
            if err not in (errno.EAGAIN, errno.ERANGE):
                raise syscall_error(err, f"{call}: set {semid}") from e
            num = _overflowing(semid, adjs, semvmx) if err == errno.ERANGE else None
            if num is not None:
                raise OutOfRangeError(
                    errno.ERANGE,
                    f"{call}: set {semid}, semaphore {num}: the semadj this process holds "
                    f"there plus {adjs[num]} would leave the C short range "
                    f"{SEMADJ_MIN}..{SEMADJ_MAX}; nothing was changed in this set") from e
            last = e
    raise syscall_error(err, f"{call}: set {semid}: the semaphore values kept changing "
                             f"under {_ATTEMPTS} attempts; nothing was changed in this "
                             f"set") from last


def _existing_nsems(call: str, semid: int) -> int:
    try:
        return int(syscalls.semctl(semid, 0, IPC_STAT).nsems)
    except OSError as e:
        err = e.errno or 0
        hint = " (no such semaphore set)" if gone(e) else ""
        raise syscall_error(err, f"{call}: set {semid}{hint}") from e


def restore_semundo(entries: Mapping[int, Sequence[int]], *,
                    proc_root: PathArg = "/proc") -> None:
    """Make the kernel hold these undo adjustments for the calling process.

    For each set, one atomic semop holds, per semaphore with a non-zero adjustment,
    a SEM_UNDO operation and its opposite without SEM_UNDO: the value ends where it
    was and the semadj moves by the adjustment. The order of each pair is chosen
    from the current value so the value never leaves 0..SEMVMX, even for a moment;
    an adjustment too large for either order is split into two pairs. Adjustments
    add to any the process holds already, so a freshly started process ends with
    exactly ``entries``. At its exit the kernel applies them, as it would have for
    the process they were saved from.

    All entries are checked (types, ranges, that each set exists and is large
    enough) before anything changes. Sets are restored one after another; if one
    fails, those already restored are put back as they were.

    Where the kernel provides ``/proc/self/semundo``, the entries (one value per
    semaphore) are written there instead, through the kernel's own interface.

    Args:
        entries: ``{semid: [adj, ...]}`` as :func:`read_semundo` or
            :func:`tracked_semundo` return it; a list shorter than the set leaves the
            remaining semaphores alone.
        proc_root: where proc is mounted.

    Raises:
        OutOfRangeError: ERANGE, the process's semadj would leave -32768..32767; the
            message names the set and the semaphore.
        TooBigError: E2BIG, a set needs more operations than SEMOPM allows in one call.
        OSError: a set does not exist (EINVAL), no permission (EACCES), or the values
            kept changing under every attempt (EAGAIN).
        ValueError: an adjustment is out of range, a list is empty or longer than the set.
        TypeError: entries is not a mapping of int to a list of int.
    """
    call = "restore_semundo"
    clean = _check_entries(call, entries)
    limits = syscalls.semctl(0, 0, IPC_INFO)[1]
    for semid, adjs in clean.items():
        nsems = _existing_nsems(call, semid)
        if len(adjs) > nsems:
            raise ValueError(f"{call}: set {semid} has {nsems} semaphores, but "
                             f"{len(adjs)} adjustments were given")
        adjs += [0] * (nsems - len(adjs))
        need = _max_ops(adjs, limits.semvmx)
        if need > limits.semopm:
            raise TooBigError(errno.E2BIG, f"{call}: set {semid} may need {need} operations, "
                                           f"more than SEMOPM ({limits.semopm}) allows in one "
                                           f"atomic semop")
    if semundo_supported(proc_root=proc_root):
        write_semundo(clean, proc_root=proc_root)
        return
    done: List[int] = []
    for semid, adjs in clean.items():
        if not any(adjs):
            continue
        try:
            _adjust(call, semid, adjs, limits.semvmx)
        except OSError as e:
            _roll_back(call, e, done, clean, limits.semvmx)
            raise
        done.append(semid)


def _roll_back(call: str, exc: OSError, done: List[int], entries: Semundo,
               semvmx: int) -> None:
    """Put back the sets already restored; say in exc's message which could not be."""
    stuck = []
    for semid in reversed(done):
        try:
            _adjust(call, semid, [-a for a in entries[semid]], semvmx)
        except OSError as e:
            stuck.append(f"set {semid} ({os.strerror(e.errno or 0)})")
    if stuck:
        exc.strerror = (f"{exc.strerror}; the sets restored before it could not be put back: "
                        f"{', '.join(stuck)}")


def tracked_semundo() -> Semundo:
    """The undo state this process created through ipcbind, shaped like :func:`read_semundo`.

    ipcbind keeps a per-process ledger of every successful semop with SEM_UNDO made
    through it, from any thread: it is emptied in a forked child (semadj is not
    inherited), cleared for a semaphore when this process sets its value with
    SETVAL or SETALL (which zero the semadj in every process), and dropped for a set
    this process removes. Here each set is padded to one adjustment per semaphore
    (IPC_STAT), sets that no longer exist are dropped (and forgotten), and so are
    sets with nothing to undo.

    What it cannot see: SEM_UNDO operations made by other code in the process (C
    libraries, other bindings); SETVAL or SETALL by other processes, which zero the
    kernel's semadj behind its back; a set removed and its identifier reused by a new
    set before this call notices (the old numbers are then reported for the new
    set); undo state inherited across execve (the kernel keeps it, the new program's
    ledger starts empty); and unshare or setns of the IPC namespace, after which the
    kernel has applied and dropped the thread's undo state while the ledger, keyed by
    semid alone, still lists it.

    Returns:
        ``{semid: [adj, ...]}``, by semid.

    Raises:
        OSError: IPC_STAT failed for a reason other than the set being gone or
            unreadable (a set this process may no longer read is reported as the
            ledger knows it, as far as its highest semaphore used).
    """
    result: Semundo = {}
    for semid, adjs in _seam.ledger().items():
        try:
            nsems = syscalls.semctl(semid, 0, IPC_STAT).nsems
        except OSError as e:
            if gone(e):
                _seam.ledger_drop(semid)
                continue
            if e.errno not in (errno.EACCES, errno.EPERM):
                raise
            nsems = len(adjs)
        if len(adjs) > nsems:
            # A set with fewer semaphores holds the id now: the ledger's set is gone.
            _seam.ledger_drop(semid)
            continue
        if any(adjs):
            result[semid] = adjs + [0] * (nsems - len(adjs))
    return dict(sorted(result.items()))
