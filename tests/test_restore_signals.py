"""A restore is all or nothing under SIGINT, SIGTERM and SIGKILL, in real namespaces,
with real signals sent to real processes at random moments (fixed seed)."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from conftest import reap, start_child
from nschild import needs_ns_root, ns_child
from sysv_helpers import wait_blocked, wait_until

from ipcbind import syscalls as sc
from ipcbind.namespace import enter_namespace, list_queues, list_segments, list_semaphore_sets
from ipcbind.snapshot import (Limits, QueueState, RestoreConflictError, RestoreError,
                              RestoreInterrupted, SegmentState, SemaphoreSetState, Snapshot,
                              dump, restore, snapshot)

LIMITS = Limits(9000, 16384, 32000, 32000, 1024000000, 500, 32000)
BIG = dataclasses.replace(LIMITS, msgmax=8192)  # the limits of a fresh namespace


def _many(queues: int = 300, sets: int = 60, segments: int = 20) -> Snapshot:
    qs = tuple(QueueState(i * 3, 0x5100000 + i if i % 2 else 0, 0, 0, 0, 0, 0o640,
                          100000 if i == 7 else 16384,
                          tuple((t, bytes([i % 256]) * (i % 50)) for t in range(1, 6)))
               for i in range(queues))
    ss = tuple(SemaphoreSetState(i * 2 + 1, 0x5200000 + i, 0, 0, 0, 0, 0o600, (i % 7, 1))
               for i in range(sets))
    ms = tuple(SegmentState(i * 5, 0x5300000 + i if i % 3 else 0, 0, 0, 0, 0, 0o640,
                            20000 + i, bytes([i]) * (20000 + i))
               for i in range(segments))
    return Snapshot("2026-01-01T00:00:00.000000Z", 1, None, None, LIMITS, qs, ss, ms)


MANY = _many()


def _state(pid: int) -> Tuple[Any, ...]:
    """Everything a restore can change in the namespace of pid."""
    with enter_namespace(pid):
        proc = {n: open(f"/proc/sys/kernel/{n}").read().split()
                for n in ("msgmax", "msgmnb", "msgmni", "sem", "msg_next_id", "sem_next_id",
                          "shm_next_id")}
        return (tuple(i for i, _ in list_queues()), tuple(i for i, _ in list_semaphore_sets()),
                tuple(i for i, _ in list_segments()), proc)


def _empty_as_fresh(pid: int) -> None:
    queues, sets, segments, proc = _state(pid)
    assert (queues, sets, segments) == ((), (), ()), "a restore that failed left objects"
    assert proc["msgmax"] == ["8192"] and proc["msgmnb"] == ["16384"]
    assert proc["msg_next_id"] == proc["sem_next_id"] == proc["shm_next_id"] == ["-1"]


def _complete(pid: int, snap: Snapshot) -> None:
    got = snapshot(pid)
    assert got.queues == snap.queues and got.semaphore_sets == snap.semaphore_sets
    assert got.segments == snap.segments
    assert got.limits == snap.limits
    proc = _state(pid)[-1]
    assert proc["msg_next_id"] == proc["sem_next_id"] == proc["shm_next_id"] == ["-1"]


def _cli(path: Any, pid: int, **kw: Any) -> "subprocess.Popen[bytes]":
    return subprocess.Popen([sys.executable, "-m", "ipcbind", "restore", str(path), "--pid",
                             str(pid), "--limits"], stderr=subprocess.PIPE, **kw)


@pytest.fixture(scope="module")
def many_file(tmp_path_factory: Any) -> Any:
    path = tmp_path_factory.mktemp("restore") / "many.json"
    dump(MANY, path)
    return path


def _entered(p: "subprocess.Popen[bytes]", other: int) -> None:
    """Wait until the restoring process p has entered the namespace of other: its
    restore has begun (a signal during Python's own start-up is no test of ours)."""
    target = os.stat(f"/proc/{other}/ns/ipc").st_ino

    def inside() -> bool:
        try:
            return os.stat(f"/proc/{p.pid}/ns/ipc").st_ino == target
        except FileNotFoundError:
            return p.poll() is not None
    wait_until(inside, timeout=60, what="the restore entered the namespace")


@pytest.fixture(scope="module")
def restore_seconds(many_file: Any) -> float:
    """How long an uninterrupted restore of MANY takes, from entering the namespace."""
    with ns_child() as (other, _):
        p = _cli(many_file, other, stdout=subprocess.DEVNULL)
        _entered(p, other)
        start = time.monotonic()
        _, err = p.communicate(timeout=120)
        took = time.monotonic() - start
        assert p.returncode == 0, err
        _complete(other, MANY)
    return took


SIGNALS = {"SIGINT": (signal.SIGINT,), "double SIGINT": (signal.SIGINT, signal.SIGINT),
           "SIGTERM": (signal.SIGTERM,), "SIGKILL": (signal.SIGKILL,)}


@needs_ns_root
@pytest.mark.parametrize("kind", sorted(SIGNALS))
def test_restore_killed_at_random_moments_leaves_all_or_nothing(
        kind: str, many_file: Any, restore_seconds: float) -> None:
    rng = random.Random(f"restore-{kind}")  # a fixed seed per kind: the same moments each run
    outcomes = []
    for _ in range(6):
        delay = rng.uniform(0, 0.8 * restore_seconds)
        with ns_child() as (other, _):
            p = _cli(many_file, other, stdout=subprocess.DEVNULL)
            _entered(p, other)
            time.sleep(delay)
            for sig in SIGNALS[kind]:
                p.send_signal(sig)
                time.sleep(0.005)
            _, err = p.communicate(timeout=120)
            outcomes.append(p.returncode)
            if p.returncode == 0:
                _complete(other, MANY)
            elif p.returncode == -signal.SIGKILL:
                # Killed after it completed, or else whatever it left, the next restore
                # of the file cleans up first.
                if snapshot(other).segments != MANY.segments:
                    restore(MANY, other, set_limits=True)
                _complete(other, MANY)
            else:
                assert p.returncode in (130, 143), err
                assert b"interrupted" in err and b"Traceback" not in err, err
                _empty_as_fresh(other)
    # Most moments fall inside the restore: a run where none did proved nothing.
    assert any(code != 0 for code in outcomes), f"no signal came mid-restore: {outcomes}"


def _sends(*signals: int) -> Any:
    def progress(done: int, total: int, what: str) -> None:
        if done == 2:
            for sig in signals:
                os.kill(os.getpid(), sig)
    return progress


@needs_ns_root
@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGINT, signal.SIGINT)],
                         ids=["once", "twice"])
def test_restore_stops_at_ctrl_c_undoes_everything_then_raises_keyboard_interrupt(
        signals: Tuple[int, ...]) -> None:
    with ns_child() as (other, _):
        with pytest.raises(RestoreInterrupted, match="interrupted by SIGINT; removed the 3 "
                           "object") as info:
            restore(MANY, other, set_limits=True, progress=_sends(*signals))
        assert isinstance(info.value, KeyboardInterrupt) and info.value.leftovers == ()
        _empty_as_fresh(other)


@needs_ns_root
def test_restore_handles_sigterm_as_ctrl_c_and_calls_the_handler_it_replaced() -> None:
    seen: List[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with ns_child() as (other, _):
            with pytest.raises(RestoreInterrupted, match="SIGTERM") as info:
                restore(MANY, other, set_limits=True, progress=_sends(signal.SIGTERM))
            _empty_as_fresh(other)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert info.value.signum == signal.SIGTERM and seen == [signal.SIGTERM]


def _restore_then(other: int, at: int, sig: int, snap: Snapshot = MANY) -> int:
    """In a child: restore snap into other's namespace, sending itself sig at object at."""
    def body() -> int:
        def progress(done: int, total: int, what: str) -> None:
            if done == at:
                os.kill(os.getpid(), sig)
        restore(snap, other, set_limits=True, progress=progress)
        return 0
    return start_child(body)


@needs_ns_root
def test_restore_killed_with_sigkill_is_cleaned_up_by_the_next_restore_of_the_snapshot() -> None:
    with ns_child() as (other, _):
        assert reap(_restore_then(other, 100, signal.SIGKILL)) == -signal.SIGKILL
        queues, sets, _, proc = _state(other)
        assert len(queues) == 101 and proc["msgmax"] == ["9000"]  # 100 queues and the marker
        done = restore(MANY, other, set_limits=True)
        _complete(other, MANY)
    assert "its staging marker (queue 32767)" in done.cleaned and len(done.cleaned) == 102


@needs_ns_root
def test_restore_of_another_snapshot_after_a_killed_one_is_refused_and_says_why() -> None:
    other_snap = _many(3, 0)
    with ns_child() as (other, _):
        assert reap(_restore_then(other, 10, signal.SIGKILL)) == -signal.SIGKILL
        before = _state(other)
        with pytest.raises(RestoreConflictError, match="was killed here before it finished "
                           r"\(queue 32767 is its staging marker\)"):
            restore(other_snap, other)
        assert _state(other) == before


@needs_ns_root
def test_restore_while_another_restore_works_in_the_namespace_is_refused() -> None:
    with ns_child() as (other, _):
        child = _restore_then(other, 10, signal.SIGSTOP)
        try:
            wait_until(lambda: open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
                       == "T", what="the restoring child stopped")
            with pytest.raises(RestoreConflictError, match=f"process {child} is restoring"):
                restore(MANY, other)
        finally:
            os.kill(child, signal.SIGKILL)
            reap(child)


@needs_ns_root
def test_ctrl_c_after_a_restore_completed_is_reported_and_the_objects_stay(
        many_file: Any) -> None:
    # The report is written into a pipe the test has filled: the restore is complete
    # and the process waits in write(2) when SIGINT comes.
    with ns_child() as (other, _):
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
        for size in (4096, 1):
            try:
                while True:
                    os.write(w, b"x" * size)
            except BlockingIOError:
                pass
        fcntl.fcntl(w, fcntl.F_SETFL, 0)
        p = _cli(many_file, other, stdout=w)
        os.close(w)
        try:
            wait_blocked(f"/proc/{p.pid}", "pipe_write", timeout=60)
            p.send_signal(signal.SIGINT)
            wait_until(lambda: _blocked_pending(p.pid), what="SIGINT pending in the child")
            while os.read(r, 65536):
                pass
            _, err = p.communicate(timeout=60)
        finally:
            os.close(r)
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        assert b"SIGINT came after the restore had completed; the restored objects stay" in err
        _complete(other, MANY)


def _blocked_pending(pid: int) -> bool:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) >> (
                signal.SIGINT - 1) & 1:
            return True
    return False
