"""Builds ipcbind._ffi, the compiled shim, from src/shim.h (what cffi sees), src/shim.c and
src/calls.h (the table of its functions that the optional accelerator, src/accel.c, calls)."""
from pathlib import Path

from cffi import FFI

SRC = Path(__file__).resolve().parent / "src"

ffibuilder = FFI()
ffibuilder.cdef((SRC / "shim.h").read_text())
ffibuilder.set_source(
    "ipcbind._ffi",
    (SRC / "shim.c").read_text(),
    define_macros=[("_GNU_SOURCE", "1")],
    include_dirs=[str(SRC)],
    libraries=["rt"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
