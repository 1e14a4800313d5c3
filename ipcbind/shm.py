"""Shared memory segments, the Pythonic way: :class:`SharedMemory`.

A :class:`SharedMemory` wraps one System V shared memory identifier. :meth:`~SharedMemory.read`
and :meth:`~SharedMemory.write` copy bytes out of and into the segment through an
attachment the object makes on first use and keeps (so the segment's ``nattch``
counts it) until :meth:`~SharedMemory.detach`, :meth:`~SharedMemory.remove` or the end
of a ``with`` block. :meth:`~SharedMemory.attach` hands out attachments of its own:
``memoryview(att)`` is the segment itself, without copying (see
:class:`~ipcbind.syscalls.Attachment` for what makes that safe).
"""

from __future__ import annotations

import errno
import mmap
from typing import Any, Optional

from . import syscalls as _sc
from ._base import IpcObject, _integer
from .syscalls import IPC_PRIVATE, SHM_RDONLY, Attachment, Buffer, ShmidDs

__all__ = ["SharedMemory"]

# SharedMemory checks its offsets itself and then calls mmap's own slicing, which the
# attachment overrides on Python < 3.11 only to check arguments that can run code.
_getitem = mmap.mmap.__getitem__
_setitem = mmap.mmap.__setitem__


def _nonnegative(call: str, name: str, value: Any) -> int:
    n = _integer(f"{call}: {name}", value)
    if n < 0:
        raise ValueError(f"{call}: {name} must be >= 0, got {n}")
    return n


class SharedMemory(IpcObject[ShmidDs]):
    """A System V shared memory segment.

    Make one with :meth:`create`, :meth:`open` (by key) or :meth:`from_id`. As a
    context manager it returns itself and, on exit, detaches what :meth:`read` and
    :meth:`write` attached, then removes the segment if this object created it in
    this process (:attr:`created`); a segment opened by key or id is left alone, and
    so is one a forked child leaves a ``with`` block on. A removed segment stays in
    memory, readable and writable through every attachment, until the last process
    detaches; its key is free at once.
    """

    __slots__ = ("_size", "_own")
    _kind = "shared memory segment"
    _id_name = "shmid"

    def __init__(self, ident: int, key: Optional[int] = None, created: bool = False,
                 size: Optional[int] = None) -> None:
        super().__init__(ident, key, created)
        self._size = size
        self._own: Optional[Attachment] = None

    @staticmethod
    def _ctl(ident: int, cmd: int) -> Any:
        return _sc.shmctl(ident, cmd)

    def _learn(self, ds: ShmidDs) -> None:
        super()._learn(ds)
        self._size = ds.segsz

    # ---- making one ----------------------------------------------------------------

    @classmethod
    def create(cls, size: int, key: int = IPC_PRIVATE, mode: int = 0o600,
               exclusive: bool = False) -> SharedMemory:
        """Creates a segment of ``size`` bytes, or opens the one that exists for ``key``.

        A new segment reads as zeros.

        Args:
            size: bytes, >= 1. An existing segment must be at least this large.
            key: IPC_PRIVATE (the default) always makes a new segment; any other key
                names one that other processes can open (see :func:`ipcbind.ftok`).
                Keys may be given signed or unsigned (as ``ipcs`` prints them).
            mode: permission bits of a new segment.
            exclusive: fail with ``FileExistsError`` if a segment exists for ``key``.

        Returns:
            The segment. :attr:`created` tells whether this call made it.

        Raises:
            ValueError: ``size`` < 1.
            OSError: EINVAL if ``size`` is above shmmax, or the segment that exists
                for ``key`` is smaller than ``size`` (the message gives its size).
        """
        size = _nonnegative("create", "size", size)
        if size == 0:
            raise ValueError("create: size must be >= 1 byte, got 0")
        try:
            shmid, k, created = cls._get(key, mode, exclusive,
                                         lambda k, flags: _sc.shmget(k, size, flags))
        except OSError as e:
            if e.errno != errno.EINVAL or key == IPC_PRIVATE:
                raise
            try:
                there = cls.open(key)
                there_size = there.stat().segsz
            except OSError:
                raise e from None
            raise OSError(errno.EINVAL, f"create: the segment for key {there.key:#010x} "
                          f"holds {there_size} bytes, fewer than the {size} asked "
                          "for") from None
        return cls(shmid, k, created, size if created else None)

    @classmethod
    def open(cls, key: int) -> SharedMemory:
        """Opens the existing segment for ``key``; ``FileNotFoundError`` if there is none."""
        return cls(*cls._open_key(key, lambda k, flags: _sc.shmget(k, 0, flags)))

    # ---- what it is ------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The segment's size in bytes (fixed at creation; read once with IPC_STAT
        when this object did not create it)."""
        if self._size is None:
            self._size = self.stat().segsz
        return self._size

    def _repr_extra(self) -> str:
        return "" if self._size is None else f" size={self._size}"

    # ---- copying bytes -------------------------------------------------------------------

    def _attachment(self, writable: bool) -> Attachment:
        """The attachment read and write use, made now if there is none (read-only
        when only read permission is granted, until a write needs more)."""
        try:
            att = _sc.shmat(self._id)
        except PermissionError:
            if writable:
                raise
            att = _sc.shmat(self._id, SHM_RDONLY)
        # One replaced goes once no thread uses it any more: reference counting
        # collects it, which detaches it.
        self._own = att
        self._size = len(att)
        return att

    def read(self, size: Optional[int] = None, offset: int = 0) -> bytes:
        """Copies ``size`` bytes from ``offset`` (None: up to the end) out of the segment.

        Raises:
            ValueError: the range reaches past the end of the segment.
            PermissionError: no read permission (EACCES, at the first read or write).
        """
        offset = _nonnegative("read", "offset", offset)
        count = None if size is None else _nonnegative("read", "size", size)
        att = self._own
        if att is None or att.closed:
            att = self._attachment(False)
        total = len(att)
        end = total if count is None else offset + count
        if offset > total:
            raise ValueError(f"read: offset {offset} is past the end of the {total}-byte "
                             "segment")
        if end > total:
            raise ValueError(f"read: {end - offset} bytes from offset {offset} reach past the "
                             f"end of the {total}-byte segment")
        data: bytes = _getitem(att, slice(offset, end))
        return data

    def write(self, data: Buffer, offset: int = 0) -> None:
        """Copies ``data`` (any bytes-like object) into the segment at ``offset``.

        Raises:
            ValueError: ``data`` would reach past the end; nothing is written then.
            PermissionError: no write permission (EACCES).
        """
        offset = _nonnegative("write", "offset", offset)
        if type(data) is bytes:
            n = len(data)
        else:
            if isinstance(data, str):
                raise TypeError("write: data must be a bytes-like object, not str "
                                "(encode it first)")
            try:
                view = memoryview(data)
            except TypeError:
                raise TypeError(f"write: data must be a bytes-like object, not "
                                f"{type(data).__name__}") from None
            if not view.c_contiguous:
                raise TypeError("write: data must be a C-contiguous buffer")
            data = view.cast("B")
            n = len(data)
        att = self._own
        if att is None or att.closed or att.readonly:
            att = self._attachment(True)
        total = len(att)
        if offset + n > total:
            raise ValueError(f"write: {n} bytes at offset {offset} would reach past the end "
                             f"of the {total}-byte segment; nothing written")
        _setitem(att, slice(offset, offset + n), data)

    # ---- attaching ---------------------------------------------------------------------

    def attach(self, readonly: bool = False) -> Attachment:
        """A new attachment of the segment (shmat), detached when its ``with`` block
        ends, by its ``close()`` or when it is collected. ``memoryview(att)`` is the
        segment itself; detaching is refused (``BufferError``) while views are alive.
        """
        return _sc.shmat(self._id, SHM_RDONLY if readonly else 0)

    def detach(self) -> None:
        """Detaches the attachment :meth:`read` and :meth:`write` keep, if any; the
        next of them attaches again. A read or write that another thread is making
        meanwhile raises ``ValueError``."""
        own, self._own = self._own, None
        if own is not None:
            own.close()

    def remove(self) -> None:
        """Removes the segment (IPC_RMID) after detaching this object's own attachment;
        the memory goes once every other process has detached too."""
        self.detach()
        super().remove()

    def __exit__(self, *exc_info: Any) -> None:
        self.detach()
        super().__exit__(*exc_info)
