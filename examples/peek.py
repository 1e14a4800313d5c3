"""Look at every message in a System V message queue without taking any.

    python examples/peek.py MSQID        # a queue that exists (ipcs -q lists them)
    python examples/peek.py              # a demo queue of its own, removed afterwards

Exit status: 0 shown, 1 failed, 2 not a queue id, 3 no queue with that id, as
for the ipcbind peek command.

The messages are copied with MSG_COPY, so the queue, its counts and its last
receiver stay exactly as they were. If other processes change the queue while it
is being read, the copy is taken again; if it keeps changing, the tool says so.
"""

from __future__ import annotations

import errno
import sys
from typing import List, Optional

from ipcbind import MessageQueue, QueueChangedError


def show(q: MessageQueue) -> int:
    before = q.stat()
    try:
        messages = q.peek_all()
    except QueueChangedError as e:
        print(f"queue {q.id} kept changing ({e.attempts} attempts); try again", file=sys.stderr)
        return 1
    print(f"queue {q.id}: {len(messages)} messages, {before.cbytes} of {before.qbytes} bytes")
    for i, (mtype, data) in enumerate(messages):
        shown = data[:48]
        more = f" ... ({len(data)} bytes)" if len(data) > len(shown) else ""
        print(f"  [{i}] type {mtype}: {shown!r}{more}")
    after = q.stat()
    untouched = (after.qnum, after.lrpid, after.rtime) == (before.qnum, before.lrpid, before.rtime)
    print("nothing was taken" if untouched else "the queue changed meanwhile (other processes)")
    return 0


def demo() -> int:
    with MessageQueue.create() as q:  # removed when the block ends
        q.send_many([(1, b"hello"), (2, b"peeked, not consumed"), (7, b"\x00binary\xff")])
        code = show(q)
        print(f"still queued afterwards: {[m.data for m in q.receive_many(10)]}")
        return code


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        return demo()
    if len(args) != 1 or not args[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    msqid = int(args[0])
    try:
        return show(MessageQueue.from_id(msqid))
    except ValueError as e:  # an id no queue can have, such as one above 2**31 - 1
        print(f"peek: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EIDRM):
            print(f"peek: no message queue with id {msqid}", file=sys.stderr)
            return 3
        print(f"peek: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
