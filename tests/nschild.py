"""A forked child that lives in a fresh IPC namespace of its own, for tests.

The child unshares its IPC namespace, runs ``setup()`` there (making queues and
sets), sends setup's JSON-able result back, then either waits or keeps calling
``loop(result)`` until the test is done. It is always reaped at the end of the ``with``
block (killed if it lingers), and it exits by itself if the test process dies
(its control pipe reaches end of file); the namespace, and everything in it, dies
with it.
"""

from __future__ import annotations

import json
import os
import select
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Tuple

import pytest
from conftest import reap

from ipcbind import _seam

needs_ns_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (CAP_SYS_ADMIN) to make and enter IPC namespaces")


def _child(setup: Callable[[], Any], loop: Optional[Callable[[Any], None]], ctl: int,
           out: int) -> None:
    code = 70
    try:
        _seam.unshare_ipc()
        result = setup()
        os.write(out, json.dumps({"ok": result}).encode() + b"\n")
        os.close(out)
        if loop is None:
            os.read(ctl, 1)
        else:
            while not select.select([ctl], [], [], 0)[0]:
                loop(result)
        code = 0
    except BaseException as e:
        try:
            os.write(out, json.dumps({"error": repr(e)}).encode() + b"\n")
        except OSError:
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@contextmanager
def ns_child(setup: Callable[[], Any] = lambda: None,
             loop: Optional[Callable[[Any], None]] = None) -> Iterator[Tuple[int, Any]]:
    """Yield (pid, setup's result) of a child holding a fresh IPC namespace."""
    ctl_r, ctl_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ctl_w)
        os.close(out_r)
        _child(setup, loop, ctl_r, out_w)
    os.close(ctl_r)
    os.close(out_w)
    try:
        with os.fdopen(out_r, "rb") as f:
            line = f.readline()
        if not line:
            raise AssertionError("namespace child died during setup")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"namespace child failed during setup: {answer['error']}")
        yield pid, answer["ok"]
    finally:
        os.close(ctl_w)
        reap(pid)
