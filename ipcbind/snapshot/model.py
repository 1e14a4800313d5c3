"""What a snapshot holds, and what a restore made: the data, apart from how it is read,
written or recreated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .._limits import INDEX_BITS

# ASCII digits only: \d would also take other scripts' digits.
_TAKEN_AT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
_TAKEN_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# A namespace holds one object per index, an id's low bits (15 on a kernel booted
# without ipcmni_extend): ids 0 and 32768 cannot both exist.
_INDEX_MASK = (1 << INDEX_BITS[0]) - 1


@dataclass(frozen=True)
class Limits:
    """The namespace's limits (``/proc/sys/kernel/msgmax``, ``msgmnb``, ``msgmni``, ``sem``)."""

    msgmax: int
    msgmnb: int
    msgmni: int
    semmsl: int
    semmns: int
    semopm: int
    semmni: int


@dataclass(frozen=True)
class _Identity:
    """What every kind of object has: ``key`` unsigned (0..2**32-1), as ``ipcs`` shows
    it; ``mode`` the permission bits. ``cuid``/``cgid`` (the creator) are recorded but
    a restore cannot set them: the kernel makes the restoring process the creator.
    """

    id: int
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int


@dataclass(frozen=True)
class QueueState(_Identity):
    """One message queue: ``messages`` is a tuple of ``(mtype, data)``, head first."""

    qbytes: int
    messages: Tuple[Tuple[int, bytes], ...]


@dataclass(frozen=True)
class SemaphoreSetState(_Identity):
    """One semaphore set: ``values`` holds one value per semaphore."""

    values: Tuple[int, ...]


@dataclass(frozen=True)
class SegmentState(_Identity):
    """One shared memory segment: ``data`` holds its ``size`` bytes.

    Reading it attaches it read-only for the copy, which sets its atime, dtime and
    lpid (and raises nattch meanwhile); a restore makes them those of its own attach.
    """

    size: int
    data: bytes


@dataclass(frozen=True)
class Snapshot:
    """A namespace's queues and semaphore sets at one time.

    ``taken_at``: ISO 8601 UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the loader refuses a
    time that is not on the calendar, such as month 13). ``namespace``: inode number
    of the namespace read. ``pid``: the pid whose namespace was read (None: the
    caller's own). ``frozen``: how its processes were held still: None, ``"cgroup"``,
    ``"sigstop"`` or ``"cgroup+sigstop"``. ``segments_left_out``: the ids of segments
    marked for removal (SHM_DEST) but still attached, which are not carried: their
    key is gone and they vanish with their last user, so a restore has nothing to
    recreate them as.
    """

    taken_at: str
    namespace: int
    pid: Optional[int]
    frozen: Optional[str]
    limits: Limits
    queues: Tuple[QueueState, ...]
    semaphore_sets: Tuple[SemaphoreSetState, ...]
    segments: Tuple[SegmentState, ...] = ()
    segments_left_out: Tuple[int, ...] = ()


@dataclass(frozen=True)
class Restored:
    """What :func:`restore` created: the ids of the queues, semaphore sets and segments;
    ``cleaned`` names what a killed restore had left and this one removed first."""

    queues: Tuple[int, ...]
    semaphore_sets: Tuple[int, ...]
    cleaned: Tuple[str, ...] = ()
    segments: Tuple[int, ...] = ()
