"""The snapshot file: writing it (dumps, dump), and reading it back with every field
checked (loads, load)."""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import threading
from datetime import datetime
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .._limits import INT_MAX, SEMVMX, U32_MAX
from ..errors import SnapshotFormatError
from .model import (_INDEX_MASK, _TAKEN_AT, _TAKEN_AT_FORMAT, Limits, QueueState, SegmentState,
                    SemaphoreSetState, Snapshot)

# FORMAT, VERSION and DEFAULT_MAX_SIZE are documented where they are public: ipcbind.snapshot.
FORMAT = "ipcbind-snapshot"
VERSION = 2
_VERSIONS = (1, 2)

_MTYPE_MAX = 2 ** 63 - 1


def _key_text(key: int) -> str:
    return f"{key:#010x}"


def _mode_text(mode: int) -> str:
    return f"{mode:04o}"


def _need_snapshot(call: str, snap: Any) -> None:
    if not isinstance(snap, Snapshot):
        raise TypeError(f"{call}: needs a Snapshot, not {type(snap).__name__}")


def _body(snap: Snapshot, blobs: "_Blobs") -> Dict[str, Any]:
    """The file's fields; each segment's data stands in as a token of ``blobs``."""
    lim = snap.limits
    return {
        "format": FORMAT,
        "version": VERSION,
        "taken_at": snap.taken_at,
        "namespace": {"inode": snap.namespace, "pid": snap.pid},
        "frozen": snap.frozen,
        "limits": {"msgmax": lim.msgmax, "msgmnb": lim.msgmnb, "msgmni": lim.msgmni,
                   "sem": [lim.semmsl, lim.semmns, lim.semopm, lim.semmni]},
        "queues": [{
            "id": q.id, "key": _key_text(q.key), "uid": q.uid, "gid": q.gid,
            "cuid": q.cuid, "cgid": q.cgid, "mode": _mode_text(q.mode), "qbytes": q.qbytes,
            "messages": [{"type": t, "size": len(d), "data": base64.b64encode(d).decode()}
                         for t, d in q.messages],
        } for q in snap.queues],
        "semaphore_sets": [{
            "id": s.id, "key": _key_text(s.key), "uid": s.uid, "gid": s.gid,
            "cuid": s.cuid, "cgid": s.cgid, "mode": _mode_text(s.mode), "values": list(s.values),
        } for s in snap.semaphore_sets],
        "segments": [{
            "id": m.id, "key": _key_text(m.key), "uid": m.uid, "gid": m.gid,
            "cuid": m.cuid, "cgid": m.cgid, "mode": _mode_text(m.mode), "size": m.size,
            "data": blobs.add(m.data),
        } for m in snap.segments],
        "segments_left_out": list(snap.segments_left_out),
    }


# Bytes per base64 piece of a segment's data: a multiple of 3, so that the pieces'
# base64 put together is the base64 of the whole.
_B64_PIECE = 3 << 18


class _Blobs:
    """Large byte strings kept out of the JSON text while it is made or read.

    Each stands in the text as a token, a string no file can hold by chance (it
    carries a number drawn for this use alone); :meth:`expand` puts the base64 of
    the bytes back, piece by piece, so that neither a dump nor a load ever holds a
    segment's base64 whole.
    """

    def __init__(self) -> None:
        self.nonce = os.urandom(8).hex()
        self.data: Dict[str, bytes] = {}
        self.pattern = re.compile(r'"\\u0000blob-' + self.nonce + r'-[0-9]+\\u0000"')

    def add(self, data: bytes) -> str:
        token = f"\0blob-{self.nonce}-{len(self.data)}\0"
        self.data[token] = data
        return token

    def take(self, token: str) -> Optional[bytes]:
        """The bytes ``token`` stands for, once (None: not a token of ours)."""
        return self.data.pop(token, None)

    def expand(self, text: str) -> Iterator[str]:
        """``text`` with every token (as JSON writes it) replaced by its data in base64."""
        at = 0
        for found in self.pattern.finditer(text):
            data = self.data.get(json.loads(found.group()))
            if data is None:
                continue
            yield text[at:found.start()] + '"'
            view = memoryview(data)
            for i in range(0, len(view), _B64_PIECE):
                yield base64.b64encode(view[i:i + _B64_PIECE]).decode("ascii")
            yield '"'
            at = found.end()
        yield text[at:]


def _digest(body: Mapping[str, Any], blobs: Optional[_Blobs] = None) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    h = hashlib.sha256()
    for piece in (blobs.expand(canonical) if blobs is not None else (canonical,)):
        h.update(piece.encode())
    return "sha256:" + h.hexdigest()


def _line(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _block(items: List[str], indent: str) -> str:
    if not items:
        return "[]"
    return "[\n" + ",\n".join(indent + " " + i for i in items) + "\n" + indent + "]"


def dumps(snap: Snapshot) -> str:
    """The snapshot as the text of a snapshot file (JSON, see the README).

    One object, or one message, per line, so that a person can read it and diff two.
    """
    _need_snapshot("dumps", snap)
    return "".join(_pieces(snap))


def _pieces(snap: Snapshot) -> Iterator[str]:
    """The text of the snapshot file, in pieces: a segment's data comes in pieces of
    at most a megabyte of base64."""
    blobs = _Blobs()
    body = _body(snap, blobs)
    body["checksum"] = _digest(body, blobs)
    fields = []
    for name, value in body.items():
        if name == "queues":
            queues = []
            for q in value:
                head = _line({k: v for k, v in q.items() if k != "messages"})[:-1]
                messages = _block([_line(m) for m in q["messages"]], "  ")
                queues.append(f'{head}, "messages": {messages}}}')
            text = _block(queues, " ")
        elif name in ("semaphore_sets", "segments"):
            text = _block([_line(s) for s in value], " ")
        else:
            text = _line(value)
        fields.append(f" {json.dumps(name)}: {text}")
    return blobs.expand("{\n" + ",\n".join(fields) + "\n}\n")


def dump(snap: Snapshot, file: Union[str, "os.PathLike[str]", IO[str]]) -> None:
    """Write the snapshot to a path or an open text file.

    A path that leads to one of our descriptors (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``) is written into that descriptor as it is open (appending
    after ``>>``, into a pipe). A path that names a regular file, or nothing yet, is
    replaced atomically (a new file, renamed over it); one that names a device or a
    FIFO is written into, and stays what it is. A symbolic link is followed: its
    target is written (created if the link dangles, as a shell's ``>`` would) and the
    link stays a link. A new file is readable by its owner only (mode 0600: it holds
    the messages, which the queues' permissions may have kept private); a file
    replaced keeps its owner and group (or, where they cannot be kept, is left alone
    and PermissionError raised) and its permission bits, but never setuid, setgid or
    sticky. A directory is refused, naming the path given.
    """
    _need_snapshot("dump", snap)
    if not isinstance(file, (str, os.PathLike)):
        if not hasattr(file, "write"):
            raise TypeError(f"dump: needs a path or an open text file, "
                            f"not {type(file).__name__}")
        for piece in _pieces(snap):
            file.write(piece)
        return
    # Everything but the base64 of the segments is made here, before the file is
    # touched: a snapshot that cannot be written leaves it as it was.
    text = _pieces(snap)
    path = os.fspath(file)
    fd = _own_descriptor(path)
    if fd is not None:
        for piece in text:
            _write_all(fd, piece.encode())
        return
    # The rename must land on the link's target, in the target's directory: renamed
    # over the link itself, the new file would replace the link.
    target = os.path.realpath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None  # nothing there yet, or a dangling link: its target is created
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    # What the path opens decides, not its resolved name: a link in /proc can point
    # to a pipe or a deleted file, whose "target" (pipe:[1234]) is no path. Anything
    # realpath does not reach is written into, as a device is.
    if st is not None and not _same_file(st, target):
        with open(path, "w") as f:
            f.writelines(text)
        return
    replaced = st if st is not None and stat.S_ISREG(st.st_mode) else None
    try:
        # mkstemp: a fresh name (O_EXCL, so nothing planted there is followed), mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".",
                                   suffix=".tmp", dir=os.path.dirname(target))
    except OSError as e:
        # Name the file asked for, not the temporary one beside its target.
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        with open(fd, "w") as f:
            if replaced is not None:
                _keep_owner(fd, replaced, path)
                os.fchmod(fd, stat.S_IMODE(replaced.st_mode) & 0o777)
            f.writelines(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _keep_owner(fd: int, st: os.stat_result, path: str) -> None:
    if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        raise PermissionError(errno.EPERM, f"dump: {path} belongs to uid {st.st_uid}, gid "
                              f"{st.st_gid}, which a replacement made by uid {os.geteuid()} "
                              "cannot keep; left as it is (remove it first, or dump as its "
                              "owner)") from None


def _own_descriptor(path: str) -> Optional[int]:
    """The descriptor of this process that ``path`` leads to through /proc/self/fd or
    /dev/fd (where /dev/stdout leads), None if it leads elsewhere."""
    ours = {f"/proc/{os.getpid()}/fd",
            f"/proc/{os.getpid()}/task/{threading.get_native_id()}/fd"}
    p = os.path.abspath(path)
    for _ in range(40):  # as many links as the kernel follows
        parent, name = os.path.split(p)
        if name.isdigit() and os.path.realpath(parent) in ours:
            return int(name)
        if not os.path.islink(p):
            return None
        p = os.path.abspath(os.path.join(parent, os.readlink(p)))
    return None


def _write_all(fd: int, data: bytes) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and stream.fileno() == fd:
                stream.flush()
        except (OSError, ValueError):
            pass
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _same_file(st: os.stat_result, path: str) -> bool:
    """Whether ``path`` is the regular file ``st`` describes."""
    try:
        other = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


class _Checker:
    """Reads a parsed file, raising SnapshotFormatError that names the bad field.

    ``blobs``: the data strings the reader kept out of the parsed text."""

    def __init__(self, blobs: Optional[_Blobs] = None) -> None:
        self.blobs = blobs

    @staticmethod
    def fail(where: str, why: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"snapshot file: {where}: {why}")

    def obj(self, v: Any, where: str, fields: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(where, f"must be an object, not {type(v).__name__}")
        missing = [f for f in fields if f not in v]
        if missing:
            raise self.fail(where, f"missing {', '.join(missing)}")
        extra = sorted(set(v) - set(fields))
        if extra:
            raise self.fail(where, f"unknown field {', '.join(map(str, extra))}")
        return v

    def integer(self, v: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(where, f"must be an integer, not {json.dumps(v)[:40]}")
        if not lo <= v <= hi:
            raise self.fail(where, f"{v} is outside {lo}..{hi}")
        return int(v)

    def listof(self, v: Any, where: str) -> List[Any]:
        if not isinstance(v, list):
            raise self.fail(where, f"must be a list, not {type(v).__name__}")
        return v

    def text(self, v: Any, where: str, pattern: str) -> str:
        if not isinstance(v, str) or not re.fullmatch(pattern, v):
            raise self.fail(where, f"{json.dumps(v)[:40]} does not match {pattern}")
        return v

    def moment(self, v: Any, where: str) -> str:
        text = self.text(v, where, _TAKEN_AT)
        # The pattern lets month 99 or February 30 through; the calendar does not.
        try:
            datetime.strptime(text, _TAKEN_AT_FORMAT)
        except ValueError:
            raise self.fail(where, f"{json.dumps(text)} is not a real date and time") from None
        return text

    def key(self, v: Any, where: str) -> int:
        return int(self.text(v, where, r"0x[0-9a-f]{8}"), 16)

    def mode(self, v: Any, where: str) -> int:
        return int(self.text(v, where, r"0[0-7]{3}"), 8)

    def owner(self, o: Mapping[str, Any], where: str) -> Tuple[int, int, int, int]:
        return tuple(self.integer(o[f], f"{where}.{f}", 0, U32_MAX)  # type: ignore[return-value]
                     for f in ("uid", "gid", "cuid", "cgid"))

    def queue(self, v: Any, where: str) -> QueueState:
        o = self.obj(v, where, ("id", "key", "uid", "gid", "cuid", "cgid", "mode", "qbytes",
                                "messages"))
        messages = []
        for i, m in enumerate(self.listof(o["messages"], f"{where}.messages")):
            at = f"{where}.messages[{i}]"
            m = self.obj(m, at, ("type", "size", "data"))
            mtype = self.integer(m["type"], f"{at}.type", 1, _MTYPE_MAX)
            size = self.integer(m["size"], f"{at}.size", 0, INT_MAX)
            messages.append((mtype, self.data(m["data"], at, size)))
        return QueueState(self.integer(o["id"], f"{where}.id", 0, INT_MAX),
                          self.key(o["key"], f"{where}.key"), *self.owner(o, where),
                          self.mode(o["mode"], f"{where}.mode"),
                          self.integer(o["qbytes"], f"{where}.qbytes", 0, 2 ** 63 - 1),
                          tuple(messages))

    def data(self, v: Any, where: str, size: int) -> bytes:
        kept = self.blobs.take(v) if self.blobs is not None and isinstance(v, str) else None
        if kept is not None:
            # Checked as base64 as written while it was read (_Decoder).
            if len(kept) != size:
                raise self.fail(where, f"size says {size} bytes but data holds {len(kept)}")
            return kept
        encoded = self.text(v, f"{where}.data", r"[A-Za-z0-9+/]*={0,2}")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(f"{where}.data", "is not valid base64") from None
        # The decoder ignores the spare bits of the last character ("AB==" reads as
        # "AA=="): a text that dumps() would not write is refused, not silently changed.
        if base64.b64encode(data).decode() != encoded:
            raise self.fail(f"{where}.data", "is not base64 as written (spare bits set)")
        if len(data) != size:
            raise self.fail(where, f"size says {size} bytes but data holds {len(data)}")
        return data

    def segment(self, v: Any, where: str) -> SegmentState:
        o = self.obj(v, where, ("id", "key", "uid", "gid", "cuid", "cgid", "mode", "size",
                                "data"))
        size = self.integer(o["size"], f"{where}.size", 1, 2 ** 63 - 1)
        return SegmentState(self.integer(o["id"], f"{where}.id", 0, INT_MAX),
                            self.key(o["key"], f"{where}.key"), *self.owner(o, where),
                            self.mode(o["mode"], f"{where}.mode"), size,
                            self.data(o["data"], where, size))

    def semset(self, v: Any, where: str) -> SemaphoreSetState:
        o = self.obj(v, where, ("id", "key", "uid", "gid", "cuid", "cgid", "mode", "values"))
        values = self.listof(o["values"], f"{where}.values")
        if not values:
            raise self.fail(f"{where}.values", "a set has at least one semaphore")
        return SemaphoreSetState(
            self.integer(o["id"], f"{where}.id", 0, INT_MAX),
            self.key(o["key"], f"{where}.key"),
            *self.owner(o, where), self.mode(o["mode"], f"{where}.mode"),
            tuple(self.integer(x, f"{where}.values[{i}]", 0, SEMVMX) for i, x in enumerate(values)))

    def limits(self, v: Any) -> Limits:
        o = self.obj(v, "limits", ("msgmax", "msgmnb", "msgmni", "sem"))
        sem = self.listof(o["sem"], "limits.sem")
        if len(sem) != 4:
            raise self.fail("limits.sem", f"must hold 4 numbers, not {len(sem)}")
        return Limits(*(self.integer(o[f], f"limits.{f}", 0, INT_MAX)
                        for f in ("msgmax", "msgmnb", "msgmni")),
                      *(self.integer(x, f"limits.sem[{i}]", 0, INT_MAX)
                        for i, x in enumerate(sem)))

    @staticmethod
    def unique(objs: Sequence[Any], where: str) -> None:
        ids: Dict[int, int] = {}
        keys: Set[int] = set()
        for o in objs:
            same = ids.get(o.id & _INDEX_MASK)
            if same == o.id:
                raise _Checker.fail(where, f"id {o.id} appears twice")
            if same is not None:
                raise _Checker.fail(where, f"ids {same} and {o.id} share index "
                                    f"{o.id & _INDEX_MASK} (id modulo {_INDEX_MASK + 1}): no "
                                    "namespace holds both")
            if o.key and o.key in keys:
                raise _Checker.fail(where, f"key {o.key:#010x} appears twice")
            ids[o.id & _INDEX_MASK] = o.id
            keys.add(o.key)

    def snapshot(self, doc: Any) -> Snapshot:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SnapshotFormatError(f"not an ipcbind snapshot file (no \"format\": "
                                      f"\"{FORMAT}\")")
        version = doc.get("version")
        # Exactly the integer: true and 1.0 equal 1 in Python but are not what is written.
        if type(version) is not int or version not in _VERSIONS:
            raise SnapshotFormatError(f"snapshot file version {json.dumps(version)[:20]} is "
                                      "not supported (this ipcbind reads versions "
                                      f"{', '.join(map(str, _VERSIONS))})")
        # Version 1 is version 2 without segments.
        since2 = ("segments", "segments_left_out") if version >= 2 else ()
        o = self.obj(doc, "top level", ("format", "version", "taken_at", "namespace", "frozen",
                                        "limits", "queues", "semaphore_sets", *since2,
                                        "checksum"))
        body = {k: v for k, v in o.items() if k != "checksum"}
        if o["checksum"] != _digest(body, self.blobs):
            raise SnapshotFormatError("snapshot file: checksum does not match the content "
                                      "(the file is damaged or was edited)")
        ns = self.obj(o["namespace"], "namespace", ("inode", "pid"))
        pid = ns["pid"]
        if pid is not None:
            pid = self.integer(pid, "namespace.pid", 1, INT_MAX)
        frozen = o["frozen"]
        if frozen is not None:
            frozen = self.text(frozen, "frozen", r"cgroup|sigstop|cgroup\+sigstop")
        queues = tuple(self.queue(q, f"queues[{i}]")
                       for i, q in enumerate(self.listof(o["queues"], "queues")))
        sets = tuple(self.semset(s, f"semaphore_sets[{i}]")
                     for i, s in enumerate(self.listof(o["semaphore_sets"], "semaphore_sets")))
        self.unique(queues, "queues")
        self.unique(sets, "semaphore_sets")
        segments = tuple(self.segment(m, f"segments[{i}]")
                         for i, m in enumerate(self.listof(o.get("segments", []), "segments")))
        self.unique(segments, "segments")
        left_out = tuple(self.integer(x, f"segments_left_out[{i}]", 0, INT_MAX) for i, x in
                         enumerate(self.listof(o.get("segments_left_out", []),
                                               "segments_left_out")))
        return Snapshot(self.moment(o["taken_at"], "taken_at"),
                        self.integer(ns["inode"], "namespace.inode", 0, 2 ** 64 - 1), pid, frozen,
                        self.limits(o["limits"]), queues, sets, segments, left_out)


def loads(text: Union[str, bytes]) -> Snapshot:
    """Read a snapshot from the text of a snapshot file.

    Raises:
        SnapshotFormatError: the text is not a complete, undamaged snapshot file of a
            version this ipcbind reads; the message names what is wrong.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SnapshotFormatError(f"snapshot file: not UTF-8 text ({e.reason} at byte "
                                      f"{e.start})") from None
    if not isinstance(text, str):
        raise TypeError(f"loads: needs str or bytes, not {type(text).__name__}")
    return _parse(text, None)


def _parse(text: Union[str, bytes], blobs: Optional[_Blobs]) -> Snapshot:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SnapshotFormatError(f"snapshot file: not UTF-8 text ({e.reason} at byte "
                                      f"{e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
        return _Checker(blobs).snapshot(doc)
    except json.JSONDecodeError as e:
        raise SnapshotFormatError(f"snapshot file: not JSON ({e.msg} at line {e.lineno}, "
                                  f"column {e.colno})") from None
    except RecursionError:
        raise SnapshotFormatError("snapshot file: not a snapshot (nested too deeply)") from None
    except ValueError as e:
        # Python's limit on the digits of an int it reads (sys.get_int_max_str_digits).
        if isinstance(e, SnapshotFormatError):
            raise
        raise SnapshotFormatError(f"snapshot file: not a snapshot "
                                  f"({str(e).split(';')[0]})") from None


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object whose every member name is given once: a second one would be read
    in place of the first (or the other way round by another reader)."""
    obj: Dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise SnapshotFormatError(f"snapshot file: {json.dumps(name)[:40]} given twice "
                                      "in one object")
        obj[name] = value
    return obj


DEFAULT_MAX_SIZE = 1 << 30
_CHUNK = 1 << 20


def load(file: Union[str, "os.PathLike[str]", IO[Any]], *,
         max_size: int = DEFAULT_MAX_SIZE) -> Snapshot:
    """Read a snapshot from a path or an open file (see :func:`loads`).

    At most ``max_size`` bytes are read: a longer file, or a stream that does not end
    (``/dev/zero``, an endless pipe), is refused; so is one that does not begin as a
    JSON object, as soon as its first bytes are read. A string longer than 64 KiB
    (the data of a segment, or of a long message) is decoded from base64 as it is
    read, a megabyte at a time, so a segment is held once (twice for a moment, as
    it becomes ``bytes``), never as text.

    Raises:
        OSError: the file cannot be read.
        SnapshotFormatError: as for :func:`loads`, or the file is larger than ``max_size``.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > max_size:
                raise _too_large(max_size, st.st_size)
            return _parse(*_read_bounded(f, max_size))
    if not hasattr(file, "read"):
        raise TypeError(f"load: needs a path or an open file, not {type(file).__name__}")
    return _parse(*_read_bounded(file, max_size))


def _too_large(max_size: int, size: Optional[int] = None) -> SnapshotFormatError:
    what = f"{size} bytes, " if size is not None else ""
    return SnapshotFormatError(f"snapshot file: {what}larger than {max_size} bytes (the limit "
                               "of what is read; raise it with max_size, --max-size)")


_BIG_STRING = 1 << 16
_B64_TEXT = re.compile(rb"[A-Za-z0-9+/=]*")


class _Decoder:
    """A base64 string decoded as it comes, refused unless it is base64 as written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.rest = b""
        self.ended = False

    @staticmethod
    def bad(why: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"snapshot file: a string of more than {_BIG_STRING} "
                                   f"characters {why} (only data, in base64, is that long)")

    def feed(self, piece: bytes) -> None:
        if not _B64_TEXT.fullmatch(piece):
            raise self.bad("is not base64")
        text = self.rest + piece
        whole = len(text) // 4 * 4
        if not whole:
            self.rest = text
            return
        if self.ended:
            raise self.bad("goes on after its padding")
        block = text[:whole]
        try:
            data = base64.b64decode(block, validate=True)
        except (binascii.Error, ValueError):
            raise self.bad("is not valid base64") from None
        if base64.b64encode(data) != block:
            raise self.bad("is not base64 as written (padding or spare bits)")
        self.ended = block.endswith(b"=")
        self.out += data
        self.rest = text[whole:]

    def finish(self) -> bytes:
        if self.rest:
            raise self.bad("is not valid base64 (its length is not a multiple of 4)")
        return bytes(self.out)


class _Scanner:
    """Splits a JSON text, fed in chunks, into the text without its long strings (in
    their place a token of ``blobs``) and their decoded bytes."""

    def __init__(self, blobs: _Blobs) -> None:
        self.blobs = blobs
        self.text: List[bytes] = []
        self.inside = False
        self.parts: List[bytes] = []
        self.length = 0
        self.slashes = 0  # backslashes ending the string so far
        self.decoder: Optional[_Decoder] = None
        self.plain = False

    def feed(self, chunk: bytes) -> None:
        # UTF-8 never has the bytes of " or \ inside another character's bytes.
        at = 0
        while at < len(chunk):
            end = chunk.find(b'"', at)
            if not self.inside:
                if end < 0:
                    self.text.append(chunk[at:])
                    return
                self.text.append(chunk[at:end])
                self.inside, self.parts, self.length, self.slashes = True, [], 0, 0
                self.decoder, self.plain = None, False
                at = end + 1
                continue
            piece = chunk[at:] if end < 0 else chunk[at:end]
            if end >= 0:
                run = len(piece) - len(piece.rstrip(b"\\"))
                if run == len(piece):
                    run += self.slashes
                if run % 2:  # an escaped quote: the string goes on
                    self.add(piece + b'"')
                    at = end + 1
                    continue
            self.add(piece)
            if end < 0:
                return
            self.close()
            at = end + 1

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        run = len(piece) - len(piece.rstrip(b"\\"))
        self.slashes = run + self.slashes if run == len(piece) else run
        if self.decoder is not None:
            self.decoder.feed(piece)
            return
        self.parts.append(piece)
        self.length += len(piece)
        if self.length > _BIG_STRING and not self.plain:
            whole = b"".join(self.parts)
            if _B64_TEXT.fullmatch(whole):
                self.decoder = _Decoder()
                self.decoder.feed(whole)
                self.parts = []
            else:
                self.plain = True  # not data: it stays in the text, and fails there

    def close(self) -> None:
        if self.decoder is not None:
            token = self.blobs.add(self.decoder.finish())
            self.text.append(json.dumps(token).encode())
        else:
            self.text.append(b'"' + b"".join(self.parts) + b'"')
        self.inside = False
        self.parts = []


def _read_bounded(f: IO[Any], max_size: int) -> Tuple[Union[str, bytes], Optional[_Blobs]]:
    """At most max_size bytes of f (more: refused), with its long strings decoded
    aside (a file read as bytes only); a stream that is not a regular file is refused
    as soon as it shows it does not begin as a JSON object (a regular file is read
    whole, for the full reason)."""
    try:
        stream = not stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        stream = True
    blobs = _Blobs()
    scanner = _Scanner(blobs)
    texts: List[str] = []
    size = 0
    started = False
    while True:
        chunk = f.read(min(_CHUNK, max_size + 1 - size))
        if not chunk:
            break
        if stream and not started:
            head = chunk.lstrip()[:1]
            if head:
                started = True
                if head not in (b"{", "{"):
                    raise SnapshotFormatError(f"snapshot file: not a snapshot (it begins with "
                                              f"{head!r}, not {{)")
        size += len(chunk)
        if size > max_size:
            raise _too_large(max_size)
        if isinstance(chunk, str):
            texts.append(chunk)
        else:
            scanner.feed(chunk)
    if texts:
        return "".join(texts), None
    return b"".join(scanner.text + scanner.parts), blobs
