"""pytest plugin: System V IPC fixtures, isolated IPC namespaces and a leak check.

Installing ipcbind registers this module with pytest (entry point ``pytest11``,
name ``ipcbind``); nothing needs configuring. Disable it with ``-p no:ipcbind``.

Fixtures:
    ``ipc_queue``: a fresh private :class:`~ipcbind.MessageQueue`, removed after the test.
    ``ipc_semset``: a fresh private :class:`~ipcbind.SemaphoreSet`, removed after the test.
    ``ipc_shm``: a fresh private :class:`~ipcbind.SharedMemory`, removed after the test.
    ``ipc_factory``: makes as many queues, sets and segments as a test needs, all removed
    after it.
    ``ipc_namespace``: runs the test in a fresh IPC namespace of its own.

Markers:
    ``ipc_queue(mode=0o600, qbytes=None)``, ``ipc_semset(nsems=1, mode=0o600,
    values=None)``, ``ipc_shm(size=4096, mode=0o600)``: options for the fixtures of the same name (indirect
    parametrisation with a dict of the same options works too).
    ``ipc_leaks(enabled=True)``: fail this test if it leaves IPC objects behind.

Options: ``--ipc-leaks`` (ini ``ipc_leaks``) checks every test for leaks;
``--ipc-namespace-fallback`` (ini ``ipc_namespace_fallback``) runs tests that ask
for an isolated namespace in the host namespace when one cannot be made, instead
of skipping them.

Assertion helpers, importable from here: :func:`queue_messages`,
:func:`wait_for_messages`, :func:`semaphore_values`.

The modules that need ipcbind's compiled shim are imported when a fixture or
helper first needs them, not when pytest loads the plugin: an ipcbind whose shim
cannot be loaded leaves pytest able to start, and only the tests that use these
fixtures fail, with the shim's ImportError.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import psutil
import pytest

from ._limits import unsigned_key
from .errors import gone

if TYPE_CHECKING:
    from .msg import Message, MessageQueue
    from .sem import SemaphoreSet
    from .shm import SharedMemory

__all__ = [
    "IpcFactory",
    "IpcNamespace",
    "IpcObject",
    "queue_messages",
    "semaphore_values",
    "wait_for_messages",
]

_NS_PATH = "/proc/thread-self/ns/ipc"  # the calling thread's, which is what moves
_PROC_MSG = "/proc/sysvipc/msg"
_PROC_SEM = "/proc/sysvipc/sem"
_PROC_SHM = "/proc/sysvipc/shm"
_SHM_DEST = 0o1000  # the mode bit of a segment marked for removal, as /proc shows it
_SETTLE = 0.2  # seconds before a leak suspected by uid alone is looked at again
# IPC_PRIVATE is the key 0 on every Linux ABI; spelt out so that a default argument
# below does not need the shim when the plugin is loaded.
_IPC_PRIVATE = 0

NamespaceId = Tuple[int, int]
"""A namespace's identity, as :data:`ipcbind.namespace.NamespaceId`."""

Queue = Union[int, Any]
"""A queue given to a helper: its msqid, or any object with an ``id`` attribute."""
SemSet = Union[int, Any]
"""A semaphore set given to a helper: its semid, or any object with an ``id`` attribute."""


def _namespace_id() -> NamespaceId:
    """The calling thread's IPC namespace, read without the shim (the hooks use it
    for every checked test)."""
    st = os.stat(_NS_PATH)
    return st.st_dev, st.st_ino


def _ident(obj: Any, what: str) -> int:
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    ident = getattr(obj, "id", None)
    if isinstance(ident, int) and not isinstance(ident, bool):
        return ident
    raise TypeError(f"expected a {what} (an int id or an object with an int .id), "
                    f"not {type(obj).__name__}")


# ---- assertion helpers ---------------------------------------------------------------

def queue_messages(queue: Queue) -> List[Message]:
    """The messages in a queue, in queue order; none is taken.

    Copies them with MSG_COPY (:meth:`MessageQueue.peek_all`), so the queue, its
    counters and its last receiver pid stay as they were. Each is a
    :class:`~ipcbind.Message`, a named tuple, so it compares equal to
    ``(mtype, data)``.

    Args:
        queue: a :class:`~ipcbind.MessageQueue`, a msqid, or any object with an ``id``.

    Raises:
        QueueChangedError: the queue changed during every attempt to copy it.
        OSError: the queue does not exist (EINVAL, EIDRM), no read permission
            (EACCES), or a kernel without MSG_COPY (``NotSupportedError``).
    """
    __tracebackhide__ = True
    return _as_queue(queue).peek_all()


def _as_queue(queue: Queue) -> MessageQueue:
    from .msg import MessageQueue

    if isinstance(queue, MessageQueue):
        return queue
    return MessageQueue.from_id(_ident(queue, "message queue"))


def wait_for_messages(queue: Queue, count: int,
                      timeout: Optional[float] = 5.0) -> List[Message]:
    """Wait until a queue holds at least ``count`` messages; return them, taking none.

    The kernel cannot notify a reader that does not consume, so this polls the
    queue's message count (IPC_STAT), starting at 1 ms and backing off to 50 ms.

    Args:
        queue: a :class:`~ipcbind.MessageQueue`, a msqid, or any object with an ``id``.
        count: how many messages to wait for (>= 0).
        timeout: seconds to wait before failing (None: no limit).

    Returns:
        Every message in the queue once it holds ``count`` or more, as
        :func:`queue_messages` gives them.

    Raises:
        AssertionError: the queue still holds fewer after ``timeout`` seconds; the
            message says how many and which.
        OSError: the queue does not exist or was removed while waiting.
    """
    __tracebackhide__ = True
    from ._args import deadline as _deadline

    q = _as_queue(queue)
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"wait_for_messages: count must be an int, not {type(count).__name__}")
    if count < 0:
        raise ValueError(f"wait_for_messages: count must be >= 0, got {count}")
    deadline = _deadline("wait_for_messages", timeout)
    pause = 0.001
    while len(q) < count:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            held = q.peek_all()
            raise AssertionError(
                f"queue {q.id} holds {len(held)} message(s) after {timeout} s, "
                f"expected at least {count}: {[tuple(m) for m in held]!r}")
        time.sleep(pause if left is None else min(pause, left))
        pause = min(pause * 2, 0.05)
    return q.peek_all()


def semaphore_values(semset: SemSet) -> List[int]:
    """The values of every semaphore of a set, in order (semctl GETALL).

    Args:
        semset: a :class:`~ipcbind.SemaphoreSet`, a semid, or any object with an ``id``.
    """
    from .sem import SemaphoreSet

    if isinstance(semset, SemaphoreSet):
        return semset.values
    return SemaphoreSet.from_id(_ident(semset, "semaphore set")).values


# ---- namespaces -----------------------------------------------------------------------

def _single_threaded() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1]) == 1
    return False


def _forget_undo_ledger() -> None:
    """Empty ipcbind's SEM_UNDO ledger after the kernel applied this process's undo list.

    Leaving an IPC namespace (unshare or setns) runs the kernel's exit-time undo
    for the calling thread; in a single-threaded process that applies and frees
    the whole process's undo list, so the ledger's entries no longer exist.
    """
    from . import _seam

    if _single_threaded():
        for semid in _seam.ledger():
            _seam.ledger_drop(semid)


@dataclass(frozen=True)
class IpcNamespace:
    """What the ``ipc_namespace`` fixture gives the test.

    Attributes:
        isolated: True when the test runs in a fresh IPC namespace of its own;
            False when it could not be made and the fallback was asked for.
        inode: the inode of the namespace the test runs in (as in
            ``readlink /proc/thread-self/ns/ipc``).
        reason: why the namespace is not isolated ("" when it is).
    """

    isolated: bool
    inode: int
    reason: str = ""


class _NamespaceRef:
    """An open reference to the calling thread's IPC namespace.

    Holding the file open keeps the namespace alive, so its identity cannot be
    reused by a later namespace while we compare against it.
    """

    def __init__(self) -> None:
        self.fd = os.open(_NS_PATH, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.id: NamespaceId = (st.st_dev, st.st_ino)

    def is_current(self) -> bool:
        return _namespace_id() == self.id

    def close(self) -> None:
        os.close(self.fd)


# ---- what exists: /proc/sysvipc ------------------------------------------------------

@dataclass(frozen=True)
class IpcObject:
    """A message queue, semaphore set or shared memory segment as listed in
    ``/proc/sysvipc``.

    Attributes:
        kind: ``"queue"``, ``"semset"`` or ``"segment"``.
        id: its msqid, semid or shmid.
        key: its key, unsigned (0 for IPC_PRIVATE).
        mode: its permission bits.
        cuid: the effective uid of its creator.
        size: messages queued (a queue), semaphores (a set) or bytes (a segment).
        pids: last sender and receiver pids of a queue, creator and last pid of a
            segment (0: none yet); empty for a set.
        attached: how many attachments a segment has (0 for the other kinds).
        dest: a segment marked for removal, which goes with its last detach.
    """

    kind: str
    id: int
    key: int
    mode: int
    cuid: int
    size: int
    pids: Tuple[int, ...] = ()
    attached: int = 0
    dest: bool = False

    def describe(self) -> str:
        if self.kind == "queue":
            what = f"message queue {self.id}"
            extra = f"{self.size} message(s)"
        elif self.kind == "semset":
            what = f"semaphore set {self.id}"
            extra = f"{self.size} semaphore(s)"
        else:
            what = f"shared memory segment {self.id}"
            extra = (f"{self.size} bytes, {self.attached} attachment(s)"
                     f"{', removed but still attached' if self.dest else ''}")
        return (f"{what} (key {self.key:#010x}, mode {self.mode:04o}, "
                f"creator uid {self.cuid}, {extra})")

    def remedy(self) -> str:
        """What makes it go: ipcrm, except for a segment that is removed already."""
        if self.dest:
            return "it goes when its last attachment is detached"
        return f"remove it with: ipcrm -{_IPCRM_FLAG[self.kind]} {self.id}"


_IPCRM_FLAG = {"queue": "q", "semset": "s", "segment": "m"}


def _read_table(path: str) -> List[Dict[str, int]]:
    """The rows of a /proc/sysvipc table by column name ("perms" is printed in octal)."""
    with open(path) as f:
        header = f.readline().split()
        rows = []
        for line in f:
            row = dict(zip(header, line.split()))
            rows.append({k: int(v, 8 if k == "perms" else 10) for k, v in row.items()})
        return rows


def _snapshot() -> Dict[Tuple[str, int], IpcObject]:
    """Every queue, semaphore set and segment in the calling thread's IPC namespace."""
    found: Dict[Tuple[str, int], IpcObject] = {}
    for row in _read_table(_PROC_MSG):
        obj = IpcObject("queue", row["msqid"], unsigned_key(row["key"]), row["perms"] & 0o777,
                        row["cuid"], row["qnum"], (row["lspid"], row["lrpid"]))
        found[obj.kind, obj.id] = obj
    for row in _read_table(_PROC_SEM):
        obj = IpcObject("semset", row["semid"], unsigned_key(row["key"]), row["perms"] & 0o777,
                        row["cuid"], row["nsems"])
        found[obj.kind, obj.id] = obj
    for row in _read_table(_PROC_SHM):
        obj = IpcObject("segment", row["shmid"], unsigned_key(row["key"]), row["perms"] & 0o777,
                        row["cuid"], row["size"], (row["cpid"], row["lpid"]), row["nattch"],
                        bool(row["perms"] & _SHM_DEST))
        found[obj.kind, obj.id] = obj
    return found


def _evidence(obj: IpcObject) -> Set[int]:
    """Pids known to have used an object: a queue's last sender and receiver, a
    segment's creator and last user, a set's last operator on each semaphore (where
    readable, and where the shim can be loaded: the leak check runs for tests that
    do not use ipcbind too)."""
    if obj.kind != "semset":
        return {p for p in obj.pids if p}
    try:
        from . import syscalls as sc
    except ImportError:
        return set()

    pids: Set[int] = set()
    for n in range(obj.size):
        try:
            pid = sc.semctl(obj.id, n, sc.GETPID)
        except OSError:
            break
        if pid:
            pids.add(pid)
    return pids


def _process_tree() -> Set[int]:
    """This process and its living descendants."""
    me = psutil.Process()
    pids = {me.pid}
    try:
        pids.update(child.pid for child in me.children(recursive=True))
    except psutil.Error:
        pass
    return pids


def _attribution(obj: IpcObject, tree: Set[int], uids: Set[int]) -> Optional[str]:
    """Best-effort: why this object (new during the test) is the test's, or None.

    /proc/sysvipc names no creator pid for queues and semaphore sets (it does for
    segments), so the pids that made or last used the object decide when they can: one of ours (this
    process or a living descendant) gives ``"pid"``, only living strangers give
    None. Otherwise (never used, or its users are gone) the creator's uid
    decides, giving ``"uid"``.
    """
    pids = _evidence(obj)
    if pids & tree:
        return "pid"
    if pids and all(psutil.pid_exists(p) for p in pids):
        return None
    return "uid" if obj.cuid in uids else None


# ---- leak watch ------------------------------------------------------------------------

@dataclass
class _LeakWatch:
    """What one test's leak check has seen so far."""

    ns: NamespaceId
    before: Dict[Tuple[str, int], IpcObject]
    after_setup: Optional[Dict[Tuple[str, int], IpcObject]] = None
    host_at_entry: Optional[Dict[Tuple[str, int], IpcObject]] = None
    wider_fixture_set_up: bool = False
    in_namespace: List[IpcObject] = field(default_factory=list)


_WATCH = pytest.StashKey[_LeakWatch]()
_SETTING_UP = pytest.StashKey[Optional[_LeakWatch]]()


def _leak_check_enabled(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("ipc_leaks")
    if marker is not None:
        if marker.args:
            return bool(marker.args[0])
        return bool(marker.kwargs.get("enabled", True))
    opt = item.config.getoption("ipc_leaks")
    return bool(opt) if opt is not None else bool(item.config.getini("ipc_leaks"))


def _host_leaks(watch: _LeakWatch) -> List[IpcObject]:
    now = _snapshot()
    new = {k: v for k, v in now.items() if k not in watch.before}
    if watch.wider_fixture_set_up:
        # A module or session fixture first set up for this test may keep objects
        # past it on purpose; what appeared during setup is not blamed then.
        setup = watch.after_setup if watch.after_setup is not None else now
        new = {k: v for k, v in new.items() if k not in setup}
    if not new:
        return []
    uids = {os.getuid(), os.geteuid()}
    tree = _process_tree()
    why = {k: _attribution(obj, tree, uids) for k, obj in new.items()}
    if "uid" in why.values():
        # Only the uid ties these to the test. Another process of the same user
        # that made one a moment ago usually uses or removes it soon: look again.
        time.sleep(_SETTLE)
        now = _snapshot()
        tree = _process_tree()
        for k, reason in why.items():
            if reason == "uid":
                why[k] = _attribution(now[k], tree, uids) if k in now else None
    return [new[k] for k, reason in why.items() if reason is not None]


def _leak_report(host: List[IpcObject], isolated: List[IpcObject]) -> str:
    lines = [f"test left {len(host) + len(isolated)} System V IPC object(s) behind:"]
    lines += [f"  {obj.describe()} in the host namespace; {obj.remedy()}"
              for obj in host]
    lines += [f"  {obj.describe()} in the test's isolated namespace (gone with it)"
              for obj in isolated]
    return "\n".join(lines)


# ---- hooks -------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipcbind", "System V IPC (ipcbind)")
    group.addoption(
        "--ipc-leaks", action="store_true", default=None, dest="ipc_leaks",
        help="fail every test that leaves message queues, semaphore sets or shared memory "
             "segments behind (ini: ipc_leaks)")
    group.addoption(
        "--ipc-namespace-fallback", action="store_true", default=None,
        dest="ipc_namespace_fallback",
        help="when no isolated IPC namespace can be made (needs root or CAP_SYS_ADMIN), "
             "run tests using ipc_namespace in the host namespace instead of skipping them "
             "(ini: ipc_namespace_fallback)")
    parser.addini("ipc_leaks", type="bool", default=False,
                  help="fail every test that leaves message queues, semaphore sets or shared "
                       "memory segments behind")
    parser.addini("ipc_namespace_fallback", type="bool", default=False,
                  help="run ipc_namespace tests in the host namespace when isolation "
                       "is not possible, instead of skipping them")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ipc_leaks(enabled=True): fail the test if it leaves System V message "
                   "queues, semaphore sets or shared memory segments behind (False: do not "
                   "check it)")
    config.addinivalue_line(
        "markers", "ipc_queue(mode=0o600, qbytes=None): options for the ipc_queue fixture")
    config.addinivalue_line(
        "markers", "ipc_semset(nsems=1, mode=0o600, values=None): options for the "
                   "ipc_semset fixture")
    config.addinivalue_line(
        "markers", "ipc_shm(size=4096, mode=0o600): options for the ipc_shm fixture")
    config.stash[_SETTING_UP] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """For a checked test: what exists before its setup, and after it."""
    watch = None
    if _leak_check_enabled(item):
        watch = _LeakWatch(_namespace_id(), _snapshot())
        item.stash[_WATCH] = watch
    item.config.stash[_SETTING_UP] = watch
    try:
        yield
    finally:
        item.config.stash[_SETTING_UP] = None
        if watch is not None:
            if _namespace_id() == watch.ns:
                watch.after_setup = _snapshot()
            else:
                watch.after_setup = watch.host_at_entry


def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    """Note a module, class, package or session fixture set up for a checked test."""
    watch = request.config.stash.get(_SETTING_UP, None)
    if watch is not None and fixturedef.scope != "function":
        watch.wider_fixture_set_up = True


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
    """After every fixture's teardown: fail a checked test that left objects behind."""
    watch = item.stash.get(_WATCH, None)
    if watch is None:
        return
    del item.stash[_WATCH]
    if _namespace_id() != watch.ns:
        pytest.fail("the test ended in another IPC namespace than it started in; "
                    "no leak check was possible", pytrace=False)
    host = _host_leaks(watch)
    if host or watch.in_namespace:
        pytest.fail(_leak_report(host, watch.in_namespace), pytrace=False)


# ---- fixtures -------------------------------------------------------------------------------

def _fallback_wanted(config: pytest.Config) -> bool:
    opt = config.getoption("ipc_namespace_fallback")
    return bool(opt) if opt is not None else bool(config.getini("ipc_namespace_fallback"))


@pytest.fixture
def ipc_namespace(request: pytest.FixtureRequest) -> Iterator[IpcNamespace]:
    """Run the test in a fresh IPC namespace of its own, and leave it afterwards.

    Needs root or CAP_SYS_ADMIN. Without it the test is skipped with the reason,
    or, with ``--ipc-namespace-fallback`` (ini ``ipc_namespace_fallback``), runs in
    the host namespace and gets ``isolated=False``. Only the thread running the
    test moves; processes and threads it starts inherit the namespace.
    """
    from . import _seam

    watch = request.node.stash.get(_WATCH, None)
    if watch is not None:
        watch.host_at_entry = _snapshot()
    home = _NamespaceRef()
    try:
        _seam.unshare_ipc()
    except OSError as e:
        home.close()
        reason = (f"no isolated IPC namespace: unshare(CLONE_NEWIPC) failed ({e.strerror}); "
                  "it needs root or CAP_SYS_ADMIN")
        if not _fallback_wanted(request.config):
            pytest.skip(reason + " (--ipc-namespace-fallback runs such tests in the host "
                                 "namespace instead)")
        yield IpcNamespace(False, _namespace_id()[1], reason)
        return
    _forget_undo_ledger()
    try:
        yield IpcNamespace(True, _namespace_id()[1])
        if watch is not None:
            watch.in_namespace = list(_snapshot().values())
    finally:
        try:
            _seam.setns_ipc(home.fd)
        except OSError as e:
            pytest.exit(f"could not move the test thread back to its IPC namespace ({e}); "
                        "every later test would run in the wrong one",
                        returncode=pytest.ExitCode.INTERNAL_ERROR)
        finally:
            home.close()
        _forget_undo_ledger()


@dataclass
class _Made:
    obj: Union[MessageQueue, SemaphoreSet, SharedMemory]
    ns: _NamespaceRef


class IpcFactory:
    """Makes message queues, semaphore sets and shared memory segments for one test, and
    removes them after it.

    An object is removed only from the namespace it was made in: one made in a
    namespace the test has left died with that namespace.
    """

    def __init__(self) -> None:
        self._made: List[_Made] = []

    def queue(self, mode: int = 0o600, key: int = _IPC_PRIVATE,
              qbytes: Optional[int] = None) -> MessageQueue:
        """Make a message queue.

        Args:
            mode: permission bits.
            key: IPC_PRIVATE (the default) or a key; a key that is already in use
                raises ``FileExistsError`` (the factory never adopts an object).
            qbytes: the queue's capacity in bytes, if not the system's default
                (raising it above msgmnb needs CAP_SYS_RESOURCE).
        """
        from . import syscalls as sc
        from .msg import MessageQueue

        ns = _NamespaceRef()
        try:
            q = MessageQueue.create(key, mode, exclusive=True)
        except BaseException:
            ns.close()
            raise
        self._made.append(_Made(q, ns))
        if qbytes is not None:
            sc.msgctl(q.id, sc.IPC_SET, {"qbytes": qbytes})
        return q

    def semset(self, nsems: int = 1, mode: int = 0o600, key: int = _IPC_PRIVATE,
               values: Optional[Sequence[int]] = None) -> SemaphoreSet:
        """Make a semaphore set.

        Args:
            nsems: how many semaphores.
            mode: permission bits.
            key: IPC_PRIVATE (the default) or a key; a key that is already in use
                raises ``FileExistsError``.
            values: initial values, one per semaphore (default: all 0).
        """
        from .sem import SemaphoreSet

        ns = _NamespaceRef()
        try:
            s = SemaphoreSet.create(nsems, key, mode, values, exclusive=True)
        except BaseException:
            ns.close()
            raise
        self._made.append(_Made(s, ns))
        return s

    def segment(self, size: int = 4096, mode: int = 0o600,
                key: int = _IPC_PRIVATE) -> SharedMemory:
        """Make a shared memory segment (zeroed).

        Args:
            size: bytes.
            mode: permission bits.
            key: IPC_PRIVATE (the default) or a key; a key that is already in use
                raises ``FileExistsError``.
        """
        from .shm import SharedMemory

        ns = _NamespaceRef()
        try:
            m = SharedMemory.create(size, key, mode, exclusive=True)
        except BaseException:
            ns.close()
            raise
        self._made.append(_Made(m, ns))
        return m

    def _remove_all(self) -> None:
        failures: List[str] = []
        for made in reversed(self._made):
            try:
                if made.ns.is_current():
                    made.obj.remove()
            except OSError as e:
                if not gone(e):
                    failures.append(str(e))
            finally:
                made.ns.close()
        self._made.clear()
        if failures:
            raise RuntimeError("could not remove " + "; ".join(failures))


def _options(request: pytest.FixtureRequest, name: str, allowed: Sequence[str]) -> Dict[str, Any]:
    """The options for fixture ``name``: its marker's keywords, then ``request.param``."""
    options: Dict[str, Any] = {}
    marker = request.node.get_closest_marker(name)
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{name} takes keyword arguments only "
                                    f"({', '.join(allowed)})")
        options.update(marker.kwargs)
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise pytest.UsageError(f"indirect parametrisation of {name} needs a dict of "
                                    f"options ({', '.join(allowed)}), got {param!r}")
        options.update(param)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise pytest.UsageError(f"{name}: unknown option(s) {', '.join(unknown)} "
                                f"(known: {', '.join(allowed)})")
    return options


@pytest.fixture
def ipc_factory(request: pytest.FixtureRequest) -> Iterator[IpcFactory]:
    """Makes queues (``.queue(...)``), semaphore sets (``.semset(...)``) and shared memory
    segments (``.segment(...)``) for the test; every one still there is removed after
    it, whatever the outcome."""
    # Without a loadable shim the test errors here, in setup, with its ImportError.
    from . import syscalls  # noqa: F401

    if "ipc_namespace" in request.fixturenames:
        # Objects belong in the test's namespace, so enter it before making any.
        request.getfixturevalue("ipc_namespace")
    factory = IpcFactory()
    try:
        yield factory
    finally:
        factory._remove_all()


@pytest.fixture
def ipc_queue(request: pytest.FixtureRequest, ipc_factory: IpcFactory) -> MessageQueue:
    """A fresh private :class:`~ipcbind.MessageQueue` (mode 0600 unless the
    ``ipc_queue`` marker or indirect parametrisation says otherwise), removed after
    the test."""
    return ipc_factory.queue(**_options(request, "ipc_queue", ("mode", "qbytes")))


@pytest.fixture
def ipc_semset(request: pytest.FixtureRequest, ipc_factory: IpcFactory) -> SemaphoreSet:
    """A fresh private :class:`~ipcbind.SemaphoreSet` (one semaphore, mode 0600,
    value 0 unless the ``ipc_semset`` marker or indirect parametrisation says
    otherwise), removed after the test."""
    return ipc_factory.semset(**_options(request, "ipc_semset", ("nsems", "mode", "values")))


@pytest.fixture
def ipc_shm(request: pytest.FixtureRequest, ipc_factory: IpcFactory) -> SharedMemory:
    """A fresh private :class:`~ipcbind.SharedMemory` (4096 bytes, mode 0600 unless the
    ``ipc_shm`` marker or indirect parametrisation says otherwise), removed after the
    test (it goes once every process has detached)."""
    return ipc_factory.segment(**_options(request, "ipc_shm", ("size", "mode")))
