"""The shim's record of this process's SEM_UNDO adjustments must not grow with the
number of sets a long-running process has used."""

from __future__ import annotations

from typing import Callable

from conftest import run_in_child

import ipcbind
from ipcbind import SEM_UNDO


def test_ledger_forgets_sets_whose_adjustments_are_back_at_zero(
        make_semset: Callable[..., int]) -> None:
    sets = [make_semset(2) for _ in range(50)]

    def child() -> int:
        from ipcbind._ffi import ffi, lib

        for s in sets:
            ipcbind.semop(s, [(1, 1, SEM_UNDO)])
            ipcbind.semop(s, [(1, -1, SEM_UNDO)])
        # semid, n, then n adjustments per entry: nothing should be left.
        return 0 if lib.ipcb_ledger_dump(ffi.NULL, 0) == 0 else 1

    assert run_in_child(child) == 0


def test_ledger_forgets_a_set_when_setval_zeroes_its_last_adjustment(
        make_semset: Callable[..., int]) -> None:
    s = make_semset(1)

    def child() -> int:
        from ipcbind._ffi import ffi, lib

        ipcbind.semop(s, [(0, 1, SEM_UNDO)])
        ipcbind.semctl(s, 0, ipcbind.SETVAL, 0)
        return 0 if lib.ipcb_ledger_dump(ffi.NULL, 0) == 0 else 1

    assert run_in_child(child) == 0
