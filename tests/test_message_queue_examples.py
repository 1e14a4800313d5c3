"""The message queue examples run and say what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ipcbind import MessageQueue

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


def test_peek_example_demo_shows_every_message_and_takes_none() -> None:
    r = run(str(EXAMPLES / "peek.py"))
    assert r.returncode == 0, r.stderr
    assert "[2] type 7: b'\\x00binary\\xff'" in r.stdout
    assert "nothing was taken" in r.stdout


def test_peek_example_on_a_queue_id_leaves_it_as_it_was() -> None:
    with MessageQueue.create() as q:
        q.send(b"a" * 100, 3)
        before = q.stat()
        r = run(str(EXAMPLES / "peek.py"), str(q.id))
        assert r.returncode == 0, r.stderr
        assert "[0] type 3: b'aaaa" in r.stdout and "(100 bytes)" in r.stdout
        assert q.stat() == before


def test_peek_example_without_a_number_prints_usage() -> None:
    r = run(str(EXAMPLES / "peek.py"), "nope")
    assert r.returncode == 2 and "MSQID" in r.stderr


def test_peek_example_of_an_id_beyond_a_c_int_says_so_without_a_traceback() -> None:
    r = run(str(EXAMPLES / "peek.py"), "99999999999999999999")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("peek: ") and r.stderr.count("\n") == 1
    assert "between 0 and 2147483647, got 99999999999999999999" in r.stderr


def test_peek_example_of_a_missing_queue_says_so_as_the_command_line_does() -> None:
    q = MessageQueue.create()
    q.remove()
    r = run(str(EXAMPLES / "peek.py"), str(q.id))
    assert r.returncode == 3
    assert r.stderr == f"peek: no message queue with id {q.id}\n"


def test_producer_consumer_example_receives_everything() -> None:
    r = run(str(EXAMPLES / "producer_consumer.py"))
    assert r.returncode == 0, r.stderr
    assert "100 items received, producer sent 100" in r.stdout
