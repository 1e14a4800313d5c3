"""What ``import ipcbind`` costs and shows: the tooling's heavy imports wait for first use,
and the package lists its public names only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import ipcbind

HEAVY = ["json", "hashlib", "tempfile", "datetime", "psutil", "asyncio", "base64",
         "ipcbind.snapshot", "ipcbind.namespace"]


def _loaded_after(code: str, cwd: Path) -> List[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh interpreter.

    It runs in ``cwd``, not in the checkout, whose source tree would come first on
    sys.path and may be another copy than the one under test."""
    probe = (f"import sys\n{code}\nfound = [m for m in {HEAVY!r} if m in sys.modules]\n"
             "print(' '.join(found))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, check=True, cwd=cwd)
    return r.stdout.split()


def test_import_ipcbind_loads_none_of_the_tooling_modules(tmp_path: Path) -> None:
    assert _loaded_after("import ipcbind", tmp_path) == []


def test_import_ipcbind_with_a_queue_and_a_set_loads_none_of_them(tmp_path: Path) -> None:
    code = ("import ipcbind\n"
            "with ipcbind.MessageQueue.create() as q, ipcbind.SemaphoreSet.create(1) as s:\n"
            "    q.send(b'x'); q.receive(); s[0].release(); s[0].acquire()")
    assert _loaded_after(code, tmp_path) == []


@pytest.mark.parametrize("name, module", [("Snapshot", "ipcbind.snapshot"),
                                          ("enter_namespace", "ipcbind.namespace")])
def test_a_tooling_name_loads_its_module_on_first_use(name: str, module: str,
                                                      tmp_path: Path) -> None:
    assert module in _loaded_after(f"import ipcbind\nipcbind.{name}", tmp_path)


def test_from_ipcbind_import_a_tooling_name_works() -> None:
    from ipcbind import Snapshot, enter_namespace
    from ipcbind.namespace import enter_namespace as direct
    from ipcbind.snapshot import Snapshot as direct_snapshot

    assert enter_namespace is direct and Snapshot is direct_snapshot


def test_dir_lists_the_public_names_only() -> None:
    names = dir(ipcbind)
    assert "Optional" not in names and "TYPE_CHECKING" not in names
    assert set(names) == set(ipcbind.__all__) | {"__version__"}


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        ipcbind.no_such_name  # type: ignore[attr-defined]


def test_every_public_name_resolves() -> None:
    assert all(getattr(ipcbind, name) is not None for name in ipcbind.__all__)
