"""What each way of holding a process still does to a C program blocked in a System V
call: SIGSTOP/SIGCONT, the cgroup v1 and v2 freezers, ptrace seize + interrupt.

The program installs no signal handler and reports what its call returned. After the
hold it has either ended its call with EINTR, or gone back to sleep in it (the kernel
restarted it; it then completes when woken the ordinary way). During the hold the
program's wchan tells whether it left the call or kept sleeping in it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Optional

import psutil
import pytest

import ipcbind
from ipcbind import IPC_NOWAIT
from sysv_helpers import _read, wait_until

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/msg.h>
#include <sys/sem.h>

int main(int argc, char **argv)
{
    int id = atoi(argv[2]);
    long r = -1;
    struct sembuf op = {0, -1, 0};
    struct timespec t = {600, 0};
    struct { long mtype; char text[64]; } m = {1, "x"};
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(argv[1], "semop")) r = semop(id, &op, 1);
    else if (!strcmp(argv[1], "semtimedop")) r = semtimedop(id, &op, 1, &t);
    else if (!strcmp(argv[1], "msgrcv")) r = msgrcv(id, &m, sizeof m.text, 0, 0);
    else if (!strcmp(argv[1], "msgsnd")) r = msgsnd(id, &m, 1, 0);
    printf("%s\n", r < 0 ? (errno == EINTR ? "EINTR" : strerror(errno)) : "ok");
    return 0;
}
"""

CALLS = ("semop", "semtimedop", "msgrcv", "msgsnd")
# The kernel function each call sleeps in, as wchan names it.
SLEEPS_IN = {"semop": "semtimedop", "semtimedop": "semtimedop", "msgrcv": "msgrcv",
             "msgsnd": "msgsnd"}
# Measured on Linux 6.18 x86-64, the same for every mechanism below (docs/snapshots.md).
EXPECTED = {"semop": "EINTR", "semtimedop": "EINTR", "msgrcv": "restarted",
            "msgsnd": "restarted"}

class Probe:
    """The C program, blocked in ``call`` on a fresh object."""

    def __init__(self, exe: str, call: str, ident: int) -> None:
        self.call, self.ident = call, ident
        self.proc = subprocess.Popen([exe, call, str(ident)], stdout=subprocess.PIPE, text=True)
        self.held_in = ""

    def wchan(self) -> str:
        return _read(f"/proc/{self.proc.pid}/wchan")

    def asleep_in_call(self) -> bool:
        return (SLEEPS_IN[self.call] in self.wchan()
                and psutil.Process(self.proc.pid).status() == psutil.STATUS_SLEEPING)

    def wake(self) -> None:
        if self.call.startswith("sem"):
            ipcbind.semop(self.ident, [(0, 1)])
        elif self.call == "msgrcv":
            ipcbind.msgsnd(self.ident, 1, b"y")
        else:
            ipcbind.msgrcv(self.ident, None, 0, IPC_NOWAIT)

    def outcome(self) -> str:
        """'EINTR', 'restarted' (back asleep in the call after the hold) or 'kept
        sleeping' (never left it), once the hold is over."""
        wait_until(lambda: self.proc.poll() is not None or self.asleep_in_call(),
                   what=f"{self.call} returning or sleeping again")
        woken = self.proc.poll() is None
        if woken:
            self.wake()
        assert self.proc.stdout is not None
        said = self.proc.stdout.read().strip()
        self.proc.wait(10)
        if said == "EINTR":
            return said
        assert said == "ok" and woken, f"{self.call} said {said!r}"
        return "kept sleeping" if SLEEPS_IN[self.call] in self.held_in else "restarted"


@pytest.fixture(params=CALLS)
def probe(request: pytest.FixtureRequest, build: Callable[[str, str], str],
          make_queue: Callable[..., int], make_semset: Callable[..., int]) -> Iterator[Probe]:
    call: str = request.param
    if call.startswith("sem"):
        ident = make_semset()
    else:
        ident = make_queue()
        if call == "msgsnd":
            while True:
                try:
                    ipcbind.msgsnd(ident, 1, b"\0" * 1024, IPC_NOWAIT)
                except BlockingIOError:
                    break
    p = Probe(build("probe", PROBE_C), call, ident)
    try:
        wait_until(p.asleep_in_call, what=f"the probe blocking in {call}")
        yield p
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def _held(p: Probe, hold: Callable[[int], ContextManager[None]]) -> str:
    with hold(p.proc.pid):
        p.held_in = p.wchan()
    return p.outcome()


def _stopped(pid: int) -> bool:
    return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


@contextmanager
def _sigstop(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: _stopped(pid), what="the stop")
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_sigstop_then_sigcont_ends_a_blocked_semop_with_eintr_and_restarts_msg_calls(
        probe: Probe) -> None:
    assert _held(probe, _sigstop) == EXPECTED[probe.call]


def _mount_of(kind: str, option: Optional[str] = None) -> str:
    with open("/proc/mounts") as f:
        for line in f:
            _, where, fstype, opts = line.split()[:4]
            if fstype == kind and (option is None or option in opts.split(",")):
                return where
    return ""


@contextmanager
def _cgroup(root: str, pid: int) -> Iterator[str]:
    """``pid`` in a fresh child cgroup of ``root``; put back and removed afterwards."""
    if os.geteuid() != 0 or not root or not os.access(root, os.W_OK):
        pytest.skip(f"needs root and a writable cgroup hierarchy ({root or 'none mounted'})")
    path = os.path.join(root, f"ipcbind-test-{os.getpid()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        yield path
    finally:
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        os.rmdir(path)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def test_cgroup_v1_freezer_ends_a_blocked_semop_with_eintr_and_restarts_msg_calls(
        probe: Probe) -> None:
    @contextmanager
    def freeze(pid: int) -> Iterator[None]:
        with _cgroup(_mount_of("cgroup", "freezer"), pid) as path:
            state = os.path.join(path, "freezer.state")
            _write(state, "FROZEN")
            try:
                wait_until(lambda: _read(state).strip() == "FROZEN", what="FROZEN")
                yield
            finally:
                _write(state, "THAWED")

    assert _held(probe, freeze) == EXPECTED[probe.call]


def test_cgroup_v2_freezer_ends_a_blocked_semop_with_eintr_and_restarts_msg_calls(
        probe: Probe) -> None:
    @contextmanager
    def freeze(pid: int) -> Iterator[None]:
        with _cgroup(_mount_of("cgroup2"), pid) as path:
            _write(os.path.join(path, "cgroup.freeze"), "1")
            try:
                wait_until(lambda: "frozen 1" in _read(os.path.join(path, "cgroup.events")),
                           what="frozen 1")
                yield
            finally:
                _write(os.path.join(path, "cgroup.freeze"), "0")

    assert _held(probe, freeze) == EXPECTED[probe.call]


PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207


def test_ptrace_seize_and_interrupt_ends_a_blocked_semop_with_eintr_and_restarts_msg_calls(
        probe: Probe) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long

    def ptrace(request: int, pid: int) -> None:
        if libc.ptrace(request, pid, None, None) != 0:
            err = ctypes.get_errno()
            if request == PTRACE_SEIZE and err == errno.EPERM:
                pytest.skip("ptrace is not permitted here (needs the same user, or "
                            "CAP_SYS_PTRACE, and no Yama restriction)")
            raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")

    @contextmanager
    def interrupt(pid: int) -> Iterator[None]:
        ptrace(PTRACE_SEIZE, pid)
        ptrace(PTRACE_INTERRUPT, pid)
        # The probe is our child: its ptrace stop is reported to this wait.
        _, status = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP
        try:
            yield
        finally:
            ptrace(PTRACE_DETACH, pid)

    assert _held(probe, interrupt) == EXPECTED[probe.call]
