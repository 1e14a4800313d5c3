"""Message queues, the Pythonic way: :class:`MessageQueue` and :class:`Message`.

A :class:`MessageQueue` wraps one System V message queue identifier. Single sends
and receives take the shortest path into the shim; batches (:meth:`~MessageQueue.send_many`,
:meth:`~MessageQueue.receive_many`) and the non-destructive :meth:`~MessageQueue.peek_all`
make one call into C for the whole batch.

Timeouts (``timeout=`` on :meth:`~MessageQueue.send` and :meth:`~MessageQueue.receive`)
are real: the thread sleeps in the kernel until a message (or room) arrives or a
POSIX timer aimed at that thread interrupts the call at the deadline. Nothing polls.

:meth:`~MessageQueue.peek_all` reads the queue by position with ``MSG_COPY`` and
checks with ``IPC_STAT`` before and after that nothing changed in between; see its
docstring for what that check can and cannot see.
"""

from __future__ import annotations

import errno
import time
from itertools import accumulate
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, NamedTuple, Optional,
                    Tuple)

from . import _seam
from . import syscalls as _sc
from ._args import deadline as _deadline
from ._base import IpcObject
from ._limits import LONG_MAX, msgmax
from .errors import (NoMessageError, QueueChangedError, TooBigError, partial_receive,
                     partial_send, timeout_error)
from .syscalls import (
    IPC_NOWAIT,
    IPC_PRIVATE,
    MSG_COPY,
    MSG_EXCEPT,
    MSG_NOERROR,
    Buffer,
    MsqidDs,
)

if TYPE_CHECKING:
    # Imported where used: asyncio costs 60 ms at start-up, threading a few.
    import asyncio
    import threading

__all__ = ["Message", "MessageQueue"]


class Message(NamedTuple):
    """A message: its type and its bytes. Unpacks as ``mtype, data = message``.

    Attributes:
        mtype: the message type (a C ``long``, >= 1).
        data: the message text.
    """

    mtype: int
    data: bytes


# Building a Message through tuple.__new__ skips the NamedTuple's Python-level __new__.
_new = tuple.__new__
# The hot path's calls, looked up once.
_send = _seam.send
_receive = _seam.receive

COPY_ATTEMPTS = 5
"""How many complete MSG_COPY passes a copy of a whole queue makes before it gives up
(:meth:`MessageQueue.peek_all`, snapshots and ``ipcbind peek`` alike)."""
# Longest single wait of a receive_async worker thread: after a cancellation its
# executor thread is free again within this many seconds.
_ASYNC_SLICE = 0.25


def _send_error(call: str, exc: OSError, mtype: Any, data: Any) -> BaseException:
    """A clearer exception for what the kernel refused with a bare EINVAL."""
    if exc.errno != errno.EINVAL:
        return exc
    if isinstance(mtype, int) and mtype < 1:
        return ValueError(f"{call}: mtype must be >= 1, got {mtype}")
    size = memoryview(data).nbytes
    limit = msgmax()
    if limit is not None and size > limit:
        return ValueError(f"{call}: a message of {size} bytes is longer than the system's "
                          f"limit of {limit} (msgmax, /proc/sys/kernel/msgmax)")
    return exc


def _better_send_error(call: str, exc: OSError, mtype: Any, data: Any) -> BaseException:
    """What to raise for ``exc``, raised by a send: :func:`_send_error`'s clearer
    exception, chained to ``exc``, or ``exc`` itself."""
    better = _send_error(call, exc, mtype, data)
    if better is not exc:
        better.__cause__ = exc
    return better


def _send_failed(err: int, msqid: int, mtype: int, data: bytes, flags: int) -> None:
    """Raise what :meth:`MessageQueue.send` raises for the error ``err`` of a send;
    after EINTR (the signal handlers have run by now, per PEP 475), send again."""
    try:
        _seam.msgsnd_failed(err, msqid, mtype, data, flags)
    except OSError as e:
        raise _better_send_error("send", e, mtype, data)


def _messages(mtypes: List[int], text: bytes, ends: List[int]) -> List[Message]:
    starts = [0]
    starts += ends[:-1]
    return [_new(Message, (t, text[s:e])) for t, s, e in zip(mtypes, starts, ends)]


def copy_all(msqid: int, attempts: int = COPY_ATTEMPTS,
             copied: Optional[Callable[[int], None]] = None) -> List[Message]:
    """Copies of every message of queue ``msqid``, in order, taking none: the one
    whole-queue copy of the package, with its one retry policy.

    Each attempt is one call into C that copies every message by position
    (MSG_COPY) and checks that the queue did not change meanwhile (see
    :meth:`MessageQueue.peek_all`); a torn copy is taken again. ``copied``, if
    given, is called from another thread with the count of messages copied so far
    by the attempt under way, a few times a second while a long copy runs.

    Raises:
        QueueChangedError: each of ``attempts`` copies was torn.
        OSError: as msgrcv with MSG_COPY (EINVAL or EIDRM: no such queue, see
            :func:`ipcbind.errors.gone`; EACCES; ENOSYS).
    """
    for _ in range(attempts):
        got = _seam.msgcopy_all(msqid, copied)
        if got is not None:
            return _messages(*got)
    raise QueueChangedError(msqid, attempts)


class MessageQueue(IpcObject[MsqidDs]):
    """A System V message queue.

    Make one with :meth:`create`, :meth:`open` (by key) or :meth:`from_id`. Sends and
    receives are thread-safe (the kernel serialises them); one object may be shared
    by threads, and by processes after ``fork`` (or pickling, which passes the id).

    As a context manager it returns itself and, on exit, removes the queue if this
    object created it in this process (:attr:`created`); a queue opened by key or id
    is left alone, and so is a queue a forked child leaves a ``with`` block on.
    ``len(q)`` is the number of queued messages; iterating over ``q`` yields a
    consistent snapshot of them (:meth:`peek_all`) and takes none. :meth:`remove`
    (IPC_RMID) drops the messages; waiting senders and receivers get
    ``IdentifierRemovedError``.
    """

    __slots__ = ()
    _kind = "message queue"
    _id_name = "msqid"

    @staticmethod
    def _ctl(ident: int, cmd: int) -> Any:
        return _sc.msgctl(ident, cmd)

    # ---- making one ----------------------------------------------------------------

    @classmethod
    def create(cls, key: int = IPC_PRIVATE, mode: int = 0o600,
               exclusive: bool = False) -> MessageQueue:
        """Creates a queue, or opens the one that exists for ``key``.

        Args:
            key: IPC_PRIVATE (the default) always makes a new queue; any other key
                names a queue that other processes can open (see :func:`ipcbind.ftok`).
                Keys may be given signed or unsigned (as ``ipcs`` prints them).
            mode: permission bits of a new queue.
            exclusive: fail with ``FileExistsError`` if a queue exists for ``key``.

        Returns:
            The queue. :attr:`created` tells whether this call made it.
        """
        msqid, k, created = cls._get(key, mode, exclusive, _sc.msgget)
        return cls(msqid, k, created)

    @classmethod
    def open(cls, key: int) -> MessageQueue:
        """Opens the existing queue for ``key``; ``FileNotFoundError`` if there is none."""
        return cls(*cls._open_key(key, _sc.msgget))

    # ---- sending -------------------------------------------------------------------

    def send(self, data: Buffer, mtype: int = 1, block: bool = True,
             timeout: Optional[float] = None) -> None:
        """Queues ``data`` as one message of type ``mtype``.

        Args:
            data: the message text, any bytes-like object (not ``str``).
            mtype: the message type, >= 1.
            block: wait for room when the queue is full. False raises
                ``BlockingIOError`` (EAGAIN) at once instead.
            timeout: seconds to wait for room at most, then ``TimeoutError``
                (nothing is sent). 0 tries once without waiting. Needs ``block``.

        Raises:
            ValueError: ``mtype`` < 1, or ``data`` longer than msgmax.
            IdentifierRemovedError: the queue was removed while waiting.
        """
        if timeout is None:
            flags = 0 if block else IPC_NOWAIT
            if type(data) is bytes:
                # The shim straight from here, as the semaphore methods do: a Python
                # call costs about 0.1 us.
                try:
                    err = _send(self._id, mtype, data, len(data), flags)
                except (TypeError, OverflowError):  # msgsnd raises, naming the argument
                    pass
                else:
                    if err:
                        _send_failed(err, self._id, mtype, data, flags)
                    return None
            try:
                return _sc.msgsnd(self._id, mtype, data, flags)
            except OSError as e:
                raise _better_send_error("send", e, mtype, data)
        self._send_timed(data, mtype, block, timeout)

    def _send_timed(self, data: Buffer, mtype: int, block: bool, timeout: float) -> None:
        _deadline("send", timeout)  # refuses what is no timeout before "== 0" below
        if not block:
            raise ValueError("send: a timeout needs block=True")
        try:
            if timeout == 0:
                try:
                    _sc.msgsnd(self._id, mtype, data, IPC_NOWAIT)
                except BlockingIOError:
                    raise timeout_error(f"send(msqid={self._id})", timeout) from None
            else:
                _sc.msgsnd(self._id, mtype, data, 0, timeout=timeout)
        except OSError as e:
            raise _better_send_error("send", e, mtype, data)

    def send_many(self, messages: Iterable[Tuple[int, Buffer]], block: bool = True,
                  timeout: Optional[float] = None) -> int:
        """Sends ``(mtype, data)`` pairs in order, with one call into C for all.

        ``Message`` objects are pairs, so what :meth:`peek_all` or
        :meth:`receive_many` returned can be sent again. Other senders' messages
        may land between these.

        Args:
            messages: an iterable of ``(mtype, data)``; data is bytes-like.
            block: wait for room whenever the queue is full. With False the batch
                stops at the first message that finds the queue full.
            timeout: seconds each wait for room may last at most (a limit per
                wait, not for the whole batch), then ``TimeoutError``.

        Returns:
            How many messages were sent: all of them, except with ``block=False``
            when the queue filled up; then the first that many were sent and the
            rest were not.

        Raises:
            PartialSendError: a failure part-way through, as the class the failure
                has by itself too (``IdentifierRemovedError``, ``TimeoutError``,
                ``ValueError`` for an mtype < 1...); its ``sent`` attribute is the
                number of messages sent before it.
        """
        if timeout is not None:
            _deadline("send_many", timeout)
            if not block:
                raise ValueError("send_many: a timeout needs block=True")
        try:
            pairs = messages if isinstance(messages, (list, tuple)) else list(messages)
        except TypeError:
            raise TypeError("send_many: messages must be an iterable of (mtype, data) pairs, "
                            f"not {type(messages).__name__}") from None
        if not pairs:
            return 0
        try:
            mtypes = [m for m, _ in pairs]
            chunks = [d for _, d in pairs]
            text = b"".join(chunks)
        except (TypeError, ValueError):
            raise _bad_pair(pairs) from None
        ends = _ends(chunks, len(text))
        flags = IPC_NOWAIT if not block or timeout == 0 else 0
        try:
            sent = _seam.msgsnd_many(self._id, mtypes, text, ends, flags,
                                    None if timeout == 0 else timeout)
        except OSError as e:
            sent = getattr(e, "sent", 0)
            better = _send_error(f"send_many: message {sent}", e, mtypes[sent], chunks[sent])
            raise partial_send(better, sent) from (None if better is e else e)
        if timeout == 0 and sent < len(mtypes):
            raise partial_send(timeout_error(f"send_many(msqid={self._id})", timeout), sent)
        return sent

    # ---- receiving -----------------------------------------------------------------

    def receive(self, mtype: int = 0, block: bool = True, timeout: Optional[float] = None, *,
                except_type: bool = False, maxsize: Optional[int] = None,
                truncate: bool = False) -> Message:
        """Takes one message from the queue.

        Args:
            mtype: 0 takes the first message; > 0 the first of that type; < 0 the
                first of the lowest type <= ``-mtype``.
            block: wait for a matching message. False raises ``NoMessageError``
                (ENOMSG) at once instead.
            timeout: seconds to wait at most, then ``TimeoutError`` (nothing is
                taken). 0 tries once without waiting. Needs ``block``.
            except_type: take the first message NOT of type ``mtype`` (MSG_EXCEPT;
                needs ``mtype`` > 0).
            maxsize: the longest text to accept. None (the default) accepts any
                size. A longer message raises ``TooBigError`` and stays queued,
                unless ``truncate``.
            truncate: take a longer message anyway, cut to ``maxsize`` bytes; the
                rest is lost (MSG_NOERROR). Needs ``maxsize``.

        Returns:
            The message.
        """
        if timeout is None and maxsize is None and not except_type and not truncate:
            msg: Message = _receive(self._id, mtype, not block, Message)
            return msg
        flags = _receive_flags("receive", mtype, except_type, maxsize, truncate)
        if timeout is None:
            return _new(Message, _sc.msgrcv(self._id, maxsize, mtype,
                                            flags if block else flags | IPC_NOWAIT))
        _deadline("receive", timeout)
        if not block:
            raise ValueError("receive: a timeout needs block=True")
        if timeout == 0:
            try:
                return _new(Message, _sc.msgrcv(self._id, maxsize, mtype, flags | IPC_NOWAIT))
            except NoMessageError:
                raise timeout_error(f"receive(msqid={self._id})", timeout) from None
        return _new(Message, _sc.msgrcv(self._id, maxsize, mtype, flags, timeout=timeout))

    def receive_many(self, max_count: int, mtype: int = 0, block: bool = True,
                     timeout: Optional[float] = None, *, except_type: bool = False,
                     maxsize: Optional[int] = None, truncate: bool = False) -> List[Message]:
        """Takes up to ``max_count`` messages, with one call into C for all.

        The first message is waited for exactly as :meth:`receive` would (same
        arguments, same exceptions when there is none); the others are taken only
        while matching messages are already queued, so the list holds between 1
        and ``max_count`` messages.

        Messages taken are always returned. When something stops the batch after
        the first message (a longer message than ``maxsize`` at the head, the
        queue removed), the messages already taken are returned and the next call
        reports the condition.

        Raises:
            PartialReceiveError: (also a ``MemoryError``) no memory to hold a message
                already taken; the messages taken before it are in its ``received``
                attribute.
        """
        if isinstance(max_count, bool) or not isinstance(max_count, int):
            raise TypeError(f"receive_many: max_count must be an int, "
                            f"not {type(max_count).__name__}")
        if max_count < 1:
            raise ValueError(f"receive_many: max_count must be >= 1, got {max_count}")
        flags = _receive_flags("receive_many", mtype, except_type, maxsize, truncate)
        if timeout is not None:
            _deadline("receive_many", timeout)
        if not block:
            if timeout is not None:
                raise ValueError("receive_many: a timeout needs block=True")
            flags |= IPC_NOWAIT
        elif timeout == 0:
            flags |= IPC_NOWAIT
        try:
            mtypes, text, ends, err = _seam.msgrcv_many(
                self._id, max_count, _seam.receive_size("receive_many", maxsize), mtype, flags,
                None if timeout == 0 else timeout)
        except NoMessageError:
            if timeout == 0:
                raise timeout_error(f"receive_many(msqid={self._id})", timeout) from None
            raise
        got = _messages(mtypes, text, ends)
        if err == errno.ENOMEM:
            raise partial_receive(MemoryError("receive_many: no memory for a message already "
                                              f"taken from queue {self._id}; it is lost"), got)
        return got

    async def receive_async(self, mtype: int = 0, timeout: Optional[float] = None, *,
                            except_type: bool = False, maxsize: Optional[int] = None,
                            truncate: bool = False) -> Message:
        """Awaits and takes one message, like :meth:`receive`, without blocking the
        event loop. Cancelling it never loses a message.

        The wait happens in a thread of the loop's default executor with a
        ``msgrcv`` whose buffer holds 0 bytes: the kernel sleeps until a matching
        message exists, then refuses it (E2BIG) and leaves it queued. The message
        is then taken with IPC_NOWAIT on the event-loop thread, in a step that a
        cancellation cannot interrupt. If another receiver takes it first, the
        wait starts again.

        A message with no text fits the 0-byte buffer, so the waiting thread takes
        it itself and hands it over. Should the call be cancelled at that moment,
        the message is put back at the END of the queue (same type, empty text): it
        is not lost, but it changes place.

        Each pending call occupies one executor thread; a cancelled call frees its
        thread within a quarter of a second.

        Args:
            mtype, except_type, maxsize, truncate: as for :meth:`receive`.
            timeout: seconds to wait at most, then ``TimeoutError``.
        """
        flags = _receive_flags("receive_async", mtype, except_type, maxsize, truncate)
        deadline = _deadline("receive_async", timeout)
        import asyncio

        loop = asyncio.get_running_loop()
        take_flags = flags | IPC_NOWAIT
        wait_flags = flags & ~MSG_NOERROR
        while True:
            try:
                return _new(Message, _sc.msgrcv(self._id, maxsize, mtype, take_flags))
            except NoMessageError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise timeout_error(f"receive_async(msqid={self._id})", timeout)
            handed = await self._await_message(loop, mtype, wait_flags, deadline)
            if handed is not None:
                return handed

    async def _await_message(self, loop: asyncio.AbstractEventLoop, mtype: int, flags: int,
                             deadline: Optional[float]) -> Optional[Message]:
        """Waits in an executor thread until a matching message is queued. Returns
        None then, or the message if it had no text (the wait took it)."""
        import asyncio
        import threading

        fut: asyncio.Future[Optional[Message]] = loop.create_future()
        stop = threading.Event()
        msqid = self._id

        def settle(msg: Optional[Message], exc: Optional[BaseException]) -> None:
            if fut.cancelled():
                if msg is not None:
                    _put_back(loop, msqid, msg)
            elif exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(msg)

        def wait() -> None:
            msg: Optional[Message] = None
            exc: Optional[BaseException] = None
            try:
                msg = _wait_for_message(msqid, mtype, flags, deadline, stop)
            except BaseException as e:  # handed to the awaiting task, which re-raises it
                exc = e
            try:
                loop.call_soon_threadsafe(settle, msg, exc)
            except RuntimeError:  # the loop is closed: nobody can take the message
                if msg is not None:
                    _sc.msgsnd(msqid, msg.mtype, b"", timeout=10)

        job = loop.run_in_executor(None, wait)
        try:
            return await fut
        except asyncio.CancelledError:
            stop.set()
            job.cancel()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                msg = fut.result()
                if msg is not None:  # handed over, but this task is cancelled after all
                    _put_back(loop, msqid, msg)
            raise

    # ---- looking without taking ------------------------------------------------------

    def peek(self, index: int = 0) -> Message:
        """A copy of the message at position ``index`` (0 is the head), which stays
        queued (MSG_COPY). ``NoMessageError`` if the queue holds no message there;
        ``NotSupportedError`` on kernels without MSG_COPY; ``OverflowError``, before
        any system call, for an index beyond a C long."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"peek: index must be an int, not {type(index).__name__}")
        if index < 0:
            raise ValueError(f"peek: index counts from the head of the queue and must be "
                             f">= 0, got {index}")
        if index > LONG_MAX:
            raise OverflowError(f"peek: index {index} does not fit a C long, in which "
                                f"MSG_COPY takes it (at most {LONG_MAX})")
        return _new(Message, _sc.msgrcv(self._id, None, index, MSG_COPY | IPC_NOWAIT))

    def peek_all(self, attempts: int = COPY_ATTEMPTS) -> List[Message]:
        """Copies of all queued messages, in order; none is taken.

        One call into C copies every message by position (MSG_COPY) between two
        IPC_STAT calls, then copies the first and last message again. If IPC_STAT
        differs, the queue ran short, or the first or last message changed, a
        receive or send changed the queue in between and the copy may be torn: it
        is taken again, up to ``attempts`` times, then ``QueueChangedError`` is raised.

        What the check sees: any change of the message count or total size, of the
        last sender's or receiver's pid, IPC_SET, any send or receive in a later
        second than the previous one, any receive of the first message and any send
        (they change the first or the last message). What it cannot see: a receive
        of a message other than the first (by type, or with MSG_EXCEPT) together
        with a send of equal size, by the same processes as the last ones, within
        the same second; a list copied across them can miss or repeat a message.

        Raises:
            QueueChangedError: the queue changed during every attempt.
            NotSupportedError: the kernel has no MSG_COPY.
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"peek_all: attempts must be an int, not {type(attempts).__name__}")
        if attempts < 1:
            raise ValueError(f"peek_all: attempts must be >= 1, got {attempts}")
        return copy_all(self._id, attempts)

    def __iter__(self) -> Iterator[Message]:
        """Iterates over a snapshot taken by :meth:`peek_all`; consumes nothing."""
        return iter(self.peek_all())

    def __len__(self) -> int:
        """The number of messages queued now (IPC_STAT ``qnum``)."""
        return self.stat().qnum

    def __bool__(self) -> bool:
        """Always true, even for an empty queue: use ``len(q)`` for the count."""
        return True

    # ---- the queue itself ------------------------------------------------------------


def _receive_flags(call: str, mtype: Any, except_type: bool, maxsize: Optional[int],
                   truncate: bool) -> int:
    # bool is an int to the layer below: maxsize=True would mean a 1-byte buffer.
    if isinstance(maxsize, bool):
        raise TypeError(f"{call}: maxsize must be an integer or None, not bool")
    flags = 0
    if except_type:
        if isinstance(mtype, int) and mtype <= 0:
            raise ValueError(f"{call}: except_type needs mtype > 0 (the type to skip), "
                             f"got {mtype}")
        flags |= MSG_EXCEPT
    if truncate:
        if maxsize is None:
            raise ValueError(f"{call}: truncate needs maxsize (the length to cut to)")
        flags |= MSG_NOERROR
    return flags


def _wait_for_message(msqid: int, mtype: int, flags: int, deadline: Optional[float],
                      stop: threading.Event) -> Optional[Message]:
    """In a worker thread: sleep until a matching message is queued, taking none
    unless it has no text. Returns None when one is there (or on stop)."""
    while not stop.is_set():
        left = _ASYNC_SLICE if deadline is None else min(_ASYNC_SLICE,
                                                          deadline - time.monotonic())
        if left <= 0:
            return None
        try:
            return _new(Message, _sc.msgrcv(msqid, 0, mtype, flags, timeout=left))
        except TooBigError:
            return None
        except TimeoutError:
            continue
    return None


def _put_back(loop: asyncio.AbstractEventLoop, msqid: int, msg: Message) -> None:
    """Re-queue a text-less message that a cancelled receive_async had taken."""
    try:
        _sc.msgsnd(msqid, msg.mtype, b"", IPC_NOWAIT)
    except BlockingIOError:
        loop.run_in_executor(None, lambda: _sc.msgsnd(msqid, msg.mtype, b""))


def _ends(chunks: List[Any], total: int) -> List[int]:
    """Cumulative byte offsets of the chunks. len() counts items, not bytes, for
    buffers with items wider than a byte; then the sum falls short of ``total``
    and the offsets are counted in bytes instead."""
    ends = list(accumulate(map(len, chunks)))
    if ends[-1] != total:
        ends = list(accumulate(memoryview(c).nbytes for c in chunks))
    return ends


def _bad_pair(pairs: Any) -> Exception:
    for i, item in enumerate(pairs):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            return TypeError(f"send_many: message {i} must be an (mtype, data) pair, "
                             f"got {item!r:.60}")
        data = item[1]
        if isinstance(data, str):
            return TypeError(f"send_many: message {i}: data must be bytes-like, not str "
                             "(encode it first)")
        try:
            memoryview(data)
        except TypeError:
            return TypeError(f"send_many: message {i}: data must be bytes-like, "
                             f"not {type(data).__name__}")
    return TypeError("send_many: messages must be (mtype, data) pairs")


_seam.accelerate_queue(MessageQueue, Message, _send_failed)
