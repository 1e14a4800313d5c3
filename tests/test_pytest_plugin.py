"""The pytest plugin (ipcbind.pytest_plugin), run in inner pytest sessions through pytester.

Inner sessions that only make and remove objects run in-process (fast; they share the
plugin module with this process, which is how installed plugins are used too). Those
that enter an IPC namespace, or must run without a privilege, run in a subprocess so
that nothing they do to the calling thread can reach this one.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

import ipcbind
from ipcbind import IPC_RMID, IPC_STAT, MessageQueue, SemaphoreSet
from conftest import EMULATOR
from ipcbind.pytest_plugin import (
    IpcFactory,
    queue_messages,
    semaphore_values,
    wait_for_messages,
)

pytest_plugins = ["pytester"]


def _can_unshare_ipc() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-i", "true"], stderr=subprocess.DEVNULL).returncode == 0


CAN_UNSHARE = _can_unshare_ipc()
needs_ns = pytest.mark.skipif(not CAN_UNSHARE,
                              reason="needs root or CAP_SYS_ADMIN (to make an IPC namespace)")


def _ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/ipc").st_ino


def _exists(stat: Callable[[int], object]) -> Callable[[int], bool]:
    def exists(ident: int) -> bool:
        try:
            stat(ident)
        except OSError as e:
            assert e.errno in (errno.EINVAL, errno.EIDRM)
            return False
        return True
    return exists


_queue_exists = _exists(lambda i: ipcbind.msgctl(i, IPC_STAT))
_semset_exists = _exists(lambda i: ipcbind.semctl(i, 0, IPC_STAT))
_segment_exists = _exists(lambda i: ipcbind.shmctl(i, IPC_STAT))


def _run_alone(pytester: pytest.Pytester, *args: str, prelude: str = "") -> pytest.RunResult:
    """Run an inner session in a subprocess, in an IPC namespace of its own when this
    runner may make one.

    Outside a namespace the leak check is best effort: on a shared machine another
    process of the same user could make an object during the inner test and be
    blamed for it. ``prelude`` is shell run first, in the same namespace.
    """
    cmd = f"{prelude}\nexec {sys.executable} -m pytest -p no:cacheprovider \"$@\""
    wrap = ["unshare", "-i"] if CAN_UNSHARE else []
    return pytester.run(*wrap, "sh", "-c", cmd, "sh", *args, timeout=120)


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> Iterator[Path]:
    """A file where inner tests note the objects they make (kind, id, namespace).
    Any still there afterwards in this namespace (the inner run made them, so they
    are ours) are removed; those in another namespace died with it."""
    path = pytester.path / "ids.txt"
    yield path
    here = _ns_inode()
    for kind, ident, ns in _records(path):
        if ns != here:
            continue
        try:
            if kind == "q":
                ipcbind.msgctl(ident, IPC_RMID)
            elif kind == "m":
                ipcbind.shmctl(ident, IPC_RMID)
            else:
                ipcbind.semctl(ident, 0, IPC_RMID)
        except OSError:
            pass


RECORD = '''
import os

def record(kind, ident):
    ns = os.stat("/proc/thread-self/ns/ipc").st_ino
    with open({path!r}, "a") as f:
        f.write(f"{{kind}} {{ident}} {{ns}}\\n")
'''


def _records(path: Path) -> List[Tuple[str, int, int]]:
    if not path.exists():
        return []
    return [(k, int(i), int(ns)) for k, i, ns in
            (line.split() for line in path.read_text().splitlines())]


def _recorded(path: Path, kind: str) -> List[int]:
    return [ident for k, ident, _ in _records(path) if k == kind]


# ---- fixtures ---------------------------------------------------------------------------

def test_fixtures_are_available_with_no_configuration(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind

        def test_uses_them(ipc_queue, ipc_semset, ipc_factory):
            ipc_queue.send(b"x")
            assert ipc_queue.receive().data == b"x"
            assert ipc_semset.values == [0]
            assert len(ipc_factory.queue()) == 0
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_queue_fixture_removes_the_queue_after_a_failing_test(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
def test_fails(ipc_queue):
    record("q", ipc_queue.id)
    assert False
""")
    pytester.runpytest_inprocess().assert_outcomes(failed=1)
    [msqid] = _recorded(recorded, "q")
    assert not _queue_exists(msqid)


def test_semset_fixture_removes_the_set_after_a_failing_test(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
def test_fails(ipc_semset):
    record("s", ipc_semset.id)
    raise RuntimeError("boom")
""")
    pytester.runpytest_inprocess().assert_outcomes(failed=1)
    [semid] = _recorded(recorded, "s")
    assert not _semset_exists(semid)


def test_factory_removes_everything_it_made_after_a_failing_test(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
def test_fails(ipc_factory):
    for _ in range(3):
        record("q", ipc_factory.queue().id)
        record("s", ipc_factory.semset(2).id)
    assert False
""")
    pytester.runpytest_inprocess().assert_outcomes(failed=1)
    queues, sets = _recorded(recorded, "q"), _recorded(recorded, "s")
    assert len(queues) == len(sets) == 3
    assert not any(map(_queue_exists, queues))
    assert not any(map(_semset_exists, sets))


def test_fixture_accepts_that_the_test_removed_its_object(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind

        def test_removes(ipc_queue, ipc_semset):
            ipc_queue.remove()
            ipc_semset.remove()
    """)
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_semset_marker_sets_size_mode_and_values(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind, pytest

        @pytest.mark.ipc_semset(nsems=3, mode=0o640, values=[1, 2, 3])
        def test_marked(ipc_semset):
            assert ipc_semset.stat().mode == 0o640
            assert ipc_semset.values == [1, 2, 3]
    """)
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_indirect_parametrisation_sets_queue_mode_and_qbytes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind, pytest

        @pytest.mark.parametrize("ipc_queue", [{"mode": 0o600, "qbytes": 100},
                                               {"mode": 0o644, "qbytes": 200}], indirect=True)
        def test_param(ipc_queue):
            ds = ipc_queue.stat()
            assert (ds.mode, ds.qbytes) in [(0o600, 100), (0o644, 200)]
    """)
    pytester.runpytest_inprocess().assert_outcomes(passed=2)


def test_unknown_fixture_option_is_an_error_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.ipc_queue(size=10)
        def test_marked(ipc_queue):
            pass
    """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown option(s) size*"])


def test_shm_fixture_removes_the_segment_after_a_failing_test(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
def test_fails(ipc_shm):
    record("m", ipc_shm.id)
    ipc_shm.write(b"kept attached by the fixture's segment")
    assert ipc_shm.stat().nattch == 1
    assert False
""")
    pytester.runpytest_inprocess().assert_outcomes(failed=1)
    [shmid] = _recorded(recorded, "m")
    assert not _segment_exists(shmid)


def test_shm_marker_sets_size_and_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.ipc_shm(size=10000, mode=0o640)
        def test_marked(ipc_shm):
            assert (ipc_shm.size, ipc_shm.stat().mode, ipc_shm.read(3)) == (10000, 0o640, bytes(3))
    """)
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_factory_makes_segments_and_removes_them(pytester: pytest.Pytester,
                                                 recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
def test_makes(ipc_factory):
    for size in (1, 5000):
        record("m", ipc_factory.segment(size).id)
""")
    pytester.runpytest_inprocess().assert_outcomes(passed=1)
    made = _recorded(recorded, "m")
    assert len(made) == 2 and not any(_segment_exists(i) for i in made)


def test_factory_refuses_a_key_already_in_use(ipc_factory: IpcFactory) -> None:
    key = 0x1BC0FFEE ^ os.getpid()
    ipc_factory.queue(key=key)
    with pytest.raises(FileExistsError):
        ipc_factory.queue(key=key)


# ---- leak check -------------------------------------------------------------------------

LEAKY = '''
import ipcbind, os, pytest

def test_leaks_a_queue():
    record("q", ipcbind.msgget(ipcbind.IPC_PRIVATE, ipcbind.IPC_CREAT | 0o600))
'''


def test_leak_check_fails_a_leaky_test_and_names_the_object(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + LEAKY)
    result = _run_alone(pytester, "--ipc-leaks")
    result.assert_outcomes(passed=1, errors=1)
    [msqid] = _recorded(recorded, "q")
    result.stdout.fnmatch_lines([f"*message queue {msqid} *ipcrm -q {msqid}*"])


def test_leak_check_names_a_leaked_segment_with_its_ipcrm(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
import ipcbind

def test_leaks_a_segment():
    record("m", ipcbind.shmget(ipcbind.IPC_PRIVATE, 5000, ipcbind.IPC_CREAT | 0o600))
""")
    result = _run_alone(pytester, "--ipc-leaks")
    result.assert_outcomes(passed=1, errors=1)
    [shmid] = _recorded(recorded, "m")
    result.stdout.fnmatch_lines([f"*shared memory segment {shmid} *5000 bytes*ipcrm -m {shmid}*"])


def test_leak_check_says_a_segment_removed_but_attached_goes_with_its_detach(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
import ipcbind
KEPT = []

def test_keeps_an_attachment():
    s = ipcbind.SharedMemory.create(4096)
    record("m", s.id)
    KEPT.append(s.attach())
    s.remove()
""")
    result = _run_alone(pytester, "--ipc-leaks")
    result.assert_outcomes(passed=1, errors=1)
    [shmid] = _recorded(recorded, "m")
    result.stdout.fnmatch_lines([f"*shared memory segment {shmid} *removed but still attached)"
                                 " in the host namespace; it goes when its last attachment is "
                                 "detached"])
    assert "ipcrm -m" not in result.stdout.str()


def test_leak_check_passes_a_segment_removed_and_detached(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind

        def test_cleans_up(ipc_shm):
            with ipcbind.SharedMemory.create(4096) as s, s.attach() as att:
                att[0] = 1
            ipc_shm.write(b"x")
    """)
    _run_alone(pytester, "--ipc-leaks").assert_outcomes(passed=1)


def test_leak_check_is_off_without_option_or_marker(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + LEAKY)
    _run_alone(pytester).assert_outcomes(passed=1)


def test_leak_check_passes_a_clean_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind

        def test_cleans_up(ipc_queue, ipc_factory):
            ipc_factory.semset(4)
            q = ipcbind.msgget(ipcbind.IPC_PRIVATE, ipcbind.IPC_CREAT | 0o600)
            ipcbind.msgctl(q, ipcbind.IPC_RMID)
    """)
    _run_alone(pytester, "--ipc-leaks").assert_outcomes(passed=1)


def test_leak_marker_turns_the_check_on_for_one_test(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
import ipcbind, pytest

@pytest.mark.ipc_leaks
def test_checked():
    record("s", ipcbind.semget(ipcbind.IPC_PRIVATE, 2, ipcbind.IPC_CREAT | 0o600))

def test_unchecked():
    record("s", ipcbind.semget(ipcbind.IPC_PRIVATE, 2, ipcbind.IPC_CREAT | 0o600))
""")
    result = _run_alone(pytester)
    result.assert_outcomes(passed=2, errors=1)
    checked = _recorded(recorded, "s")[0]
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_checked*",
                                 f"*semaphore set {checked} *2 semaphore(s)*"])


def test_leak_marker_false_exempts_a_test_from_the_option(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
import ipcbind, pytest

@pytest.mark.ipc_leaks(False)
def test_exempt():
    record("q", ipcbind.msgget(ipcbind.IPC_PRIVATE, ipcbind.IPC_CREAT | 0o600))
""")
    _run_alone(pytester, "--ipc-leaks").assert_outcomes(passed=1)


def test_leak_check_ini_setting_turns_it_on(pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makeini("[pytest]\nipc_leaks = true\n")
    pytester.makepyfile(RECORD.format(path=str(recorded)) + LEAKY)
    _run_alone(pytester).assert_outcomes(passed=1, errors=1)


def test_leak_check_blames_a_leak_made_by_a_child_process(
        pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(RECORD.format(path=str(recorded)) + """
import subprocess, sys

def test_child_leaks():
    out = subprocess.run([sys.executable, "-c",
        "import ipcbind as i; q = i.msgget(i.IPC_PRIVATE, i.IPC_CREAT | 0o600); "
        "i.msgsnd(q, 1, b'x'); print(q)"], capture_output=True, text=True, check=True)
    record("q", int(out.stdout))
""")
    result = _run_alone(pytester, "--ipc-leaks")
    result.assert_outcomes(passed=1, errors=1)
    [msqid] = _recorded(recorded, "q")
    result.stdout.fnmatch_lines([f"*message queue {msqid} *1 message(s)*"])


STRANGER = """
import ipcbind as i, os, sys, time

here = sys.argv[1]

def wait_for(name):
    end = time.monotonic() + 60
    while not os.path.exists(os.path.join(here, name)):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True

if wait_for("go"):
    q = i.msgget(i.IPC_PRIVATE, i.IPC_CREAT | 0o600)
    i.msgsnd(q, 1, b"mine")
    os.rename(os.path.join(here, "go"), os.path.join(here, "made"))
    wait_for("done")
    i.msgctl(q, i.IPC_RMID)
os.rename(os.path.join(here, "done"), os.path.join(here, "finished"))
"""


def test_leak_check_does_not_blame_an_object_only_a_stranger_uses(
        pytester: pytest.Pytester) -> None:
    # While the inner test runs, a process outside its process tree (started from a
    # subshell that exits, so not a descendant of the inner session) makes a queue and
    # sends to it: the queue is new, but its only user is a living stranger.
    here = pytester.path
    pytester.makefile(".py", stranger=STRANGER)
    pytester.makepyfile(test_stranger=f"""
        import os, time

        def test_waits_for_the_stranger():
            open(os.path.join({str(here)!r}, "go"), "w").close()
            end = time.monotonic() + 30
            while not os.path.exists(os.path.join({str(here)!r}, "made")):
                assert time.monotonic() < end, "the other process made no queue"
                time.sleep(0.005)
    """)
    prelude = f"({sys.executable} stranger.py {here} >stranger.log 2>&1 &)"
    try:
        result = _run_alone(pytester, "--ipc-leaks", "test_stranger.py", prelude=prelude)
    finally:
        (here / "done").touch()
        end = time.monotonic() + 60
        while not (here / "finished").exists() and time.monotonic() < end:
            time.sleep(0.01)
    assert (here / "finished").exists(), (here / "stranger.log").read_text()
    result.assert_outcomes(passed=1)


def test_leak_check_does_not_blame_a_module_fixture_set_up_for_the_test(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind, pytest

        @pytest.fixture(scope="module")
        def shared_queue():
            q = ipcbind.msgget(ipcbind.IPC_PRIVATE, ipcbind.IPC_CREAT | 0o600)
            yield q
            ipcbind.msgctl(q, ipcbind.IPC_RMID)

        def test_first(shared_queue):
            pass

        def test_second(shared_queue):
            pass
    """)
    _run_alone(pytester, "--ipc-leaks").assert_outcomes(passed=2)


# ---- isolated namespace -------------------------------------------------------------------

NS_INNER = '''
import os, subprocess, ipcbind, pytest

HOST_QUEUE = {host_queue}

def rows(path):
    with open(path) as f:
        return f.read().splitlines()[1:]

def test_in_namespace(ipc_namespace, ipc_queue):
    assert ipc_namespace.isolated
    assert [int(r.split()[1]) for r in rows("/proc/sysvipc/msg")] == [ipc_queue.id]
    with pytest.raises(OSError):
        ipcbind.msgctl(HOST_QUEUE, ipcbind.IPC_STAT)
    child = subprocess.run(["stat", "-L", "-c", "%i", "/proc/self/ns/ipc"],
                           capture_output=True, text=True, check=True)
    assert int(child.stdout) == ipc_namespace.inode

def test_back_in_the_host_namespace_afterwards():
    assert ipcbind.msgctl(HOST_QUEUE, ipcbind.IPC_STAT).qnum == 0
'''


@needs_ns
def test_namespace_hides_host_objects_and_children_inherit_it(
        pytester: pytest.Pytester, msq: int) -> None:
    pytester.makepyfile(NS_INNER.format(host_queue=msq))
    pytester.runpytest_subprocess().assert_outcomes(passed=2)
    assert _queue_exists(msq)


@needs_ns
def test_leak_check_inside_a_namespace_names_what_was_left(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ipcbind

        def test_leaks(ipc_namespace):
            ipcbind.semget(ipcbind.IPC_PRIVATE, 5, ipcbind.IPC_CREAT | 0o600)
    """)
    result = pytester.runpytest_subprocess("--ipc-leaks")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*semaphore set 0 *5 semaphore(s)*isolated namespace*"])


@needs_ns
def test_namespace_is_left_after_a_failing_test(pytester: pytest.Pytester, msq: int) -> None:
    pytester.makepyfile(f"""
        import ipcbind

        def test_fails_inside(ipc_namespace):
            assert False

        def test_sees_the_host_again():
            assert ipcbind.msgctl({msq}, ipcbind.IPC_STAT).qnum == 0
    """)
    pytester.runpytest_subprocess().assert_outcomes(passed=1, failed=1)


@needs_ns
def test_namespace_holds_the_test_thread_and_its_new_threads_not_earlier_ones(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os, threading

        STOP = threading.Event()
        EARLIER = threading.Thread(target=STOP.wait)
        EARLIER.start()

        def ns(tid):
            return os.stat(f"/proc/self/task/{tid}/ns/ipc").st_ino

        def test_threads(ipc_namespace):
            inside = threading.Thread(target=STOP.wait)
            inside.start()
            try:
                assert ns(threading.get_native_id()) == ipc_namespace.inode
                assert ns(inside.native_id) == ipc_namespace.inode
                assert ns(EARLIER.native_id) != ipc_namespace.inode
            finally:
                STOP.set()
                inside.join()
                EARLIER.join()
    """)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


UNDO_HELD = """
import threading
import ipcbind, pytest
from ipcbind import IPC_CREAT, IPC_PRIVATE, IPC_RMID, GETVAL, SETVAL, SEM_UNDO
from ipcbind._seam import ledger as _ledger

@pytest.fixture(scope="module")
def held():
    s = ipcbind.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600)
    ipcbind.semctl(s, 0, SETVAL, 1)
    ipcbind.semop(s, [(0, -1, SEM_UNDO)])
    assert _ledger() == {s: [1]}
    done = threading.Event()
    others = [threading.Thread(target=done.wait) for _ in range(%d)]
    for other in others:
        other.start()
    yield s
    done.set()
    for other in others:
        other.join()
    ipcbind.semctl(s, 0, IPC_RMID)
"""
"""A module-scoped semaphore held with SEM_UNDO, by a process with that many more threads."""


@needs_ns
@pytest.mark.skipif(EMULATOR == "qemu-user", reason="qemu-user runs a thread of its own in "
                    "every process, and then the kernel keeps the undo list (see the next test)")
def test_entering_a_namespace_applies_pending_undo_and_empties_the_ledger(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNDO_HELD % 0 + """
def test_enters_a_namespace(held, ipc_namespace):
    assert _ledger() == {}

def test_the_hold_was_released(held):
    assert ipcbind.semctl(held, 0, GETVAL) == 1
""")
    _run_alone(pytester).assert_outcomes(passed=2)


@needs_ns
def test_entering_a_namespace_in_a_threaded_process_keeps_pending_undo_and_the_ledger(
        pytester: pytest.Pytester) -> None:
    # unshare(CLONE_NEWIPC) detaches only the calling thread from the undo list the
    # process's threads share; the list is applied when its last holder exits.
    pytester.makepyfile(UNDO_HELD % 1 + """
def test_enters_a_namespace(held, ipc_namespace):
    assert _ledger() == {held: [1]}

def test_the_hold_is_still_held(held):
    assert ipcbind.semctl(held, 0, GETVAL) == 0
""")
    _run_alone(pytester).assert_outcomes(passed=2)


@needs_ns
def test_factory_removes_an_object_only_in_the_namespace_it_was_made_in(
        pytester: pytest.Pytester, recorded: Path, msq: int) -> None:
    # The inner test makes one queue in the host namespace, then enters its own
    # namespace and makes one there with the same id as this test's host queue
    # (msg_next_id). Leaving the namespace comes first at teardown; the factory
    # must then remove its host queue, and not the host queue with that id.
    pytester.makepyfile(RECORD.format(path=str(recorded)) + f"""
def test_mixed(ipc_factory, request):
    record("q", ipc_factory.queue().id)
    request.getfixturevalue("ipc_namespace")
    with open("/proc/sys/kernel/msg_next_id", "w") as f:
        f.write("{msq}")
    assert ipc_factory.queue().id == {msq}
""")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    [mine] = _recorded(recorded, "q")
    assert not _queue_exists(mine)
    assert _queue_exists(msq)


def _unprivileged(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the inner session without CAP_SYS_ADMIN (as root: dropped from the
    bounding set, so the exec'd interpreter never has it)."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to drop CAP_SYS_ADMIN as root")
        cmd = ["setpriv", "--bounding-set", "-sys_admin", *cmd]
    return pytester.run(*cmd, timeout=120)


NS_UNPRIVILEGED = """
def test_wants_isolation(ipc_namespace, ipc_queue):
    assert not ipc_namespace.isolated
    assert "CAP_SYS_ADMIN" in ipc_namespace.reason
"""


def test_namespace_fixture_skips_with_the_reason_when_not_allowed(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NS_UNPRIVILEGED)
    result = _unprivileged(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*unshare(CLONE_NEWIPC) failed*CAP_SYS_ADMIN*"])


def test_namespace_fixture_falls_back_to_the_host_when_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NS_UNPRIVILEGED)
    _unprivileged(pytester, "--ipc-namespace-fallback").assert_outcomes(passed=1)


# ---- assertion helpers -----------------------------------------------------------------------

def test_queue_messages_returns_them_without_taking_any(ipc_queue: MessageQueue) -> None:
    for mtype, data in [(1, b"a"), (5, b"\x00b"), (2, b"")]:
        ipc_queue.send(data, mtype)
    assert queue_messages(ipc_queue) == [(1, b"a"), (5, b"\x00b"), (2, b"")]
    assert len(ipc_queue) == 3


def test_queue_messages_accepts_a_msqid(ipc_queue: MessageQueue) -> None:
    ipc_queue.send(b"by id", 4)
    assert queue_messages(ipc_queue.id) == [(4, b"by id")]


def test_wait_for_messages_returns_once_a_sender_reached_the_count(
        ipc_queue: MessageQueue) -> None:
    sender = subprocess.Popen([sys.executable, "-c", f"""
import ipcbind, time
for n in range(3):
    time.sleep(0.05)
    ipcbind.msgsnd({ipc_queue.id}, n + 1, b"m%d" % n)
"""])
    try:
        got = wait_for_messages(ipc_queue, 3, timeout=30)
    finally:
        sender.wait(timeout=30)
    assert got == [(1, b"m0"), (2, b"m1"), (3, b"m2")]


def test_wait_for_messages_fails_after_the_timeout_saying_what_is_there(
        ipc_queue: MessageQueue) -> None:
    ipc_queue.send(b"only", 7)
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"holds 1 message\(s\).*at least 2.*\(7, b'only'\)"):
        wait_for_messages(ipc_queue, 2, timeout=0.2)
    assert time.monotonic() - start >= 0.2


@pytest.mark.ipc_semset(nsems=4, values=[0, 3, 32767, 1])
def test_semaphore_values_lists_every_value(ipc_semset: SemaphoreSet) -> None:
    assert semaphore_values(ipc_semset) == [0, 3, 32767, 1]


def test_semaphore_values_accepts_a_semid(ipc_semset: SemaphoreSet) -> None:
    ipc_semset.values = [9]
    assert semaphore_values(ipc_semset.id) == [9]


def test_helpers_refuse_something_that_is_not_a_queue() -> None:
    with pytest.raises(TypeError, match="message queue"):
        queue_messages("5")


def test_wait_for_messages_refuses_a_negative_count(ipc_queue: MessageQueue) -> None:
    with pytest.raises(ValueError, match="count must be >= 0"):
        wait_for_messages(ipc_queue, -1)


# ---- an ipcbind whose shim cannot be loaded -----------------------------------------------

# The inner run hides the compiled shim before pytest loads its plugins (the
# plugin's entry point among them), as an install with a missing or broken
# _ffi*.so would.
WITHOUT_SHIM = """
import sys
sys.modules["ipcbind._ffi"] = None
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_pytest_starts_without_the_shim_and_only_tests_using_the_plugin_fail(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        def test_plain():
            pass

        @pytest.mark.ipc_leaks
        def test_leak_checked():
            pass

        def test_with_a_queue(ipc_queue):
            pass

        def test_with_a_namespace(ipc_namespace):
            pass
    """)
    result = pytester.run(sys.executable, "-c", WITHOUT_SHIM, "-p", "no:cacheprovider",
                          "--ipc-leaks", timeout=120)
    result.assert_outcomes(passed=2, errors=2)
    raised = [line for line in result.outlines
              if line.startswith("E ") and "ImportError: ipcbind's compiled shim" in line]
    assert len(raised) == 2, result.outlines


def test_leak_check_without_the_shim_reports_a_semaphore_set_left_behind(
        pytester: pytest.Pytester) -> None:
    # A set new during a checked test is looked at for its users (semctl GETPID),
    # which needs the shim; without it the creator's uid must decide, as for a set
    # never used, instead of the test erroring with the shim's ImportError.
    made = pytester.path / "semid"
    pytester.makepyfile(f"""
        import ctypes

        def test_makes_a_set():
            libc = ctypes.CDLL(None, use_errno=True)
            semid = libc.semget(0, 1, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
            assert semid >= 0, ctypes.get_errno()
            with open({str(made)!r}, "w") as f:
                f.write(str(semid))
    """)
    try:
        result = pytester.run(sys.executable, "-c", WITHOUT_SHIM, "-p", "no:cacheprovider",
                              "--ipc-leaks", timeout=120)
    finally:
        if made.exists():
            ipcbind.semctl(int(made.read_text()), 0, IPC_RMID)
    text = "\n".join(result.outlines)
    assert "ImportError" not in text
    assert f"semaphore set {made.read_text()} " in text
    result.assert_outcomes(passed=1, errors=1)


def test_package_without_the_shim_imports_and_its_names_raise_the_shims_import_error(
        tmp_path: Path) -> None:
    probe = """
import sys
sys.modules["ipcbind._ffi"] = None
import ipcbind
assert issubclass(ipcbind.NoMessageError, OSError)
for use in ("ipcbind.msgget", "ipcbind.MessageQueue", "__import__('ipcbind.msg')"):
    try:
        eval(use)
    except ImportError as e:
        assert "compiled shim" in str(e), (use, e)
    else:
        raise SystemExit(f"{use} did not raise")
try:
    from ipcbind import SemaphoreSet
except ImportError as e:
    assert "compiled shim" in str(e), e
else:
    raise SystemExit("from ipcbind import SemaphoreSet did not raise")
try:
    ipcbind.no_such_name
except AttributeError:
    pass
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_pytest_starts_with_a_shim_that_cannot_be_loaded(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # A shim built for another platform, or damaged, exists but fails to load: the
    # loader's ImportError names it "_ffi", not "ipcbind._ffi", and gives its path.
    import ipcbind._ffi

    copy = pytester.path / "site"
    shutil.copytree(Path(ipcbind.__file__).parent, copy / "ipcbind",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "ipcbind" / Path(ipcbind._ffi.__file__).name).write_bytes(b"not a shared object")
    pytester.makepyfile("""
        import ipcbind

        def test_plain():
            assert ipcbind.__file__.startswith(%r)
            assert issubclass(ipcbind.NoMessageError, OSError)

        def test_with_a_queue(ipc_queue):
            pass
    """ % str(copy))
    monkeypatch.setenv("PYTHONPATH", str(copy))
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1, errors=1)
