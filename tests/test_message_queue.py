"""MessageQueue and Message against the real kernel: making, sending, receiving,
peeking, batches, and bad input. Timeouts and signals are in
test_message_queue_timeouts.py, receive_async in test_message_queue_async.py."""

from __future__ import annotations

import array
import errno
import os
import pickle
import random
import select
import threading
import time
from typing import Callable, List

import pytest

import ipcbind
from ipcbind import (
    IdentifierRemovedError,
    Message,
    MessageQueue,
    NoMessageError,
    QueueChangedError,
    TooBigError,
)
from conftest import needs_root, run_in_child
from sysv_helpers import wait_blocked

MSGMAX = ipcbind.msgctl(0, ipcbind.IPC_INFO)[1].msgmax


def free_key() -> int:
    """A key no queue uses right now (the tests create with it exclusively)."""
    while True:
        key = random.randrange(0x10000000, 0x7FFFFFFF)
        try:
            ipcbind.msgget(key)
        except FileNotFoundError:
            return key


def fill(q: MessageQueue) -> None:
    """Fill the queue to qbytes with messages of msgmax bytes or less."""
    room = q.stat().qbytes
    while room:
        n = min(room, MSGMAX)
        q.send(b"f" * n)
        room -= n


# ---- Message --------------------------------------------------------------------------

def test_message_has_mtype_and_data_and_unpacks() -> None:
    m = Message(3, b"abc")
    mtype, data = m
    assert (m.mtype, m.data) == (mtype, data) == (3, b"abc")


def test_message_is_a_tuple_equal_to_the_plain_pair() -> None:
    assert isinstance(Message(1, b""), tuple)
    assert Message(1, b"x") == (1, b"x")


def test_message_repr_names_its_fields() -> None:
    assert repr(Message(2, b"hi")) == "Message(mtype=2, data=b'hi')"


def test_message_pickles(q: MessageQueue) -> None:
    q.send(b"p", 4)
    m = q.receive()
    back = pickle.loads(pickle.dumps(m))
    assert back == m and type(back) is Message


def test_received_message_is_a_message(q: MessageQueue) -> None:
    q.send(b"x")
    assert type(q.receive()) is Message


# ---- making and opening -------------------------------------------------------------

def test_create_private_makes_a_new_queue_it_owns(q: MessageQueue) -> None:
    assert q.created
    assert q.key == ipcbind.IPC_PRIVATE
    assert q.stat().qnum == 0


def test_create_applies_mode(make_mq: Callable[..., MessageQueue]) -> None:
    assert make_mq(mode=0o640).stat().mode == 0o640


def test_create_with_key_then_open_gives_the_same_queue(make_mq: Callable[..., MessageQueue]) -> None:
    key = free_key()
    q = make_mq(key, exclusive=True)
    assert q.created and q.key == key
    assert MessageQueue.open(key).id == q.id


def test_create_without_exclusive_opens_an_existing_queue(make_mq: Callable[..., MessageQueue]) -> None:
    key = free_key()
    first = make_mq(key, exclusive=True)
    again = MessageQueue.create(key)
    assert again.id == first.id
    assert not again.created


def test_create_exclusive_on_an_existing_key_raises_file_exists(make_mq: Callable[..., MessageQueue]) -> None:
    key = free_key()
    make_mq(key, exclusive=True)
    with pytest.raises(FileExistsError):
        MessageQueue.create(key, exclusive=True)


def test_a_key_with_the_high_bit_set_reads_unsigned(make_mq: Callable[..., MessageQueue]) -> None:
    while True:
        key = random.randrange(0x80000000, 0xFFFFFFFF)
        try:
            q = make_mq(key, exclusive=True)
            break
        except FileExistsError:
            continue
    assert q.key == q.stat().key == MessageQueue.from_id(q.id).key == key
    assert MessageQueue.open(key).id == q.id == MessageQueue.open(key - 2 ** 32).id


@pytest.mark.parametrize("mode, exc", [(0o1000, ValueError), (-1, ValueError),
                                       ("0600", TypeError), (True, TypeError)])
def test_create_refuses_a_bad_mode(mode: object, exc: type) -> None:
    with pytest.raises(exc, match="mode"):
        MessageQueue.create(mode=mode)  # type: ignore[arg-type]


def test_create_refuses_a_key_that_is_no_c_int() -> None:
    with pytest.raises(OverflowError, match="key"):
        MessageQueue.create(2 ** 40)


def test_open_missing_key_raises_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        MessageQueue.open(free_key())


def test_open_ipc_private_is_refused() -> None:
    with pytest.raises(ValueError, match="IPC_PRIVATE"):
        MessageQueue.open(ipcbind.IPC_PRIVATE)


def test_from_id_wraps_the_queue_and_finds_its_key(make_mq: Callable[..., MessageQueue]) -> None:
    key = free_key()
    q = make_mq(key, exclusive=True)
    other = MessageQueue.from_id(q.id)
    assert other.id == q.id and other.key == key and not other.created
    q.send(b"via q")
    assert other.receive().data == b"via q"


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (2 ** 31, ValueError),
                                      ("5", TypeError), (1.0, TypeError), (None, TypeError)])
def test_from_id_refuses_what_is_no_queue_id(bad: object, exc: type) -> None:
    with pytest.raises(exc, match="queue id"):
        MessageQueue.from_id(bad)  # type: ignore[arg-type]


def test_from_id_of_an_unknown_id_fails_at_first_use(q: MessageQueue) -> None:
    gone = MessageQueue.from_id(q.id)
    q.remove()
    with pytest.raises(OSError) as e:
        gone.send(b"x")
    assert e.value.errno == errno.EINVAL


# ---- identity ---------------------------------------------------------------------

def test_repr_shows_id_key_and_ownership(q: MessageQueue) -> None:
    assert repr(q) == f"<MessageQueue id={q.id} key=0x00000000 created>"
    assert repr(MessageQueue.from_id(q.id)) == f"<MessageQueue id={q.id} key=0x00000000>"


def test_repr_of_a_removed_queue_does_not_raise(q: MessageQueue) -> None:
    other = MessageQueue(q.id)  # wrapped unchecked: its key is not known yet
    q.remove()
    assert repr(other) == f"<MessageQueue id={q.id} key=?>"


def test_queues_with_the_same_id_are_equal(q: MessageQueue, make_mq: Callable[..., MessageQueue]) -> None:
    assert MessageQueue.from_id(q.id) == q
    assert hash(MessageQueue.from_id(q.id)) == hash(q)
    assert make_mq() != q


def test_pickled_queue_is_the_same_queue_but_not_its_owner(q: MessageQueue) -> None:
    back = pickle.loads(pickle.dumps(q))
    assert back == q and not back.created


def test_id_and_key_are_read_only(q: MessageQueue) -> None:
    with pytest.raises(AttributeError):
        q.id = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        q.key = 5  # type: ignore[misc]


# ---- context manager, remove ------------------------------------------------------

def test_leaving_with_removes_a_created_queue() -> None:
    with MessageQueue.create() as q:
        msqid = q.id
        q.send(b"x")
    with pytest.raises(OSError) as e:
        ipcbind.msgctl(msqid, ipcbind.IPC_STAT)
    assert e.value.errno == errno.EINVAL


def test_leaving_with_keeps_an_opened_queue(q: MessageQueue) -> None:
    with MessageQueue.from_id(q.id) as other:
        other.send(b"x")
    assert len(q) == 1


def test_leaving_with_after_remove_is_quiet() -> None:
    with MessageQueue.create() as q:
        q.remove()


def test_leaving_with_when_another_removed_it_is_quiet() -> None:
    with MessageQueue.create() as q:
        ipcbind.msgctl(q.id, ipcbind.IPC_RMID)


def test_a_forked_child_leaving_with_does_not_remove_the_queue(q: MessageQueue) -> None:
    def child() -> int:
        with q:
            q.send(b"from child")
        return 0

    assert run_in_child(child) == 0
    assert q.receive().data == b"from child"


def test_remove_removes_and_a_second_remove_raises(q: MessageQueue) -> None:
    q.remove()
    with pytest.raises(OSError) as e:
        q.remove()
    assert e.value.errno == errno.EINVAL


def caught_when_removed(q: MessageQueue, wait: Callable[[], object], call: str
                        ) -> List[BaseException]:
    """What ``wait()``, blocked in ``call`` in a thread, raises when ``q`` is removed
    under it."""
    caught: List[BaseException] = []

    def run() -> None:
        try:
            wait()
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert t.native_id is not None
    wait_blocked(f"/proc/self/task/{t.native_id}", call)
    q.remove()
    t.join(10)
    assert not t.is_alive()
    return caught


def test_remove_wakes_a_waiting_receiver_with_identifier_removed(q: MessageQueue) -> None:
    caught = caught_when_removed(q, q.receive, "msgrcv")
    assert len(caught) == 1 and isinstance(caught[0], IdentifierRemovedError)


def test_remove_wakes_a_waiting_sender_with_identifier_removed(q: MessageQueue) -> None:
    fill(q)
    caught = caught_when_removed(q, lambda: q.send(b"no room"), "msgsnd")
    assert len(caught) == 1 and isinstance(caught[0], IdentifierRemovedError)


# ---- stat, len, bool, iteration -----------------------------------------------------

def test_stat_counts_messages_and_bytes(q: MessageQueue) -> None:
    q.send(b"abc")
    q.send(b"de")
    st = q.stat()
    assert (st.qnum, st.cbytes, st.lspid) == (2, 5, os.getpid())


def test_len_is_the_number_of_queued_messages(q: MessageQueue) -> None:
    assert len(q) == 0
    q.send(b"a")
    q.send(b"b")
    assert len(q) == 2


def test_an_empty_queue_is_still_true(q: MessageQueue) -> None:
    assert bool(q) is True


def test_iterating_yields_the_messages_and_takes_none(q: MessageQueue) -> None:
    q.send(b"one", 1)
    q.send(b"two", 2)
    assert list(q) == [(1, b"one"), (2, b"two")]
    assert len(q) == 2


# ---- send and receive -------------------------------------------------------------

def test_send_then_receive_round_trips_type_and_bytes(q: MessageQueue) -> None:
    q.send(b"\x00bin\xffary\x00", 7)
    assert q.receive() == (7, b"\x00bin\xffary\x00")


def test_messages_come_out_in_order(q: MessageQueue) -> None:
    for i in range(1, 6):
        q.send(str(i).encode(), i)
    assert [q.receive().mtype for _ in range(5)] == [1, 2, 3, 4, 5]


def test_send_default_type_is_1(q: MessageQueue) -> None:
    q.send(b"x")
    assert q.receive().mtype == 1


@pytest.mark.parametrize("data", [bytearray(b"ba"), memoryview(b"mv"), array.array("b", [1, 2])])
def test_send_takes_any_bytes_like(q: MessageQueue, data: object) -> None:
    q.send(data)  # type: ignore[arg-type]
    assert q.receive().data == bytes(data)  # type: ignore[call-overload]


def test_send_of_wide_items_sends_all_their_bytes(q: MessageQueue) -> None:
    q.send(array.array("i", [1, 2, 3]))
    assert len(q.receive().data) == 3 * array.array("i").itemsize


def test_zero_length_message_round_trips(q: MessageQueue) -> None:
    q.send(b"", 9)
    assert q.receive() == (9, b"")


def test_message_of_msgmax_bytes_round_trips(q: MessageQueue) -> None:
    q.send(b"m" * MSGMAX)
    assert q.receive().data == b"m" * MSGMAX


def test_receive_positive_type_takes_first_of_that_type(q: MessageQueue) -> None:
    for t in (1, 2, 3, 2):
        q.send(f"t{t}".encode(), t)
    assert q.receive(2) == (2, b"t2")
    assert [m.mtype for m in q.peek_all()] == [1, 3, 2]


def test_receive_negative_type_takes_the_lowest_type_up_to_it(q: MessageQueue) -> None:
    for t in (4, 3, 2, 1):
        q.send(b"x", t)
    assert q.receive(-2).mtype == 1
    assert q.receive(-3).mtype == 2


def test_receive_except_type_skips_that_type(q: MessageQueue) -> None:
    q.send(b"a", 1)
    q.send(b"b", 2)
    assert q.receive(1, except_type=True) == (2, b"b")


@pytest.mark.parametrize("mtype", [0, -3])
def test_except_type_needs_a_positive_type(q: MessageQueue, mtype: int) -> None:
    with pytest.raises(ValueError, match="except_type"):
        q.receive(mtype, except_type=True)


def test_receive_without_blocking_on_empty_raises_no_message(q: MessageQueue) -> None:
    with pytest.raises(NoMessageError):
        q.receive(block=False)


def test_receive_without_blocking_of_a_missing_type_raises_no_message(q: MessageQueue) -> None:
    q.send(b"x", 1)
    with pytest.raises(NoMessageError):
        q.receive(5, block=False)
    assert len(q) == 1


def test_send_without_blocking_on_a_full_queue_raises_blocking_io(q: MessageQueue) -> None:
    fill(q)
    with pytest.raises(BlockingIOError):
        q.send(b"one more", block=False)


def test_blocking_send_waits_for_room(q: MessageQueue) -> None:
    fill(q)
    threading.Timer(0.2, q.receive).start()
    q.send(b"later")
    assert q.peek_all()[-1].data == b"later"


def test_maxsize_too_small_raises_too_big_and_keeps_the_message(q: MessageQueue) -> None:
    q.send(b"0123456789")
    with pytest.raises(TooBigError):
        q.receive(maxsize=4)
    assert q.receive(maxsize=10).data == b"0123456789"


def test_truncate_cuts_to_maxsize_and_takes_the_message(q: MessageQueue) -> None:
    q.send(b"0123456789")
    assert q.receive(maxsize=4, truncate=True).data == b"0123"
    assert len(q) == 0


def test_truncate_needs_maxsize(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        q.receive(truncate=True)


def test_negative_maxsize_is_refused(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        q.receive(maxsize=-1)


@pytest.mark.parametrize("mtype", [0, -1])
def test_send_refuses_a_type_below_1(q: MessageQueue, mtype: int) -> None:
    with pytest.raises(ValueError, match="mtype must be >= 1"):
        q.send(b"x", mtype)
    assert len(q) == 0


def test_send_refuses_a_message_longer_than_msgmax(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="msgmax"):
        q.send(b"x" * (MSGMAX + 1))


def test_send_refuses_str(q: MessageQueue) -> None:
    with pytest.raises(TypeError, match="str"):
        q.send("text")  # type: ignore[arg-type]


def test_send_refuses_a_type_that_is_no_c_long(q: MessageQueue) -> None:
    with pytest.raises(OverflowError, match="mtype"):
        q.send(b"x", 2 ** 70)


def test_receive_refuses_a_type_that_is_no_c_long(q: MessageQueue) -> None:
    with pytest.raises(OverflowError, match="msgtyp"):
        q.receive(2 ** 70, block=False)
    with pytest.raises(TypeError, match="msgtyp"):
        q.receive("1", block=False)  # type: ignore[arg-type]


def test_send_and_receive_on_a_removed_queue_raise_einval(q: MessageQueue) -> None:
    q.remove()
    for call in (lambda: q.send(b"x"), lambda: q.receive(block=False)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EINVAL


def test_send_and_receive_from_several_threads_lose_nothing(q: MessageQueue) -> None:
    got: List[int] = []
    lock = threading.Lock()

    def produce(base: int) -> None:
        for i in range(200):
            q.send(str(base + i).encode())

    def consume() -> None:
        for _ in range(200):
            n = int(q.receive().data)
            with lock:
                got.append(n)

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(3)]
    threads += [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(k * 1000 + i for k in range(3) for i in range(200))


@needs_root
def test_send_without_write_permission_raises_permission_error(
        make_mq: Callable[..., MessageQueue]) -> None:
    q = make_mq(mode=0o644)

    def child() -> int:
        try:
            q.send(b"x")
        except PermissionError:
            return 0
        return 1

    assert run_in_child(child, uid=65534) == 0


@needs_root
def test_receive_and_peek_without_read_permission_raise_permission_error(
        make_mq: Callable[..., MessageQueue]) -> None:
    q = make_mq(mode=0o622)
    q.send(b"secret")

    def child() -> int:
        refused = 0
        for call in (q.receive, q.peek, q.peek_all, q.stat):
            try:
                call()
            except PermissionError:
                refused += 1
        return 0 if refused == 4 else 1

    assert run_in_child(child, uid=65534) == 0
    assert len(q) == 1


# ---- peek and peek_all -------------------------------------------------------------

def test_peek_copies_the_head_and_takes_nothing(q: MessageQueue) -> None:
    q.send(b"head", 3)
    q.send(b"next", 4)
    before = q.stat()
    assert q.peek() == (3, b"head")
    after = q.stat()
    assert (after.qnum, after.cbytes, after.lrpid, after.rtime) == (
        before.qnum, before.cbytes, before.lrpid, before.rtime)


def test_peek_index_counts_from_the_head(q: MessageQueue) -> None:
    for i in range(4):
        q.send(bytes([i]), i + 1)
    assert q.peek(2) == (3, b"\x02")


def test_peek_past_the_end_raises_no_message(q: MessageQueue) -> None:
    q.send(b"only")
    with pytest.raises(NoMessageError):
        q.peek(1)


def test_peek_of_an_empty_queue_raises_no_message(q: MessageQueue) -> None:
    with pytest.raises(NoMessageError):
        q.peek()


def test_peek_refuses_a_negative_index(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="index"):
        q.peek(-1)


def test_peek_refuses_an_index_that_is_no_int(q: MessageQueue) -> None:
    with pytest.raises(TypeError, match="index"):
        q.peek(1.0)  # type: ignore[arg-type]


def test_peek_all_copies_every_message_in_order_and_takes_none(q: MessageQueue) -> None:
    sent = [(i % 5 + 1, os.urandom(i * 37 % 300)) for i in range(40)]
    for mtype, data in sent:
        q.send(data, mtype)
    before = q.stat()
    assert q.peek_all() == sent
    after = q.stat()
    assert (after.qnum, after.cbytes, after.lrpid, after.rtime) == (
        before.qnum, before.cbytes, before.lrpid, before.rtime)
    assert [tuple(q.receive()) for _ in sent] == sent


def test_peek_all_returns_messages(q: MessageQueue) -> None:
    q.send(b"x")
    assert all(type(m) is Message for m in q.peek_all())


def test_peek_all_of_an_empty_queue_is_empty(q: MessageQueue) -> None:
    assert q.peek_all() == []


def test_peek_all_copies_messages_of_msgmax_bytes(q: MessageQueue) -> None:
    q.send(b"s")
    q.send(b"L" * MSGMAX)
    assert q.peek_all() == [(1, b"s"), (1, b"L" * MSGMAX)]


@pytest.mark.parametrize("attempts, exc", [(0, ValueError), (1.5, TypeError)])
def test_peek_all_refuses_bad_attempts(q: MessageQueue, attempts: object, exc: type) -> None:
    with pytest.raises(exc, match="attempts"):
        q.peek_all(attempts)  # type: ignore[arg-type]


def test_peek_all_of_a_removed_queue_raises_einval(q: MessageQueue) -> None:
    q.remove()
    with pytest.raises(OSError) as e:
        q.peek_all()
    assert e.value.errno == errno.EINVAL


def test_peek_all_during_rotation_is_consistent_or_raises_queue_changed(
        q: MessageQueue) -> None:
    """Another process keeps taking the head and appending the next number, each
    message one byte longer than the one before, so that every change shows in
    cbytes. Every list peek_all returns must be a run of consecutive numbers."""
    depth, last = 8, 1900  # the longest window of messages still fits in qbytes
    for n in range(depth):
        q.send(n.to_bytes(4, "big") + b"." * n)

    # Halfway the rotator says so and waits: one copy is then taken of a still
    # queue, however the two processes are scheduled.
    paused_r, paused_w = os.pipe()
    go_r, go_w = os.pipe()

    def rotate() -> int:
        for n in range(depth, last):
            q.receive()
            q.send(n.to_bytes(4, "big") + b"." * n)
            if n == last // 2:
                os.write(paused_w, b"p")
                os.read(go_r, 1)
            if n % 4 == 0:
                time.sleep(0.001)
        return 0

    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = rotate()
        finally:
            os._exit(code)
    consistent = changed = 0
    status = None
    try:
        end = time.monotonic() + 60
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
            assert time.monotonic() < end, "the rotating child did not finish"
            paused = bool(select.select([paused_r], [], [], 0)[0])
            try:
                got = q.peek_all(attempts=1)
            except QueueChangedError as e:
                assert not paused, "a copy of the still queue was refused"
                assert e.msqid == q.id and e.attempts == 1
                changed += 1
                continue
            numbers = [int.from_bytes(m.data[:4], "big") for m in got]
            assert all(len(m.data) == 4 + n for n, m in zip(numbers, got))
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
            assert len(numbers) in (depth - 1, depth)
            consistent += 1
            if paused:
                assert os.read(paused_r, 1) == b"p" and len(numbers) == depth
                os.write(go_w, b"g")
    finally:
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        for fd in (paused_r, paused_w, go_r, go_w):
            os.close(fd)
    print(f"{consistent} consistent lists, {changed} changes detected")
    assert status == 0
    assert consistent > 0
    assert [int.from_bytes(m.data[:4], "big") for m in q.peek_all()] == list(
        range(last - depth, last))


def test_queue_changed_error_names_the_queue_and_the_attempts() -> None:
    err = QueueChangedError(5, 3)
    assert isinstance(err, RuntimeError)
    assert "5" in str(err) and "3 attempts" in str(err)


# ---- send_many and receive_many ----------------------------------------------------

def test_send_many_sends_all_in_order(q: MessageQueue) -> None:
    batch = [(i % 3 + 1, f"m{i}".encode()) for i in range(100)]
    assert q.send_many(batch) == 100
    assert q.peek_all() == batch


def test_send_many_takes_any_iterable_and_messages(q: MessageQueue) -> None:
    assert q.send_many(Message(2, bytes([i])) for i in range(3)) == 3
    assert q.receive_many(10) == [(2, b"\x00"), (2, b"\x01"), (2, b"\x02")]


def test_send_many_of_nothing_sends_nothing(q: MessageQueue) -> None:
    assert q.send_many([]) == 0
    assert len(q) == 0


def test_send_many_counts_wide_items_in_bytes(q: MessageQueue) -> None:
    wide = array.array("i", [7, 8])
    q.send_many([(1, b"ab"), (2, wide), (3, b"c")])
    assert q.receive_many(3) == [(1, b"ab"), (2, wide.tobytes()), (3, b"c")]


def test_send_many_without_blocking_stops_when_full_and_says_how_many(q: MessageQueue) -> None:
    per = q.stat().qbytes // 4
    sent = q.send_many([(1, b"x" * per)] * 6, block=False)
    assert sent == 4
    assert len(q) == 4


def test_send_many_error_part_way_says_how_many_were_sent(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="message 2: mtype must be >= 1") as e:
        q.send_many([(1, b"a"), (2, b"b"), (0, b"c"), (3, b"d")])
    assert e.value.sent == 2  # type: ignore[attr-defined]
    assert q.receive_many(10) == [(1, b"a"), (2, b"b")]


@pytest.mark.parametrize("bad, match", [
    ([(1, b"a"), b"not a pair"], "message 1 must be an .mtype, data. pair"),
    ([(1, "text")], "message 0: data must be bytes-like, not str"),
    ([(1, 5)], "message 0: data must be bytes-like, not int"),
    (5, "iterable"),
])
def test_send_many_refuses_bad_messages_before_sending_any(
        q: MessageQueue, bad: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        q.send_many(bad)  # type: ignore[arg-type]
    assert len(q) == 0


def test_send_many_refuses_a_type_that_is_no_c_long(q: MessageQueue) -> None:
    with pytest.raises(OverflowError, match="mtype of message 1"):
        q.send_many([(1, b"a"), (2 ** 70, b"b")])
    assert len(q) == 0


def test_send_many_with_timeout_on_a_full_queue_raises_timeout_with_sent(q: MessageQueue) -> None:
    per = q.stat().qbytes // 2
    with pytest.raises(TimeoutError) as e:
        q.send_many([(1, b"x" * per)] * 3, timeout=0.2)
    assert e.value.sent == 2  # type: ignore[attr-defined]


def test_receive_many_takes_up_to_max_count(q: MessageQueue) -> None:
    q.send_many([(1, bytes([i])) for i in range(10)])
    first = q.receive_many(4)
    assert [m.data[0] for m in first] == [0, 1, 2, 3]
    assert all(type(m) is Message for m in first)
    assert len(q.receive_many(100)) == 6


def test_receive_many_filters_by_type(q: MessageQueue) -> None:
    q.send_many([(1, b"a"), (2, b"b"), (1, b"c"), (2, b"d")])
    assert q.receive_many(10, 2) == [(2, b"b"), (2, b"d")]
    assert q.receive_many(10, 2, except_type=True, block=False) == [(1, b"a"), (1, b"c")]


def test_receive_many_without_blocking_on_empty_raises_no_message(q: MessageQueue) -> None:
    with pytest.raises(NoMessageError):
        q.receive_many(5, block=False)


def test_receive_many_waits_for_the_first_message_only(q: MessageQueue) -> None:
    threading.Timer(0.2, q.send, args=(b"late",)).start()
    assert q.receive_many(5) == [(1, b"late")]


def test_receive_many_stops_before_a_too_long_message_and_keeps_it(q: MessageQueue) -> None:
    q.send_many([(1, b"ok"), (1, b"much too long"), (1, b"no")])
    assert q.receive_many(10, maxsize=4) == [(1, b"ok")]
    with pytest.raises(TooBigError):
        q.receive_many(10, maxsize=4)
    assert q.receive_many(10, maxsize=4, truncate=True) == [(1, b"much"), (1, b"no")]


def test_receive_many_after_removal_raises(q: MessageQueue) -> None:
    q.remove()
    with pytest.raises(OSError) as e:
        q.receive_many(3, block=False)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("count, exc", [(0, ValueError), (-1, ValueError),
                                        (2.0, TypeError), (True, TypeError)])
def test_receive_many_refuses_a_bad_max_count(q: MessageQueue, count: object, exc: type) -> None:
    with pytest.raises(exc, match="max_count"):
        q.receive_many(count)  # type: ignore[arg-type]


def test_send_many_then_receive_many_round_trip_a_large_batch(q: MessageQueue) -> None:
    batch = [(i % 7 + 1, os.urandom(i % 64)) for i in range(2000)]
    got: List[Message] = []
    done = threading.Event()

    def consume() -> None:
        while len(got) < len(batch):
            got.extend(q.receive_many(500))
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    assert q.send_many(batch) == len(batch)
    t.join(30)
    assert done.is_set()
    assert got == batch
