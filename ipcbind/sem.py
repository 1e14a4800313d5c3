"""Semaphore sets: :class:`SemaphoreSet` and the :class:`Semaphore` objects it hands out.

A System V semaphore set is an array of counters (0..32767) that the kernel changes
atomically. :meth:`SemaphoreSet.op` applies several operations on several semaphores
as one, or none of them; :class:`Semaphore` (``semset[i]``) is the everyday view of one
counter: ``acquire`` (wait until it can subtract), ``release`` (add), ``wait_zero``.

``undo=True`` asks the kernel to record the operation in this process's ``semadj``
and to reverse it when the process exits, however it exits (SIGKILL included): a
holder that crashes cannot leave a lock taken.

Waiting: ``timeout`` (seconds) uses semtimedop(2) and raises :class:`TimeoutError`
when it expires; ``block=False`` uses IPC_NOWAIT and raises :class:`BlockingIOError`
when the operation would wait. A signal that interrupts a wait runs the program's
handler, then the wait resumes with what is left of the timeout (PEP 475).
"""

from __future__ import annotations

import operator
from errno import EINVAL
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

from ._base import IpcObject, _integer
from ._seam import (accelerate_semaphore, semop1, semop_pack, semop_packed, semop_packed_failed,
                    semop_packed_undo)
from ._limits import SEMVMX, unsigned_key
from .errors import timeout_error
from .syscalls import (
    GETALL,
    GETNCNT,
    GETPID,
    GETVAL,
    GETZCNT,
    IPC_NOWAIT,
    IPC_PRIVATE,
    IPC_RMID,
    IPC_STAT,
    SEM_UNDO,
    SETALL,
    SETVAL,
    SemidDs,
    SemOp,
    semctl,
    semget,
    semop,
)

__all__ = ["SemaphoreSet", "Semaphore", "SEMVMX"]

# The usual delta. Compared by identity in acquire and release: CPython keeps one
# object for each small int, so the common call skips the type and range checks
# with a single comparison, and anything else (True, 1.0, another int type) takes
# the checked path.
_ONE = 1


def _amount(what: str, delta: Any) -> int:
    """The checked ``delta`` of an acquire or release (the fast path tested plain ints)."""
    amount = _integer(f"{what}: delta", delta)
    if not 0 < amount <= SEMVMX:
        raise ValueError(f"{what}: delta must be in 1..{SEMVMX}, got {amount}")
    return amount


class SemaphoreSet(IpcObject[SemidDs]):
    """A System V semaphore set.

    Make one with :meth:`create`, :meth:`open` or :meth:`from_id`. ``len(s)`` is the
    number of semaphores, ``s[i]`` (negative ``i`` counts from the end) the
    :class:`Semaphore` at index ``i``, and iterating yields every semaphore in order.

    As a context manager the set removes itself on exit, but only if this object
    created it (:attr:`created`), in the process that created it (not in a forked
    child), and has not removed it already: a set that was merely opened belongs to
    someone else and is left alone. :meth:`remove` (IPC_RMID) wakes every process
    waiting on the set with ``IdentifierRemovedError``.

    Example::

        with SemaphoreSet.create(2, values=[1, 0]) as s:
            s.op([(0, -1), (1, +1)])        # atomically move one unit from 0 to 1
            with s[1]:                       # acquire (with undo) ... release
                ...
    """

    __slots__ = ("_nsems",)
    _kind = "semaphore set"
    _id_name = "semid"

    def __init__(self, semid: int, key: Optional[int] = None, nsems: Optional[int] = None,
                 created: bool = False) -> None:
        """Wrap an existing identifier; use :meth:`create`, :meth:`open` or :meth:`from_id`."""
        super().__init__(semid, key, created)
        self._nsems = nsems

    @staticmethod
    def _ctl(ident: int, cmd: int) -> Any:
        return semctl(ident, 0, cmd)

    def _learn(self, ds: SemidDs) -> None:
        super()._learn(ds)
        self._nsems = ds.nsems

    # ---- making one ----------------------------------------------------------------

    @classmethod
    def create(cls, nsems: int, key: int = IPC_PRIVATE, mode: int = 0o600,
               values: Optional[Sequence[int]] = None, exclusive: bool = False) -> SemaphoreSet:
        """Create a set of ``nsems`` semaphores, or open the one that has ``key``.

        With ``key=IPC_PRIVATE`` (the default) a new set is always made. With another
        key an existing set is opened unless ``exclusive`` is true (then
        :class:`FileExistsError`); :attr:`created` tells which happened. ``mode`` and
        ``values`` apply only when this call creates the set; an existing set keeps
        its own. Between creation and the setting of ``values`` another process that
        opens the key can see the set with every value 0 (System V has no atomic
        create-and-initialise).

        Args:
            nsems: number of semaphores (1..SEMMSL, 32000 by default).
            key: IPC_PRIVATE, or a key (e.g. from :func:`ipcbind.ftok`), signed or unsigned.
            mode: permission bits, e.g. 0o600.
            values: initial value of each semaphore (``nsems`` of them, 0..32767); all 0
                when omitted.
            exclusive: fail if a set with ``key`` already exists.

        Raises:
            ValueError: nsems < 1, mode beyond 0o777, values of the wrong length or range.
            FileExistsError: ``exclusive`` and the key is taken.
            OSError: the kernel refused (EINVAL: nsems above SEMMSL, or an existing set
                with fewer than ``nsems`` semaphores; ENOSPC: too many sets).
        """
        nsems = _integer("nsems", nsems)
        if nsems < 1:
            raise ValueError(f"nsems must be >= 1, got {nsems}")
        initial = None if values is None else cls._checked_values(values, nsems)

        def get(key: int, flags: int) -> int:
            try:
                return semget(key, nsems, flags)
            except OSError as e:
                if flags or e.errno != EINVAL:
                    raise
                have = semctl(semget(key, 0), 0, IPC_STAT).nsems
                raise OSError(EINVAL, f"semget(key={unsigned_key(key):#x}): the existing set "
                                      f"has {have} semaphores, fewer than nsems={nsems}") from None

        semid, k, created = cls._get(key, mode, exclusive, get)
        if created and initial is not None:
            try:
                semctl(semid, 0, SETALL, initial)
            except BaseException:
                semctl(semid, 0, IPC_RMID)
                raise
        return cls(semid, k, nsems if created else None, created)

    @staticmethod
    def _checked_values(values: Sequence[int], nsems: int) -> List[int]:
        try:
            wanted = list(values)
        except TypeError:
            raise TypeError(f"values must be a sequence of int, "
                            f"not {type(values).__name__}") from None
        if len(wanted) != nsems:
            raise ValueError(f"values must hold one value per semaphore ({nsems}), "
                             f"got {len(wanted)}")
        for i, v in enumerate(wanted):
            wanted[i] = v = _integer(f"values[{i}]", v)
            if not 0 <= v <= SEMVMX:
                raise ValueError(f"values[{i}] must be in 0..{SEMVMX}, got {v}")
        return wanted

    @classmethod
    def open(cls, key: int) -> SemaphoreSet:
        """Open the existing set that has ``key``.

        Raises:
            ValueError: ``key`` is IPC_PRIVATE (which names no existing set).
            FileNotFoundError: no set has this key.
        """
        return cls(*cls._open_key(key, lambda k, flags: semget(k, 0, flags)))

    # ---- what it is ------------------------------------------------------------------

    def __len__(self) -> int:
        if self._nsems is None:
            self._nsems = self.stat().nsems
        return self._nsems

    def _index(self, index: Any) -> int:
        i = _integer("semaphore index", index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"semaphore index {index} out of range for set {self._id} "
                             f"of {n} semaphores")
        return i

    def __getitem__(self, index: int) -> Semaphore:
        return Semaphore(self, self._index(index))

    def __iter__(self) -> Iterator[Semaphore]:
        return (Semaphore(self, i) for i in range(len(self)))

    def _repr_extra(self) -> str:
        return "" if self._nsems is None else f" nsems={self._nsems}"

    # ---- operations --------------------------------------------------------------------

    def op(self, ops: Iterable[SemOp], timeout: Optional[float] = None, *,
           undo: bool = False, block: bool = True) -> None:
        """Apply several operations atomically: all of them, or none.

        Each operation is ``(index, delta)`` or ``(index, delta, flags)``: a negative
        delta waits until the semaphore can be decreased by that much, a positive one
        adds, 0 waits until the value is zero; ``flags`` may hold IPC_NOWAIT and
        SEM_UNDO. The call waits until every operation can be applied at once.

        Args:
            ops: the operations, in order (at most SEMOPM, 500 by default).
            timeout: seconds to wait at most; None waits for ever.
            undo: add SEM_UNDO to every operation.
            block: False adds IPC_NOWAIT to every operation.

        Raises:
            TimeoutError: ``timeout`` expired (only when no operation has IPC_NOWAIT:
                then the kernel's EAGAIN could mean either, and BlockingIOError is raised).
            BlockingIOError: an IPC_NOWAIT operation would have waited.
            ValueError: no operations, or a timeout with ``block=False``.
            IndexError: an index outside the set.
            OSError: from the kernel, e.g. ERANGE (:class:`OutOfRangeError`) for a value
                above 32767, EIDRM if the set is removed while waiting.
        """
        extra = (SEM_UNDO if undo else 0) | (0 if block else IPC_NOWAIT)
        if timeout is not None and not block:
            raise ValueError("op: a timeout cannot be combined with block=False")
        try:
            items = list(ops)
        except TypeError:
            raise TypeError(f"op: ops must be an iterable of (index, delta[, flags]), "
                            f"not {type(ops).__name__}") from None
        prepared = []
        nowait = not block
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or not 2 <= len(item) <= 3:
                raise TypeError(f"op: ops[{i}] must be (index, delta) or "
                                f"(index, delta, flags), got {item!r}")
            flags = _integer(f"op: flags of ops[{i}]", item[2]) if len(item) == 3 else 0
            nowait = nowait or bool(flags & IPC_NOWAIT)
            prepared.append((self._index(item[0]), item[1], flags | extra))
        if not prepared:
            raise ValueError("op: no operations given")
        try:
            semop(self._id, prepared, timeout)
        except BlockingIOError:
            if timeout is None or nowait:
                raise
            raise timeout_error(f"op(semid={self._id})", timeout) from None

    @property
    def values(self) -> List[int]:
        """Every semaphore's value (GETALL); assign a sequence to set them all (SETALL).

        Setting values resets every process's undo adjustment for these semaphores.
        """
        return list(semctl(self._id, 0, GETALL))

    @values.setter
    def values(self, values: Sequence[int]) -> None:
        semctl(self._id, 0, SETALL, self._checked_values(values, len(self)))


class Semaphore:
    """One semaphore of a :class:`SemaphoreSet` (``semset[i]``).

    As a context manager it acquires 1 with undo on entry and releases 1 with undo
    on exit: if the process dies inside the block, the kernel gives the unit back.
    Use :meth:`acquire` and :meth:`release` directly for other amounts, timeouts or
    no undo.
    """

    __slots__ = ("_set", "_semid", "_num", "_take1", "_give1")

    def __init__(self, semset: SemaphoreSet, index: int) -> None:
        """Use ``semset[index]``; ``index`` is taken as already checked."""
        self._set = semset
        self._semid = semset.id
        self._num = index
        # The fast path's packed arguments for the usual delta of 1, made once:
        # packing costs Python about as much as the C call itself.
        self._take1 = semop_pack(self._semid, index, -1)
        self._give1 = semop_pack(self._semid, index, 1)

    @property
    def set(self) -> SemaphoreSet:
        """The set this semaphore belongs to."""
        return self._set

    @property
    def index(self) -> int:
        """Its index in the set (never negative)."""
        return self._num

    def acquire(self, delta: int = 1, undo: bool = False, timeout: Optional[float] = None,
                block: bool = True) -> None:
        """Subtract ``delta``, first waiting until the value is at least ``delta``.

        Args:
            delta: 1..32767.
            undo: SEM_UNDO: the kernel adds ``delta`` back when this process exits,
                unless it was released with undo before.
            timeout: seconds to wait at most (0: do not wait); None waits for ever.
            block: False: do not wait at all.

        Raises:
            TimeoutError: ``timeout`` expired.
            BlockingIOError: ``block=False`` and the value is below ``delta``.
            ValueError: delta outside 1..32767, or a timeout with ``block=False``.
            OSError: from the kernel, e.g. EIDRM (:class:`IdentifierRemovedError`) when
                the set is removed while waiting, ERANGE (:class:`OutOfRangeError`)
                when the undo adjustment would leave -32768..32767.
        """
        if delta is _ONE and block and timeout is None:
            err = (semop_packed_undo if undo else semop_packed)(self._take1)
            if err:
                semop_packed_failed(err, self._semid, self._num, -1, SEM_UNDO if undo else 0)
            return
        if type(delta) is not int or not 0 < delta <= SEMVMX:
            delta = _amount("acquire", delta)
        if block and timeout is None:
            packed = semop_pack(self._semid, self._num, -delta)
            err = (semop_packed_undo if undo else semop_packed)(packed)
            if err:
                semop_packed_failed(err, self._semid, self._num, -delta, SEM_UNDO if undo else 0)
        else:
            self._wait("acquire", -delta, SEM_UNDO if undo else 0, timeout, block)

    def release(self, delta: int = 1, undo: bool = False) -> None:
        """Add ``delta`` (never waits).

        Args:
            delta: 1..32767.
            undo: SEM_UNDO: pair it with an acquire that used undo, so that the
                process's adjustment returns to zero.

        Raises:
            ValueError: delta outside 1..32767.
            OSError: ERANGE (:class:`OutOfRangeError`) if the value would exceed 32767.
        """
        if delta is _ONE:
            packed = self._give1
        else:
            if type(delta) is not int or not 0 < delta <= SEMVMX:
                delta = _amount("release", delta)
            packed = semop_pack(self._semid, self._num, delta)
        err = (semop_packed_undo if undo else semop_packed)(packed)
        if err:
            semop_packed_failed(err, self._semid, self._num, delta, SEM_UNDO if undo else 0)

    def wait_zero(self, timeout: Optional[float] = None, block: bool = True) -> None:
        """Wait until the value is zero.

        Raises:
            TimeoutError: ``timeout`` expired.
            BlockingIOError: ``block=False`` and the value is not zero.
            ValueError: a timeout with ``block=False``.
        """
        if block and timeout is None:
            semop1(self._semid, self._num, 0, 0, None)
        else:
            self._wait("wait_zero", 0, 0, timeout, block)

    def _wait(self, what: str, op: int, flags: int, timeout: Optional[float],
              block: bool) -> None:
        if not block:
            if timeout is not None:
                raise ValueError(f"{what}: a timeout cannot be combined with block=False")
            semop1(self._semid, self._num, op, flags | IPC_NOWAIT, None)
            return
        try:
            semop1(self._semid, self._num, op, flags, timeout)
        except BlockingIOError:
            # Without IPC_NOWAIT, EAGAIN from semtimedop means the timeout expired.
            raise timeout_error(f"{what}(semid={self._semid}, index={self._num})",
                             timeout) from None

    @property
    def value(self) -> int:
        """The current value (GETVAL); assign to set it (SETVAL), which resets every
        process's undo adjustment for this semaphore."""
        return int(semctl(self._semid, self._num, GETVAL))

    @value.setter
    def value(self, value: int) -> None:
        value = _integer("value", value)
        if not 0 <= value <= SEMVMX:
            raise ValueError(f"value must be in 0..{SEMVMX}, got {value}")
        semctl(self._semid, self._num, SETVAL, value)

    @property
    def pid(self) -> int:
        """The pid of the process that last operated on this semaphore (GETPID), 0 if none."""
        return int(semctl(self._semid, self._num, GETPID))

    @property
    def waiting(self) -> int:
        """How many processes wait for the value to grow (GETNCNT)."""
        return int(semctl(self._semid, self._num, GETNCNT))

    @property
    def waiting_for_zero(self) -> int:
        """How many processes wait for the value to be zero (GETZCNT)."""
        return int(semctl(self._semid, self._num, GETZCNT))

    # acquire(1, undo=True) and release(1, undo=True), without a second Python call.
    def __enter__(self) -> Semaphore:
        err = semop_packed_undo(self._take1)
        if err:
            semop_packed_failed(err, self._semid, self._num, -1, SEM_UNDO)
        return self

    def __exit__(self, *exc: Any) -> None:
        err = semop_packed_undo(self._give1)
        if err:
            semop_packed_failed(err, self._semid, self._num, 1, SEM_UNDO)

    def __repr__(self) -> str:
        return f"<Semaphore {self._num} of set {self._semid}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Semaphore):
            return (self._semid, self._num) == (other._semid, other._num)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._semid, self._num))

    def __reduce__(self) -> Tuple[Any, Tuple[SemaphoreSet, int]]:
        return (operator.getitem, (self._set, self._num))


accelerate_semaphore(Semaphore)
