"""The kernel structures as cffi lays them out are the C compiler's layouts on this
machine, whatever the architecture: a small C program, compiled here with the same
headers and macros as the shim, prints sizeof/offsetof for every field cffi knows,
and cffi must agree on each one."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from ipcbind._seam import ffi

STRUCTS = ["ipc_perm", "msqid_ds", "semid_ds", "sembuf", "msginfo", "seminfo", "shmid_ds",
           "shminfo", "shm_info"]

Layout = Dict[str, Tuple[int, ...]]
"""'struct' -> (size,); 'struct.field' -> (offset, size, is_signed), where is_signed is
-1 for a field that is not an integer."""


def _compiler() -> Optional[List[str]]:
    """The compiler Python builds extensions with (what compiled the shim), else cc."""
    for cmd in (shlex.split(sysconfig.get_config_var("CC") or ""), ["cc"]):
        if cmd and shutil.which(cmd[0]):
            return cmd
    return None


def _fields(struct: str) -> List[Tuple[str, bool]]:
    """(name, is an integer) for each field cffi declares in the struct."""
    return [(name, f.type.kind == "primitive")
            for name, f in ffi.typeof(f"struct {struct}").fields]


def _c_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <sys/types.h>",
             "#include <sys/ipc.h>", "#include <sys/msg.h>", "#include <sys/sem.h>",
             "#include <sys/shm.h>", "int main(void) {"]
    for struct in STRUCTS:
        lines.append(f'    printf("{struct} %zu\\n", sizeof(struct {struct}));')
        for name, integer in _fields(struct):
            member = f"((struct {struct} *)0)->{name}"
            signed = f"(int)((__typeof__({member}))-1 < 0)" if integer else "-1"
            lines.append(f'    printf("{struct}.{name} %zu %zu %d\\n", '
                         f"offsetof(struct {struct}, {name}), sizeof({member}), {signed});")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The layouts the C compiler gives, read from the program's output."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler found (sysconfig CC or cc)")
    tmp: Path = tmp_path_factory.mktemp("layout")
    (tmp / "layout.c").write_text(_c_program())
    # The shim is compiled with _GNU_SOURCE (build_ffi.py): so is this.
    subprocess.run([*cc, "-D_GNU_SOURCE=1", "-o", str(tmp / "layout"), str(tmp / "layout.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(tmp / "layout")], check=True, capture_output=True, text=True).stdout
    return {name: tuple(int(v) for v in values)
            for name, *values in (line.split() for line in out.splitlines())}


def _cffi_layout(struct: str) -> Layout:
    ctype = ffi.typeof(f"struct {struct}")
    layout: Layout = {struct: (ffi.sizeof(ctype),)}
    for name, field in ctype.fields:
        signed = -1
        if field.type.kind == "primitive":
            signed = int(int(ffi.cast(field.type, -1)) < 0)
        layout[f"{struct}.{name}"] = (field.offset, ffi.sizeof(field.type), signed)
    return layout


@pytest.mark.parametrize("struct", STRUCTS)
def test_struct_size_is_the_compilers(struct: str, compiled: Layout) -> None:
    assert (ffi.sizeof(f"struct {struct}"),) == compiled[struct]


@pytest.mark.parametrize("struct", STRUCTS)
def test_field_offsets_sizes_and_signedness_are_the_compilers(struct: str,
                                                              compiled: Layout) -> None:
    ours = _cffi_layout(struct)
    theirs = {k: v for k, v in compiled.items() if k == struct or k.startswith(f"{struct}.")}
    assert ours == theirs, f"{os.uname().machine}: (offset, size, signed) differ"
