"""Shared fixtures: every IPC object a test makes is removed afterwards, also when
the test fails, and no test touches an object it did not make."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import ipcbind
from ipcbind import IPC_CREAT, IPC_PRIVATE, IPC_RMID, MSG_STAT_ANY, MessageQueue, SharedMemory

NOBODY = 65534
CC = shutil.which("gcc") or shutil.which("cc")


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], str]:
    """build(name, source) -> path of a program compiled from C source."""
    if CC is None:
        pytest.skip("needs a C compiler (gcc or cc)")
    d = tmp_path_factory.mktemp("c")
    built: Dict[str, str] = {}

    def make(name: str, source: str) -> str:
        if name not in built:
            src = d / f"{name}.c"
            src.write_text(source)
            exe = str(d / name)
            subprocess.run([CC, "-O1", "-o", exe, str(src)], check=True,
                           capture_output=True)
            built[name] = exe
        return built[name]
    return make


def index_of(ident: int, stat: Callable[[int, int], Tuple[int, Any]],
             cmds: Sequence[int]) -> Optional[int]:
    """The index of IPC object ``ident``, asking only the indices it can have (its id
    modulo IPCMNI, without and with ipcmni_extend) with ``stat(index, cmd)`` for each
    of ``cmds`` in turn; None if none gives the object back."""
    for mni in (1 << 15, 1 << 24):
        for cmd in cmds:
            try:
                if stat(ident % mni, cmd)[0] == ident:
                    return ident % mni
            except OSError:
                pass
    return None


def _kernel_knows_stat_any() -> bool:
    """Whether MSG_STAT_ANY (and SEM_STAT_ANY, which came with it) works here.

    Linux < 4.17 and qemu-user answer it with EINVAL, even for an index in use."""
    q = ipcbind.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
    try:
        return index_of(q, ipcbind.msgctl, (MSG_STAT_ANY,)) is not None
    finally:
        ipcbind.msgctl(q, IPC_RMID)


STAT_ANY_KNOWN = _kernel_knows_stat_any()
needs_stat_any = pytest.mark.skipif(
    not STAT_ANY_KNOWN,
    reason="the kernel refuses MSG_STAT_ANY/SEM_STAT_ANY (Linux < 4.17, or qemu-user), "
           "and this test needs to read an object without read permission")

EMULATOR = os.environ.get("IPCBIND_EMULATOR", "")
"""Set by scripts/arm64-test.sh ("qemu-user") for the emulator's known faults."""

qemu_reads_lrpid_as_0 = pytest.mark.xfail(
    EMULATOR == "qemu-user", strict=True,
    reason="qemu-user's struct msqid_ds for 64-bit guests gives msg_lspid 8 bytes, so "
           "msg_lrpid always reads 0 (scripts/emulator-check.c shows it in plain C)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", default=False,
                     help="run the tests marked 'stress' at full size (minutes, not seconds)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stress: a test whose size grows with --stress (select with -m stress)")


@pytest.fixture
def stress(request: pytest.FixtureRequest) -> bool:
    """Whether --stress was given: tests pick their big sizes then."""
    return bool(request.config.getoption("--stress"))


@pytest.fixture(scope="session", autouse=True)
def _outside_the_source_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run the suite from a scratch directory.

    A child Python started with ``-c`` or ``-m`` puts its working directory first on
    sys.path; from the checkout's root that is the uncompiled source package, which
    would shadow the installed one (no ``ipcbind._ffi``)."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture
def make_queue() -> Iterator[Callable[..., int]]:
    """Factory: make_queue(mode=0o600, key=IPC_PRIVATE) -> msqid, removed at teardown."""
    made: List[int] = []

    def make(mode: int = 0o600, key: int = IPC_PRIVATE, flags: int = IPC_CREAT) -> int:
        q = ipcbind.msgget(key, flags | mode)
        made.append(q)
        return q

    yield make
    for q in made:
        try:
            ipcbind.msgctl(q, IPC_RMID)
        except OSError:
            pass  # the test removed it itself


@pytest.fixture
def msq(make_queue: Callable[..., int]) -> int:
    """A fresh private message queue (mode 0600)."""
    return make_queue()


@pytest.fixture
def make_mq() -> Iterator[Callable[..., MessageQueue]]:
    """Factory for MessageQueue.create(...); every queue made is removed at teardown."""
    made: List[MessageQueue] = []

    def make(*args: object, **kwargs: object) -> MessageQueue:
        q = MessageQueue.create(*args, **kwargs)  # type: ignore[arg-type]
        made.append(q)
        return q

    yield make
    for q in made:
        try:
            q.remove()
        except OSError:
            pass  # the test removed it


@pytest.fixture
def q(make_mq: Callable[..., MessageQueue]) -> MessageQueue:
    """A fresh private MessageQueue (mode 0600), removed at teardown."""
    return make_mq()


@pytest.fixture
def make_semset() -> Iterator[Callable[..., int]]:
    """Factory: make_semset(nsems=1, mode=0o600, key=IPC_PRIVATE) -> semid, removed at teardown."""
    made: List[int] = []

    def make(nsems: int = 1, mode: int = 0o600, key: int = IPC_PRIVATE,
             flags: int = IPC_CREAT) -> int:
        s = ipcbind.semget(key, nsems, flags | mode)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            ipcbind.semctl(s, 0, IPC_RMID)
        except OSError:
            pass


@pytest.fixture
def semset(make_semset: Callable[..., int]) -> int:
    """A fresh private set of one semaphore (mode 0600)."""
    return make_semset()


def unused_segment_key() -> int:
    """A key no segment uses yet, with the high bit set (a key a C int holds negative)."""
    for k in range(0x8badf00d, 0x8badf00d + 1000):
        try:
            ipcbind.shmget(k, 0)
        except FileNotFoundError:
            return k
    raise AssertionError("no free key")


@pytest.fixture
def make_segment() -> Iterator[Callable[..., int]]:
    """Factory: make_segment(size=4096, mode=0o600, key=IPC_PRIVATE) -> shmid, removed
    at teardown."""
    made: List[int] = []

    def make(size: int = 4096, mode: int = 0o600, key: int = IPC_PRIVATE,
             flags: int = IPC_CREAT) -> int:
        i = ipcbind.shmget(key, size, flags | mode)
        made.append(i)
        return i

    yield make
    for i in made:
        try:
            ipcbind.shmctl(i, IPC_RMID)
        except OSError:
            pass  # the test removed it


@pytest.fixture
def seg(make_segment: Callable[..., int]) -> int:
    """A fresh private segment of 4096 bytes (mode 0600)."""
    return make_segment()


@pytest.fixture
def make_shm() -> Iterator[Callable[..., SharedMemory]]:
    """Factory for SharedMemory.create(size=4096, ...); every segment made is removed at
    teardown."""
    made: List[SharedMemory] = []

    def make(size: int = 4096, **kwargs: object) -> SharedMemory:
        s = SharedMemory.create(size, **kwargs)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.remove()
        except OSError:
            pass  # the test removed it


def start_child(fn: Callable[[], int], *, uid: int | None = None) -> int:
    """Fork a child running fn (as ``uid`` if given, which needs root) and return its
    pid without waiting; fn's return value is the exit code, an exception is 70.
    Pair with :func:`reap`."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            code = fn()
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def run_in_child(fn: Callable[[], int], *, uid: int | None = None, timeout: float = 10) -> int:
    """Run fn in a forked child (see :func:`start_child`) and return its exit status;
    the child is killed if it outlives ``timeout``."""
    return reap(start_child(fn, uid=uid), timeout)


def reap(pid: int, timeout: float = 10) -> int:
    """Wait for child ``pid`` and return its exit status; one that outlives
    ``timeout`` is killed and reaped, then AssertionError is raised."""
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish within {timeout} s")
        time.sleep(0.002)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to switch to another uid)")
