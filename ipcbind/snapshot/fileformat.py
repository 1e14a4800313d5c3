"""The snapshot file: writing it (dumps, dump), and reading it back with every field
checked (loads, load)."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import tempfile
import threading
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple, Union

from ..errors import SnapshotFormatError
from .blobs import _Blobs, _digest, _Scanner
from .fields import _Kind, _List, _Record, body, check, kind_of
from .model import Snapshot

def _need_snapshot(call: str, snap: Any) -> None:
    if not isinstance(snap, Snapshot):
        raise TypeError(f"{call}: needs a Snapshot, not {type(snap).__name__}")


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
    fields = body(snap, blobs)
    fields["checksum"] = _digest(fields, blobs)
    lines = [f" {json.dumps(name)}: {_layout(kind_of(name), value, ' ')}"
             for name, value in fields.items()]
    return blobs.expand("{\n" + ",\n".join(lines) + "\n}\n")


def _layout(kind: Optional[_Kind], value: Any, indent: str) -> str:
    """A list of objects one per line, any other value on one line."""
    if not (isinstance(kind, _List) and isinstance(kind.item, _Record)):
        return _line(value)
    record = kind.item
    inner = indent + " "
    blocks = [f for f in record.fields
              if isinstance(f.kind, _List) and isinstance(f.kind.item, _Record)]
    items = []
    for obj in value:
        if not blocks:
            items.append(_line(obj))
            continue
        head = _line({k: v for k, v in obj.items() if k not in {f.name for f in blocks}})
        items.append(head[:-1] + "".join(f", {json.dumps(f.name)}: "
                                         f"{_layout(f.kind, obj[f.name], inner)}"
                                         for f in blocks) + "}")
    return _block(items, indent)


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
        return check(doc, blobs)
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


# Documented where it is public: ipcbind.snapshot.
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
