"""MessageQueue.receive_async against the real kernel: it waits without blocking the
event loop, honours its options and timeout, and cancelling it never loses or
duplicates a message, also for messages without text."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import List, Set

import pytest

from ipcbind import IdentifierRemovedError, MessageQueue, NoMessageError, TooBigError

SLACK = 2.0


def send_later(q: MessageQueue, delay: float, data: bytes = b"late", mtype: int = 1) -> None:
    threading.Timer(delay, q.send, args=(data, mtype)).start()


def test_receive_async_returns_a_queued_message(q: MessageQueue) -> None:
    q.send(b"ready", 4)
    assert asyncio.run(q.receive_async()) == (4, b"ready")


def test_receive_async_waits_for_a_message_without_blocking_the_loop(q: MessageQueue) -> None:
    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        send_later(q, 0.3)
        msg = await asyncio.wait_for(q.receive_async(), 30)
        ticker.cancel()
        assert msg.data == b"late"
        return ticks

    assert asyncio.run(main()) >= 5


def test_receive_async_by_type_leaves_other_types(q: MessageQueue) -> None:
    q.send(b"one", 1)
    send_later(q, 0.2, b"two", 2)
    assert asyncio.run(q.receive_async(2)) == (2, b"two")
    assert q.receive(block=False) == (1, b"one")


def test_receive_async_except_type(q: MessageQueue) -> None:
    q.send(b"one", 1)
    send_later(q, 0.2, b"two", 2)
    assert asyncio.run(q.receive_async(1, except_type=True)) == (2, b"two")


def test_receive_async_of_a_message_without_text(q: MessageQueue) -> None:
    send_later(q, 0.2, b"", 6)
    assert asyncio.run(q.receive_async()) == (6, b"")
    assert len(q) == 0


def test_receive_async_too_long_raises_too_big_and_keeps_it(q: MessageQueue) -> None:
    send_later(q, 0.2, b"0123456789")
    with pytest.raises(TooBigError):
        asyncio.run(q.receive_async(maxsize=4))
    assert len(q) == 1


def test_receive_async_truncates_when_asked(q: MessageQueue) -> None:
    send_later(q, 0.2, b"0123456789")
    assert asyncio.run(q.receive_async(maxsize=4, truncate=True)).data == b"0123"
    assert len(q) == 0


def test_receive_async_timeout_raises_timeout_error(q: MessageQueue) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(q.receive_async(timeout=0.3))
    assert 0.3 <= time.monotonic() - start < 0.3 + SLACK


def test_receive_async_refuses_bad_options(q: MessageQueue) -> None:
    with pytest.raises(ValueError, match="except_type"):
        asyncio.run(q.receive_async(0, except_type=True))
    with pytest.raises(ValueError, match="maxsize"):
        asyncio.run(q.receive_async(truncate=True))
    with pytest.raises(ValueError, match="timeout"):
        asyncio.run(q.receive_async(timeout=-1))


def test_receive_async_raises_identifier_removed_when_the_queue_goes(q: MessageQueue) -> None:
    threading.Timer(0.2, q.remove).start()
    with pytest.raises(IdentifierRemovedError):
        asyncio.run(q.receive_async())


def test_cancelled_receive_async_takes_nothing(q: MessageQueue) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(q.receive_async())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        q.send(b"after cancel")
        q.send(b"", 2)
        await asyncio.sleep(0.5)  # the cancelled waiter's thread runs out meanwhile

    asyncio.run(main())
    assert q.receive_many(10, block=False) == [(1, b"after cancel"), (2, b"")]


def test_wait_for_timeout_on_receive_async_loses_nothing(q: MessageQueue) -> None:
    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.receive_async(), 0.1)

    asyncio.run(main())
    q.send(b"still here")
    assert q.receive(block=False).data == b"still here"


def test_cancelling_many_receive_async_while_messages_flow_loses_and_duplicates_nothing(
        q: MessageQueue) -> None:
    """Messages, a fifth of them without text, are sent by a thread while waiters
    are started and cancelled at random. Each message's type is its number, so
    messages without text are told apart too. Every one must arrive once."""
    total = 400
    rng = random.Random(1234)
    got: List[int] = []

    def produce() -> None:
        for n in range(1, total + 1):
            q.send(b"" if n % 5 == 0 else str(n).encode(), n)
            if n % 10 == 0:
                time.sleep(0.01)

    async def main() -> int:
        cancelled = 0
        producer = threading.Thread(target=produce)
        producer.start()
        pending: Set[asyncio.Future[object]] = set()
        end = time.monotonic() + 60
        while len(got) < total and time.monotonic() < end:
            while len(pending) < 8:
                pending.add(asyncio.ensure_future(q.receive_async()))
            await asyncio.sleep(rng.uniform(0, 0.01))
            for task in list(pending):
                if task.done():
                    pending.discard(task)
                    if not task.cancelled():
                        got.append(task.result().mtype)  # type: ignore[attr-defined]
                elif rng.random() < 0.3:
                    task.cancel()
                    cancelled += 1
            if not producer.is_alive() and not pending:
                try:
                    got.extend(m.mtype for m in q.receive_many(total, block=False))
                except NoMessageError:
                    pass
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                got.append((await task).mtype)  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                pass
        producer.join(30)
        await asyncio.sleep(0.5)  # let cancelled waiters put back what they held
        return cancelled

    cancelled = asyncio.run(main())
    try:
        got.extend(m.mtype for m in q.receive_many(total, block=False))
    except NoMessageError:
        pass
    assert cancelled > 0
    assert sorted(got) == list(range(1, total + 1))


def test_a_message_without_text_taken_by_a_cancelled_waiter_is_put_back(
        q: MessageQueue) -> None:
    """The waiting thread takes a message without text, and the call is cancelled
    before the hand-over reaches the event loop: the message goes back."""
    async def main() -> None:
        task = asyncio.ensure_future(q.receive_async())
        await asyncio.sleep(0.2)  # the waiting thread sleeps in msgrcv
        q.send(b"", 7)
        time.sleep(0.3)  # the loop is blocked: the hand-over waits in its queue
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert q.receive(block=False) == (7, b"")


def test_a_message_without_text_handed_over_to_a_cancelled_task_is_put_back(
        q: MessageQueue) -> None:
    """The hand-over has reached the task, but the task is cancelled before it
    resumes: the message goes back."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(q.receive_async())
        await asyncio.sleep(0.2)
        q.send(b"", 8)
        time.sleep(0.3)  # the hand-over is queued; the cancel runs right after it
        loop.call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert q.receive(block=False) == (8, b"")
