"""Message queues against the real kernel: one test per fact of the kernel's
contract for msgsnd, msgrcv (MSG_COPY included) and msgctl."""

from __future__ import annotations

import array
import errno
import os
import time
from typing import Callable, List

import pytest

import ipcbind as ipc
from ipcbind import (
    IPC_CREAT,
    IPC_EXCL,
    IPC_INFO,
    IPC_NOWAIT,
    IPC_RMID,
    IPC_SET,
    IPC_STAT,
    MSG_COPY,
    MSG_EXCEPT,
    MSG_INFO,
    MSG_NOERROR,
    MSG_STAT,
    MSG_STAT_ANY,
)
from conftest import (NOBODY, STAT_ANY_KNOWN, index_of, needs_stat_any, qemu_reads_lrpid_as_0,
                      reap, run_in_child, start_child)
from sysv_helpers import (
    CAP_SYS_RESOURCE,
    IS_ROOT,
    has_capability,
    proc_int,
    run_as_stranger,
    unshare_with_msg_limits,
)


def stat(q: int) -> ipc.MsqidDs:
    return ipc.msgctl(q, IPC_STAT)


def fill(q: int, types: List[int]) -> None:
    for t in types:
        ipc.msgsnd(q, t, b"type %d" % t)


@pytest.fixture(scope="module")
def msg_copy_supported() -> None:
    """Skip MSG_COPY tests on kernels built without CONFIG_CHECKPOINT_RESTORE."""
    q = ipc.msgget(ipc.IPC_PRIVATE, IPC_CREAT | 0o600)
    try:
        ipc.msgsnd(q, 1, b"x")
        ipc.msgrcv(q, None, 0, MSG_COPY | IPC_NOWAIT)
    except ipc.NotSupportedError:
        pytest.skip("kernel without CONFIG_CHECKPOINT_RESTORE: MSG_COPY gives ENOSYS")
    finally:
        ipc.msgctl(q, IPC_RMID)


# ---- msgsnd: the order of its checks ----------------------------------------------

def test_msgsnd_oversize_is_einval_even_with_mtype_0_on_an_unknown_id(
        make_queue: Callable[..., int]) -> None:
    q = make_queue()
    ipc.msgctl(q, IPC_RMID)
    with pytest.raises(OSError) as e:
        ipc.msgsnd(q, 0, bytes(proc_int("msgmax") + 1))
    assert e.value.errno == errno.EINVAL


def test_msgsnd_oversize_is_einval_not_eacces() -> None:
    q = ipc.msgget(ipc.IPC_PRIVATE, IPC_CREAT | 0o000)
    size = proc_int("msgmax") + 1

    def child() -> int:
        try:
            ipc.msgsnd(q, 1, bytes(size), IPC_NOWAIT)
        except OSError as e:
            return 0 if e.errno == errno.EINVAL else 1
        return 2
    try:
        assert run_as_stranger(child) == 0
    finally:
        ipc.msgctl(q, IPC_RMID)


def test_msgsnd_mtype_below_1_is_einval_before_permission() -> None:
    q = ipc.msgget(ipc.IPC_PRIVATE, IPC_CREAT | 0o000)

    def child() -> int:
        codes = []
        for mtype in (0, -1):
            try:
                ipc.msgsnd(q, mtype, b"x", IPC_NOWAIT)
            except OSError as e:
                codes.append(e.errno)
        return 0 if codes == [errno.EINVAL, errno.EINVAL] else 1
    try:
        assert run_as_stranger(child) == 0
    finally:
        ipc.msgctl(q, IPC_RMID)


def test_msgsnd_mtype_below_1_is_einval_before_full_queue(msq: int) -> None:
    ipc.msgctl(msq, IPC_SET, {"qbytes": 1})
    ipc.msgsnd(msq, 1, b"x")
    with pytest.raises(OSError) as e:
        ipc.msgsnd(msq, 0, b"y", IPC_NOWAIT)
    assert e.value.errno == errno.EINVAL


def test_msgsnd_to_an_unknown_id_is_einval(make_queue: Callable[..., int]) -> None:
    q = make_queue()
    ipc.msgctl(q, IPC_RMID)
    with pytest.raises(OSError) as e:
        ipc.msgsnd(q, 1, b"x")
    assert e.value.errno == errno.EINVAL


def test_msgsnd_to_a_negative_id_is_einval() -> None:
    with pytest.raises(OSError) as e:
        ipc.msgsnd(-1, 1, b"x", IPC_NOWAIT)
    assert e.value.errno == errno.EINVAL


def test_msgsnd_without_write_permission_is_eacces() -> None:
    q = ipc.msgget(ipc.IPC_PRIVATE, IPC_CREAT | 0o000)

    def child() -> int:
        try:
            ipc.msgsnd(q, 1, b"x", IPC_NOWAIT)
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES else 1
        return 2
    try:
        assert run_as_stranger(child) == 0
        ipc.msgctl(q, IPC_SET, {"mode": 0o600})   # so that a normal user may look
        assert stat(q).qnum == 0
    finally:
        ipc.msgctl(q, IPC_RMID)


# ---- msgsnd: a full queue -----------------------------------------------------------

def test_default_queue_holds_msgmnb_bytes_then_nowait_send_is_eagain(msq: int) -> None:
    msgmax = proc_int("msgmax")
    qbytes = stat(msq).qbytes
    assert qbytes == proc_int("msgmnb")
    sent = 0
    while sent + msgmax <= qbytes:
        ipc.msgsnd(msq, 1, bytes(msgmax), IPC_NOWAIT)
        sent += msgmax
    ipc.msgsnd(msq, 1, bytes(qbytes - sent), IPC_NOWAIT)
    with pytest.raises(BlockingIOError) as e:
        ipc.msgsnd(msq, 1, b"x", IPC_NOWAIT)
    assert e.value.errno == errno.EAGAIN
    assert stat(msq).cbytes == qbytes


def test_queue_is_full_when_qnum_reaches_qbytes_even_with_empty_messages(msq: int) -> None:
    ipc.msgctl(msq, IPC_SET, {"qbytes": 3})
    for _ in range(3):
        ipc.msgsnd(msq, 1, b"", IPC_NOWAIT)
    with pytest.raises(BlockingIOError):
        ipc.msgsnd(msq, 1, b"", IPC_NOWAIT)
    assert stat(msq).qnum == 3


# ---- msgrcv: which message is taken ----------------------------------------------------

def test_msgrcv_msgtyp_0_takes_the_first_message(msq: int) -> None:
    fill(msq, [3, 1, 2])
    assert ipc.msgrcv(msq, None, 0) == (3, b"type 3")


def test_msgrcv_positive_msgtyp_takes_the_first_of_that_type(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"a")
    ipc.msgsnd(msq, 2, b"b")
    ipc.msgsnd(msq, 2, b"c")
    assert ipc.msgrcv(msq, None, 2) == (2, b"b")
    assert ipc.msgrcv(msq, None, 2) == (2, b"c")


def test_msgrcv_negative_msgtyp_takes_the_lowest_type_not_above_its_magnitude(
        msq: int) -> None:
    fill(msq, [4, 3, 2, 1])
    assert ipc.msgrcv(msq, None, -2) == (1, b"type 1")
    assert ipc.msgrcv(msq, None, -3) == (2, b"type 2")
    with pytest.raises(ipc.NoMessageError):
        ipc.msgrcv(msq, None, -2, IPC_NOWAIT)
    assert ipc.msgrcv(msq, None, -10) == (3, b"type 3")


def test_msgrcv_msg_except_takes_the_first_message_of_another_type(msq: int) -> None:
    fill(msq, [1, 1, 2, 3])
    assert ipc.msgrcv(msq, None, 1, MSG_EXCEPT) == (2, b"type 2")
    assert ipc.msgrcv(msq, None, 1, MSG_EXCEPT) == (3, b"type 3")
    with pytest.raises(ipc.NoMessageError):
        ipc.msgrcv(msq, None, 1, MSG_EXCEPT | IPC_NOWAIT)


def test_msgrcv_too_small_buffer_is_e2big_and_the_message_stays_queued(msq: int) -> None:
    ipc.msgsnd(msq, 5, b"0123456789")
    with pytest.raises(ipc.TooBigError) as e:
        ipc.msgrcv(msq, 9)
    assert e.value.errno == errno.E2BIG
    assert stat(msq).qnum == 1
    assert ipc.msgrcv(msq, 10) == (5, b"0123456789")


def test_msgrcv_msg_noerror_truncates_and_removes(msq: int) -> None:
    ipc.msgsnd(msq, 5, b"0123456789")
    assert ipc.msgrcv(msq, 4, 0, MSG_NOERROR) == (5, b"0123")
    assert stat(msq).qnum == 0


def test_msgrcv_nowait_without_a_match_is_enomsg(msq: int) -> None:
    with pytest.raises(ipc.NoMessageError) as e:
        ipc.msgrcv(msq, None, 0, IPC_NOWAIT)
    assert e.value.errno == errno.ENOMSG
    ipc.msgsnd(msq, 1, b"x")
    with pytest.raises(ipc.NoMessageError):
        ipc.msgrcv(msq, None, 2, IPC_NOWAIT)
    assert stat(msq).qnum == 1


def test_msgrcv_maxsize_none_takes_a_msgmax_message(msq: int) -> None:
    big = os.urandom(proc_int("msgmax"))
    ipc.msgsnd(msq, 1, b"small")
    ipc.msgsnd(msq, 2, big)
    assert ipc.msgrcv(msq) == (1, b"small")
    assert ipc.msgrcv(msq) == (2, big)


def test_msgrcv_maxsize_int_larger_than_the_message_returns_it_whole(msq: int) -> None:
    data = os.urandom(proc_int("msgmax"))
    ipc.msgsnd(msq, 1, data)
    assert ipc.msgrcv(msq, 10 ** 6, 0, MSG_NOERROR) == (1, data)


@pytest.mark.skipif(not IS_ROOT, reason="needs root (to unshare an IPC namespace and raise msgmax)")
def test_msgrcv_maxsize_none_never_e2big_after_msgmax_is_raised() -> None:
    """In a private IPC namespace, messages beyond the default msgmax (and beyond the
    shim's first buffer) come back whole, by msgrcv and by MSG_COPY."""
    def child() -> int:
        unshare_with_msg_limits(msgmax=200000, msgmnb=400000)
        q = ipc.msgget(ipc.IPC_PRIVATE, IPC_CREAT | 0o600)
        small, big = b"s" * 10, os.urandom(150000)
        ipc.msgsnd(q, 1, small)
        ipc.msgsnd(q, 2, big)
        ipc.msgsnd(q, 3, big[:20000])
        try:
            ipc.msgrcv(q, None, 1, MSG_COPY | IPC_NOWAIT)
            copied = True
        except ipc.NotSupportedError:
            copied = False
        if copied:
            assert ipc.msgrcv(q, None, 1, MSG_COPY | IPC_NOWAIT) == (2, big)
        assert ipc.msgrcv(q) == (1, small)
        assert ipc.msgrcv(q) == (2, big)
        assert ipc.msgrcv(q) == (3, big[:20000])
        ipc.msgctl(q, IPC_RMID)
        return 0
    assert run_in_child(child, timeout=30) == 0


# ---- MSG_COPY ---------------------------------------------------------------------------

needs_msg_copy = pytest.mark.usefixtures("msg_copy_supported")


@needs_msg_copy
def test_msg_copy_msgtyp_is_a_zero_based_position(msq: int) -> None:
    fill(msq, [30, 10, 20])
    assert ipc.msgrcv(msq, None, 0, MSG_COPY | IPC_NOWAIT) == (30, b"type 30")
    assert ipc.msgrcv(msq, None, 1, MSG_COPY | IPC_NOWAIT) == (10, b"type 10")
    assert ipc.msgrcv(msq, None, 2, MSG_COPY | IPC_NOWAIT) == (20, b"type 20")


@needs_msg_copy
def test_msg_copy_index_at_or_past_qnum_or_negative_is_enomsg(msq: int) -> None:
    fill(msq, [1, 2])
    for index in (2, 3, -1):
        with pytest.raises(ipc.NoMessageError) as e:
            ipc.msgrcv(msq, None, index, MSG_COPY | IPC_NOWAIT)
        assert e.value.errno == errno.ENOMSG


@needs_msg_copy
def test_msg_copy_without_ipc_nowait_is_einval(msq: int) -> None:
    fill(msq, [1])
    with pytest.raises(OSError) as e:
        ipc.msgrcv(msq, None, 0, MSG_COPY)
    assert e.value.errno == errno.EINVAL


@needs_msg_copy
def test_msg_copy_with_msg_except_is_einval(msq: int) -> None:
    fill(msq, [1])
    with pytest.raises(OSError) as e:
        ipc.msgrcv(msq, None, 0, MSG_COPY | IPC_NOWAIT | MSG_EXCEPT)
    assert e.value.errno == errno.EINVAL


@needs_msg_copy
def test_msg_copy_short_buffer_is_e2big(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"0123456789")
    with pytest.raises(ipc.TooBigError):
        ipc.msgrcv(msq, 9, 0, MSG_COPY | IPC_NOWAIT)
    assert ipc.msgrcv(msq, 10, 0, MSG_COPY | IPC_NOWAIT) == (1, b"0123456789")


@needs_msg_copy
def test_msg_copy_buffer_larger_than_msgmax_is_capped_not_refused(msq: int) -> None:
    msgmax = proc_int("msgmax")
    data = os.urandom(msgmax)
    ipc.msgsnd(msq, 1, data)
    for maxsize in (None, msgmax, 10 * msgmax):
        assert ipc.msgrcv(msq, maxsize, 0, MSG_COPY | IPC_NOWAIT) == (1, data)
    assert stat(msq).qnum == 1


@needs_msg_copy
def test_msg_copy_with_msg_noerror_and_short_buffer_is_einval_not_truncated(msq: int) -> None:
    ipc.msgsnd(msq, 1, b"0123456789")
    with pytest.raises(OSError) as e:
        ipc.msgrcv(msq, 4, 0, MSG_COPY | IPC_NOWAIT | MSG_NOERROR)
    assert e.value.errno == errno.EINVAL
    assert stat(msq).qnum == 1


@needs_msg_copy
def test_msg_copy_leaves_qnum_cbytes_rtime_and_lrpid_untouched(msq: int) -> None:
    fill(msq, [1, 2, 3])
    before = stat(msq)
    for i in range(3):
        ipc.msgrcv(msq, None, i, MSG_COPY | IPC_NOWAIT)
    after = stat(msq)
    assert (after.qnum, after.cbytes, after.rtime, after.lrpid) == (3, before.cbytes, 0, 0)
    assert after == before


# ---- mtype and payloads ---------------------------------------------------------------

def test_mtype_is_a_c_long(msq: int) -> None:
    for t in (2 ** 31, 2 ** 62, 2 ** 63 - 1):
        ipc.msgsnd(msq, t, b"x")
        assert ipc.msgrcv(msq, None, t, IPC_NOWAIT) == (t, b"x")


def test_mtype_2_pow_63_is_overflowerror_and_sends_nothing(msq: int) -> None:
    with pytest.raises(OverflowError, match="mtype"):
        ipc.msgsnd(msq, 2 ** 63, b"x")
    assert stat(msq).qnum == 0


def test_mtype_0_is_the_kernels_einval(msq: int) -> None:
    with pytest.raises(OSError) as e:
        ipc.msgsnd(msq, 0, b"x")
    assert e.value.errno == errno.EINVAL


def test_nul_bytes_and_empty_messages_round_trip(msq: int) -> None:
    for data in (b"\0", b"\0a\0b\0", bytes(range(256)) * 4, b""):
        ipc.msgsnd(msq, 7, data)
        assert ipc.msgrcv(msq, None, 7, IPC_NOWAIT) == (7, data)


def test_msgsnd_accepts_any_bytes_like_object(msq: int) -> None:
    ints = array.array("i", [1, -2, 3])
    for data, expect in ((bytearray(b"ba"), b"ba"), (memoryview(b"xmvx")[1:3], b"mv"),
                         (ints, ints.tobytes())):
        ipc.msgsnd(msq, 1, data)
        assert ipc.msgrcv(msq, None, 0, IPC_NOWAIT) == (1, expect)


def test_msgsnd_str_payload_is_typeerror(msq: int) -> None:
    with pytest.raises(TypeError, match="str"):
        ipc.msgsnd(msq, 1, "text")  # type: ignore[arg-type]
    assert stat(msq).qnum == 0


# ---- msgctl -----------------------------------------------------------------------------

@qemu_reads_lrpid_as_0
def test_msgctl_ipc_stat_reports_the_queue(make_queue: Callable[..., int]) -> None:
    import random
    while True:
        key = random.randrange(1, 2 ** 31)
        try:
            q = make_queue(mode=0o640, key=key, flags=IPC_CREAT | IPC_EXCL)
            break
        except FileExistsError:
            continue
    t0 = int(time.time())
    ipc.msgsnd(q, 1, b"abc")
    ipc.msgsnd(q, 2, b"de")
    pid = start_child(lambda: 0 if ipc.msgrcv(q, None, 2) == (2, b"de") else 1)
    assert reap(pid) == 0
    s = stat(q)
    assert (s.key, s.mode, s.qnum, s.cbytes) == (key, 0o640, 1, 3)
    assert (s.uid, s.gid, s.cuid, s.cgid) == (os.geteuid(), os.getegid()) * 2
    assert s.qbytes == proc_int("msgmnb")
    assert (s.lspid, s.lrpid) == (os.getpid(), pid)
    for t in (s.stime, s.rtime, s.ctime):
        assert t0 - 2 <= t <= time.time() + 2


def test_msgctl_ipc_set_changes_mode_and_lowers_qbytes(msq: int) -> None:
    ipc.msgctl(msq, IPC_SET, {"mode": 0o604, "qbytes": 100})
    s = stat(msq)
    assert (s.mode, s.qbytes) == (0o604, 100)
    ipc.msgsnd(msq, 1, bytes(99), IPC_NOWAIT)
    with pytest.raises(BlockingIOError):
        ipc.msgsnd(msq, 1, b"xx", IPC_NOWAIT)
    ipc.msgsnd(msq, 1, b"x", IPC_NOWAIT)


def test_msgctl_ipc_set_qbytes_up_to_msgmnb_needs_no_privilege(msq: int) -> None:
    ipc.msgctl(msq, IPC_SET, {"qbytes": 10})
    ipc.msgctl(msq, IPC_SET, {"qbytes": proc_int("msgmnb")})
    assert stat(msq).qbytes == proc_int("msgmnb")


def test_msgctl_ipc_set_qbytes_above_msgmnb_needs_cap_sys_resource(msq: int) -> None:
    wanted = proc_int("msgmnb") + 1
    if has_capability(CAP_SYS_RESOURCE):
        ipc.msgctl(msq, IPC_SET, {"qbytes": wanted})
        assert stat(msq).qbytes == wanted
    else:
        with pytest.raises(PermissionError) as e:
            ipc.msgctl(msq, IPC_SET, {"qbytes": wanted})
        assert e.value.errno == errno.EPERM
        assert stat(msq).qbytes == proc_int("msgmnb")


def test_msgctl_ipc_rmid_removes_the_queue_and_its_messages(make_queue: Callable[..., int]) -> None:
    q = make_queue()
    ipc.msgsnd(q, 1, b"x")
    assert ipc.msgctl(q, IPC_RMID) is None
    for call in (lambda: stat(q), lambda: ipc.msgrcv(q, None, 0, IPC_NOWAIT),
                 lambda: ipc.msgctl(q, IPC_RMID)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EINVAL


def test_msgctl_ipc_info_reports_the_limits(msq: int) -> None:
    highest, info = ipc.msgctl(0, IPC_INFO)
    assert (info.msgmax, info.msgmnb, info.msgmni) == (
        proc_int("msgmax"), proc_int("msgmnb"), proc_int("msgmni"))
    assert highest >= 0


def test_msgctl_msg_info_counts_queues_messages_and_bytes_in_use(msq: int) -> None:
    ipc.msgsnd(msq, 1, bytes(1000))
    ipc.msgsnd(msq, 1, bytes(500))
    highest, info = ipc.msgctl(0, MSG_INFO)
    assert info.msgpool >= 1
    assert info.msgmap >= 2
    assert info.msgtql >= 1500
    assert highest >= own_index(msq)


def own_index(q: int) -> int:
    """The index of our own queue (see conftest.index_of)."""
    index = index_of(q, ipc.msgctl, (MSG_STAT_ANY, MSG_STAT))  # where the first is refused
    if index is None:
        raise AssertionError(f"no index gives back queue {q}")
    return index


@needs_stat_any
def test_msgctl_msg_stat_and_msg_stat_any_take_an_index_and_return_the_id(msq: int) -> None:
    ipc.msgsnd(msq, 4, b"abc")
    index = own_index(msq)
    for cmd in (MSG_STAT, MSG_STAT_ANY):
        found, s = ipc.msgctl(index, cmd)
        assert found == msq
        assert (s.qnum, s.cbytes) == (1, 3)
    assert index <= ipc.msgctl(0, IPC_INFO)[0]


@needs_stat_any
def test_msg_stat_needs_read_permission_msg_stat_any_does_not() -> None:
    q = ipc.msgget(ipc.IPC_PRIVATE, IPC_CREAT | 0o000)
    try:
        index = own_index(q)

        def child() -> int:
            try:
                ipc.msgctl(index, MSG_STAT)
                return 1
            except PermissionError as e:
                if e.errno != errno.EACCES:
                    return 2
            return 0 if ipc.msgctl(index, MSG_STAT_ANY)[0] == q else 3
        assert run_as_stranger(child) == 0
    finally:
        ipc.msgctl(q, IPC_RMID)


@pytest.mark.skipif(STAT_ANY_KNOWN, reason="this kernel knows MSG_STAT_ANY (Linux >= 4.17)")
def test_ipc_set_without_read_permission_where_msg_stat_any_is_refused_says_so(
        make_queue: Callable[..., int]) -> None:
    q = make_queue(mode=0o000)
    if IS_ROOT:
        ipc.msgctl(q, IPC_SET, {"uid": NOBODY})

    def child() -> int:
        try:
            ipc.msgctl(q, IPC_SET, {"mode": 0o600})
        except PermissionError as e:
            return 0 if e.errno == errno.EACCES and "MSG_STAT_ANY" in str(e) else 2
        return 1
    assert run_in_child(child, uid=NOBODY if IS_ROOT else None) == 0
    assert ipc.msgctl(q, IPC_STAT).mode == 0o000


@needs_stat_any
def test_msgctl_ipc_set_by_an_owner_without_read_permission_keeps_other_fields(
        make_queue: Callable[..., int]) -> None:
    """IPC_SET needs ownership, not read permission; uid, gid and qbytes that the
    call does not name keep their values."""
    q = make_queue(mode=0o000)
    ipc.msgctl(q, IPC_SET, {"qbytes": 1234})
    owner = NOBODY if IS_ROOT else os.geteuid()
    if IS_ROOT:
        ipc.msgctl(q, IPC_SET, {"uid": owner})

    def child() -> int:
        ipc.msgctl(q, IPC_SET, {"mode": 0o640})
        return 0
    assert run_in_child(child, uid=owner if IS_ROOT else None) == 0
    s = stat(q)
    assert (s.mode, s.uid, s.gid, s.qbytes) == (0o640, owner, os.getegid(), 1234)
