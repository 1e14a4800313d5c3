"""SharedMemory: create/open/from_id, read and write with their bounds, attachments,
``with``, and what another process sees. The rules all three kinds share (keys,
creator, equality, pickling) are in test_base.py."""

from __future__ import annotations

import errno
from array import array
from typing import Callable

import pytest

import ipcbind as ipc
from ipcbind import IPC_STAT, SharedMemory
from conftest import reap, run_in_child, start_child, unused_segment_key
from sysv_helpers import IS_ROOT, run_as_stranger


@pytest.fixture
def shm(make_shm: Callable[..., SharedMemory]) -> SharedMemory:
    return make_shm()


def nattch(s: SharedMemory) -> int:
    return s.stat().nattch


# ---- making one ------------------------------------------------------------------------

def test_create_makes_a_zeroed_segment_of_that_size(make_shm: Callable[..., SharedMemory]) -> None:
    s = make_shm(10000, mode=0o640)
    ds = s.stat()
    assert (s.size, ds.segsz, ds.mode, s.created, s.key) == (10000, 10000, 0o640, True, 0)
    assert s.read() == bytes(10000)


def test_create_with_a_key_opens_an_existing_segment(make_shm: Callable[..., SharedMemory]) -> None:
    k = unused_segment_key()
    a = make_shm(8192, key=k)
    b = SharedMemory.create(4096, key=k)
    assert (b.id, b.created, b.size, b.key) == (a.id, False, 8192, k)


def test_create_exclusive_on_an_existing_key_is_fileexistserror(
        make_shm: Callable[..., SharedMemory]) -> None:
    k = unused_segment_key()
    make_shm(key=k)
    with pytest.raises(FileExistsError):
        SharedMemory.create(4096, key=k, exclusive=True)


def test_create_larger_than_the_existing_segment_says_its_size(
        make_shm: Callable[..., SharedMemory]) -> None:
    k = unused_segment_key()
    make_shm(4096, key=k)
    with pytest.raises(OSError, match="holds 4096 bytes, fewer than the 8192") as e:
        SharedMemory.create(8192, key=k)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("size, exc", [(0, ValueError), (-1, ValueError), ("1", TypeError),
                                       (1.5, TypeError), (True, TypeError)])
def test_create_refuses_a_bad_size(size: object, exc: type) -> None:
    with pytest.raises(exc, match="size"):  # type: ignore[misc]
        SharedMemory.create(size)  # type: ignore[arg-type]


def test_open_finds_the_segment_by_key(make_shm: Callable[..., SharedMemory]) -> None:
    k = unused_segment_key()
    a = make_shm(5000, key=k)
    b = SharedMemory.open(k)
    assert (b.id, b.created, b.size) == (a.id, False, 5000)


def test_open_of_a_missing_key_is_filenotfounderror() -> None:
    with pytest.raises(FileNotFoundError):
        SharedMemory.open(unused_segment_key())


def test_from_id_learns_key_and_size(make_shm: Callable[..., SharedMemory]) -> None:
    k = unused_segment_key()
    a = make_shm(5000, key=k)
    b = SharedMemory.from_id(a.id)
    assert (b.key, b.size, b.created) == (k, 5000, False)
    assert repr(b) == f"<SharedMemory id={a.id} key={k:#010x} size=5000>"


def test_from_id_of_no_segment_says_so() -> None:
    with pytest.raises(OSError, match="no shared memory segment with id"):
        SharedMemory.from_id(2 ** 31 - 1)


# ---- read and write -------------------------------------------------------------------

def test_write_then_read_gives_the_bytes_back(shm: SharedMemory) -> None:
    shm.write(b"hello\0world", 100)
    assert shm.read(11, 100) == b"hello\0world"
    assert shm.read(3) == b"\0\0\0"


def test_read_without_a_size_reads_to_the_end(shm: SharedMemory) -> None:
    shm.write(b"tail", 4092)
    assert shm.read(offset=4090) == b"\0\0tail"
    assert shm.read(offset=4096) == b""


def test_write_takes_any_bytes_like_object(shm: SharedMemory) -> None:
    shm.write(bytearray(b"ab"))
    shm.write(memoryview(b"xxcd")[2:], 2)
    shm.write(array("H", [0x4645]), 4)
    assert shm.read(6) == b"abcdEF"


def test_write_past_the_end_is_refused_and_writes_nothing(shm: SharedMemory) -> None:
    with pytest.raises(ValueError, match="past the end.*nothing written"):
        shm.write(b"x" * 10, 4090)
    assert shm.read() == bytes(4096)


def test_read_past_the_end_is_refused(shm: SharedMemory) -> None:
    with pytest.raises(ValueError, match="past the end"):
        shm.read(10, 4090)
    with pytest.raises(ValueError, match="past the end"):
        shm.read(offset=4097)


@pytest.mark.parametrize("call, exc, word", [
    (lambda s: s.read(-1), ValueError, "size"),
    (lambda s: s.read(1, -1), ValueError, "offset"),
    (lambda s: s.read("1"), TypeError, "size"),
    (lambda s: s.write(b"x", -1), ValueError, "offset"),
    (lambda s: s.write(b"x", 1.0), TypeError, "offset"),
    (lambda s: s.write("text"), TypeError, "encode"),
    (lambda s: s.write(5), TypeError, "bytes-like"),
], ids=["read-size-negative", "read-offset-negative", "read-size-str", "write-offset-negative",
        "write-offset-float", "write-str", "write-int"])
def test_read_and_write_refuse_bad_arguments_before_attaching(
        shm: SharedMemory, call: Callable[..., object], exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):  # type: ignore[misc]
        call(shm)
    assert nattch(shm) == 0
    assert shm.read() == bytes(4096)


def test_read_and_write_keep_one_attachment_until_detach(shm: SharedMemory) -> None:
    shm.write(b"x")
    shm.read()
    assert nattch(shm) == 1
    shm.detach()
    assert nattch(shm) == 0
    assert shm.read(1) == b"x" and nattch(shm) == 1


def test_with_detaches_and_removes_what_it_created() -> None:
    with SharedMemory.create(4096) as s:
        s.write(b"x")
    with pytest.raises(OSError) as e:
        ipc.shmctl(s.id, IPC_STAT)
    assert e.value.errno == errno.EINVAL  # detached and removed: gone at once


def test_with_on_an_opened_segment_detaches_and_leaves_it(shm: SharedMemory) -> None:
    with SharedMemory.from_id(shm.id) as other:
        other.write(b"kept")
    assert nattch(shm) == 0 and shm.read(4) == b"kept"


def test_a_forked_child_leaving_with_does_not_remove_its_parents_segment() -> None:
    with SharedMemory.create(4096) as s:
        def child() -> int:
            with s:
                s.write(b"child")
            return 0
        assert reap(start_child(child)) == 0
        assert s.read(5) == b"child" and nattch(s) == 1


def test_remove_detaches_its_own_attachment_first(shm: SharedMemory) -> None:
    shm.write(b"x")
    keep = shm.attach()
    shm.remove()
    ds = ipc.shmctl(shm.id, IPC_STAT)
    assert ds.dest and ds.nattch == 1  # only keep remains
    keep.close()


def test_read_with_read_permission_only_attaches_read_only(
        make_shm: Callable[..., SharedMemory]) -> None:
    if not IS_ROOT:
        pytest.skip("needs root (to drop to uid 65534)")
    s = make_shm(mode=0o604)
    s.write(b"public")

    def child() -> int:
        other = SharedMemory.from_id(s.id)
        assert other.read(6) == b"public"
        with pytest.raises(PermissionError):
            other.write(b"x")
        return 0

    assert run_as_stranger(child) == 0


@pytest.mark.skipif(not IS_ROOT, reason="needs root (to drop to uid 65534)")
def test_read_without_permission_is_permissionerror(shm: SharedMemory) -> None:
    def child() -> int:
        with pytest.raises(PermissionError):
            SharedMemory.from_id(shm.id).read()
        return 0
    assert run_as_stranger(child) == 0


def test_another_process_sees_the_bytes_written(shm: SharedMemory) -> None:
    def child() -> int:
        SharedMemory.from_id(shm.id).write(b"from the child", 1000)
        return 0
    assert run_in_child(child) == 0
    assert shm.read(14, 1000) == b"from the child"


# ---- attach ----------------------------------------------------------------------------

def test_attach_gives_a_view_of_the_segment_itself(shm: SharedMemory) -> None:
    with shm.attach() as a:
        with memoryview(a) as v:
            v[0:3] = b"abc"
    assert shm.read(3) == b"abc"


def test_attach_readonly_gives_a_readonly_view(shm: SharedMemory) -> None:
    shm.write(b"r")
    with shm.attach(readonly=True) as a:
        with memoryview(a) as v:
            assert v.readonly and v[0] == ord("r")


def test_attach_of_a_removed_segment_names_it(shm: SharedMemory) -> None:
    shm.remove()
    with pytest.raises(OSError, match=f"shmat\\(shmid={shm.id}\\)"):
        shm.attach()


def test_a_read_after_removal_by_another_process_raises(shm: SharedMemory) -> None:
    ipc.shmctl(shm.id, ipc.IPC_RMID)
    with pytest.raises(OSError) as e:
        shm.read()
    assert e.value.errno in (errno.EINVAL, errno.EIDRM)


def test_the_own_attachment_survives_removal_by_another_process(shm: SharedMemory) -> None:
    shm.write(b"still")
    assert run_in_child(lambda: ipc.shmctl(shm.id, ipc.IPC_RMID) or 0) == 0
    assert shm.read(5) == b"still"  # attached: the kernel keeps it
    shm.detach()
    with pytest.raises(OSError):
        shm.stat()  # the last detach took it
