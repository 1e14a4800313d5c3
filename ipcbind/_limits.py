"""The kernel's and the C ABI's numbers that the package relies on, each stated once.

Every other module imports them from here. Values that the running system can
change (msgmax) are read by a function here, never by hand elsewhere.

This module imports nothing from the rest of the package, so every floor can use it.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "INT_MAX",
    "KEY_MASK",
    "SEMVMX",
    "SEMADJ_MIN",
    "SEMADJ_MAX",
    "unsigned_key",
    "msgmax",
]

INT_MAX = 2 ** 31 - 1
"""The largest C int on every Linux ABI: the largest id, key_t and pid."""

KEY_MASK = 2 ** 32 - 1
"""A key_t's 32 bits: keys read unsigned (0..2**32-1), as ``ipcs`` and ``lsipc`` print them."""

SEMVMX = 32767
"""The largest value a semaphore can hold (a kernel constant)."""

SEMADJ_MIN = -(2 ** 15)
SEMADJ_MAX = 2 ** 15 - 1
"""A semaphore's undo adjustment (semadj) is a C short."""


def unsigned_key(key: int) -> int:
    """The one form in which ipcbind shows a key: unsigned, 0..2**32-1.

    The kernel's key_t is a signed C int, so a key with the high bit set comes out of
    IPC_STAT negative; every class, struct and command of the package shows it
    through this function instead.
    """
    return key & KEY_MASK


def msgmax() -> Optional[int]:
    """The longest message the calling thread's IPC namespace accepts
    (``/proc/sys/kernel/msgmax``, which the compiled shim reads too); None where it
    cannot be read."""
    try:
        with open("/proc/sys/kernel/msgmax", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
