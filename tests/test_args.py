"""Arguments that cannot be represented in the C call raise TypeError, ValueError or
OverflowError before any system call: the object's times and pids stay unset, so
no syscall touched it, and the exception is never an OSError."""

from __future__ import annotations

import array
from typing import Any, Callable, Optional

import pytest

import ipcbind as ipc
from ipcbind import (
    GETPID,
    GETVAL,
    IPC_NOWAIT,
    IPC_SET,
    IPC_STAT,
    SETALL,
    SETVAL,
)


def untouched_queue(q: int) -> None:
    s = ipc.msgctl(q, IPC_STAT)
    assert (s.stime, s.lspid, s.rtime, s.lrpid) == (0, 0, 0, 0)


def untouched_set(s: int) -> None:
    assert ipc.semctl(s, 0, IPC_STAT).otime == 0
    assert ipc.semctl(s, 0, GETPID) == 0


def raises_before_syscall(exc: type, call: Callable[[], Any], match: Optional[str] = None) -> None:
    with pytest.raises(exc, match=match) as e:
        call()
    assert not isinstance(e.value, OSError)


# ---- msgsnd ---------------------------------------------------------------------------

def test_msgsnd_mtype_2_pow_70_is_overflowerror_before_any_syscall(msq: int) -> None:
    raises_before_syscall(OverflowError, lambda: ipc.msgsnd(msq, 2 ** 70, b"x"), "mtype")
    raises_before_syscall(OverflowError, lambda: ipc.msgsnd(msq, -2 ** 70, b"x"), "mtype")
    untouched_queue(msq)


def test_msgsnd_str_payload_is_typeerror_before_any_syscall(msq: int) -> None:
    raises_before_syscall(TypeError, lambda: ipc.msgsnd(msq, 1, "abc"), "str")  # type: ignore
    untouched_queue(msq)


def test_msgsnd_non_buffer_payloads_are_typeerror_before_any_syscall(msq: int) -> None:
    for data in (None, 5, [1, 2], memoryview(b"abcd")[::2]):
        raises_before_syscall(TypeError, lambda: ipc.msgsnd(msq, 1, data))
    untouched_queue(msq)


def test_msgsnd_float_arguments_are_typeerror_before_any_syscall(msq: int) -> None:
    raises_before_syscall(TypeError, lambda: ipc.msgsnd(float(msq), 1, b"x"), "msqid")
    raises_before_syscall(TypeError, lambda: ipc.msgsnd(msq, 1.0, b"x"), "mtype")
    raises_before_syscall(TypeError, lambda: ipc.msgsnd(msq, 1, b"x", 0.0), "flags")
    untouched_queue(msq)


def test_msgsnd_bad_timeouts_are_rejected_before_any_syscall(msq: int) -> None:
    raises_before_syscall(ValueError, lambda: ipc.msgsnd(msq, 1, b"x", timeout=-1))
    raises_before_syscall(ValueError, lambda: ipc.msgsnd(msq, 1, b"x", timeout=float("nan")))
    raises_before_syscall(TypeError, lambda: ipc.msgsnd(msq, 1, b"x", timeout="1"))
    untouched_queue(msq)


# ---- msgrcv ---------------------------------------------------------------------------

def test_msgrcv_negative_maxsize_is_valueerror_before_any_syscall(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"x")
    raises_before_syscall(ValueError, lambda: ipc.msgrcv(msq, -1), "maxsize")
    raises_before_syscall(OverflowError, lambda: ipc.msgrcv(msq, 2 ** 64), "maxsize")
    raises_before_syscall(TypeError, lambda: ipc.msgrcv(msq, 1.5), "maxsize")  # type: ignore
    s = ipc.msgctl(msq, IPC_STAT)
    assert (s.qnum, s.rtime, s.lrpid) == (1, 0, 0)


def test_msgrcv_msgtyp_beyond_a_c_long_is_overflowerror_before_any_syscall(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"x")
    raises_before_syscall(OverflowError, lambda: ipc.msgrcv(msq, None, 2 ** 63), "msgtyp")
    raises_before_syscall(OverflowError, lambda: ipc.msgrcv(msq, None, -2 ** 70), "msgtyp")
    assert ipc.msgctl(msq, IPC_STAT).lrpid == 0


def test_msgrcv_float_arguments_are_typeerror_before_any_syscall(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"x")
    raises_before_syscall(TypeError, lambda: ipc.msgrcv(float(msq)), "msqid")
    raises_before_syscall(TypeError, lambda: ipc.msgrcv(msq, None, 1.0), "msgtyp")
    raises_before_syscall(TypeError, lambda: ipc.msgrcv(msq, None, 0, float(IPC_NOWAIT)),
                          "flags")
    assert ipc.msgctl(msq, IPC_STAT).lrpid == 0


# ---- msgctl / semctl IPC_SET ------------------------------------------------------------

def test_msgctl_float_id_is_typeerror() -> None:
    raises_before_syscall(TypeError, lambda: ipc.msgctl(1.0, IPC_STAT), "msqid")


def test_msgctl_ipc_set_needs_a_mapping(msq: int) -> None:
    for arg in (None, [("mode", 0o644)], 0o644):
        raises_before_syscall(TypeError, lambda: ipc.msgctl(msq, IPC_SET, arg), "mapping")
    assert ipc.msgctl(msq, IPC_STAT).mode == 0o600


def test_msgctl_ipc_set_unknown_key_is_valueerror_and_changes_nothing(msq: int) -> None:
    raises_before_syscall(
        ValueError, lambda: ipc.msgctl(msq, IPC_SET, {"mode": 0o644, "qnum": 0}), "qnum")
    assert ipc.msgctl(msq, IPC_STAT).mode == 0o600


def test_msgctl_ipc_set_value_that_is_not_a_c_value_changes_nothing(msq: int) -> None:
    for bad, exc in (({"mode": "0644"}, TypeError), ({"qbytes": -1}, OverflowError),
                     ({"uid": 2 ** 40}, OverflowError)):
        raises_before_syscall(exc, lambda: ipc.msgctl(msq, IPC_SET, bad), next(iter(bad)))
    s = ipc.msgctl(msq, IPC_STAT)
    assert (s.mode, s.qbytes) == (0o600, ipc.msgctl(0, ipc.IPC_INFO)[1].msgmnb)


def test_msgctl_ipc_set_names_a_bad_mode_before_a_bad_qbytes_in_any_order(msq: int) -> None:
    for bad in ({"qbytes": -1, "mode": "x"}, {"mode": "x", "qbytes": -1}):
        raises_before_syscall(TypeError, lambda: ipc.msgctl(msq, IPC_SET, bad), "mode")


def test_a_get_of_a_missing_key_given_by_index_names_the_key() -> None:
    key = 0x7FFF1235
    while True:  # a key nothing holds now
        try:
            ipc.msgget(key)
        except FileNotFoundError:
            break
        key += 1

    class Key:
        def __index__(self) -> int:
            return key
    with pytest.raises(FileNotFoundError, match=f"msgget.key={key:#x}"):
        ipc.msgget(Key())


def test_semctl_ipc_set_needs_a_mapping(semset: int) -> None:
    raises_before_syscall(TypeError, lambda: ipc.semctl(semset, 0, IPC_SET, None), "mapping")
    raises_before_syscall(TypeError, lambda: ipc.semctl(semset, 0, IPC_SET, 0o644), "mapping")
    assert ipc.semctl(semset, 0, IPC_STAT).mode == 0o600


def test_semctl_ipc_set_unknown_key_is_valueerror_and_changes_nothing(semset: int) -> None:
    raises_before_syscall(
        ValueError, lambda: ipc.semctl(semset, 0, IPC_SET, {"mode": 0o644, "qbytes": 1}),
        "qbytes")
    assert ipc.semctl(semset, 0, IPC_STAT).mode == 0o600


# ---- semop / semctl ---------------------------------------------------------------------

def test_semop_sem_num_minus_1_is_overflowerror_before_any_syscall(semset: int) -> None:
    raises_before_syscall(OverflowError, lambda: ipc.semop(semset, [(-1, 1)]), "sem_num")
    raises_before_syscall(OverflowError, lambda: ipc.semop(semset, [(0, 1), (2 ** 16, 1)]),
                          "sem_num")
    untouched_set(semset)


def test_semop_sem_op_beyond_a_short_is_overflowerror_before_any_syscall(semset: int) -> None:
    raises_before_syscall(OverflowError, lambda: ipc.semop(semset, [(0, 40000)]), "sem_op")
    raises_before_syscall(OverflowError, lambda: ipc.semop(semset, [(0, 1, 2 ** 16)]),
                          "sem_flg")
    untouched_set(semset)


def test_semop_malformed_ops_are_typeerror_before_any_syscall(semset: int) -> None:
    for ops in (None, 5, [(0,)], [(0, 1, 0, 0)], [0], [(0, 1.0)], [("0", 1)],
                [{"sem_num": 0, "sem_op": 1}]):
        raises_before_syscall(TypeError, lambda: ipc.semop(semset, ops))  # type: ignore
    untouched_set(semset)


def test_semop_float_id_and_bad_timeouts_are_rejected_before_any_syscall(semset: int) -> None:
    raises_before_syscall(TypeError, lambda: ipc.semop(float(semset), [(0, 1)]), "semid")
    raises_before_syscall(ValueError, lambda: ipc.semop(semset, [(0, 1)], timeout=-0.5))
    raises_before_syscall(TypeError, lambda: ipc.semop(semset, [(0, 1)], timeout="1"))
    untouched_set(semset)


def test_semctl_float_arguments_are_typeerror(semset: int) -> None:
    raises_before_syscall(TypeError, lambda: ipc.semctl(float(semset), 0, GETVAL), "semid")
    raises_before_syscall(TypeError, lambda: ipc.semctl(semset, 0.0, GETVAL), "semnum")
    raises_before_syscall(TypeError, lambda: ipc.semctl(semset, 0, SETVAL, 1.0), "SETVAL")
    assert ipc.semctl(semset, 0, GETVAL) == 0


def test_semctl_setval_beyond_a_c_int_is_overflowerror(semset: int) -> None:
    raises_before_syscall(OverflowError, lambda: ipc.semctl(semset, 0, SETVAL, 2 ** 40))
    assert ipc.semctl(semset, 0, IPC_STAT).ctime > 0
    assert ipc.semctl(semset, 0, GETVAL) == 0


def test_semctl_setall_with_non_ints_is_typeerror(make_semset: Callable[..., int]) -> None:
    s = make_semset(2)
    raises_before_syscall(TypeError, lambda: ipc.semctl(s, 0, SETALL, None))
    raises_before_syscall(TypeError, lambda: ipc.semctl(s, 0, SETALL, [1, 1.5]))
    raises_before_syscall(TypeError, lambda: ipc.semctl(s, 0, SETALL, [1, "2"]))
    assert ipc.semctl(s, 0, ipc.GETALL) == [0, 0]


def test_semctl_setall_accepts_any_iterable_of_ints(make_semset: Callable[..., int]) -> None:
    s = make_semset(3)
    ipc.semctl(s, 0, SETALL, array.array("H", [1, 2, 3]))
    assert ipc.semctl(s, 0, ipc.GETALL) == [1, 2, 3]
    ipc.semctl(s, 0, SETALL, (v for v in (4, 5, 6)))
    assert ipc.semctl(s, 0, ipc.GETALL) == [4, 5, 6]


# ---- *get, ftok -------------------------------------------------------------------------

def test_get_keys_and_nsems_that_are_not_ints_are_rejected() -> None:
    raises_before_syscall(TypeError, lambda: ipc.msgget(1.0), "key")
    raises_before_syscall(OverflowError, lambda: ipc.msgget(2 ** 32), "key")
    raises_before_syscall(TypeError, lambda: ipc.semget(ipc.IPC_PRIVATE, 1.0), "nsems")
    raises_before_syscall(TypeError, lambda: ipc.semget(ipc.IPC_PRIVATE, 1, 0.0), "flags")


def test_ftok_rejects_a_nul_in_the_path_and_a_float_proj_id(tmp_path: Any) -> None:
    raises_before_syscall(ValueError, lambda: ipc.ftok("/tmp\0x", 1), "NUL")
    raises_before_syscall(TypeError, lambda: ipc.ftok(tmp_path, 1.0), "proj_id")
