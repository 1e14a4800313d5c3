"""An attachment cannot crash the interpreter: each way of using one after, during or
around its detach runs in a forked child that must exit 0 (a SIGSEGV or SIGBUS shows
as a negative status), and gets a clear exception or works on the real segment."""

from __future__ import annotations

import copy
import gc
import mmap
import pickle
import sys
import threading
from typing import Any, Callable

import pytest

import ipcbind as ipc
from ipcbind import IPC_RMID, IPC_STAT, SHM_RDONLY, Attachment
from ipcbind._seam import ffi
from conftest import reap, run_in_child, start_child

SIZE = 3 * mmap.PAGESIZE + 17


@pytest.fixture
def seg(make_segment: Callable[..., int]) -> int:
    """A segment whose size is no multiple of the page size."""
    return make_segment(SIZE)


def survives(body: Callable[[], None]) -> None:
    """Run body in a forked child; it must return normally (no signal, no exception)."""
    def child() -> int:
        body()
        return 0
    status = run_in_child(child)
    assert status == 0, f"child ended with {status} (negative: killed by that signal)"


def nattch(shmid: int) -> int:
    return int(ipc.shmctl(shmid, IPC_STAT).nattch)


# ---- after shmdt ------------------------------------------------------------------------

@pytest.mark.parametrize("use", [
    lambda a: a[0],
    lambda a: a[1:5],
    lambda a: a.__setitem__(0, 1),
    lambda a: a.__setitem__(slice(0, 3), b"abc"),
    lambda a: memoryview(a),
    lambda a: a.read(4),
    lambda a: a.write(b"x"),
    lambda a: a.find(b"x"),
    lambda a: len(a),
    lambda a: ffi.from_buffer(a),
], ids=["index", "slice", "store", "store-slice", "memoryview", "read", "write", "find", "len",
        "cffi-buffer"])
def test_an_attachment_used_after_shmdt_raises_valueerror(seg: int, use: Any) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        ipc.shmdt(a)
        with pytest.raises(ValueError):
            use(a)
    survives(body)


def test_a_view_made_before_a_refused_detach_keeps_working(seg: int) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        v = memoryview(a)
        with pytest.raises(BufferError, match="release"):
            ipc.shmdt(a)
        v[0] = 42
        assert a[0] == 42 and nattch(seg) == 1
        v.release()
        ipc.shmdt(a)
        assert nattch(seg) == 0
    survives(body)


@pytest.mark.parametrize("export", [
    lambda a: memoryview(a)[10:20],
    lambda a: memoryview(a)[:8].cast("I", (1, 2)),
    lambda a: ffi.from_buffer(a),
], ids=["slice-of-a-view", "cast-view", "cffi-from-buffer"])
def test_detach_is_refused_while_any_export_lives(seg: int, export: Any) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        kept = export(a)
        gc.collect()
        with pytest.raises(BufferError):
            a.close()
        assert not a.closed and nattch(seg) == 1
        del kept
        gc.collect()
        a.close()
        assert a.closed and nattch(seg) == 0
    survives(body)


def test_context_manager_with_a_live_view_refuses_to_detach(seg: int) -> None:
    def body() -> None:
        with pytest.raises(BufferError):
            with ipc.shmat(seg) as a:
                v = memoryview(a)
        v[0] = 1  # still the segment
        assert nattch(seg) == 1
        v.release()
        a.close()
    survives(body)


# ---- garbage collection -------------------------------------------------------------------

def test_a_view_keeps_a_dropped_attachment_attached(seg: int) -> None:
    def body() -> None:
        v = memoryview(ipc.shmat(seg))
        gc.collect()
        v[5] = 77
        assert nattch(seg) == 1
        with ipc.shmat(seg, SHM_RDONLY) as r:
            assert r[5] == 77
        del v
        gc.collect()
        assert nattch(seg) == 0
    survives(body)


def test_a_collected_attachment_is_detached(seg: int) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        assert nattch(seg) == 1
        del a
        gc.collect()
        assert nattch(seg) == 0
    survives(body)


# ---- fork -----------------------------------------------------------------------------------

def test_a_forked_child_uses_its_parents_attachment(seg: int) -> None:
    a = ipc.shmat(seg)
    try:
        def child() -> int:
            assert nattch(seg) == 2  # the kernel counts the child's copy
            a[0:5] = b"child"
            a.close()  # detaches the child's copy only
            return 0 if nattch(seg) == 1 else 1
        assert reap(start_child(child)) == 0
        assert a[0:5] == b"child" and nattch(seg) == 1
    finally:
        a.close()


def test_a_child_that_exits_with_the_attachment_leaves_the_parent_attached(seg: int) -> None:
    with ipc.shmat(seg) as a:
        assert reap(start_child(lambda: 0)) == 0
        a[0] = 3
        assert nattch(seg) == 1


def test_a_child_detaching_a_view_of_its_parent_is_refused_in_the_child_only(seg: int) -> None:
    with ipc.shmat(seg) as a:
        def child() -> int:
            v = memoryview(a)
            try:
                a.close()
            except BufferError:
                v[1] = 9
                return 0
            return 1
        assert reap(start_child(child)) == 0
        assert a[1] == 9 and nattch(seg) == 1


# ---- removal while attached -------------------------------------------------------------------

def test_a_segment_removed_while_attached_stays_usable_until_detached(seg: int) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        ipc.shmctl(seg, IPC_RMID)
        a[:4] = b"kept"
        with memoryview(a) as v:
            assert bytes(v[:4]) == b"kept"
        a.close()
        with pytest.raises(OSError):
            ipc.shmctl(seg, IPC_STAT)  # gone with the last detach
    survives(body)


# ---- threads --------------------------------------------------------------------------------

def test_threads_racing_shmdt_against_views_get_an_exception_or_the_segment(seg: int) -> None:
    def body() -> None:
        for _ in range(20):
            a = ipc.shmat(seg)
            start = threading.Barrier(4)
            outcomes: list = []

            def user() -> None:
                start.wait()
                for i in range(300):
                    try:
                        with memoryview(a) as v:
                            v[i % SIZE] = i & 0xFF
                            assert v[i % SIZE] == i & 0xFF
                        outcomes.append("used")
                    except ValueError:  # detached by now
                        outcomes.append("gone")
                        return

            def detacher() -> None:
                start.wait()
                while True:
                    try:
                        a.close()
                        return
                    except BufferError:
                        outcomes.append("refused")

            threads = [threading.Thread(target=user) for _ in range(3)]
            threads.append(threading.Thread(target=detacher))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert a.closed and set(outcomes) <= {"used", "gone", "refused"}
        assert nattch(seg) == 0
    survives(body)


# ---- arguments that run code -------------------------------------------------------------------

def _detaching(a: Attachment, value: int = 5) -> Any:
    class Detaching:
        def __index__(self) -> int:
            a.close()
            return value
    return Detaching()


@pytest.mark.parametrize("use", [
    lambda a: a[_detaching(a)],
    lambda a: a[_detaching(a):10],
    lambda a: a.__setitem__(_detaching(a), 1),
    lambda a: a.__setitem__(3, _detaching(a)),
    lambda a: a.read(_detaching(a)),
    lambda a: a.find(b"x", _detaching(a)),
    lambda a: a.rfind(b"x", 0, _detaching(a)),
    lambda a: a.move(_detaching(a), 0, 10),
    lambda a: a.write_byte(_detaching(a)),
    lambda a: a.seek(_detaching(a)),
    lambda a: a.flush(_detaching(a, 0), 4096),
    lambda a: a.madvise(mmap.MADV_DONTNEED, _detaching(a, 0)),
], ids=["index", "slice", "store-index", "store-value", "read", "find", "rfind", "move",
        "write_byte", "seek", "flush", "madvise"])
def test_an_index_that_detaches_the_attachment_is_harmless(seg: int, use: Any) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        try:
            use(a)
        except ValueError:
            pass
        assert a.closed and nattch(seg) == 0
    survives(body)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="CPython 3.9's memoryview writes "
                    "through a view that an __index__ released meanwhile (gh-92888, fixed in "
                    "3.10); any exporter's memory is at stake, not only a segment's")
def test_an_index_that_releases_the_view_and_detaches_is_harmless(seg: int) -> None:
    def body() -> None:
        a = ipc.shmat(seg)
        v = memoryview(a)

        class Releasing:
            def __index__(self) -> int:
                v.release()
                a.close()
                return 5

        with pytest.raises(ValueError):
            v[Releasing()] = 1
        assert a.closed and nattch(seg) == 0
    survives(body)


# ---- what an attachment refuses ---------------------------------------------------------------

def test_a_readonly_attachment_refuses_writes_through_every_path(seg: int) -> None:
    def body() -> None:
        with ipc.shmat(seg, SHM_RDONLY) as a:
            for write in (lambda: a.__setitem__(0, 1), lambda: a.write(b"x"),
                          lambda: memoryview(a).__setitem__(0, 1),
                          lambda: ffi.from_buffer(a, require_writable=True)):
                with pytest.raises((TypeError, BufferError)):
                    write()
            assert a[0] == 0
    survives(body)


def test_size_is_the_segments_as_for_an_mmap_of_a_file(make_segment: Callable[..., int]) -> None:
    with ipc.shmat(make_segment(5000)) as a:
        assert a.size() == 5000
    with pytest.raises(ValueError):
        a.size()


def test_an_attachment_cannot_be_resized(seg: int) -> None:
    with ipc.shmat(seg) as a:
        with pytest.raises(OSError, match="resized"):
            a.resize(2 * SIZE)
        assert len(a) == SIZE


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTFORK"), reason="no MADV_DONTFORK here")
def test_madvise_dontfork_is_refused_so_a_child_keeps_the_mapping(seg: int) -> None:
    with ipc.shmat(seg) as a:
        with pytest.raises(ValueError, match="refused"):
            a.madvise(mmap.MADV_DONTFORK)
        assert reap(start_child(lambda: 0 if a[0] == 0 else 1)) == 0


@pytest.mark.parametrize("option, says", [(102, "refused"), (101, "refused"),
                                          (999, "not one of the mmap module's")],
                         ids=["guard-install", "soft-offline", "unknown"])
def test_madvise_refuses_guards_and_options_mmap_does_not_name(seg: int, option: int,
                                                               says: str) -> None:
    def body() -> None:
        with ipc.shmat(seg) as a:
            with pytest.raises(ValueError, match=says):
                a.madvise(option, 0, 4096)
            a[0] = 1
    survives(body)


def test_madvise_passes_the_options_mmap_names(seg: int) -> None:
    with ipc.shmat(seg) as a:
        a.madvise(mmap.MADV_WILLNEED)
        a.madvise(mmap.MADV_DONTNEED, 0, 4096)
        assert a[0] == 0


def test_attachments_are_made_only_by_shmat() -> None:
    with pytest.raises(TypeError, match="shmat"):
        Attachment(-1, 4096)


def test_an_attachment_cannot_be_pickled(seg: int) -> None:
    with ipc.shmat(seg) as a:
        with pytest.raises(TypeError):
            pickle.dumps(a)


@pytest.mark.parametrize("how", [*(f"pickle{p}" for p in range(pickle.HIGHEST_PROTOCOL + 1)),
                                 "copy", "deepcopy"])
def test_pickling_or_copying_an_attachment_says_why_not_at_every_protocol(
        seg: int, how: str) -> None:
    with ipc.shmat(seg) as a:
        with pytest.raises(TypeError, match="attachment cannot be pickled or copied"):
            if how.startswith("pickle"):
                pickle.dumps(a, int(how[6:]))
            else:
                getattr(copy, how)(a)


def _segments_mapped() -> list:
    with open("/proc/self/maps") as f:
        return [line for line in f if "SYSV" in line]


def test_shmat_of_a_removed_segment_maps_nothing(seg: int) -> None:
    def body() -> None:
        ipc.shmctl(seg, IPC_RMID)
        with pytest.raises(OSError):
            ipc.shmat(seg)
        assert not _segments_mapped()
    survives(body)


def test_shmat_interrupted_half_way_leaves_nothing_attached(seg: int) -> None:
    def body() -> None:
        from ipcbind import _seam

        def interrupted(call: str, shmid: int) -> int:
            assert nattch(seg) == 1  # the first attachment, made by the kernel's choice
            raise KeyboardInterrupt
        _seam.segment_size = interrupted
        with pytest.raises(KeyboardInterrupt):
            ipc.shmat(seg)
        assert nattch(seg) == 0 and not _segments_mapped()
    survives(body)


def test_repr_says_what_is_attached(seg: int) -> None:
    a = ipc.shmat(seg, SHM_RDONLY)
    assert repr(a) == f"<Attachment shmid={seg} {SIZE} bytes readonly>"
    a.close()
    assert repr(a) == f"<Attachment shmid={seg} detached readonly>"
