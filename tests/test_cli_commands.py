"""The commands that change things: mk, rm, send, receive, semop."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import re
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from conftest import NOBODY, needs_root, needs_stat_any, run_in_child
from nschild import needs_ns_root, ns_child

from ipcbind import syscalls as sc
from ipcbind.cli import main
from ipcbind.namespace import enter_namespace, list_queues, list_segments, list_semaphore_sets


ME = pwd.getpwuid(os.geteuid()).pw_name


def run(*argv: Any) -> Tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def ipcbind(*argv: Any, data: bytes = b"") -> "subprocess.CompletedProcess[bytes]":
    return subprocess.run([sys.executable, "-m", "ipcbind", *map(str, argv)], input=data,
                          capture_output=True, timeout=60)


@pytest.fixture
def made() -> Iterator[List[Tuple[str, int]]]:
    """Objects a command made, removed at the end whatever happened."""
    objects: List[Tuple[str, int]] = []
    yield objects
    for kind, ident in objects:
        try:
            if kind == "queue":
                sc.msgctl(ident, sc.IPC_RMID)
            elif kind == "segment":
                sc.shmctl(ident, sc.IPC_RMID)
            else:
                sc.semctl(ident, 0, sc.IPC_RMID)
        except OSError:
            pass


def _mk(made: List[Tuple[str, int]], *argv: Any) -> int:
    code, out = run("mk", *argv, "--json")
    assert code == 0
    doc = json.loads(out)
    made.append((doc["kind"], doc["id"]))
    return int(doc["id"])


def test_mk_queue_with_key_and_mode_is_what_ipcs_shows(made: List[Tuple[str, int]]) -> None:
    key = 0x7C000000 | os.getpid()
    q = _mk(made, "queue", "--key", hex(key), "--mode", "0640")
    ipcs = subprocess.run(["ipcs", "-q"], capture_output=True, text=True, check=True).stdout
    assert f"{key:#010x} {q:<10} {ME:<10} 640" in ipcs
    assert sc.msgctl(q, sc.IPC_STAT).mode == 0o640


def test_mk_queue_with_a_key_that_exists_exits_6_and_makes_nothing(
        made: List[Tuple[str, int]], capsys: Any) -> None:
    key = 0x7D000000 | os.getpid()
    q = _mk(made, "queue", "--key", key)
    before = len(list_queues())
    assert run("mk", "queue", "--key", key) == (6, "")
    assert f"a message queue with key {key:#010x} exists already" in capsys.readouterr().err
    assert len(list_queues()) == before and sc.msgget(key) == q


def test_mk_queue_qbytes_below_msgmnb(made: List[Tuple[str, int]]) -> None:
    q = _mk(made, "queue", "--qbytes", 100)
    assert sc.msgctl(q, sc.IPC_STAT).qbytes == 100


def test_mk_set_with_values_and_the_default_mode_of_ipcmk(made: List[Tuple[str, int]]) -> None:
    s = _mk(made, "set", 3, "--values", 5, 0, 7)
    assert sc.semctl(s, 0, sc.GETALL) == [5, 0, 7]
    assert sc.semctl(s, 0, sc.IPC_STAT).mode == 0o644


def test_mk_set_with_too_few_values_exits_2_and_makes_nothing(capsys: Any) -> None:
    before = len(list_semaphore_sets())
    assert run("mk", "set", 2, "--values", 1)[0] == 2
    assert len(list_semaphore_sets()) == before


@needs_root
def test_mk_queue_whose_qbytes_is_refused_removes_the_queue_it_made() -> None:
    key = 0x7B000000 | os.getpid()

    def child() -> int:
        sys.stderr = io.StringIO()
        code = main(["mk", "queue", "--key", str(key), "--qbytes", str(1 << 30)],
                    out=io.StringIO())
        return code

    try:
        assert run_in_child(child, uid=NOBODY) == 4
        with pytest.raises(FileNotFoundError):
            sc.msgget(key)
    finally:
        try:
            sc.msgctl(sc.msgget(key), sc.IPC_RMID)
        except FileNotFoundError:
            pass


def test_rm_removes_what_ipcmk_made_by_id_and_by_key(made: List[Tuple[str, int]]) -> None:
    out = subprocess.run(["ipcmk", "-S", "2", "-p", "0600"], check=True, capture_output=True,
                         text=True).stdout
    semid = int(out.split()[-1])
    made.append(("set", semid))
    out = subprocess.run(["ipcmk", "-Q", "-p", "0600"], check=True, capture_output=True,
                         text=True).stdout
    msqid = int(out.split()[-1])
    made.append(("queue", msqid))
    key = sc.msgctl(msqid, sc.IPC_STAT).key & 0xFFFFFFFF
    assert run("rm", "queue", "--key", hex(key)) == (0, f"removed message queue {msqid}\n")
    assert run("rm", "set", semid) == (0, f"removed semaphore set {semid}\n")
    with pytest.raises(FileNotFoundError):
        sc.msgget(key)
    with pytest.raises(OSError):
        sc.semctl(semid, 0, sc.IPC_STAT)


def test_rm_tries_every_object_and_exits_with_the_first_failure(
        made: List[Tuple[str, int]], capsys: Any) -> None:
    q = _mk(made, "queue")
    gone = _mk(made, "queue")
    sc.msgctl(gone, sc.IPC_RMID)
    code, out = run("rm", "queue", gone, q, "--key", 0x7F000001)
    assert code == 3 and out == f"removed message queue {q}\n"
    assert capsys.readouterr().err == (f"ipcbind: error: no message queue with id {gone}\n"
                                       "ipcbind: error: no message queue with key 0x7f000001\n")


@pytest.mark.parametrize("argv", [["rm", "queue"], ["rm", "queue", "--key", "0"],
                                  ["rm", "segments", "1"], ["rm", "queue", "--key", "0x1ffffffff"],
                                  ["mk", "queue", "--mode", "999"], ["mk", "set", "0"],
                                  ["mk", "set", "1", "--values", "40000"],
                                  ["send", "0", "--type", "0"], ["send", "0", "a", "--file", "f"],
                                  ["receive", "0", "--nowait", "--timeout", "1"],
                                  ["receive", "0", "--except"],
                                  ["receive", "0", "--timeout", "nan"],
                                  ["semop", "0"], ["semop", "0", "1"], ["semop", "0", "0:x"],
                                  ["semop", "0", "0:40000"], ["semop", "0", "0:1", "-x"],
                                  ["mk", "segment", str(2 ** 64)], ["mk", "set", str(2 ** 31)],
                                  ["mk", "queue", "--qbytes", str(2 ** 64)]])
def test_bad_command_lines_of_the_changing_commands_exit_2(argv: List[str],
                                                           capsys: Any) -> None:
    assert run(*argv) == (2, "")
    err = capsys.readouterr().err
    assert "ipcbind: error:" in err and "Traceback" not in err


def test_send_each_argument_as_a_message_with_options_anywhere(msq: int) -> None:
    assert run("send", msq, "one", "--type", 4, "two") == (0, "")
    assert sc.msgrcv(msq, None, 0, sc.IPC_NOWAIT) == (4, b"one")
    assert sc.msgrcv(msq, None, 0, sc.IPC_NOWAIT) == (4, b"two")


def test_send_stdin_and_receive_stdout_carry_every_byte(msq: int) -> None:
    data = bytes(range(256)) * 3
    assert ipcbind("send", msq, data=data).returncode == 0
    r = ipcbind("receive", msq)
    assert r.returncode == 0 and r.stdout == data and r.stderr == b""


def test_send_file_as_one_message(msq: int, tmp_path: Any) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"\x00file\xff")
    assert run("send", msq, "--file", path, "--type", 9) == (0, "")
    assert sc.msgrcv(msq, None, 0, sc.IPC_NOWAIT) == (9, b"\x00file\xff")


def test_send_and_receive_hex_round_trip(msq: int) -> None:
    assert run("send", msq, "--hex", "00 ff", "41") == (0, "")
    assert run("receive", msq, "--hex") == (0, "00ff\n")
    assert run("receive", msq, "--json")[1].count('"data": "QQ=="') == 1


def test_send_bad_hex_sends_nothing(msq: int, capsys: Any) -> None:
    assert run("send", msq, "--hex", "41", "4") == (2, "")
    assert sc.msgctl(msq, sc.IPC_STAT).qnum == 0


def test_send_json_lists_what_was_sent(msq: int) -> None:
    code, out = run("send", msq, "ab", "c", "--json")
    assert code == 0 and json.loads(out)["sent"] == [{"type": 1, "size": 2},
                                                     {"type": 1, "size": 1}]


def test_send_above_msgmax_exits_1_naming_the_limit(msq: int, capsys: Any) -> None:
    _, info = sc.msgctl(0, sc.IPC_INFO)
    assert run("send", msq, "x" * (info.msgmax + 1))[0] == 1
    assert "msgmax" in capsys.readouterr().err
    assert sc.msgctl(msq, sc.IPC_STAT).qnum == 0


def test_send_nowait_to_a_full_queue_exits_8(msq: int, capsys: Any) -> None:
    sc.msgctl(msq, sc.IPC_SET, {"qbytes": 4})
    assert run("send", msq, "abc", "de", "--nowait") == (8, "")
    assert f"queue {msq} is full (1 of 2 message(s) sent)" in capsys.readouterr().err
    assert sc.msgctl(msq, sc.IPC_STAT).qnum == 1


def test_send_to_a_missing_queue_exits_3(msq: int, capsys: Any) -> None:
    sc.msgctl(msq, sc.IPC_RMID)
    assert run("send", msq, "x") == (3, "")
    assert capsys.readouterr().err == f"ipcbind: error: no message queue with id {msq}\n"


def test_receive_by_type_and_except(msq: int) -> None:
    for mtype, data in ((1, b"a"), (2, b"b"), (3, b"c")):
        sc.msgsnd(msq, mtype, data)
    assert run("receive", msq, "--type", 2) == (0, "b")
    assert run("receive", msq, "--type", 1, "--except") == (0, "c")
    assert run("receive", msq, "--type", -5) == (0, "a")


def test_receive_nowait_and_timeout_on_an_empty_queue_exit_8(msq: int, capsys: Any) -> None:
    assert run("receive", msq, "--nowait") == (8, "")
    assert run("receive", msq, "--timeout", 0.05, "--type", 3) == (8, "")
    assert capsys.readouterr().err == (
        f"ipcbind: error: no message in queue {msq}\n"
        f"ipcbind: error: no message of type 3 in queue {msq} within 0.05 s\n")


@pytest.mark.parametrize("how", [[], ["--hex"], ["--json"]], ids=["raw", "hex", "json"])
def test_receive_that_cannot_write_stdout_sends_the_message_back(msq: int, how: List[str]) -> None:
    sc.msgsnd(msq, 7, b"first")
    sc.msgsnd(msq, 1, b"second")
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "ipcbind", "receive", str(msq), *how],
                              stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode() == (
        "ipcbind: error: could not write the message (No space left on device); it was sent "
        f"back to queue {msq}, at its end\n")
    assert [sc.msgrcv(msq, 100, 0, sc.IPC_NOWAIT) for _ in range(2)] == [
        (1, b"second"), (7, b"first")]


def _closing(fd: int) -> Callable[[], None]:
    return lambda: os.close(fd)


def test_receive_with_stdout_closed_sends_the_message_back(msq: int) -> None:
    sc.msgsnd(msq, 3, b"kept")
    done = subprocess.run([sys.executable, "-m", "ipcbind", "receive", str(msq)],
                          preexec_fn=_closing(1), stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 1 and b"Traceback" not in done.stderr
    assert b"sent back to queue" in done.stderr
    assert sc.msgrcv(msq, 100, 0, sc.IPC_NOWAIT) == (3, b"kept")


def test_mk_with_stdout_closed_exits_1_naming_what_it_made(made: List[Tuple[str, int]]) -> None:
    done = subprocess.run([sys.executable, "-m", "ipcbind", "mk", "queue"],
                          preexec_fn=_closing(1), stderr=subprocess.PIPE, timeout=60)
    err = done.stderr.decode()
    named = re.search(r"created message queue (\d+) ", err)
    if named:
        made.append(("queue", int(named.group(1))))
    assert done.returncode == 1 and "Traceback" not in err, err
    assert err.startswith("ipcbind: error: stdout is closed; not written: created message queue ")


def test_send_with_stdin_closed_and_no_data_exits_2(msq: int) -> None:
    done = subprocess.run([sys.executable, "-m", "ipcbind", "send", str(msq)],
                          preexec_fn=_closing(0), stderr=subprocess.PIPE, timeout=60)
    assert (done.returncode, done.stderr) == (
        2, b"ipcbind: error: send: stdin is closed; give DATA arguments or --file\n")
    assert sc.msgctl(msq, sc.IPC_STAT).qnum == 0


def test_restore_from_a_closed_stdin_exits_2_and_restores_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "ipcbind", "restore", "-", "--own-namespace"],
                          preexec_fn=_closing(0), stderr=subprocess.PIPE, timeout=60)
    assert (done.returncode, done.stderr) == (
        2, b"ipcbind: error: restore: stdin is closed; give the snapshot file's path\n")


def test_receive_json_has_type_size_and_base64(msq: int) -> None:
    sc.msgsnd(msq, 6, b"\xff")
    code, out = run("receive", msq, "--json")
    doc = json.loads(out)
    assert code == 0 and (doc["type"], doc["size"], doc["data"], doc["text"]) == (
        6, 1, "/w==", None)


def test_semop_applies_all_operations_at_once(semset: int) -> None:
    sc.semctl(semset, 0, sc.SETVAL, 2)
    assert run("semop", semset, "0:-2") == (0, "")
    assert sc.semctl(semset, 0, sc.GETVAL) == 0
    assert sc.semctl(semset, 0, sc.GETPID) == os.getpid()


def test_semop_that_would_wait_exits_8_and_changes_nothing(make_semset: Any,
                                                           capsys: Any) -> None:
    s = make_semset(2)
    assert run("semop", s, "1:+1", "0:-1", "--nowait") == (8, "")
    assert run("semop", s, "1:+1", "0:-1", "--timeout", 0.05) == (8, "")
    assert sc.semctl(s, 0, sc.GETALL) == [0, 0]
    assert "nothing was changed" in capsys.readouterr().err


def test_semop_on_a_semaphore_beyond_the_set_exits_3(semset: int, capsys: Any) -> None:
    assert run("semop", semset, "1:1") == (3, "")
    assert "has 1 semaphore(s), numbered 0..0" in capsys.readouterr().err


def test_semop_above_semvmx_exits_1(semset: int, capsys: Any) -> None:
    sc.semctl(semset, 0, sc.SETVAL, 1)
    assert run("semop", semset, "0:32767")[0] == 1
    assert "semvmx" in capsys.readouterr().err and sc.semctl(semset, 0, sc.GETVAL) == 1


def _objects() -> Dict[str, int]:
    return {"q": sc.msgget(0x4321, sc.IPC_CREAT | 0o600),
            "s": sc.semget(0x8765, 1, sc.IPC_CREAT | 0o600)}


@needs_ns_root
def test_every_changing_command_works_inside_the_namespace_of_pid() -> None:
    with ns_child(_objects) as (pid, objs):
        assert run("send", objs["q"], "hi", "--pid", pid)[0] == 0
        assert run("--pid", pid, "receive", objs["q"], "--nowait") == (0, "hi")
        assert run("semop", objs["s"], "0:3", "--pid", pid)[0] == 0
        code, out = run("mk", "queue", "--key", 0x4444, "--pid", pid, "--json")
        assert code == 0
        q2 = json.loads(out)["id"]
        assert run("rm", "set", "--key", 0x8765, "--pid", pid)[0] == 0
        with enter_namespace(pid):
            queues = {ds.key for _, ds in list_queues()}
            sets = list_semaphore_sets()
        assert run("rm", "queue", q2, "--pid", pid)[0] == 0
    assert queues == {0x4321, 0x4444} and sets == []
    with pytest.raises(FileNotFoundError):
        sc.msgget(0x4444)


def test_mk_segment_is_what_ipcs_shows_and_rm_removes_it(made: List[Tuple[str, int]]) -> None:
    key = 0x7A000000 | os.getpid()
    m = _mk(made, "segment", 10000, "--key", hex(key), "--mode", "600")
    ipcs = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    assert f"{key:#010x} {m:<10} {ME:<10} 600        10000      0" in ipcs
    assert run("rm", "segment", "--key", hex(key)) == (0, f"removed shared memory segment {m}\n")
    with pytest.raises(FileNotFoundError):
        sc.shmget(key, 0)


@needs_root
def test_commands_refused_for_a_permission_exit_4_naming_the_object(msq: int,
                                                                   semset: int) -> None:
    q, s = f"message queue {msq}: ", f"semaphore set {semset}: "
    argvs = [(["send", str(msq), "x"], q),
             (["receive", str(msq)], q), (["rm", "queue", str(msq)], q),
             (["semop", str(semset), "0:1"], s), (["rm", "set", str(semset)], s)]

    def child() -> int:
        for argv, says in argvs:
            sys.stderr = io.StringIO()
            code = main(argv, out=io.StringIO())
            if code != 4 or says not in sys.stderr.getvalue():
                return 1
        return 0

    assert run_in_child(child, uid=NOBODY) == 0
    assert sc.msgctl(msq, sc.IPC_STAT).qnum == 0 and sc.semctl(semset, 0, sc.GETVAL) == 0


def _no_room() -> None:
    with open("/proc/sys/kernel/msgmni", "w") as f:
        f.write("0")
    with open("/proc/sys/kernel/sem", "w") as f:
        f.write("4 32000 32 32000")
    with open("/proc/sys/kernel/shmmni", "w") as f:
        f.write("0")


@needs_ns_root
@pytest.mark.parametrize("argv, says", [
    (["mk", "queue"], "no room for another message queue: MSGMNI reached"),
    (["mk", "set", "5"], "a semaphore set of 5 semaphores is beyond SEMMSL"),
    (["mk", "segment", "1"], "no room for another shared memory segment: SHMMNI or SHMALL "
                             "reached"),
])
def test_mk_beyond_a_limit_exits_1_naming_the_limit(argv: List[str], says: str,
                                                    capsys: Any) -> None:
    with ns_child(_no_room) as (pid, _):
        assert run(*argv, "--pid", pid) == (1, "")
        with enter_namespace(pid):
            left = [*list_queues(), *list_semaphore_sets(), *list_segments()]
    assert says in capsys.readouterr().err and left == []


@needs_root
@needs_stat_any
@pytest.mark.parametrize("kind, flag", [("queue", "-q"), ("set", "-s"), ("segment", "-m")])
def test_ls_i_without_read_permission_shows_what_ls_lists(msq: int, semset: int, seg: int,
                                                          kind: str, flag: str) -> None:
    ident = {"queue": msq, "set": semset, "segment": seg}[kind]

    def child() -> int:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code, out = run("ls", flag, "-i", ident, "--json")
        if code != 0:
            print(code, err.getvalue(), file=sys.stderr)
            return 1
        doc = json.loads(out)
        return 0 if (doc["id"], doc["mode"]) == (ident, "0600") and (
            kind != "set" or doc["semaphores"] is None) else 2

    assert run_in_child(child, uid=NOBODY) == 0
