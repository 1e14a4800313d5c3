"""The kernel's and the C ABI's numbers that the package relies on, each stated once.

Every other module imports them from here. Values that the running system can
change (msgmax) are read by a function here, never by hand elsewhere.

This module imports nothing from the rest of the package, so every floor can use it.
"""

from __future__ import annotations

import sys
from typing import Dict, Optional, Tuple

__all__ = [
    "INT_MAX",
    "LONG_MAX",
    "U32_MAX",
    "KEY_MASK",
    "C_RANGES",
    "SEMVMX",
    "SEMADJ_MIN",
    "SEMADJ_MAX",
    "INDEX_BITS",
    "unsigned_key",
    "msgmax",
]

INT_MAX = 2 ** 31 - 1
"""The largest C int on every Linux ABI: the largest id, key_t and pid."""

LONG_MAX = sys.maxsize
"""The largest C long (an mtype, a MSG_COPY index): Py_ssize_t is a long on every Linux ABI."""

U32_MAX = 2 ** 32 - 1
"""The largest uid_t and gid_t."""

KEY_MASK = U32_MAX
"""A key_t's 32 bits: keys read unsigned (0..2**32-1), as ``ipcs`` and ``lsipc`` print them."""

C_RANGES: Dict[str, Tuple[int, int]] = {
    "int": (-INT_MAX - 1, INT_MAX),
    "long": (-LONG_MAX - 1, LONG_MAX),
    "short": (-(2 ** 15), 2 ** 15 - 1),
    "unsigned short": (0, 2 ** 16 - 1),
    "size_t": (0, 2 * LONG_MAX + 1),
}
"""The range of each C type the syscalls take, by its C name (LP64 and ILP32 alike)."""

SEMVMX = 32767
"""The largest value a semaphore can hold (a kernel constant)."""

SEMADJ_MIN, SEMADJ_MAX = C_RANGES["short"]
"""A semaphore's undo adjustment (semadj) is a C short."""

INDEX_BITS = (15, 24)
"""An id's low bits are its index: 15 bits, or 24 with the ipcmni_extend boot option."""


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
