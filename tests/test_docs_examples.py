"""Every Python example of README.md and docs/*.md runs, and shows what the code gives.

How an example states its values and what it needs: tests/docs_examples.py. Each
example runs in a Python process of its own, so that what it leaves in the process
(undo adjustments, tracked undo state, signal handlers) cannot reach another; where
an IPC namespace can be made, in a fresh one, which must be empty again at its end:
an example that leaves an object behind fails, and no other process's objects can
be taken for its own.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator

import pytest

import docs_examples
from docs_examples import Example

EXAMPLES = [e for path in docs_examples.documents() for e in docs_examples.examples(path)]

# A process alone in an IPC namespace of its own, holding a queue (key 0xa2cf6959,
# mode 0640, two messages) and a set of two semaphores (values 1 and 3).
_HOLDER = """
import sys
from ipcbind import MessageQueue, SemaphoreSet
q = MessageQueue.create(key=0xa2cf6959, mode=0o640)
q.send(b"first")
q.send(b"second", mtype=2)
SemaphoreSet.create(2, mode=0o600, values=[1, 3])
print("ready", flush=True)
sys.stdin.read()
"""
_IDLE = """
import sys
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def _alone_in_a_namespace(script: str) -> Iterator[int]:
    """Runs ``script`` in a fresh IPC namespace until the example is done; yields its pid.
    Its objects go with the namespace when it exits."""
    proc = subprocess.Popen(["unshare", "-i", sys.executable, "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc.pid
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # an example may have left it stopped
        proc.kill()
        proc.wait(timeout=30)


SETUPS: Dict[str, Callable[[], ContextManager[int]]] = {
    "pid": lambda: _alone_in_a_namespace(_HOLDER),
    "target": lambda: _alone_in_a_namespace(_IDLE),
}


@functools.lru_cache(maxsize=None)
def _can_unshare_ipc() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run(
        [unshare, "-i", "true"], stderr=subprocess.DEVNULL).returncode == 0


def _skip_reason(example: Example) -> str:
    needs = example.needs
    if "skip" in needs:
        return f"{example.name} is not run: {needs['skip']}"
    if "root" in needs and os.geteuid() != 0:
        return f"{example.name} needs root"
    if "namespace" in needs and not _can_unshare_ipc():
        return f"{example.name} needs a new IPC namespace (unshare -i), refused here"
    return ""


def test_every_example_says_what_setup_it_needs_by_a_known_name() -> None:
    unknown = {(e.name, s) for e in EXAMPLES for s in e.setups if s not in SETUPS}
    assert not unknown, f"setups named by examples but not defined in SETUPS: {sorted(unknown)}"


def test_the_readme_and_each_guide_are_searched_for_examples() -> None:
    with_examples = {e.path.name for e in EXAMPLES}
    assert {"README.md", "queues.md", "semaphores.md", "syscalls.md"} <= with_examples


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_and_shows_what_the_code_gives(example: Example, tmp_path: Path) -> None:
    reason = _skip_reason(example)
    if reason:
        pytest.skip(reason)
    with ExitStack() as stack:
        names = {name: stack.enter_context(SETUPS[name]()) for name in example.setups}
        if "pytest" in example.needs:
            (tmp_path / "test_example.py").write_text(example.code)
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "test_example.py"]
        else:
            cmd = [sys.executable, docs_examples.__file__, str(example.path.relative_to(
                docs_examples.ROOT)), str(example.line)]
            if _can_unshare_ipc():
                cmd = ["unshare", "-i", *cmd, "--alone"]
        r = subprocess.run(cmd, input=json.dumps(names), capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert r.returncode == 0, f"{example.name} failed:\n{r.stdout}{r.stderr}"


def _run_snippet(code: str) -> None:
    docs_examples.run(Example(docs_examples.ROOT / "docs" / "snippet.md", 10, code), {})


@pytest.mark.parametrize("code", [
    "len([1, 2])  # -> 2\n",
    "len([1, 2])  # -> 2: with prose after it\n",
    "s = 7\n{s: [2]}  # -> {s: [2]}\n",
    "x = [0, 1]  # -> [0, 1]\n",
    "print('a', 1)  # -> a 1\n",
    "sorted({3, 1})\n# -> [1, 3]\n",
    "int('x')  # raises ValueError, and the example goes on\nlen('ab')  # -> 2\n",
    "for i in range(2):\n    i < 2  # -> True\n",
])
def test_a_true_claim_passes(code: str) -> None:
    _run_snippet(code)


@pytest.mark.parametrize("code, complaint", [
    ("len([1, 2])  # -> 3\n", "the docs show '3', the code gives 2"),
    ("len([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # -> 1\n", "the code gives 10"),
    ("print('a', 1)  # -> a 2\n", "the code gives 'a 1'"),
    ("int('1')  # raises ValueError\n", "it raised nothing"),
    ("int('x')  # raises TypeError\n", "it raised ValueError"),
    ("for i in range(0):\n    i  # -> 0\n", "never reached"),
    ("import os  # -> None\n", "can carry"),
])
def test_a_wrong_claim_fails_naming_the_line(code: str, complaint: str) -> None:
    with pytest.raises(docs_examples.ClaimFailed, match="docs/snippet.md") as caught:
        _run_snippet(code)
    assert complaint in str(caught.value)


def test_a_claim_on_no_statement_fails() -> None:
    with pytest.raises(docs_examples.ClaimFailed, match="docs/snippet.md:13: this claim"):
        _run_snippet("x = (1,\n     2)  # -> (1, 2)\n\n# -> 3\n")
