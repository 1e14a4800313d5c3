"""Shared memory segments in the command line: ``ipcbind ls`` (text and JSON) and
``ipcbind peek --segment``."""

from __future__ import annotations

import base64
import json
import os
from typing import Dict, Iterator, List

import psutil
import pytest

from conftest import NOBODY, needs_root, run_in_child
from nschild import needs_ns_root, ns_child
from test_cli import run

from ipcbind import IPC_RMID, SHM_LOCK, SharedMemory
from ipcbind import syscalls as sc

_HELD: List[sc.Attachment] = []  # in the namespace child: attachments that outlive setup


def _segments() -> Dict[str, int]:
    kept = SharedMemory.create(5000, key=0x9ABC, mode=0o640)
    kept.write(b"inside", 100)
    _HELD.append(kept.attach())
    sc.shmctl(kept.id, SHM_LOCK)
    dest = SharedMemory.create(4096, key=0x9ABD)
    _HELD.append(dest.attach())
    sc.shmctl(dest.id, IPC_RMID)
    return {"kept": kept.id, "dest": dest.id, "pid": os.getpid()}


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    with SharedMemory.create(1000, mode=0o600) as s:
        s.write(bytes(range(256)) * 3, 10)
        s.detach()
        yield s


# ---- ls ------------------------------------------------------------------------------------

@needs_ns_root
def test_ls_lists_the_namespaces_segments_with_status_and_processes() -> None:
    with ns_child(_segments) as (pid, made):
        code, out = run("ls", "--pid", pid)
        jcode, jout = run("--pid", pid, "ls", "--json")
    assert code == jcode == 0
    segments = {m["id"]: m for m in json.loads(jout)["segments"]}
    assert sorted(segments) == sorted((made["kept"], made["dest"]))
    kept, dest = segments[made["kept"]], segments[made["dest"]]
    name = psutil.Process().name()
    assert (kept["key"], kept["mode"], kept["size"], kept["nattch"], kept["dest"],
            kept["locked"], kept["cpid"], kept["creator"]) == (
        "0x00009abc", "0640", 5000, 1, False, True, pid, name)
    assert (dest["key"], dest["nattch"], dest["dest"], dest["locked"]) == (
        "0x00000000", 1, True, False)
    assert set(kept) == {"id", "key", "uid", "gid", "owner", "group", "cuid", "cgid", "cuser",
                         "cgroup", "mode", "size", "nattch", "cpid", "lpid", "creator",
                         "last_process", "dest", "locked", "atime", "atime_iso", "dtime",
                         "dtime_iso", "ctime", "ctime_iso"}
    assert kept["atime"] > 0 and kept["ctime"] > 0
    table = out.split("------ Shared Memory Segments --------\n")[1].splitlines()
    assert table[0].split()[:7] == ["key", "shmid", "owner", "perms", "bytes", "nattch",
                                    "status"]
    rows = {line.split()[1]: line.split() for line in table[1:]}
    assert rows[str(made["kept"])][:8] == ["0x00009abc", str(made["kept"]), "root", "640", "5000",
                                          "1", "locked", f"{pid}({name})"]
    assert rows[str(made["dest"])][6] == "dest"


def test_ls_row_of_a_segment_removed_and_locked_has_one_word_per_column(
        shm: SharedMemory) -> None:
    try:
        sc.shmctl(shm.id, SHM_LOCK)
    except PermissionError:
        pytest.skip("SHM_LOCK needs CAP_IPC_LOCK or room under RLIMIT_MEMLOCK")
    with shm.attach():
        shm.remove()
        code, out = run("ls", "-m")
    assert code == 0
    header, *rows = out.split("------ Shared Memory Segments --------\n")[1].splitlines()
    [row] = [r.split() for r in rows if r.split()[1] == str(shm.id)]
    assert len(row) == len(header.split()) and row[6] == "dest,locked"


def test_ls_json_segment_agrees_with_shmctl(shm: SharedMemory) -> None:
    code, out = run("ls", "--json")
    assert code == 0
    doc = next(m for m in json.loads(out)["segments"] if m["id"] == shm.id)
    ds = shm.stat()
    assert (doc["size"], doc["nattch"], doc["cpid"], doc["lpid"], doc["uid"], doc["mode"]) == (
        ds.segsz, ds.nattch, ds.cpid, ds.lpid, ds.uid, f"{ds.mode:04o}")
    assert (doc["atime"], doc["dtime"], doc["ctime"]) == (ds.atime, ds.dtime, ds.ctime)


# ---- peek --segment ------------------------------------------------------------------------

def test_peek_segment_shows_hex_from_the_offset(shm: SharedMemory) -> None:
    code, out = run("peek", "--segment", shm.id, "--offset", 16, "--length", 20)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"segment {shm.id}, 1000 bytes: 20 from offset 16"
    assert lines[1].split()[:3] == ["000010", "06", "07"] and len(lines) == 3
    assert lines[2].split()[0] == "000020"


def test_peek_segment_without_a_length_shows_256_bytes_and_says_how_many_remain(
        shm: SharedMemory) -> None:
    code, out = run("peek", "-m", shm.id)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 + 16 + 1
    assert lines[-1].strip() == "... 744 more (--length, --offset)"


@pytest.mark.parametrize("asks", [["--json"], ["--format", "json"]])
def test_peek_segment_json_gives_the_bytes_in_base64(shm: SharedMemory, asks: List[str]) -> None:
    code, out = run("peek", "-m", *asks, shm.id, "--offset", 10, "--length", 256)
    doc = json.loads(out)
    assert code == 0 and (doc["size"], doc["offset"], doc["length"]) == (1000, 10, 256)
    assert base64.b64decode(doc["data"]) == bytes(range(256))


def test_peek_segment_reads_and_changes_no_byte(shm: SharedMemory) -> None:
    before = shm.read()
    run("peek", "-m", shm.id, "--length", 1000)
    assert shm.read() == before and shm.stat().nattch == 1  # shm's own read only


@pytest.mark.parametrize("argv, code, says", [
    (["peek", "-m", "999999"], 3, "no shared memory segment with id 999999"),
    (["peek", "-m", "{id}", "--offset", "1001"], 3, "past the end"),
    (["peek", "-m", "{id}", "--offset", "999", "--length", "2"], 3, "past the end"),
    (["peek", "-m", "{id}", "--index", "0"], 2, "--index is for queues"),
    (["peek", "{id}", "--offset", "3"], 2, "for segments"),
    (["peek", "-m", "{id}", "--length", "-1"], 2, "must be >= 0"),
], ids=["unknown-id", "offset-past-the-end", "length-past-the-end", "index", "offset-of-a-queue",
        "negative-length"])
def test_peek_segment_refuses_with_one_line(shm: SharedMemory, argv: List[str], code: int,
                                            says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(*(a.format(id=shm.id) for a in argv))[0] == code
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "Traceback" not in "".join(err)


@needs_root
def test_peek_segment_without_read_permission_exits_4(shm: SharedMemory) -> None:
    def child() -> int:
        return run("peek", "-m", shm.id)[0]
    assert run_in_child(child, uid=NOBODY) == 4
