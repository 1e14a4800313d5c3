"""Exceptions raised by ipcbind.

A failing system call raises :class:`OSError` with the kernel's ``errno`` and a
message naming the call and the object, e.g. ``[Errno 43] msgrcv(msqid=5):
Identifier removed``. Python's own subclasses are used where they exist
(``PermissionError`` for EACCES/EPERM, ``FileExistsError`` for EEXIST,
``FileNotFoundError`` for ENOENT, ``BlockingIOError`` for EAGAIN, ``TimeoutError``);
the classes below cover the errno values Python has no class for. Each is an
``OSError``, so ``except OSError`` and checks of ``.errno`` keep working.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

__all__ = [
    "NoMessageError",
    "IdentifierRemovedError",
    "TooBigError",
    "OutOfRangeError",
    "NotSupportedError",
    "QueueChangedError",
    "gone",
    "no_such_object",
    "syscall_error",
    "timeout_error",
]


class NoMessageError(OSError):
    """ENOMSG: no message of the requested type (or at the requested index)."""


class IdentifierRemovedError(OSError):
    """EIDRM: the queue or semaphore set was removed, possibly while waiting."""


class TooBigError(OSError):
    """E2BIG: a message longer than the buffer, or more semaphore operations than SEMOPM."""


class OutOfRangeError(OSError):
    """ERANGE: a semaphore value or undo adjustment outside what the kernel allows."""


class NotSupportedError(OSError):
    """ENOSYS: the running kernel does not provide this feature."""


class QueueChangedError(RuntimeError):
    """A queue kept changing while it was being read without consuming.

    Attributes:
        msqid: the queue's identifier.
        attempts: how many complete reads were tried.
    """

    def __init__(self, msqid: int, attempts: int) -> None:
        super().__init__(
            f"queue {msqid} changed during each of {attempts} attempts to read it "
            "without consuming; no consistent view could be taken"
        )
        self.msqid = msqid
        self.attempts = attempts


_BY_ERRNO: dict[int, type[OSError]] = {
    errno.ENOMSG: NoMessageError,
    errno.EIDRM: IdentifierRemovedError,
    errno.E2BIG: TooBigError,
    errno.ERANGE: OutOfRangeError,
    errno.ENOSYS: NotSupportedError,
}


def syscall_error(err: int, call: str) -> OSError:
    """Return the exception for a call that failed with errno ``err``.

    ``call`` names the call and its object, e.g. ``"msgsnd(msqid=5)"``. For errno
    values without a class above, ``OSError`` picks Python's own subclass.
    """
    return _BY_ERRNO.get(err, OSError)(err, f"{call}: {os.strerror(err)}")


def timeout_error(call: str, timeout: Optional[float]) -> TimeoutError:
    """Return the exception for a call that waited ``timeout`` seconds in vain."""
    return TimeoutError(errno.ETIMEDOUT, f"{call}: timed out after {timeout} s")


_GONE = (errno.EINVAL, errno.EIDRM)


def gone(exc: BaseException) -> bool:
    """Whether an exception says the object is not there (any more).

    The kernel answers EIDRM to a call that was waiting on, or looked up, an object
    removed meanwhile, and EINVAL to an id or index that names nothing: to anyone
    asking about one object by its id, both mean "no such object".
    """
    return isinstance(exc, OSError) and exc.errno in _GONE


def no_such_object(err: int, kind: str, ident: int) -> OSError:
    """The exception for an id that names no object of this kind, e.g.
    ``[Errno 22] no message queue with id 999999``; ``err`` is the kernel's errno."""
    return _BY_ERRNO.get(err, OSError)(err, f"no {kind} with id {ident}")
