"""Time snapshot, the file format and restore on a namespace holding many messages.

Needs root (it makes two fresh IPC namespaces). Run: python bench/snapshot_restore.py [N]
A child unshares its IPC namespace, raises msgmnb and fills one queue with N messages
of 100 bytes and four smaller queues; the parent snapshots that namespace, writes and
reads the file, and restores it into a second fresh namespace. Times are the best of
three runs. MSG_COPY walks the queue from its head on every call, so reading one queue
costs O(N^2) in the kernel: the figures show that curve, not Python's overhead.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Tuple

from ipcbind import _seam
from ipcbind import syscalls as sc
from ipcbind.snapshot import dumps, loads, restore, snapshot


def _namespace(fill: Callable[[], None]) -> Tuple[int, int]:
    """Fork a child holding a fresh namespace filled by fill(); returns (pid, control fd)."""
    ready_r, ready_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ctl_w)
            _seam.unshare_ipc()
            fill()
            os.write(ready_w, b"1")
            os.read(ctl_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(ctl_r)
    if os.read(ready_r, 1) != b"1":
        raise SystemExit("the namespace child failed")
    os.close(ready_r)
    return pid, ctl_w


def _end(child: Tuple[int, int]) -> None:
    pid, ctl = child
    os.close(ctl)
    os.waitpid(pid, 0)


def _best(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    if os.geteuid() != 0:
        raise SystemExit("needs root: it makes fresh IPC namespaces")

    def fill() -> None:
        with open("/proc/sys/kernel/msgmnb", "w") as f:
            f.write(str(max(16384, 200 * n)))
        q = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
        for i in range(n):
            sc.msgsnd(q, 1 + i % 7, bytes([i % 256]) * 100)
        for _ in range(4):
            sc.msgsnd(sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600), 1, b"small")
        sc.semctl(sc.semget(sc.IPC_PRIVATE, 8, sc.IPC_CREAT | 0o600), 0, sc.SETALL,
                  list(range(8)))

    source = _namespace(fill)
    try:
        snap = snapshot(source[0])
        t_snap = _best(lambda: snapshot(source[0]))
        t_freeze = _best(lambda: snapshot(source[0], freeze=True))
        text = dumps(snap)
        t_dumps = _best(lambda: dumps(snap))
        t_loads = _best(lambda: loads(text))
    finally:
        _end(source)
    t_restore = float("inf")
    for _ in range(3):
        target = _namespace(lambda: None)
        try:
            t = time.perf_counter()
            restore(snap, target[0], set_limits=True)
            t_restore = min(t_restore, time.perf_counter() - t)
        finally:
            _end(target)
    messages = sum(len(q.messages) for q in snap.queues)
    print(f"{messages} messages in {len(snap.queues)} queues, {len(text)} bytes of file")
    for name, t in (("snapshot", t_snap), ("snapshot, frozen", t_freeze), ("dumps", t_dumps),
                    ("loads", t_loads), ("restore", t_restore)):
        print(f"  {name:<17} {t * 1000:8.1f} ms  {messages / t:10.0f} messages/s")


if __name__ == "__main__":
    main()
