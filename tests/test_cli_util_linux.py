"""The command line beside util-linux's ipcs and lsipc, on the same objects.

Each test runs both in one fresh IPC namespace (ours through ``--pid``, theirs
through ``nsenter``), so nothing another process does can make them differ.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from nschild import needs_ns_root, ns_child

from ipcbind import syscalls as sc
from ipcbind.cli import main

pytestmark = [
    needs_ns_root,
    pytest.mark.skipif(shutil.which("lsipc") is None or shutil.which("nsenter") is None,
                       reason="needs util-linux's lsipc, ipcs, ipcmk and nsenter"),
]


def ours(pid: int, *argv: Any) -> str:
    out = io.StringIO()
    code = main([str(a) for a in argv] + ["--pid", str(pid)], out=out)
    assert code == 0
    return out.getvalue()


def theirs(pid: int, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--ipc=/proc/{pid}/ns/ipc", *argv], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def _objects() -> Dict[str, int]:
    """A queue owned by someone other than its creator, holding two messages; a set
    operated on; a segment of a size that is not a whole number of pages."""
    q = sc.msgget(0x1234, sc.IPC_CREAT | 0o640)
    sc.msgsnd(q, 1, b"hello")
    sc.msgsnd(q, 7, b"\x00\xff")
    sc.msgctl(q, sc.IPC_SET, {"uid": 65534, "gid": 65534})
    s = sc.semget(0x89ABCDEF, 3, sc.IPC_CREAT | 0o604)
    sc.semctl(s, 0, sc.SETALL, [4, 2, 0])
    sc.semop(s, [(0, -1)])
    made = subprocess.run(["ipcmk", "-M", "10000", "-p", "0600"], check=True,
                          capture_output=True, text=True).stdout
    return {"q": q, "s": s, "m": int(made.split()[-1])}


@pytest.fixture(scope="module")
def ns() -> Iterator[Tuple[int, Dict[str, int]]]:
    with ns_child(_objects) as child:
        yield child


def _lsipc(pid: int, kind: str, columns: str, *more: str) -> List[Dict[str, Any]]:
    doc = json.loads(theirs(pid, "lsipc", kind, "--json", "--bytes", "--time-format", "iso",
                            "-o", columns, *more))
    return list(doc.values())[0]  # type: ignore[no-any-return]


def test_info_limits_and_usage_agree_with_lsipc_global(ns: Tuple[int, Dict[str, int]]) -> None:
    pid, _ = ns
    mine = {row.split()[0]: row.split()[-3:] for row in ours(pid, "info").splitlines()[1:13]}
    rows = json.loads(theirs(pid, "lsipc", "-g", "--json", "--bytes"))["ipclimits"]
    assert len(rows) == 12
    for row in rows:
        limit, used, share = mine[row["resource"]]
        assert limit == row["limit"], row
        if row["resource"] != "SHMALL":
            assert (used, share) == (row["used"], row["use%"]), row


def test_lsipc_counts_segment_pages_rounded_down_where_the_kernel_rounds_up(
        ns: Tuple[int, Dict[str, int]]) -> None:
    pid, _ = ns
    page = os.sysconf("SC_PAGE_SIZE")
    doc = json.loads(ours(pid, "info", "--json"))
    lsipc = {r["resource"]: r for r in json.loads(theirs(pid, "lsipc", "-g", "--json"))[
        "ipclimits"]}
    assert doc["segments"]["usage"]["pages"] == -(-10000 // page)  # the kernel's shm_tot
    assert int(lsipc["SHMALL"]["used"]) == 10000 // page


def _ipcs_u(pid: int) -> Dict[str, int]:
    text = theirs(pid, "ipcs", "-u")
    found = {}
    for label in ("allocated queues", "used headers", "used space", "segments allocated",
                  "pages allocated", "pages resident", "pages swapped", "used arrays",
                  "allocated semaphores"):
        match = re.search(re.escape(label) + r"\D*(\d+)", text)
        assert match, label
        found[label] = int(match.group(1))
    return found


def test_info_usage_agrees_with_ipcs_u(ns: Tuple[int, Dict[str, int]]) -> None:
    pid, _ = ns
    doc = json.loads(ours(pid, "info", "--json"))
    q, m, s = (doc[k]["usage"] for k in ("queues", "segments", "semaphore_sets"))
    assert _ipcs_u(pid) == {
        "allocated queues": q["queues"], "used headers": q["messages"], "used space": q["bytes"],
        "segments allocated": m["segments"], "pages allocated": m["pages"],
        "pages resident": m["resident"], "pages swapped": m["swapped"],
        "used arrays": s["sets"], "allocated semaphores": s["semaphores"]}
    assert (q["messages"], q["bytes"], s["semaphores"]) == (2, 7, 3)


def test_info_limits_agree_with_ipcs_l(ns: Tuple[int, Dict[str, int]]) -> None:
    pid, _ = ns
    doc = json.loads(ours(pid, "info", "--json"))
    text = theirs(pid, "ipcs", "-l")

    def value(label: str) -> int:
        match = re.search(re.escape(label) + r" = (\d+)", text)
        assert match, label
        return int(match.group(1))

    q, m, s = (doc[k]["limits"] for k in ("queues", "segments", "semaphore_sets"))
    assert (value("max queues system wide"), value("max size of message (bytes)"),
            value("default max size of queue (bytes)")) == (q["msgmni"], q["msgmax"], q["msgmnb"])
    assert (value("max number of segments"), value("min seg size (bytes)")) == (
        m["shmmni"], m["shmmin"])
    assert value("max seg size (kbytes)") == m["shmmax"] // 1024
    assert (value("max number of arrays"), value("max semaphores per array"),
            value("max semaphores system wide"), value("max ops per semop call"),
            value("semaphore max value")) == (s["semmni"], s["semmsl"], s["semmns"],
                                              s["semopm"], s["semvmx"])


_COMMON = "KEY,ID,PERMS,OWNER,CUID,CUSER,CGID,CGROUP,UID,USER,GID,GROUP,CTIME"


def _same_identity(mine: Dict[str, Any], row: Dict[str, Any]) -> None:
    assert (mine["key"], str(mine["id"]), _rwx(mine["mode"])) == (
        row["key"], row["id"], row["perms"])
    assert (mine["owner"], mine["owner"], mine["cuser"], mine["group"], mine["cgroup"]) == (
        row["owner"], row["user"], row["cuser"], row["group"], row["cgroup"])
    assert [str(mine[k]) for k in ("cuid", "cgid", "uid", "gid")] == [
        row[k] for k in ("cuid", "cgid", "uid", "gid")]
    assert mine["ctime_iso"] == row["ctime"]


def _rwx(mode: str) -> str:
    bits = int(mode, 8)
    return "".join(c if bits & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))


def test_ls_json_of_queues_agrees_with_lsipc_on_every_shared_field(
        ns: Tuple[int, Dict[str, int]]) -> None:
    pid, made = ns
    (mine,) = json.loads(ours(pid, "ls", "-q", "--json"))["queues"]
    (row,) = _lsipc(pid, "-q", _COMMON + ",USEDBYTES,MSGS,LSPID,LRPID,SEND,RECV")
    _same_identity(mine, row)
    assert (mine["uid"], mine["gid"], mine["cuid"]) == (65534, 65534, 0)
    assert mine["owner"] != mine["cuser"] and mine["group"] != mine["cgroup"]
    assert [str(mine[k]) for k in ("cbytes", "qnum", "lspid", "lrpid")] == [
        row["usedbytes"], row["msgs"], row["lspid"], row["lrpid"]]
    assert (mine["stime_iso"], mine["rtime_iso"]) == (row["send"], row["recv"])
    assert mine["rtime"] == 0 and mine["rtime_iso"] is None and mine["stime"] > 0


def test_ls_json_of_sets_agrees_with_lsipc_on_every_shared_field(
        ns: Tuple[int, Dict[str, int]]) -> None:
    pid, made = ns
    (mine,) = json.loads(ours(pid, "ls", "-s", "--json"))["semaphore_sets"]
    (row,) = _lsipc(pid, "-s", _COMMON + ",NSEMS,OTIME")
    _same_identity(mine, row)
    assert mine["key"] == "0x89abcdef"  # the high bit set: unsigned, as lsipc prints it
    assert (str(mine["nsems"]), mine["otime_iso"]) == (row["nsems"], row["otime"])


@pytest.mark.parametrize("fmt", ["short", "full", "iso"])
def test_ls_times_in_each_format_are_lsipcs(ns: Tuple[int, Dict[str, int]], fmt: str) -> None:
    pid, _ = ns
    row = ours(pid, "ls", "-q", "--time-format", fmt).splitlines()[2]
    (times,) = json.loads(theirs(pid, "lsipc", "-q", "--json", "--time-format", fmt,
                                 "-o", "SEND,CTIME"))["messages"]
    assert f"  {times['send']}  " in row and row.endswith(f"  {times['ctime']}")


def test_ls_i_of_a_queue_agrees_with_ipcs_q_i(ns: Tuple[int, Dict[str, int]]) -> None:
    pid, made = ns
    text = theirs(pid, "ipcs", "-q", "-i", str(made["q"]))
    fields = dict(re.findall(r"(\w+)=(\w+)", text))
    doc = json.loads(ours(pid, "ls", "-q", "-i", made["q"], "--json"))
    assert {k: str(doc[k]) for k in ("uid", "gid", "cuid", "cgid", "cbytes", "qbytes", "qnum",
                                     "lspid", "lrpid")} == {
        k: fields[k] for k in ("uid", "gid", "cuid", "cgid", "cbytes", "qbytes", "qnum",
                               "lspid", "lrpid")}
    assert doc["mode"] == fields["mode"]
    detail = ours(pid, "ls", "-q", "-i", made["q"])
    full = re.search(r"change_time=(.*\d)", text)
    assert full and f"last change:   {full.group(1)}\n" in detail
    assert "last receive:  -\n" in detail
    assert f"owner:         {doc['owner']} (uid 65534)\n" in detail


@contextmanager
def _waiters(pid: int, semid: int) -> Iterator[None]:
    """Two processes blocked on the set: one decrementing semaphore 0 by 9, one waiting
    for semaphore 1 to be zero."""
    code = ("import sys; from ipcbind import syscalls as sc; "
            "sc.semop(int(sys.argv[1]), [(int(sys.argv[2]), int(sys.argv[3]))])")
    procs = [subprocess.Popen(["nsenter", f"--ipc=/proc/{pid}/ns/ipc", sys.executable, "-c",
                               code, str(semid), n, op]) for n, op in (("0", "-9"), ("1", "0"))]
    try:
        deadline = time.monotonic() + 30
        with_ns = ["--pid", str(pid)]
        while True:
            doc = json.loads(_quiet(["ls", "-s", "-i", str(semid), "--json", *with_ns]))
            if [(m["ncnt"], m["zcnt"]) for m in doc["semaphores"][:2]] == [(1, 0), (0, 1)]:
                break
            assert time.monotonic() < deadline, "the waiters never blocked"
            time.sleep(0.01)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def _quiet(argv: List[str]) -> str:
    out = io.StringIO()
    assert main(argv, out=out) == 0
    return out.getvalue()


def test_ls_i_of_a_set_shows_each_semaphore_as_ipcs_s_i(ns: Tuple[int, Dict[str, int]]) -> None:
    pid, made = ns
    with _waiters(pid, made["s"]):
        text = theirs(pid, "ipcs", "-s", "-i", str(made["s"]))
        doc = json.loads(ours(pid, "ls", "-s", "-i", made["s"], "--json"))
        detail = ours(pid, "ls", "-s", "-i", made["s"])
    table = [line.split() for line in text.splitlines() if re.match(r"\d+\s+\d+", line)]
    assert table == [[str(m["semnum"]), str(m["value"]), str(m["ncnt"]), str(m["zcnt"]),
                      str(m["pid"])] for m in doc["semaphores"]]
    assert [m["value"] for m in doc["semaphores"]] == doc["values"] == [3, 2, 0]
    assert doc["semaphores"][0]["pid"] == pid
    assert f"0       3      1       0       {pid}(" in detail
    full = re.search(r"ctime = (.*\d)", text)
    assert full and f"last change:   {full.group(1)}\n" in detail


def test_ls_json_of_segments_agrees_with_lsipc_on_every_shared_field(
        ns: Tuple[int, Dict[str, int]]) -> None:
    pid, made = ns
    (mine,) = json.loads(ours(pid, "ls", "-m", "--json"))["segments"]
    (row,) = _lsipc(pid, "-m", _COMMON + ",SIZE,NATTCH,STATUS,ATTACH,DETACH,CPID,LPID")
    _same_identity(mine, row)
    assert [str(mine[k]) for k in ("id", "size", "nattch", "cpid", "lpid")] == [
        row[k] for k in ("id", "size", "nattch", "cpid", "lpid")]
    assert (mine["atime_iso"], mine["dtime_iso"]) == (row["attach"], row["detach"])
    assert (mine["dest"], mine["locked"], row["status"]) == (False, False, None)


def test_ls_i_of_a_segment_agrees_with_ipcs_m_i(ns: Tuple[int, Dict[str, int]]) -> None:
    pid, made = ns
    text = theirs(pid, "ipcs", "-m", "-i", str(made["m"]))
    fields = dict(re.findall(r"(\w+)=(\w+)", text))
    doc = json.loads(ours(pid, "ls", "-m", "-i", made["m"], "--json"))
    assert {k: str(doc[k]) for k in ("uid", "gid", "cuid", "cgid", "lpid", "cpid", "nattch")} == {
        k: fields[k] for k in ("uid", "gid", "cuid", "cgid", "lpid", "cpid", "nattch")}
    assert (str(doc["size"]), doc["mode"]) == (fields["bytes"], fields["mode"])
    detail = ours(pid, "ls", "-m", "-i", made["m"])
    full = re.search(r"change_time=(.*\d)", text)
    assert full and f"last change:     {full.group(1)}\n" in detail
    assert "bytes:           10000\n" in detail and "last attach:     -\n" in detail
