"""Snapshot and restore of an IPC namespace's queues, semaphore sets and segments.

:func:`snapshot` reads every queue (every message in order, with MSG_COPY, so
nothing is taken), every semaphore set and every shared memory segment (its bytes
through a read-only attach) of a namespace, with the limits that matter;
:func:`dumps`/:func:`dump` write it in the documented JSON format (see
docs/snapshots.md, "Snapshot file format") and :func:`loads`/:func:`load` read it back,
rejecting damaged or foreign files with :class:`SnapshotFormatError`.
:func:`restore` recreates it, with the same ids, in a namespace, all or nothing.

Consistency: each queue is read in one pass that compares IPC_STAT before and
after and copies the first and last message again (see
:meth:`ipcbind.MessageQueue.peek_all`); a queue that keeps changing raises
:class:`~ipcbind.errors.QueueChangedError`.
Objects are read one after the other, so without ``freeze=True`` two objects may
be seen at different moments. ``freeze=True`` stops the namespace's processes
(cgroup v2 freezer, else SIGSTOP) for the duration and always lets them go again.
"""

from __future__ import annotations

from ..errors import (BlockedCall, FreezeError, FreezeRefusedError, FreezeWarning,
                      RestoreConflictError, RestoreError, SegmentLeftOutWarning,
                      SnapshotFormatError)
from . import fields as _fields
from . import fileformat as _fileformat
from .capture import snapshot
from .fileformat import dump, dumps, load, loads
from .freeze import blocked_semops, freeze_namespace
from .model import Limits, QueueState, Restored, SegmentState, SemaphoreSetState, Snapshot
from .restoring import RestoreInterrupted, restore

# Private, and here for the tests that forge files and ids.
from .blobs import _digest as _digest
from .model import _INDEX_MASK as _INDEX_MASK

# The constants are named again here, where the API reference finds their docstrings.
FORMAT = _fields.FORMAT
"""The value of the ``format`` field of every snapshot file."""
VERSION = _fields.VERSION
"""The snapshot file format version this ipcbind writes (it reads 1 too: no segments)."""
DEFAULT_MAX_SIZE = _fileformat.DEFAULT_MAX_SIZE
"""The largest snapshot file :func:`load` reads unless told otherwise (1 GiB)."""

__all__ = [
    "FORMAT",
    "VERSION",
    "Limits",
    "QueueState",
    "SemaphoreSetState",
    "SegmentState",
    "Snapshot",
    "Restored",
    "SnapshotFormatError",
    "RestoreError",
    "RestoreConflictError",
    "RestoreInterrupted",
    "FreezeError",
    "FreezeRefusedError",
    "FreezeWarning",
    "SegmentLeftOutWarning",
    "BlockedCall",
    "blocked_semops",
    "snapshot",
    "restore",
    "freeze_namespace",
    "dumps",
    "dump",
    "loads",
    "load",
    "DEFAULT_MAX_SIZE",
]
