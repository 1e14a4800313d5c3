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
import json
import os
import signal
import subprocess
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Iterator, List, Optional

import psutil
import pytest

import ipcbind
from ipcbind import IPC_NOWAIT, cli
from ipcbind.namespace import enter_namespace
import ipcbind.snapshot.freeze as freeze_module
from ipcbind.snapshot import (BlockedCall, FreezeRefusedError, FreezeWarning, blocked_semops,
                              freeze_namespace, snapshot)
from sysv_helpers import _read, wait_until

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/msg.h>
#include <sys/sem.h>

/* probe CALL ID [thread]: block in CALL on object ID, then print what it returned.
   ID "new": first make a fresh IPC namespace and the object there (needs root).
   "thread": make the call in a second thread while the first one sleeps. */
static const char *call;
static int id;

static void *block(void *unused)
{
    long r = -1;
    struct sembuf op = {0, -1, 0};
    struct timespec t = {600, 0};
    struct { long mtype; char text[1024]; } m = {1, "x"};
    if (!strcmp(call, "semop")) r = semop(id, &op, 1);
    else if (!strcmp(call, "semtimedop")) r = semtimedop(id, &op, 1, &t);
    else if (!strcmp(call, "msgrcv")) r = msgrcv(id, &m, sizeof m.text, 0, 0);
    else if (!strcmp(call, "msgsnd")) r = msgsnd(id, &m, 1, 0);
    printf("%s\n", r < 0 ? (errno == EINTR ? "EINTR" : strerror(errno)) : "ok");
    exit(0);
}

int main(int argc, char **argv)
{
    pthread_t t;
    call = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(argv[2], "new")) id = atoi(argv[2]);
    else {
        if (unshare(CLONE_NEWIPC)) { perror("unshare"); return 1; }
        if (call[0] == 's') id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
        else {
            struct { long mtype; char text[1024]; } m = {1, ""};
            id = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
            if (!strcmp(call, "msgsnd"))
                while (msgsnd(id, &m, sizeof m.text, IPC_NOWAIT) == 0) {}
        }
        printf("%d\n", id);
    }
    if (argc > 3) {
        pthread_create(&t, NULL, block, NULL);
        for (;;) pause();
    }
    block(NULL);
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
    """The C program, blocked in ``call`` on object ``ident``, or (None) on an object of
    its own in an IPC namespace of its own; in a second thread if ``thread``."""

    def __init__(self, exe: str, call: str, ident: Optional[int], thread: bool = False) -> None:
        self.call = call
        argv = [exe, call, "new" if ident is None else str(ident)] + (["thread"] if thread else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self.own_namespace = ident is None
        self.ident = int(self.proc.stdout.readline()) if ident is None else ident
        self.held_in = ""

    def wchan(self) -> str:
        """The wchan of each of its threads."""
        return " ".join(_read(f"/proc/{self.pid}/task/{t}/wchan")
                        for t in os.listdir(f"/proc/{self.pid}/task"))

    def asleep_in_call(self) -> bool:
        try:
            return any(SLEEPS_IN[self.call] in _read(f"/proc/{self.pid}/task/{t.id}/wchan")
                       and psutil.Process(t.id).status() == psutil.STATUS_SLEEPING
                       for t in psutil.Process(self.pid).threads())
        except (psutil.NoSuchProcess, FileNotFoundError):
            return False

    def wake(self) -> None:
        with enter_namespace(self.pid) if self.own_namespace else nullcontext():
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


StartProbe = Callable[..., Probe]


@pytest.fixture
def start_probe(build: Callable[[str, str], str]) -> Iterator[StartProbe]:
    """start_probe(call, ident, thread=False) -> a Probe asleep in its call; killed at
    teardown."""
    started: List[Probe] = []

    def start(call: str, ident: Optional[int], thread: bool = False) -> Probe:
        if ident is None and os.geteuid() != 0:
            pytest.skip("needs root (CAP_SYS_ADMIN) to make an IPC namespace")
        p = Probe(build("probe", PROBE_C), call, ident, thread)
        started.append(p)
        wait_until(p.asleep_in_call, what=f"the probe blocking in {call}")
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture(params=CALLS)
def probe(request: pytest.FixtureRequest, start_probe: StartProbe,
          make_queue: Callable[..., int], make_semset: Callable[..., int]) -> Probe:
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
    return start_probe(call, ident)


def _held(p: Probe, hold: Callable[[int], ContextManager[None]]) -> str:
    with hold(p.pid):
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
def _cgroup(root: str, pid: int, control: str) -> Iterator[str]:
    """``pid`` in a fresh child cgroup of ``root``, which has the file ``control``;
    put back and removed afterwards."""
    if os.geteuid() != 0 or not root or not os.access(root, os.W_OK):
        pytest.skip(f"needs root and a writable cgroup hierarchy ({root or 'none mounted'})")
    path = os.path.join(root, f"ipcbind-test-{os.getpid()}")
    os.mkdir(path)
    if not os.path.exists(os.path.join(path, control)):
        os.rmdir(path)
        pytest.skip(f"this kernel's cgroups have no {control}")
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        yield path
    finally:
        try:
            with open(os.path.join(root, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except ProcessLookupError:
            pass  # it has exited; it leaves the cgroup once reaped
        # A process leaves a cgroup asynchronously; a bounded wait for it.
        wait_until(lambda: _read(os.path.join(path, "cgroup.procs")) == "",
                   what=f"{path} emptying")
        os.rmdir(path)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def test_cgroup_v1_freezer_ends_a_blocked_semop_with_eintr_and_restarts_msg_calls(
        probe: Probe) -> None:
    @contextmanager
    def freeze(pid: int) -> Iterator[None]:
        with _cgroup(_mount_of("cgroup", "freezer"), pid, "freezer.state") as path:
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
        with _cgroup(_mount_of("cgroup2"), pid, "cgroup.freeze") as path:
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


# ---- freeze_namespace and dump --freeze: what they do about it ---------------------------

@pytest.mark.parametrize("call", ["semop", "semtimedop"])
def test_freeze_refuses_a_namespace_with_a_process_blocked_in_a_semaphore_call_and_names_it(
        start_probe: StartProbe, call: str) -> None:
    p = start_probe(call, None)
    with pytest.raises(FreezeRefusedError, match=rf"pid {p.pid} \(probe\) in {call}") as e:
        with freeze_namespace(p.pid):
            pass
    assert e.value.blocked == (BlockedCall(p.pid, p.pid, "probe", call),)
    assert "interrupt_blocked_semops=True" in str(e.value)
    assert p.asleep_in_call()  # never stopped
    assert p.outcome() == "restarted"  # its call completes when woken: untouched


def test_freeze_names_the_thread_of_a_process_whose_other_thread_is_elsewhere(
        start_probe: StartProbe) -> None:
    p = start_probe("semop", None, thread=True)
    tids = sorted(t.id for t in psutil.Process(p.pid).threads())
    with pytest.raises(FreezeRefusedError) as e:
        with freeze_namespace(p.pid):
            pass
    assert e.value.blocked == (BlockedCall(p.pid, tids[1], "probe", "semop"),)
    assert f"pid {p.pid} (probe) thread {tids[1]} in semop" in str(e.value)


def test_freeze_told_to_interrupt_blocked_semops_holds_the_process_and_its_semop_gets_eintr(
        start_probe: StartProbe) -> None:
    p = start_probe("semop", None)
    with freeze_namespace(p.pid, interrupt_blocked_semops=True) as how:
        assert how == "sigstop" and _stopped(p.pid)
        assert blocked_semops(p.pid) == []  # stopped: its call is interrupted already
    assert p.outcome() == "EINTR"


@pytest.mark.parametrize("call", ["msgrcv", "msgsnd"])
def test_freeze_holds_a_process_blocked_in_a_message_call_which_completes_after(
        start_probe: StartProbe, call: str) -> None:
    p = start_probe(call, None)
    assert blocked_semops(p.pid) == []
    snap = snapshot(p.pid, freeze=True)
    assert snap.frozen == "sigstop" and [q.id for q in snap.queues] == [p.ident]
    assert p.outcome() == "restarted"


def test_snapshot_with_freeze_refuses_like_freeze_namespace(start_probe: StartProbe) -> None:
    p = start_probe("semop", None)
    with pytest.raises(FreezeRefusedError):
        snapshot(p.pid, freeze=True)
    assert snapshot(p.pid, freeze=True, interrupt_blocked_semops=True).frozen == "sigstop"
    assert p.outcome() == "EINTR"


def test_dump_freeze_refuses_with_exit_1_naming_the_process(
        start_probe: StartProbe, capsys: pytest.CaptureFixture[str]) -> None:
    p = start_probe("semop", None)
    assert cli.main(["dump", "--pid", str(p.pid), "--freeze"]) == 1
    err = capsys.readouterr().err
    assert f"pid {p.pid} (probe) in semop" in err and "--interrupt-blocked-semops" in err
    assert p.outcome() == "restarted"


def test_dump_freeze_interrupt_blocked_semops_dumps_and_names_what_it_interrupts(
        start_probe: StartProbe, capsys: pytest.CaptureFixture[str]) -> None:
    p = start_probe("semop", None)
    assert cli.main(["dump", "--pid", str(p.pid), "--freeze",
                     "--interrupt-blocked-semops"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["frozen"] == "sigstop"
    assert f"freezing anyway: pid {p.pid} (probe) in semop fails with EINTR" in err
    assert p.outcome() == "EINTR"


def test_dump_interrupt_blocked_semops_without_freeze_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dump", "--interrupt-blocked-semops"]) == 2
    assert "--interrupt-blocked-semops goes with --freeze" in capsys.readouterr().err



def test_a_thread_found_in_a_semop_only_after_its_stop_is_named_in_a_freeze_warning(
        start_probe: StartProbe, monkeypatch: pytest.MonkeyPatch) -> None:
    # The look before the stop sees only threads asleep; counting none as asleep
    # stands for a thread that entered its semop just after that look.
    p = start_probe("semop", None)
    monkeypatch.setattr(freeze_module, "_ASLEEP", frozenset())
    with pytest.warns(FreezeWarning, match=rf"pid {p.pid} \(probe\) in semop when it was "
                                           "stopped: if it was waiting there, the call "
                                           "fails with EINTR"):
        with freeze_namespace(p.pid) as how:
            assert how == "sigstop"
    assert p.outcome() == "EINTR"


def test_dump_freeze_prints_a_freeze_warning_as_one_line(
        start_probe: StartProbe, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    p = start_probe("semop", None)
    monkeypatch.setattr(freeze_module, "_ASLEEP", frozenset())
    assert cli.main(["dump", "--pid", str(p.pid), "--freeze"]) == 0
    err = capsys.readouterr().err
    assert f"ipcbind: warning: pid {p.pid} (probe) in semop when it was stopped" in err
    assert p.outcome() == "EINTR"
