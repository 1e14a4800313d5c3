"""The ``ipcbind`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import syscalls as sc


def demo(out=sys.stdout) -> int:
    """Create a queue, peek at every message without consuming it, show it unchanged."""
    messages = [(1, b"hello"), (2, b"peeked, not consumed"), (7, b"\x00binary\xff")]
    q = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
    try:
        print(f"created queue {q} (IPC_PRIVATE, mode 0600)", file=out)
        for mtype, data in messages:
            sc.msgsnd(q, mtype, data)
        before = sc.msgctl(q, sc.IPC_STAT)
        print(f"sent {len(messages)} messages: {before.qnum} queued, {before.cbytes} bytes",
              file=out)
        print("peek with MSG_COPY (index, type, data):", file=out)
        for i in range(before.qnum):
            mtype, data = sc.msgrcv(q, None, i, sc.MSG_COPY | sc.IPC_NOWAIT)
            print(f"  [{i}] type {mtype}: {data!r}", file=out)
        after = sc.msgctl(q, sc.IPC_STAT)
        same = (after.qnum, after.cbytes, after.rtime, after.lrpid) == (
            before.qnum, before.cbytes, before.rtime, before.lrpid)
        print(f"after peeking: {after.qnum} queued, {after.cbytes} bytes, last receiver pid "
              f"{after.lrpid} ({'unchanged' if same else 'CHANGED'})", file=out)
        got = [sc.msgrcv(q, None, 0, sc.IPC_NOWAIT) for _ in messages]
        print(f"received in order: {got == messages}", file=out)
        return 0 if same and got == messages else 1
    finally:
        sc.msgctl(q, sc.IPC_RMID)
        print(f"removed queue {q}", file=out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ipcbind", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="create a queue, peek at it without consuming, remove it")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
