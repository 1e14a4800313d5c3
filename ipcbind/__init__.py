"""ipcbind: Linux System V IPC (message queues and semaphore sets) through a cffi shim.

The syscall-shaped functions (``msgget``, ``msgsnd``, ``msgrcv``, ``msgctl``, ``semget``,
``semop``, ``semctl``, ``ftok``) and the constants under their C names are importable
from here.
"""

from .errors import (
    IdentifierRemovedError,
    NoMessageError,
    NotSupportedError,
    OutOfRangeError,
    QueueChangedError,
    TooBigError,
)
from .msg import Message, MessageQueue
from .namespace import (
    NamespaceReturnError,
    enter_namespace,
    namespace_id,
    namespace_pids,
    shares_namespace,
)
from .sem import Semaphore, SemaphoreSet
from .snapshot import (
    FreezeError,
    RestoreConflictError,
    RestoreError,
    Snapshot,
    SnapshotFormatError,
)
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
    MsgInfo,
    MsqidDs,
    SemidDs,
    SemInfo,
    ftok,
    msgctl,
    msgget,
    msgrcv,
    msgsnd,
    semctl,
    semget,
    semop,
)
from .semundo import (
    SemundoNotSupportedError,
    read_semundo,
    restore_semundo,
    semundo_supported,
    tracked_semundo,
    write_semundo,
)

__version__ = "0.1.0"
