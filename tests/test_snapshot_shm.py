"""Shared memory segments in snapshots: captured with their bytes, restored with the same
ids, all or nothing, in real namespaces, with segments made by ipcbind, ipcmk and C."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import NOBODY, reap, run_in_child, start_child
from nschild import needs_ns_root, ns_child

from ipcbind import syscalls as sc
from ipcbind.cli import main
from ipcbind.namespace import enter_namespace, list_queues, list_segments
from ipcbind.shm import SharedMemory
from ipcbind.snapshot import (Limits, RestoreConflictError, RestoreError, RestoreInterrupted,
                              SegmentLeftOutWarning, SegmentState, Snapshot,
                              SnapshotFormatError, _digest, dump, dumps, load, loads, restore,
                              snapshot)

WRITER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/shm.h>
int main(int argc, char **argv) {
    size_t size = strtoul(argv[1], 0, 10);
    int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0660);
    if (id < 0) { perror("shmget"); return 1; }
    unsigned char *p = shmat(id, 0, 0);
    if (p == (void *)-1) { perror("shmat"); return 1; }
    for (size_t i = 0; i < size; i++) p[i] = (unsigned char)(i * 7 + i / 4096);
    shmdt(p);
    printf("%d\n", id);
    return 0;
}
"""

C_SIZE = 3 << 20  # a few MiB: the bytes go through base64 and back in chunks of pages
LIMITS = Limits(8192, 16384, 32000, 32000, 1024000000, 500, 32000)


def _pattern(size: int) -> bytes:
    return bytes((i * 7 + i // 4096) & 0xFF for i in range(size))


@pytest.fixture(scope="module")
def writer(build: Callable[[str, str], str]) -> str:
    return build("snapshot_segment_filler", WRITER)


def _populate(writer: str) -> Callable[[], Dict[str, Any]]:
    def setup() -> Dict[str, Any]:
        with open("/proc/sys/kernel/shm_next_id", "w") as f:
            f.write("4100")
        mine = SharedMemory.create(5000, 0xCAFE0003, 0o640)
        mine.write(b"ipcbind " + bytes(range(256)) + b" end", 100)
        mine.detach()
        sc.shmctl(mine.id, sc.IPC_SET, {"uid": 65534, "gid": 65533, "mode": 0o640})
        made = subprocess.run([shutil.which("ipcmk") or "ipcmk", "-M", "3000", "-p", "0604"],
                              check=True, capture_output=True, text=True).stdout
        by_ipcmk = int(made.split()[-1])
        by_c = int(subprocess.run([writer, str(C_SIZE)], check=True, capture_output=True,
                                  text=True).stdout)
        return {"ipcbind": mine.id, "ipcmk": by_ipcmk, "c": by_c}
    return setup


needs_ipcmk = pytest.mark.skipif(shutil.which("ipcmk") is None, reason="needs util-linux's ipcmk")


def _segments(pid: int) -> List[Tuple[int, sc.ShmidDs]]:
    with enter_namespace(pid):
        return list_segments()


def _proc(pid: int, name: str) -> str:
    with enter_namespace(pid):
        with open(f"/proc/sys/kernel/{name}") as f:
            return f.read().strip()


def _nothing_left(pid: int) -> None:
    with enter_namespace(pid):
        assert list_segments() == [] and list_queues() == [], "a failed restore left objects"
    for kind in ("msg", "sem", "shm"):
        assert _proc(pid, f"{kind}_next_id") == "-1", f"{kind}_next_id left armed"


@pytest.fixture(scope="module")
def taken(writer: str) -> Iterator[Tuple[Snapshot, Dict[str, int]]]:
    with ns_child(_populate(writer)) as (pid, made):
        yield snapshot(pid), made


@needs_ns_root
@needs_ipcmk
def test_snapshot_carries_every_segment_with_its_fields_and_bytes(
        taken: Tuple[Snapshot, Dict[str, int]]) -> None:
    snap, made = taken
    by_id = {m.id: m for m in snap.segments}
    assert sorted(by_id) == sorted(made.values()) and snap.segments_left_out == ()
    mine = by_id[made["ipcbind"]]
    assert (mine.id, mine.key, mine.uid, mine.gid, mine.cuid, mine.cgid, mine.mode,
            mine.size) == (4100, 0xCAFE0003, 65534, 65533, 0, 0, 0o640, 5000)
    assert mine.data == (bytes(100) + b"ipcbind " + bytes(range(256)) + b" end"
                         + bytes(5000 - 100 - 268))
    assert (by_id[made["ipcmk"]].mode, by_id[made["ipcmk"]].size) == (0o604, 3000)
    assert by_id[made["ipcmk"]].key != 0 and by_id[made["ipcmk"]].data == bytes(3000)
    c = by_id[made["c"]]
    assert (c.key, c.mode, c.size) == (0, 0o660, C_SIZE) and c.data == _pattern(C_SIZE)


@needs_ns_root
@needs_ipcmk
def test_segments_restored_into_a_fresh_namespace_equal_the_originals_field_by_field(
        taken: Tuple[Snapshot, Dict[str, int]]) -> None:
    snap, made = taken
    with ns_child() as (other, _):
        done = restore(loads(dumps(snap)), other)
        again = snapshot(other)
        stats = dict(_segments(other))
        assert _proc(other, "shm_next_id") == "-1"
    assert sorted(done.segments) == sorted(made.values())
    assert again.segments == snap.segments
    for m in snap.segments:
        ds = stats[m.id]
        assert (ds.key, ds.uid, ds.gid, ds.mode, ds.segsz, ds.nattch, ds.dest) == (
            m.key, m.uid, m.gid, m.mode, m.size, 0, False)


_keep: List[Any] = []  # attachments the namespace child holds until it exits


def _attached_setup() -> Dict[str, Any]:
    with open("/proc/sys/kernel/shm_next_id", "w") as f:
        f.write("7")
    seg = SharedMemory.create(4096, 0xCAFE0004)
    seg.write(b"still here")  # its attachment stays, held in _keep
    _keep.append(seg)
    before = dataclasses.asdict(seg.stat())
    return {"id": seg.id, "before": before}


@needs_ns_root
def test_snapshot_reading_a_segment_sets_only_its_lpid_atime_dtime() -> None:
    with ns_child(_attached_setup) as (pid, made):
        snapshot(pid)
        after = dataclasses.asdict(dict(_segments(pid))[made["id"]])
    before = made["before"]
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= {"lpid", "atime", "dtime"}
    assert after["lpid"] == os.getpid() and after["nattch"] == 1


def _removed_but_attached() -> Dict[str, int]:
    gone = SharedMemory.create(4096, 0xCAFE0005)
    gone.write(b"doomed")  # keeps an attachment: the segment outlives IPC_RMID
    _keep.append(gone)
    sc.shmctl(gone.id, sc.IPC_RMID)
    live = SharedMemory.create(4096, 0xCAFE0006)
    return {"gone": gone.id, "live": live.id}


@needs_ns_root
def test_a_segment_marked_for_removal_is_left_out_with_a_warning_and_listed_in_the_file(
        capsys: pytest.CaptureFixture[str]) -> None:
    with ns_child(_removed_but_attached) as (pid, made):
        with pytest.warns(SegmentLeftOutWarning, match=f"segment {made['gone']} is marked"):
            snap = snapshot(pid)
        out = io.StringIO()
        code = main(["dump", "--pid", str(pid), "-o", os.devnull], out=out)
    assert [m.id for m in snap.segments] == [made["live"]]
    assert snap.segments_left_out == (made["gone"],)
    assert json.loads(dumps(snap))["segments_left_out"] == [made["gone"]]
    assert loads(dumps(snap)).segments_left_out == (made["gone"],)
    assert code == 0 and "1 segment(s) holding 4096 byte(s)" in out.getvalue()
    assert f"warning: segment {made['gone']} is marked for removal" in capsys.readouterr().err


def _seg(ident: int, key: int = 0, size: int = 4096, fill: int = 1) -> SegmentState:
    return SegmentState(ident, key, 0, 0, 0, 0, 0o600, size, bytes([fill]) * size)


def _snap(*segments: SegmentState) -> Snapshot:
    return Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None, LIMITS, (), (), segments)


@needs_ns_root
def test_restore_of_a_segment_above_shmmax_fails_and_leaves_nothing() -> None:
    snap = _snap(_seg(5), _seg(9, 0x5EE0001), _seg(12, size=1 << 20))

    def low_shmmax() -> None:
        with open("/proc/sys/kernel/shmmax", "w") as f:
            f.write(str(1 << 16))

    with ns_child(low_shmmax) as (other, _):
        with pytest.raises(RestoreError, match=r"segment 12 \(1048576 bytes\).*shmmax 65536"
                           r".*removed the 2 object"):
            restore(snap, other)
        _nothing_left(other)
        assert _proc(other, "shmmax") == str(1 << 16)


@needs_ns_root
def test_restore_beyond_shmmni_fails_leaves_nothing_and_disarms_shm_next_id() -> None:
    snap = _snap(_seg(1), _seg(2), _seg(3))

    def low_shmmni() -> None:
        with open("/proc/sys/kernel/shmmni", "w") as f:
            f.write("2")

    with ns_child(low_shmmni) as (other, _):
        with pytest.raises(RestoreError, match=r"segment 3 .*shmmni"):
            restore(snap, other)
        _nothing_left(other)
        assert _proc(other, "shmmni") == "2"


@needs_ns_root
def test_restore_interrupted_by_ctrl_c_at_a_segment_removes_every_segment() -> None:
    snap = _snap(*(_seg(i * 2, 0x5EE0100 + i, fill=i) for i in range(6)))

    def progress(done: int, total: int, what: str) -> None:
        if done == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with ns_child() as (other, _):
        # The signal comes as segment 3 is announced; the restore stops after making it.
        with pytest.raises(RestoreInterrupted, match="removed the 4 object"):
            restore(snap, other, progress=progress)
        _nothing_left(other)


@needs_ns_root
def test_restore_killed_at_a_segment_is_cleaned_up_by_the_next_restore() -> None:
    snap = _snap(*(_seg(i * 2, 0x5EE0200 + i, fill=i) for i in range(6)))

    def body(other: int) -> Callable[[], int]:
        def run() -> int:
            def progress(done: int, total: int, what: str) -> None:
                if done == 4:
                    os.kill(os.getpid(), signal.SIGKILL)
            restore(snap, other, progress=progress)
            return 0
        return run

    with ns_child() as (other, _):
        assert reap(start_child(body(other))) == -signal.SIGKILL
        assert len(_segments(other)) == 4
        done = restore(snap, other)
        assert snapshot(other).segments == snap.segments
    assert [c for c in done.cleaned if c.startswith("segment")] == [
        f"segment {i * 2}" for i in range(4)]


@needs_ns_root
@pytest.mark.parametrize("clash", ["id", "index", "key"])
def test_restore_refuses_to_clobber_an_existing_segment(clash: str) -> None:
    snap = _snap(_seg(6, 0x5EE0300))

    def existing() -> int:
        with open("/proc/sys/kernel/shm_next_id", "w") as f:
            f.write({"id": "6", "index": str(6 + 32768), "key": "9"}[clash])
        return sc.shmget(0x5EE0300 if clash == "key" else 0, 4096, sc.IPC_CREAT | 0o600)

    with ns_child(existing) as (other, ident):
        with pytest.raises(RestoreConflictError, match="segment (id|key)"):
            restore(snap, other)
        assert [i for i, _ in _segments(other)] == [ident]
        assert _proc(other, "shm_next_id") == "-1"


# ---- long data in the file: decoded as it is read --------------------------------------

BIG_SNAP = _snap(_seg(1, 0x5EE0400, size=C_SIZE + 5, fill=0),
                 SegmentState(2, 0, 0, 0, 0, 0, 0o600, 70000, _pattern(70000)))


def test_a_file_with_megabytes_of_segment_data_loads_back_equal(tmp_path: Any) -> None:
    path = tmp_path / "big.json"
    dump(BIG_SNAP, path)
    assert load(path) == BIG_SNAP
    with open(path) as text_file:
        assert load(text_file) == BIG_SNAP
    assert path.read_text() == dumps(BIG_SNAP)


class _Trickle(io.BytesIO):
    """A stream that hands out at most 4097 bytes a read, to split strings anywhere."""

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a stream")

    def read(self, n: Optional[int] = -1) -> bytes:
        return super().read(4097 if n is None or n < 0 else min(n, 4097))


def test_long_data_read_through_a_pipe_in_small_reads_loads_back_equal() -> None:
    assert load(_Trickle(dumps(BIG_SNAP).encode())) == BIG_SNAP


def test_long_data_split_across_reads_is_checked_piece_by_piece() -> None:
    data = json.loads(dumps(BIG_SNAP))["segments"][1]["data"]
    for bad, why in ((data[:80000] + "AA==" + data[80000:], "not valid base64|after its padding"),
                     (data[:-1] + "@", "is not base64")):
        with pytest.raises(SnapshotFormatError, match=why):
            load(_Trickle(_big_damaged(lambda d: bad)))


def _big_damaged(edit: Callable[[str], str]) -> bytes:
    doc = json.loads(dumps(BIG_SNAP))
    doc["segments"][1]["data"] = edit(doc["segments"][1]["data"])
    doc.pop("checksum")
    doc["checksum"] = _digest(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("edit,why", [
    (lambda d: d[:-1] + "@", r"segments\[1\].data"),
    (lambda d: d[:-4] + "AB==", "not base64 as written"),
    (lambda d: d + "A", "not a multiple of 4"),
    (lambda d: d[:80000] + "AA==" + d[80000:], "is not (valid )?base64"),
    (lambda d: d[:-12] + d[-4:], "size says 70000 bytes but data holds 69994"),
], ids=["bad character", "spare bits", "short quad", "padding inside", "size mismatch"])
def test_loader_refuses_long_data_that_is_not_base64_as_written(
        tmp_path: Any, edit: Callable[[str], str], why: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(_big_damaged(edit))
    with pytest.raises(SnapshotFormatError, match=why):
        load(path)


def test_a_long_string_with_escaped_quotes_outside_data_is_refused_naming_its_field(
        tmp_path: Any) -> None:
    doc = json.loads(dumps(BIG_SNAP))
    doc["frozen"] = 'x\\"' * 40000
    doc.pop("checksum")
    doc["checksum"] = _digest(doc)
    path = tmp_path / "long.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SnapshotFormatError, match="frozen"):
        load(path)
    with pytest.raises(SnapshotFormatError, match="frozen"):
        load(_Trickle(path.read_bytes()))  # escapes split across reads


def test_short_strings_with_escapes_split_across_reads_load_as_json_reads_them() -> None:
    snap = dataclasses.replace(BIG_SNAP, frozen="sigstop")
    # The same JSON with the value spelt with an escape, at every offset of a read.
    raw = dumps(snap).encode().replace(b'"frozen": "sigstop"', b'"frozen": "sig\\u0073top"')
    assert b"\\u0073" in raw
    for skip in range(0, 4097, 257):
        assert load(_Trickle(b" " * skip + raw)) == snap


def test_a_file_above_max_size_is_refused_saying_its_size_and_how_to_raise_it(
        tmp_path: Any) -> None:
    path = tmp_path / "big.json"
    dump(BIG_SNAP, path)
    size = path.stat().st_size
    with pytest.raises(SnapshotFormatError, match=f"{size} bytes, larger than 1000000 bytes.*"
                       "--max-size"):
        load(path, max_size=1000000)


# ---- progress and permissions ------------------------------------------------------------

def _two_segments() -> List[int]:
    return [SharedMemory.create(size, mode=0o600).id for size in (4096, 8192)]


@needs_ns_root
def test_progress_of_snapshot_and_restore_counts_segments_and_their_bytes() -> None:
    seen: List[Tuple[int, int, str]] = []

    def progress(done: int, total: int, what: str) -> None:
        seen.append((done, total, what))

    with ns_child(_two_segments) as (pid, made):
        snap = snapshot(pid, progress=progress)
    a, b = made
    assert seen == [(0, 2, f"segment {a} (4.0 KiB): 0 B/12.0 KiB of segments done"),
                    (1, 2, f"segment {b} (8.0 KiB): 4.0 KiB/12.0 KiB of segments done"),
                    (2, 2, "done")]
    seen.clear()
    with ns_child() as (other, _):
        restore(snap, other, progress=progress)
    assert [w for _, _, w in seen] == [
        f"segment {a} (4.0 KiB): 0 B/12.0 KiB of segments done",
        f"segment {b} (8.0 KiB): 4.0 KiB/12.0 KiB of segments done", "done"]


def _unreadable_segment() -> Dict[str, int]:
    seg = SharedMemory.create(4096, mode=0o600)

    def as_nobody() -> int:
        try:
            snapshot()
        except PermissionError as e:
            return 3 if f"no read permission on segment {seg.id}" in str(e) else 4
        return 5

    return {"code": run_in_child(as_nobody, uid=NOBODY)}


@needs_ns_root
def test_snapshot_without_read_permission_on_a_segment_names_it() -> None:
    with ns_child(_unreadable_segment) as (_, made):
        assert made["code"] == 3


@needs_ns_root
def test_cli_dump_and_restore_report_segments_and_their_bytes(tmp_path: Any) -> None:
    path = tmp_path / "ns.json"
    with ns_child(_two_segments) as (pid, made):
        out = io.StringIO()
        assert main(["dump", "--pid", str(pid), "-o", str(path), "--json"], out=out) == 0
    counts = json.loads(out.getvalue())
    assert (counts["segments"], counts["segment_bytes"], counts["segments_left_out"]) == (
        2, 12288, 0)
    with ns_child() as (other, _):
        out = io.StringIO()
        assert main(["restore", str(path), "--pid", str(other), "--json"], out=out) == 0
        assert [i for i, _ in _segments(other)] == made
    assert json.loads(out.getvalue())["segments"] == made
