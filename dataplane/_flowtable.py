"""The kernel fast path's flow table (struct xskp_flow_v4): njit lookup, insert and removal as
the userspace engine does them. Mutates only the flows array it is given; never raises.

Layout: open addressing, power-of-two capacity, linear probing inside XSKP_FLOW_MAX_PROBE slots
from hash_flow(key) & mask, exactly as flow_lookup_v4 in native/xskproxy_steer.bpf.c reads it
(tests/native/test_fastpath.py checks the two agree). A lookup stops at an empty slot (flags 0);
removed slots become tombstones (or empty when the next slot is empty). The BPF programs read
these entries concurrently: an insert writes the key and the rewrite first and `flags` last, a
removal clears `flags` first, so a reader sees a whole entry or none (x86 keeps stores in order).
"""
import numpy as np
from dataplane._jit import packet_njit

from dataplane import abi
from dataplane.tables import hash_flow, SWEEP_CHECK_FORCE

FLOW_IN_USE = abi.lib.XSKP_FLOW_IN_USE
FLOW_TOMBSTONE = abi.lib.XSKP_FLOW_TOMBSTONE
FLOW_ROUTE = abi.lib.XSKP_FLOW_ROUTE
FLOW_ENCAP = abi.lib.XSKP_FLOW_ENCAP
FLOW_DECAP = abi.lib.XSKP_FLOW_DECAP
CT_REPLY = abi.lib.XSKP_CT_REPLY
CT_DSR_ENCAP = abi.lib.XSKP_CT_DSR_ENCAP
CT_DSR_LOCAL = abi.lib.XSKP_CT_DSR_LOCAL
FLOW_MAX_PROBE = abi.lib.XSKP_FLOW_MAX_PROBE


@packet_njit(inline="always")
def _flow_key_is(f, src_addr, dst_addr, src_port, dst_port, proto):
    return ((f.flags & FLOW_IN_USE) != 0 and f.src_addr == src_addr and f.dst_addr == dst_addr
            and f.src_port == src_port and f.dst_port == dst_port and f.proto == proto)


@packet_njit
def flow_lookup(flows, src_addr, dst_addr, src_port, dst_port, proto):
    """Slot of the in-use entry keyed by this (host-order) 5-tuple, or -1."""
    if flows.shape[0] == 0:
        return np.int64(-1)
    mask = np.uint64(flows.shape[0] - 1)
    slot = hash_flow(src_addr, dst_addr, src_port, dst_port, proto) & mask
    for _ in range(FLOW_MAX_PROBE):
        f = flows[slot]
        if f.flags == 0:
            return np.int64(-1)
        if _flow_key_is(f, src_addr, dst_addr, src_port, dst_port, proto):
            return np.int64(slot)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(-1)


@packet_njit(inline="always")
def flow_mark_owned(ft, slot):
    """A worker of FlowTables ft inserted the entry at slot: mark it in its sweep_marks
    (dataplane/tables.py), so that the sweep looks at it and checks it in full at its next visit,
    and count it in fast_state.owned_flows."""
    marks, checks = ft.sweep_marks, ft.sweep_checks
    fast = ft.fast_state[0]
    fast.owned_flows += np.uint64(1)
    if np.uint64(slot) < fast.sweep_cursor:
        fast.pass_owned += np.uint64(1)   # behind the sweep: its pass will not find it
    word = np.int64(slot) >> 6
    if 0 <= word < marks.shape[0]:
        marks[word] |= np.uint64(1) << np.uint64(np.int64(slot) & 63)
    if 0 <= slot < checks.shape[0]:
        checks[slot].skips = SWEEP_CHECK_FORCE


@packet_njit
def flow_clear_slot(flows, slot):
    """Remove the entry at slot (a tombstone, or empty when the next slot is empty)."""
    mask = flows.shape[0] - 1
    if flows[(slot + 1) & mask].flags == 0:
        flows[slot].flags = 0
    else:
        flows[slot].flags = FLOW_TOMBSTONE


@packet_njit
def flow_remove(flows, src_addr, dst_addr, src_port, dst_port, proto):
    """Remove the entry keyed by this 5-tuple, if any. True when one was removed."""
    slot = flow_lookup(flows, src_addr, dst_addr, src_port, dst_port, proto)
    if slot < 0:
        return False
    flow_clear_slot(flows, slot)
    return True


@packet_njit(inline="always")
def _flow_claim_slot(flows, src_addr, dst_addr, src_port, dst_port, proto):
    """The slot for this key: its own (flagged TOMBSTONE while rewritten), else the first free
    one of the window; -1 when the window is full."""
    mask = np.uint64(flows.shape[0] - 1)
    slot = hash_flow(src_addr, dst_addr, src_port, dst_port, proto) & mask
    target = np.int64(-1)
    for _ in range(FLOW_MAX_PROBE):
        f = flows[slot]
        if _flow_key_is(f, src_addr, dst_addr, src_port, dst_port, proto):
            f.flags = FLOW_TOMBSTONE        # readers skip it while it is rewritten
            return np.int64(slot)
        if (f.flags & FLOW_IN_USE) == 0 and target < 0:
            target = np.int64(slot)
        if f.flags == 0:
            break
        slot = (slot + np.uint64(1)) & mask
    return target


@packet_njit
def flow_insert_route(flows, src_addr, dst_addr, src_port, dst_port, proto, out_ifindex, dst_mac,
                      src_mac, fib_generation, now_ns, owner):
    """Cache a routing decision (XSKP_FLOW_ROUTE: no NAT, TTL - 1, these MACs, out_ifindex) for
    a 5-tuple. Returns the slot, or -1 when the probe window is full."""
    if flows.shape[0] == 0:
        return np.int64(-1)
    target = _flow_claim_slot(flows, src_addr, dst_addr, src_port, dst_port, proto)
    if target < 0:
        return np.int64(-1)
    f = flows[target]
    f.src_addr = src_addr
    f.dst_addr = dst_addr
    f.src_port = src_port
    f.dst_port = dst_port
    f.proto = proto
    f.tcp_flags_seen = 0
    f.owner = owner
    f.new_src_addr = src_addr
    f.new_dst_addr = dst_addr
    f.new_src_port = src_port
    f.new_dst_port = dst_port
    f.out_ifindex = out_ifindex
    for k in range(6):
        f.dst_mac[k] = dst_mac[k]
        f.src_mac[k] = src_mac[k]
    f.ct_index = 0
    f.encap_dst = 0
    f.fib_generation = fib_generation
    f.last_seen_ns = now_ns
    f.packets = 0
    f.bytes = 0
    f.flags = FLOW_IN_USE | FLOW_ROUTE
    return target


@packet_njit
def flow_insert_from_ct(flows, e, ct_index, out_ifindex, owner):
    """Write conntrack entry e (key, rewrite, cached MACs; DSR: encapsulation to e.encap_dst, or
    decapsulation of the original direction on the backend's node) into the flow table as an
    entry the fast path executes, replacing one with the same key. Returns the slot, or -1 when the probe
    window holds no free slot (the flow then stays with userspace)."""
    if flows.shape[0] == 0:
        return np.int64(-1)
    target = _flow_claim_slot(flows, e.src_addr, e.dst_addr, e.src_port, e.dst_port, e.proto)
    if target < 0:
        return np.int64(-1)
    f = flows[target]
    f.src_addr = e.src_addr
    f.dst_addr = e.dst_addr
    f.src_port = e.src_port
    f.dst_port = e.dst_port
    f.proto = e.proto
    f.tcp_flags_seen = 0
    f.owner = owner
    f.new_src_addr = e.new_src_addr
    f.new_dst_addr = e.new_dst_addr
    f.new_src_port = e.new_src_port
    f.new_dst_port = e.new_dst_port
    f.out_ifindex = out_ifindex
    for k in range(6):
        f.dst_mac[k] = e.dst_mac[k]
        f.src_mac[k] = e.src_mac[k]
    f.ct_index = ct_index
    f.encap_dst = e.encap_dst
    f.fib_generation = e.fib_generation
    f.last_seen_ns = e.last_seen_ns
    f.packets = 0
    f.bytes = 0
    flags = FLOW_IN_USE
    if (e.flags & CT_DSR_ENCAP) != 0:
        flags |= FLOW_ENCAP
    elif (e.flags & CT_DSR_LOCAL) != 0 and (e.flags & CT_REPLY) == 0:
        flags |= FLOW_DECAP
    f.flags = flags
    return target
