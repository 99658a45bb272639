"""cffi builder of the API-mode extension `pyxdp` (run through setup.py's cffi_modules).

Its cdef is native/xskproxy_abi.h, read the same way as dataplane/abi.py reads it, plus the
declarations of native/xskp_io.h; the C compiler then checks every struct layout against cdef.
"""
import importlib.util
import os
import subprocess

import cffi

NATIVE_DIR = os.path.dirname(os.path.abspath(__file__))
IO_HEADER = os.path.join(NATIVE_DIR, "xskp_io.h")
CDEF_MARKER = "/* ---- cdef starts here ---- */"

# The kernel's own definitions (asm-generic/int-ll64.h), so the compiler's type checks agree.
KERNEL_FIXED_WIDTH_TYPEDEFS = """
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8; typedef short __s16; typedef int __s32; typedef long long __s64;
"""


def _abi_header_cdef():
    """dataplane/abi.py's header_cdef, loaded by path: the dataplane package may import pyxdp."""
    spec = importlib.util.spec_from_file_location(
        "_xskp_abi_for_build", os.path.join(os.path.dirname(NATIVE_DIR), "dataplane", "abi.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.header_cdef()


def _io_cdef():
    with open(IO_HEADER) as f:
        text = f.read()
    declarations = text.split(CDEF_MARKER, 1)[1]
    return "\n".join(line for line in declarations.splitlines() if not line.startswith("#"))


def _pkg_config(*args):
    try:
        return subprocess.check_output(["pkg-config", *args, "libxdp", "libbpf"], text=True).split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"pyxdp build: pkg-config cannot find libxdp/libbpf ({exc}); "
                         "install the Debian packages libxdp-dev libbpf-dev (scripts/bootstrap.sh)")


ffibuilder = cffi.FFI()
ffibuilder.cdef(KERNEL_FIXED_WIDTH_TYPEDEFS + _abi_header_cdef() + _io_cdef())
ffibuilder.set_source(
    "pyxdp",
    '#include "xskp_io.h"\n',
    sources=[os.path.relpath(os.path.join(NATIVE_DIR, "xskp_io.c"))],
    include_dirs=[NATIVE_DIR] + [f[2:] for f in _pkg_config("--cflags-only-I")],
    library_dirs=[f[2:] for f in _pkg_config("--libs-only-L")],
    libraries=[f[2:] for f in _pkg_config("--libs-only-l")],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
