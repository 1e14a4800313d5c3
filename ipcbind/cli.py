"""The ipcbind command line: list, inspect, make, remove, use, dump and restore System V
IPC objects (message queues, semaphore sets, shared memory segments).

Every command takes --pid PID to act inside that process's IPC namespace;
commands that print data take --json. Errors are one line on stderr and an
exit code, listed below.
"""

from __future__ import annotations

import argparse
import base64
import errno
import grp
import io
import json
import os
import pwd
import signal
import sys
import textwrap
import threading
import warnings
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import psutil

from . import __version__
from . import syscalls as sc
from ._limits import C_RANGES, INT_MAX, KEY_MASK, LONG_MAX, SEMVMX, unsigned_key
from .errors import CliError, NoMessageError, NotSupportedError, QueueChangedError, gone
from .msg import COPY_ATTEMPTS, MessageQueue, copy_all
from .namespace import (NamespaceReturnError, enter_namespace, list_queues,
                        list_segments, list_semaphore_sets, namespace_id, shares_namespace)
from .semundo import read_semundo
from .snapshot import (DEFAULT_MAX_SIZE, FreezeError, FreezeWarning, RestoreConflictError,
                       RestoreError, SegmentLeftOutWarning, SnapshotFormatError, blocked_semops,
                       dump, dumps, load, restore, snapshot)
from .snapshot.capture import _copy_limited
from .syscalls import MsqidDs, SemidDs, ShmidDs

JSON_VERSION = 1
"""The ``version`` field of every JSON document the commands print."""

(OK, FAILED, USAGE, NOT_FOUND, NO_PERMISSION, BAD_FILE, CONFLICT, UNSUPPORTED, WOULD_WAIT,
 INTERRUPTED, TERMINATED) = (0, 1, 2, 3, 4, 5, 6, 7, 8, 130, 143)
EXIT_CODES = {
    OK: "success",
    FAILED: "the operation failed (a restore that was rolled back, unless for a missing "
            "privilege, which is 4; a queue that kept changing, a freeze that failed or was "
            "refused, a malformed semundo file, any other system error)",
    USAGE: "bad command line (unknown command or option, bad number, --freeze without "
           "the --pid of another namespace)",
    NOT_FOUND: "no such queue, semaphore set, segment, key, message index, semaphore, "
               "process or file",
    NO_PERMISSION: "permission denied, also a restore rolled back for a missing privilege "
                   "(the message says which privilege is missing)",
    BAD_FILE: "the snapshot file is damaged, foreign or of an unknown version",
    CONFLICT: "refused: the namespace already has an object with that id or key (restore, "
              "mk --key)",
    UNSUPPORTED: "the kernel does not provide it (/proc/<pid>/semundo on any mainline kernel, "
                 "MSG_COPY without CONFIG_CHECKPOINT_RESTORE)",
    WOULD_WAIT: "it would have to wait: receive or semop with --nowait found no message or "
                "could not proceed, or its --timeout expired; send with --nowait found the "
                "queue full",
    INTERRUPTED: "interrupted (Ctrl-C); anything frozen was thawed, a restore was undone",
    TERMINATED: "terminated (SIGTERM), handled as Ctrl-C",
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


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


TIME_FORMATS = ("short", "full", "iso")
"""The ``--time-format`` choices, as lsipc names them."""


def _when(t: int, fmt: str) -> str:
    """An epoch time as lsipc prints it, in local time; ``-`` for never (0)."""
    if t == 0:
        return "-"
    at = datetime.fromtimestamp(t).astimezone()
    if fmt == "iso":
        return at.isoformat()
    if fmt == "full":
        return at.strftime(f"%a %b {at.day:2d} %H:%M:%S %Y")
    now = datetime.now().astimezone()
    if at.date() == now.date():
        return at.strftime("%H:%M")
    return at.strftime("%b%d" if at.year == now.year else "%Y-%b%d")


def _identity(ds: Any) -> Dict[str, Any]:
    """The fields every kind has: key, owner and creator with their names, mode."""
    return {"key": _key(ds.key), "uid": ds.uid, "gid": ds.gid, "owner": _owner(ds.uid),
            "group": _group(ds.gid), "cuid": ds.cuid, "cgid": ds.cgid,
            "cuser": _owner(ds.cuid), "cgroup": _group(ds.cgid), "mode": f"{ds.mode:04o}"}


def _times(ds: Any, *names: str) -> Dict[str, Any]:
    """Each time as epoch seconds (0: never) and beside it as an ISO string (null: never)."""
    doc: Dict[str, Any] = {}
    for name in names:
        t = getattr(ds, name)
        doc[name] = t
        doc[name + "_iso"] = _when(t, "iso") if t else None
    return doc


def _perms(mode: str) -> str:
    """``0640`` as ``rw-r-----``, as lsipc shows permissions."""
    bits = int(mode, 8)
    return "".join(c if bits & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))


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


def _hexdump(data: bytes, start: int = 0) -> List[str]:
    """Lines of 16 bytes each, numbered by their offset plus ``start``."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at:at + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {start + at:06x}  {hexes:<47}  {ascii_}")
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

@contextmanager
def _about(kind: str, ident: int) -> Iterator[None]:
    """Says which object a refusal was about: a removed or unknown id, or no permission."""
    try:
        yield
    except OSError as e:
        if gone(e):
            raise CliError(f"no {_KIND_NAMES[kind]} with id {ident}", NOT_FOUND) from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise CliError(f"{_KIND_NAMES[kind]} {ident}: {e.strerror}", NO_PERMISSION) from None
        raise


_KIND_NAMES = {"queue": "message queue", "set": "semaphore set",
               "segment": "shared memory segment"}


def _queue_doc(msqid: int, ds: MsqidDs) -> Dict[str, Any]:
    return {"id": msqid, **_identity(ds), "cbytes": ds.cbytes, "qnum": ds.qnum,
            "qbytes": ds.qbytes, "lspid": ds.lspid, "lrpid": ds.lrpid,
            "last_sender": _process_name(ds.lspid), "last_receiver": _process_name(ds.lrpid),
            **_times(ds, "stime", "rtime", "ctime")}


def _set_doc(semid: int, sds: SemidDs, detail: bool = False) -> Dict[str, Any]:
    try:
        values: Optional[List[int]] = sc.semctl(semid, 0, sc.GETALL)
    except OSError as e:
        if not (gone(e) or e.errno == errno.EACCES):
            raise
        values = None
    doc = {"id": semid, **_identity(sds), "nsems": sds.nsems, "values": values,
           **_times(sds, "otime", "ctime")}
    if detail:
        doc["semaphores"] = None if values is None else [
            _semaphore(semid, n, value) for n, value in enumerate(values)]
    return doc


def _semaphore(semid: int, semnum: int, value: int) -> Dict[str, Any]:
    """What ``ipcs -s -i`` shows of one semaphore, beside the value read with the others."""
    pid = sc.semctl(semid, semnum, sc.GETPID)
    return {"semnum": semnum, "value": value, "pid": pid, "process": _process_name(pid),
            "ncnt": sc.semctl(semid, semnum, sc.GETNCNT),
            "zcnt": sc.semctl(semid, semnum, sc.GETZCNT)}


def _ls_data(kinds: Sequence[str]) -> Dict[str, Any]:
    data: Dict[str, Any] = {"namespace": namespace_id()[1]}
    if "queue" in kinds:
        data["queues"] = [_queue_doc(msqid, ds) for msqid, ds in list_queues()]
    if "set" in kinds:
        data["semaphore_sets"] = [_set_doc(semid, sds) for semid, sds in list_semaphore_sets()]
    if "segment" in kinds:
        data["segments"] = [_segment_doc(shmid, ds) for shmid, ds in list_segments()]
    return data


_LISTINGS: Dict[str, Callable[[], Sequence[Tuple[int, Any]]]] = {
    "queue": list_queues, "set": list_semaphore_sets, "segment": list_segments}


def _stat(kind: str, ident: int) -> Any:
    """IPC_STAT of one object; without read permission, what the listing (*_STAT_ANY)
    shows of it, as ``ls`` does."""
    try:
        if kind == "queue":
            return sc.msgctl(ident, sc.IPC_STAT)
        if kind == "segment":
            return sc.shmctl(ident, sc.IPC_STAT)
        return sc.semctl(ident, 0, sc.IPC_STAT)
    except PermissionError:
        for i, ds in _LISTINGS[kind]():
            if i == ident:
                return ds
        raise


def _one(kind: str, ident: int) -> Dict[str, Any]:
    """One object in full, by id."""
    with _about(kind, ident):
        ds = _stat(kind, ident)
        if kind == "queue":
            return _queue_doc(ident, ds)
        if kind == "segment":
            return _segment_doc(ident, ds)
        return _set_doc(ident, ds, detail=True)


def cmd_ls(args: argparse.Namespace, out: IO[str]) -> int:
    """``ls``: queues, semaphore sets and segments, like ipcs, with process names, values and
    times; ``ls -q|-s|-m -i ID``: one of them in full."""
    if args.id is not None and args.kind is None:
        raise CliError("-i ID needs the kind: -q (queue), -s (semaphore set) or -m (segment)",
                       USAGE)
    kinds = (args.kind,) if args.kind else ("queue", "set", "segment")
    with _inside(args.pid):
        if args.id is not None:
            doc = _one(args.kind, args.id)
        else:
            data = _ls_data(kinds)
    if args.id is not None:
        if args.json:
            _print_json({"pid": args.pid, "kind": args.kind, **doc}, out)
        else:
            out.write(_detail(args.kind, doc, args.time_format or "full"))
        return OK
    if args.json:
        _print_json({"pid": args.pid, **data}, out)
        return OK
    fmt = args.time_format or "short"
    names = _NAME_COLUMNS[:3 * args.creator]
    sections = []
    if "queues" in data:
        rows: List[Tuple[str, ...]] = [(
            "key", "msqid", "owner", *names, "perms", "used-bytes", "messages", "qbytes",
            "last-sender", "last-receiver", "send", "recv", "change")]
        for q in data["queues"]:
            rows.append((q["key"], str(q["id"]), q["owner"], *_names(q, args.creator),
                         q["mode"][1:], str(q["cbytes"]), str(q["qnum"]), str(q["qbytes"]),
                         _who(q["lspid"]), _who(q["lrpid"]), _when(q["stime"], fmt),
                         _when(q["rtime"], fmt), _when(q["ctime"], fmt)))
        sections.append("------ Message Queues --------\n" + _table(rows))
    if "semaphore_sets" in data:
        rows = [("key", "semid", "owner", *names, "perms", "nsems", "last-op", "change",
                 "values")]
        for s in data["semaphore_sets"]:
            values = "?" if s["values"] is None else " ".join(map(str, s["values"]))
            rows.append((s["key"], str(s["id"]), s["owner"], *_names(s, args.creator),
                         s["mode"][1:], str(s["nsems"]), _when(s["otime"], fmt),
                         _when(s["ctime"], fmt), values))
        sections.append("------ Semaphore Arrays --------\n" + _table(rows))
    if "segments" in data:
        sections.append("------ Shared Memory Segments --------\n" +
                        _segments_table(data["segments"], fmt, args.creator))
    out.write("\n".join(sections))
    return OK


_NAME_COLUMNS = ("group", "cuser", "cgroup")
"""The columns ``ls -c`` adds after the owner, named as lsipc names them."""


def _names(doc: Dict[str, Any], wanted: bool) -> Tuple[str, ...]:
    return (doc["group"], doc["cuser"], doc["cgroup"]) if wanted else ()


def _detail(kind: str, doc: Dict[str, Any], fmt: str) -> str:
    """One object as label and value lines, lsipc's ``-i`` view with ipcs's per-semaphore table."""
    lines = [("key", doc["key"]), ("id", str(doc["id"])),
             ("perms", f"{doc['mode'][1:]} ({_perms(doc['mode'])})"),
             ("owner", f"{doc['owner']} (uid {doc['uid']})"),
             ("group", f"{doc['group']} (gid {doc['gid']})"),
             ("creator user", f"{doc['cuser']} (uid {doc['cuid']})"),
             ("creator group", f"{doc['cgroup']} (gid {doc['cgid']})")]
    if kind == "queue":
        lines += [("used bytes", str(doc["cbytes"])), ("messages", str(doc["qnum"])),
                  ("qbytes", str(doc["qbytes"])), ("last sender", _who(doc["lspid"])),
                  ("last receiver", _who(doc["lrpid"])), ("last send", _when(doc["stime"], fmt)),
                  ("last receive", _when(doc["rtime"], fmt))]
    elif kind == "segment":
        lines += [("bytes", str(doc["size"])), ("attached", str(doc["nattch"])),
                  ("status", _status(doc)), ("creator process", _who(doc["cpid"])),
                  ("last process", _who(doc["lpid"])), ("last attach", _when(doc["atime"], fmt)),
                  ("last detach", _when(doc["dtime"], fmt))]
    else:
        lines += [("semaphores", str(doc["nsems"])), ("last op", _when(doc["otime"], fmt))]
    lines.append(("last change", _when(doc["ctime"], fmt)))
    width = max(len(label) for label, _ in lines) + 2
    text = "".join(f"{label + ':':<{width}}{value}\n" for label, value in lines)
    if kind == "set":
        if doc["semaphores"] is None:
            return text + "values: ? (unreadable)\n"
        rows: List[Tuple[str, ...]] = [("semnum", "value", "ncount", "zcount", "pid")]
        rows += [(str(m["semnum"]), str(m["value"]), str(m["ncnt"]), str(m["zcnt"]),
                  _who(m["pid"])) for m in doc["semaphores"]]
        text += "\n" + _table(rows)
    return text


def _info_data() -> Dict[str, Any]:
    """Limits (IPC_INFO) and usage (MSG_INFO, SEM_INFO, SHM_INFO) of each kind, as ipcs -l
    and -u."""
    _, ml = sc.msgctl(0, sc.IPC_INFO)
    _, mu = sc.msgctl(0, sc.MSG_INFO)
    _, sl = sc.semctl(0, 0, sc.IPC_INFO)
    _, su = sc.semctl(0, 0, sc.SEM_INFO)
    _, hl = sc.shmctl(0, sc.IPC_INFO)
    _, hu = sc.shmctl(0, sc.SHM_INFO)
    return {
        "namespace": namespace_id()[1],
        "queues": {
            "limits": {"msgmni": ml.msgmni, "msgmax": ml.msgmax, "msgmnb": ml.msgmnb},
            "usage": {"queues": mu.msgpool, "messages": mu.msgmap, "bytes": mu.msgtql}},
        "semaphore_sets": {
            "limits": {"semmni": sl.semmni, "semmns": sl.semmns, "semmsl": sl.semmsl,
                       "semopm": sl.semopm, "semvmx": sl.semvmx},
            "usage": {"sets": su.semusz, "semaphores": su.semaem}},
        "segments": {
            "limits": {"shmmni": hl.shmmni, "shmall": hl.shmall, "shmmax": hl.shmmax,
                       "shmmin": hl.shmmin},
            "usage": {"segments": hu.used_ids, "pages": hu.shm_tot, "resident": hu.shm_rss,
                      "swapped": hu.shm_swp}},
    }


# Each limit as lsipc -g lists it: its description, and what of the usage counts against it.
_LIMIT_ROWS = (
    ("queues", "msgmni", "number of message queues", "queues"),
    ("queues", "msgmax", "max size of a message (bytes)", None),
    ("queues", "msgmnb", "default max size of a queue (bytes)", None),
    ("segments", "shmmni", "number of shared memory segments", "segments"),
    ("segments", "shmall", "shared memory pages", "pages"),
    ("segments", "shmmax", "max size of a segment (bytes)", None),
    ("segments", "shmmin", "min size of a segment (bytes)", None),
    ("semaphore_sets", "semmni", "number of semaphore sets", "sets"),
    ("semaphore_sets", "semmns", "total number of semaphores", "semaphores"),
    ("semaphore_sets", "semmsl", "max semaphores per set", None),
    ("semaphore_sets", "semopm", "max operations per semop call", None),
    ("semaphore_sets", "semvmx", "max semaphore value", None),
)


def cmd_info(args: argparse.Namespace, out: IO[str]) -> int:
    """``info``: each kind's limits and usage, as ipcs -l, ipcs -u and lsipc -g."""
    with _inside(args.pid):
        data = _info_data()
    if args.json:
        _print_json({"pid": args.pid, **data}, out)
        return OK
    rows: List[Tuple[str, ...]] = [("resource", "description", "limit", "used", "use%")]
    for kind, name, description, counted in _LIMIT_ROWS:
        limit = data[kind]["limits"][name]
        if counted is None:
            used, share = "-", "-"
        else:
            n = data[kind]["usage"][counted]
            used, share = str(n), f"{100 * n / limit:.2f}%" if limit else "-"
        rows.append((name.upper(), description, str(limit), used, share))
    q, m = data["queues"]["usage"], data["segments"]["usage"]
    out.write(_table(rows) +
              f"\nqueued: {q['messages']} message(s), {q['bytes']} byte(s)\n"
              f"segment pages: {m['resident']} resident, {m['swapped']} swapped\n")
    return OK


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n"
                   for r in rows)


def _peek(msqid: int, index: Optional[int]) -> List[Dict[str, Any]]:
    with _about("queue", msqid):
        sc.msgctl(msqid, sc.IPC_STAT)
    try:
        if index is not None:
            try:
                mtype, data = sc.msgrcv(msqid, None, index, sc.MSG_COPY | sc.IPC_NOWAIT)
            except OSError as e:
                if e.errno == errno.ENOMSG:
                    raise CliError(f"queue {msqid} has no message at index {index} (it "
                                   f"holds {sc.msgctl(msqid, sc.IPC_STAT).qnum})",
                                   NOT_FOUND) from None
                raise
            return [{"index": index, "type": mtype, "data": data}]
        return [{"index": i, "type": mtype, "data": data}
                for i, (mtype, data) in enumerate(copy_all(msqid))]
    except OSError as e:
        better = _copy_limited(msqid, e)
        if better is e:
            raise
        raise better from None


def _message_doc(index: Optional[int], mtype: int, data: bytes) -> Dict[str, Any]:
    """A message in JSON: base64 data, and the text where it is UTF-8."""
    try:
        text: Optional[str] = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    doc: Dict[str, Any] = {} if index is None else {"index": index}
    return {**doc, "type": mtype, "size": len(data), "data": base64.b64encode(data).decode(),
            "text": text}


def cmd_peek(args: argparse.Namespace, out: IO[str]) -> int:
    """``peek ID``: a queue's messages, copied with MSG_COPY, as text, hex or JSON."""
    if args.json and args.format not in (None, "json"):
        raise CliError(f"--json and --format {args.format} conflict: give one", USAGE)
    if args.segment:
        return _peek_segment(args, out)
    if args.offset or args.length is not None:
        raise CliError("--offset and --length are for segments (--segment)", USAGE)
    with _inside(args.pid):
        messages = _peek(args.id, args.index)
    fmt = "json" if args.json else args.format or "text"
    if fmt == "json":
        docs = [_message_doc(m["index"], m["type"], m["data"]) for m in messages]
        _print_json({"pid": args.pid, "id": args.id, "messages": docs}, out)
        return OK
    if not messages:
        out.write(f"queue {args.id} is empty\n")
    for m in messages:
        head = f"[{m['index']}] type {m['type']}, {len(m['data'])} bytes"
        if fmt == "hex":
            out.write("\n".join([head] + _hexdump(m["data"])) + "\n")
        else:
            out.write(f"{head}: {_printable(m['data'])}\n")
    return OK


# ---- shared memory segments in ls and peek --------------------------------------------

def _segment_doc(shmid: int, ds: ShmidDs) -> Dict[str, Any]:
    return {"id": shmid, **_identity(ds), "size": ds.segsz, "nattch": ds.nattch,
            "cpid": ds.cpid, "lpid": ds.lpid, "creator": _process_name(ds.cpid),
            "last_process": _process_name(ds.lpid), "dest": ds.dest, "locked": ds.locked,
            **_times(ds, "atime", "dtime", "ctime")}


def _status(doc: Dict[str, Any]) -> str:
    return ",".join(word for word in ("dest", "locked") if doc[word]) or "-"


def _segments_table(segments: List[Dict[str, Any]], fmt: str, creator: bool) -> str:
    rows: List[Tuple[str, ...]] = [("key", "shmid", "owner", *_NAME_COLUMNS[:3 * creator],
                                    "perms", "bytes", "nattch", "status", "creator", "last-op",
                                    "attached", "detached", "changed")]
    for m in segments:
        rows.append((m["key"], str(m["id"]), m["owner"], *_names(m, creator), m["mode"][1:],
                     str(m["size"]), str(m["nattch"]), _status(m), _who(m["cpid"]),
                     _who(m["lpid"]), _when(m["atime"], fmt), _when(m["dtime"], fmt),
                     _when(m["ctime"], fmt)))
    return _table(rows)


_PEEK_BYTES = 256
"""How many bytes ``peek --segment`` shows when no ``--length`` is given."""


def _segment_bytes(shmid: int, offset: int, length: Optional[int]) -> Tuple[int, bytes]:
    """``(size, bytes)`` of a segment from ``offset``, read through a read-only attach."""
    try:
        att = sc.shmat(shmid, sc.SHM_RDONLY)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EIDRM):
            raise CliError(f"no shared memory segment with id {shmid}", NOT_FOUND) from None
        if e.errno == errno.EACCES:
            raise CliError(f"no read permission on segment {shmid}", NO_PERMISSION) from None
        raise
    with att:
        size = len(att)
        if offset > size:
            raise CliError(f"--offset {offset} is past the end of segment {shmid} "
                           f"({size} bytes)", NOT_FOUND)
        if length is None:
            length = min(size - offset, _PEEK_BYTES)
        elif offset + length > size:
            raise CliError(f"--length {length} from offset {offset} is past the end of "
                           f"segment {shmid} ({size} bytes)", NOT_FOUND)
        return size, att[offset:offset + length]


def _peek_segment(args: argparse.Namespace, out: IO[str]) -> int:
    """``peek --segment ID``: a segment's bytes from ``--offset``, hex or JSON."""
    if args.index is not None:
        raise CliError("--index is for queues; a segment takes --offset and --length", USAGE)
    with _inside(args.pid):
        size, data = _segment_bytes(args.id, args.offset, args.length)
    if args.json or args.format == "json":
        _print_json({"pid": args.pid, "id": args.id, "segment": True, "size": size,
                     "offset": args.offset, "length": len(data),
                     "data": base64.b64encode(data).decode()}, out)
        return OK
    head = f"segment {args.id}, {size} bytes: {len(data)} from offset {args.offset}"
    rest = size - args.offset - len(data)
    tail = [f"  ... {rest} more (--length, --offset)"] if rest and args.length is None else []
    out.write("\n".join([head] + _hexdump(data, args.offset) + tail) + "\n")
    return OK


def _counts(snap: Any) -> Dict[str, int]:
    return {"queues": len(snap.queues), "semaphore_sets": len(snap.semaphore_sets),
            "messages": sum(len(q.messages) for q in snap.queues),
            "segments": len(snap.segments), "segment_bytes": sum(m.size for m in snap.segments),
            "segments_left_out": len(snap.segments_left_out)}


def _is_stdout(path: str) -> bool:
    try:
        st, ours = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)


def cmd_dump(args: argparse.Namespace, out: IO[str]) -> int:
    """``dump``: a snapshot of the namespace, to a file or stdout."""
    if args.freeze and (args.pid is None or shares_namespace(args.pid)):
        raise CliError("--freeze needs the --pid of a process in another IPC namespace "
                       "(freezing our own would stop this process and the whole system)",
                       USAGE)
    if args.interrupt_blocked_semops:
        if not args.freeze:
            raise CliError("--interrupt-blocked-semops goes with --freeze", USAGE)
        for b in blocked_semops(args.pid):
            print(f"ipcbind: freezing anyway: {b} fails with EINTR", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FreezeWarning)
        warnings.simplefilter("always", SegmentLeftOutWarning)
        snap = snapshot(args.pid, freeze=args.freeze, retries=args.retries,
                        progress=_progress(sys.stderr),
                        interrupt_blocked_semops=args.interrupt_blocked_semops)
    for w in caught:
        if issubclass(w.category, (FreezeWarning, SegmentLeftOutWarning)):
            print(f"ipcbind: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if args.output in (None, "-"):
        out.write(dumps(snap))
        return OK
    dump(snap, args.output)
    if _is_stdout(args.output):
        out = sys.stderr  # the summary must not land in the snapshot file
    n = _counts(snap)
    if args.json:
        _print_json({"pid": args.pid, "file": args.output, "frozen": snap.frozen, **n}, out)
    else:
        out.write(f"wrote {args.output}: {n['queues']} queue(s) holding {n['messages']} "
                  f"message(s), {n['semaphore_sets']} semaphore set(s), {n['segments']} "
                  f"segment(s) holding {n['segment_bytes']} byte(s)"
                  f"{', frozen by ' + snap.frozen if snap.frozen else ''}\n")
    return OK


@contextmanager
def _signals_blocked(for_good: bool) -> Iterator[List[int]]:
    """SIGINT and SIGTERM blocked in the block; the list gets those that came meanwhile.

    They are taken off the pending set at the end, so that one that came as a restore
    was completing or being undone is reported, not delivered. ``for_good``: they stay
    blocked after the block, as the process is about to exit (a signal as it exits
    would kill it without a word, and with an exit status that says the restore failed).
    """
    held = {signal.SIGINT, signal.SIGTERM}
    came: List[int] = []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield came
    finally:
        while signal.sigpending() & held:
            came.append(signal.sigwait(signal.sigpending() & held))
        if not for_good:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def cmd_restore(args: argparse.Namespace, out: IO[str]) -> int:
    """``restore FILE``: recreate a snapshot file's objects, all or nothing."""
    if (args.pid is None) == (not args.own_namespace):
        raise CliError("restore needs exactly one target: --pid PID (the IPC namespace of "
                       "that process) or --own-namespace (this process's own, often the "
                       "host's)", USAGE)
    if args.file == "-" and sys.stdin is None:
        raise CliError("restore: stdin is closed; give the snapshot file's path", USAGE)
    snap = load(sys.stdin.buffer if args.file == "-" else args.file, max_size=args.max_size)
    inode = namespace_id(args.pid)[1]
    where = (f"the IPC namespace of pid {args.pid}" if args.pid is not None
             else "this process's own IPC namespace") + f" (ipc:[{inode}])"
    with _signals_blocked(args.exits_after) as late:
        done = restore(snap, args.pid, set_limits=args.limits, progress=_progress(sys.stderr))
        if args.json:
            _print_json({"pid": args.pid, "namespace": inode, "queues": list(done.queues),
                         "semaphore_sets": list(done.semaphore_sets),
                         "segments": list(done.segments), "cleaned": list(done.cleaned)}, out)
        else:
            if done.cleaned:
                out.write(f"cleaned up after a killed restore: removed "
                          f"{', '.join(done.cleaned)}\n")
            out.write(f"restored into {where}: {len(done.queues)} queue(s) "
                      f"{list(done.queues)}, {len(done.semaphore_sets)} semaphore set(s) "
                      f"{list(done.semaphore_sets)} and {len(done.segments)} segment(s) "
                      f"{list(done.segments)}\n")
        out.flush()
    for sig in dict.fromkeys(late):
        print(f"ipcbind: {signal.Signals(sig).name} came after the restore had completed; "
              "the restored objects stay", file=sys.stderr)
    return OK


# ---- making, removing, sending, receiving, operating ----------------------------------

_LIMITS_OF = {"queue": "MSGMNI", "set": "SEMMNI or SEMMNS", "segment": "SHMMNI or SHMALL"}


def _create(args: argparse.Namespace) -> int:
    kind, key = args.kind, args.key
    flags = sc.IPC_CREAT | args.mode | (sc.IPC_EXCL if key != sc.IPC_PRIVATE else 0)
    try:
        if kind == "queue":
            return sc.msgget(key, flags)
        if kind == "segment":
            return sc.shmget(key, args.size, flags)
        return sc.semget(key, args.nsems, flags)
    except FileExistsError:
        raise CliError(f"a {_KIND_NAMES[kind]} with key {_key(key)} exists already",
                       CONFLICT) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CliError(f"no room for another {_KIND_NAMES[kind]}: {_LIMITS_OF[kind]} "
                           "reached (ipcbind info shows the limits)", FAILED) from None
        if e.errno == errno.EINVAL and kind != "queue":
            size, limit = ((f"{args.size} bytes", "SHMMIN..SHMMAX") if kind == "segment" else
                           (f"{args.nsems} semaphores", "SEMMSL"))
            raise CliError(f"a {_KIND_NAMES[kind]} of {size} is beyond {limit} (ipcbind info "
                           "shows the limits)", FAILED) from None
        raise


def cmd_mk(args: argparse.Namespace, out: IO[str]) -> int:
    """``mk queue|set|segment``: a new object, as ipcmk makes them."""
    if args.kind == "set" and args.values is not None and len(args.values) != args.nsems:
        raise CliError(f"--values gives {len(args.values)} value(s) for {args.nsems} "
                       "semaphore(s)", USAGE)
    with _inside(args.pid):
        ident = _create(args)
        try:
            if args.kind == "queue" and args.qbytes is not None:
                sc.msgctl(ident, sc.IPC_SET, {"qbytes": args.qbytes})
            if args.kind == "set" and args.values is not None:
                sc.semctl(ident, 0, sc.SETALL, args.values)
        except BaseException:
            _remove(args.kind, ident)  # nothing half made is left behind
            raise
    if args.json:
        _print_json({"pid": args.pid, "kind": args.kind, "id": ident, "key": _key(args.key),
                     "mode": f"{args.mode:04o}"}, out)
    else:
        out.write(f"created {_KIND_NAMES[args.kind]} {ident} (key {_key(args.key)}, "
                  f"mode {args.mode:04o})\n")
    return OK


def _remove(kind: str, ident: int) -> None:
    if kind == "queue":
        sc.msgctl(ident, sc.IPC_RMID)
    elif kind == "segment":
        sc.shmctl(ident, sc.IPC_RMID)
    else:
        sc.semctl(ident, 0, sc.IPC_RMID)


def _id_of(kind: str, key: int) -> int:
    try:
        if kind == "queue":
            return sc.msgget(key, 0)
        if kind == "segment":
            return sc.shmget(key, 0, 0)
        return sc.semget(key, 0, 0)
    except FileNotFoundError:
        raise CliError(f"no {_KIND_NAMES[kind]} with key {_key(key)}", NOT_FOUND) from None


def cmd_rm(args: argparse.Namespace, out: IO[str]) -> int:
    """``rm queue|set|segment ID... [--key KEY]...``: remove objects, as ipcrm; every one
    named is tried, and the first failure decides the exit code."""
    if not args.ids and not args.keys:
        raise CliError(f"rm {args.kind}: name at least one ID or --key KEY", USAGE)
    removed: List[int] = []
    code = OK
    with _inside(args.pid):
        wanted: List[Tuple[str, int]] = [("id", i) for i in args.ids]
        wanted += [("key", k) for k in args.keys]
        for how, value in wanted:
            try:
                ident = value if how == "id" else _id_of(args.kind, value)
                with _about(args.kind, ident):
                    _remove(args.kind, ident)
                removed.append(ident)
            except CliError as e:
                print(f"ipcbind: error: {e}", file=sys.stderr)
                code = code or e.code
    if args.json:
        _print_json({"pid": args.pid, "kind": args.kind, "removed": removed}, out)
    else:
        out.writelines(f"removed {_KIND_NAMES[args.kind]} {i}\n" for i in removed)
    return code


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CliError(f"--hex: not hexadecimal digits in pairs: {text[:40]!r}", USAGE) from None


def _input(args: argparse.Namespace) -> List[bytes]:
    """The messages to send: one per DATA argument, else the whole of --file or stdin."""
    if args.data and args.file is not None:
        raise CliError("send: give DATA arguments or --file, not both", USAGE)
    if args.data:
        texts = [os.fsencode(d) for d in args.data]
    elif args.file in (None, "-"):
        if sys.stdin is None:
            raise CliError("send: stdin is closed; give DATA arguments or --file", USAGE)
        texts = [sys.stdin.buffer.read()]
    else:
        with open(args.file, "rb") as f:
            texts = [f.read()]
    return [_unhex(t.decode("ascii", "replace")) for t in texts] if args.hex else texts


def cmd_send(args: argparse.Namespace, out: IO[str]) -> int:
    """``send ID [DATA...]``: each DATA as one message, or stdin or --file as one."""
    messages = _input(args)
    sent: List[Dict[str, int]] = []
    with _inside(args.pid), _about("queue", args.id):
        q = MessageQueue.from_id(args.id)
        for data in messages:
            try:
                q.send(data, args.type, block=not args.nowait, timeout=args.timeout)
            except (BlockingIOError, TimeoutError):
                raise CliError(f"queue {args.id} is full ({len(sent)} of {len(messages)} "
                               "message(s) sent)", WOULD_WAIT) from None
            except ValueError as e:
                raise CliError(str(e), FAILED) from None
            sent.append({"type": args.type, "size": len(data)})
    if args.json:
        _print_json({"pid": args.pid, "id": args.id, "sent": sent}, out)
    return OK


def cmd_receive(args: argparse.Namespace, out: IO[str]) -> int:
    """``receive ID``: take one message; its bytes as they are, or --hex, or --json."""
    if args.except_type and args.type <= 0:
        raise CliError("--except needs --type N with N > 0", USAGE)
    with _inside(args.pid), _about("queue", args.id):
        try:
            m = MessageQueue.from_id(args.id).receive(
                args.type, block=not args.nowait, timeout=args.timeout,
                except_type=args.except_type)
        except (NoMessageError, TimeoutError):
            which = f" of type {'other than ' if args.except_type else ''}{args.type}" \
                if args.type else ""
            why = "" if args.nowait else f" within {args.timeout} s"
            raise CliError(f"no message{which} in queue {args.id}{why}", WOULD_WAIT) from None
    try:
        if args.json:
            _print_json({"pid": args.pid, "id": args.id,
                         **_message_doc(None, m.mtype, m.data)}, out)
        elif args.hex:
            out.write(m.data.hex() + "\n")
        else:
            _write_bytes(out, m.data)
        out.flush()
    except OSError as e:
        _give_back(args, out, m.mtype, m.data, e)
    return OK


def _give_back(args: argparse.Namespace, out: IO[str], mtype: int, data: bytes,
               e: OSError) -> None:
    """A message taken but not written out goes back to its queue (at its end, the
    only place msgsnd puts one); if even that fails, stderr gets it."""
    if out is sys.stdout:
        _drop_stdout()
    why = e.strerror or type(e).__name__
    try:
        with _inside(args.pid):
            MessageQueue.from_id(args.id).send(data, mtype, block=False)
    except OSError as again:
        raise CliError(f"could not write the message ({why}), nor send it back to queue "
                       f"{args.id} ({again.strerror}): type {mtype}, {data.hex() or 'empty'}",
                       FAILED) from None
    raise CliError(f"could not write the message ({why}); it was sent back to queue "
                   f"{args.id}, at its end", FAILED) from None


def _write_bytes(out: IO[str], data: bytes) -> None:
    """Bytes unchanged to a stream's binary side (a text-only stream gets them decoded)."""
    binary = getattr(out, "buffer", None)
    if binary is None:
        out.write(data.decode("utf-8", "surrogateescape"))
        return
    out.flush()
    binary.write(data)
    binary.flush()


def _semop_arg(text: str) -> Tuple[int, int]:
    semnum, sep, op = text.partition(":")
    try:
        if not sep:
            raise ValueError
        pair = (int(semnum), int(op))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not SEMNUM:OP (as 0:-1): {text!r}") from None
    lo, hi = C_RANGES["unsigned short"][1], C_RANGES["short"]
    if not 0 <= pair[0] <= lo or not hi[0] <= pair[1] <= hi[1]:
        raise argparse.ArgumentTypeError(f"SEMNUM is 0..{lo} and OP {hi[0]}..{hi[1]}, got "
                                         f"{text!r}")
    return pair


def cmd_semop(args: argparse.Namespace, out: IO[str]) -> int:
    """``semop ID SEMNUM:OP...``: the operations at once, all or none, as semop(2)."""
    flags = sc.IPC_NOWAIT if args.nowait else 0
    ops = [(n, op, flags) for n, op in args.ops]
    with _inside(args.pid), _about("set", args.id):
        try:
            sc.semop(args.id, ops, timeout=args.timeout)
        except BlockingIOError:
            why = "it would have to wait" if args.nowait else f"not done within {args.timeout} s"
            raise CliError(f"semop on set {args.id}: {why}; nothing was changed",
                           WOULD_WAIT) from None
        except OSError as e:
            if e.errno == errno.EFBIG:
                nsems = sc.semctl(args.id, 0, sc.IPC_STAT).nsems
                raise CliError(f"semaphore set {args.id} has {nsems} semaphore(s), numbered "
                               f"0..{nsems - 1}", NOT_FOUND) from None
            if e.errno == errno.ERANGE:
                raise CliError(f"semop on set {args.id}: a value would go above semvmx; "
                               "nothing was changed", FAILED) from None
            raise
    if args.json:
        _print_json({"pid": args.pid, "id": args.id,
                     "ops": [{"semnum": n, "op": op} for n, op in args.ops]}, out)
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


def _bounded(what: str, lo: int, hi: Optional[int] = None,
             why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer (decimal, 0x hex, 0o octal) from lo to hi, refused
    saying what it is for."""
    def parse(text: str) -> int:
        try:
            n = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"{what} must be >= {lo}, got {n}".lstrip())
        if hi is not None and n > hi:
            raise argparse.ArgumentTypeError(f"{what} is {lo}..{hi}{why}, got {n}")
        return n
    return parse


_natural = _bounded("", 0)
_positive = _bounded("", 1)
_nsems = _bounded("a number of semaphores", 1, INT_MAX, " (a C int)")
_bytes = _bounded("a size in bytes", 1, C_RANGES["size_t"][1], " (a C unsigned long)")
_ident = _bounded("an id", 0, INT_MAX)
_msqid = _bounded("a queue id", 0, INT_MAX)
_index = _bounded("an index", 0, LONG_MAX, " (MSG_COPY takes it in a C long)")
_keyarg = _bounded("a key", 0, KEY_MASK)
_mtype = _bounded("a message type", C_RANGES["long"][0], LONG_MAX, " (a C long)")
_send_type = _bounded("the type of a message to send", 1, LONG_MAX, " (a C long)")
_semval = _bounded("a semaphore value", 0, SEMVMX, " (semvmx)")


def _named_key(text: str) -> int:
    n = _keyarg(text)
    if n == sc.IPC_PRIVATE:
        raise argparse.ArgumentTypeError("key 0 is IPC_PRIVATE, which names no object")
    return n


def _mode(text: str) -> int:
    try:
        n = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= n <= 0o777:
        raise argparse.ArgumentTypeError(f"a mode is 0..0777, got {text}")
    return n


def _seconds(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not t >= 0 or t == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be >= 0 and finite, got {text}")
    return t


def _segment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--segment", action="store_true",
                   help="ID is a shared memory segment: show its bytes as hex (read through "
                        "a read-only attach, which sets its atime, dtime and lpid)")
    p.add_argument("--offset", type=_natural, default=0, help="segment: first byte (default 0)")
    p.add_argument("--length", type=_natural, default=None,
                   help=f"segment: how many bytes (default: up to {_PEEK_BYTES})")


def _wait_options(p: argparse.ArgumentParser, nowait: str, timeout: str) -> None:
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--nowait", action="store_true",
                      help=f"exit 8 at once {nowait} (IPC_NOWAIT)")
    wait.add_argument("--timeout", type=_seconds, metavar="S",
                      help=f"wait at most S seconds{timeout}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise CliError(message, USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ipcbind`` command."""
    epilog = "exit codes:\n" + "\n".join(
        textwrap.fill(text, 79, initial_indent=f"  {c:<4} ", subsequent_indent=" " * 7)
        for c, text in EXIT_CODES.items())
    parser = _Parser(prog="ipcbind", description=__doc__, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=_pid, default=None,
                        help="act inside the IPC namespace of process PID")
    parser.add_argument("--version", action="version", version=f"ipcbind {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--pid", type=_pid, default=argparse.SUPPRESS,
                        help="act inside the IPC namespace of process PID")
    with_json = _Parser(add_help=False)
    with_json.add_argument("--json", action="store_true",
                           help="print JSON (described in docs/cli.md)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("ls", parents=[common, with_json],
                       help="list queues, semaphore sets and shared memory segments, like "
                            "ipcs, with process names, values and times; -q|-s|-m -i ID shows "
                            "one in full")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("-q", "--queues", dest="kind", action="store_const", const="queue",
                      help="only message queues")
    kind.add_argument("-s", "--semaphores", dest="kind", action="store_const", const="set",
                      help="only semaphore sets")
    kind.add_argument("-m", "--shmems", dest="kind", action="store_const", const="segment",
                      help="only shared memory segments")
    p.add_argument("-i", "--id", type=_ident, metavar="ID",
                   help="one object in full (with -q, -s or -m): for a set, each "
                        "semaphore's value, last pid, ncount and zcount")
    p.add_argument("-c", "--creator", action="store_true",
                   help="also the group, the creator's user and the creator's group")
    p.add_argument("--time-format", choices=TIME_FORMATS,
                   help="short (the default in the table: the time today, else the date), "
                        "full (the default with -i), or iso")
    p.set_defaults(run=cmd_ls)

    p = sub.add_parser("info", parents=[common, with_json],
                       help="limits and usage of queues, segments and semaphore sets (as "
                            "ipcs -l, ipcs -u, lsipc -g)")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("peek", parents=[common, with_json],
                       help="show a queue's messages without taking them (MSG_COPY), or a "
                            "segment's bytes (--segment)")
    p.add_argument("id", type=_msqid, help="the queue's msqid (the segment's shmid with "
                                           "--segment)")
    p.add_argument("--index", type=_index, help="only the message at this 0-based position")
    _segment_options(p)
    p.add_argument("--format", choices=("text", "hex", "json"),
                   help="text (default: UTF-8, escapes for the rest), hex, or json (the "
                        "same as --json)")
    p.set_defaults(run=cmd_peek)

    p = sub.add_parser("dump", parents=[common, with_json],
                       help="snapshot every queue and set to a file (or stdout)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--freeze", action="store_true",
                   help="hold the namespace's processes still while reading (needs --pid "
                        "of a process in another namespace); refused if a process is in "
                        "semop or semtimedop, which freezing would make fail with EINTR")
    p.add_argument("--interrupt-blocked-semops", action="store_true",
                   help="with --freeze: freeze even processes in semop or semtimedop; "
                        "their call fails with EINTR (each is named on stderr)")
    p.add_argument("--retries", type=_positive, default=COPY_ATTEMPTS,
                   help="reads of a queue that changed meanwhile before giving up "
                        f"(default {COPY_ATTEMPTS})")
    p.set_defaults(run=cmd_dump)

    p = sub.add_parser("restore", parents=[common, with_json],
                       help="recreate a snapshot file's queues and sets, same ids, all or "
                            "nothing")
    p.add_argument("file", help="the snapshot file ('-': stdin)")
    p.add_argument("--own-namespace", action="store_true",
                   help="restore into this process's own IPC namespace (often the host's); "
                        "without it, --pid must name the target")
    p.add_argument("--max-size", type=_positive, default=DEFAULT_MAX_SIZE, metavar="BYTES",
                   help=f"refuse a file larger than this (default {DEFAULT_MAX_SIZE})")
    p.add_argument("--limits", action="store_true",
                   help="first set the namespace's limits (msgmax, msgmnb, msgmni, sem) "
                        "from the file")
    p.set_defaults(run=cmd_restore)

    p = sub.add_parser("mk", parents=[common],
                       help="make a queue, a semaphore set or a segment, as ipcmk")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    made = _Parser(add_help=False)
    made.add_argument("--key", type=_keyarg, default=sc.IPC_PRIVATE,
                      help="the key (default 0, IPC_PRIVATE); an object with this key must "
                           "not exist yet")
    made.add_argument("--mode", type=_mode, default=0o644,
                      help="permissions in octal (default 0644, as ipcmk)")
    k = kinds.add_parser("queue", parents=[common, with_json, made], help="a message queue")
    k.add_argument("--qbytes", type=_bytes,
                   help="the queue's capacity in bytes (default msgmnb; above it needs "
                        "CAP_SYS_RESOURCE)")
    k = kinds.add_parser("set", parents=[common, with_json, made], help="a semaphore set")
    k.add_argument("nsems", type=_nsems, metavar="NSEMS", help="how many semaphores")
    k.add_argument("--values", type=_semval, nargs="+", metavar="V",
                   help="their initial values, one per semaphore (default all 0)")
    k = kinds.add_parser("segment", parents=[common, with_json, made],
                         help="a shared memory segment")
    k.add_argument("size", type=_bytes, metavar="SIZE", help="its size in bytes")
    p.set_defaults(run=cmd_mk)

    p = sub.add_parser("rm", parents=[common, with_json],
                       help="remove queues, semaphore sets or segments by id or key, as ipcrm")
    p.add_argument("kind", choices=("queue", "set", "segment"), metavar="KIND",
                   help="queue, set or segment")
    p.add_argument("ids", type=_ident, nargs="*", metavar="ID", help="ids to remove")
    p.add_argument("--key", dest="keys", type=_named_key, action="append", default=[],
                   metavar="KEY", help="remove the object with this key (repeatable)")
    p.set_defaults(run=cmd_rm, rest=("ids", _ident))

    p = sub.add_parser("send", parents=[common, with_json],
                       help="send messages to a queue: each DATA argument, or stdin or a "
                            "file as one")
    p.add_argument("id", type=_msqid, metavar="ID", help="the queue's msqid")
    p.add_argument("data", nargs="*", metavar="DATA",
                   help="one message per argument (without DATA and --file: stdin)")
    p.add_argument("--file", metavar="FILE", help="send this file's bytes as one message "
                                                  "('-': stdin)")
    p.add_argument("--type", type=_send_type, default=1, help="the message type (default 1)")
    p.add_argument("--hex", action="store_true",
                   help="DATA or the input is hexadecimal (whitespace between pairs allowed)")
    _wait_options(p, "if the queue is full", " for room, then exit 8")
    p.set_defaults(run=cmd_send, rest=("data", str))

    p = sub.add_parser("receive", parents=[common, with_json],
                       help="take one message from a queue and print its bytes as they are")
    p.add_argument("id", type=_msqid, metavar="ID", help="the queue's msqid")
    p.add_argument("--type", type=_mtype, default=0,
                   help="0 (default) the first message; N > 0 the first of type N; N < 0 "
                        "the first of the lowest type <= -N")
    p.add_argument("--except", dest="except_type", action="store_true",
                   help="the first message NOT of --type N (MSG_EXCEPT)")
    p.add_argument("--hex", action="store_true", help="print the bytes as hexadecimal")
    _wait_options(p, "if there is no such message", ", then exit 8 (nothing is taken)")
    p.set_defaults(run=cmd_receive)

    p = sub.add_parser("semop", parents=[common, with_json],
                       help="operate on a semaphore set: all the operations or none, as "
                            "semop(2)")
    p.add_argument("id", type=_ident, metavar="ID", help="the set's semid")
    p.add_argument("ops", type=_semop_arg, nargs="+", metavar="SEMNUM:OP",
                   help="OP < 0 waits until it can subtract, OP > 0 adds, 0 waits for zero")
    _wait_options(p, "instead of waiting", " (semtimedop), then exit 8")
    p.set_defaults(run=cmd_semop, rest=("ops", _semop_arg))

    p = sub.add_parser("semundo", parents=[common, with_json],
                       help="a process's SEM_UNDO adjustments from /proc/PROCESS/semundo (a "
                            "kernel file no mainline kernel has: then exit 7, explained)",
                       description="The SEM_UNDO adjustments of process PROCESS, read from "
                                   "/proc/PROCESS/semundo. PROCESS is whose adjustments are "
                                   "read; --pid PID only chooses the IPC namespace to act "
                                   "in, as for every command.")
    p.add_argument("process", type=_pid, metavar="PROCESS",
                   help="the pid of the process whose adjustments are read")
    p.add_argument("--proc-root", default="/proc", metavar="DIR",
                   help="read DIR/PROCESS/semundo (a directory laid out like /proc) "
                        "instead of /proc")
    p.set_defaults(run=cmd_semundo)

    p = sub.add_parser("demo", parents=[common],
                       help="create a queue, peek at it without consuming, remove it")
    p.set_defaults(run=cmd_demo)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse, letting a command's trailing list (DATA, SEMNUM:OP, ID) go on after options.

    argparse ends a ``nargs="*"`` positional at the first option, so the words after
    ``send 0 --type 5 a b`` come back unrecognized: they are the rest of that list.
    """
    args, extra = parser.parse_known_args(argv)
    rest = getattr(args, "rest", None)
    if extra and (rest is None or any(w.startswith("-") for w in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra and rest is not None:
        name, convert = rest
        try:
            getattr(args, name).extend(convert(w) for w in extra)
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    return args


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


class _ClosedStdout(io.TextIOBase):
    """What commands write to when stdout is closed (Python's sys.stdout is None then):
    the first write fails as a write to a closed descriptor does, saying what it was."""

    def write(self, text: str) -> int:
        first = text.strip().split("\n")[0][:200]
        raise OSError(errno.EBADF, f"stdout is closed; not written: {first}")


def _drop_stdout() -> None:
    """Whatever is still buffered for a stdout that cannot take it goes nowhere, so
    that the interpreter's last flush does not fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM is handled as Ctrl-C is: frozen processes are let go, a restore undone."""
    raise _Terminated()


def main(argv: Optional[List[str]] = None, out: Optional[IO[str]] = None) -> int:
    """Run the command line; returns the exit code (see :data:`EXIT_CODES`).

    ``argv`` None: the process's own arguments, and the process exits when this
    returns (a restore then leaves SIGINT and SIGTERM blocked, see _signals_blocked).
    """
    out = out or sys.stdout or cast(IO[str], _ClosedStdout())
    terminate = None
    if threading.current_thread() is threading.main_thread():
        terminate = signal.signal(signal.SIGTERM, _terminated)
    try:
        args = _parse(build_parser(), argv)
        if not hasattr(args, "json"):
            args.json = False
        args.exits_after = argv is None
        return int(args.run(args, out))
    except CliError as e:
        print(f"ipcbind: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"ipcbind: {str(e) or 'interrupted by ' + signal.Signals(signum).name}",
              file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        # The reader went away (ipcbind ls | head): nothing left to tell it.
        _drop_stdout()
        return FAILED
    except (OSError, ValueError, RestoreError, QueueChangedError, FreezeError,
            NamespaceReturnError) as e:
        print(f"ipcbind: error: {_message(e)}", file=sys.stderr)
        return _code_for(e)
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":
    sys.exit(main())
