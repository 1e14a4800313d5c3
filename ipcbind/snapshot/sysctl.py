"""The namespace's /proc/sys/kernel files: its limits, read and written."""

from __future__ import annotations

from .model import Limits


def _read_int(name: str) -> int:
    with open(f"/proc/sys/kernel/{name}") as f:
        return int(f.read())


def _write_proc(name: str, value: str) -> None:
    try:
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(value)
    except PermissionError as e:
        raise PermissionError(e.errno, f"cannot write /proc/sys/kernel/{name}: needs root in "
                              "the user namespace that owns this IPC namespace") from None


def _read_limits() -> Limits:
    with open("/proc/sys/kernel/sem") as f:
        semmsl, semmns, semopm, semmni = (int(v) for v in f.read().split())
    return Limits(_read_int("msgmax"), _read_int("msgmnb"), _read_int("msgmni"),
                  semmsl, semmns, semopm, semmni)


def _write_limits(limits: Limits) -> bool:
    """Write the limits that differ from the namespace's; whether any did.

    Only those: a limit never changed needs no putting back (and no privilege)."""
    now = _read_limits()
    changed = False
    for name in ("msgmax", "msgmnb", "msgmni"):
        if getattr(now, name) != getattr(limits, name):
            _write_proc(name, str(getattr(limits, name)))
            changed = True
    sem = (limits.semmsl, limits.semmns, limits.semopm, limits.semmni)
    if (now.semmsl, now.semmns, now.semopm, now.semmni) != sem:
        _write_proc("sem", " ".join(map(str, sem)))
        changed = True
    return changed
