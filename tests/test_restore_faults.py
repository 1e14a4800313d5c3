"""Restore and load faults found by hostile inputs: ids left armed under limits, ids
that alias an existing object's index, limits never changed, unbounded or duplicated
input, nesting at the depth where the checksum recursed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any, Callable

import pytest

from conftest import NOBODY, run_in_child
from nschild import needs_ns_root, ns_child

from ipcbind import syscalls as sc
from ipcbind.namespace import enter_namespace, list_queues, list_semaphore_sets
from ipcbind.snapshot import (Limits, QueueState, RestoreConflictError, RestoreError,
                              SemaphoreSetState, Snapshot, SnapshotFormatError, _digest, dumps,
                              load, loads, restore, snapshot)

LIMITS = Limits(8192, 16384, 32000, 32000, 1024000000, 500, 32000)


def _snap(queues: tuple = (), sets: tuple = (), limits: Limits = LIMITS) -> Snapshot:
    return Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None, limits, queues, sets)


def _q(ident: int, key: int = 0) -> QueueState:
    return QueueState(ident, key, 0, 0, 0, 0, 0o600, 16384, ((1, b"m"),))


def _s(ident: int, n: int = 1) -> SemaphoreSetState:
    return SemaphoreSetState(ident, 0, 0, 0, 0, 0, 0o600, (1,) * n)


def _proc(pid: int, name: str) -> str:
    with enter_namespace(pid):
        return open(f"/proc/sys/kernel/{name}").read().strip()


def _one_queue_and_msgmni(n: str) -> Callable[[], int]:
    def setup() -> int:
        q = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
        with open("/proc/sys/kernel/msgmni", "w") as f:
            f.write(n)
        return q
    return setup


def _one_set_and_sem(line: str) -> Callable[[], int]:
    def setup() -> int:
        s = sc.semget(sc.IPC_PRIVATE, 1, sc.IPC_CREAT | 0o600)
        with open("/proc/sys/kernel/sem", "w") as f:
            f.write(line)
        return s
    return setup


@needs_ns_root
def test_restore_failing_under_msgmni_leaves_no_id_armed_and_msgmni_as_it_was() -> None:
    # Room for the staging marker, not for the queue: msgget fails with ENOSPC, and so
    # would a throwaway queue meant to consume the armed id, without the room made.
    with ns_child(_one_queue_and_msgmni("2")) as (other, have):
        with pytest.raises(RestoreError, match="No space left") as info:
            restore(_snap((_q(5),)), other)
        assert info.value.leftovers == ()
        assert _proc(other, "msg_next_id") == "-1" and _proc(other, "msgmni") == "2"
        with enter_namespace(other):
            assert [i for i, _ in list_queues()] == [have]


@needs_ns_root
@pytest.mark.parametrize("line, nsems", [("32000 1024000000 500 1", 1), ("32000 3 500 32000", 3)],
                         ids=["semmni", "semmns"])
def test_restore_failing_under_a_semaphore_limit_leaves_no_id_armed(line: str,
                                                                   nsems: int) -> None:
    with ns_child(_one_set_and_sem(line)) as (other, have):
        with pytest.raises(RestoreError, match="No space left") as info:
            restore(_snap((), (_s(7, nsems),)), other)
        assert info.value.leftovers == ()
        assert _proc(other, "sem_next_id") == "-1" and _proc(other, "sem").split() == line.split()
        with enter_namespace(other):
            assert [i for i, _ in list_semaphore_sets()] == [have]


@needs_ns_root
def test_restore_of_an_id_aliasing_an_existing_objects_index_is_a_conflict() -> None:
    with ns_child(lambda: sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)) as (other, have):
        assert have == 0
        with pytest.raises(RestoreConflictError, match="queue id 32768 has the index of "
                           "queue 0"):
            restore(_snap((_q(32768),)), other)
        with enter_namespace(other):
            assert [i for i, _ in list_queues()] == [0]


def test_loader_refuses_two_ids_with_one_index() -> None:
    text = dumps(_snap((_q(0), _q(32768))))
    with pytest.raises(SnapshotFormatError, match="ids 0 and 32768 share index 0"):
        loads(text)


@needs_ns_root
def test_restore_with_limits_by_an_unprivileged_user_names_no_limit_it_never_changed() -> None:
    snap = _snap((), (), Limits(9000, 20000, 100, 250, 32000, 32, 128))

    def attempt() -> int:
        try:
            restore(snap, set_limits=True)
        except RestoreError as e:
            return 0 if e.leftovers == () and "COULD NOT REMOVE" not in str(e) else 2
        return 1

    with ns_child() as (other, _):
        with enter_namespace(other):
            assert run_in_child(attempt, uid=NOBODY) == 0
        assert _proc(other, "msgmax") == "8192"


DUPLICATE = ('{"format": "ipcbind-snapshot", "version": 1, "queues": [], '
             '"queues": [], "checksum": "x"}')


def test_loader_refuses_a_member_given_twice() -> None:
    with pytest.raises(SnapshotFormatError, match='"queues" given twice'):
        loads(DUPLICATE)


def test_loader_refuses_deep_nesting_inside_queues_cleanly_at_every_depth() -> None:
    # Around Python's recursion limit the parser can succeed where the checksum's
    # serializer then recurses deeper: every depth must be refused the same way.
    text = dumps(_snap())
    assert '"queues": []' in text
    for depth in range(800, 1100):
        with pytest.raises(SnapshotFormatError):
            loads(text.replace('"queues": []', '"queues": [' + "[" * depth + "]" * depth + "]"))


def test_load_of_an_endless_stream_that_is_not_json_is_refused_at_once() -> None:
    with open("/dev/zero", "rb") as f:
        with pytest.raises(SnapshotFormatError, match="begins with"):
            load(f)


class _Endless(io.RawIOBase):
    """ '{' then spaces without end."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = len(b)
        b[:n] = (b"{" if self.sent == 0 else b" ") + b" " * (n - 1)
        self.sent += n
        return n


def test_load_of_an_endless_stream_stops_at_max_size() -> None:
    stream = _Endless()
    with pytest.raises(SnapshotFormatError, match="larger than 1000000 bytes"):
        load(stream, max_size=1000000)
    assert stream.sent <= 1000001


def test_load_of_a_regular_file_above_max_size_is_refused_before_reading(tmp_path: Any) -> None:
    path = tmp_path / "big.json"
    path.write_text(dumps(_snap((_q(1),))))
    with pytest.raises(SnapshotFormatError, match="larger than 100 bytes"):
        load(path, max_size=100)


@pytest.mark.parametrize("source", ["/dev/zero", "-"])
def test_restore_command_refuses_an_endless_input_with_exit_5(source: str) -> None:
    stdin = subprocess.DEVNULL
    if source == "-":
        stdin = subprocess.Popen(["yes", "{"], stdout=subprocess.PIPE).stdout  # type: ignore
    done = subprocess.run([sys.executable, "-m", "ipcbind", "restore", source,
                           "--own-namespace", "--max-size", "1000000"], stdin=stdin,
                          capture_output=True, timeout=60)
    assert done.returncode == 5, done.stderr
    assert b"Traceback" not in done.stderr


def _long_message_then_msgmax_down() -> int:
    with open("/proc/sys/kernel/msgmax", "w") as f:
        f.write("20000")
    q = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
    sc.msgsnd(q, 1, b"l" * 15000)
    with open("/proc/sys/kernel/msgmax", "w") as f:
        f.write("8192")
    return q


@needs_ns_root
def test_dump_and_peek_of_a_message_longer_than_msgmax_say_what_to_do(capsys: Any) -> None:
    from ipcbind.cli import main
    with ns_child(_long_message_then_msgmax_down) as (pid, q):
        with pytest.raises(OSError, match="MSG_COPY copies at most msgmax bytes: raise "
                           "/proc/sys/kernel/msgmax"):
            snapshot(pid)
        codes = [main(["peek", str(q), "--pid", str(pid)] + extra, out=io.StringIO())
                 for extra in ([], ["--index", "0"])]
        assert main(["dump", "--pid", str(pid)], out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert codes == [1, 1]
    assert err.count("holds a message longer than msgmax (8192 bytes now") == 3
