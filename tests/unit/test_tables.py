"""Pipeline tables: constructors, the shared frontend/neighbour hash tables, routes, counter layout."""
import numpy as np
import pytest

from dataplane import abi, tables

L = abi.lib


def test_constructors_give_c_contiguous_header_dtypes_and_pow2_hash_tables():
    """Every array is C-contiguous with its header dtype; hash tables are powers of two >= 2x."""
    st = tables.make_service_tables(100, 10, 50, 1000, 8, 30, 4)
    ft = tables.make_flow_tables(1000, 100)
    for arr in list(st) + list(ft):
        assert arr.flags.c_contiguous
    assert st.frontends.dtype == abi.dtype("struct xskp_frontend")
    assert st.frontends.shape[0] == 256 and st.neighbours.shape[0] == 64
    assert st.backends.shape[0] == 51            # id 0 is "none"
    assert ft.ct.shape[0] == 1024 and ft.ct.dtype.itemsize == abi.ffi.sizeof("struct xskp_ct_entry")
    assert ft.affinity.shape[0] == 128


def test_counter_layout_continues_the_drop_reasons():
    """Outcome counters start right after the last drop reason; the array covers them all."""
    assert L.XSKP_CNT_TX_TRANSPORT == L.XSKP_DROP_REASON_MAX
    assert tables.make_counters().shape == (L.XSKP_COUNTER_SLOTS,)


def test_frontends_round_trip_and_replace():
    """10,000 inserted frontends are all found, misses are -1, re-inserting replaces in place."""
    st = tables.make_service_tables(10000, 1, 1, 1, 1, 1, 1)
    rng = np.random.default_rng(1)
    keys = {(int(a), int(p), int(pr)) for a, p, pr in zip(rng.integers(0, 2**32, 10000),
                                                           rng.integers(1, 65536, 10000),
                                                           rng.choice([6, 17], 10000))}
    for i, (addr, port, proto) in enumerate(sorted(keys)):
        assert tables.insert_frontend(st.frontends, addr, port, proto, L.XSKP_FE_CLUSTER_IP, i) >= 0
    for i, (addr, port, proto) in enumerate(sorted(keys)):
        slot = tables.lookup_frontend(st.frontends, addr, port, proto)
        assert st.frontends[slot]["service_id"] == i
    assert tables.lookup_frontend(st.frontends, 1, 1, 132) == -1
    addr, port, proto = sorted(keys)[0]
    slot = tables.insert_frontend(st.frontends, addr, port, proto, L.XSKP_FE_NODE_PORT, 77)
    assert slot == tables.lookup_frontend(st.frontends, addr, port, proto)
    assert st.frontends[slot]["service_id"] == 77
    assert (st.frontends["kind"] != L.XSKP_FE_EMPTY).sum() == len(keys)


def test_frontend_insert_into_a_full_table_fails_cleanly():
    """A full table answers -1 to an insert and to a lookup of a missing key."""
    frontends = np.zeros(8, tables.FRONTEND_DTYPE)
    for i in range(8):
        assert tables.insert_frontend(frontends, i + 1, 80, 6, L.XSKP_FE_CLUSTER_IP, i) >= 0
    assert tables.insert_frontend(frontends, 100, 80, 6, L.XSKP_FE_CLUSTER_IP, 9) == -1
    assert tables.lookup_frontend(frontends, 100, 80, 6) == -1


def test_neighbours_are_keyed_by_address_and_interface():
    """The same address on two interfaces is two neighbours with their own MACs."""
    st = tables.make_service_tables(1, 1, 1, 1, 1, 4, 1)
    tables.insert_neighbour(st.neighbours, 0x0a000001, 0, np.full(6, 1, np.uint8))
    tables.insert_neighbour(st.neighbours, 0x0a000001, 1, np.full(6, 2, np.uint8))
    assert st.neighbours[tables.lookup_neighbour(st.neighbours, 0x0a000001, 0)]["mac"][0] == 1
    assert st.neighbours[tables.lookup_neighbour(st.neighbours, 0x0a000001, 1)]["mac"][0] == 2
    assert tables.lookup_neighbour(st.neighbours, 0x0a000002, 0) == -1


def test_routes_match_longest_prefix_first():
    """set_routes sorts longest first; lookup_route returns the most specific match."""
    st = tables.make_service_tables(1, 1, 1, 1, 4, 1, 1)
    tables.set_routes(st, [(0, 0, 0xc0a80101, 0, 0), (0x0a0a0000, 16, 0, 1, 0),
                           (0x0a0a0200, 24, 0xc0a80114, 0, L.XSKP_ROUTE_BYPASS)])
    count = int(st.node[0]["route_count"])
    assert st.routes[tables.lookup_route(st.routes, count, 0x0a0a0207)]["next_hop"] == 0xc0a80114
    assert st.routes[tables.lookup_route(st.routes, count, 0x0a0a0307)]["iface"] == 1
    assert st.routes[tables.lookup_route(st.routes, count, 0x08080808)]["mask"] == 0
    with pytest.raises(ValueError, match="routes: 5 entries exceed capacity 4"):
        tables.set_routes(st, [(0, 0, 0, 0, 0)] * 5)


def test_hash_flow_spreads_sequential_ports():
    """Sequential client ports land on distinct slots of a 4096 table (no clustering)."""
    slots = {int(tables.hash_flow(0x0a000001, 0x0a600001, 30000 + i, 80, 6)) & 4095
             for i in range(1000)}
    assert len(slots) > 850
