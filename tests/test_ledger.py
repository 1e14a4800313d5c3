"""The shim's record of this process's SEM_UNDO adjustments must not grow with the
number of sets a long-running process has used."""

from __future__ import annotations

from typing import Callable

from conftest import run_in_child

import ipcbind
from ipcbind import SEM_UNDO


def _ledger_entries() -> int:
    """How many sets the shim's ledger holds, zero ones included."""
    from ipcbind._ffi import ffi, lib

    need = lib.ipcb_ledger_dump(ffi.NULL, 0)
    out = ffi.new("int[]", max(need, 1))
    lib.ipcb_ledger_dump(out, need)
    entries = i = 0
    while i < need:
        entries += 1
        i += 2 + out[i + 1]
    return entries


def test_ledger_does_not_grow_with_every_set_ever_used(
        make_semset: Callable[..., int]) -> None:
    # Zero entries are kept while their set is in use (no allocation per
    # acquire/release pair) but pruned before the ledger grows past 64.
    sets = [make_semset(2) for _ in range(300)]

    def child() -> int:
        for s in sets:
            ipcbind.semop(s, [(1, 1, SEM_UNDO)])
            ipcbind.semop(s, [(1, -1, SEM_UNDO)])
        return 0 if _ledger_entries() <= 64 else 1

    assert run_in_child(child) == 0


def test_ledger_forgets_a_set_when_setval_zeroes_its_last_adjustment(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(1)

    def child() -> int:
        ipcbind.semop(s, [(0, 1, SEM_UNDO)])
        ipcbind.semctl(s, 0, ipcbind.SETVAL, 0)
        return 0 if _ledger_entries() == 0 else 1

    assert run_in_child(child) == 0
