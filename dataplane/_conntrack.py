"""Conntrack and ClientIP affinity tables for the pipeline: njit lookup, insert (with expiry and
eviction), delete, timeouts. Mutates only the FlowTables arrays it is given; never raises.

Layout (struct xskp_ct_entry, dataplane/tables.py): open addressing, power-of-two capacity,
linear probing inside a window of XSKP_CT_MAX_PROBE slots from the key's hash. A lookup stops
at an empty slot (flags == 0) or at the end of the window; deleted slots become tombstones
(or empty when the next slot is empty) so probe chains stay intact. A flow is two entries,
original and reply, keyed by the 5-tuple each direction arrives with and linked by `peer`
(DSR ingress flows are one entry, peer XSKP_NO_PEER). The TCP/UDP state is mirrored in both
entries; each entry has its own last_seen and a flow expires when both are older than the
state's timeout; a TCP flow closed by FINs both ways keeps nf_conntrack's TIME_WAIT (120 s),
one closed by an RST its CLOSE (10 s), so that late segments still match (an SCTP association
closed by ABORT or SHUTDOWN_COMPLETE keeps nf_conntrack's CLOSED, 10 s), while its tuple is
free for a new connection at once (a SYN on the same tuple: the pipeline's conntrack stage; its
SNAT port: ct_flow_is_closed_snat, the pipeline's allocate_snat_port). Inserting into a full window first reuses tombstones and expired flows, then
evicts the oldest flow in the window that is not ESTABLISHED; if every one is, the insert
fails (XSKP_DROP_CT_FULL).

Offloaded flows (XSKP_CT_OFFLOADED, see dataplane/_fastpath.py): removing a flow also removes
its entries from the fast path's flow table (`flows`), so that no fast-path entry outlives the
flow it executes.
"""
import numpy as np
from dataplane._jit import packet_njit

from dataplane import abi
from dataplane.tables import hash_flow, hash_client
from dataplane._flowtable import flow_lookup, flow_remove

CT_IN_USE = abi.lib.XSKP_CT_IN_USE
CT_REPLY = abi.lib.XSKP_CT_REPLY
CT_TOMBSTONE = abi.lib.XSKP_CT_TOMBSTONE
CT_OFFLOADED = abi.lib.XSKP_CT_OFFLOADED
CT_SNAT = abi.lib.XSKP_CT_SNAT
CT_FIN_SEEN = abi.lib.XSKP_CT_FIN_SEEN
CT_MAX_PROBE = abi.lib.XSKP_CT_MAX_PROBE
NO_PEER = abi.lib.XSKP_NO_PEER

ST_NEW = abi.lib.XSKP_CT_NEW
ST_SYN_SENT = abi.lib.XSKP_CT_SYN_SENT
ST_SYN_RECV = abi.lib.XSKP_CT_SYN_RECV
ST_ESTABLISHED = abi.lib.XSKP_CT_ESTABLISHED
ST_FIN_WAIT = abi.lib.XSKP_CT_FIN_WAIT
ST_CLOSING = abi.lib.XSKP_CT_CLOSING

NS_PER_S = 1000000000
_TCP_SYN_NS = abi.lib.XSKP_CT_TIMEOUT_TCP_SYN_S * NS_PER_S
_TCP_ESTABLISHED_NS = abi.lib.XSKP_CT_TIMEOUT_TCP_ESTABLISHED_S * NS_PER_S
_TCP_FIN_WAIT_NS = abi.lib.XSKP_CT_TIMEOUT_TCP_FIN_WAIT_S * NS_PER_S
_TCP_TIME_WAIT_NS = abi.lib.XSKP_CT_TIMEOUT_TCP_TIME_WAIT_S * NS_PER_S
_TCP_CLOSE_NS = abi.lib.XSKP_CT_TIMEOUT_TCP_CLOSE_S * NS_PER_S
_UDP_NS = abi.lib.XSKP_CT_TIMEOUT_UDP_S * NS_PER_S
_UDP_ESTABLISHED_NS = abi.lib.XSKP_CT_TIMEOUT_UDP_ESTABLISHED_S * NS_PER_S
_SCTP_HANDSHAKE_NS = abi.lib.XSKP_CT_TIMEOUT_SCTP_HANDSHAKE_S * NS_PER_S
_SCTP_ESTABLISHED_NS = abi.lib.XSKP_CT_TIMEOUT_SCTP_ESTABLISHED_S * NS_PER_S
_SCTP_SHUTDOWN_NS = abi.lib.XSKP_CT_TIMEOUT_SCTP_SHUTDOWN_S * NS_PER_S
_SCTP_CLOSED_NS = abi.lib.XSKP_CT_TIMEOUT_SCTP_CLOSED_S * NS_PER_S
ST_SCTP_SHUTDOWN = abi.lib.XSKP_CT_SCTP_SHUTDOWN
ST_SCTP_CLOSED = abi.lib.XSKP_CT_SCTP_CLOSED
IPPROTO_TCP = 6
IPPROTO_SCTP = 132
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10


@packet_njit(inline="always")
def ct_timeout_ns(proto, state, fin_both_ways):
    """Idle timeout of a flow in state (enum xskp_ct_state) for proto, in ns (uint64). A TCP
    CLOSING flow is in TIME_WAIT when both directions sent a FIN (fin_both_ways), else it was
    reset (CLOSE). SCTP: XSKP_CT_TIMEOUT_SCTP_* by association state."""
    if proto == IPPROTO_SCTP:
        if state == ST_ESTABLISHED:
            return np.uint64(_SCTP_ESTABLISHED_NS)
        if state == ST_SCTP_SHUTDOWN:
            return np.uint64(_SCTP_SHUTDOWN_NS)
        if state == ST_SCTP_CLOSED:
            return np.uint64(_SCTP_CLOSED_NS)
        return np.uint64(_SCTP_HANDSHAKE_NS)
    if proto == IPPROTO_TCP:
        if state == ST_ESTABLISHED:
            return np.uint64(_TCP_ESTABLISHED_NS)
        if state == ST_FIN_WAIT:
            return np.uint64(_TCP_FIN_WAIT_NS)
        if state == ST_CLOSING:
            if fin_both_ways:
                return np.uint64(_TCP_TIME_WAIT_NS)
            return np.uint64(_TCP_CLOSE_NS)
        return np.uint64(_TCP_SYN_NS)
    if state == ST_ESTABLISHED:
        return np.uint64(_UDP_ESTABLISHED_NS)
    return np.uint64(_UDP_NS)


@packet_njit(inline="always")
def idle_ns(now_ns, last_seen_ns):
    """now - last_seen as uint64, 0 when last_seen lies in the future (adopted state)."""
    now_ns = np.uint64(now_ns)
    last_seen_ns = np.uint64(last_seen_ns)
    if last_seen_ns >= now_ns:
        return np.uint64(0)
    return now_ns - last_seen_ns


@packet_njit(inline="always")
def ct_slot_of(ct, src_addr, dst_addr, src_port, dst_port, proto):
    return hash_flow(src_addr, dst_addr, src_port, dst_port, proto) & np.uint64(ct.shape[0] - 1)


@packet_njit
def ct_lookup(ct, src_addr, dst_addr, src_port, dst_port, proto):
    """Index of the in-use entry keyed by this 5-tuple, or -1 (expiry is the caller's business)."""
    mask = np.uint64(ct.shape[0] - 1)
    slot = ct_slot_of(ct, src_addr, dst_addr, src_port, dst_port, proto)
    for _ in range(CT_MAX_PROBE):
        e = ct[slot]
        if e.flags == 0:
            return np.int64(-1)
        if ((e.flags & CT_IN_USE) != 0 and e.src_addr == src_addr and e.dst_addr == dst_addr
                and e.src_port == src_port and e.dst_port == dst_port and e.proto == proto):
            return np.int64(slot)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(-1)


@packet_njit(inline="always")
def _ct_clear_slot(ct, flows, idx):
    e = ct[idx]
    if (e.flags & CT_OFFLOADED) != 0:
        flow_remove(flows, e.src_addr, e.dst_addr, e.src_port, e.dst_port, e.proto)
    mask = ct.shape[0] - 1
    if ct[(idx + 1) & mask].flags == 0:
        ct[idx].flags = 0
    else:
        ct[idx].flags = CT_TOMBSTONE


@packet_njit
def ct_delete_flow(ct, flows, idx):
    """Remove the entry at idx and its peer (both become tombstones or empty slots), and their
    fast-path entries if the flow was offloaded."""
    if idx < 0 or idx >= ct.shape[0]:
        return
    e = ct[idx]
    if (e.flags & CT_IN_USE) == 0:
        return
    peer = np.int64(e.peer)
    _ct_clear_slot(ct, flows, idx)
    if peer != NO_PEER and peer < ct.shape[0] and peer != idx:
        p = ct[peer]
        if (p.flags & CT_IN_USE) != 0 and np.int64(p.peer) == idx:
            _ct_clear_slot(ct, flows, peer)


@packet_njit(inline="always")
def _ct_live_peer(ct, idx):
    """Index of entry idx's peer when it is in use and points back, else -1."""
    peer = np.int64(ct[idx].peer)
    if peer == NO_PEER or peer >= ct.shape[0] or peer == idx:
        return np.int64(-1)
    p = ct[peer]
    if (p.flags & CT_IN_USE) == 0 or np.int64(p.peer) != idx:
        return np.int64(-1)
    return peer


@packet_njit
def ct_flow_expired(ct, idx, now_ns):
    """True when the flow of entry idx has been idle (both directions) past its state's timeout.
    The peer (another cache line, anywhere in the table) is read only when its FIN or its
    last_seen can change the answer: a full table's insert asks this of a whole probe window."""
    e = ct[idx]
    peer = np.int64(-1)
    fin_both_ways = False
    if (e.flags & CT_FIN_SEEN) != 0:
        peer = _ct_live_peer(ct, idx)
        fin_both_ways = peer >= 0 and (ct[peer].flags & CT_FIN_SEEN) != 0
    timeout = ct_timeout_ns(e.proto, e.state, fin_both_ways)
    if idle_ns(now_ns, e.last_seen_ns) <= timeout:
        return False
    if (e.flags & CT_FIN_SEEN) == 0:
        peer = _ct_live_peer(ct, idx)
    if peer >= 0 and idle_ns(now_ns, ct[peer].last_seen_ns) <= timeout:
        return False
    return True


@packet_njit
def ct_flow_last_seen(ct, idx):
    """The latest last_seen_ns of entry idx and its peer (uint64)."""
    seen = np.uint64(ct[idx].last_seen_ns)
    peer = _ct_live_peer(ct, idx)
    if peer >= 0 and np.uint64(ct[peer].last_seen_ns) > seen:
        seen = np.uint64(ct[peer].last_seen_ns)
    return seen


@packet_njit
def ct_flow_is_closed_snat(ct, idx):
    """Entry idx is the reply entry of a SNATed TCP flow that is closed (CLOSING: FINs both ways,
    or an RST), whose tuple a new connection may take over: nf_nat's rule for a tuple in
    TIME_WAIT or CLOSE (nf_nat_core.c nf_nat_may_kill); or of an SCTP association closed by
    ABORT or SHUTDOWN_COMPLETE, whose tuple a new INIT may take over."""
    e = ct[idx]
    return ((e.flags & (CT_IN_USE | CT_REPLY | CT_SNAT)) == (CT_IN_USE | CT_REPLY | CT_SNAT)
            and ((e.proto == IPPROTO_TCP and e.state == ST_CLOSING)
                 or (e.proto == IPPROTO_SCTP and e.state == ST_SCTP_CLOSED)))


@packet_njit
def apply_seen_tcp_flags(ct, idx, tcp_flags):
    """Advance the TCP state of entry idx's flow by the OR of the flags the fast path forwarded
    in entry idx's direction (idempotent: the flags accumulate)."""
    e = ct[idx]
    state = np.int64(e.state)
    reply = (e.flags & CT_REPLY) != 0
    if (tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK) and reply and state == ST_SYN_SENT:
        state = ST_SYN_RECV                     # the SYN+ACK (a flow offloaded at its SYN)
    if (tcp_flags & TCP_ACK) != 0 and not reply and (
            state == ST_SYN_RECV or (state == ST_SYN_SENT and np.int64(e.peer) == NO_PEER)):
        state = ST_ESTABLISHED                  # the client's ACK (no peer: a DSR ingress flow)
    if (tcp_flags & TCP_FIN) != 0:
        e.flags |= np.uint8(CT_FIN_SEEN)
        peer = np.int64(e.peer)
        peer_fin = (peer != NO_PEER and peer < ct.shape[0]
                    and (ct[peer].flags & CT_FIN_SEEN) != 0)
        if peer_fin:
            state = ST_CLOSING
        elif state < ST_FIN_WAIT:
            state = ST_FIN_WAIT
    if (tcp_flags & TCP_RST) != 0:
        state = ST_CLOSING
    if state != np.int64(e.state):
        ct_set_state(ct, idx, state)


@packet_njit
def ct_absorb_fast_path(ct, flows, idx):
    """Bring what the fast path saw of the flow of entry idx (last packet time, TCP flags, both
    directions) into conntrack now, rather than at the next sweep: for a decision that must
    know whether the flow has closed (a SNAT port's takeover)."""
    peer = np.int64(ct[idx].peer)
    for k in (np.int64(idx), peer):
        if k == NO_PEER or k >= ct.shape[0]:
            continue
        e = ct[k]
        if (e.flags & CT_OFFLOADED) == 0:
            continue
        slot = flow_lookup(flows, e.src_addr, e.dst_addr, e.src_port, e.dst_port, e.proto)
        if slot < 0:
            continue
        f = flows[slot]
        if f.last_seen_ns > e.last_seen_ns:
            e.last_seen_ns = f.last_seen_ns
        if e.proto == IPPROTO_TCP and f.tcp_flags_seen != 0:
            apply_seen_tcp_flags(ct, k, np.int64(f.tcp_flags_seen))


@packet_njit
def ct_find_free_slot(ct, flows, src_addr, dst_addr, src_port, dst_port, proto, now_ns, exclude,
                      counters, cnt_expired, cnt_evicted):
    """A slot for a new entry with this key: the first empty or tombstoned slot of the window,
    else one freed by removing an expired flow (counted under cnt_expired), else one freed by
    evicting the oldest non-ESTABLISHED flow (cnt_evicted). -1 when nothing can go. Never
    returns or evicts `exclude` (the other half of a pair being inserted)."""
    mask = np.uint64(ct.shape[0] - 1)
    start = ct_slot_of(ct, src_addr, dst_addr, src_port, dst_port, proto)
    slot = start
    victim = np.int64(-1)
    victim_seen = np.uint64(0xffffffffffffffff)
    for _ in range(CT_MAX_PROBE):
        idx = np.int64(slot)
        e = ct[idx]
        if (e.flags & CT_IN_USE) == 0:
            if idx != exclude:
                return idx
        elif idx != exclude and np.int64(e.peer) != exclude:
            if ct_flow_expired(ct, idx, now_ns):
                ct_delete_flow(ct, flows, idx)
                counters[cnt_expired] += 1
                return idx
            if e.state != ST_ESTABLISHED and e.last_seen_ns < victim_seen:
                victim = idx
                victim_seen = e.last_seen_ns
        slot = (slot + np.uint64(1)) & mask
    if victim >= 0:
        ct_delete_flow(ct, flows, victim)
        counters[cnt_evicted] += 1
        return victim
    return np.int64(-1)


@packet_njit
def ct_write_entry(ct, idx, flags, src_addr, dst_addr, src_port, dst_port, proto, state,
                   new_src_addr, new_dst_addr, new_src_port, new_dst_port, encap_dst,
                   backend_id, service_id, now_ns):
    """Fill entry idx (key, rewrite, ids, timestamps; peer NO_PEER; MACs invalid until resolved)."""
    e = ct[idx]
    e.src_addr = src_addr
    e.dst_addr = dst_addr
    e.src_port = src_port
    e.dst_port = dst_port
    e.proto = proto
    e.state = state
    e.new_src_addr = new_src_addr
    e.new_dst_addr = new_dst_addr
    e.new_src_port = new_src_port
    e.new_dst_port = new_dst_port
    e.encap_dst = encap_dst
    e.peer = NO_PEER
    e.backend_id = backend_id
    e.service_id = service_id
    e.out_iface = 0
    e.fib_generation = 0
    for k in range(6):
        e.dst_mac[k] = 0
        e.src_mac[k] = 0
    e.last_seen_ns = now_ns
    e.created_ns = now_ns
    e.flags = flags | CT_IN_USE


@packet_njit
def ct_set_state(ct, idx, state):
    """Set the flow state on entry idx and its peer."""
    e = ct[idx]
    e.state = state
    peer = np.int64(e.peer)
    if peer != NO_PEER and peer < ct.shape[0]:
        ct[peer].state = state


# --- ClientIP affinity --------------------------------------------------------------------

@packet_njit
def affinity_lookup(affinity, client_addr, service_id, timeout_ns, now_ns):
    """Backend id remembered for (client, service) and not idle past timeout_ns, else 0."""
    mask = np.uint64(affinity.shape[0] - 1)
    slot = hash_client(client_addr, service_id) & mask
    for _ in range(CT_MAX_PROBE):
        a = affinity[slot]
        if a.in_use != 0 and a.client_addr == client_addr and a.service_id == service_id:
            if idle_ns(now_ns, a.last_seen_ns) > np.uint64(timeout_ns):
                return np.int64(0)
            return np.int64(a.backend_id)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(0)


@packet_njit
def affinity_touch(affinity, client_addr, service_id, backend_id, seen_ns):
    """A packet of a flow of (client, service) to backend_id was seen at seen_ns: the entry
    remembering that backend stays fresh (never made older, never created here)."""
    if affinity.shape[0] == 0:
        return
    mask = np.uint64(affinity.shape[0] - 1)
    slot = hash_client(client_addr, service_id) & mask
    for _ in range(CT_MAX_PROBE):
        a = affinity[slot]
        if a.in_use != 0 and a.client_addr == client_addr and a.service_id == service_id:
            if a.backend_id == backend_id and a.last_seen_ns < seen_ns:
                a.last_seen_ns = seen_ns
            return
        slot = (slot + np.uint64(1)) & mask


@packet_njit
def affinity_remember(affinity, client_addr, service_id, backend_id, now_ns):
    """Record (client, service) -> backend at now: its own slot, else a free one in the window,
    else the least recently used one of the window."""
    mask = np.uint64(affinity.shape[0] - 1)
    slot = hash_client(client_addr, service_id) & mask
    target = np.int64(-1)
    oldest = np.int64(-1)
    oldest_seen = np.uint64(0xffffffffffffffff)
    for _ in range(CT_MAX_PROBE):
        a = affinity[slot]
        if a.in_use != 0 and a.client_addr == client_addr and a.service_id == service_id:
            target = np.int64(slot)
            break
        if a.in_use == 0:
            if target < 0:
                target = np.int64(slot)
        elif a.last_seen_ns < oldest_seen:
            oldest = np.int64(slot)
            oldest_seen = a.last_seen_ns
        slot = (slot + np.uint64(1)) & mask
    if target < 0:
        target = oldest
    a = affinity[target]
    a.client_addr = client_addr
    a.service_id = service_id
    a.backend_id = backend_id
    a.last_seen_ns = now_ns
    a.in_use = 1
