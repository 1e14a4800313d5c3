"""ipcbind.snapshot: snapshot, file format, restore and freezing, against real namespaces."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import stat
import tempfile
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import pytest

from conftest import NOBODY, run_in_child
from nschild import needs_ns_root, ns_child

from ipcbind import syscalls as sc
from ipcbind.errors import QueueChangedError
from ipcbind.namespace import enter_namespace, list_queues, list_semaphore_sets
from ipcbind.snapshot import (
    Limits,
    QueueState,
    RestoreConflictError,
    RestoreError,
    SemaphoreSetState,
    Snapshot,
    SnapshotFormatError,
    _digest,
    dump,
    dumps,
    freeze_namespace,
    load,
    loads,
    restore,
    snapshot,
)

BIG = 40000  # above the default msgmnb (16384)


def _populate() -> Dict[str, Any]:
    """In a fresh namespace: queues and sets with chosen ids, keys, owners, modes, qbytes."""
    with open("/proc/sys/kernel/msgmnb", "w") as f:
        f.write(str(BIG))
    with open("/proc/sys/kernel/msg_next_id", "w") as f:
        f.write("4242")
    a = sc.msgget(0xCAFE0001, sc.IPC_CREAT | 0o600)
    for i, data in enumerate([b"first", b"\x00\xff binary \x01", b"", b"x" * 8000]):
        sc.msgsnd(a, 10 + i, data)
    sc.msgsnd(a, 2 ** 62, b"huge type")
    sc.msgctl(a, sc.IPC_SET, {"uid": 65534, "gid": 65533, "mode": 0o640})
    b = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o666)
    sc.msgctl(b, sc.IPC_SET, {"qbytes": 512})
    sc.msgsnd(b, 1, b"small")
    with open("/proc/sys/kernel/sem_next_id", "w") as f:
        f.write("77")
    s = sc.semget(0xCAFE0002, 3, sc.IPC_CREAT | 0o604)
    sc.semctl(s, 0, sc.SETALL, [0, 5, 32767])
    t = sc.semget(sc.IPC_PRIVATE, 1, sc.IPC_CREAT | 0o600)
    sc.semctl(t, 0, sc.SETVAL, 9)
    return {"queues": [a, b], "sets": [s, t]}


def _empty_namespace_objects(pid: int) -> tuple:
    with enter_namespace(pid):
        return list_queues(), list_semaphore_sets()


@needs_ns_root
def test_snapshot_holds_every_queue_and_set_with_all_their_state() -> None:
    with ns_child(_populate) as (pid, made):
        snap = snapshot(pid)
    assert [q.id for q in snap.queues] == sorted(made["queues"])
    a, b = sorted(snap.queues, key=lambda q: q.id != 4242)
    assert (a.id, a.key, a.uid, a.gid, a.cuid, a.mode, a.qbytes) == (
        4242, 0xCAFE0001, 65534, 65533, 0, 0o640, BIG)
    assert a.messages == ((10, b"first"), (11, b"\x00\xff binary \x01"), (12, b""),
                          (13, b"x" * 8000), (2 ** 62, b"huge type"))
    assert (b.key, b.mode, b.qbytes, b.messages) == (0, 0o666, 512, ((1, b"small"),))
    s, t = sorted(snap.semaphore_sets, key=lambda x: x.id != 77)
    assert (s.id, s.key, s.mode, s.values) == (77, 0xCAFE0002, 0o604, (0, 5, 32767))
    assert (t.key, t.values) == (0, (9,))
    assert snap.limits.msgmnb == BIG and snap.limits.msgmax == 8192
    assert snap.pid == pid and snap.frozen is None


@needs_ns_root
def test_snapshot_takes_no_message_and_leaves_queue_times_alone() -> None:
    with ns_child(_populate) as (pid, made):
        with enter_namespace(pid):
            before = [sc.msgctl(q, sc.IPC_STAT) for q in made["queues"]]
        snapshot(pid)
        with enter_namespace(pid):
            after = [sc.msgctl(q, sc.IPC_STAT) for q in made["queues"]]
    assert after == before


@needs_ns_root
def test_dump_then_restore_into_a_fresh_namespace_recreates_each_object_exactly(
        tmp_path: Any) -> None:
    with ns_child(_populate) as (pid, _):
        snap = snapshot(pid)
    dump(snap, tmp_path / "ns.json")
    loaded = load(tmp_path / "ns.json")
    with ns_child() as (other, _):
        done = restore(loaded, other, set_limits=True)
        again = snapshot(other)
    assert done.queues == tuple(q.id for q in snap.queues)
    assert done.semaphore_sets == tuple(s.id for s in snap.semaphore_sets)
    assert again.limits == snap.limits
    assert len(again.queues) == len(snap.queues)
    for old, new in zip(snap.queues, again.queues):
        assert new == old
    for old, new in zip(snap.semaphore_sets, again.semaphore_sets):
        assert new == old


@needs_ns_root
def test_restore_without_limits_refuses_qbytes_above_msgmnb_and_removes_everything() -> None:
    with ns_child(_populate) as (pid, _):
        snap = snapshot(pid)
    with ns_child() as (other, _):
        with pytest.raises(RestoreError, match="CAP_SYS_RESOURCE") as info:
            restore(snap, other)
        assert info.value.leftovers == ()
        assert _empty_namespace_objects(other) == ([], [])


def _queue(id: int, key: int = 0, messages: tuple = ((1, b"m"),)) -> QueueState:
    return QueueState(id, key, 0, 0, 0, 0, 0o600, 16384, messages)


def _semset(id: int, key: int = 0, values: tuple = (1,)) -> SemaphoreSetState:
    return SemaphoreSetState(id, key, 0, 0, 0, 0, 0o600, values)


def _snap(queues: tuple = (), sets: tuple = ()) -> Snapshot:
    return Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None,
                    Limits(8192, 16384, 32000, 32000, 1024000000, 500, 32000), queues, sets)


@needs_ns_root
def test_restore_failing_half_way_leaves_nothing_behind() -> None:
    # The second set's value is above SEMVMX: SETALL fails with ERANGE after two
    # queues and a set were made.
    snap = _snap((_queue(5, 0x100), _queue(9)), (_semset(3, 0x200), _semset(4, 0, (1, 40000))))
    with ns_child() as (other, _):
        with pytest.raises(RestoreError, match="removed the 4 object") as info:
            restore(snap, other, set_limits=True)
        assert isinstance(info.value.__cause__, OSError)
        assert _empty_namespace_objects(other) == ([], [])
        with enter_namespace(other):
            next_ids = [open(f"/proc/sys/kernel/{k}_next_id").read().strip()
                        for k in ("msg", "sem")]
            limits = open("/proc/sys/kernel/msgmnb").read().strip()
    assert next_ids == ["-1", "-1"] and limits == "16384"


@needs_ns_root
def test_restore_with_set_limits_puts_the_old_limits_back_when_it_fails() -> None:
    snap = dataclasses.replace(_snap((), (_semset(4, 0, (40000,)),)),
                               limits=Limits(9000, 20000, 100, 250, 32000, 32, 128))
    with ns_child() as (other, _):
        with pytest.raises(RestoreError):
            restore(snap, other, set_limits=True)
        with enter_namespace(other):
            msgmax = open("/proc/sys/kernel/msgmax").read().strip()
    assert msgmax == "8192"


@needs_ns_root
@pytest.mark.parametrize("clash", ["id", "key"])
def test_restore_refuses_to_clobber_an_existing_queue(clash: str) -> None:
    def existing() -> int:
        return sc.msgget(0xBEEF, sc.IPC_CREAT | 0o600)

    with ns_child(existing) as (other, have):
        wanted = _queue(have, 0) if clash == "id" else _queue(have + 1, 0xBEEF)
        with pytest.raises(RestoreConflictError, match=f"queue {clash}"):
            restore(_snap((wanted,), (_semset(8),)), other)
        queues, sets = _empty_namespace_objects(other)
    assert [i for i, _ in queues] == [have] and sets == []


@needs_ns_root
def test_restore_refuses_to_clobber_an_existing_semaphore_set() -> None:
    with ns_child(lambda: sc.semget(0xBEEF, 1, sc.IPC_CREAT | 0o600)) as (other, have):
        with pytest.raises(RestoreConflictError, match=f"semaphore set id {have}"):
            restore(_snap((_queue(3),), (_semset(have),)), other)
        queues, sets = _empty_namespace_objects(other)
    assert queues == [] and [i for i, _ in sets] == [have]


# ---- freezing ---------------------------------------------------------------------

def _writer_setup() -> int:
    return sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)


def _write_forever(q: int) -> None:
    try:
        sc.msgsnd(q, 1, b"tick" * 8, sc.IPC_NOWAIT)
    except BlockingIOError:
        for _ in range(100):
            sc.msgrcv(q, None, 0, sc.IPC_NOWAIT)
    time.sleep(0.0005)


def _changes(pid: int, q: int) -> tuple:
    with enter_namespace(pid):
        ds = sc.msgctl(q, sc.IPC_STAT)
    return ds.qnum, ds.stime, ds.rtime


def _moves(pid: int, q: int) -> bool:
    """Whether the writer changes its queue within a few seconds."""
    first = _changes(pid, q)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if _changes(pid, q)[0] != first[0]:
            return True
        time.sleep(0.01)
    return False


def _still(pid: int, q: int) -> bool:
    first = _changes(pid, q)
    time.sleep(0.3)
    return _changes(pid, q) == first


@needs_ns_root
def test_freeze_stops_a_writer_with_sigstop_and_resumes_it() -> None:
    with ns_child(_writer_setup, _write_forever) as (pid, q):
        assert _moves(pid, q)
        with freeze_namespace(pid) as how:
            assert how == "sigstop"
            assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
            assert _still(pid, q)
        assert _moves(pid, q)


def _cgroup2() -> str:
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        if right.startswith("cgroup2 "):
            return left.split()[4]
    return ""


@pytest.fixture
def cgroup() -> Iterator[str]:
    """A fresh cgroup v2 directory, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_ADMIN) to make IPC namespaces and cgroups")
    root = _cgroup2()
    if not root or not os.access(root, os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy")
    path = os.path.join(root, f"ipcbind-test-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)  # the reaped child leaves the cgroup a moment later


def _events(path: str) -> str:
    with open(os.path.join(path, "cgroup.events")) as f:
        return f.read()


def _move(pid: int, path: str) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def test_freeze_uses_the_cgroup_freezer_when_the_namespace_has_its_own_cgroup(
        cgroup: str) -> None:
    with ns_child(_writer_setup, _write_forever) as (pid, q):
        _move(pid, cgroup)
        assert _moves(pid, q)
        with freeze_namespace(pid) as how:
            assert how == "cgroup"
            assert "frozen 1" in _events(cgroup)
            assert _still(pid, q)
        assert "frozen 0" in _events(cgroup)
        assert _moves(pid, q)


def test_freeze_leaves_a_cgroup_someone_else_froze_as_it_was(cgroup: str) -> None:
    # A process of another namespace shares the cgroup, so it is not ours to freeze;
    # but it is frozen already, and a SIGSTOP would wait for a thaw that never comes.
    outsider = subprocess.Popen(["sleep", "30"])
    try:
        with ns_child(_writer_setup, _write_forever) as (pid, q):
            _move(pid, cgroup)
            _move(outsider.pid, cgroup)
            with open(os.path.join(cgroup, "cgroup.freeze"), "w") as f:
                f.write("1")
            try:
                with freeze_namespace(pid) as how:
                    assert how is None
                    assert _still(pid, q)
                assert "frozen 1" in _events(cgroup)
            finally:
                with open(os.path.join(cgroup, "cgroup.freeze"), "w") as f:
                    f.write("0")
            assert _moves(pid, q)
    finally:
        outsider.kill()
        outsider.wait()


@needs_ns_root
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, ValueError])
def test_freeze_lets_the_writer_go_when_the_block_is_interrupted(interruption: type) -> None:
    with ns_child(_writer_setup, _write_forever) as (pid, q):
        with pytest.raises(interruption):
            with freeze_namespace(pid):
                raise interruption()
        assert _moves(pid, q)


@needs_ns_root
def test_snapshot_with_freeze_records_it_and_lets_the_writer_go() -> None:
    with ns_child(_writer_setup, _write_forever) as (pid, q):
        snap = snapshot(pid, freeze=True, retries=1)
        assert snap.frozen == "sigstop" and [x.id for x in snap.queues] == [q]
        assert _moves(pid, q)


def test_freeze_refuses_our_own_namespace() -> None:
    with pytest.raises(ValueError, match="our own IPC namespace"):
        with freeze_namespace(os.getpid()):
            pass


def _churn_setup() -> int:
    q = sc.msgget(sc.IPC_PRIVATE, sc.IPC_CREAT | 0o600)
    for i in range(400):
        sc.msgsnd(q, 1, b"%d" % i)
    return q


def _churn(q: int) -> None:
    sc.msgsnd(q, 1, b"new" * (1 + int(time.monotonic() * 1000) % 5), sc.IPC_NOWAIT)
    sc.msgrcv(q, None, 0, sc.IPC_NOWAIT)


@needs_ns_root
def test_snapshot_reports_a_queue_that_changes_while_it_is_read() -> None:
    with ns_child(_churn_setup, _churn) as (pid, q):
        errors: List[QueueChangedError] = []
        for _ in range(50):
            try:
                snapshot(pid, retries=1)
            except QueueChangedError as e:
                errors.append(e)
                break
    assert errors and errors[0].msqid == q


# ---- the file format -------------------------------------------------------------

SAMPLE = _snap((_queue(4242, 0xCAFE, ((1, b"a"), (2 ** 63 - 1, b"\x00\xff"), (5, b""))),
                QueueState(7, 0, 1000, 1001, 0, 0, 0o640, 100, ())),
               (_semset(77, 0xFFFFFFFF, (0, 32767)),))


def test_file_round_trips_exactly() -> None:
    text = dumps(SAMPLE)
    assert loads(text) == SAMPLE
    assert dumps(loads(text)) == text


def test_file_is_readable_json_with_base64_payloads() -> None:
    doc = json.loads(dumps(SAMPLE))
    assert (doc["format"], doc["version"]) == ("ipcbind-snapshot", 1)
    q = doc["queues"][0]
    assert (q["key"], q["mode"]) == ("0x0000cafe", "0600")
    assert q["messages"][1] == {"type": 2 ** 63 - 1, "size": 2, "data": "AP8="}
    assert doc["semaphore_sets"][0]["key"] == "0xffffffff"


def _resigned(edit: Any) -> str:
    doc = json.loads(dumps(SAMPLE))
    edit(doc)
    doc.pop("checksum", None)
    doc["checksum"] = _digest(doc)
    return json.dumps(doc)


def _set(path: List[Any], value: Any) -> Any:
    def edit(doc: Any) -> None:
        for p in path[:-1]:
            doc = doc[p]
        doc[path[-1]] = value
    return edit


DAMAGED = {
    "empty": ("", "not JSON"),
    "truncated": (dumps(SAMPLE)[:200], "not JSON"),
    "not utf-8": (b"\xff\xfe{}", "not UTF-8"),
    "foreign json": ('{"hello": "world"}', "not an ipcbind snapshot"),
    "a list": ("[1, 2]", "not an ipcbind snapshot"),
    "deep nesting": ("[" * 100000 + "]" * 100000, "snapshot"),
    "newer version": (_resigned(_set(["version"], 2)), "version 2 is not supported"),
    "edited value": (dumps(SAMPLE).replace('"id": 4242', '"id": 4243'), "checksum"),
    "no checksum": (_resigned(lambda d: None).replace('"checksum"', '"x"'), "checksum"),
    "bad base64": (_resigned(_set(["queues", 0, "messages", 0, "data"], "@@@")),
                   r"queues\[0\].messages\[0\].data"),
    "size mismatch": (_resigned(_set(["queues", 0, "messages", 0, "size"], 3)),
                      "size says 3 bytes but data holds 1"),
    "mtype 0": (_resigned(_set(["queues", 0, "messages", 0, "type"], 0)), "outside 1"),
    "key not hex": (_resigned(_set(["queues", 0, "key"], "51966")), r"queues\[0\].key"),
    "mode too wide": (_resigned(_set(["queues", 0, "mode"], "01777")), r"queues\[0\].mode"),
    "negative id": (_resigned(_set(["semaphore_sets", 0, "id"], -1)), "outside 0"),
    "value above semvmx": (_resigned(_set(["semaphore_sets", 0, "values", 0], 32768)),
                           "outside 0..32767"),
    "bool as int": (_resigned(_set(["queues", 0, "qbytes"], True)), "must be an integer"),
    "duplicate id": (_resigned(_set(["queues", 1, "id"], 4242)), "id 4242 appears twice"),
    "missing field": (_resigned(lambda d: d["queues"][0].pop("uid")), "missing uid"),
    "unknown field": (_resigned(_set(["queues", 0, "extra"], 1)), "unknown field extra"),
    "limits short": (_resigned(_set(["limits", "sem"], [1, 2])), "4 numbers"),
    "taken_at month 99": (_resigned(_set(["taken_at"], "2026-99-01T00:00:00.000000Z")),
                          "taken_at: .* is not a real date and time"),
    "taken_at february 30": (_resigned(_set(["taken_at"], "2026-02-30T00:00:00.000000Z")),
                             "taken_at: .* is not a real date and time"),
    "taken_at hour 24": (_resigned(_set(["taken_at"], "2026-01-01T24:00:00.000000Z")),
                         "taken_at: .* is not a real date and time"),
    "taken_at year 0": (_resigned(_set(["taken_at"], "0000-01-01T00:00:00.000000Z")),
                        "taken_at: .* is not a real date and time"),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_loader_rejects_damaged_or_foreign_files_with_a_clear_error(name: str) -> None:
    text, why = DAMAGED[name]
    with pytest.raises(SnapshotFormatError, match=why):
        loads(text)


def test_dump_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path: Any) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "real" / "ns.json"
    target.write_text("old")
    link = tmp_path / "links" / "ns.json"
    link.symlink_to(os.path.join("..", "real", "ns.json"))
    dump(SAMPLE, link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "real", "ns.json")
    assert load(target) == SAMPLE
    assert os.listdir(tmp_path / "links") == ["ns.json"]
    assert os.listdir(tmp_path / "real") == ["ns.json"]


def test_dump_through_a_dangling_symlink_creates_its_target(tmp_path: Any) -> None:
    link = tmp_path / "ns.json"
    link.symlink_to("made.json")
    dump(SAMPLE, link)
    assert link.is_symlink() and os.readlink(link) == "made.json"
    assert load(tmp_path / "made.json") == SAMPLE
    assert sorted(os.listdir(tmp_path)) == ["made.json", "ns.json"]


def test_dump_through_a_dangling_symlink_into_a_missing_directory_names_the_link(
        tmp_path: Any) -> None:
    link = tmp_path / "ns.json"
    link.symlink_to(os.path.join("no", "made.json"))
    with pytest.raises(FileNotFoundError) as got:
        dump(SAMPLE, link)
    assert got.value.filename == str(link)
    assert os.listdir(tmp_path) == ["ns.json"] and link.is_symlink()


@pytest.mark.parametrize("path", ["/dev/stdout", "/proc/self/fd/1"])
def test_dump_to_a_link_to_a_pipe_writes_into_the_pipe(path: str) -> None:
    # /dev/stdout leads to /proc/self/fd/1, whose target is "pipe:[...]", no path.
    code = ("import sys\n"
            "from ipcbind.snapshot import dump, loads\n"
            f"dump(loads(sys.stdin.read()), {path!r})\n")
    done = subprocess.run([sys.executable, "-c", code], input=dumps(SAMPLE),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert loads(done.stdout) == SAMPLE


def test_dump_makes_a_new_file_readable_by_its_owner_only(tmp_path: Any) -> None:
    # The file holds the messages, which the queues' modes may have kept private.
    dump(SAMPLE, tmp_path / "ns.json")
    assert stat.S_IMODE(os.stat(tmp_path / "ns.json").st_mode) == 0o600
    assert load(tmp_path / "ns.json") == SAMPLE


def test_dump_over_a_file_keeps_that_files_permissions(tmp_path: Any) -> None:
    target = tmp_path / "ns.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    dump(SAMPLE, target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert load(target) == SAMPLE and os.listdir(tmp_path) == ["ns.json"]


def test_dump_does_not_follow_a_link_planted_at_its_old_temporary_name(tmp_path: Any) -> None:
    # A name that can be guessed (path.PID.tmp) could be made a link to another file.
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / f"ns.json.{os.getpid()}.tmp").symlink_to(victim)
    dump(SAMPLE, tmp_path / "ns.json")
    assert victim.read_text() == "keep me"
    assert load(tmp_path / "ns.json") == SAMPLE


def test_snapshot_format_error_is_a_value_error() -> None:
    assert issubclass(SnapshotFormatError, ValueError)


@needs_ns_root
def test_freeze_lets_the_writer_go_on_a_real_ctrl_c() -> None:
    code = ("import sys, time\n"
            "from ipcbind.snapshot import freeze_namespace\n"
            "with freeze_namespace(int(sys.argv[1])):\n"
            "    print('frozen', flush=True)\n"
            "    time.sleep(60)\n")
    with ns_child(_writer_setup, _write_forever) as (pid, q):
        p = subprocess.Popen([sys.executable, "-c", code, str(pid)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            assert p.stdout is not None and p.stdout.readline() == b"frozen\n"
            assert _still(pid, q)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert b"KeyboardInterrupt" in err
        assert _moves(pid, q)


def test_restore_without_privilege_says_what_is_missing_and_creates_nothing() -> None:
    snap = _snap((_queue(2 ** 30 + 17, 0),), ())

    def attempt() -> int:
        try:
            restore(snap)
        except RestoreError as e:
            if not isinstance(e.__cause__, PermissionError) or "CAP_SYS_ADMIN" not in str(e):
                return 2
            # Other processes make queues here too: look only for the one it wanted.
            return 0 if "removed the 0 object" in str(e) and 2 ** 30 + 17 not in dict(
                list_queues()) else 3
        return 1

    if os.geteuid() == 0:
        assert run_in_child(attempt, uid=NOBODY) == 0
    else:
        assert attempt() == 0


@needs_ns_root
def test_restore_interrupted_by_ctrl_c_removes_what_it_made_and_lets_it_through() -> None:
    snap = _snap((_queue(5, 0x100), _queue(9)), (_semset(3),))

    def progress(done: int, total: int, what: str) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with ns_child() as (other, _):
        with pytest.raises(KeyboardInterrupt):
            restore(snap, other, progress=progress)
        assert _empty_namespace_objects(other) == ([], [])


def _semmsl_2() -> None:
    with open("/proc/sys/kernel/sem", "w") as f:
        f.write("2 64000 500 32000")


@needs_ns_root
def test_restore_whose_semget_fails_leaves_no_id_armed_for_the_next_object() -> None:
    # semget refuses more semaphores than SEMMSL before it allocates anything, which
    # leaves the id in sem_next_id armed for whatever object comes next; the kernel
    # takes no -1 there to disarm it.
    snap = _snap((), (_semset(7, 0, (1, 1, 1)),))
    with ns_child(_semmsl_2) as (other, _):
        with pytest.raises(RestoreError):
            restore(snap, other, set_limits=False)
        with enter_namespace(other):
            next_id = open("/proc/sys/kernel/sem_next_id").read().strip()
        assert _empty_namespace_objects(other) == ([], [])
    assert next_id == "-1"


@pytest.mark.parametrize("path", ["/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"])
def test_dump_to_stdout_appended_to_a_file_appends_and_keeps_the_file(tmp_path: Any,
                                                                     path: str) -> None:
    out = tmp_path / "log.json"
    out.write_text("previous\n")
    code = ("import sys\n"
            "from ipcbind.snapshot import dump, loads\n"
            f"dump(loads(sys.stdin.read()), {path!r})\n")
    with open(out, "a") as f:
        done = subprocess.run([sys.executable, "-c", code], input=dumps(SAMPLE).encode(),
                              stdout=f, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith("previous\n") and loads(text[len("previous\n"):]) == SAMPLE


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_dump_over_a_file_keeps_its_owner_and_drops_setuid_and_setgid(tmp_path: Any) -> None:
    target = tmp_path / "ns.json"
    target.write_text("old")
    os.chown(target, NOBODY, NOBODY)
    os.chmod(target, 0o6755)
    dump(SAMPLE, target)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o755)
    assert load(target) == SAMPLE


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_dump_over_another_users_file_that_cannot_keep_its_owner_is_refused() -> None:
    # A directory the other user can reach and write: pytest's own are root's only.
    tmp_path = pathlib.Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(tmp_path, 0o777)
    target = tmp_path / "ns.json"
    target.write_text("old")
    os.chmod(target, 0o666)

    def attempt() -> int:
        try:
            dump(SAMPLE, target)
        except PermissionError as e:
            return 0 if "belongs to uid 0" in str(e) else 2
        return 1

    try:
        assert run_in_child(attempt, uid=NOBODY) == 0
        assert target.read_text() == "old" and os.stat(target).st_uid == 0
        assert os.listdir(tmp_path) == ["ns.json"]
    finally:
        shutil.rmtree(tmp_path)


def test_dump_to_a_directory_names_the_directory(tmp_path: Any) -> None:
    with pytest.raises(IsADirectoryError) as got:
        dump(SAMPLE, tmp_path)
    assert got.value.filename == str(tmp_path) and os.listdir(tmp_path) == []


@needs_ns_root
def test_snapshot_progress_counts_messages_and_bytes_before_each_queue() -> None:
    seen: List[str] = []
    with ns_child(_populate) as (pid, _):
        snapshot(pid, progress=lambda done, total, what: seen.append(f"{done}/{total} {what}"))
    assert seen[0] == "0/4 queue 0 (1 messages, 5 B): 0/6 messages, 0 B/7.8 KiB done"
    assert seen[1] == ("1/4 queue 4242 (5 messages, 7.8 KiB): 1/6 messages, 5 B/7.8 KiB done")
    assert seen[-1] == "4/4 done"
