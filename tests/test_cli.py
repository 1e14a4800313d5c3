"""The ipcbind command line, run in-process and as ``python -m ipcbind``."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import psutil
import pytest

from conftest import NOBODY, needs_root, run_in_child
from nschild import needs_ns_root, ns_child

import ipcbind
from ipcbind import syscalls as sc
from ipcbind.cli import EXIT_CODES, build_parser, main
from ipcbind.namespace import enter_namespace, list_queues
from ipcbind.snapshot import Limits, QueueState, Snapshot, dump, load, loads, snapshot

NO_SUCH_PID = 4194305


def run(*argv: Any) -> Tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def _holder() -> dict:
    q = sc.msgget(0x1234, sc.IPC_CREAT | 0o640)
    sc.msgsnd(q, 1, b"hello")
    sc.msgsnd(q, 7, b"\x00\xff")
    s = sc.semget(0x5678, 2, sc.IPC_CREAT | 0o600)
    sc.semctl(s, 0, sc.SETALL, [4, 5])
    return {"q": q, "s": s, "pid": os.getpid()}


def test_demo_prints_what_the_readme_shows() -> None:
    code, out = run("demo")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("created queue ") and lines[0].endswith("(IPC_PRIVATE, mode 0600)")
    assert lines[1:7] == ["sent 3 messages: 3 queued, 33 bytes",
                          "peek with MSG_COPY (index, type, data):",
                          "  [0] type 1: b'hello'",
                          "  [1] type 2: b'peeked, not consumed'",
                          "  [2] type 7: b'\\x00binary\\xff'",
                          "after peeking: 3 queued, 33 bytes, last receiver pid 0 (unchanged)"]
    assert lines[7] == "received in order: True" and lines[8].startswith("removed queue ")


def test_peek_shows_every_message_as_text_and_leaves_them(msq: int) -> None:
    sc.msgsnd(msq, 1, "héllo\n".encode())
    sc.msgsnd(msq, 9, b"\x00\xff")
    code, out = run("peek", msq)
    assert code == 0
    assert out == "[0] type 1, 7 bytes: héllo\\n\n[1] type 9, 2 bytes: \\x00\\xff\n"
    assert sc.msgctl(msq, sc.IPC_STAT).qnum == 2


def test_peek_index_as_hex(msq: int) -> None:
    sc.msgsnd(msq, 1, b"skip")
    sc.msgsnd(msq, 2, b"ABCDEFGHIJKLMNOPQ")
    code, out = run("peek", msq, "--index", 1, "--format", "hex")
    assert code == 0
    assert out.splitlines() == [
        "[1] type 2, 17 bytes",
        "  000000  41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP",
        "  000010  51" + " " * 47 + "Q"]


def test_peek_json_has_base64_and_text_where_utf8(msq: int) -> None:
    sc.msgsnd(msq, 3, b"ok")
    sc.msgsnd(msq, 4, b"\xff")
    code, out = run("peek", msq, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["version"] == 1 and doc["id"] == msq and doc["pid"] is None
    assert doc["messages"] == [
        {"index": 0, "type": 3, "size": 2, "data": "b2s=", "text": "ok"},
        {"index": 1, "type": 4, "size": 1, "data": "/w==", "text": None}]


def test_peek_unknown_queue_exits_3_with_one_line(msq: int, capsys: Any) -> None:
    sc.msgctl(msq, sc.IPC_RMID)
    code, out = run("peek", msq)
    err = capsys.readouterr().err
    assert code == 3 and out == ""
    assert err == f"ipcbind: error: no message queue with id {msq}\n"


def test_peek_index_past_the_end_exits_3(msq: int, capsys: Any) -> None:
    sc.msgsnd(msq, 1, b"only")
    assert run("peek", msq, "--index", 1)[0] == 3
    assert "has no message at index 1 (it holds 1)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["frob"], ["peek"], ["peek", "x"], ["ls", "--pid", "0"],
                                  ["ls", "-i", "0"], ["ls", "-q", "-s"],
                                  ["ls", "-q", "-i", "2147483648"],
                                  ["ls", "--time-format", "long"],
                                  ["peek", "1", "--index", "-1"], ["dump", "--retries", "0"],
                                  ["ls", "--bogus"]])
def test_bad_command_lines_exit_2_without_traceback(argv: List[str], capsys: Any) -> None:
    assert run(*argv)[0] == 2
    err = capsys.readouterr().err
    assert "ipcbind: error:" in err and "Traceback" not in err


def test_unknown_pid_exits_3(capsys: Any) -> None:
    assert run("ls", "--pid", NO_SUCH_PID)[0] == 3
    assert f"no process with pid {NO_SUCH_PID}" in capsys.readouterr().err


def test_freeze_of_our_own_namespace_exits_2(capsys: Any) -> None:
    assert run("dump", "--freeze", "--pid", os.getpid())[0] == 2
    assert "--freeze needs the --pid of a process in another" in capsys.readouterr().err


def test_restore_of_a_missing_file_exits_3(tmp_path: Any, capsys: Any) -> None:
    assert run("restore", tmp_path / "none.json", "--own-namespace")[0] == 3
    assert capsys.readouterr().err == f"ipcbind: error: no such file: {tmp_path / 'none.json'}\n"


@pytest.mark.parametrize("content", [b"", b'{"hello": 1}', b"\x89PNG\r\n"])
def test_restore_of_a_damaged_file_exits_5(tmp_path: Any, capsys: Any, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert run("restore", path, "--own-namespace")[0] == 5
    err = capsys.readouterr().err
    assert err.startswith("ipcbind: error: ") and err.count("\n") == 1


@needs_root
def test_no_permission_exits_4_saying_what_is_missing() -> None:
    def child() -> int:
        sys.stderr = io.StringIO()
        code = main(["ls", "--pid", "1"], out=io.StringIO())
        return 0 if code == 4 and "CAP_SYS_PTRACE" in sys.stderr.getvalue() else 1

    assert run_in_child(child, uid=NOBODY) == 0


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "semundo_proc")


def test_semundo_without_the_kernel_file_exits_7_and_explains(capsys: Any) -> None:
    if os.path.exists("/proc/self/semundo"):
        pytest.skip("this kernel has /proc/<pid>/semundo")
    assert run("semundo", os.getpid())[0] == 7
    err = capsys.readouterr().err
    assert err.startswith(f"ipcbind: error: /proc/{os.getpid()}/semundo: ")
    assert "never merged into mainline" in err and err.count("\n") == 1


def test_semundo_of_an_unknown_process_exits_3(capsys: Any) -> None:
    assert run("semundo", NO_SUCH_PID)[0] == 3
    assert f"no such process: process {NO_SUCH_PID}" in capsys.readouterr().err


def test_semundo_prints_the_files_adjustments() -> None:
    code, out = run("semundo", 100, "--proc-root", FIXTURES)
    assert code == 0
    assert out == "semid  adjustments\n5      2 -1 0\n7      -32768 32767\n"


def test_semundo_json() -> None:
    code, out = run("semundo", 100, "--proc-root", FIXTURES, "--json")
    assert code == 0 and json.loads(out) == {
        "version": 1, "pid": None, "process": 100,
        "semundo": [{"semid": 5, "adjustments": [2, -1, 0]},
                    {"semid": 7, "adjustments": [-32768, 32767]}]}


def test_semundo_malformed_file_exits_1_naming_the_line(capsys: Any) -> None:
    assert run("semundo", 103, "--proc-root", FIXTURES)[0] == 1
    assert "line 2" in capsys.readouterr().err


def test_python_dash_m_runs_and_errors_are_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "ipcbind", "peek", "2147483647"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr == "ipcbind: error: no message queue with id 2147483647\n"


@needs_ns_root
def test_ls_pid_shows_that_namespaces_objects_and_not_ours(msq: int) -> None:
    with ns_child(_holder) as (pid, made):
        code, out = run("ls", "--pid", pid)
        jcode, jout = run("--pid", pid, "ls", "--json")
    assert code == 0 and jcode == 0
    doc = json.loads(jout)
    assert [q["id"] for q in doc["queues"]] == [made["q"]]
    q = doc["queues"][0]
    assert (q["key"], q["mode"], q["qnum"], q["cbytes"], q["lspid"], q["last_sender"]) == (
        "0x00001234", "0640", 2, 7, pid, psutil.Process().name())
    assert q["last_receiver"] is None
    assert [(s["id"], s["nsems"], s["values"]) for s in doc["semaphore_sets"]] == [
        (made["s"], 2, [4, 5])]
    assert doc["pid"] == pid and doc["version"] == 1
    assert set(q) == {"id", "key", "uid", "gid", "owner", "group", "cuid", "cgid", "cuser",
                      "cgroup", "mode", "cbytes", "qnum", "qbytes", "lspid", "lrpid",
                      "last_sender", "last_receiver", "stime", "stime_iso", "rtime",
                      "rtime_iso", "ctime", "ctime_iso"}
    assert "0x00001234" in out and f"{pid}({q['last_sender']})" in out and "4 5" in out
    queue_rows = out.split("\n\n")[0].splitlines()[2:]
    assert [row.split()[:2] for row in queue_rows] == [["0x00001234", str(made["q"])]]


@needs_ns_root
def test_dump_pid_then_restore_into_another_namespace_gives_the_same_objects(
        tmp_path: Any) -> None:
    path = tmp_path / "ns.json"
    with ns_child(_holder) as (pid, _):
        code, out = run("dump", "--pid", pid, "-o", path, "--json")
        original = snapshot(pid)
    assert code == 0 and json.loads(out)["messages"] == 2
    saved = load(path)
    with ns_child() as (other, _):
        code, out = run("restore", path, "--pid", other, "--json")
        again = snapshot(other)
        clash, _ = run("restore", path, "--pid", other)
    assert code == 0 and json.loads(out)["queues"] == [q.id for q in saved.queues]
    assert clash == 6
    for before, after in ((original, saved), (saved, again)):
        assert after.queues == before.queues
        assert after.semaphore_sets == before.semaphore_sets


@needs_ns_root
def test_dump_output_through_a_symlink_writes_its_target_and_keeps_the_link(
        tmp_path: Any) -> None:
    target = tmp_path / "ns.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to("ns.json")
    with ns_child(_holder) as (pid, made):
        code, _ = run("dump", "--pid", pid, "-o", link)
    assert code == 0
    assert link.is_symlink() and os.readlink(link) == "ns.json"
    assert [q.id for q in load(target).queues] == [made["q"]]
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "ns.json"]


@needs_ns_root
def test_dump_to_stdout_is_a_loadable_snapshot_file() -> None:
    with ns_child(_holder) as (pid, made):
        code, out = run("dump", "--pid", pid)
    assert code == 0
    assert [q.id for q in loads(out).queues] == [made["q"]]


@needs_ns_root
def test_dump_shows_progress_on_a_terminal(tmp_path: Any) -> None:
    with ns_child(_holder) as (pid, _):
        master, slave = pty.openpty()
        try:
            try:
                r = subprocess.run([sys.executable, "-m", "ipcbind", "dump", "--pid", str(pid),
                                    "-o", str(tmp_path / "ns.json")],
                                   stdout=subprocess.PIPE, stderr=slave, timeout=60)
            finally:
                os.close(slave)
            shown = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(master)
    assert r.returncode == 0
    assert b"0/2 queue" in shown and b"1/2 semaphore set" in shown


@needs_ns_root
def test_restore_that_fails_half_way_exits_1_and_leaves_nothing(tmp_path: Any,
                                                                capsys: Any) -> None:
    too_long = QueueState(9, 0x99, 0, 0, 0, 0, 0o600, 16384, ((1, b"x" * 9000),))
    snap = Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None,
                    Limits(9000, 16384, 32000, 32000, 1024000000, 500, 32000),
                    (QueueState(3, 0x33, 0, 0, 0, 0, 0o600, 16384, ((1, b"ok"),)), too_long), ())
    path = tmp_path / "ns.json"
    dump(snap, path)
    with ns_child() as (other, _):
        code, _ = run("restore", path, "--pid", other)
        with enter_namespace(other):
            left = list_queues()
    err = capsys.readouterr().err
    assert code == 1 and left == []
    assert "message 0 (9000 bytes)" in err and "removed the 2 object(s)" in err


def _next_msg_id_777() -> None:
    with open("/proc/sys/kernel/msg_next_id", "w") as f:
        f.write("777")


@needs_ns_root
def test_demo_runs_inside_the_namespace_given_by_pid() -> None:
    with ns_child(_next_msg_id_777) as (pid, _):
        code, out = run("demo", "--pid", pid)
        with enter_namespace(pid):
            left = list_queues()
    made = int(out.split()[2])
    assert code == 0 and left == []
    assert out.splitlines()[-1] == f"removed queue {made}"
    assert made == 777  # the id armed in that namespace only


def test_restore_without_a_target_is_refused_and_names_both_ways(tmp_path: Any,
                                                                  capsys: Any) -> None:
    path = tmp_path / "ns.json"
    dump(Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None,
                  Limits(8192, 16384, 32000, 32000, 1024000000, 500, 32000),
                  (QueueState(3, 0x33, 0, 0, 0, 0, 0o600, 16384, ()),), ()), path)
    assert run("restore", path)[0] == 2
    err = capsys.readouterr().err
    assert "--pid PID" in err and "--own-namespace" in err


@needs_ns_root
def test_restore_says_which_namespace_it_restored_into(tmp_path: Any) -> None:
    path = tmp_path / "ns.json"
    with ns_child(_holder) as (pid, _):
        dump(snapshot(pid), path)
    with ns_child() as (other, _):
        inode = os.stat(f"/proc/{other}/ns/ipc").st_ino
        code, out = run("restore", path, "--pid", other)
    assert code == 0
    assert out.startswith(f"restored into the IPC namespace of pid {other} (ipc:[{inode}]): ")


@needs_ns_root
def test_dump_output_dev_stdout_appended_to_a_file_appends_the_snapshot_alone(
        tmp_path: Any) -> None:
    out = tmp_path / "log"
    out.write_text("previous\n")
    with ns_child(_holder) as (pid, made):
        with open(out, "a") as f:
            r = subprocess.run([sys.executable, "-m", "ipcbind", "dump", "--pid", str(pid),
                                "-o", "/dev/stdout"], stdout=f, stderr=subprocess.PIPE,
                               timeout=60)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith("previous\n")
    assert [q.id for q in loads(text[len("previous\n"):]).queues] == [made["q"]]
    assert b"wrote /dev/stdout" in r.stderr


@needs_ns_root
def test_dump_output_to_a_directory_names_the_directory(tmp_path: Any, capsys: Any) -> None:
    with ns_child(_holder) as (pid, _):
        code, _ = run("dump", "--pid", pid, "-o", tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and err == f"ipcbind: error: {tmp_path}: Is a directory\n"
    assert os.listdir(tmp_path) == []


def test_version_prints_the_package_version() -> None:
    r = subprocess.run([sys.executable, "-m", "ipcbind", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == f"ipcbind {ipcbind.__version__}\n"


def test_help_has_no_markup_and_no_internal_names(capsys: Any) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0
    assert "``" not in shown and ":data:" not in shown and "EXIT_CODES" not in shown
    assert "exit codes:\n  0    success\n" in shown


def test_peek_of_an_empty_queue_says_it_is_empty(msq: int) -> None:
    assert run("peek", msq) == (0, f"queue {msq} is empty\n")
    assert run("peek", msq, "--format", "hex") == (0, f"queue {msq} is empty\n")
    assert json.loads(run("peek", msq, "--json")[1])["messages"] == []


@pytest.mark.parametrize("fmt", ["text", "hex"])
def test_peek_json_with_another_format_is_refused(msq: int, fmt: str, capsys: Any) -> None:
    sc.msgsnd(msq, 1, b"x")
    assert run("peek", msq, "--json", "--format", fmt) == (2, "")
    assert f"--json and --format {fmt} conflict" in capsys.readouterr().err


def test_peek_json_with_format_json_agree(msq: int) -> None:
    sc.msgsnd(msq, 1, b"x")
    assert run("peek", msq, "--json", "--format", "json") == run("peek", msq, "--json")


def test_semundo_help_says_which_pid_is_which(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["semundo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "[--pid PID]" in shown and shown.count(" PROCESS") >= 2
    assert "--pid PID only chooses the IPC namespace" in shown


def test_ls_i_of_a_missing_object_exits_3(msq: int, semset: int, capsys: Any) -> None:
    sc.msgctl(msq, sc.IPC_RMID)
    sc.semctl(semset, 0, sc.IPC_RMID)
    assert run("ls", "-q", "-i", msq) == (3, "")
    assert run("ls", "-s", "-i", semset) == (3, "")
    err = capsys.readouterr().err
    assert err == (f"ipcbind: error: no message queue with id {msq}\n"
                   f"ipcbind: error: no semaphore set with id {semset}\n")


def test_ls_q_lists_only_queues_and_s_only_sets(msq: int, semset: int) -> None:
    queues, sets = (json.loads(run("ls", kind, "--json")[1]) for kind in ("-q", "-s"))
    assert "semaphore_sets" not in queues and msq in [q["id"] for q in queues["queues"]]
    assert "queues" not in sets and semset in [s["id"] for s in sets["semaphore_sets"]]
    assert "Semaphore" not in run("ls", "-q")[1] and "Message" not in run("ls", "-s")[1]


def test_ls_times_never_set_are_a_dash_and_null(semset: int) -> None:
    doc = json.loads(run("ls", "-s", "-i", semset, "--json")[1])
    assert (doc["otime"], doc["otime_iso"]) == (0, None) and doc["ctime"] > 0
    assert "last op:       -\n" in run("ls", "-s", "-i", semset)[1]


def test_ls_c_adds_the_group_and_the_creators_user_and_group(msq: int) -> None:
    head = run("ls", "-q", "-c")[1].splitlines()[1].split()
    assert head[:6] == ["key", "msqid", "owner", "group", "cuser", "cgroup"]


def _subparsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def test_docs_cli_md_names_every_command_option_and_exit_code() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    table = docs.split("| command | what it does |")[1].split("\n\n")[0]
    codes = docs.split("| code | meaning |")[1].split("\n\n")[0]
    commands = _subparsers(build_parser())
    for name, sub in commands.items():
        rows = [r for r in table.splitlines() if r.startswith(f"| `{name}")]
        assert rows, f"docs/cli.md has no row for {name}"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help", "--pid", "--json"):
                    assert any(option in r for r in rows), f"{name} {option} is not in docs"
    assert [int(line.split("|")[1]) for line in codes.splitlines()[2:]] == list(EXIT_CODES)


def test_every_commands_help_formats_without_markup() -> None:
    for name, sub in _subparsers(build_parser()).items():
        shown = sub.format_help()
        assert shown.startswith(f"usage: ipcbind {name}") and "``" not in shown, name
