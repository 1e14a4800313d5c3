"""Helpers for the kernel tests: limits read from /proc, waiting for a process or
thread to fall asleep in a system call, background children, and "another user"."""

from __future__ import annotations

import os
import time
from typing import Callable, List, Tuple

from conftest import NOBODY, run_in_child

IS_ROOT = os.geteuid() == 0
CAP_SYS_RESOURCE = 24


def proc_int(name: str) -> int:
    """An integer sysctl of this IPC namespace, e.g. proc_int("msgmax")."""
    with open(f"/proc/sys/kernel/{name}") as f:
        return int(f.read().split()[0])


def unshare_with_msg_limits(msgmax: int, msgmnb: int) -> None:
    """Move the calling thread into a fresh IPC namespace (root) and raise its message
    limits there: the host's stay as they are."""
    from ipcbind._seam import unshare_ipc as _unshare_ipc
    _unshare_ipc()
    for name, value in (("msgmax", msgmax), ("msgmnb", msgmnb)):
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(str(value))


def sem_limits() -> List[int]:
    """SEMMSL, SEMMNS, SEMOPM, SEMMNI, as /proc/sys/kernel/sem lists them."""
    with open("/proc/sys/kernel/sem") as f:
        return [int(v) for v in f.read().split()]


def has_capability(cap: int) -> bool:
    """Whether this process holds capability ``cap`` in its effective set."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll pred until it is true; fail the test if it stays false for ``timeout`` s."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.002)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def wait_blocked(task_dir: str, word: str, timeout: float = 10.0) -> None:
    """Wait until the task at ``task_dir`` (/proc/PID or /proc/self/task/TID) sleeps in a
    kernel function whose name holds ``word`` (e.g. "msgrcv").

    Where wchan is hidden (it reads "0"), settle for the task staying asleep for 0.2 s.
    """
    end = time.monotonic() + timeout
    asleep_since = None
    while time.monotonic() < end:
        wchan = _read(f"{task_dir}/wchan")
        if word in wchan:
            return
        stat = _read(f"{task_dir}/stat")
        if wchan in ("", "0") and stat and stat.rsplit(")", 1)[1].split()[0] == "S":
            asleep_since = asleep_since or time.monotonic()
            if time.monotonic() - asleep_since > 0.2:
                return
        else:
            asleep_since = None
        time.sleep(0.002)
    raise AssertionError(f"{task_dir} did not block in {word} within {timeout} s")


def semop_then_exit(semid: int, ops: List[Tuple[int, int]]) -> int:
    """A child's body: semop (waiting as long as it takes), then exit code 0."""
    import ipcbind
    ipcbind.semop(semid, ops)
    return 0


def run_as_stranger(fn: Callable[[], int]) -> int:
    """Run fn in a child without the owner's rights over an object of mode 0o000:
    as uid 65534 when root (root's CAP_IPC_OWNER would bypass the mode), otherwise
    as this same user, whom mode 0o000 already shuts out."""
    return run_in_child(fn, uid=NOBODY if IS_ROOT else None)

