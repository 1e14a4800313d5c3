"""A producer and a consumer in two processes, talking through one message queue.

    python examples/producer_consumer.py

The parent creates a private queue and forks. The child produces work items of
type 1 and, at the end, one message of type 2 saying it is done. The parent
consumes with a timeout, so that it notices a producer that died instead of
waiting forever. Leaving the `with` block removes the queue (in the parent, which
created it; the child's copy of the object removes nothing).
"""

from __future__ import annotations

import os
import sys
import time

from ipcbind import MessageQueue

WORK, DONE = 1, 2


def produce(q: MessageQueue, count: int) -> None:
    for i in range(count):
        q.send(f"item {i}".encode(), WORK)
        if i % 10 == 9:
            time.sleep(0.01)  # some pauses: the consumer waits, it does not spin
    q.send(str(count).encode(), DONE)


def consume(q: MessageQueue) -> int:
    received = 0
    while True:
        try:
            # Type -2: the lowest type <= 2, so every WORK message comes before DONE.
            mtype, data = q.receive(-DONE, timeout=5)
        except TimeoutError:
            print("no message for 5 s: is the producer still alive?", file=sys.stderr)
            return 1
        if mtype == DONE:
            expected = int(data)
            print(f"consumer: {received} items received, producer sent {expected}")
            return 0 if received == expected else 1
        received += 1


def main() -> int:
    with MessageQueue.create() as q:
        print(f"queue {q.id} created")
        pid = os.fork()
        if pid == 0:
            try:
                produce(q, 100)
            finally:
                os._exit(0)
        code = consume(q)
        os.waitpid(pid, 0)
    print("queue removed")
    return code


if __name__ == "__main__":
    sys.exit(main())
