"""Many processes at once on one queue or one semaphore set, with nothing lost.

Producers and consumers are forked processes talking through the real kernel.
Every message carries its producer, its sequence number and a CRC32, so a
consumer (or a concurrent ``peek_all``) can tell a whole message from a torn one;
the consumers write down what they got and the parent checks that every message
arrived exactly once, in each producer's order. Semaphore holders that use
SEM_UNDO are SIGKILLed at random moments; the kernel must give back what they held.

The default run is small; ``pytest --stress`` moves 100,000+ messages per test and
kills holders hundreds of times. ``-rP`` shows the figures each test prints.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import random
import select
import signal
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from ipcbind import (
    IdentifierRemovedError,
    Message,
    MessageQueue,
    QueueChangedError,
    SemaphoreSet,
)
from conftest import reap, start_child

pytestmark = pytest.mark.stress

HEADER = struct.Struct(">IIH")  # producer, sequence number, filler length
CRC = struct.Struct(">I")
END_TYPE = 1 << 40  # sentinels for consumers of any type: above every producer's type
CHILD_TIMEOUT = 300.0  # seconds any child may take: only a hang comes near it


# ---- messages ----------------------------------------------------------------------

def make_message(producer: int, seq: int) -> bytes:
    """Header, a filler of 0..255 bytes that depends on both numbers, and a CRC32
    of all that."""
    length = (seq * 7919 + producer * 104729) % 256
    filler = (struct.pack(">II", producer, seq) * 32)[:length]
    body = HEADER.pack(producer, seq, length) + bytes(b ^ (seq & 0xFF) for b in filler)
    return body + CRC.pack(zlib.crc32(body))


def check_message(mtype: int, data: bytes) -> Optional[Tuple[int, int]]:
    """(producer, seq) of an intact message sent with its producer's type, else None."""
    if len(data) < HEADER.size + CRC.size:
        return None
    body, crc = data[:-CRC.size], CRC.unpack(data[-CRC.size:])[0]
    if zlib.crc32(body) != crc:
        return None
    producer, seq, length = HEADER.unpack(body[:HEADER.size])
    if len(body) != HEADER.size + length or mtype != producer + 1:
        return None
    return producer, seq


# ---- forked children ---------------------------------------------------------------

class Children:
    """Forked children; whatever happens, each is SIGKILLed and reaped at the end."""

    def __init__(self) -> None:
        self.pids: List[int] = []

    def __enter__(self) -> Children:
        return self

    def start(self, fn: Callable[..., Any], *args: Any) -> int:
        """Runs fn(*args) in a child; its exit code is 0, or 70 after an exception."""
        pid = start_child(lambda: (fn(*args), 0)[1])
        self.pids.append(pid)
        return pid

    def wait(self, pid: int, timeout: float = CHILD_TIMEOUT) -> int:
        """The child's exit status; AssertionError (after killing it) past ``timeout``."""
        try:
            return reap(pid, timeout)
        finally:
            self.pids.remove(pid)

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        self.pids.remove(pid)

    def __exit__(self, *exc: Any) -> None:
        for pid in list(self.pids):
            self.kill(pid)


def produce(msqid: int, producer: int, count: int) -> None:
    q = MessageQueue.from_id(msqid)
    mtype = producer + 1
    if producer % 2:
        for start in range(0, count, 16):  # batches exercise send_many
            q.send_many([(mtype, make_message(producer, seq))
                         for seq in range(start, min(start + 16, count))])
    else:
        for seq in range(count):
            q.send(make_message(producer, seq), mtype)


def consume(msqid: int, mtype: int, style: int, pause: float, report: Path) -> None:
    """Receives until an empty message (a sentinel), resting ``pause`` seconds per
    message, and writes down, as an array of int64: the number of damaged
    messages, then (producer, seq) pairs."""
    q = MessageQueue.from_id(msqid)
    got = array.array("q", [0])
    while True:
        if style == 0:
            batch = [q.receive(mtype)]
        elif style == 1:
            batch = q.receive_many(32, mtype)
        else:  # the timed path: a POSIX timer per call
            batch = [q.receive(mtype, timeout=CHILD_TIMEOUT)]
        for i, m in enumerate(batch):
            if not m.data:
                # Only sentinels can follow a sentinel: they are sent after all
                # data. Those taken along belong to the other consumers.
                for other in batch[i + 1:]:
                    assert not other.data, "a message came after a sentinel"
                    q.send(b"", other.mtype)
                report.write_bytes(got.tobytes())
                return
            ok = check_message(m.mtype, m.data)
            if ok is None:
                got[0] += 1
            else:
                got.extend(ok)
        if pause:
            time.sleep(pause * len(batch))


def peek_while_open(msqid: int, stop_fd: int, stop_w: int, ready_w: int, report: Path) -> None:
    """Copies the whole queue over and over until stop_fd reaches end of file (or
    the queue is gone), and says on ready_w that the first copy was tried; checks
    every copied message and that each producer's messages in one copy are
    consecutive. Writes down: copies, QueueChangedError count, messages checked,
    damaged messages, gaps."""
    os.close(stop_w)  # the parent's copy alone must keep the pipe open
    q = MessageQueue.from_id(msqid)
    fcntl.fcntl(stop_fd, fcntl.F_SETFL, fcntl.fcntl(stop_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    copies = changed = checked = torn = gaps = 0
    while True:
        msgs: Optional[List[Message]] = None
        try:
            msgs = q.peek_all()
        except QueueChangedError:
            changed += 1
        except IdentifierRemovedError:
            break
        if ready_w >= 0:
            os.write(ready_w, b"!")
            os.close(ready_w)
            ready_w = -1
        if msgs is not None:
            copies += 1
            last: Dict[int, int] = {}
            for m in msgs:
                if not m.data:
                    continue  # a sentinel
                checked += 1
                ok = check_message(m.mtype, m.data)
                if ok is None:
                    torn += 1
                    continue
                producer, seq = ok
                if producer in last and seq != last[producer] + 1:
                    gaps += 1
                last[producer] = seq
        try:
            if os.read(stop_fd, 1) == b"":
                break
        except BlockingIOError:
            pass
    report.write_bytes(array.array("q", [copies, changed, checked, torn, gaps]).tobytes())


def read_report(path: Path) -> List[int]:
    got = array.array("q")
    got.frombytes(path.read_bytes())
    return got.tolist()


# ---- producers and consumers -------------------------------------------------------

def move_messages(msqid: int, tmp_path: Path, producers: int, per_producer: int,
                  consumer_types: Sequence[int], children: Children, pause: float = 0.0,
                  ) -> List[List[Tuple[int, int]]]:
    """Runs the producers and one consumer per entry of consumer_types (its mtype),
    then returns what each consumer received, in order, after checking that
    nothing came damaged. Consumers rest ``pause`` seconds per message."""
    reports = [tmp_path / f"consumer-{k}" for k in range(len(consumer_types))]
    consumers = [children.start(consume, msqid, mtype, k % 3, pause, reports[k])
                 for k, mtype in enumerate(consumer_types)]
    senders = [children.start(produce, msqid, p, per_producer) for p in range(producers)]
    for pid in senders:
        assert children.wait(pid) == 0, "a producer failed"
    q = MessageQueue.from_id(msqid)
    for mtype in consumer_types:  # queued behind every message of the producers
        q.send(b"", mtype or END_TYPE, timeout=CHILD_TIMEOUT)
    for pid in consumers:
        assert children.wait(pid) == 0, "a consumer failed"
    received = []
    for report in reports:
        got = read_report(report)
        assert got[0] == 0, f"{got[0]} damaged message(s) received"
        received.append(list(zip(got[1::2], got[2::2])))
    return received


def assert_each_exactly_once(received: List[List[Tuple[int, int]]], producers: int,
                             per_producer: int) -> None:
    everything = [pair for got in received for pair in got]
    expected = {(p, s) for p in range(producers) for s in range(per_producer)}
    distinct = set(everything)
    assert len(everything) == len(distinct), (
        f"{len(everything) - len(distinct)} message(s) received more than once")
    assert distinct == expected, f"{len(expected - distinct)} message(s) lost"


def assert_in_each_producers_order(received: List[List[Tuple[int, int]]]) -> None:
    for k, got in enumerate(received):
        last: Dict[int, int] = {}
        for producer, seq in got:
            assert seq > last.get(producer, -1), (
                f"consumer {k} got message {seq} of producer {producer} after {last[producer]}")
            last[producer] = seq


def sizes(stress: bool) -> Tuple[int, int]:
    """(producers, messages per producer): 6,000 messages, or 120,000 with --stress."""
    return (4, 30_000) if stress else (3, 2_000)


def test_consumers_of_any_type_receive_every_message_exactly_once(
        msq: int, tmp_path: Path, stress: bool) -> None:
    producers, per_producer = sizes(stress)
    with Children() as children:
        received = move_messages(msq, tmp_path, producers, per_producer, [0, 0, 0], children)
    assert_each_exactly_once(received, producers, per_producer)
    # FIFO: one consumer sees any one producer's messages in the order sent.
    assert_in_each_producers_order(received)
    print(f"{producers * per_producer} messages moved by {producers} producers "
          f"to 3 consumers: {[len(got) for got in received]}")


def test_consumers_selecting_by_type_receive_their_producers_messages_in_order(
        msq: int, tmp_path: Path, stress: bool) -> None:
    producers, per_producer = sizes(stress)
    with Children() as children:
        received = move_messages(msq, tmp_path, producers, per_producer,
                                 [p + 1 for p in range(producers)], children)
    for p, got in enumerate(received):
        assert got == [(p, seq) for seq in range(per_producer)], (
            f"the consumer of producer {p}'s type got {len(got)} messages, "
            f"not exactly 0..{per_producer - 1} in order")
    print(f"{producers * per_producer} messages moved by {producers} producers "
          f"to {producers} consumers, one per type")


# Slow consumers keep the queue full, so that peek_all has messages to copy.
PEEK_PAUSE = 0.0003


def test_peek_all_during_traffic_never_returns_a_torn_message(
        msq: int, tmp_path: Path, stress: bool) -> None:
    producers, per_producer = sizes(stress)
    report = tmp_path / "peeker"
    stop_r, stop_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        with Children() as children:
            peeker = children.start(peek_while_open, msq, stop_r, stop_w, ready_w, report)
            os.close(stop_r)
            stop_r = -1
            os.close(ready_w)
            ready_w = -1
            # The traffic starts once the peeker runs, however late it is scheduled.
            assert select.select([ready_r], [], [], CHILD_TIMEOUT)[0], "no peeker"
            assert os.read(ready_r, 1) == b"!", "the peeker failed before its first copy"
            try:
                received = move_messages(msq, tmp_path, producers, per_producer,
                                         [0, 0, 0], children, pause=PEEK_PAUSE)
            finally:
                os.close(stop_w)
                stop_w = -1
            assert children.wait(peeker) == 0, "peek_all failed in the peeking process"
    finally:
        for fd in (stop_r, stop_w, ready_r, ready_w):
            if fd >= 0:
                os.close(fd)
    assert_each_exactly_once(received, producers, per_producer)
    copies, changed, checked, torn, gaps = read_report(report)
    print(f"{producers * per_producer} messages moved; peek_all copied the queue "
          f"{copies} times ({checked} messages checked), QueueChangedError {changed} times")
    assert torn == 0, f"peek_all returned {torn} torn message(s)"
    # Consumers of any type always take the head, which the copy's check sees.
    assert gaps == 0, f"peek_all returned {gaps} copies that missed or repeated a message"
    assert copies + changed > 0, "the peeking process never got to copy the queue"


# ---- semaphores and SIGKILL ----------------------------------------------------------

INITIAL = [1, 2, 3]
HOLDERS = 5
SLOT = struct.Struct("=qq")  # per holder: holding now (0/1), cycles completed


def hold_and_release(semid: int, shared: mmap.mmap, slot: int) -> None:
    """Acquires with SEM_UNDO, holds a moment, releases, for ever; marks in its
    slot of ``shared`` while it holds, and counts its cycles."""
    s = SemaphoreSet.from_id(semid)
    rng = random.Random(os.getpid())
    cycles = 0
    offset = slot * SLOT.size
    while True:
        how = rng.randrange(3)
        if how == 0:  # the one-semaphore fast path
            sem = s[rng.randrange(len(INITIAL))]
            sem.acquire(undo=True)
        elif how == 1:  # two semaphores at once, one of them by 2
            s.op([(0, -1), (2, -2)], undo=True)
        else:  # the timed path (semtimedop)
            sem = s[rng.randrange(len(INITIAL))]
            sem.acquire(undo=True, timeout=CHILD_TIMEOUT)
        SLOT.pack_into(shared, offset, 1, cycles)
        time.sleep(rng.uniform(0, 0.002))
        SLOT.pack_into(shared, offset, 0, cycles)
        if how == 1:
            s.op([(0, 1), (2, 2)], undo=True)
        else:
            sem.release(undo=True)
        cycles += 1
        SLOT.pack_into(shared, offset, 0, cycles)


def test_semaphores_return_to_their_initial_values_when_holders_are_killed(
        make_semset: Callable[..., int], stress: bool) -> None:
    kills_wanted = 600 if stress else 40
    semid = make_semset(len(INITIAL))
    s = SemaphoreSet.from_id(semid)
    s.values = INITIAL
    shared = mmap.mmap(-1, HOLDERS * SLOT.size)  # MAP_SHARED: the holders write, we read
    rng = random.Random()
    kills = kills_holding = cycles = 0
    try:
        with Children() as children:
            holders = [children.start(hold_and_release, semid, shared, i) for i in range(HOLDERS)]
            while kills < kills_wanted:
                time.sleep(rng.uniform(0, 0.02))
                values = s.values
                assert all(0 <= v <= top for v, top in zip(values, INITIAL)), (
                    f"values {values} outside 0..{INITIAL} while holders run")
                slot = rng.randrange(HOLDERS)
                children.kill(holders[slot])
                holding, done = SLOT.unpack_from(shared, slot * SLOT.size)
                kills += 1
                kills_holding += holding
                cycles += done
                SLOT.pack_into(shared, slot * SLOT.size, 0, 0)
                holders[slot] = children.start(hold_and_release, semid, shared, slot)
        for slot in range(HOLDERS):  # the last ones were killed on leaving the block
            cycles += SLOT.unpack_from(shared, slot * SLOT.size)[1]
        assert s.values == INITIAL, (
            f"after {kills} kills the set holds {s.values}, not its initial {INITIAL}")
    finally:
        shared.close()
    print(f"{kills} holders killed ({kills_holding} while holding), "
          f"{cycles} acquire/release cycles; values back to {INITIAL}")
    assert kills_holding > 0, "no holder was killed while holding: nothing was tested"
