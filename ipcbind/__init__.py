"""ipcbind: Linux System V IPC (message queues, semaphore sets and shared memory) through
a cffi shim.

The syscall-shaped functions (``msgget``, ``msgsnd``, ``msgrcv``, ``msgctl``, ``semget``,
``semop``, ``semctl``, ``shmget``, ``shmat``, ``shmdt``, ``shmctl``, ``ftok``) and the
constants under their C names are importable from here.

The namespace and snapshot names (``enter_namespace``, ``Snapshot``...) are loaded on
first use: their modules need json, hashlib, tempfile, datetime and psutil, which a
program that only sends and receives should not pay for at start-up.

A copy of ipcbind whose compiled shim (``ipcbind._ffi``) cannot be loaded still
imports: pytest loads :mod:`ipcbind.pytest_plugin` in every run of the environment,
and must be able to start. Only the exceptions (:mod:`ipcbind.errors`) are usable
then; every other name raises the shim's ImportError when it is used.
"""

import os as _os
import typing as _typing

from .errors import (
    FreezeError,
    IdentifierRemovedError,
    IpcbindError,
    NamespaceReturnError,
    NoMessageError,
    NotSupportedError,
    OutOfRangeError,
    PartialReceiveError,
    PartialSendError,
    QueueChangedError,
    RestoreConflictError,
    RestoreError,
    SemundoNotSupportedError,
    SnapshotFormatError,
    TooBigError,
)


def _is_shim(err: ImportError) -> bool:
    if err.name == f"{__name__}._ffi":  # no shim at all
        return True
    # A shim that is there but cannot be loaded (built for another platform, damaged):
    # the loader names the module by its last part only, and gives the file.
    return (err.name == "_ffi" and err.path is not None
            and _os.path.dirname(_os.path.abspath(err.path)) == _os.path.dirname(
                _os.path.abspath(__file__)))


def _shim_unloadable(err: BaseException) -> bool:
    """Whether an ImportError comes from loading the compiled shim (its cause included)."""
    seen: _typing.Optional[BaseException] = err
    while seen is not None:
        if isinstance(seen, ImportError) and _is_shim(seen):
            return True
        seen = seen.__cause__
    return False


_SHIM_ERROR: _typing.Optional[ImportError] = None
try:
    from .msg import Message, MessageQueue
    from .sem import Semaphore, SemaphoreSet
    from .shm import SharedMemory
    from .syscalls import (
        GETALL,
        GETNCNT,
        GETPID,
        GETVAL,
        GETZCNT,
        IPC_CREAT,
        IPC_EXCL,
        IPC_INFO,
        IPC_NOWAIT,
        IPC_PRIVATE,
        IPC_RMID,
        IPC_SET,
        IPC_STAT,
        MSG_COPY,
        MSG_EXCEPT,
        MSG_INFO,
        MSG_NOERROR,
        MSG_STAT,
        MSG_STAT_ANY,
        SEM_INFO,
        SEM_STAT,
        SEM_STAT_ANY,
        SEM_UNDO,
        SETALL,
        SETVAL,
        SHM_EXEC,
        SHM_HUGETLB,
        SHM_INFO,
        SHM_LOCK,
        SHM_NORESERVE,
        SHM_RDONLY,
        SHM_REMAP,
        SHM_RND,
        SHM_STAT,
        SHM_STAT_ANY,
        SHM_UNLOCK,
        Attachment,
        MsgInfo,
        MsqidDs,
        SemidDs,
        SemInfo,
        ShmidDs,
        ShmInfo,
        ShmUsage,
        ftok,
        msgctl,
        msgget,
        msgrcv,
        msgsnd,
        semctl,
        semget,
        semop,
        shmat,
        shmctl,
        shmdt,
        shmget,
    )
    from .semundo import (
        read_semundo,
        restore_semundo,
        semundo_supported,
        tracked_semundo,
        write_semundo,
    )
except ImportError as e:
    if not _shim_unloadable(e):
        raise
    _SHIM_ERROR = e


__all__ = [
    "IpcbindError",
    "PartialReceiveError",
    "PartialSendError",
    "IdentifierRemovedError",
    "NoMessageError",
    "NotSupportedError",
    "OutOfRangeError",
    "QueueChangedError",
    "TooBigError",
    "Message",
    "MessageQueue",
    "NamespaceReturnError",
    "enter_namespace",
    "namespace_id",
    "namespace_pids",
    "shares_namespace",
    "Semaphore",
    "SemaphoreSet",
    "SharedMemory",
    "FreezeError",
    "RestoreConflictError",
    "RestoreError",
    "Snapshot",
    "SnapshotFormatError",
    "GETALL",
    "GETNCNT",
    "GETPID",
    "GETVAL",
    "GETZCNT",
    "IPC_CREAT",
    "IPC_EXCL",
    "IPC_INFO",
    "IPC_NOWAIT",
    "IPC_PRIVATE",
    "IPC_RMID",
    "IPC_SET",
    "IPC_STAT",
    "MSG_COPY",
    "MSG_EXCEPT",
    "MSG_INFO",
    "MSG_NOERROR",
    "MSG_STAT",
    "MSG_STAT_ANY",
    "SEM_INFO",
    "SEM_STAT",
    "SEM_STAT_ANY",
    "SEM_UNDO",
    "SETALL",
    "SETVAL",
    "SHM_EXEC",
    "SHM_HUGETLB",
    "SHM_INFO",
    "SHM_LOCK",
    "SHM_NORESERVE",
    "SHM_RDONLY",
    "SHM_REMAP",
    "SHM_RND",
    "SHM_STAT",
    "SHM_STAT_ANY",
    "SHM_UNLOCK",
    "Attachment",
    "MsgInfo",
    "MsqidDs",
    "SemidDs",
    "SemInfo",
    "ShmidDs",
    "ShmInfo",
    "ShmUsage",
    "ftok",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "SemundoNotSupportedError",
    "read_semundo",
    "restore_semundo",
    "semundo_supported",
    "tracked_semundo",
    "write_semundo",
]

__version__ = "0.1.0"


# name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "enter_namespace": "namespace",
    "namespace_id": "namespace",
    "namespace_pids": "namespace",
    "shares_namespace": "namespace",
    "Snapshot": "snapshot",
}

if _typing.TYPE_CHECKING:
    from .namespace import enter_namespace, namespace_id, namespace_pids, shares_namespace
    from .snapshot import Snapshot
else:
    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if _SHIM_ERROR is not None and (module is not None or name in __all__):
            raise ImportError(str(_SHIM_ERROR), name=f"{__name__}._ffi") from _SHIM_ERROR
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value


def __dir__() -> _typing.List[str]:
    return sorted(__all__ + ["__version__"])
