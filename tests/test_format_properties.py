"""Property tests and fuzzing of the two file formats ipcbind reads: the snapshot file
(any generated namespace round-trips; damaged, truncated or edited files give
SnapshotFormatError and nothing else) and /proc/<pid>/semundo (any bytes give a
well-formed result or ValueError and nothing else). Nothing here needs the kernel.

Hypothesis settings come from ``_hypothesis_profiles`` (``IPCBIND_HYPOTHESIS_PROFILE=long``
for a long run).
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipcbind.semundo import read_semundo
from ipcbind.snapshot import (_INDEX_MASK, Limits, QueueState, SegmentState, SemaphoreSetState,
                              Snapshot, SnapshotFormatError, dump, dumps, load, loads)
from _hypothesis_profiles import budget

U32 = 2 ** 32 - 1
INT_MAX = 2 ** 31 - 1
# Far above what any single parse here takes, even on a busy machine: reaching it
# means a loop that does not end.
HANG_SECONDS = 30


class Hang(Exception):
    """A parser ran for HANG_SECONDS."""


@contextmanager
def bounded(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM after ``seconds`` raises Hang in the block."""
    def ring(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- generated snapshots --------------------------------------------------------------

ids = st.integers(0, INT_MAX)
keys = st.just(0) | st.just(0) | st.integers(1, U32) | st.just(U32)
owners = st.integers(0, U32) | st.sampled_from([0, 65534, U32])
modes = st.integers(0, 0o777)
payloads = st.binary(max_size=40) | st.sampled_from([b"", b"\0", b"\0" * 7, bytes(range(256))])
messages = st.lists(st.tuples(st.integers(1, 2 ** 63 - 1), payloads), max_size=4).map(tuple)

queue_states = st.builds(QueueState, ids, keys, owners, owners, owners, owners, modes,
                         st.integers(0, 2 ** 63 - 1), messages)
semset_states = st.builds(SemaphoreSetState, ids, keys, owners, owners, owners, owners, modes,
                          st.lists(st.integers(0, 32767), min_size=1, max_size=6).map(tuple))

segment_states = st.binary(min_size=1, max_size=64).flatmap(
    lambda data: st.builds(SegmentState, ids, keys, owners, owners, owners, owners, modes,
                           st.just(len(data)), st.just(data)))


def _unique(objs: Any) -> Any:
    """No index (id modulo the index range) twice, no non-private key twice
    (IPC_PRIVATE may repeat): what the loader accepts."""
    return st.lists(objs, max_size=4,
                    unique_by=(lambda o: o.id & _INDEX_MASK,
                               lambda o: o.key or -1 - o.id)).map(tuple)


limits = st.builds(Limits, *[st.integers(0, INT_MAX)] * 7)
taken_at = st.datetimes(min_value=datetime(1000, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
snapshots = st.builds(Snapshot, taken_at, st.integers(0, 2 ** 64 - 1),
                      st.none() | st.integers(1, INT_MAX),
                      st.sampled_from([None, "cgroup", "sigstop", "cgroup+sigstop"]),
                      limits, _unique(queue_states), _unique(semset_states),
                      _unique(segment_states), st.lists(ids, max_size=3).map(tuple))


@budget(150)
@given(snapshots)
def test_any_snapshot_round_trips_through_the_file_format(snap: Snapshot) -> None:
    text = dumps(snap)
    assert loads(text) == snap
    assert loads(text.encode()) == snap
    assert dumps(loads(text)) == text
    f = io.StringIO()
    dump(snap, f)
    f.seek(0)
    assert load(f) == snap
    assert load(io.BytesIO(text.encode())) == snap


# ---- fuzzing the snapshot loader --------------------------------------------------------

def load_or_refuse(data: Union[str, bytes]) -> Any:
    """loads(data) or None when it refused with SnapshotFormatError; any other
    exception, or a hang, fails the test."""
    with bounded():
        try:
            return loads(data)
        except SnapshotFormatError:
            return None


@budget(500)
@given(st.binary(max_size=600) | st.text(max_size=300))
def test_loader_refuses_arbitrary_input_with_snapshot_format_error(data: Union[str, bytes]) -> None:
    assert load_or_refuse(data) is None
    if isinstance(data, bytes):
        with bounded(), pytest.raises(SnapshotFormatError):
            load(io.BytesIO(data))


Mutation = Tuple[str, int, int, bytes]
mutations = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "delete", "insert",
                                                "duplicate"]),
                               st.integers(0, 2 ** 16), st.integers(1, 255),
                               st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=4)


def mutate(raw: bytes, steps: List[Mutation]) -> bytes:
    """Damage raw as a disk, a transfer or a careless editor might."""
    b = bytearray(raw)
    for kind, at, n, extra in steps:
        at %= len(b) + 1
        if kind == "flip" and at < len(b):
            b[at] ^= n
        elif kind == "truncate":
            del b[at:]
        elif kind == "delete":
            del b[at:at + n % 16 + 1]
        elif kind == "insert":
            b[at:at] = extra
        elif kind == "duplicate":
            b[at:at] = b[at:at + n]
    return bytes(b)


@budget(200)
@given(snapshots, mutations)
def test_damaged_snapshot_file_is_refused_or_still_means_the_same(
        snap: Snapshot, steps: List[Mutation]) -> None:
    """The checksum catches damage; what loads after all (a change of white space,
    say) is the snapshot that was written."""
    got = load_or_refuse(mutate(dumps(snap).encode(), steps))
    assert got is None or got == snap


LONG = Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None, Limits(*[1] * 7), (), (),
                (SegmentState(1, 0, 0, 0, 0, 0, 0o600, 70000, bytes(range(250)) * 280),))
LONG_TEXT = dumps(LONG).encode()


@budget(40)
@given(mutations)
def test_damaged_file_with_long_data_read_in_pieces_is_refused_or_still_means_the_same(
        steps: List[Mutation]) -> None:
    """The same through load, which decodes data longer than 64 KiB as it reads it."""
    with bounded():
        try:
            got = load(io.BytesIO(mutate(LONG_TEXT, steps)))
        except SnapshotFormatError:
            return
    assert got == LONG


def _paths(doc: Any, here: Tuple[Any, ...] = ()) -> Iterator[Tuple[Any, ...]]:
    """Every place in a parsed JSON document, the root included."""
    yield here
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, here + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, here + (i,))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 63, 2 ** 64, 32768, "0x00000000", "0600",
                       "AA==", "AB==", "cgroup", "", True, 1.0,
                       "٢٠٢٦-11-22T06:46:23.116172Z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _resealed(doc: Dict[str, Any]) -> str:
    """The document with a checksum that matches it, as a deliberate edit would be."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    doc["checksum"] = "sha256:" + hashlib.sha256(_canonical(body).encode()).hexdigest()
    return json.dumps(doc)


@budget(200)
@given(snapshots, st.data())
def test_edited_snapshot_file_is_refused_or_holds_exactly_what_dumps_would_write(
        snap: Snapshot, data: st.DataObject) -> None:
    """An edit behind a recomputed checksum reaches the field checks: a field
    replaced by any JSON value, removed, or joined by an unknown one. What loads
    must be what dumps() writes for the result: nothing is silently changed."""
    doc = json.loads(dumps(snap))
    where = data.draw(st.sampled_from(list(_paths(doc))[1:]), label="where")
    parent = doc
    for step in where[:-1]:
        parent = parent[step]
    action = data.draw(st.sampled_from(["replace", "remove", "add"]), label="action")
    if action == "replace":
        parent[where[-1]] = data.draw(json_values, label="value")
    elif action == "remove":
        del parent[where[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8), label="name")] = data.draw(json_values)
    else:
        parent.insert(where[-1], data.draw(json_values, label="value"))
    got = load_or_refuse(_resealed(doc))
    if got is not None:
        assert _canonical(json.loads(dumps(got))) == _canonical(doc)


# ---- fuzzing the semundo parser ---------------------------------------------------------

PID = 4242


@pytest.fixture(scope="module")
def proc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like /proc with one process, PID, whose semundo file
    each example rewrites."""
    root = tmp_path_factory.mktemp("proc")
    (root / str(PID)).mkdir()
    return root


def read_or_refuse(root: Path, content: bytes) -> Any:
    """read_semundo of a file holding content, or None when it raised ValueError;
    anything else, or a hang, fails the test. A result must be well-formed."""
    (root / str(PID) / "semundo").write_bytes(content)
    with bounded():
        try:
            got = read_semundo(PID, proc_root=root)
        except ValueError as e:
            assert "semundo: line " in str(e)
            return None
    assert isinstance(got, dict)
    for semid, adjs in got.items():
        assert type(semid) is int and 0 <= semid <= INT_MAX
        assert adjs and all(type(a) is int and -32768 <= a <= 32767 for a in adjs)
    return got


@budget(200)
@given(st.binary(max_size=400))
def test_semundo_parser_gives_a_result_or_value_error_for_any_bytes(proc_root: Path,
                                                                     content: bytes) -> None:
    read_or_refuse(proc_root, content)


tokens = (st.integers(-2 ** 16, 2 ** 31 + 1).map(str)
          | st.integers(-32768, 32767).map(lambda v: f"+{v}" if v >= 0 else str(v))
          | st.sampled_from(["0", "-0", "+", "-", "00012", "1e3", "0x10", "٣", "2147483648",
                             "32768", "-32769", "9" * 5000, "1.5", "\0", "\xff"])
          | st.text(max_size=4))
spaces = st.sampled_from([" ", "  ", "\t", "\r", "\x0b", "\x0c", " \t "])


@st.composite
def semundo_texts(draw: Any) -> bytes:
    """Lines that look like the format often enough to get past the first token."""
    lines = []
    for tokens_of_line in draw(st.lists(st.lists(tokens, max_size=5), max_size=6)):
        sep = draw(spaces)
        lines.append(draw(spaces | st.just("")) + sep.join(tokens_of_line))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@budget(150)
@given(semundo_texts())
def test_semundo_parser_gives_a_result_or_value_error_for_near_valid_text(
        proc_root: Path, content: bytes) -> None:
    read_or_refuse(proc_root, content)


undo_states = st.dictionaries(st.integers(0, INT_MAX),
                              st.lists(st.integers(-32768, 32767), min_size=1, max_size=6),
                              max_size=5)


@budget(100)
@given(undo_states, spaces, st.booleans())
def test_semundo_parser_reads_back_any_undo_state_in_any_layout(
        proc_root: Path, state: Dict[int, List[int]], sep: str, blank_lines: bool) -> None:
    lines = [sep.join(str(v) for v in [semid, *adjs]) for semid, adjs in state.items()]
    text = ("\n\n" if blank_lines else "\n").join(lines) + "\n"
    got = read_or_refuse(proc_root, text.encode())
    assert got == state
    assert list(got) == list(state)


# ---- what the fuzzing found ----------------------------------------------------------------

def test_snapshot_number_of_thousands_of_digits_is_a_snapshot_format_error() -> None:
    # Python refuses to convert such a number with a plain ValueError (int_max_str_digits:
    # 3.11, and 3.9.14 / 3.10.7 on); older versions parse it and refuse the version.
    with pytest.raises(SnapshotFormatError):
        loads('{"format": "ipcbind-snapshot", "version": ' + "9" * 5000 + "}")


def test_semundo_number_of_thousands_of_digits_is_a_value_error_naming_the_line(
        proc_root: Path) -> None:
    (proc_root / str(PID) / "semundo").write_bytes(b"1 2\n3 " + b"9" * 5000 + b"\n")
    with pytest.raises(ValueError, match=r"semundo: line 2: the 5000-character number "
                                         r"9+\.\.\. is far outside any valid range"):
        read_semundo(PID, proc_root=proc_root)


def test_semundo_leading_zeros_do_not_count_against_the_digit_limit(proc_root: Path) -> None:
    (proc_root / str(PID) / "semundo").write_bytes(b"0" * 5000 + b"7 -" + b"0" * 5000 + b"5 +00\n")
    assert read_semundo(PID, proc_root=proc_root) == {7: [-5, 0]}


def _edited(**fields: Any) -> str:
    """A valid snapshot file with top-level fields replaced, checksum recomputed."""
    snap = Snapshot("2026-11-22T06:46:23.116172Z", 1, None, None, Limits(1, 2, 3, 4, 5, 6, 7),
                    (QueueState(0, 0, 0, 0, 0, 0, 0o600, 16384, ((1, b"\0"),)),), ())
    doc = json.loads(dumps(snap))
    doc.update(fields)
    return _resealed(doc)


@pytest.mark.parametrize("version", [True, 1.0])
def test_snapshot_version_must_be_the_integer_1(version: Any) -> None:
    with pytest.raises(SnapshotFormatError, match="version"):
        loads(_edited(version=version))


def test_snapshot_taken_at_takes_ascii_digits_only() -> None:
    with pytest.raises(SnapshotFormatError, match="taken_at"):
        loads(_edited(taken_at="٢٠٢٦-11-22T06:46:23.116172Z"))


def _field(lo: int, hi: int) -> Any:
    """Mostly within lo..hi, often anywhere the two digits allow."""
    return st.integers(lo, hi) | st.integers(0, 99)


calendar_fields = st.tuples(st.integers(0, 9999), _field(1, 12), _field(1, 31), _field(0, 23),
                            _field(0, 59), _field(0, 59), st.integers(0, 999999))


@budget(300)
@given(calendar_fields)
def test_snapshot_taken_at_loads_exactly_when_it_is_on_the_calendar(
        fields: Tuple[int, int, int, int, int, int, int]) -> None:
    year, month, day, hour, minute, second, micro = fields
    text = (f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}."
            f"{micro:06d}Z")
    try:
        datetime(*fields)
        real = True
    except ValueError:
        real = False
    got = load_or_refuse(_edited(taken_at=text))
    assert (got is not None) == real, text
    if got is not None:
        assert got.taken_at == text


def test_snapshot_data_with_spare_base64_bits_set_is_refused() -> None:
    doc = json.loads(_edited())
    assert doc["queues"][0]["messages"][0]["data"] == "AA=="
    doc["queues"][0]["messages"][0]["data"] = "AB=="  # decodes to the same single NUL
    with pytest.raises(SnapshotFormatError, match=r"messages\[0\]\.data"):
        loads(_resealed(doc))


@budget(100)
@given(snapshots, st.data())
def test_snapshot_file_with_a_member_given_twice_is_refused(snap: Snapshot,
                                                            data: st.DataObject) -> None:
    """A second member of the same name, before or after the real one and with any
    value: readers disagree on which one counts, so the file is refused whatever the
    checksum says."""
    doc = json.loads(dumps(snap))
    objects = [p for p in _paths(doc) if isinstance(_at(doc, p), dict)]
    where = data.draw(st.sampled_from(objects), label="object")
    target = _at(doc, where)
    name = data.draw(st.sampled_from(sorted(set(target) - {"checksum"})), label="member")
    value = data.draw(json_values, label="value")
    placeholder = "\u0000twice\u0000"
    members = list(target.items())
    at = data.draw(st.integers(0, len(members)), label="position")
    target.clear()
    target.update(members[:at] + [(placeholder, value)] + members[at:])
    text = json.dumps(doc).replace(json.dumps(placeholder), json.dumps(name))
    # A checksum that matches what a reader keeping the last member would read: the
    # file is refused for the duplicate, not for its checksum.
    parsed = json.loads(text)
    text = text.replace(json.dumps(parsed["checksum"]),
                        json.dumps(json.loads(_resealed(parsed))["checksum"]))
    assert load_or_refuse(text) is None


def _at(doc: Any, path: Tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


@budget(40)
@given(snapshots, st.integers(1, 3000), st.sampled_from(["[", '{"a": ']))
def test_snapshot_file_nested_at_any_depth_is_refused_cleanly(snap: Snapshot, depth: int,
                                                              opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    doc = json.loads(dumps(snap))
    doc["queues"] = ["NESTED"]
    text = json.dumps(doc).replace('"NESTED"', opener * depth + "0" + closer * depth)
    assert load_or_refuse(text) is None
