import platform
import sysconfig

from setuptools import Extension, setup

# The accelerator (src/accel.c) uses the CPython API of builds with a GIL; it is
# optional: a failed build of it leaves the cffi shim to work alone.
accel = []
if platform.python_implementation() == "CPython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
    accel.append(Extension("ipcbind._accel", ["src/accel.c"], include_dirs=["src"],
                           extra_compile_args=["-O2"], optional=True))

setup(cffi_modules=["build_ffi.py:ffibuilder"], ext_modules=accel)
