"""What message queues, semaphore sets and shared memory segments have in common.

:class:`IpcObject` is the base of :class:`~ipcbind.MessageQueue`,
:class:`~ipcbind.SemaphoreSet` and :class:`~ipcbind.SharedMemory`. It owns the rules
that must read the same for the three kinds: create-or-open by key, ``created``, the
creator process, the key's form, checking an id, equality, hashing, pickling, the
``repr`` and the ``with`` rule.
"""

from __future__ import annotations

import operator
import os
from abc import abstractmethod
from errno import EACCES
from typing import Any, Callable, ClassVar, Generic, Optional, Protocol, Tuple, Type, TypeVar

from ._args import c_key
from ._limits import INT_MAX, unsigned_key
from .errors import gone, no_such_object
from .syscalls import IPC_CREAT, IPC_EXCL, IPC_PRIVATE, IPC_RMID, IPC_STAT

__all__ = ["IpcObject"]


class _Stat(Protocol):
    @property
    def key(self) -> int: ...


_DS = TypeVar("_DS", bound=_Stat)
_T = TypeVar("_T", bound="IpcObject[Any]")

Get = Callable[[int, int], int]
"""A kind's get call with its other arguments bound: ``get(key, flags) -> id``."""


def _integer(what: str, value: Any, example: str = "") -> int:
    """``value`` as an int (anything with ``__index__`` but a bool), or a TypeError
    saying what must be one."""
    if type(value) is int:
        return value
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{what} must be an int{example}, not {type(value).__name__}")


class IpcObject(Generic[_DS]):
    """One System V IPC object, known by its id.

    A subclass provides:

    - ``_kind``: the kind's name in messages, e.g. ``"message queue"``;
    - ``_id_name``: the C name of its id, e.g. ``"msqid"``;
    - ``_ctl(ident, cmd)``: its *ctl call with that command (IPC_STAT gives a struct
      with a ``key``, IPC_RMID removes);
    - its get call, given to :meth:`_get` as ``get(key, flags) -> id`` with the
      kind's other arguments (nsems, size) bound.

    Its ``create`` calls :meth:`_get` and then ``cls(ident, key, created=...)``; its
    ``open`` calls :meth:`_open_key`. A subclass that keeps more per object adds its
    own ``__slots__`` and may extend ``__init__`` (keeping ``ident`` first, every other
    argument optional) and :meth:`_learn` (called with the IPC_STAT result of
    :meth:`from_id`). Everything else here is the same for every kind:

    - keys are unsigned (0..2**32-1, as ``ipcs`` and ``lsipc`` print them) wherever
      the package shows one, and accepted signed or unsigned;
    - :meth:`from_id` checks the id at once (without needing read permission);
    - ``with`` removes the object on exit only if this object created it
      (:attr:`created`), only in the process that created it (never in a forked
      child), and only if it was not removed already;
    - objects of one kind with the same id are equal, hash alike, and pickle by id
      (the copy did not create the object).

    A kind, in outline::

        class SharedMemory(IpcObject[ShmidDs]):
            __slots__ = ()
            _kind = "shared memory segment"
            _id_name = "shmid"

            @staticmethod
            def _ctl(ident: int, cmd: int) -> Any:
                return shmctl(ident, cmd)

            @classmethod
            def create(cls, size, key=IPC_PRIVATE, mode=0o600, exclusive=False):
                get = lambda k, flags: shmget(k, size, flags)
                shmid, k, created = cls._get(key, mode, exclusive, get)
                return cls(shmid, k, created)

            @classmethod
            def open(cls, key):
                return cls(*cls._open_key(key, lambda k, flags: shmget(k, 0, flags)))
    """

    __slots__ = ("_id", "_key", "_created", "_creator_pid", "_removed", "__weakref__")

    _kind: ClassVar[str]
    _id_name: ClassVar[str]

    def __init__(self, ident: int, key: Optional[int] = None, created: bool = False) -> None:
        """Wraps an identifier without asking the kernel; :meth:`from_id` checks it."""
        self._id = self._checked_id(ident)
        self._key = None if key is None else unsigned_key(key)
        self._created = created
        self._creator_pid = os.getpid() if created else 0
        self._removed = False

    @staticmethod
    @abstractmethod
    def _ctl(ident: int, cmd: int) -> Any:
        """The kind's *ctl call of the object with this id, with a command that needs
        no argument."""

    @classmethod
    def _stat_id(cls, ident: int) -> _DS:
        """IPC_STAT of the object with this id."""
        ds: _DS = cls._ctl(ident, IPC_STAT)
        return ds

    @classmethod
    def _remove_id(cls, ident: int) -> None:
        """IPC_RMID of the object with this id."""
        cls._ctl(ident, IPC_RMID)

    @classmethod
    def _checked_id(cls, ident: Any) -> int:
        what = f"a {cls._kind} id ({cls._id_name})"
        number = _integer(what, ident)
        if not 0 <= number <= INT_MAX:
            raise ValueError(f"{what} is between 0 and {INT_MAX}, got {number}")
        return number

    # ---- making one ------------------------------------------------------------------

    @staticmethod
    def _mode_arg(call: str, mode: Any) -> int:
        """``mode`` checked to hold permission bits only: anything above them would
        reach the get call as a flag (IPC_CREAT...)."""
        bits = _integer(f"{call}: mode", mode, " such as 0o600")
        if not 0 <= bits <= 0o777:
            raise ValueError(f"{call}: mode holds permission bits only (0 to 0o777), "
                             f"got {bits:#o}")
        return bits

    @classmethod
    def _key_arg(cls, call: str, key: Any) -> int:
        """``key`` as the C key_t the get call takes (given signed or unsigned)."""
        return c_key(call, _integer(f"{call}: key", key))

    @classmethod
    def _get(cls, key: Any, mode: Any, exclusive: bool, get: Get) -> Tuple[int, int, bool]:
        """Create the object for ``key`` with permission bits ``mode``, or open the one
        that exists (``exclusive``: ``FileExistsError`` then). Returns
        ``(ident, key, created)``.

        Creating is tried first, so that ``created`` is known for certain; should the
        object be removed between a failed create and the open, creating is tried again.
        """
        mode = cls._mode_arg("create", mode)
        k = cls._key_arg("create", key)
        if k == IPC_PRIVATE:
            return get(k, IPC_CREAT | mode), k, True
        while True:
            try:
                return get(k, IPC_CREAT | IPC_EXCL | mode), k, True
            except FileExistsError:
                if exclusive:
                    raise
            try:
                return get(k, 0), k, False
            except FileNotFoundError:
                continue

    @classmethod
    def _open_key(cls, key: Any, get: Get) -> Tuple[int, int]:
        """Open the existing object for ``key``: ``(ident, key)``; FileNotFoundError if none."""
        k = cls._key_arg("open", key)
        if k == IPC_PRIVATE:
            raise ValueError(f"open: IPC_PRIVATE names no existing {cls._kind} "
                             "(use create() for a new one, or from_id())")
        return get(k, 0), k

    @classmethod
    def from_id(cls: Type[_T], ident: int) -> _T:
        """Wraps the existing object with this id (as ``ipcs`` lists them).

        The id is checked at once with IPC_STAT. Without read permission the kernel
        still says whether the id exists (it looks the object up before it checks
        permission): such an object is wrapped, and what needs reading it raises
        ``PermissionError`` later.

        Raises:
            TypeError, ValueError: ``ident`` is no int, or outside 0..2**31-1.
            OSError: EINVAL (EIDRM) if no object of this kind has this id
                (``no message queue with id 999999``).
        """
        obj = cls(ident)
        try:
            ds = obj._stat_id(obj._id)
        except OSError as e:
            if e.errno is not None and gone(e):
                raise no_such_object(e.errno, cls._kind, obj._id) from None
            if e.errno != EACCES:
                raise
        else:
            obj._learn(ds)
        return obj

    def _learn(self, ds: _DS) -> None:
        """Keep what :meth:`from_id`'s IPC_STAT told."""
        self._key = unsigned_key(ds.key)

    # ---- what it is --------------------------------------------------------------------

    @property
    def id(self) -> int:
        """The kernel's identifier."""
        return self._id

    @property
    def key(self) -> int:
        """The key, unsigned as ``ipcs`` prints it (0 for IPC_PRIVATE). Where it is not
        known yet (an object from :meth:`from_id` without read permission), IPC_STAT
        asks for it."""
        if self._key is None:
            self._key = unsigned_key(self.stat().key)
        return self._key

    @property
    def created(self) -> bool:
        """True if this object created it (then leaving a ``with`` block removes it,
        in the creating process only)."""
        return self._created

    def stat(self) -> _DS:
        """IPC_STAT: the kernel's structure for the object."""
        return self._stat_id(self._id)

    def remove(self) -> None:
        """Removes the object (IPC_RMID)."""
        self._remove_id(self._id)
        self._removed = True

    def _repr_extra(self) -> str:
        return ""

    def __repr__(self) -> str:
        key = self._key
        if key is None:
            try:
                key = self.key
            except OSError:
                pass
        shown = "?" if key is None else f"{key:#010x}"
        return (f"<{type(self).__name__} id={self._id} key={shown}{self._repr_extra()}"
                f"{' created' if self._created else ''}>")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IpcObject):
            return self._kind == other._kind and self._id == other._id
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._kind, self._id))

    def __reduce__(self) -> Tuple[Any, Tuple[int]]:
        return (type(self).from_id, (self._id,))

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self._created or self._removed or os.getpid() != self._creator_pid:
            return
        try:
            self.remove()
        except OSError as e:
            if not gone(e):  # else another process removed it: what the exit wanted is done
                raise
