"""The numpy dtypes and constants that dataplane/abi.py derives from native/xskproxy_abi.h match
what the C compiler made of the same header in pyxdp (sizes, field offsets, values)."""
import pytest

from dataplane import abi

pyxdp = pytest.importorskip("pyxdp", reason="pyxdp is not built: run `make build`")

STRUCTS = sorted(abi.ffi.list_types()[1])


def test_the_header_declares_structs():
    """The header parse finds the structs of every section (steering, sockets, pipeline)."""
    assert {"steer_v4_l4_key", "steer_iface", "xskp_socket_stats", "xskp_ct_entry"} <= set(STRUCTS)


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_dtype_matches_the_compiled_layout(name):
    """Every struct's numpy dtype has the compiled size and each field the compiled offset."""
    dtype = abi.dtype(f"struct {name}")
    compiled_fields = dict(pyxdp.ffi.typeof(f"struct {name}").fields)
    assert dtype.itemsize == pyxdp.ffi.sizeof(f"struct {name}")
    assert list(dtype.names) == list(compiled_fields)
    for field in dtype.names:
        assert dtype.fields[field][1] == pyxdp.ffi.offsetof(f"struct {name}", field), field
        assert dtype.fields[field][0].itemsize == pyxdp.ffi.sizeof(compiled_fields[field].type), field


def test_constants_and_enums_match_the_compiled_values():
    """Every integer constant and enum value reads the same through abi and through pyxdp."""
    names = [n for n in dir(abi.lib) if not n.startswith("_")]
    assert len(names) > 50
    for name in names:
        assert getattr(abi.lib, name) == getattr(pyxdp.lib, name), name
