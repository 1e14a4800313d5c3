"""Progress reports, shared by snapshot and restore."""

from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[[int, int, str], None]
"""progress(done, total, what): called before each object is read or recreated, and
while a queue is copied (see :func:`snapshot`)."""


def _need_callable(call: str, progress: Optional[Progress]) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(f"{call}: progress must be callable as progress(done, total, what) "
                        f"or None, not {type(progress).__name__}")


def _copied(progress: Progress, n: int, total: int, about: str,
            qnum: int) -> Callable[[int], None]:
    """What reports the messages copied so far of one queue, while its copy runs."""
    def report(done: int) -> None:
        progress(n, total, f"{about}; copying {done}/{qnum}")
    return report


class _Counts:
    """Messages and bytes done so far out of all, for progress (``what`` of a queue)."""

    def __init__(self, messages: int, size: int) -> None:
        self.messages = messages
        self.bytes = size
        self.done_messages = self.done_bytes = 0

    def next(self, messages: int, size: int) -> str:
        """The text for the queue about to be read or made, which holds these."""
        text = (f" ({messages} messages, {_size(size)}): {self.done_messages}/{self.messages}"
                f" messages, {_size(self.done_bytes)}/{_size(self.bytes)} done")
        self.done_messages += messages
        self.done_bytes += size
        return text


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"
