"""Sphinx configuration of the ipcbind documentation (the guides in Markdown, read by MyST).

Built by .ci/run with warnings as errors:
``sphinx-build -W --keep-going -b html docs build/docs``. The API reference is
generated from the docstrings of the installed package, so build from an environment
where ``import ipcbind`` loads the compiled shim (the one the test command makes).
"""

from __future__ import annotations

import glob
import os
import pkgutil
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import ipcbind
from sphinx.application import Sphinx
from sphinx.util import logging

project = "ipcbind"
author = "ipcbind developers"
copyright = "ipcbind developers, MIT licence"
release = version = ipcbind.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"ipcbind {release}"


def _python_inventory() -> Optional[str]:
    """A copy of Python's objects.inv on this machine (Debian's python3-doc, or the file
    IPCBIND_PYTHON_INVENTORY names), so that the build needs no network; None: fetch it
    from docs.python.org."""
    given = os.environ.get("IPCBIND_PYTHON_INVENTORY")
    if given:
        return given
    found = sorted(glob.glob("/usr/share/doc/python3*/html/objects.inv"))
    return found[-1] if found else None


intersphinx_mapping: Dict[str, Tuple[str, Optional[str]]] = {
    "python": ("https://docs.python.org/3", _python_inventory()),
}
intersphinx_timeout = 30


def _every_public_module_documented(app: Sphinx, env: Any) -> None:
    documented = set(env.get_domain("py").modules)
    public = {f"ipcbind.{m.name}" for m in pkgutil.iter_modules(ipcbind.__path__)
              if not m.name.startswith("_")}
    for name in sorted(public - documented):
        logging.getLogger(__name__).warning(
            "%s has no entry in the API reference (docs/api.md)", name)


def _unlisted_pages_join_the_guides(app: Sphinx, docname: str, source: List[str]) -> None:
    """A page of docs/ that docs/index.md does not name is added at the end of its
    first table of contents (the guides): every page is on the site."""
    if docname != root_doc:
        return
    text = source[0]
    start = text.index("```{toctree}")
    end = text.index("```", start + len("```{toctree}"))
    named = set(re.findall(r"^([\w./-]+)\s*$", text, re.MULTILINE))
    pages = sorted(p.stem for p in Path(app.srcdir).glob("*.md"))
    unlisted = [p for p in pages if p != root_doc and p not in named]
    source[0] = text[:end] + "".join(f"{p}\n" for p in unlisted) + text[end:]


def setup(app: Sphinx) -> None:
    # The index depends on which pages exist: read it again on every build.
    app.connect("env-get-outdated", lambda app, env, added, changed, removed: [root_doc])
    app.connect("source-read", _unlisted_pages_join_the_guides)
    app.connect("env-updated", _every_public_module_documented)
