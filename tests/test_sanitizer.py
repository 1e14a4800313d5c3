"""Calls made in a child Python with AddressSanitizer's runtime preloaded.

Its allocator poisons freed blocks, and the memcpy through which cffi reads and
writes cdata fields is intercepted: a field written into a struct already freed
(or past the end of a buffer) aborts the child with a report, where without it
the write would go unnoticed until the memory is used again."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

LIBASAN = ctypes.util.find_library("asan")
needs_asan = pytest.mark.skipif(LIBASAN is None,
                                reason="AddressSanitizer's runtime (libasan) is not installed")


def run_under_asan(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LD_PRELOAD=str(LIBASAN),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def asan() -> None:
    """Skips where the runtime cannot run Python at all (an emulator's address space,
    say): only what fails in a call of ipcbind is a finding."""
    done = run_under_asan("import ipcbind")
    if done.returncode != 0:
        pytest.skip(f"AddressSanitizer's runtime does not run here: {done.stderr[:300]}")


@needs_asan
def test_semctl_ipc_set_writes_into_no_freed_memory(asan: None, semset: int) -> None:
    owner = {"uid": os.geteuid(), "gid": os.getegid()}
    done = run_under_asan(f"""
        import ipcbind
        for mode in (0o600, 0o640, 0o600):
            ipcbind.semctl({semset}, 0, ipcbind.IPC_SET, dict({owner!r}, mode=mode))
        """)
    assert done.returncode == 0, done.stderr[:3000]
