"""The binary layouts and constants of native/xskproxy_abi.h, read at import time (no compiler).

cffi parses the header in ABI mode; numpy dtypes are generated from its structs, so no value or
offset is ever copied by hand. tests/native/test_abi_layout.py checks them against the compiled pyxdp.
"""
import os
import re

import cffi
import numpy as np

HEADER_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "native", "xskproxy_abi.h")

_FIXED_WIDTH_TYPEDEFS = """
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;
typedef int8_t __s8; typedef int16_t __s16; typedef int32_t __s32; typedef int64_t __s64;
"""
_INTEGER_DEFINE = re.compile(r"^\s*#\s*define\s+\w+\s+-?(0x[0-9a-fA-F]+|\d+)[uUlL]*\s*$")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def header_cdef(path=HEADER_PATH):
    """The header as cffi's cdef accepts it: comments removed (a comment's newlines kept, so
    line numbers in cffi's errors still match the file), preprocessor lines dropped except
    integer #defines."""
    with open(path) as f:
        text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), f.read())
    lines = text.splitlines()
    kept = [line if not line.lstrip().startswith("#") or _INTEGER_DEFINE.match(line) else ""
            for line in lines]
    return "\n".join(kept)


ffi = cffi.FFI()
ffi.cdef(_FIXED_WIDTH_TYPEDEFS + header_cdef())
lib = ffi.dlopen(None)  # only for the header's constants and enum values; no symbol is called

_NUMPY_OF_CTYPE = {
    "uint8_t": np.uint8, "uint16_t": np.uint16, "uint32_t": np.uint32, "uint64_t": np.uint64,
    "int8_t": np.int8, "int16_t": np.int16, "int32_t": np.int32, "int64_t": np.int64,
}


def _numpy_of(ctype):
    if ctype.kind == "primitive":
        return np.dtype(_NUMPY_OF_CTYPE[ctype.cname])
    if ctype.kind == "enum":
        return np.dtype(np.int32 if ffi.sizeof(ctype) == 4 else np.int64)
    if ctype.kind == "array":
        return np.dtype((_numpy_of(ctype.item), ctype.length))
    if ctype.kind == "struct":
        return dtype(ctype.cname)
    raise TypeError(f"no numpy type for C type {ctype.cname}")


def dtype(struct_name):
    """The numpy dtype of a header struct (e.g. 'struct steer_v4_l4_key'), offsets and size as in C."""
    ctype = ffi.typeof(struct_name)
    names, formats, offsets = [], [], []
    for name, field in ctype.fields:
        names.append(name)
        formats.append(_numpy_of(field.type))
        offsets.append(field.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": ffi.sizeof(ctype)})


def enum_members(prefix):
    """{name: value} of every header constant or enum value whose name starts with prefix."""
    return {name: getattr(lib, name) for name in dir(lib) if name.startswith(prefix)}
