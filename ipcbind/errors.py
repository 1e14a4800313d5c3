"""Exceptions raised by ipcbind, every class of them under :class:`IpcbindError`.

A failing system call raises :class:`OSError` with the kernel's ``errno`` and a
message naming the call and the object, e.g. ``[Errno 43] msgrcv(msqid=5):
Identifier removed``. Python's own subclasses are used where they exist
(``PermissionError`` for EACCES/EPERM, ``FileExistsError`` for EEXIST,
``FileNotFoundError`` for ENOENT, ``BlockingIOError`` for EAGAIN, ``TimeoutError``);
the classes below cover the errno values Python has no class for. Each is an
``OSError``, so ``except OSError`` and checks of ``.errno`` keep working.

Every class defined here is also an :class:`IpcbindError`, and each is also the
builtin exception it has always been (``class NoMessageError(OSError, IpcbindError)``),
so callers can catch either. The modules that raise them re-export them under their
old names (``ipcbind.snapshot.RestoreError`` is this module's).

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

__all__ = [
    "IpcbindError",
    "NoMessageError",
    "IdentifierRemovedError",
    "TooBigError",
    "OutOfRangeError",
    "NotSupportedError",
    "SemundoNotSupportedError",
    "QueueChangedError",
    "PartialSendError",
    "PartialReceiveError",
    "NamespaceReturnError",
    "SnapshotFormatError",
    "RestoreError",
    "RestoreConflictError",
    "FreezeError",
    "FreezeRefusedError",
    "FreezeWarning",
    "BlockedCall",
    "CliError",
    "GONE_ERRNOS",
    "gone",
    "no_such_object",
    "partial_send",
    "partial_receive",
    "syscall_error",
    "timeout_error",
]


class IpcbindError(Exception):
    """The base of every exception class of ipcbind: ``except IpcbindError`` catches
    them all.

    What the kernel refuses in a way Python has a class for (EACCES, EEXIST, ENOENT,
    EAGAIN, EINVAL...) is raised as Python's own ``PermissionError``,
    ``FileExistsError``, ``FileNotFoundError``, ``BlockingIOError`` or ``OSError``;
    bad arguments as ``TypeError``, ``ValueError`` or ``OverflowError``.
    """


# ---- errno values Python has no class for ---------------------------------------------

class NoMessageError(OSError, IpcbindError):
    """ENOMSG: no message of the requested type (or at the requested index)."""


class IdentifierRemovedError(OSError, IpcbindError):
    """EIDRM: the queue or semaphore set was removed, possibly while waiting."""


class TooBigError(OSError, IpcbindError):
    """E2BIG: a message longer than the buffer, or more semaphore operations than SEMOPM."""


class OutOfRangeError(OSError, IpcbindError):
    """ERANGE: a semaphore value or undo adjustment outside what the kernel allows."""


class NotSupportedError(OSError, IpcbindError):
    """ENOSYS: the running kernel does not provide this feature."""


class SemundoNotSupportedError(NotSupportedError):
    """ENOSYS: the kernel has no ``/proc/<pid>/semundo`` (no mainline kernel has it).

    Attributes:
        filename: the path that does not exist.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            errno.ENOSYS,
            "this kernel does not provide /proc/<pid>/semundo (proposed in 2008, never "
            "merged into mainline); tracked_semundo() tells the undo state this process "
            "made through ipcbind, and restore_semundo() recreates undo state without "
            "the file",
            path,
        )

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return type(self), (self.filename,)


# ---- message queues -----------------------------------------------------------------

class QueueChangedError(RuntimeError, IpcbindError):
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

    def __reduce__(self) -> Tuple[Any, Tuple[int, int]]:
        return type(self), (self.msqid, self.attempts)


class PartialSendError(IpcbindError):
    """A batch send (``send_many``) failed part-way: the first :attr:`sent` messages
    were sent, the rest were not.

    It is never raised alone: the exception raised is also the class the failure
    has by itself (``IdentifierRemovedError``, ``TimeoutError``, ``ValueError``...),
    with its errno and message, so ``except IdentifierRemovedError`` and
    ``except PartialSendError`` both catch a batch ended by a removed queue.

    Attributes:
        sent: how many messages were sent before the failure.
    """

    sent: int


class PartialReceiveError(IpcbindError):
    """A batch receive (``receive_many``) failed after it had taken messages; they
    are in :attr:`received`, in order.

    Like :class:`PartialSendError` it is raised together with the failure's own
    class (``MemoryError``: no memory to hold a message already taken).

    Attributes:
        received: the messages taken before the failure.
    """

    received: List[Any]


_PARTIAL: Dict[Tuple[type, type], type] = {}


def _rebuilt(cause: BaseException, mixin: Type[IpcbindError]) -> Any:
    """A copy of ``cause`` whose class is also ``mixin``: the same message (and errno)."""
    base = type(cause)
    if isinstance(cause, mixin):
        base = base.__mro__[1]
    cls = _PARTIAL.get((base, mixin))
    if cls is None:
        cls = type(f"{mixin.__name__[:-5]}{base.__name__}", (base, mixin),
                   {"__module__": __name__, "__reduce__": _reduce_partial})
        _PARTIAL[base, mixin] = cls
    if isinstance(cause, OSError) and cause.filename is not None:
        exc = cls(cause.errno, cause.strerror, cause.filename)
    else:
        exc = cls(*cause.args)
    exc.__traceback__ = cause.__traceback__
    return exc


def _reduce_partial(self: BaseException) -> Tuple[Callable[..., BaseException], Tuple[Any, ...]]:
    mixin = PartialSendError if isinstance(self, PartialSendError) else PartialReceiveError
    base = type(self).__mro__[1]
    name = "sent" if mixin is PartialSendError else "received"
    return _unpickle_partial, (base, mixin, self.args, getattr(self, name))


def _unpickle_partial(base: Type[BaseException], mixin: Type[IpcbindError],
                      args: Tuple[Any, ...], value: Any) -> BaseException:
    exc = _rebuilt(base(*args), mixin)
    setattr(exc, "sent" if mixin is PartialSendError else "received", value)
    return exc  # type: ignore[no-any-return]


def partial_send(cause: BaseException, sent: int) -> BaseException:
    """``cause`` (the exception that ended a batch send) as a :class:`PartialSendError`
    too, with ``sent`` set."""
    exc = _rebuilt(cause, PartialSendError)
    exc.sent = sent
    return exc  # type: ignore[no-any-return]


def partial_receive(cause: BaseException, received: List[Any]) -> BaseException:
    """``cause`` (the exception that ended a batch receive) as a
    :class:`PartialReceiveError` too, with ``received`` set."""
    exc = _rebuilt(cause, PartialReceiveError)
    exc.received = received
    return exc  # type: ignore[no-any-return]


# ---- namespaces, snapshots, the command line ------------------------------------------

class NamespaceReturnError(RuntimeError, IpcbindError):
    """The thread could not be moved back into its own IPC namespace.

    The thread is left inside the namespace it had entered: every IPC call it
    makes from now on acts there. Attributes: ``pid`` (whose namespace was
    entered) and ``stuck_in`` (the namespace's ``(st_dev, st_ino)`` the thread is in).
    """

    def __init__(self, pid: int, stuck_in: Optional[Tuple[int, int]], cause: OSError) -> None:
        super().__init__(
            f"could not move this thread back to its own IPC namespace after entering the "
            f"namespace of pid {pid} ({cause}); the thread is STILL in the namespace of "
            f"pid {pid} and its IPC calls act there")
        self.pid = pid
        self.stuck_in = stuck_in


class SnapshotFormatError(ValueError, IpcbindError):
    """A snapshot file that is damaged, foreign, or of a version this ipcbind cannot read."""


class RestoreError(RuntimeError, IpcbindError):
    """A restore failed; everything it had created was removed again.

    ``leftovers`` names what could not be removed (normally empty).
    """

    def __init__(self, message: str, leftovers: Sequence[str] = ()) -> None:
        if leftovers:
            message += "; COULD NOT REMOVE: " + ", ".join(leftovers)
        super().__init__(message)
        self.leftovers = tuple(leftovers)


class RestoreConflictError(RestoreError):
    """The namespace already holds an object with an id or key the snapshot needs.

    Nothing was created.
    """


class FreezeError(RuntimeError, IpcbindError):
    """The namespace's processes could not be frozen, or not all could be thawed."""


@dataclass(frozen=True)
class BlockedCall:
    """A thread in a semaphore call that freezing would end with EINTR."""

    pid: int
    tid: int
    name: str
    call: str
    """``"semop"``, ``"semtimedop"``, or why it could not be told."""

    def __str__(self) -> str:
        thread = "" if self.tid == self.pid else f" thread {self.tid}"
        return f"pid {self.pid} ({self.name}){thread} in {self.call}"


class FreezeRefusedError(FreezeError):
    """Freezing would make a semop or semtimedop fail with EINTR in a process that
    does not expect it; ``blocked`` names each such thread. Nothing was frozen."""

    def __init__(self, blocked: Sequence[BlockedCall]) -> None:
        self.blocked = tuple(blocked)
        super().__init__(
            "freeze refused: every way of holding a process (SIGSTOP, the cgroup "
            "freezers, ptrace) makes a blocked semop or semtimedop fail with EINTR, "
            "and a program that does not retry then fails: "
            + "; ".join(map(str, self.blocked))
            + ". Freeze anyway with interrupt_blocked_semops=True "
              "(ipcbind dump --freeze --interrupt-blocked-semops), or dump without freezing")

    def __reduce__(self) -> Tuple[Any, ...]:
        return type(self), (self.blocked,)


class FreezeWarning(RuntimeWarning, IpcbindError):
    """A thread was found in semop or semtimedop after it was stopped: it may have been
    waiting there, and then its call fails with EINTR."""


class CliError(IpcbindError):
    """A failure of the ``ipcbind`` command, to report as one line with exit status
    :attr:`code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---- making them ------------------------------------------------------------------------

_BY_ERRNO: Dict[int, Type[OSError]] = {
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


GONE_ERRNOS = (errno.EINVAL, errno.EIDRM)
"""The errno values that mean "no such object (any more)"; see :func:`gone`."""


def gone(exc: BaseException) -> bool:
    """Whether an exception says the object is not there (any more).

    The kernel answers EIDRM to a call that was waiting on, or looked up, an object
    removed meanwhile, and EINVAL to an id or index that names nothing: to anyone
    asking about one object by its id, both mean "no such object".
    """
    return isinstance(exc, OSError) and exc.errno in GONE_ERRNOS


def no_such_object(err: int, kind: str, ident: int) -> OSError:
    """The exception for an id that names no object of this kind, e.g.
    ``[Errno 22] no message queue with id 999999``; ``err`` is the kernel's errno."""
    return _BY_ERRNO.get(err, OSError)(err, f"no {kind} with id {ident}")
