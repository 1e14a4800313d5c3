"""The snapshot file's fields, described once.

Each kind of object (a message, a queue, a semaphore set, a segment, the limits, the
file itself) is a :class:`_Record`: a table of :class:`_Field` rows, each naming a JSON
member, the model's parameter it fills and the :class:`_Kind` of its value. The writer
(:meth:`_Record.write`) and the checker (:meth:`_Record.read`) both walk these tables,
so a field is added, or its range changed, in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from abc import ABC, abstractmethod
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set,
                    Tuple)

from .._limits import INT_MAX, SEMVMX, U32_MAX
from ..errors import SnapshotFormatError
from .blobs import _Blobs, _digest
from .model import (_INDEX_MASK, _TAKEN_AT, _TAKEN_AT_FORMAT, Limits, QueueState, SegmentState,
                    SemaphoreSetState, Snapshot)

# FORMAT and VERSION are documented where they are public: ipcbind.snapshot.
FORMAT = "ipcbind-snapshot"
VERSION = 2
_VERSIONS = (1, 2)


def _fail(where: str, why: str) -> SnapshotFormatError:
    return SnapshotFormatError(f"snapshot file: {where}: {why}")


def _shown(v: Any) -> str:
    return json.dumps(v)[:40]


class _Kind(ABC):
    """How one value is written into the file, and read back from it checked."""

    def write(self, value: Any, blobs: _Blobs) -> Any:
        return value

    @abstractmethod
    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> Any:
        """``v`` checked (named ``where`` in an error) and made the model's value;
        ``record``: the fields of the same object read so far."""


class _Int(_Kind):
    """An integer in lo..hi: the range of the C type the kernel keeps it in."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _fail(where, f"must be an integer, not {_shown(v)}")
        if not self.lo <= v <= self.hi:
            raise _fail(where, f"{v} is outside {self.lo}..{self.hi}")
        return int(v)


class _Text(_Kind):
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> str:
        if not isinstance(v, str) or not re.fullmatch(self.pattern, v):
            raise _fail(where, f"{_shown(v)} does not match {self.pattern}")
        return v


class _Moment(_Text):
    def __init__(self) -> None:
        super().__init__(_TAKEN_AT)

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> str:
        text = super().read(v, where, blobs, record)
        # The pattern lets month 99 or February 30 through; the calendar does not.
        try:
            datetime.strptime(text, _TAKEN_AT_FORMAT)
        except ValueError:
            raise _fail(where, f"{json.dumps(text)} is not a real date and time") from None
        return text


class _Number(_Kind):
    """An integer written as text in a fixed form (a key in hex, a mode in octal), as
    ``ipcs`` shows it."""

    def __init__(self, form: str, pattern: str, base: int) -> None:
        self.form, self.text, self.base = form, _Text(pattern), base

    def write(self, value: Any, blobs: _Blobs) -> str:
        return format(value, self.form)

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> int:
        return int(self.text.read(v, where, blobs, record), self.base)


class _Fixed(_Kind):
    """A value every file holds (``format``, ``version``): checked before anything else,
    as it says whether the rest can be read at all (see :func:`check`)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def write(self, value: Any, blobs: _Blobs) -> Any:
        return self.value

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> Any:
        return v


class _Maybe(_Kind):
    """``kind``, or null."""

    def __init__(self, kind: _Kind) -> None:
        self.kind = kind

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> Any:
        return None if v is None else self.kind.read(v, where, blobs, record)


class _Data(_Kind):
    """Bytes in base64, as many as the ``size`` field read before them says.

    ``aside``: written as a token of the blobs (a segment, maybe large) rather than
    inline (a message, many small ones)."""

    def __init__(self, aside: bool) -> None:
        self.aside = aside

    def write(self, value: Any, blobs: _Blobs) -> str:
        return blobs.add(value) if self.aside else base64.b64encode(value).decode()

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> bytes:
        size = record["size"]
        # A size that disagrees is the object's fault, not the data's: named so.
        owner = where.rpartition(".")[0]
        kept = blobs.take(v) if blobs is not None and isinstance(v, str) else None
        if kept is not None:
            # Checked as base64 as written while it was read (_Decoder).
            if len(kept) != size:
                raise _fail(owner, f"size says {size} bytes but data holds {len(kept)}")
            return kept
        encoded = _Text(r"[A-Za-z0-9+/]*={0,2}").read(v, where, blobs, record)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(where, "is not valid base64") from None
        # The decoder ignores the spare bits of the last character ("AB==" reads as
        # "AA=="): a text that dumps() would not write is refused, not silently changed.
        if base64.b64encode(data).decode() != encoded:
            raise _fail(where, "is not base64 as written (spare bits set)")
        if len(data) != size:
            raise _fail(owner, f"size says {size} bytes but data holds {len(data)}")
        return data


class _List(_Kind):
    """A list of ``item``. ``length(n)``: what is wrong with a list of n, or None;
    ``unique``: items are objects whose ids and keys no namespace could hold twice."""

    def __init__(self, item: _Kind, length: Optional[Callable[[int], Optional[str]]] = None,
                 unique: bool = False) -> None:
        self.item, self.length, self.unique = item, length, unique

    def write(self, value: Any, blobs: _Blobs) -> List[Any]:
        return [self.item.write(v, blobs) for v in value]

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> Tuple[Any, ...]:
        if not isinstance(v, list):
            raise _fail(where, f"must be a list, not {type(v).__name__}")
        wrong = self.length(len(v)) if self.length is not None else None
        if wrong is not None:
            raise _fail(where, wrong)
        items = tuple(self.item.read(x, f"{where}[{i}]", blobs, {}) for i, x in enumerate(v))
        if self.unique:
            _unique(items, where)
        return items


def _unique(objs: Sequence[Any], where: str) -> None:
    ids: Dict[int, int] = {}
    keys: Set[int] = set()
    for o in objs:
        same = ids.get(o.id & _INDEX_MASK)
        if same == o.id:
            raise _fail(where, f"id {o.id} appears twice")
        if same is not None:
            raise _fail(where, f"ids {same} and {o.id} share index {o.id & _INDEX_MASK} "
                        f"(id modulo {_INDEX_MASK + 1}): no namespace holds both")
        if o.key and o.key in keys:
            raise _fail(where, f"key {o.key:#010x} appears twice")
        ids[o.id & _INDEX_MASK] = o.id
        keys.add(o.key)


class _Field(NamedTuple):
    name: str                    # the JSON member
    kind: _Kind                  # its type and range
    get: Callable[[Any], Any]    # its value, from the model, for writing
    attr: Optional[str]          # the model's parameter it fills; None: checked only
    since: int = 1               # the file format version that brought it


def _field(name: str, kind: _Kind, since: int = 1) -> _Field:
    """A field that is the model's attribute of the same name."""
    return _Field(name, kind, attrgetter(name), name, since)


def _members(v: Any, where: str, names: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, f"must be an object, not {type(v).__name__}")
    missing = [f for f in names if f not in v]
    if missing:
        raise _fail(where, f"missing {', '.join(missing)}")
    extra = sorted(set(v) - set(names))
    if extra:
        raise _fail(where, f"unknown field {', '.join(map(str, extra))}")
    return v


class _Record(_Kind):
    """A JSON object: ``fields`` in the order they are written; ``make`` builds the
    model from them (each field with an ``attr`` passed by that name).

    A field that holds a list of records is written as a block of lines, after the
    record's other fields: it comes last.
    """

    def __init__(self, make: Callable[..., Any], fields: Sequence[_Field]) -> None:
        self.make, self.fields = make, tuple(fields)

    def names(self, version: int = VERSION) -> List[str]:
        return [f.name for f in self.fields if f.since <= version]

    def write(self, value: Any, blobs: _Blobs) -> Dict[str, Any]:
        return {f.name: f.kind.write(f.get(value), blobs) for f in self.fields}

    def read(self, v: Any, where: str, blobs: Optional[_Blobs],
             record: Mapping[str, Any]) -> Any:
        return self.fill(_members(v, where, self.names()), where, blobs)

    def fill(self, o: Mapping[str, Any], where: str, blobs: Optional[_Blobs],
             version: int = VERSION) -> Any:
        """The model from the members ``o`` (checked already as an object)."""
        got: Dict[str, Any] = {}
        args: Dict[str, Any] = {}
        for f in self.fields:
            if f.since > version:
                continue
            got[f.name] = f.kind.read(o[f.name], f"{where}.{f.name}" if where else f.name,
                                      blobs, got)
            if f.attr is not None:
                args[f.attr] = got[f.name]
        return self.make(**args)


_ID = _Int(0, INT_MAX)
_COUNT = _Int(0, INT_MAX)
_IDENTITY = (
    _field("id", _ID),
    _field("key", _Number("#010x", r"0x[0-9a-f]{8}", 16)),
    *(_field(name, _Int(0, U32_MAX)) for name in ("uid", "gid", "cuid", "cgid")),
    _field("mode", _Number("04o", r"0[0-7]{3}", 8)),
)

_MESSAGE = _Record(lambda mtype, data: (mtype, data), (
    _Field("type", _Int(1, 2 ** 63 - 1), itemgetter(0), "mtype"),
    _Field("size", _Int(0, INT_MAX), lambda m: len(m[1]), None),
    _Field("data", _Data(aside=False), itemgetter(1), "data"),
))

_QUEUE = _Record(QueueState, (
    *_IDENTITY,
    _field("qbytes", _Int(0, 2 ** 63 - 1)),
    _field("messages", _List(_MESSAGE)),
))

_SEMAPHORE_SET = _Record(SemaphoreSetState, (
    *_IDENTITY,
    _field("values", _List(_Int(0, SEMVMX),
                           length=lambda n: None if n else "a set has at least one semaphore")),
))

_SEGMENT = _Record(SegmentState, (
    *_IDENTITY,
    _field("size", _Int(1, 2 ** 63 - 1)),
    _field("data", _Data(aside=True)),
))

_LIMITS = _Record(lambda msgmax, msgmnb, msgmni, sem: Limits(msgmax, msgmnb, msgmni, *sem), (
    _field("msgmax", _COUNT),
    _field("msgmnb", _COUNT),
    _field("msgmni", _COUNT),
    # /proc/sys/kernel/sem, as the kernel writes it: semmsl, semmns, semopm, semmni.
    _Field("sem", _List(_COUNT, length=lambda n: None if n == 4 else
                        f"must hold 4 numbers, not {n}"),
           lambda lim: [lim.semmsl, lim.semmns, lim.semopm, lim.semmni], "sem"),
))

_NAMESPACE = _Record(lambda inode, pid: (inode, pid), (
    _Field("inode", _Int(0, 2 ** 64 - 1), itemgetter(0), "inode"),
    _Field("pid", _Maybe(_Int(1, INT_MAX)), itemgetter(1), "pid"),
))


def _nothing(model: Any) -> None:
    """What the model holds of a field every file has alike: nothing."""


def _snapshot_of(namespace: Tuple[int, Optional[int]], **fields: Any) -> Snapshot:
    return Snapshot(namespace=namespace[0], pid=namespace[1], **fields)


_FILE = _Record(_snapshot_of, (
    _Field("format", _Fixed(FORMAT), _nothing, None),
    _Field("version", _Fixed(VERSION), _nothing, None),
    _field("taken_at", _Moment()),
    _Field("namespace", _NAMESPACE, attrgetter("namespace", "pid"), "namespace"),
    _field("frozen", _Maybe(_Text(r"cgroup|sigstop|cgroup\+sigstop"))),
    _field("limits", _LIMITS),
    _field("queues", _List(_QUEUE, unique=True)),
    _field("semaphore_sets", _List(_SEMAPHORE_SET, unique=True)),
    # Version 1 is version 2 without segments.
    _field("segments", _List(_SEGMENT, unique=True), since=2),
    _field("segments_left_out", _List(_ID), since=2),
))


def body(snap: Snapshot, blobs: _Blobs) -> Dict[str, Any]:
    """The file's fields but the checksum; each segment's data stands in as a token of
    ``blobs``."""
    return _FILE.write(snap, blobs)


def kind_of(name: str) -> Optional[_Kind]:
    """The kind of the file's top-level field ``name`` (None: the checksum)."""
    return next((f.kind for f in _FILE.fields if f.name == name), None)


def check(doc: Any, blobs: Optional[_Blobs]) -> Snapshot:
    """The snapshot a parsed file holds, every field checked; ``blobs``: the data
    strings the reader kept out of the parsed text."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotFormatError(f"not an ipcbind snapshot file (no \"format\": "
                                  f"\"{FORMAT}\")")
    version = doc.get("version")
    # Exactly the integer: true and 1.0 equal 1 in Python but are not what is written.
    if type(version) is not int or version not in _VERSIONS:
        raise SnapshotFormatError(f"snapshot file version {json.dumps(version)[:20]} is "
                                  "not supported (this ipcbind reads versions "
                                  f"{', '.join(map(str, _VERSIONS))})")
    o = _members(doc, "top level", [*_FILE.names(version), "checksum"])
    if o["checksum"] != _digest({k: v for k, v in o.items() if k != "checksum"}, blobs):
        raise SnapshotFormatError("snapshot file: checksum does not match the content "
                                  "(the file is damaged or was edited)")
    snap: Snapshot = _FILE.fill(o, "", blobs, version)
    return snap
