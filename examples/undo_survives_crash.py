"""A lock that survives a crashing holder: SEM_UNDO in action.

A child process takes a one-unit semaphore with ``undo=True`` and is then killed
with SIGKILL, so it never gets to release it. The kernel reverses the child's
undo adjustment as the process dies, and the waiting parent gets the lock.

Run: python examples/undo_survives_crash.py
"""

from __future__ import annotations

import os
import signal
import sys
import time

from ipcbind import SemaphoreSet


def holder(lock_id: int, ready_fd: int) -> None:
    """Take the lock with undo, say so, then hang until killed."""
    lock = SemaphoreSet.from_id(lock_id)[0]
    lock.acquire(undo=True)
    os.write(ready_fd, b"!")
    time.sleep(3600)


def main() -> int:
    with SemaphoreSet.create(1, values=[1]) as semset:  # removed at the end
        lock = semset[0]
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                holder(semset.id, ready_w)
            finally:
                os._exit(1)
        os.read(ready_r, 1)
        print(f"holder {pid} has the lock (value {lock.value})")

        try:
            lock.acquire(timeout=0.2)
            print("unexpected: got the lock while the holder was alive")
            return 1
        except TimeoutError:
            print("waiter: still taken after 0.2 s, as it should be")

        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(f"holder {pid} killed with SIGKILL, without releasing")

        lock.acquire(timeout=5)  # the kernel gave the unit back
        print(f"waiter: got the lock (value now {lock.value})")
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
