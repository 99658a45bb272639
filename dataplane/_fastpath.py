"""The userspace half of the two-tier dataplane: what a worker does for the flows it handed to
the kernel fast path (dataplane/pipeline.py offload_flow). Pure njit: no I/O, `now` comes in,
never raises; writes only the FlowTables it is given and the counters.

fast_path_step, called by the worker loop on every pass, sweeps the flow table, a whole pass per
SWEEP_PERIOD_NS whatever the packet rate. It looks only at the slots marked in the worker's
sweep_marks (set at insert; 262,144 slots are 4,096 words, so a pass over a table of few flows
reads kilobytes, not the table). An entry that saw no packet, publish or FIB change since its last
full check (sweep_checks) is checked in full only every SWEEP_IDLE_SKIPS + 1 visits (a full check
reads its conntrack entry and backend too: ~0.7 us, which 8,700 idle flows made 24 ms of CPU a
second). A full check brings what the fast path saw back into the conntrack entry it
  executes: last_seen (so idle expiry works as for any flow, and ClientIP affinity stays
  fresh while the client's offloaded flows are busy), and TCP flags seen (for a flow
  offloaded at its SYN the reply's SYN+ACK makes it SYN_RECV; the client's ACK completes the
  handshake, FIN half-closes, FIN both ways or RST closes). Then it
  - removes the flow (conntrack and fast path) when its backend is gone or changed
    (XSKP_CNT_CT_STALE) or it has expired (XSKP_CNT_CT_EXPIRED), as the pipeline does at a hit;
  - re-resolves its egress and MACs in place when the FIB generation changed (a recall would
    send the flow's next frames to userspace, and a GSO super-frame cannot go there);
  - recalls it to userspace (XSKP_CNT_FLOW_RECALLED) when it is closing, so that the last
    segments, TIME_WAIT reuse and close timeouts are userspace's as before, or when its next
    hop no longer resolves (userspace then drops and counts, and has the kernel resolve it);
  - drops an entry whose conntrack entry no longer matches (removed meanwhile).
So a fast-path entry goes at the first visit after a publish that removed its backend, and
outlives its flow's expiry by at most (SWEEP_IDLE_SKIPS + 1) sweep periods (1 s). Cached routing
decisions (XSKP_FLOW_ROUTE, untracked bypass flows) go when idle for ROUTE_IDLE_NS, at a FIN or
RST, or when the FIB generation changes: userspace routes the next frame and caches it again.
"""
import numpy as np
from dataplane._jit import packet_njit

from dataplane import abi
from dataplane._conntrack import (apply_seen_tcp_flags, ct_delete_flow, ct_flow_expired,
                                  ct_set_state, idle_ns, CT_IN_USE, NO_PEER)
from dataplane._flowtable import flow_clear_slot, flow_remove, FLOW_IN_USE, FLOW_ROUTE
from dataplane.pipeline import entry_backend_valid, ct_resolve, touch_affinity

L = abi.lib
SWEEP_PERIOD_NS = 250_000_000          # a whole pass over the flow table this often
SWEEP_MIN_SLOTS = 256                  # never bother with fewer slots at a time
SWEEP_IDLE_SKIPS = 3                   # an entry unchanged since its last full check is checked
                                       # in full every (SWEEP_IDLE_SKIPS + 1)th visit
ROUTE_IDLE_NS = L.XSKP_CT_TIMEOUT_UDP_S * 1_000_000_000   # a cached route unused this long goes
CT_REPLY = L.XSKP_CT_REPLY
CT_FIN_SEEN = L.XSKP_CT_FIN_SEEN
CT_OFFLOADED = L.XSKP_CT_OFFLOADED
ST_NEW = L.XSKP_CT_NEW
ST_SYN_RECV = L.XSKP_CT_SYN_RECV
ST_ESTABLISHED = L.XSKP_CT_ESTABLISHED
ST_FIN_WAIT = L.XSKP_CT_FIN_WAIT
ST_CLOSING = L.XSKP_CT_CLOSING
CNT_CT_EXPIRED = L.XSKP_CNT_CT_EXPIRED
CNT_CT_STALE = L.XSKP_CNT_CT_STALE
CNT_FLOW_RECALLED = L.XSKP_CNT_FLOW_RECALLED
CNT_FIB_REFRESH = L.XSKP_CNT_FIB_REFRESH
IPPROTO_TCP = 6
TCP_FIN = 0x01
TCP_RST = 0x04
TCP_ACK = 0x10


@packet_njit
def grant_upcall_credit(ft, slot, room):
    """Upcall admission (struct xskp_upcall_credit): after a pass, let tc send the socket at
    XSKMAP `slot` (< 0: none) up to `room` more frames than it has sent so far, what its rings
    can take now. Written only when it changes (tc reads the line on every upcall)."""
    credits = ft.fast_config[0].credit
    if ft.flows.shape[0] == 0 or slot < 0 or slot >= credits.shape[0]:
        return
    credit = credits[slot]
    limit = credit.sent + np.uint64(room)
    if limit == 0:
        limit = np.uint64(1)                   # 0 means never granted
    if credit.limit != limit:
        credit.limit = limit


@packet_njit
def recall_flow(ct, flows, idx):
    """Take the flow of conntrack entry idx back from the fast path (both directions)."""
    e = ct[idx]
    if (e.flags & CT_OFFLOADED) != 0:
        flow_remove(flows, e.src_addr, e.dst_addr, e.src_port, e.dst_port, e.proto)
        e.flags &= np.uint8(~CT_OFFLOADED & 0xff)
    peer = np.int64(e.peer)
    if peer != NO_PEER and peer < ct.shape[0]:
        p = ct[peer]
        if (p.flags & CT_OFFLOADED) != 0 and np.int64(p.peer) == idx:
            flow_remove(flows, p.src_addr, p.dst_addr, p.src_port, p.dst_port, p.proto)
            p.flags &= np.uint8(~CT_OFFLOADED & 0xff)


@packet_njit
def refresh_flow_egress(f, e, out_ifindex):
    """Give a fast-path entry its conntrack entry's re-resolved egress and MACs, in place: the
    BPF side may read a mix of old and new MACs for a packet or two, both valid next hops."""
    f.out_ifindex = out_ifindex
    for k in range(6):
        f.dst_mac[k] = e.dst_mac[k]
        f.src_mac[k] = e.src_mac[k]
    f.fib_generation = e.fib_generation


@packet_njit
def sweep_flow(st, ft, slot, now_ns, counters):
    """Bring one owned flow-table entry's observations into conntrack and decide its fate."""
    flows, ct = ft.flows, ft.ct
    f = flows[slot]
    node = st.node[0]
    if (f.flags & FLOW_ROUTE) != 0:
        if (idle_ns(now_ns, f.last_seen_ns) > np.uint64(ROUTE_IDLE_NS)
                or (f.tcp_flags_seen & (TCP_FIN | TCP_RST)) != 0
                or f.fib_generation != node.fib_generation):
            flow_clear_slot(flows, slot)
        return
    ci = np.int64(f.ct_index)
    if ci >= ct.shape[0]:
        flow_clear_slot(flows, slot)
        return
    e = ct[ci]
    if ((e.flags & CT_IN_USE) == 0 or (e.flags & CT_OFFLOADED) == 0 or e.src_addr != f.src_addr
            or e.dst_addr != f.dst_addr or e.src_port != f.src_port or e.dst_port != f.dst_port
            or e.proto != f.proto):
        flow_clear_slot(flows, slot)    # its flow went while the entry was being written
        return
    if f.last_seen_ns > e.last_seen_ns:
        e.last_seen_ns = f.last_seen_ns
        touch_affinity(st, ft, e, f.last_seen_ns)
    if e.proto == IPPROTO_TCP:
        if f.tcp_flags_seen != 0:
            apply_seen_tcp_flags(ct, ci, np.int64(f.tcp_flags_seen))
    elif e.state == ST_NEW and (e.flags & CT_REPLY) != 0 and f.packets != 0:
        ct_set_state(ct, ci, ST_ESTABLISHED)
    if not entry_backend_valid(e, st.backends):
        ct_delete_flow(ct, flows, ci)
        counters[CNT_CT_STALE] += 1
        return
    if ct_flow_expired(ct, ci, now_ns):
        ct_delete_flow(ct, flows, ci)
        counters[CNT_CT_EXPIRED] += 1
        return
    if e.proto == IPPROTO_TCP and e.state == ST_CLOSING:
        recall_flow(ct, flows, ci)
        counters[CNT_FLOW_RECALLED] += 1
        return
    if f.fib_generation != node.fib_generation:
        if e.fib_generation != node.fib_generation and ct_resolve(st, ct, ci, counters) != 0:
            recall_flow(ct, flows, ci)
            counters[CNT_FLOW_RECALLED] += 1
            return
        out_ifindex = ft.fast_state[0].ifindex[e.out_iface]
        if out_ifindex == 0:
            recall_flow(ct, flows, ci)
            counters[CNT_FLOW_RECALLED] += 1
            return
        refresh_flow_egress(f, e, out_ifindex)
        counters[CNT_FIB_REFRESH] += 1


@packet_njit(inline="always")
def end_sweep_pass(fast):
    """The sweep came round to slot 0: what this pass found held is the worker's count."""
    fast.owned_flows = fast.pass_owned
    fast.pass_owned = 0


@packet_njit
def fast_path_step(st, ft, now_ns, counters):
    """The due part of the sweep (see the module docstring). Returns the number of flow-table
    slots looked at. (The heartbeat that keeps the fast path live is a thread of the I/O layer,
    dataplane/xsk.py start_heartbeat: it must not depend on this loop getting the GIL.)"""
    flows = ft.flows
    capacity = flows.shape[0]
    if capacity == 0:
        return 0
    now = np.uint64(now_ns)
    config = ft.fast_config[0]
    node_addr = st.node[0].node_addr
    if config.encap_src != node_addr:
        config.encap_src = node_addr          # DSR tunnels leave from the node address
    fast = ft.fast_state[0]
    if fast.sweep_last_ns == 0 or fast.sweep_last_ns > now:
        fast.sweep_last_ns = now
        return 0
    elapsed = now - fast.sweep_last_ns
    due = np.uint64(capacity) * elapsed // np.uint64(SWEEP_PERIOD_NS)
    if due < np.uint64(SWEEP_MIN_SLOTS) and due < np.uint64(capacity):
        return 0
    if due > np.uint64(capacity):
        due = np.uint64(capacity)
    fast.sweep_last_ns = now
    owner = fast.owner
    node = st.node[0]
    marks, checks = ft.sweep_marks, ft.sweep_checks
    cap = np.uint64(capacity)
    mask = np.uint64(capacity - 1)
    slot = fast.sweep_cursor & mask
    remaining = due
    while remaining > 0:
        word = slot >> np.uint64(6)
        if word >= np.uint64(marks.shape[0]):
            break                                 # marks shorter than the table: never made so
        bit = slot & np.uint64(63)
        pending = marks[word] >> bit
        if pending == 0:                          # no marked slot left in this word: skip it
            step = min(np.uint64(64) - bit, cap - slot, remaining)
            slot = (slot + step) & mask
            remaining -= step
            if slot == 0:
                end_sweep_pass(fast)
            continue
        if (pending & np.uint64(1)) != 0:
            f = flows[slot]
            if (f.flags & FLOW_IN_USE) != 0 and f.owner == owner and slot < np.uint64(checks.shape[0]):
                c = checks[slot]
                if (f.last_seen_ns == c.seen_ns and f.tcp_flags_seen == c.tcp_flags
                        and c.generation == node.generation and f.fib_generation == node.fib_generation
                        and c.skips < SWEEP_IDLE_SKIPS):
                    c.skips += 1                  # no packet, publish or FIB change since its check
                else:
                    c.seen_ns = f.last_seen_ns    # read before the check: a packet meanwhile
                    c.tcp_flags = f.tcp_flags_seen    # makes the next visit check again
                    c.generation = node.generation
                    c.skips = 0
                    sweep_flow(st, ft, slot, now, counters)
            if (f.flags & FLOW_IN_USE) == 0 or f.owner != owner:
                marks[word] &= ~(np.uint64(1) << bit)
            else:
                fast.pass_owned += np.uint64(1)
        slot = (slot + np.uint64(1)) & mask
        remaining -= np.uint64(1)
        if slot == 0:
            end_sweep_pass(fast)
    fast.sweep_cursor = slot
    return np.int64(due)
