"""Arguments checked against the C types they must fit, each error naming the argument.

Shared by the seam (which explains what cffi refused) and the floors above it (which
refuse what no C call could take). Pure Python: it imports only :mod:`ipcbind._limits`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional, Tuple

from ._limits import C_RANGES, INT_MAX, KEY_MASK

__all__ = ["NO_TIMEOUT", "index", "check_int", "explain", "c_key", "deadline", "remaining_ns"]

NO_TIMEOUT = -1
"""The shim's nanoseconds for "wait as long as it takes"."""

# Longer timeouts (about 146 years, infinity included) mean no limit: the shim
# takes nanoseconds in a C long long.
_LONGEST_TIMEOUT = 2.0 ** 62 / 1e9


def index(call: str, name: str, value: Any) -> int:
    """value as a Python int, or TypeError naming the argument."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise TypeError(
            f"{call}: {name} must be an integer, not {type(value).__name__}") from None


def check_int(call: str, name: str, value: Any, ctype: str) -> None:
    """Raise TypeError or OverflowError, naming the argument, if value can't be a C ctype."""
    value = index(call, name, value)
    lo, hi = C_RANGES[ctype]
    if not lo <= value <= hi:
        raise OverflowError(f"{call}: {name}={value} does not fit a C {ctype} ({lo}..{hi})")


def explain(call: str, exc: Exception, **args: Tuple[Any, str]) -> Exception:
    """The clearest error for arguments cffi refused: the first one that is wrong
    (``args``: name=(value, C type)), else ``exc`` itself."""
    for name, (value, ctype) in args.items():
        try:
            check_int(call, name, value, ctype)
        except (TypeError, OverflowError) as better:
            return better
    return exc


def c_key(call: str, key: Any) -> int:
    """The C key_t (a signed int) of a key, which may be given unsigned (0..2**32-1)
    as ``ipcs`` shows it (0x8badf00d)."""
    if isinstance(key, int) and not isinstance(key, bool) and INT_MAX < key <= KEY_MASK:
        return key - (KEY_MASK + 1)
    check_int(call, "key", key, "int")
    return index(call, "key", key)


def deadline(call: str, timeout: Optional[float]) -> Optional[float]:
    """The monotonic time a call with this timeout must end by; None for no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{call}: timeout must be a number of seconds or None, "
                        f"not {type(timeout).__name__}")
    if timeout > _LONGEST_TIMEOUT:
        return None
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{call}: timeout must be >= 0 seconds, got {timeout}")
    return time.monotonic() + timeout


def remaining_ns(end: Optional[float]) -> int:
    """Nanoseconds left until ``end`` (a :func:`deadline`), at least 0; NO_TIMEOUT for None."""
    if end is None:
        return NO_TIMEOUT
    left = end - time.monotonic()
    return int(left * 1e9) if left > 0 else 0
