"""Undo state: the /proc/<pid>/semundo reader and writer (on fixture trees, and ENOSYS on
this kernel), restore_semundo and tracked_semundo against what the kernel does when a
process exits.

Every SEM_UNDO operation runs in a forked child, so the kernel applies its undo state
at that child's exit and the test process itself never holds any.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

import ipcbind as ipc
from ipcbind import GETALL, IPC_RMID, IPC_STAT, SEM_UNDO, SETALL, SETVAL
from ipcbind.semundo import SemundoNotSupportedError

from conftest import needs_root, run_in_child

FIXTURES = Path(__file__).parent / "fixtures" / "semundo_proc"
SEMVMX = 32767
KERNEL_HAS_SEMUNDO = os.path.exists("/proc/self/semundo")
needs_no_kernel_file = pytest.mark.skipif(
    KERNEL_HAS_SEMUNDO, reason="this kernel provides /proc/<pid>/semundo")


def values(semid: int) -> List[int]:
    return ipc.semctl(semid, 0, GETALL)


def exists(semid: int) -> bool:
    try:
        ipc.semctl(semid, 0, IPC_STAT)
    except OSError:
        return False
    return True


def in_child(fn: Callable[[], Any]) -> Any:
    """Run fn in a forked child and return its (JSON-able) result; fail with the
    child's exit code if it raised."""
    r, w = os.pipe()

    def body() -> int:
        os.close(r)
        out = fn()
        with os.fdopen(w, "w") as f:
            json.dump(out, f)
        return 0

    try:
        code = run_in_child(body)
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    assert code == 0, f"child failed with exit code {code} (traceback above)"
    return json.loads(data)


def int_keys(d: Dict[str, Any]) -> Dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def exit_effect(sets: List[int], scenario: Callable[[], None]
                ) -> Tuple[Dict[int, List[int]], Dict[int, List[int]]]:
    """Run scenario in a child; return what tracked_semundo() said just before the
    child exited, and how each set that still exists changed when it exited."""

    def body() -> Dict[str, Any]:
        scenario()
        return {"tracked": ipc.tracked_semundo(),
                "values": {s: values(s) for s in sets if exists(s)}}

    out = in_child(body)
    before = int_keys(out["values"])
    change = {s: [a - b for a, b in zip(values(s), v)] for s, v in before.items()}
    return int_keys(out["tracked"]), change


def as_undo_state(tracked: Dict[int, List[int]], change: Dict[int, List[int]]
                  ) -> Dict[int, List[int]]:
    """The changes the kernel made at exit, as undo state (all-zero sets left out)."""
    assert set(tracked) <= set(change), "tracked a set that no longer exists"
    return {s: c for s, c in change.items() if any(c)}


# ---- the file format, on fixture trees ------------------------------------------------

GOOD = {5: [2, -1, 0], 7: [-32768, 32767]}


def test_read_semundo_parses_one_line_per_set() -> None:
    assert ipc.read_semundo(100, proc_root=FIXTURES) == GOOD


def test_read_semundo_of_an_empty_file_is_empty() -> None:
    assert ipc.read_semundo(101, proc_root=FIXTURES) == {}


def test_read_semundo_tolerates_any_whitespace_and_blank_lines() -> None:
    assert ipc.read_semundo(102, proc_root=str(FIXTURES)) == GOOD


@pytest.mark.parametrize("pid, line, why", [
    (103, 2, "'x' is not a decimal integer"),
    (104, 2, "outside the C short range"),
    (106, 1, "has no adjustment"),
    (107, 3, "already appeared on line 1"),
    (108, 1, "semid -5 is not a valid identifier"),
    (109, 1, "'1.5' is not a decimal integer"),
])
def test_read_semundo_names_the_malformed_line(pid: int, line: int, why: str) -> None:
    with pytest.raises(ValueError) as e:
        ipc.read_semundo(pid, proc_root=FIXTURES)
    msg = str(e.value)
    assert f"{FIXTURES / str(pid) / 'semundo'}: line {line}: " in msg
    assert why in msg


def test_read_semundo_without_the_file_raises_enosys() -> None:
    with pytest.raises(SemundoNotSupportedError) as e:
        ipc.read_semundo(105, proc_root=FIXTURES)
    assert e.value.errno == errno.ENOSYS
    assert isinstance(e.value, ipc.NotSupportedError)
    assert "tracked_semundo()" in str(e.value) and "restore_semundo()" in str(e.value)


def test_read_semundo_of_a_missing_process_raises_esrch() -> None:
    with pytest.raises(ProcessLookupError) as e:
        ipc.read_semundo(999, proc_root=FIXTURES)
    assert e.value.errno == errno.ESRCH


def test_read_semundo_of_none_reads_self(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "semundo").write_text("3 1 2\n")
    assert ipc.read_semundo(proc_root=tmp_path) == {3: [1, 2]}


@pytest.mark.parametrize("pid, exc", [(0, ValueError), (-4, ValueError), ("100", TypeError),
                                      (True, TypeError), (100.0, TypeError)])
def test_read_semundo_rejects_a_bad_pid(pid: Any, exc: type) -> None:
    with pytest.raises(exc):
        ipc.read_semundo(pid, proc_root=FIXTURES)


def test_read_semundo_passes_eacces_through() -> None:
    root = tempfile.mkdtemp(prefix="ipcbind-semundo-")
    try:
        os.chmod(root, 0o755)
        os.mkdir(os.path.join(root, "42"), 0o755)
        path = os.path.join(root, "42", "semundo")
        with open(path, "w") as f:
            f.write("1 1\n")
        os.chmod(path, 0)

        def read() -> int:
            try:
                ipc.read_semundo(42, proc_root=root)
            except PermissionError as e:
                return 0 if e.errno == errno.EACCES and e.filename == path else 2
            return 1

        code = run_in_child(read, uid=65534) if os.geteuid() == 0 else read()
        assert code == 0
    finally:
        shutil.rmtree(root)


def test_semundo_supported_follows_the_file(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    assert not ipc.semundo_supported(proc_root=tmp_path)
    (tmp_path / "self" / "semundo").touch()
    assert ipc.semundo_supported(proc_root=tmp_path)


@pytest.fixture
def self_tree(tmp_path: Path) -> Path:
    """A proc_root whose self/semundo exists, empty."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "semundo").touch()
    return tmp_path


def test_write_semundo_writes_self_semundo_in_the_documented_format(self_tree: Path) -> None:
    (self_tree / "self" / "semundo").write_text("99 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9\n")
    ipc.write_semundo({5: [2, -1], 7: [0, 3]}, proc_root=self_tree)
    assert (self_tree / "self" / "semundo").read_text() == "5 2 -1\n7 0 3\n"
    assert ipc.read_semundo(proc_root=self_tree) == {5: [2, -1], 7: [0, 3]}


def test_write_semundo_accepts_this_process_pid(self_tree: Path) -> None:
    ipc.write_semundo({5: [1]}, proc_root=self_tree, pid=os.getpid())
    assert (self_tree / "self" / "semundo").read_text() == "5 1\n"


def test_write_semundo_refuses_another_process(self_tree: Path) -> None:
    with pytest.raises(ValueError, match="only the calling process"):
        ipc.write_semundo({5: [1]}, proc_root=self_tree, pid=os.getppid())
    assert (self_tree / "self" / "semundo").read_text() == ""


@pytest.mark.parametrize("entries, exc", [
    ([(5, [1])], TypeError), ({"5": [1]}, TypeError), ({5: 1}, TypeError),
    ({5: "1"}, TypeError), ({5: [1.0]}, TypeError), ({5: [False]}, TypeError),
    ({5: [32768]}, ValueError), ({5: [-32769]}, ValueError), ({5: []}, ValueError),
    ({-1: [1]}, ValueError), ({2 ** 31: [1]}, ValueError),
])
def test_write_semundo_rejects_bad_entries_before_writing(self_tree: Path, entries: Any,
                                                          exc: type) -> None:
    (self_tree / "self" / "semundo").write_text("1 1\n")
    with pytest.raises(exc):
        ipc.write_semundo(entries, proc_root=self_tree)
    assert (self_tree / "self" / "semundo").read_text() == "1 1\n"


def test_write_semundo_without_the_file_raises_enosys_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    with pytest.raises(SemundoNotSupportedError):
        ipc.write_semundo({5: [1]}, proc_root=tmp_path)
    assert not (tmp_path / "self" / "semundo").exists()


# ---- the file on this kernel ---------------------------------------------------------------

@needs_no_kernel_file
def test_semundo_is_not_supported_on_this_kernel() -> None:
    assert not ipc.semundo_supported()


@needs_no_kernel_file
@pytest.mark.parametrize("pid", [None, "own"])
def test_read_semundo_raises_enosys_on_this_kernel(pid: Any) -> None:
    with pytest.raises(SemundoNotSupportedError) as e:
        ipc.read_semundo(os.getpid() if pid == "own" else None)
    assert e.value.errno == errno.ENOSYS


@needs_no_kernel_file
def test_write_semundo_raises_enosys_on_this_kernel() -> None:
    with pytest.raises(SemundoNotSupportedError):
        ipc.write_semundo({})


def test_read_semundo_of_an_exited_process_raises_esrch() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError) as e:
        ipc.read_semundo(pid)
    assert e.value.errno == errno.ESRCH


# ---- restore_semundo: the kernel holds the adjustments, the values do not move -------------

def restore_in_child(semid: int, entries: Dict[int, List[int]]) -> Dict[int, List[int]]:
    """A child restores entries, checks the values did not move, and exits; returns
    tracked_semundo() as it was just before the exit."""

    def body() -> Dict[int, List[int]]:
        before = values(semid)
        ipc.restore_semundo(entries)
        assert values(semid) == before, "restore_semundo changed a value"
        return ipc.tracked_semundo()

    return int_keys(in_child(body))


@needs_no_kernel_file
def test_restored_undo_moves_values_at_exit_by_exactly_the_adjustments(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    ipc.semctl(s, 0, SETALL, [10, 10])
    assert restore_in_child(s, {s: [2, -1]}) == {s: [2, -1]}
    assert values(s) == [12, 9]


@needs_no_kernel_file
def test_restored_undo_is_clamped_at_zero_like_the_kernel(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    ipc.semctl(s, 0, SETALL, [0, 0])
    restore_in_child(s, {s: [2, -1]})
    assert values(s) == [2, 0]


@needs_no_kernel_file
@pytest.mark.parametrize("value, adj", [
    (0, 5), (0, -5), (SEMVMX, 5), (SEMVMX, -5), (16000, 20000), (16000, -20000),
    (100, -32768), (SEMVMX, -32768), (0, 32767), (20000, 32767), (16383, 16385),
])
def test_restore_never_moves_a_value_outside_its_range(make_semset: Callable[..., int],
                                                       value: int, adj: int) -> None:
    s = make_semset(1)
    ipc.semctl(s, 0, SETVAL, value)
    assert restore_in_child(s, {s: [adj]}) == {s: [adj]}
    assert values(s) == [min(SEMVMX, max(0, value + adj))]


@needs_no_kernel_file
def test_restore_adds_to_the_undo_already_held(make_semset: Callable[..., int]) -> None:
    s = make_semset(1)
    ipc.semctl(s, 0, SETVAL, 10)

    def body() -> Dict[int, List[int]]:
        ipc.semop(s, [(0, -1, SEM_UNDO)])
        ipc.restore_semundo({s: [2]})
        return ipc.tracked_semundo()

    assert int_keys(in_child(body)) == {s: [3]}
    assert values(s) == [9 + 3]


@needs_no_kernel_file
def test_restore_of_a_shorter_list_leaves_the_other_semaphores_alone(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(3)
    ipc.semctl(s, 0, SETALL, [5, 5, 5])
    assert restore_in_child(s, {s: [0, 4]}) == {s: [0, 4, 0]}
    assert values(s) == [5, 9, 5]


def hold_30000_on_semaphore_1(s: int) -> None:
    """Leave this process with semadj 30000 on semaphore 1 of s (value 30000 -> 0)."""
    ipc.semop(s, [(1, -30000, SEM_UNDO)])


@needs_no_kernel_file
def test_restore_beyond_the_short_range_raises_erange_naming_set_and_semaphore(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    ipc.semctl(s, 0, SETALL, [30000, 30000])

    def body() -> Dict[str, Any]:
        hold_30000_on_semaphore_1(s)
        before = values(s)
        try:
            ipc.restore_semundo({s: [1, 5000]})
        except ipc.OutOfRangeError as e:
            return {"errno": e.errno, "msg": str(e), "moved": values(s) != before,
                    "tracked": ipc.tracked_semundo()}
        return {}

    out = in_child(body)
    assert out["errno"] == errno.ERANGE
    assert f"set {s}, semaphore 1" in out["msg"]
    assert not out["moved"]
    assert int_keys(out["tracked"]) == {s: [0, 30000]}
    assert values(s) == [30000, 30000]   # the kernel held 30000 only: sem 0 got nothing


@needs_no_kernel_file
def test_restore_puts_back_the_sets_already_restored_when_one_fails(
        make_semset: Callable[..., int]) -> None:
    a, b = make_semset(1), make_semset(2)
    ipc.semctl(a, 0, SETVAL, 10)
    ipc.semctl(b, 0, SETALL, [30000, 30000])

    def body() -> Dict[int, List[int]]:
        hold_30000_on_semaphore_1(b)
        with pytest.raises(ipc.OutOfRangeError):
            ipc.restore_semundo({a: [4], b: [0, 5000]})
        return ipc.tracked_semundo()

    assert int_keys(in_child(body)) == {b: [0, 30000]}
    assert values(a) == [10]
    assert values(b) == [30000, 30000]


def test_restore_refuses_more_operations_than_one_semop_takes(
        make_semset: Callable[..., int]) -> None:
    semopm = ipc.semctl(0, 0, ipc.IPC_INFO)[1].semopm
    s = make_semset(semopm // 2 + 1)
    before = ipc.tracked_semundo()
    with pytest.raises(ipc.TooBigError, match=f"set {s} may need"):
        ipc.restore_semundo({s: [1] * (semopm // 2 + 1)})
    assert ipc.tracked_semundo() == before
    assert not any(values(s))


@pytest.mark.parametrize("make_entries, exc", [
    (lambda s, gone: [(s, [1])], TypeError),
    (lambda s, gone: {str(s): [1]}, TypeError),
    (lambda s, gone: {s: 1}, TypeError),
    (lambda s, gone: {s: [1.0, 0]}, TypeError),
    (lambda s, gone: {s: [None]}, TypeError),
    (lambda s, gone: {s: [1, 40000]}, ValueError),
    (lambda s, gone: {s: [-32769]}, ValueError),
    (lambda s, gone: {s: []}, ValueError),
    (lambda s, gone: {s: [1, 1, 1]}, ValueError),
    (lambda s, gone: {s: [1], gone: [1]}, OSError),
])
def test_restore_rejects_bad_entries_before_any_change(
        make_semset: Callable[..., int], make_entries: Callable[[int, int], Any],
        exc: type) -> None:
    s = make_semset(2)
    gone = make_semset(1)
    ipc.semctl(gone, 0, IPC_RMID)
    ipc.semctl(s, 0, SETALL, [3, 3])
    tracked = ipc.tracked_semundo()
    with pytest.raises(exc) as e:
        ipc.restore_semundo(make_entries(s, gone))
    if exc is OSError:
        assert e.value.errno == errno.EINVAL and f"set {gone}" in str(e.value)
    assert ipc.tracked_semundo() == tracked
    assert values(s) == [3, 3]


@needs_root
def test_restore_passes_eacces_through(make_semset: Callable[..., int]) -> None:
    s = make_semset(1, mode=0o600)

    def restore() -> int:
        try:
            ipc.restore_semundo({s: [1]})
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES and f"set {s}" in str(e) else 2
        return 1

    assert run_in_child(restore, uid=65534) == 0


def test_restore_writes_the_kernel_file_where_it_exists(make_semset: Callable[..., int],
                                                        self_tree: Path) -> None:
    s = make_semset(2)
    tracked = ipc.tracked_semundo()
    ipc.restore_semundo({s: [1]}, proc_root=self_tree)
    assert (self_tree / "self" / "semundo").read_text() == f"{s} 1 0\n"
    assert ipc.tracked_semundo() == tracked


# ---- tracked_semundo against what the kernel does at exit ------------------------------------

BASE = 100


@pytest.fixture
def sets(make_semset: Callable[..., int]) -> Callable[..., List[int]]:
    """Factory: sets(n1, n2, ...) -> semids, every semaphore at BASE."""

    def make(*sizes: int) -> List[int]:
        made = []
        for n in sizes:
            s = make_semset(n)
            ipc.semctl(s, 0, SETALL, [BASE] * n)
            made.append(s)
        return made

    return make


@needs_no_kernel_file
def test_tracked_matches_exit_with_several_sets_and_semaphores(sets: Callable[..., List[int]]
                                                               ) -> None:
    a, b = sets(3, 2)

    def scenario() -> None:
        ipc.semop(a, [(0, -2, SEM_UNDO), (2, 5, SEM_UNDO), (0, -1, SEM_UNDO)])
        ipc.semop(a, [(1, 3)])
        ipc.semop(b, [(1, -4, SEM_UNDO)])
        ipc.semop(b, [(0, 1, SEM_UNDO), (0, -1, SEM_UNDO)])

    tracked, change = exit_effect([a, b], scenario)
    assert tracked == {a: [3, 0, -5], b: [0, 4]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_pads_to_the_set_size_and_leaves_out_sets_with_nothing_to_undo(
        sets: Callable[..., List[int]]) -> None:
    a, b = sets(4, 2)

    def scenario() -> None:
        ipc.semop(a, [(1, -1, SEM_UNDO)])
        ipc.semop(b, [(0, 2, SEM_UNDO)])
        ipc.semop(b, [(0, -2, SEM_UNDO)])

    tracked, change = exit_effect([a, b], scenario)
    assert tracked == {a: [0, 1, 0, 0]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_is_empty_in_a_forked_child_and_intact_in_the_parent(
        sets: Callable[..., List[int]]) -> None:
    (a,) = sets(2)

    def grandchild() -> int:
        if ipc.tracked_semundo() != {}:
            return 1
        ipc.semop(a, [(1, 2, SEM_UNDO)])
        return 0 if ipc.tracked_semundo() == {a: [0, -2]} else 2

    def scenario() -> None:
        ipc.semop(a, [(0, -3, SEM_UNDO)])
        assert run_in_child(grandchild) == 0

    tracked, change = exit_effect([a], scenario)
    assert tracked == {a: [3, 0]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_adds_up_the_operations_of_all_threads(sets: Callable[..., List[int]]) -> None:
    (a,) = sets(2)

    def worker(num: int) -> None:
        for _ in range(5):
            ipc.semop(a, [(num, -1, SEM_UNDO)])

    def scenario() -> None:
        threads = [threading.Thread(target=worker, args=(i % 2,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The threads have exited: a thread's exit undoes nothing.
        assert values(a) == [BASE - 10, BASE - 10]

    tracked, change = exit_effect([a], scenario)
    assert tracked == {a: [10, 10]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_forgets_a_semaphore_this_process_sets_with_setval(
        sets: Callable[..., List[int]]) -> None:
    (a,) = sets(2)

    def scenario() -> None:
        ipc.semop(a, [(0, -2, SEM_UNDO), (1, -3, SEM_UNDO)])
        ipc.semctl(a, 0, SETVAL, 50)

    tracked, change = exit_effect([a], scenario)
    assert tracked == {a: [0, 3]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_forgets_a_set_this_process_sets_with_setall(
        sets: Callable[..., List[int]]) -> None:
    a, b = sets(2, 1)

    def scenario() -> None:
        ipc.semop(a, [(0, -2, SEM_UNDO), (1, -3, SEM_UNDO)])
        ipc.semop(b, [(0, -1, SEM_UNDO)])
        ipc.semctl(a, 0, SETALL, [40, 40])
        ipc.semop(a, [(1, -1, SEM_UNDO)])

    tracked, change = exit_effect([a, b], scenario)
    assert tracked == {a: [0, 1], b: [1]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_drops_a_set_this_process_removes(sets: Callable[..., List[int]]) -> None:
    a, b = sets(1, 1)

    def scenario() -> None:
        ipc.semop(a, [(0, -1, SEM_UNDO)])
        ipc.semop(b, [(0, -1, SEM_UNDO)])
        ipc.semctl(b, 0, IPC_RMID)

    tracked, change = exit_effect([a, b], scenario)
    assert tracked == {a: [1]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_drops_a_set_another_process_removes(sets: Callable[..., List[int]]) -> None:
    a, b = sets(1, 1)

    def scenario() -> None:
        ipc.semop(a, [(0, -1, SEM_UNDO)])
        ipc.semop(b, [(0, -1, SEM_UNDO)])
        assert run_in_child(lambda: ipc.semctl(b, 0, IPC_RMID) or 0) == 0

    tracked, change = exit_effect([a, b], scenario)
    assert tracked == {a: [1]}
    assert as_undo_state(tracked, change) == tracked


@needs_no_kernel_file
def test_tracked_then_restored_in_a_new_process_releases_the_same_at_exit(
        sets: Callable[..., List[int]]) -> None:
    a, b = sets(2, 3)

    def worker() -> None:
        ipc.semop(a, [(0, -4, SEM_UNDO)])
        ipc.semop(b, [(2, 7, SEM_UNDO), (1, -1, SEM_UNDO)])

    saved, change = exit_effect([a, b], worker)
    assert as_undo_state(saved, change) == saved
    tracked, change = exit_effect([a, b], lambda: ipc.restore_semundo(saved))
    assert tracked == saved
    assert as_undo_state(tracked, change) == saved


@needs_no_kernel_file
def test_example_hands_the_undo_state_to_a_new_process() -> None:
    example = Path(__file__).parent.parent / "examples" / "semundo_save_restore.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "free slots after the worker exited: 1" in lines
    assert "free slots while it runs: 1" in lines
    assert lines[-1] == "free slots after it was killed: 3"
