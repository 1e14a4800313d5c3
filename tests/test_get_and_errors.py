"""msgget/semget/shmget with keys, ftok, and the exceptions failing calls raise."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

import ipcbind as ipc
from ipcbind import IPC_CREAT, IPC_EXCL, IPC_NOWAIT, IPC_RMID, SETVAL
from ipcbind.errors import syscall_error


@pytest.fixture
def fresh_key() -> Iterator[int]:
    """A key no queue, set or segment uses now; whatever a test creates with it is removed."""
    def in_use(get: Callable[[int], int], key: int) -> bool:
        try:
            get(key)
        except FileNotFoundError:
            return False
        return True

    while True:
        key = random.randrange(1, 2 ** 31)
        if not any(in_use(get, key) for get in (ipc.msgget, lambda k: ipc.semget(k, 0),
                                                 lambda k: ipc.shmget(k, 0))):
            break
    yield key
    for remove in (lambda: ipc.msgctl(ipc.msgget(key), IPC_RMID),
                   lambda: ipc.semctl(ipc.semget(key, 0), 0, IPC_RMID),
                   lambda: ipc.shmctl(ipc.shmget(key, 0), IPC_RMID)):
        try:
            remove()
        except FileNotFoundError:
            pass


GETS: List[Tuple[str, Callable[[int, int], int]]] = [
    ("msgget", lambda key, flags: ipc.msgget(key, flags)),
    ("semget", lambda key, flags: ipc.semget(key, 1, flags)),
    ("shmget", lambda key, flags: ipc.shmget(key, 4096, flags)),
]


@pytest.mark.parametrize("name,get", GETS, ids=[g[0] for g in GETS])
def test_get_with_ipc_creat_ipc_excl_on_an_existing_key_is_fileexistserror(
        fresh_key: int, name: str, get: Callable[[int, int], int]) -> None:
    get(fresh_key, IPC_CREAT | IPC_EXCL | 0o600)
    with pytest.raises(FileExistsError) as e:
        get(fresh_key, IPC_CREAT | IPC_EXCL | 0o600)
    assert e.value.errno == errno.EEXIST
    assert f"{name}(key={fresh_key:#x})" in str(e.value)


@pytest.mark.parametrize("name,get", GETS, ids=[g[0] for g in GETS])
def test_get_of_a_missing_key_without_ipc_creat_is_filenotfounderror(
        fresh_key: int, name: str, get: Callable[[int, int], int]) -> None:
    with pytest.raises(FileNotFoundError) as e:
        get(fresh_key, 0o600)
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("name,get", GETS, ids=[g[0] for g in GETS])
def test_get_of_an_existing_key_returns_the_same_id(
        fresh_key: int, name: str, get: Callable[[int, int], int]) -> None:
    made = get(fresh_key, IPC_CREAT | IPC_EXCL | 0o600)
    assert get(fresh_key, 0) == made
    assert get(fresh_key, IPC_CREAT | 0o600) == made


def test_a_key_above_2_pow_31_is_the_same_key_as_its_signed_twin(make_queue) -> None:
    while True:
        key = random.randrange(2 ** 31, 2 ** 32)
        try:
            q = make_queue(key=key, flags=IPC_CREAT | IPC_EXCL)
            break
        except FileExistsError:
            continue
    assert ipc.msgget(key - 2 ** 32) == q
    assert ipc.msgctl(q, ipc.IPC_STAT).key & 0xFFFFFFFF == key


def test_ftok_combines_proj_id_device_and_inode(tmp_path: Path) -> None:
    f = tmp_path / "keyfile"
    f.write_bytes(b"")
    st = os.stat(f)
    expect = (0x41 << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)
    assert ipc.ftok(f, 0x41) == expect
    assert ipc.ftok(str(f), 0x41) == ipc.ftok(os.fsencode(f), 0x41) == expect
    assert ipc.ftok(f, 0x42) != expect


@pytest.mark.parametrize("proj_id", [0, 256, -1, 0x141])
def test_ftok_refuses_a_proj_id_outside_1_to_255_naming_it_and_its_range(
        tmp_path: Path, proj_id: int) -> None:
    with pytest.raises(ValueError, match=r"proj_id must be in 1\.\.255.*got " + str(proj_id)):
        ipc.ftok(tmp_path, proj_id)


def test_ftok_takes_every_proj_id_from_1_to_255(tmp_path: Path) -> None:
    keys = {ipc.ftok(tmp_path, p) for p in range(1, 256)}
    assert len(keys) == 255


def test_ftok_on_a_missing_path_is_filenotfounderror_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as e:
        ipc.ftok(missing, 1)
    assert e.value.errno == errno.ENOENT
    assert e.value.filename == str(missing)


# ---- the exceptions -------------------------------------------------------------------

def test_errors_carry_the_kernels_errno_and_name_the_call_and_id(
        msq: int, semset: int) -> None:
    cases = [
        (lambda: ipc.msgrcv(msq, None, 0, IPC_NOWAIT), ipc.NoMessageError, errno.ENOMSG,
         f"msgrcv(msqid={msq})"),
        (lambda: ipc.msgsnd(msq, 0, b"x"), OSError, errno.EINVAL, f"msgsnd(msqid={msq})"),
        (lambda: ipc.semctl(semset, 0, SETVAL, 40000), ipc.OutOfRangeError, errno.ERANGE,
         f"semctl(semid={semset}"),
        (lambda: ipc.semop(semset, [(0, -1, IPC_NOWAIT)]), BlockingIOError, errno.EAGAIN,
         f"semop(semid={semset})"),
        (lambda: ipc.semop(semset, [(0, 0)] * 1000), ipc.TooBigError, errno.E2BIG,
         f"semop(semid={semset})"),
    ]
    for call, cls, err, name in cases:
        with pytest.raises(cls) as e:
            call()
        assert e.value.errno == err
        assert name in str(e.value)
        assert os.strerror(err) in str(e.value)


def test_the_packages_errors_are_oserrors_with_their_errno() -> None:
    for cls, err in ((ipc.NoMessageError, errno.ENOMSG),
                     (ipc.IdentifierRemovedError, errno.EIDRM),
                     (ipc.TooBigError, errno.E2BIG),
                     (ipc.OutOfRangeError, errno.ERANGE),
                     (ipc.NotSupportedError, errno.ENOSYS)):
        exc = syscall_error(err, "msgrcv(msqid=1)")
        assert type(exc) is cls
        assert issubclass(cls, OSError)
        assert exc.errno == err


def test_errno_without_a_class_of_ours_gets_pythons_own_subclass() -> None:
    for err, cls in ((errno.EACCES, PermissionError), (errno.EPERM, PermissionError),
                     (errno.EEXIST, FileExistsError), (errno.ENOENT, FileNotFoundError),
                     (errno.EAGAIN, BlockingIOError), (errno.EINTR, InterruptedError)):
        assert type(syscall_error(err, "semop(semid=1)")) is cls

