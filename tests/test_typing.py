"""The package ships py.typed, so its annotations are a promise: check them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ipcbind

ROOT = Path(__file__).resolve().parent.parent


def test_package_is_clean_under_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    # An installed copy is checked by name (it ships py.typed): given a path inside
    # site-packages, mypy would take site-packages for a package. An editable
    # install is found only by its path.
    package = Path(ipcbind.__file__).parent
    target = ["-p", "ipcbind"] if "site-packages" in package.parts else [str(package)]
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), *target],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
