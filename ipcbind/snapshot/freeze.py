"""Holding a namespace's processes still: the cgroup v2 freezer, else SIGSTOP; and the
threads in a semaphore call, which either would interrupt."""

from __future__ import annotations

import errno
import os
import platform
import time
import warnings
from contextlib import contextmanager
from functools import partial
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set

import psutil

from ..errors import BlockedCall, FreezeError, FreezeRefusedError, FreezeWarning
from ..namespace import namespace_id, namespace_pids

_FREEZE_WAIT = 10.0


def _cgroup2_root() -> Optional[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _cgroup_of(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def _procs_below(path: str) -> List[int]:
    found: List[int] = []
    for d, _, _ in os.walk(path):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def _in_frozen_cgroup(pid: int) -> bool:
    """Whether pid sits in a frozen (or freezing) cgroup v2: held already, and a SIGSTOP
    would wait for a thaw that is not ours to make."""
    root = _cgroup2_root()
    rel = _cgroup_of(pid)
    if root is None or rel is None or rel == "/":
        return False
    path = os.path.join(root, rel.lstrip("/"))
    try:
        # cgroup.freeze says a freeze was asked for here (it may still be under way);
        # cgroup.events says the cgroup is frozen, also through an ancestor.
        with open(os.path.join(path, "cgroup.freeze")) as f:
            if f.read().strip() == "1":
                return True
        with open(os.path.join(path, "cgroup.events")) as f:
            return "frozen 1" in f.read().split("\n")
    except OSError:
        return False


_HELD_OR_GONE = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP,
                           psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


def _held_or_gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() in _HELD_OR_GONE
    except psutil.NoSuchProcess:
        return True


# The System V semaphore calls by syscall number, where the number is known. glibc's
# semop is the semtimedop syscall without a timeout.
_SEM_SYSCALLS_BY_MACHINE: Dict[str, Dict[int, str]] = {
    "x86_64": {65: "semop", 220: "semtimedop"},
    "aarch64": {193: "semop", 192: "semtimedop"},
}
_SEM_SYSCALLS = _SEM_SYSCALLS_BY_MACHINE.get(platform.machine(), {})


def _sem_call(pid: int, tid: int) -> Optional[str]:
    """The semaphore call thread ``tid`` of ``pid`` is in (asleep, stopped or frozen
    in it), or None."""
    task = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{task}/syscall") as f:
            fields = f.read().split()
    except FileNotFoundError:
        return None  # the thread has exited
    except OSError as e:
        unreadable = f"a call that cannot be seen ({task}/syscall: {e.strerror})"
    else:
        if fields and fields[0].isdigit() and _SEM_SYSCALLS:
            call = _SEM_SYSCALLS.get(int(fields[0]))
            if call == "semtimedop" and len(fields) > 4 and int(fields[4], 16) == 0:
                return "semop"
            return call
        unreadable = ""
    try:
        # Without a known syscall number the kernel function it sleeps in tells.
        with open(f"{task}/wchan") as f:
            if "semtimedop" in f.read():
                return "semop or semtimedop"
    except OSError:
        pass
    return unreadable or None


_ASLEEP = frozenset({psutil.STATUS_SLEEPING, psutil.STATUS_DISK_SLEEP})


def _blocked_in(pids: Sequence[int], asleep: bool = True) -> List[BlockedCall]:
    """The threads of ``pids`` in a semaphore call: only those asleep in it if
    ``asleep`` (one stopped by someone else was interrupted already, not by us)."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name, tids = proc.name(), sorted(t.id for t in proc.threads())
        except psutil.NoSuchProcess:
            continue
        for tid in tids:
            try:
                if asleep and psutil.Process(tid).status() not in _ASLEEP:
                    continue
            except psutil.NoSuchProcess:
                continue
            call = _sem_call(pid, tid)
            if call is not None:
                found.append(BlockedCall(pid, tid, name, call))
    return found


def blocked_semops(pid: Optional[int]) -> List[BlockedCall]:
    """The threads of the namespace of ``pid`` (None: ours) now in semop or semtimedop,
    which freezing would make fail with EINTR (docs/snapshots.md has the measurements)."""
    return _blocked_in([p for p in namespace_pids(pid) if p != os.getpid()])


def _wait_for(ready: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + _FREEZE_WAIT
    while not ready():
        if time.monotonic() > end:
            raise FreezeError(f"{what} did not stop within {_FREEZE_WAIT:g} s")
        time.sleep(0.002)


class _Holder:
    """Stops processes and remembers exactly what it stopped, to let it go again."""

    def __init__(self, pid: int, interrupt_blocked_semops: bool) -> None:
        self.pid = pid
        self.interrupt = interrupt_blocked_semops
        self.cgroups: List[str] = []
        self.stopped: List[psutil.Process] = []
        self.held: List[int] = []

    def method(self) -> Optional[str]:
        used = [m for m, on in (("cgroup", self.cgroups), ("sigstop", self.stopped)) if on]
        return "+".join(used) or None

    def freezable(self, pids: Sequence[int], members: Sequence[int]) -> Dict[str, List[int]]:
        """{cgroup directory: its pids} for the cgroups of ``pids`` the freezer can hold.

        Only a cgroup (with everything below it) that holds nothing but ``members``
        (this namespace's processes), and not us, is frozen as a whole.
        """
        root = _cgroup2_root()
        if root is None:
            return {}
        ours = _cgroup_of(os.getpid())
        allowed = set(members)
        groups: Dict[str, List[int]] = {}
        for p in pids:
            rel = _cgroup_of(p)
            if rel is None or rel == "/":
                continue
            groups.setdefault(rel, []).append(p)
        usable: Dict[str, List[int]] = {}
        for rel, ps in groups.items():
            path = os.path.join(root, rel.lstrip("/"))
            if ours is not None and (ours == rel or ours.startswith(rel.rstrip("/") + "/")):
                continue
            if not os.access(os.path.join(path, "cgroup.freeze"), os.W_OK):
                continue
            if not set(_procs_below(path)) <= allowed:
                continue
            usable[path] = ps
        return usable

    def freeze_cgroup(self, path: str, pids: Sequence[int]) -> None:
        with open(os.path.join(path, "cgroup.freeze")) as f:
            if f.read().strip() == "1":
                return  # frozen by someone else: theirs to thaw
        self.cgroups.append(path)
        self.held.extend(pids)
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("1")

        def frozen() -> bool:
            with open(os.path.join(path, "cgroup.events")) as f:
                return "frozen 1" in f.read().split("\n")

        _wait_for(frozen, f"cgroup {path}")

    def stop(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        if _held_or_gone(proc):
            return  # gone, a zombie, or stopped by someone else: theirs to continue
        self.stopped.append(proc)
        try:
            proc.suspend()
        except psutil.NoSuchProcess:
            return
        except psutil.AccessDenied:
            self.stopped.pop()
            raise _denied("SIGSTOP", pid) from None
        self.held.append(pid)
        _wait_for(lambda: _held_or_gone(proc), f"pid {pid}")

    def hold(self) -> None:
        handled: Set[int] = set()
        # Repeat until a pass finds no new process: one not yet stopped may fork.
        while True:
            current = [p for p in namespace_pids(self.pid) if p != os.getpid()]
            new = [p for p in current if p not in handled]
            if not new:
                break
            if not self.interrupt:
                blocked = _blocked_in(new)
                if blocked:
                    raise FreezeRefusedError(blocked)
            for path, ps in self.freezable(new, current).items():
                self.freeze_cgroup(path, ps)
                handled.update(ps)
            for p in new:
                if p not in handled and not _in_frozen_cgroup(p):
                    self.stop(p)
                handled.add(p)
        if not self.interrupt:
            # A thread may have entered a semop between the look and its stop; found
            # stopped in one, it either was about to return from it or was woken out
            # of it and fails with EINTR now. Which, nothing here can tell: say so.
            for b in _blocked_in(self.held, asleep=False):
                warnings.warn(FreezeWarning(
                    f"{b} when it was stopped: if it was waiting there, the call fails "
                    "with EINTR"), stacklevel=4)

    def release(self) -> None:
        failures: List[str] = []
        interrupted: Optional[BaseException] = None
        steps: List[Callable[[], None]] = []
        steps.extend(partial(_thaw_cgroup, path) for path in reversed(self.cgroups))
        steps.extend(partial(_continue, p) for p in reversed(self.stopped))
        for step in steps:
            # A Ctrl-C must not leave a process stopped: finish, then re-raise it.
            while True:
                try:
                    step()
                    break
                except KeyboardInterrupt as e:
                    interrupted = e
                except OSError as e:
                    failures.append(str(e))
                    break
        self.cgroups.clear()
        self.stopped.clear()
        self.held.clear()
        if interrupted is not None:
            raise interrupted
        if failures:
            raise FreezeError("could not thaw every process: " + "; ".join(failures))


def _thaw_cgroup(path: str) -> None:
    try:
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
    except FileNotFoundError:
        pass  # the cgroup is gone, and its processes with it


def _denied(what: str, pid: int) -> PermissionError:
    return PermissionError(errno.EPERM, f"{what} to pid {pid}: {os.strerror(errno.EPERM)} "
                           "(it needs the same user, or CAP_KILL)")


def _continue(proc: psutil.Process) -> None:
    try:
        proc.resume()
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        raise _denied("SIGCONT", proc.pid) from None


@contextmanager
def freeze_namespace(pid: Optional[int], *,
                     interrupt_blocked_semops: bool = False) -> Iterator[Optional[str]]:
    """Hold every process of the IPC namespace of ``pid`` still, and always let it go.

    Processes whose cgroup (v2) holds only processes of that namespace are frozen
    through the cgroup's ``cgroup.freeze``; the others get SIGSTOP, then SIGCONT.
    Processes that were already frozen or stopped are left as they were found.
    Yields how they were held (see :attr:`Snapshot.frozen`). The processes are
    let go on leaving the block, also on an error or Ctrl-C.

    A SIGSTOP is visible: a parent waiting with WUNTRACED, or a shell, sees the
    process stop and continue.

    Every way of holding a process (SIGSTOP, the cgroup v1 and v2 freezers, ptrace
    interrupt) makes a semop or semtimedop it is blocked in fail with EINTR. So unless
    ``interrupt_blocked_semops`` is true, a namespace with a thread in one is not
    frozen at all: :class:`FreezeRefusedError` names them (see :func:`blocked_semops`).

    Raises:
        ValueError: ``pid`` shares our namespace (that would stop every process of
            this system, this one included).
        FreezeRefusedError: a thread is in semop or semtimedop (nothing was frozen).
        FreezeError: a process did not stop in time, or could not be let go.

    Warns:
        FreezeWarning: a thread entered a semop between the look and its stop.
    """
    if not isinstance(interrupt_blocked_semops, bool):
        raise TypeError("freeze: interrupt_blocked_semops must be a bool, not "
                        f"{type(interrupt_blocked_semops).__name__}")
    if pid is None or namespace_id(pid) == namespace_id():
        raise ValueError("freeze: refusing to stop the processes of our own IPC namespace; "
                         "give the pid of a process in another namespace")
    holder = _Holder(pid, interrupt_blocked_semops)
    try:
        holder.hold()
        yield holder.method()
    finally:
        holder.release()
