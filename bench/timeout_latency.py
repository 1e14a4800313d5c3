"""How promptly MessageQueue.receive(timeout=...) wakes up.

    python bench/timeout_latency.py [--samples N]

Measures, on this machine as it is (load included):
  arrival   a message sent by another process while the receiver sleeps in
            receive(timeout=10): time from just before msgsnd to the return of
            receive, with and without a timeout (the kernel's own wake-up cost)
  deadline  receive(timeout=0.02) on an empty queue: how long after the deadline
            the TimeoutError is raised
and prints the median, 99th percentile and maximum of each, in microseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import List, Optional

from ipcbind import MessageQueue

DEADLINE = 0.02


def quantiles(xs: List[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"p50 {statistics.median(xs):8.0f}   p99 {p99:8.0f}   max {xs[-1]:8.0f}"


def arrival(samples: int, timeout: Optional[float]) -> List[float]:
    """Wake-up latency for messages sent by a child while this process waits."""
    with MessageQueue.create() as q, MessageQueue.create() as ready:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                rng = random.Random(7)
                for _ in range(samples):
                    ready.receive()  # the receiver is about to wait
                    time.sleep(rng.uniform(0.002, 0.006))  # let it fall asleep
                    q.send(time.monotonic_ns().to_bytes(8, "little"))
                code = 0
            finally:
                os._exit(code)
        out = []
        for _ in range(samples):
            ready.send(b"")
            data = q.receive(timeout=timeout).data
            out.append((time.monotonic_ns() - int.from_bytes(data, "little")) / 1e3)
        os.waitpid(pid, 0)
        return out


def deadline(samples: int) -> List[float]:
    """How late TimeoutError comes after the deadline, in microseconds."""
    out = []
    with MessageQueue.create() as q:
        for _ in range(samples):
            start = time.monotonic()
            try:
                q.receive(timeout=DEADLINE)
            except TimeoutError:
                out.append((time.monotonic() - start - DEADLINE) * 1e6)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args(argv)
    n = args.samples
    print(f"{n} samples each, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; microseconds")
    print(f"arrival, receive(timeout=10)   {quantiles(arrival(n, 10))}")
    print(f"arrival, receive() (no timeout) {quantiles(arrival(n, None))}")
    print(f"deadline, receive(timeout={DEADLINE}) late by {quantiles(deadline(n))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
