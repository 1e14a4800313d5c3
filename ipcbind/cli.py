"""The ``ipcbind`` command line: list, peek, dump and restore System V IPC objects.

Every command takes ``--pid PID`` to act inside that process's IPC namespace;
commands that print data take ``--json``. Errors are one line on stderr and an
exit code (see ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import pwd
import sys
from contextlib import nullcontext
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import psutil

from . import syscalls as sc
from ._limits import INT_MAX, LONG_MAX, unsigned_key
from .errors import CliError, NotSupportedError, QueueChangedError, gone
from .msg import COPY_ATTEMPTS, copy_all
from .namespace import (NamespaceReturnError, enter_namespace, list_queues,
                        list_semaphore_sets, namespace_id, shares_namespace)
from .semundo import read_semundo
from .snapshot import (FreezeError, RestoreConflictError, RestoreError, SnapshotFormatError,
                       dump, dumps, load, loads, restore, snapshot)

JSON_VERSION = 1
"""The ``version`` field of every JSON document the commands print."""

OK, FAILED, USAGE, NOT_FOUND, NO_PERMISSION, BAD_FILE, CONFLICT, UNSUPPORTED, INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 6, 7, 130)
EXIT_CODES = {
    OK: "success",
    FAILED: "the operation failed (a restore that was rolled back, a queue that kept "
            "changing, a freeze that failed, a malformed semundo file, any other system "
            "error)",
    USAGE: "bad command line (unknown command or option, bad number, --freeze without "
           "the --pid of another namespace)",
    NOT_FOUND: "no such queue, message index, process or file",
    NO_PERMISSION: "permission denied (the message says which privilege is missing)",
    BAD_FILE: "the snapshot file is damaged, foreign or of an unknown version",
    CONFLICT: "restore refused: the namespace already has an object with that id or key",
    UNSUPPORTED: "the kernel does not provide it (/proc/<pid>/semundo on any mainline kernel, "
                 "MSG_COPY without CONFIG_CHECKPOINT_RESTORE)",
    INTERRUPTED: "interrupted (Ctrl-C); anything frozen was thawed, a restore was undone",
}



# ---- the demo (the README's first command) -----------------------------------------

def demo(out: IO[str] = sys.stdout) -> int:
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


# ---- helpers ------------------------------------------------------------------------

def _key(key: int) -> str:
    return f"{unsigned_key(key):#010x}"


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _process_name(pid: int) -> Optional[str]:
    """The name of a process by pid, None if there is none (0) or it is gone.

    The kernel keeps only the pid: a pid reused since shows the new process's name.
    """
    if pid <= 0:
        return None
    try:
        return str(psutil.Process(pid).name())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _who(pid: int) -> str:
    if pid <= 0:
        return "-"
    return f"{pid}({_process_name(pid) or '?'})"


def _print_json(doc: Dict[str, Any], out: IO[str]) -> None:
    out.write(json.dumps({"version": JSON_VERSION, **doc}, indent=1) + "\n")


def _printable(data: bytes) -> str:
    """Bytes as text: UTF-8 where valid, escapes for the rest and for control characters."""
    text = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == "\\" else
                   c.encode("unicode_escape").decode("ascii") for c in text)


def _hexdump(data: bytes) -> List[str]:
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at:at + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {at:06x}  {hexes:<47}  {ascii_}")
    return lines


def _progress(stream: IO[str]) -> Optional[Callable[[int, int, str], None]]:
    """A progress line on the terminal (nothing when stderr is not one)."""
    if not stream.isatty():
        return None

    def show(done: int, total: int, what: str) -> None:
        if what == "done":
            stream.write("\r\033[K")
        else:
            stream.write(f"\r\033[K{done}/{total} {what}")
        stream.flush()

    return show


def _inside(pid: Optional[int]) -> Any:
    return enter_namespace(pid) if pid is not None else nullcontext()


# ---- commands -----------------------------------------------------------------------

def _ls_data() -> Dict[str, Any]:
    queues = []
    for msqid, ds in list_queues():
        queues.append({
            "id": msqid, "key": _key(ds.key), "uid": ds.uid, "gid": ds.gid,
            "owner": _owner(ds.uid), "cuid": ds.cuid, "cgid": ds.cgid,
            "mode": f"{ds.mode:04o}", "cbytes": ds.cbytes, "qnum": ds.qnum,
            "qbytes": ds.qbytes, "lspid": ds.lspid, "lrpid": ds.lrpid,
            "last_sender": _process_name(ds.lspid), "last_receiver": _process_name(ds.lrpid),
            "stime": ds.stime, "rtime": ds.rtime, "ctime": ds.ctime,
        })
    sets = []
    for semid, sds in list_semaphore_sets():
        try:
            values: Optional[List[int]] = sc.semctl(semid, 0, sc.GETALL)
        except OSError as e:
            if not (gone(e) or e.errno == errno.EACCES):
                raise
            values = None
        sets.append({
            "id": semid, "key": _key(sds.key), "uid": sds.uid, "gid": sds.gid,
            "owner": _owner(sds.uid), "cuid": sds.cuid, "cgid": sds.cgid,
            "mode": f"{sds.mode:04o}", "nsems": sds.nsems, "values": values,
            "otime": sds.otime, "ctime": sds.ctime,
        })
    return {"namespace": namespace_id()[1], "queues": queues, "semaphore_sets": sets}


def cmd_ls(args: argparse.Namespace, out: IO[str]) -> int:
    """``ls``: queues and semaphore sets, like ipcs, with process names and values."""
    with _inside(args.pid):
        data = _ls_data()
    if args.json:
        _print_json({"pid": args.pid, **data}, out)
        return OK
    rows: List[Tuple[str, ...]] = [("key", "msqid", "owner", "perms", "used-bytes",
                                    "messages", "qbytes", "last-sender", "last-receiver")]
    for q in data["queues"]:
        rows.append((q["key"], str(q["id"]), q["owner"], q["mode"][1:], str(q["cbytes"]),
                     str(q["qnum"]), str(q["qbytes"]), _who(q["lspid"]), _who(q["lrpid"])))
    out.write("------ Message Queues --------\n" + _table(rows))
    rows = [("key", "semid", "owner", "perms", "nsems", "values")]
    for s in data["semaphore_sets"]:
        values = "?" if s["values"] is None else " ".join(map(str, s["values"]))
        rows.append((s["key"], str(s["id"]), s["owner"], s["mode"][1:], str(s["nsems"]),
                     values))
    out.write("\n------ Semaphore Arrays --------\n" + _table(rows))
    return OK


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n"
                   for r in rows)


def _peek(msqid: int, index: Optional[int]) -> List[Dict[str, Any]]:
    try:
        sc.msgctl(msqid, sc.IPC_STAT)
    except OSError as e:
        if gone(e):
            raise CliError(f"no message queue with id {msqid}", NOT_FOUND) from None
        if e.errno == errno.EACCES:
            raise CliError(f"no read permission on queue {msqid}", NO_PERMISSION) from None
        raise
    if index is not None:
        try:
            mtype, data = sc.msgrcv(msqid, None, index, sc.MSG_COPY | sc.IPC_NOWAIT)
        except OSError as e:
            if e.errno == errno.ENOMSG:
                raise CliError(f"queue {msqid} has no message at index {index} (it holds "
                               f"{sc.msgctl(msqid, sc.IPC_STAT).qnum})", NOT_FOUND) from None
            raise
        return [{"index": index, "type": mtype, "data": data}]
    return [{"index": i, "type": mtype, "data": data}
            for i, (mtype, data) in enumerate(copy_all(msqid))]


def cmd_peek(args: argparse.Namespace, out: IO[str]) -> int:
    """``peek ID``: a queue's messages, copied with MSG_COPY, as text, hex or JSON."""
    with _inside(args.pid):
        messages = _peek(args.id, args.index)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        docs = []
        for m in messages:
            try:
                text: Optional[str] = m["data"].decode("utf-8")
            except UnicodeDecodeError:
                text = None
            docs.append({"index": m["index"], "type": m["type"], "size": len(m["data"]),
                         "data": base64.b64encode(m["data"]).decode(), "text": text})
        _print_json({"pid": args.pid, "id": args.id, "messages": docs}, out)
        return OK
    for m in messages:
        head = f"[{m['index']}] type {m['type']}, {len(m['data'])} bytes"
        if fmt == "hex":
            out.write("\n".join([head] + _hexdump(m["data"])) + "\n")
        else:
            out.write(f"{head}: {_printable(m['data'])}\n")
    return OK


def _counts(snap: Any) -> Dict[str, int]:
    return {"queues": len(snap.queues), "semaphore_sets": len(snap.semaphore_sets),
            "messages": sum(len(q.messages) for q in snap.queues)}


def cmd_dump(args: argparse.Namespace, out: IO[str]) -> int:
    """``dump``: a snapshot of the namespace, to a file or stdout."""
    if args.freeze and (args.pid is None or shares_namespace(args.pid)):
        raise CliError("--freeze needs the --pid of a process in another IPC namespace "
                       "(freezing our own would stop this process and the whole system)",
                       USAGE)
    snap = snapshot(args.pid, freeze=args.freeze, retries=args.retries,
                    progress=_progress(sys.stderr))
    if args.output in (None, "-"):
        out.write(dumps(snap))
        return OK
    dump(snap, args.output)
    n = _counts(snap)
    if args.json:
        _print_json({"pid": args.pid, "file": args.output, "frozen": snap.frozen, **n}, out)
    else:
        out.write(f"wrote {args.output}: {n['queues']} queue(s) holding {n['messages']} "
                  f"message(s), {n['semaphore_sets']} semaphore set(s)"
                  f"{', frozen by ' + snap.frozen if snap.frozen else ''}\n")
    return OK


def cmd_restore(args: argparse.Namespace, out: IO[str]) -> int:
    """``restore FILE``: recreate a snapshot file's objects, all or nothing."""
    if args.file == "-":
        snap = loads(sys.stdin.buffer.read())
    else:
        snap = load(args.file)
    done = restore(snap, args.pid, set_limits=args.limits, progress=_progress(sys.stderr))
    if args.json:
        _print_json({"pid": args.pid, "queues": list(done.queues),
                     "semaphore_sets": list(done.semaphore_sets)}, out)
    else:
        out.write(f"restored {len(done.queues)} queue(s) {list(done.queues)} and "
                  f"{len(done.semaphore_sets)} semaphore set(s) {list(done.semaphore_sets)}\n")
    return OK


def cmd_semundo(args: argparse.Namespace, out: IO[str]) -> int:
    """``semundo PID``: the process's SEM_UNDO adjustments from its semundo file."""
    with _inside(args.pid):
        try:
            entries = read_semundo(args.process, proc_root=args.proc_root)
        except ValueError as e:
            raise CliError(str(e), FAILED) from None
    if args.json:
        _print_json({"pid": args.pid, "process": args.process, "semundo": [
            {"semid": semid, "adjustments": adjs} for semid, adjs in entries.items()]}, out)
        return OK
    rows: List[Tuple[str, ...]] = [("semid", "adjustments")]
    rows += [(str(semid), " ".join(map(str, adjs))) for semid, adjs in entries.items()]
    out.write(_table(rows))
    return OK


def cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    """``demo``: the README's first command, in the namespace of ``--pid`` if given."""
    with _inside(args.pid):
        return demo(out)


# ---- the parser and the error mapping -------------------------------------------------

def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r} (must be > 0)")
    return pid


def _natural(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _msqid(text: str) -> int:
    n = _natural(text)
    if n > INT_MAX:
        raise argparse.ArgumentTypeError(f"a queue id is 0..{INT_MAX}, got {n}")
    return n


def _index(text: str) -> int:
    n = _natural(text)
    if n > LONG_MAX:
        raise argparse.ArgumentTypeError(f"an index is 0..{LONG_MAX} (MSG_COPY takes it "
                                         f"in a C long), got {n}")
    return n


def _positive(text: str) -> int:
    n = _natural(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise CliError(message, USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ipcbind`` command."""
    epilog = "exit codes:\n" + "\n".join(f"  {c:<4} {text}" for c, text in EXIT_CODES.items())
    parser = _Parser(prog="ipcbind", description=__doc__, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=_pid, default=None,
                        help="act inside the IPC namespace of process PID")
    common = _Parser(add_help=False)
    common.add_argument("--pid", type=_pid, default=argparse.SUPPRESS,
                        help="act inside the IPC namespace of process PID")
    with_json = _Parser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print JSON (see the README)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("ls", parents=[common, with_json],
                       help="list queues and semaphore sets, like ipcs, with process names "
                            "and values")
    p.set_defaults(run=cmd_ls)

    p = sub.add_parser("peek", parents=[common, with_json],
                       help="show a queue's messages without taking them (MSG_COPY)")
    p.add_argument("id", type=_msqid, help="the queue's msqid")
    p.add_argument("--index", type=_index, help="only the message at this 0-based position")
    p.add_argument("--format", choices=("text", "hex", "json"), default="text",
                   help="text (default: UTF-8, escapes for the rest), hex, or json")
    p.set_defaults(run=cmd_peek)

    p = sub.add_parser("dump", parents=[common, with_json],
                       help="snapshot every queue and set to a file (or stdout)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--freeze", action="store_true",
                   help="hold the namespace's processes still while reading (needs --pid "
                        "of a process in another namespace)")
    p.add_argument("--retries", type=_positive, default=COPY_ATTEMPTS,
                   help="reads of a queue that changed meanwhile before giving up "
                        f"(default {COPY_ATTEMPTS})")
    p.set_defaults(run=cmd_dump)

    p = sub.add_parser("restore", parents=[common, with_json],
                       help="recreate a snapshot file's queues and sets, same ids, all or "
                            "nothing")
    p.add_argument("file", help="the snapshot file ('-': stdin)")
    p.add_argument("--limits", action="store_true",
                   help="first set the namespace's limits (msgmax, msgmnb, msgmni, sem) "
                        "from the file")
    p.set_defaults(run=cmd_restore)

    p = sub.add_parser("semundo", parents=[common, with_json],
                       help="a process's SEM_UNDO adjustments from /proc/PID/semundo (a "
                            "kernel file no mainline kernel has: then exit 7, explained)")
    p.add_argument("process", type=_pid, metavar="PID", help="the process to read")
    p.add_argument("--proc-root", default="/proc", metavar="DIR",
                   help="read DIR/PID/semundo (a directory laid out like /proc) instead of /proc")
    p.set_defaults(run=cmd_semundo)

    p = sub.add_parser("demo", parents=[common],
                       help="create a queue, peek at it without consuming, remove it")
    p.set_defaults(run=cmd_demo)
    return parser


def _code_for(e: BaseException) -> int:
    if isinstance(e, NotSupportedError):
        return UNSUPPORTED
    if isinstance(e, SnapshotFormatError):
        return BAD_FILE
    if isinstance(e, RestoreConflictError):
        return CONFLICT
    if isinstance(e, RestoreError):
        return NO_PERMISSION if isinstance(e.__cause__, PermissionError) else FAILED
    if isinstance(e, PermissionError):
        return NO_PERMISSION
    if isinstance(e, (ProcessLookupError, FileNotFoundError)):
        return NOT_FOUND
    return FAILED


def _message(e: BaseException) -> str:
    if isinstance(e, NotSupportedError) and "msgrcv" in str(e.strerror):
        return (f"{e.strerror}: this kernel has no MSG_COPY (it needs "
                "CONFIG_CHECKPOINT_RESTORE)")
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"no such file: {e.filename}"
    if isinstance(e, OSError) and e.strerror:
        name = os.fsdecode(e.filename) if e.filename else ""
        return f"{name}: {e.strerror}" if name and name not in e.strerror else e.strerror
    return str(e)


def main(argv: Optional[List[str]] = None, out: Optional[IO[str]] = None) -> int:
    """Run the command line; returns the exit code (see :data:`EXIT_CODES`)."""
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
        if not hasattr(args, "json"):
            args.json = False
        return int(args.run(args, out))
    except CliError as e:
        print(f"ipcbind: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("ipcbind: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (ipcbind ls | head): nothing left to tell it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return FAILED
    except (OSError, ValueError, RestoreError, QueueChangedError, FreezeError,
            NamespaceReturnError) as e:
        print(f"ipcbind: error: {_message(e)}", file=sys.stderr)
        return _code_for(e)


if __name__ == "__main__":
    sys.exit(main())
