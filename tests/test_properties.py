"""Property tests against the real kernel: random sends and receives checked step by
step against a small model of msgrcv(2)'s selection rules; peeks that change
nothing; receive_many as repeated receives.

Hypothesis settings come from ``_hypothesis_profiles`` (``IPCBIND_HYPOTHESIS_PROFILE=long``
for a long run). Each example works on one private queue of its own, removed when
the example ends, whatever happened.
"""

from __future__ import annotations

import errno
import random
from typing import Any, Iterator, List, Optional, Set, Tuple

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, rule,
                                 run_state_machine_as_test)

import ipcbind
from ipcbind import (IPC_CREAT, IPC_NOWAIT, IPC_PRIVATE, IPC_RMID, MSG_EXCEPT, MSG_NOERROR,
                     MessageQueue, NoMessageError, TooBigError)
from _hypothesis_profiles import budget

MSGMAX = ipcbind.msgctl(0, ipcbind.IPC_INFO)[1].msgmax
TYPE_MAX = 2 ** 62

Msg = Tuple[int, bytes]


# ---- the model ------------------------------------------------------------------------

class QueueModel:
    """What msgrcv(2) takes from a queue, in plain Python.

    ``msgtyp`` 0: the first message. > 0: the first of that type, or with
    MSG_EXCEPT the first NOT of that type. < 0: the first message of the lowest
    type <= ``-msgtyp`` (ties go to the earlier message). MSG_EXCEPT only matters
    for ``msgtyp`` > 0. None matching: ENOMSG.
    """

    def __init__(self, qbytes: int) -> None:
        self.qbytes = qbytes
        self.messages: List[Msg] = []

    @property
    def cbytes(self) -> int:
        return sum(len(d) for _, d in self.messages)

    def fits(self, size: int) -> bool:
        """msgsnd finds room: both the byte count and the message count stay
        within qbytes."""
        return self.cbytes + size <= self.qbytes and len(self.messages) + 1 <= self.qbytes

    def select(self, msgtyp: int, except_type: bool = False) -> Optional[int]:
        """The position of the message msgrcv takes, or None (ENOMSG)."""
        if msgtyp == 0:
            return 0 if self.messages else None
        if msgtyp > 0:
            for i, (t, _) in enumerate(self.messages):
                if (t != msgtyp) if except_type else (t == msgtyp):
                    return i
            return None
        best: Optional[int] = None
        for i, (t, _) in enumerate(self.messages):
            if t <= -msgtyp and (best is None or t < self.messages[best][0]):
                best = i
        return best

    def receive(self, msgtyp: int, except_type: bool = False, maxsize: Optional[int] = None,
                truncate: bool = False) -> Msg:
        """Takes what msgrcv would take, or raises its error as the binding does."""
        i = self.select(msgtyp, except_type)
        if i is None:
            raise NoMessageError(errno.ENOMSG, "model: no message")
        t, d = self.messages[i]
        if maxsize is not None and len(d) > maxsize:
            if not truncate:
                raise TooBigError(errno.E2BIG, "model: message too long")  # it stays
            d = d[:maxsize]
        del self.messages[i]
        return t, d


def outcome(call: Any, *args: Any, **kwargs: Any) -> Tuple[str, Any]:
    """("ok", result) or ("error", (exception class, errno)): comparable between
    the binding and the model."""
    try:
        return "ok", call(*args, **kwargs)
    except (OSError, ValueError) as e:
        return "error", (type(e), getattr(e, "errno", None))


# ---- strategies -----------------------------------------------------------------------

# Few distinct small types so that selections by type find matches, and huge ones
# up to 2**62, near the top of a C long.
mtypes = st.integers(1, 5) | st.integers(1, 5) | st.integers(1, TYPE_MAX) | st.just(TYPE_MAX)
msgtyps = (st.just(0) | st.integers(1, 6) | st.integers(-6, -1) | st.integers(1, TYPE_MAX)
           | st.integers(-TYPE_MAX, -1) | st.sampled_from([TYPE_MAX, -TYPE_MAX]))
small_data = st.binary(max_size=48) | st.binary(max_size=1024)


# Up to msgmax arbitrary bytes come from a drawn size and seed: drawing 8 KiB byte by
# byte would crowd out the rest of the example, and a failing case prints short.
large_sizes = st.integers(0, MSGMAX) | st.just(MSGMAX)
seeds = st.integers(0, 2 ** 32)


def large_data(size: int, seed: int) -> bytes:
    """``size`` arbitrary bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


# Aim a receive at a type the queue holds: position of a message to take its type from.
aims = st.none() | st.integers(0, 2 ** 10)
maxsizes = st.none() | st.none() | st.integers(0, 64) | st.integers(0, MSGMAX)

_made: Set[int] = set()


@pytest.fixture(autouse=True)
def _no_queue_left() -> Iterator[None]:
    """Backstop: a queue an example made and somehow kept is removed here."""
    yield
    for msqid in list(_made):
        try:
            ipcbind.msgctl(msqid, IPC_RMID)
        except OSError:
            pass
        _made.discard(msqid)


def _peek_fields(q: MessageQueue) -> Tuple[int, ...]:
    """What a peek must leave alone: counts, the last receive (time, pid), and the
    rest of IPC_STAT for good measure."""
    ds = q.stat()
    return (ds.qnum, ds.cbytes, ds.rtime, ds.lrpid, ds.stime, ds.lspid, ds.ctime, ds.qbytes)


class QueueMachine(RuleBasedStateMachine):
    """One private queue, driven with IPC_NOWAIT only (nothing blocks), and its model."""

    def __init__(self) -> None:
        super().__init__()
        self.q = MessageQueue.create()
        _made.add(self.q.id)
        self.model = QueueModel(self.q.stat().qbytes)

    def teardown(self) -> None:
        self.q.remove()
        _made.discard(self.q.id)

    # ---- sending ----

    @rule(pairs=st.lists(st.tuples(mtypes, small_data), min_size=1, max_size=3))
    def send(self, pairs: List[Msg]) -> None:
        for mtype, data in pairs:
            self._send(mtype, data)

    @rule(mtype=mtypes, size=large_sizes, seed=seeds)
    def send_large(self, mtype: int, size: int, seed: int) -> None:
        self._send(mtype, large_data(min(size, self.model.qbytes), seed))

    def _send(self, mtype: int, data: bytes) -> None:
        got = outcome(self.q.send, data, mtype, block=False)
        if self.model.fits(len(data)):
            assert got == ("ok", None)
            self.model.messages.append((mtype, data))
        else:
            assert got == ("error", (BlockingIOError, errno.EAGAIN))

    @rule(mtype=mtypes, size=large_sizes, seed=seeds)
    def drain_then_send_large(self, mtype: int, size: int, seed: int) -> None:
        data = large_data(min(size, self.model.qbytes), seed)
        if self.model.messages:
            got = self.q.receive_many(len(self.model.messages), block=False)
            assert got == self.model.messages
            self.model.messages.clear()
        self.q.send(data, mtype, block=False)
        self.model.messages.append((mtype, data))

    @rule(pairs=st.lists(st.tuples(mtypes, st.binary(max_size=48)), max_size=12))
    def send_many(self, pairs: List[Msg]) -> None:
        fitting = 0
        trial = QueueModel(self.model.qbytes)
        trial.messages = list(self.model.messages)
        for m in pairs:
            if not trial.fits(len(m[1])):
                break
            trial.messages.append(m)
            fitting += 1
        assert self.q.send_many(pairs, block=False) == fitting
        self.model = trial

    # ---- receiving ----

    def _aimed(self, msgtyp: int, aim: Optional[int]) -> int:
        """msgtyp, or with an aim the type of a queued message, keeping msgtyp's sign."""
        if aim is None or not self.model.messages or msgtyp == 0:
            return msgtyp
        t = self.model.messages[aim % len(self.model.messages)][0]
        return t if msgtyp > 0 else -t

    @rule(msgtyp=msgtyps, aim=aims, except_type=st.booleans(), maxsize=maxsizes,
          truncate=st.booleans())
    def receive(self, msgtyp: int, aim: Optional[int], except_type: bool,
                maxsize: Optional[int], truncate: bool) -> None:
        msgtyp = self._aimed(msgtyp, aim)
        truncate = truncate and maxsize is not None
        got = outcome(self.q.receive, msgtyp, block=False, except_type=except_type,
                      maxsize=maxsize, truncate=truncate)
        if except_type and msgtyp <= 0:
            # The class refuses what the kernel would silently read as no MSG_EXCEPT.
            assert got == ("error", (ValueError, None))
            return
        want = outcome(self.model.receive, msgtyp, except_type, maxsize, truncate)
        assert got == want

    @rule(msgtyp=msgtyps, aim=aims, except_type=st.booleans(), maxsize=maxsizes,
          truncate=st.booleans())
    def msgrcv(self, msgtyp: int, aim: Optional[int], except_type: bool,
               maxsize: Optional[int], truncate: bool) -> None:
        msgtyp = self._aimed(msgtyp, aim)
        flags = IPC_NOWAIT | (MSG_EXCEPT if except_type else 0)
        if truncate and maxsize is not None:
            flags |= MSG_NOERROR
        got = outcome(ipcbind.msgrcv, self.q.id, maxsize, msgtyp, flags)
        want = outcome(self.model.receive, msgtyp, except_type, maxsize, bool(flags & MSG_NOERROR))
        assert got == want

    @rule(max_count=st.integers(1, 6), msgtyp=msgtyps, aim=aims, except_type=st.booleans(),
          maxsize=maxsizes)
    def receive_many(self, max_count: int, msgtyp: int, aim: Optional[int], except_type: bool,
                     maxsize: Optional[int]) -> None:
        msgtyp = self._aimed(msgtyp, aim)
        if except_type and msgtyp <= 0:
            return  # refused before any call, as receive() above shows
        got = outcome(self.q.receive_many, max_count, msgtyp, block=False,
                      except_type=except_type, maxsize=maxsize)
        want = outcome(self._model_many, max_count, msgtyp, except_type, maxsize)
        assert got == want

    def _model_many(self, max_count: int, msgtyp: int, except_type: bool,
                    maxsize: Optional[int]) -> List[Msg]:
        """receive_many as repeated receives: the first failure raises, a later one
        ends the batch and leaves its condition for the next call."""
        taken = [self.model.receive(msgtyp, except_type, maxsize)]
        while len(taken) < max_count:
            try:
                taken.append(self.model.receive(msgtyp, except_type, maxsize))
            except (NoMessageError, TooBigError):
                break
        return taken

    # ---- looking without taking ----

    @rule(index=st.integers(0, 10))
    def peek(self, index: int) -> None:
        before = _peek_fields(self.q)
        got = outcome(self.q.peek, index)
        assert _peek_fields(self.q) == before
        if index < len(self.model.messages):
            assert got == ("ok", self.model.messages[index])
        else:
            assert got == ("error", (NoMessageError, errno.ENOMSG))

    @rule()
    def peek_all(self) -> None:
        before = _peek_fields(self.q)
        assert self.q.peek_all() == self.model.messages
        assert _peek_fields(self.q) == before

    @invariant()
    def counts_agree(self) -> None:
        ds = self.q.stat()
        assert (ds.qnum, ds.cbytes) == (len(self.model.messages), self.model.cbytes)


def test_binding_agrees_with_the_selection_model_at_every_step() -> None:
    run_state_machine_as_test(QueueMachine, settings=budget(100, stateful_step_count=30))


# ---- kernel facts the model rests on ---------------------------------------------------

@pytest.fixture
def raw_queue() -> Iterator[int]:
    msqid = ipcbind.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
    yield msqid
    ipcbind.msgctl(msqid, IPC_RMID)


def test_negative_msgtyp_takes_the_earliest_message_of_the_lowest_type(raw_queue: int) -> None:
    for t, d in [(4, b"a"), (2, b"b"), (3, b"c"), (2, b"d"), (1, b"e"), (1, b"f")]:
        ipcbind.msgsnd(raw_queue, t, d)
    assert ipcbind.msgrcv(raw_queue, None, -3, IPC_NOWAIT) == (1, b"e")
    assert ipcbind.msgrcv(raw_queue, None, -3, IPC_NOWAIT) == (1, b"f")
    assert ipcbind.msgrcv(raw_queue, None, -3, IPC_NOWAIT) == (2, b"b")


def test_msg_except_is_ignored_for_msgtyp_zero_and_negative(raw_queue: int) -> None:
    for t, d in [(3, b"x"), (1, b"y")]:
        ipcbind.msgsnd(raw_queue, t, d)
    assert ipcbind.msgrcv(raw_queue, None, -1, IPC_NOWAIT | MSG_EXCEPT) == (1, b"y")
    assert ipcbind.msgrcv(raw_queue, None, 0, IPC_NOWAIT | MSG_EXCEPT) == (3, b"x")


def test_e2big_concerns_only_the_selected_message_which_stays(raw_queue: int) -> None:
    ipcbind.msgsnd(raw_queue, 1, b"long message")
    ipcbind.msgsnd(raw_queue, 2, b"ok")
    assert ipcbind.msgrcv(raw_queue, 2, 2, IPC_NOWAIT) == (2, b"ok")
    with pytest.raises(TooBigError):
        ipcbind.msgrcv(raw_queue, 2, 0, IPC_NOWAIT)
    assert ipcbind.msgctl(raw_queue, ipcbind.IPC_STAT).qnum == 1
