"""The packet pipeline: process_batch parses each frame, tracks, load-balances, NATs, tunnels
(DSR) or route-forwards it and returns a verdict. Pure: no I/O, no clock (now comes in), no
allocation per packet, never raises; it writes only inside each frame's UMEM chunk, the flow
tables and the counters.

Stages (Katran style: each returns a verdict >= 0, or XSKP_VERDICT_CONTINUE = -1):
  descriptor check -> L2 (untagged Ethernet) -> IPv4 (header checksum verified, TTL <= 1
  answered with ICMP time exceeded) -> DSR decapsulation (IPIP to the node address, then the
  inner packet goes through once more) -> L4 (TCP, UDP, SCTP, ICMP)
  -> partial checksum completion -> ICMP error translation -> conntrack -> Service (new flow)
  -> netfilter bypass -> XSKP_DROP_NOT_OURS.

Verdicts and counters: verdicts[i] is enum xskp_verdict (DROP, TX_TRANSPORT, TX_GATEWAY; never
CONTINUE). counters (uint64[XSKP_COUNTER_SLOTS]) counts each frame once, under its drop reason
(enum xskp_drop_reason) or XSKP_CNT_TX_TRANSPORT / XSKP_CNT_TX_GATEWAY; the other XSKP_CNT_*
count events (flows created, SNAT, DSR, ...). A frame is addrs[i] (UMEM offset of its first
byte) and lens[i]; both are rewritten when the frame start moves (DSR encapsulation moves it
into the headroom, decapsulation moves it forward). UMEM chunks are XSKP_FRAME_SIZE-aligned
(aligned mode): a frame never leaves the chunk its address lies in.

Decisions:
- Addresses/ports in tables are host-order numbers (see native/xskproxy_abi.h).
- Fragments (MF set or offset != 0): routing needs no ports, so a fragment to a bypass route is
  forwarded like any bypassed frame; any other fragment (Service traffic) is dropped as
  XSKP_DROP_FRAGMENT. The steering program passes fragments to the kernel, so they only
  arrive here through stale steering.
- IPv6 is recognised and counted as XSKP_DROP_UNSUPPORTED (steering does not redirect it yet).
  Other ethertypes and ARP: XSKP_DROP_NOT_OURS.
- VLANs: a frame with an 802.1Q/802.1ad tag is XSKP_DROP_VLAN. xskproxy serves the untagged
  interfaces it is attached to; a tagged frame belongs to a VLAN device (or to nobody: Linux
  drops a tag no VLAN device claims), and translating it would deliver it untagged to a backend.
  The steering program passes tagged frames to the kernel (STEER_PASS_VLAN); this is the
  backstop, and no state is touched before it.
- The IPv4 header checksum is verified (20-60 bytes) before anything else reads the header or
  touches state: a bad one is XSKP_DROP_BAD_CSUM (an IPIP packet's inner header too).
- Checksums: RFC 1624 incremental updates of the IPv4 header and TCP/UDP checksums; a UDP
  checksum of 0 (none) stays 0 and a computed 0 is sent as 0xffff. Partial (CHECKSUM_PARTIAL)
  checksums from local veth senders: the field then holds the folded pseudo-header sum. A
  TCP/UDP frame whose field equals that sum and whose full checksum does not verify is taken
  as partial and its checksum is COMPLETED in software over the whole segment (counted under
  XSKP_CNT_CSUM_COMPLETED) before any rewrite, because an AF_XDP tx frame carries no offload
  request and its receiver would drop a partial checksum. Only partial frames pay the O(len)
  sum; full ones pay a pseudo-header sum and a compare. (A full checksum that happens to equal
  the pseudo-header sum verifies and is left alone.)
- TTL is decremented on every forwarded frame (we route). Every frame the pipeline accepts is
  forwarded, so a frame arriving with TTL <= 1 (after DSR decapsulation: the inner TTL) is
  answered before any state is touched, as the kernel's ip_forward does (icmp_send): the frame
  is rewritten in place into an ICMP time exceeded (type 11, code 0) from node.node_addr to its
  source, quoting the datagram as received up to 576 bytes in all (RFC 1812 4.3.2.3, as
  Linux), TTL 64, TOS 0xc0, routed by the route to the source (XSKP_CNT_ICMP_TIME_EXCEEDED,
  sent under TX_*). Like the kernel it never answers a non-first fragment, an ICMP error, a
  multicast/broadcast/zero/loopback source or a non-unicast destination, and rate-limits
  (XSKP_ICMP_ERROR_INTERVAL_NS, burst XSKP_ICMP_ERROR_BURST, per worker, GCRA state in
  counters[XSKP_SLOT_ICMP_TAT]); those frames are XSKP_DROP_TTL_EXCEEDED. (Cilium drops IPv4
  with DROP_TTL_EXCEEDED; the kernel answers, and traceroute through a node needs it.)
- A new flow to a Service port without any endpoint (no usable one anywhere in the cluster) is
  answered the same way with ICMP port unreachable (type 3, code 3) from the frontend address,
  as kube-proxy's REJECT rule does, so that clients fail at once (XSKP_CNT_ICMP_UNREACHABLE);
  when no error may be sent it is XSKP_DROP_NO_BACKEND, as is a Local traffic policy's flow
  that finds no local endpoint (kube-proxy drops those too).
- SNAT: external frontends (NodePort, LB IP, externalIP) with externalTrafficPolicy Cluster and a
  remote backend are SNATed to node.node_addr, with a port in [snat_port_min, snat_port_max]:
  the pool is the whole range per destination (backend, backend port, proto), since only the
  reply key (backend, node_addr, backend port, port) must be unique. A port is found from the
  flow hash; when the first XSKP_SNAT_MAX_TRIES are held, a TCP SYN takes over the port of a
  closed flow (FINs both ways or RST) as nf_nat does in TIME_WAIT, else the rest of the range
  is searched (see allocate_snat_port). Only flows not closed hold ports for good.
- Hairpin (a frame from the gateway whose chosen backend is local, the client itself included):
  SNATed to node.node_addr with a SNAT port, like the case above. Pods of a node share a
  switch (OVS, a bridge), so a local backend would answer its client directly, past
  xskproxy, unless the request comes from the node. The backend sees the connection from the
  node and replies through xskproxy (the steering program redirects node address + SNAT
  range on the gateway too). kube-proxy
  masquerades hairpin traffic in the same spirit; Antrea uses a virtual IP instead.
- DSR applies to LoadBalancer IPs and externalIPs of Services with XSKP_SVC_DSR (NodePorts are
  per-node addresses the backend node does not own). The ingress node keeps a one-way entry
  (XSKP_CT_DSR_ENCAP) and IPIP-encapsulates every frame of the flow to the backend's
  node_addr (outer TTL 64, DF copied, inner TTL decremented); a local backend is served by
  plain NAT. The backend node decapsulates IPIP addressed to node_addr arriving on the
  transport, looks the inner frontend up, picks from the Service's LOCAL ring, DNATs, tracks
  (XSKP_CT_DSR_LOCAL) and its reply entry rewrites the source back to the VIP and routes the
  reply straight to the client. No SNAT on DSR flows. The tunnel adds 20 bytes the path MTU
  does not know about: the backend node lowers the MSS its backend announces in the SYN+ACK to
  node.dsr_mss (transport MTU - 60), so that clients' full-sized segments fit once tunnelled.
- TCP states: SYN -> SYN_SENT, SYN+ACK reply -> SYN_RECV, ACK -> ESTABLISHED, FIN from one side
  -> FIN_WAIT, from both or RST -> CLOSING; a non-SYN segment with no entry is picked up as
  SYN_RECV (becomes ESTABLISHED at its next original-direction ACK; a stray ACK expires in
  30 s); an RST with no entry is XSKP_DROP_TCP_INVALID. UDP: NEW until a reply, then
  ESTABLISHED. Timeouts: XSKP_CT_TIMEOUT_* in the header (30 s SYN, 6 h established, 120 s
  FIN_WAIT, CLOSING 120 s after FINs both ways (TIME_WAIT) or 10 s after an RST, as
  nf_conntrack; UDP 30 s / 120 s).
- A conntrack hit whose backend id is no longer ALIVE or whose address/port/node changed
  removes the flow (XSKP_CNT_CT_STALE) and the frame is balanced again as a new flow, as does
  a SYN on the tuple of a closing flow (FIN_WAIT, CLOSING: XSKP_CNT_CT_REUSED). An
  endpoint that is terminating or not ready stays ALIVE (flagged TERMINATING, in no ring while
  ready ones exist): its flows drain; only an endpoint removed from its slices loses them.
- ClientIP affinity: (client, service) -> backend, refreshed by every packet of the client's
  flows to the Service (both tiers: the fast path's last_seen for offloaded ones), honoured while
  idle < affinity_timeout_s (1..86,400 s, no truncation) and the backend is still alive, local
  when the local ring is in use, and not terminating while the ring has ready backends.
- Conntrack entries cache the out interface and MACs with node.fib_generation; a changed
  generation re-resolves route + neighbour (XSKP_CNT_FIB_REFRESH).
- ICMP errors (types 3, 11, 12) quoting a TCP/UDP flow we translated: the quoted header is
  restored to what its sender saw (addresses, ports, its IPv4 checksum, its L4 checksum when
  quoted), the outer destination (and the outer source when the error comes from the peer
  itself) is translated like a frame of the entry's direction, the ICMP checksum recomputed.
- SCTP (dataplane/_sctp.py): the chunks are walked and the CRC32c verified before any state is
  touched (XSKP_DROP_SCTP_BAD_CHUNK, XSKP_DROP_SCTP_BAD_CRC); a CRC field of 0 that does not
  verify is a partial checksum (a local sender's SCTP CRC offload on veth) and is completed
  (XSKP_CNT_CSUM_COMPLETED), the same bet as for partial TCP/UDP checksums. NAT rewrites the
  addresses (IPv4 header checksum incrementally; SCTP has no pseudo-header, so its CRC stays
  valid) and, when a port changes (NodePort, SNAT, a targetPort unlike the port), the CRC32c
  is computed again over the whole packet, so such packets cost two passes. Only an INIT opens
  a flow (state SCTP_COOKIE_WAIT); any other first packet is XSKP_DROP_SCTP_INVALID, as
  nf_conntrack marks DATA/SACK, ABORT, SHUTDOWN_COMPLETE and COOKIE_ACK INVALID and
  kube-proxy drops INVALID (the HEARTBEAT, COOKIE_ECHO or SHUTDOWN it does pick up serve
  multi-homed secondary paths, which NAT does not carry anyway); an INIT's verification tag
  must be 0. COOKIE_ECHO -> SCTP_COOKIE_ECHOED, COOKIE_ACK in reply -> ESTABLISHED,
  SHUTDOWN/SHUTDOWN_ACK -> SCTP_SHUTDOWN, ABORT/SHUTDOWN_COMPLETE -> SCTP_CLOSED; an INIT on
  the tuple of a closing or closed flow is a new association (XSKP_CNT_CT_REUSED), and may take
  over a closed SNAT flow's port. Timeouts as nf_conntrack's: 3 s handshake and shutdown,
  210 s established, 10 s closed. Verification tags are not tracked per association (a forged
  ABORT with the right ports closes a flow to its 10 s timeout) and multi-homing is not NATed
  (INIT address parameters pass unchanged), as with kube-proxy's iptables NAT. ICMP errors
  quoting SCTP are translated back (addresses and ports; the quote's CRC is left alone).
- Numba's cache is keyed on a digest of this package and the header (dataplane/_jit.py): an
  edit anywhere recompiles every cached kernel once.
- Two tiers (FlowTables.flows not empty): a TCP flow's SYN, or a conntrack hit that leaves it
  in SYN_RECV or ESTABLISHED, or any UDP flow's second frame, hands both directions to the
  kernel fast path (offload_flow: XSKP_CT_OFFLOADED, XSKP_CNT_FLOW_OFFLOADED) before the frame
  is sent, so the peer's next frame already meets the fast path: a TCP connection's only
  packet in userspace is its SYN. At the SYN only while the worker holds fewer flow entries
  than half its share of the table (syn_offload_allowed: unanswered SYNs never crowd out
  established flows), and not for a DSR backend node's flow whose SYN+ACK gets its MSS
  clamped. DSR flows too: the ingress node's one-way flow (the fast path encapsulates) and the
  backend node's flow (the fast path decapsulates, then translates). Not offloaded: ICMP,
  SCTP (the fast path has no CRC32c helper; the steering and tc programs never look SCTP up in
  the flow table), flows whose next hops are unresolved, and flows whose probe window in the
  flow table is full (XSKP_CNT_FLOW_OFFLOAD_FULL). From then on dataplane/_fastpath.py keeps
  the flow's state from what the fast path reports.
"""
import numpy as np
from dataplane._jit import packet_njit

from dataplane import abi
from dataplane._checksum import (load16, load32, store16, store32, csum_fold, csum_diff16,
                                 csum_diff32, csum_apply, csum_sum_bytes, ipv4_header_checksum,
                                 pseudo_header_sum, l4_checksum_full)
from dataplane._conntrack import (ct_lookup, ct_delete_flow, ct_flow_expired, ct_find_free_slot,
                                  ct_write_entry, ct_set_state, ct_flow_is_closed_snat,
                                  ct_flow_last_seen, affinity_lookup, affinity_remember,
                                  affinity_touch, ct_absorb_fast_path, NO_PEER, NS_PER_S)
from dataplane import _sctp
from dataplane._flowtable import (flow_insert_from_ct, flow_insert_route, flow_clear_slot, flow_mark_owned,
                                  flow_remove)
from dataplane.tables import (lookup_frontend, lookup_neighbour, lookup_route, hash_flow,
                              svc_is_dsr, svc_has_affinity, svc_etp_local, svc_itp_local,
                              svc_has_source_ranges, fe_is_external, fe_allows_dsr, be_is_alive,
                              be_is_local, route_allows_bypass)

L = abi.lib
CONTINUE = L.XSKP_VERDICT_CONTINUE
V_DROP = L.XSKP_VERDICT_DROP
V_TX_TRANSPORT = L.XSKP_VERDICT_TX_TRANSPORT
V_TX_GATEWAY = L.XSKP_VERDICT_TX_GATEWAY
IFACE_TRANSPORT = L.XSKP_IFACE_TRANSPORT
IFACE_GATEWAY = L.XSKP_IFACE_GATEWAY
IFACE_MAX = L.XSKP_IFACE_MAX

FRAME_SIZE = L.XSKP_FRAME_SIZE
FRAME_MASK = ~(FRAME_SIZE - 1)

DROP_TRUNCATED = L.XSKP_DROP_TRUNCATED
DROP_BAD_IP = L.XSKP_DROP_BAD_IP
DROP_FRAGMENT = L.XSKP_DROP_FRAGMENT
DROP_TTL_EXCEEDED = L.XSKP_DROP_TTL_EXCEEDED
DROP_NOT_OURS = L.XSKP_DROP_NOT_OURS
DROP_NO_BACKEND = L.XSKP_DROP_NO_BACKEND
DROP_SOURCE_RANGE = L.XSKP_DROP_SOURCE_RANGE
DROP_NO_ROUTE = L.XSKP_DROP_NO_ROUTE
DROP_NO_NEIGHBOUR = L.XSKP_DROP_NO_NEIGHBOUR
DROP_CT_FULL = L.XSKP_DROP_CT_FULL
DROP_SNAT_EXHAUSTED = L.XSKP_DROP_SNAT_EXHAUSTED
DROP_NO_HEADROOM = L.XSKP_DROP_NO_HEADROOM
DROP_UNSUPPORTED = L.XSKP_DROP_UNSUPPORTED
DROP_TCP_INVALID = L.XSKP_DROP_TCP_INVALID
DROP_BAD_DESC = L.XSKP_DROP_BAD_DESC
DROP_VLAN = L.XSKP_DROP_VLAN
DROP_BAD_CSUM = L.XSKP_DROP_BAD_CSUM
DROP_SCTP_BAD_CRC = L.XSKP_DROP_SCTP_BAD_CRC
DROP_SCTP_INVALID = L.XSKP_DROP_SCTP_INVALID

CNT_TX_TRANSPORT = L.XSKP_CNT_TX_TRANSPORT
CNT_TX_GATEWAY = L.XSKP_CNT_TX_GATEWAY
CNT_CT_HIT = L.XSKP_CNT_CT_HIT
CNT_CT_CREATED = L.XSKP_CNT_CT_CREATED
CNT_CT_EXPIRED = L.XSKP_CNT_CT_EXPIRED
CNT_CT_EVICTED = L.XSKP_CNT_CT_EVICTED
CNT_CT_STALE = L.XSKP_CNT_CT_STALE
CNT_CT_REUSED = L.XSKP_CNT_CT_REUSED
CNT_DNAT = L.XSKP_CNT_DNAT
CNT_SNAT = L.XSKP_CNT_SNAT
CNT_HAIRPIN = L.XSKP_CNT_HAIRPIN
CNT_DSR_ENCAP = L.XSKP_CNT_DSR_ENCAP
CNT_DSR_DECAP = L.XSKP_CNT_DSR_DECAP
CNT_BYPASS = L.XSKP_CNT_BYPASS
CNT_ICMP_ERROR_TRANSLATED = L.XSKP_CNT_ICMP_ERROR_TRANSLATED
CNT_CSUM_COMPLETED = L.XSKP_CNT_CSUM_COMPLETED
CNT_AFFINITY_HIT = L.XSKP_CNT_AFFINITY_HIT
CNT_FIB_REFRESH = L.XSKP_CNT_FIB_REFRESH
CNT_FLOW_OFFLOADED = L.XSKP_CNT_FLOW_OFFLOADED
CNT_FLOW_OFFLOAD_FULL = L.XSKP_CNT_FLOW_OFFLOAD_FULL
COUNTER_MAX = L.XSKP_COUNTER_MAX
COUNTER_SLOTS = L.XSKP_COUNTER_SLOTS
SLOT_NEIGH_MISS = L.XSKP_SLOT_NEIGH_MISS
SLOT_ICMP_TAT = L.XSKP_SLOT_ICMP_TAT
CNT_ICMP_TIME_EXCEEDED = L.XSKP_CNT_ICMP_TIME_EXCEEDED
CNT_ICMP_UNREACHABLE = L.XSKP_CNT_ICMP_UNREACHABLE
ICMP_ERROR_INTERVAL_NS = L.XSKP_ICMP_ERROR_INTERVAL_NS
ICMP_ERROR_BURST = L.XSKP_ICMP_ERROR_BURST

FE_LOAD_BALANCER = L.XSKP_FE_LOAD_BALANCER
BE_TERMINATING = L.XSKP_BE_TERMINATING
CT_REPLY = L.XSKP_CT_REPLY
CT_SNAT = L.XSKP_CT_SNAT
CT_DSR_ENCAP = L.XSKP_CT_DSR_ENCAP
CT_DSR_LOCAL = L.XSKP_CT_DSR_LOCAL
CT_FIN_SEEN = L.XSKP_CT_FIN_SEEN
CT_IN_USE = L.XSKP_CT_IN_USE
CT_OFFLOADED = L.XSKP_CT_OFFLOADED
ST_NEW = L.XSKP_CT_NEW
ST_SYN_SENT = L.XSKP_CT_SYN_SENT
ST_SYN_RECV = L.XSKP_CT_SYN_RECV
ST_ESTABLISHED = L.XSKP_CT_ESTABLISHED
ST_FIN_WAIT = L.XSKP_CT_FIN_WAIT
ST_CLOSING = L.XSKP_CT_CLOSING
ST_SCTP_COOKIE_WAIT = L.XSKP_CT_SCTP_COOKIE_WAIT
SNAT_MAX_TRIES = L.XSKP_SNAT_MAX_TRIES
SYN_OFFLOAD_SHARE_DIVISOR = 2      # TCP flows go to the fast path at their SYN below 1/2 of a worker's share

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86dd
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88a8
IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
IPIP_OUTER_TTL = 64
ICMP_TIME_EXCEEDED = 11
ICMP_DEST_UNREACHABLE = 3
ICMP_PORT_UNREACHABLE = 3          # its code
ICMP_ERROR_TTL = 64              # net.ipv4.ip_default_ttl
ICMP_ERROR_TOS = 0xc0            # IPTOS_PREC_INTERNETCONTROL, as icmp_send
ICMP_ERROR_MAX_LEN = 576         # an ICMP error's IPv4 datagram, quote included (RFC 1812)


# --- forwarding helpers ---------------------------------------------------------------------

@packet_njit(inline="always")
def verdict_of_iface(iface):
    if iface == IFACE_TRANSPORT:
        return V_TX_TRANSPORT
    return V_TX_GATEWAY


@packet_njit(inline="always")
def resolve_next_hop(st, addr, counters):
    """(drop reason or 0, out iface, neighbour slot) for a frame to addr: route, then neighbour.
    A next hop without neighbour entry is left in counters[XSKP_SLOT_NEIGH_MISS] (iface << 32 |
    address) for the agent to have the kernel resolve it."""
    node = st.node[0]
    r = lookup_route(st.routes, np.int64(node.route_count), addr)
    if r < 0:
        return DROP_NO_ROUTE, 0, -1
    route = st.routes[r]
    iface = np.int64(route.iface)
    if iface >= IFACE_MAX:
        return DROP_NO_ROUTE, 0, -1
    next_hop = np.int64(route.next_hop)
    if next_hop == 0:
        next_hop = np.int64(addr)
    nb = lookup_neighbour(st.neighbours, next_hop, iface)
    if nb < 0:
        counters[SLOT_NEIGH_MISS] = np.uint64((iface << 32) | next_hop)
        return DROP_NO_NEIGHBOUR, 0, -1
    return 0, iface, nb


@packet_njit(inline="always")
def ct_resolve(st, ct, idx, counters):
    """Cache out interface and MACs for entry idx; 0 or the drop reason (then the entry keeps a
    fib_generation older than the current one and any later one, so frames retry until it
    resolves: generations only grow, also across restarts)."""
    e = ct[idx]
    node = st.node[0]
    target = np.int64(e.encap_dst) if (e.flags & CT_DSR_ENCAP) != 0 else np.int64(e.new_dst_addr)
    reason, iface, nb = resolve_next_hop(st, target, counters)
    if reason != 0:
        e.fib_generation = node.fib_generation - np.uint32(1)
        return reason
    e.out_iface = iface
    neighbour = st.neighbours[nb]
    for k in range(6):
        e.dst_mac[k] = neighbour.mac[k]
        e.src_mac[k] = node.iface_mac[iface, k]
    e.fib_generation = node.fib_generation
    return 0


@packet_njit(inline="always")
def ct_refresh(st, ct, idx, counters):
    """Re-resolve entry idx's cached interface and MACs if the FIB changed since (counted as
    XSKP_CNT_FIB_REFRESH); 0 or the drop reason."""
    if ct[idx].fib_generation == st.node[0].fib_generation:
        return 0
    reason = ct_resolve(st, ct, idx, counters)
    if reason == 0:
        counters[CNT_FIB_REFRESH] += 1
    return reason


@packet_njit(inline="always")
def decrement_ttl(umem, l3):
    """Decrement the IPv4 TTL; returns the checksum diff, or -1 when TTL would reach 0."""
    ttl = np.int64(umem[l3 + 8])
    if ttl <= 1:
        return np.int64(-1)
    old_word = load16(umem, l3 + 8)
    umem[l3 + 8] = ttl - 1
    return csum_diff16(old_word, old_word - 0x100)


@packet_njit(inline="always")
def write_macs_from_entry(umem, base, e):
    for k in range(6):
        umem[base + k] = e.dst_mac[k]
        umem[base + 6 + k] = e.src_mac[k]


@packet_njit(inline="always")
def write_ipv4_header(umem, o, tos, total_len, frag_bits, ttl, proto, src, dst):
    """A 20-byte IPv4 header at o (id 0; frag_bits: flags and offset, e.g. DF) with its checksum."""
    umem[o] = 0x45
    umem[o + 1] = tos
    store16(umem, o + 2, total_len)
    store16(umem, o + 4, 0)
    store16(umem, o + 6, frag_bits)
    umem[o + 8] = ttl
    umem[o + 9] = proto
    store16(umem, o + 10, 0)
    store32(umem, o + 12, src)
    store32(umem, o + 16, dst)
    store16(umem, o + 10, ipv4_header_checksum(umem, o, 20))


@packet_njit
def encapsulate_ipip(umem, addrs, lens, i, base, l2_len, l3, ip_end, chunk, outer_src, outer_dst):
    """Prepend an outer IPv4 header (IPIP) between L2 and the packet, moving the frame start 20
    bytes into the headroom. Returns the new frame start, or -1 without headroom."""
    new_base = base - 20
    if new_base < chunk:
        return np.int64(-1)
    for k in range(l2_len):
        umem[new_base + k] = umem[base + k]
    o = new_base + l2_len
    inner_len = ip_end - l3
    write_ipv4_header(umem, o, umem[l3 + 1], inner_len + 20, load16(umem, l3 + 6) & 0x4000,
                      IPIP_OUTER_TTL, IPPROTO_IPIP, outer_src, outer_dst)
    addrs[i] = new_base
    lens[i] = l2_len + 20 + inner_len
    return new_base


@packet_njit(inline="always")
def apply_entry(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off,
                src, dst, sport, dport, chunk, st, ct, idx, counters):
    """Forward a frame by conntrack entry idx: refresh cached MACs if the FIB changed, decrement
    TTL, NAT (or IPIP-encapsulate for DSR), write MACs. Returns (verdict, drop reason)."""
    e = ct[idx]
    node = st.node[0]
    reason = ct_refresh(st, ct, idx, counters)
    if reason != 0:
        return V_DROP, reason
    ip_diff = decrement_ttl(umem, l3)
    if ip_diff < 0:
        return V_DROP, DROP_TTL_EXCEEDED
    if (e.flags & CT_DSR_ENCAP) != 0:
        store16(umem, l3 + 10, csum_apply(load16(umem, l3 + 10), ip_diff))
        new_base = encapsulate_ipip(umem, addrs, lens, i, base, l3 - base, l3, ip_end, chunk,
                                    np.int64(node.node_addr), np.int64(e.encap_dst))
        if new_base < 0:
            return V_DROP, DROP_NO_HEADROOM
        counters[CNT_DSR_ENCAP] += 1
        write_macs_from_entry(umem, new_base, e)
        return verdict_of_iface(e.out_iface), 0
    l4_diff = np.int64(0)
    new_src = np.int64(e.new_src_addr)
    new_dst = np.int64(e.new_dst_addr)
    if new_src != src:
        store32(umem, l3 + 12, new_src)
        d = csum_diff32(src, new_src)
        ip_diff += d
        l4_diff += d
    if new_dst != dst:
        store32(umem, l3 + 16, new_dst)
        d = csum_diff32(dst, new_dst)
        ip_diff += d
        l4_diff += d
    store16(umem, l3 + 10, csum_apply(load16(umem, l3 + 10), ip_diff))
    if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
        new_sport = np.int64(e.new_src_port)
        new_dport = np.int64(e.new_dst_port)
        if new_sport != sport:
            store16(umem, l4, new_sport)
            l4_diff += csum_diff16(sport, new_sport)
        if new_dport != dport:
            store16(umem, l4 + 2, new_dport)
            l4_diff += csum_diff16(dport, new_dport)
        if l4_diff != 0:
            check = load16(umem, csum_off)
            if not (proto == IPPROTO_UDP and check == 0):
                check = csum_apply(check, l4_diff)
                if proto == IPPROTO_UDP and check == 0:
                    check = 0xffff
                store16(umem, csum_off, check)
    elif proto == IPPROTO_SCTP:
        # no pseudo-header: new addresses keep the CRC32c valid, a new port needs it again
        new_sport = np.int64(e.new_src_port)
        new_dport = np.int64(e.new_dst_port)
        if new_sport != sport or new_dport != dport:
            store16(umem, l4, new_sport)
            store16(umem, l4 + 2, new_dport)
            _sctp.store_checksum(umem, l4, _sctp.sctp_checksum(umem, l4, ip_end))
    write_macs_from_entry(umem, base, e)
    return verdict_of_iface(e.out_iface), 0


# --- stages ---------------------------------------------------------------------------------

@packet_njit(inline="always")
def complete_partial_checksum(umem, l4, ip_end, proto, src, dst, csum_off, counters):
    """Complete a partial (offload) TCP/UDP checksum in software; see the module docstring."""
    l4_len = ip_end - l4
    check = load16(umem, csum_off)
    if proto == IPPROTO_UDP and check == 0:
        return
    pseudo = pseudo_header_sum(src, dst, proto, l4_len)
    if check != csum_fold(pseudo):
        return
    if csum_fold(csum_sum_bytes(umem, l4, ip_end, pseudo)) == 0xffff:
        return
    full = l4_checksum_full(umem, l4, l4_len, src, dst, proto, csum_off)
    if proto == IPPROTO_UDP and full == 0:
        full = 0xffff
    store16(umem, csum_off, full)
    counters[CNT_CSUM_COMPLETED] += 1


@packet_njit(inline="always")
def entry_backend_valid(e, backends):
    """The backend a conntrack entry was made for is still ALIVE at the same address/port/node."""
    bid = np.int64(e.backend_id)
    if bid <= 0 or bid >= backends.shape[0]:
        return False
    be = backends[bid]
    if not be_is_alive(be):
        return False
    if (e.flags & CT_REPLY) != 0:
        return e.src_addr == be.addr and e.src_port == be.port
    if (e.flags & CT_DSR_ENCAP) != 0:
        return e.encap_dst == be.node_addr
    return e.new_dst_addr == be.addr and e.new_dst_port == be.port


@packet_njit
def track_tcp(ct, idx, tcp_flags):
    """Advance the TCP state of the flow of entry idx for a segment with tcp_flags."""
    e = ct[idx]
    is_reply = (e.flags & CT_REPLY) != 0
    has_peer = np.int64(e.peer) != NO_PEER
    state = np.int64(e.state)
    new_state = state
    if (tcp_flags & TCP_RST) != 0:
        new_state = ST_CLOSING
    elif (tcp_flags & TCP_SYN) != 0:
        if (tcp_flags & TCP_ACK) != 0 and is_reply and state == ST_SYN_SENT:
            new_state = ST_SYN_RECV
    elif (tcp_flags & TCP_FIN) != 0:
        e.flags |= np.uint8(CT_FIN_SEEN)
        peer_fin = False
        if has_peer and np.int64(e.peer) < ct.shape[0]:
            peer_fin = (ct[e.peer].flags & CT_FIN_SEEN) != 0
        if peer_fin:
            new_state = ST_CLOSING
        elif state < ST_FIN_WAIT:
            new_state = ST_FIN_WAIT
    elif (tcp_flags & TCP_ACK) != 0 and not is_reply:
        if state == ST_SYN_RECV or (state == ST_SYN_SENT and not has_peer):
            new_state = ST_ESTABLISHED
    if new_state != state:
        ct_set_state(ct, idx, new_state)


@packet_njit(inline="always")
def track_sctp(ct, idx, sctp_chunks):
    """Advance the SCTP state of the flow of entry idx for a packet with this chunk set."""
    e = ct[idx]
    state = np.int64(e.state)
    new_state = _sctp.next_state(state, sctp_chunks, (e.flags & CT_REPLY) != 0)
    if new_state != state:
        ct_set_state(ct, idx, new_state)


@packet_njit(inline="always")
def clamp_mss(umem, l4, ip_end, csum_off, mss_max):
    """Lower a TCP MSS option above mss_max to it (checksum updated incrementally)."""
    end = min(l4 + np.int64(umem[l4 + 12] >> 4) * 4, ip_end)
    o = l4 + 20
    while o < end:
        kind = np.int64(umem[o])
        if kind == 0:
            return
        if kind == 1:
            o += 1
            continue
        if o + 1 >= end:
            return
        length = np.int64(umem[o + 1])
        if length < 2 or o + length > end:
            return
        if kind == 2 and length == 4:
            mss = load16(umem, o + 2)
            if mss > mss_max:
                store16(umem, o + 2, mss_max)
                store16(umem, csum_off, csum_apply(load16(umem, csum_off), csum_diff16(mss, mss_max)))
            return
        o += length


@packet_njit(inline="always")
def touch_affinity(st, ft, e, seen_ns):
    """ClientIP affinity counts from the last packet of the client's flows to the Service (an
    original-direction frame of a flow of an affinity Service keeps the entry fresh), in both
    tiers: dataplane/_fastpath.py does the same for offloaded flows from their last_seen."""
    if (e.flags & CT_REPLY) != 0:
        return
    sid = np.int64(e.service_id)
    if sid < st.services.shape[0] and svc_has_affinity(st.services[sid]):
        affinity_touch(ft.affinity, e.src_addr, sid, e.backend_id, seen_ns)


@packet_njit(inline="always")
def forget_cached_route(flows, src, dst, sport, dport, proto):
    """A tracked flow now owns this key: a routing decision cached for it goes."""
    if flows.shape[0] != 0:
        flow_remove(flows, src, dst, sport, dport, proto)


@packet_njit(inline="always")
def syn_offload_allowed(ft, e, node):
    """A TCP flow goes to the fast path at its SYN (so that the SYN+ACK meets it) while this
    worker holds fewer flow entries than half its share of the table; beyond, at its SYN+ACK
    as when the table filled, so that unanswered SYNs (a flood) never take the room of
    established flows. Not a DSR backend node's flow with MSS clamping: its SYN+ACK is
    userspace's to clamp."""
    fast = ft.fast_state[0]
    share = np.uint64(ft.flows.shape[0]) // np.uint64(max(np.int64(fast.partitions), 1))
    if fast.owned_flows >= share // np.uint64(SYN_OFFLOAD_SHARE_DIVISOR):
        return False
    return (e.flags & CT_DSR_LOCAL) == 0 or node.dsr_mss == 0


@packet_njit
def offload_flow(st, ft, idx, counters):
    """Hand the flow of conntrack entry idx (both directions; a DSR ingress flow's one) to the
    kernel fast path, if it qualifies (see the module docstring). Writes ft.flows and the
    entries' XSKP_CT_OFFLOADED."""
    flows = ft.flows
    ct = ft.ct
    e = ct[idx]
    if (e.flags & CT_OFFLOADED) != 0:
        return
    node = st.node[0]
    fast = ft.fast_state[0]
    if e.proto == IPPROTO_TCP:
        if e.state == ST_SYN_SENT:
            if not syn_offload_allowed(ft, e, node):
                return
        elif e.state != ST_SYN_RECV and e.state != ST_ESTABLISHED:
            return
    elif e.proto != IPPROTO_UDP:
        return
    if e.fib_generation != node.fib_generation:
        return
    out_e = fast.ifindex[e.out_iface]
    if out_e == 0:
        return
    peer = np.int64(e.peer)
    one_way = (e.flags & CT_DSR_ENCAP) != 0 and peer == NO_PEER
    out_p = np.uint32(0)
    if not one_way:
        if peer == NO_PEER or peer >= ct.shape[0]:
            return
        p = ct[peer]
        if (p.flags & CT_IN_USE) == 0 or np.int64(p.peer) != idx:
            return
        if ct_refresh(st, ct, peer, counters) != 0:
            return
        out_p = fast.ifindex[p.out_iface]
        if out_p == 0:
            return
    a = flow_insert_from_ct(flows, e, idx, out_e, fast.owner)
    if a < 0:
        counters[CNT_FLOW_OFFLOAD_FULL] += 1
        return
    flow_mark_owned(ft, a)
    if not one_way:
        b = flow_insert_from_ct(flows, ct[peer], peer, out_p, fast.owner)
        if b < 0:
            flow_clear_slot(flows, a)
            counters[CNT_FLOW_OFFLOAD_FULL] += 1
            return
        flow_mark_owned(ft, b)
        ct[peer].flags |= np.uint8(CT_OFFLOADED)
    e.flags |= np.uint8(CT_OFFLOADED)
    counters[CNT_FLOW_OFFLOADED] += 1


@packet_njit(inline="always")
def conntrack_stage(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off, src, dst,
                    sport, dport, tcp_flags, sctp_chunks, chunk, st, ft, counters, now_ns):
    """Frames of tracked flows: translate by their entry. CONTINUE when untracked (or the entry
    expired or lost its backend, which removes the flow). tcp_flags: a TCP segment's flags;
    sctp_chunks: an SCTP packet's chunk set (dataplane/_sctp.py parse_chunks)."""
    ct = ft.ct
    idx = ct_lookup(ct, src, dst, sport, dport, proto)
    if idx < 0:
        return CONTINUE, 0
    if ct_flow_expired(ct, idx, now_ns):
        ct_delete_flow(ct, ft.flows, idx)
        counters[CNT_CT_EXPIRED] += 1
        return CONTINUE, 0
    e = ct[idx]
    if not entry_backend_valid(e, st.backends):
        ct_delete_flow(ct, ft.flows, idx)
        counters[CNT_CT_STALE] += 1
        return CONTINUE, 0
    opening = proto == IPPROTO_TCP and (tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN
    if opening and (e.flags & CT_OFFLOADED) != 0:
        # what the fast path saw since the last sweep first: an RST it carried (a server's
        # challenge ACK to a SYN it refused, the client's reset) closed the old connection, and
        # the flags of that one must not close this one at the next sweep
        ct_absorb_fast_path(ct, ft.flows, idx)
    if opening and (e.flags & CT_REPLY) == 0 and np.int64(e.state) >= ST_FIN_WAIT:
        # a new connection on the tuple of a closing one: balanced like any new flow
        ct_delete_flow(ct, ft.flows, idx)
        counters[CNT_CT_REUSED] += 1
        return CONTINUE, 0
    if (proto == IPPROTO_SCTP and _sctp.opens_association(sctp_chunks)
            and (e.flags & CT_REPLY) == 0 and _sctp.closing_or_closed(np.int64(e.state))):
        # a new association on the tuple of a closing or closed one, as for TCP above
        ct_delete_flow(ct, ft.flows, idx)
        counters[CNT_CT_REUSED] += 1
        return CONTINUE, 0
    if proto == IPPROTO_TCP:
        track_tcp(ct, idx, tcp_flags)
    elif proto == IPPROTO_SCTP:
        track_sctp(ct, idx, sctp_chunks)
    elif e.state == ST_NEW and (e.flags & CT_REPLY) != 0:
        ct_set_state(ct, idx, ST_ESTABLISHED)
    e.last_seen_ns = now_ns
    counters[CNT_CT_HIT] += 1
    touch_affinity(st, ft, e, now_ns)
    if (proto == IPPROTO_TCP and (tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)
            and (e.flags & (CT_DSR_LOCAL | CT_REPLY)) == (CT_DSR_LOCAL | CT_REPLY)
            and st.node[0].dsr_mss != 0):
        clamp_mss(umem, l4, ip_end, csum_off, np.int64(st.node[0].dsr_mss))
    verdict, reason = apply_entry(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off,
                                  src, dst, sport, dport, chunk, st, ct, idx, counters)
    if verdict != V_DROP and ft.flows.shape[0] != 0 and (e.flags & CT_OFFLOADED) == 0:
        offload_flow(st, ft, idx, counters)
    return verdict, reason


@packet_njit
def source_allowed(source_ranges, offset, count, src):
    """loadBalancerSourceRanges: src lies in one of the service's ranges (no ranges: allowed)."""
    if count == 0:
        return True
    for k in range(count):
        j = offset + k
        if j >= source_ranges.shape[0]:
            break
        r = source_ranges[j]
        if (np.uint32(src) & r.mask) == r.net:
            return True
    return False


@packet_njit
def select_backend_maglev(maglev, backends, ring_offset, ring_size, flow_hash):
    """Backend id at the flow's position in the ring slice, or 0 (no usable backend)."""
    if ring_size == 0 or ring_offset + ring_size > maglev.shape[0]:
        return np.int64(0)
    bid = np.int64(maglev[ring_offset + np.int64(flow_hash % np.uint64(ring_size))])
    if bid <= 0 or bid >= backends.shape[0] or not be_is_alive(backends[bid]):
        return np.int64(0)
    return bid


@packet_njit
def affinity_backend_usable(st, bid, ring_offset, ring_size, need_local):
    """A remembered ClientIP backend may still be used for a new flow (see module docstring)."""
    backends = st.backends
    if bid <= 0 or bid >= backends.shape[0] or ring_size == 0:
        return False
    be = backends[bid]
    if not be_is_alive(be) or (need_local and not be_is_local(be)):
        return False
    if (be.flags & BE_TERMINATING) != 0 and ring_offset < st.maglev.shape[0]:
        first = np.int64(st.maglev[ring_offset])
        if 0 < first < backends.shape[0] and (backends[first].flags & BE_TERMINATING) == 0:
            return False
    return True


@packet_njit
def allocate_snat_port(ct, flows, node, backend_addr, backend_port, proto, flow_hash, may_take_closed,
                       now_ns, counters, fast_state):
    """A SNAT port for a new flow to (backend_addr, backend_port, proto), or -1 (exhausted).

    The pool is the range [snat_port_min, snat_port_max] for each destination (backend,
    backend port, proto), or with several workers the worker's share of it (fast_state's
    partition: the ports p with p % partitions == partition, where tc sends their replies): a
    port is held while the reply key (backend, node_addr, backend_port, port) is in conntrack. From the port the flow hash picks, the first free port is taken (a
    flow found expired on the way is removed, XSKP_CNT_CT_EXPIRED). If the first SNAT_MAX_TRIES
    ports are all held, and may_take_closed (a TCP SYN), the port of the closed SNAT flow among
    them idle longest is taken over, else the first free or closed port of the rest of the range:
    the closed flow is removed (XSKP_CNT_CT_REUSED), as nf_nat takes over a tuple in TIME_WAIT or
    CLOSE for a new connection. A port held by a flow not closed is never taken."""
    port_min = np.int64(node.snat_port_min)
    port_max = np.int64(node.snat_port_max)
    if port_min == 0 or port_max < port_min:
        return np.int64(-1)
    step = np.int64(max(fast_state.partitions, 1))
    port_min += (np.int64(fast_state.partition) - port_min) % step   # the share's first port
    if port_max < port_min:
        return np.int64(-1)
    span = (port_max - port_min) // step + 1
    start = np.int64(flow_hash % np.uint64(span))
    node_addr = np.int64(node.node_addr)
    closed = np.int64(-1)
    closed_port = np.int64(-1)
    closed_seen = np.uint64(0xffffffffffffffff)
    for t in range(span):
        if t == SNAT_MAX_TRIES and closed >= 0:
            break
        port = port_min + (start + t) % span * step
        idx = ct_lookup(ct, backend_addr, node_addr, backend_port, port, proto)
        if idx < 0:
            return port
        if (ct[idx].flags & CT_OFFLOADED) != 0:
            ct_absorb_fast_path(ct, flows, idx)     # closed in the fast path since the last sweep?
        if ct_flow_expired(ct, idx, now_ns):
            ct_delete_flow(ct, flows, idx)
            counters[CNT_CT_EXPIRED] += 1
            return port
        if may_take_closed and ct_flow_is_closed_snat(ct, idx):
            seen = ct_flow_last_seen(ct, idx)
            if seen < closed_seen:
                closed, closed_port, closed_seen = idx, port, seen
            if t >= SNAT_MAX_TRIES:
                break
    if closed < 0:
        return np.int64(-1)
    ct_delete_flow(ct, flows, closed)
    counters[CNT_CT_REUSED] += 1
    return closed_port


@packet_njit
def service_stage(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off, src, dst, sport,
                  dport, tcp_flags, sctp_chunks, decapsulated, ingress_iface, chunk, st, ft, counters,
                  now_ns):
    """New flows to a Service frontend: source ranges, backend (affinity, Maglev), DSR or DNAT
    (+ SNAT), conntrack entries, then forward. CONTINUE when dst is no frontend."""
    fe_idx = lookup_frontend(st.frontends, dst, dport, proto)
    if fe_idx < 0:
        return CONTINUE, 0
    fe = st.frontends[fe_idx]
    sid = np.int64(fe.service_id)
    if sid >= st.services.shape[0]:
        return V_DROP, DROP_NOT_OURS
    svc = st.services[sid]
    kind = np.int64(fe.kind)
    external = fe_is_external(kind)
    if (svc_has_source_ranges(svc) and kind == FE_LOAD_BALANCER
            and not source_allowed(st.source_ranges, np.int64(svc.source_ranges_offset),
                                   np.int64(svc.source_ranges_count), src)):
        return V_DROP, DROP_SOURCE_RANGE
    if proto == IPPROTO_TCP and (tcp_flags & TCP_RST) != 0:
        return V_DROP, DROP_TCP_INVALID
    if proto == IPPROTO_SCTP and not _sctp.opens_association(sctp_chunks):
        return V_DROP, DROP_SCTP_INVALID
    # externalTrafficPolicy Local is for traffic from outside: this node's Pods (the gateway)
    # reaching an external address of the Service get every endpoint, as kube-proxy does
    etp_local = svc_etp_local(svc) and not (ingress_iface == IFACE_GATEWAY and not decapsulated)
    use_local = decapsulated or (external and etp_local) or (not external and svc_itp_local(svc))
    if use_local:
        ring_offset = np.int64(svc.local_ring_offset)
        ring_size = np.int64(svc.local_ring_size)
    else:
        ring_offset = np.int64(svc.ring_offset)
        ring_size = np.int64(svc.ring_size)
    flow_hash = hash_flow(src, dst, sport, dport, proto)
    bid = np.int64(0)
    affinity = svc_has_affinity(svc)
    if affinity:
        timeout_s = max(np.int64(svc.affinity_timeout_s), 1)
        remembered = affinity_lookup(ft.affinity, src, sid, np.uint64(timeout_s * NS_PER_S), now_ns)
        if remembered != 0 and affinity_backend_usable(st, remembered, ring_offset, ring_size,
                                                       use_local):
            bid = remembered
            counters[CNT_AFFINITY_HIT] += 1
    if bid == 0:
        bid = select_backend_maglev(st.maglev, st.backends, ring_offset, ring_size, flow_hash)
        if bid == 0:
            if np.int64(svc.ring_size) == 0 and not decapsulated:
                # no endpoint anywhere: refused at once, as kube-proxy's REJECT (a Local policy
                # without a local endpoint is a drop, as there)
                return answer_icmp_error(umem, lens, i, base, l3, l4 - l3, ip_end, chunk, st,
                                         counters, now_ns, ICMP_DEST_UNREACHABLE,
                                         ICMP_PORT_UNREACHABLE, dst, DROP_NO_BACKEND)
            return V_DROP, DROP_NO_BACKEND
    if affinity:
        affinity_remember(ft.affinity, src, sid, bid, now_ns)
    be = st.backends[bid]
    if proto == IPPROTO_TCP:
        if (tcp_flags & TCP_SYN) != 0 and (tcp_flags & TCP_ACK) == 0:
            state = ST_SYN_SENT
        else:
            state = ST_SYN_RECV
    elif proto == IPPROTO_SCTP:
        state = ST_SCTP_COOKIE_WAIT
    else:
        state = ST_NEW
    ct = ft.ct
    node = st.node[0]
    if svc_is_dsr(svc) and fe_allows_dsr(kind) and not decapsulated and not be_is_local(be):
        o = ct_find_free_slot(ct, ft.flows, src, dst, sport, dport, proto, now_ns, -1,
                              counters, CNT_CT_EXPIRED, CNT_CT_EVICTED)
        if o < 0:
            return V_DROP, DROP_CT_FULL
        ct_write_entry(ct, o, CT_DSR_ENCAP, src, dst, sport, dport, proto, state,
                       src, dst, sport, dport, np.int64(be.node_addr), bid, sid, now_ns)
        forget_cached_route(ft.flows, src, dst, sport, dport, proto)
        reason = ct_resolve(st, ct, o, counters)
        if reason != 0:
            ct_delete_flow(ct, ft.flows, o)
            return V_DROP, reason
        counters[CNT_CT_CREATED] += 1
        return forward_new_flow(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off,
                                src, dst, sport, dport, chunk, st, ft, o, counters)
    backend_addr = np.int64(be.addr)
    backend_port = np.int64(be.port)
    new_src = src
    new_sport = sport
    flags = 0
    # a Pod reaching a backend on its own node (itself included): the backend's reply would
    # stay on the Pods' switch and never come back through us unless it is addressed to us
    hairpin = ingress_iface == IFACE_GATEWAY and be_is_local(be) and not decapsulated
    if hairpin or (external and not svc_etp_local(svc) and not be_is_local(be)
                   and not decapsulated):
        # a TCP SYN or an SCTP INIT (the only packets that open SCTP flows) may take over the
        # port of a closed flow
        opens = proto == IPPROTO_SCTP or (proto == IPPROTO_TCP
                                          and (tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        port = allocate_snat_port(ct, ft.flows, node, backend_addr, backend_port, proto, flow_hash,
                                  opens, now_ns, counters, ft.fast_state[0])
        if port < 0:
            return V_DROP, DROP_SNAT_EXHAUSTED
        new_src = np.int64(node.node_addr)
        new_sport = port
        flags |= CT_SNAT
    else:
        # the client reused its port towards the same backend: the old flow is over
        old = ct_lookup(ct, backend_addr, src, backend_port, sport, proto)
        if old >= 0:
            ct_delete_flow(ct, ft.flows, old)
    if decapsulated:
        flags |= CT_DSR_LOCAL
    o = ct_find_free_slot(ct, ft.flows, src, dst, sport, dport, proto, now_ns, -1,
                          counters, CNT_CT_EXPIRED, CNT_CT_EVICTED)
    if o < 0:
        return V_DROP, DROP_CT_FULL
    ct_write_entry(ct, o, flags, src, dst, sport, dport, proto, state,
                   new_src, backend_addr, new_sport, backend_port, 0, bid, sid, now_ns)
    r = ct_find_free_slot(ct, ft.flows, backend_addr, new_src, backend_port, new_sport, proto, now_ns, o,
                          counters, CNT_CT_EXPIRED, CNT_CT_EVICTED)
    if r < 0:
        ct_delete_flow(ct, ft.flows, o)
        return V_DROP, DROP_CT_FULL
    ct_write_entry(ct, r, flags | CT_REPLY, backend_addr, new_src, backend_port, new_sport, proto,
                   state, dst, src, dport, sport, 0, bid, sid, now_ns)
    ct[o].peer = r
    ct[r].peer = o
    forget_cached_route(ft.flows, src, dst, sport, dport, proto)
    forget_cached_route(ft.flows, backend_addr, new_src, backend_port, new_sport, proto)
    reason = ct_resolve(st, ct, o, counters)
    if reason != 0:
        ct_delete_flow(ct, ft.flows, o)
        return V_DROP, reason
    ct_resolve(st, ct, r, counters)
    counters[CNT_CT_CREATED] += 1
    counters[CNT_DNAT] += 1
    if (flags & CT_SNAT) != 0:
        if hairpin:
            counters[CNT_HAIRPIN] += 1
        else:
            counters[CNT_SNAT] += 1
    return forward_new_flow(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off,
                            src, dst, sport, dport, chunk, st, ft, o, counters)


@packet_njit(inline="always")
def forward_new_flow(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off, src, dst,
                     sport, dport, chunk, st, ft, idx, counters):
    """Translate and forward the first frame of the flow of conntrack entry idx; a TCP SYN's
    flow goes to the fast path now (offload_flow decides), before the SYN leaves, so that the
    SYN+ACK meets it."""
    verdict, reason = apply_entry(umem, addrs, lens, i, base, l3, ip_end, l4, proto, csum_off,
                                  src, dst, sport, dport, chunk, st, ft.ct, idx, counters)
    if (verdict != V_DROP and proto == IPPROTO_TCP and ft.flows.shape[0] != 0
            and ft.ct[idx].state == ST_SYN_SENT):
        offload_flow(st, ft, idx, counters)
    return verdict, reason


@packet_njit(inline="always")
def bypass_stage(umem, base, l3, src, dst, proto, sport, dport, cacheable, st, ft, counters,
                 now_ns):
    """Netfilter bypass: a frame to a XSKP_ROUTE_BYPASS prefix is routed (next hop MAC, own
    MAC, TTL - 1) without conntrack. CONTINUE when no bypass route covers dst. With the fast
    path, a cacheable (TCP/UDP, not a fragment) frame's routing is cached in the flow table
    (XSKP_FLOW_ROUTE) so that the rest of its flow stays in the kernel: the frames the steering
    program sends here although it routes Pod-CIDR traffic itself (a Service backend's replies
    to a remote Pod, which the client's node translates)."""
    node = st.node[0]
    r = lookup_route(st.routes, np.int64(node.route_count), dst)
    if r < 0 or not route_allows_bypass(st.routes[r]):
        return CONTINUE, 0
    reason, iface, nb = resolve_next_hop(st, dst, counters)
    if reason != 0:
        return V_DROP, reason
    ip_diff = decrement_ttl(umem, l3)
    if ip_diff < 0:
        return V_DROP, DROP_TTL_EXCEEDED
    store16(umem, l3 + 10, csum_apply(load16(umem, l3 + 10), ip_diff))
    neighbour = st.neighbours[nb]
    for k in range(6):
        umem[base + k] = neighbour.mac[k]
        umem[base + 6 + k] = node.iface_mac[iface, k]
    counters[CNT_BYPASS] += 1
    if cacheable and ft.flows.shape[0] != 0:
        fast = ft.fast_state[0]
        out_ifindex = fast.ifindex[iface]
        if out_ifindex != 0:
            slot = flow_insert_route(ft.flows, src, dst, sport, dport, proto, out_ifindex,
                                     neighbour.mac, node.iface_mac[iface], node.fib_generation,
                                     now_ns, fast.owner)
            if slot < 0:
                counters[CNT_FLOW_OFFLOAD_FULL] += 1
            else:
                flow_mark_owned(ft, slot)
    return verdict_of_iface(iface), 0


@packet_njit
def icmp_error_stage(umem, base, l3, ihl, ip_end, l4, src, dst, st, ft, counters):
    """An ICMP error quoting a TCP/UDP flow we translated: restore the quoted header, translate
    the outer addresses, forward along the entry. CONTINUE when it quotes no tracked flow."""
    q = l4 + 8
    if q + 20 > ip_end or (umem[q] >> 4) != 4:
        return CONTINUE, 0
    qihl = np.int64(umem[q] & 0xf) * 4
    if qihl < 20 or q + qihl + 8 > ip_end:
        return CONTINUE, 0
    qproto = np.int64(umem[q + 9])
    if qproto != IPPROTO_TCP and qproto != IPPROTO_UDP and qproto != IPPROTO_SCTP:
        return CONTINUE, 0
    qsrc = load32(umem, q + 12)
    qdst = load32(umem, q + 16)
    ql4 = q + qihl
    qsport = load16(umem, ql4)
    qdport = load16(umem, ql4 + 2)
    ct = ft.ct
    idx = ct_lookup(ct, qdst, qsrc, qdport, qsport, qproto)
    if idx < 0:
        return CONTINUE, 0
    e = ct[idx]
    if (e.flags & CT_DSR_ENCAP) != 0:
        return CONTINUE, 0
    reason = ct_refresh(st, ct, idx, counters)
    if reason != 0:
        return V_DROP, reason
    if decrement_ttl(umem, l3) < 0:
        return V_DROP, DROP_TTL_EXCEEDED
    new_qsrc = np.int64(e.new_dst_addr)
    new_qdst = np.int64(e.new_src_addr)
    new_qsport = np.int64(e.new_dst_port)
    new_qdport = np.int64(e.new_src_port)
    diff = (csum_diff32(qsrc, new_qsrc) + csum_diff32(qdst, new_qdst)
            + csum_diff16(qsport, new_qsport) + csum_diff16(qdport, new_qdport))
    store32(umem, q + 12, new_qsrc)
    store32(umem, q + 16, new_qdst)
    store16(umem, ql4, new_qsport)
    store16(umem, ql4 + 2, new_qdport)
    if qproto == IPPROTO_UDP:
        check = load16(umem, ql4 + 6)
        if check != 0:
            check = csum_apply(check, diff)
            store16(umem, ql4 + 6, 0xffff if check == 0 else check)
    elif qproto == IPPROTO_SCTP:
        pass    # a quote is cut short: its CRC32c cannot be redone (the stack matches the vtag)
    elif ql4 + 18 <= ip_end:
        store16(umem, ql4 + 16, csum_apply(load16(umem, ql4 + 16), diff))
    store16(umem, q + 10, ipv4_header_checksum(umem, q, qihl))
    if dst == e.dst_addr:
        store32(umem, l3 + 16, np.int64(e.new_dst_addr))
    if src == e.src_addr:
        store32(umem, l3 + 12, np.int64(e.new_src_addr))
    store16(umem, l3 + 10, ipv4_header_checksum(umem, l3, ihl))
    store16(umem, l4 + 2, 0)
    store16(umem, l4 + 2, ~csum_fold(csum_sum_bytes(umem, l4, ip_end, 0)) & 0xffff)
    write_macs_from_entry(umem, base, e)
    counters[CNT_ICMP_ERROR_TRANSLATED] += 1
    return verdict_of_iface(e.out_iface), 0


@packet_njit(inline="always")
def icmp_error_allowed(counters, now_ns):
    """The ICMP error rate limit (GCRA over counters[XSKP_SLOT_ICMP_TAT]): True and the state
    advanced when one more error may be sent now."""
    now = np.int64(now_ns)
    tat = np.int64(counters[SLOT_ICMP_TAT])
    if tat < now:
        tat = now
    if tat - now > ICMP_ERROR_INTERVAL_NS * (ICMP_ERROR_BURST - 1):
        return False
    counters[SLOT_ICMP_TAT] = np.uint64(tat + ICMP_ERROR_INTERVAL_NS)
    return True


@packet_njit(inline="always")
def unicast_v4(addr):
    """addr (host order) may be an ICMP error's destination: not 0/8, loopback, multicast,
    class E or broadcast."""
    first = addr >> 24
    return first != 0 and first != 127 and first < 224


@packet_njit
def answer_icmp_error(umem, lens, i, base, l3, ihl, ip_end, chunk, st, counters, now_ns,
                      icmp_type, icmp_code, from_addr, refused):
    """Rewrite the frame at base (untagged, IPv4 at l3) in place into an ICMP error (icmp_type,
    icmp_code) from from_addr to its source (see the module docstring). Reads the routes and
    neighbours; writes the frame, lens[i], counters. Returns (verdict, drop reason): when no
    error may be sent, (V_DROP, refused)."""
    src = load32(umem, l3 + 12)
    dst = load32(umem, l3 + 16)
    proto = np.int64(umem[l3 + 9])
    if (load16(umem, l3 + 6) & 0x1fff) != 0 or (umem[base] & 1) != 0:
        return V_DROP, refused
    if not unicast_v4(src) or not unicast_v4(dst):
        return V_DROP, refused
    if proto == IPPROTO_ICMP:
        l4 = l3 + ihl
        if l4 + 1 > ip_end:
            return V_DROP, refused
        icmp_type_in = np.int64(umem[l4])
        if (icmp_type_in == 3 or icmp_type_in == 4 or icmp_type_in == 5 or icmp_type_in == 11
                or icmp_type_in == 12):
            return V_DROP, refused
    reason, iface, nb = resolve_next_hop(st, src, counters)
    if reason != 0:
        return V_DROP, refused
    if not icmp_error_allowed(counters, now_ns):
        return V_DROP, refused
    quote = min(ip_end - l3, ICMP_ERROR_MAX_LEN - 28, chunk + FRAME_SIZE - (l3 + 28))
    for k in range(quote - 1, -1, -1):
        umem[l3 + 28 + k] = umem[l3 + k]
    node = st.node[0]
    write_ipv4_header(umem, l3, ICMP_ERROR_TOS, 28 + quote, 0, ICMP_ERROR_TTL, IPPROTO_ICMP,
                      from_addr, src)
    icmp = l3 + 20
    umem[icmp] = icmp_type
    umem[icmp + 1] = icmp_code
    store16(umem, icmp + 2, 0)
    store32(umem, icmp + 4, 0)
    store16(umem, icmp + 2, ~csum_fold(csum_sum_bytes(umem, icmp, icmp + 8 + quote, 0)) & 0xffff)
    neighbour = st.neighbours[nb]
    for k in range(6):
        umem[base + k] = neighbour.mac[k]
        umem[base + 6 + k] = node.iface_mac[iface, k]
    lens[i] = l3 + 28 + quote - base
    if icmp_type == ICMP_TIME_EXCEEDED:
        counters[CNT_ICMP_TIME_EXCEEDED] += 1
    else:
        counters[CNT_ICMP_UNREACHABLE] += 1
    return verdict_of_iface(iface), 0


# --- per frame ------------------------------------------------------------------------------

@packet_njit(inline="always")
def process_frame(umem, addrs, lens, i, ingress_iface, st, ft, counters, now_ns):
    """One frame through every stage; returns (verdict, drop reason)."""
    base = np.int64(addrs[i])
    length = np.int64(lens[i])
    chunk = base & FRAME_MASK
    if base < 0 or length < 0 or chunk + FRAME_SIZE > umem.shape[0] or base + length > chunk + FRAME_SIZE:
        return V_DROP, DROP_BAD_DESC
    end = base + length
    if length < 14:
        return V_DROP, DROP_TRUNCATED
    ethertype = load16(umem, base + 12)
    l3 = base + 14
    if ethertype == ETH_P_8021Q or ethertype == ETH_P_8021AD:
        return V_DROP, DROP_VLAN
    if ethertype == ETH_P_IPV6:
        return V_DROP, DROP_UNSUPPORTED
    if ethertype != ETH_P_IP:
        return V_DROP, DROP_NOT_OURS
    node_addr = np.int64(st.node[0].node_addr)
    decapsulated = False
    for _pass in range(2):
        if l3 + 20 > end:
            return V_DROP, DROP_TRUNCATED
        version_ihl = np.int64(umem[l3])
        if (version_ihl >> 4) != 4:
            return V_DROP, DROP_BAD_IP
        ihl = (version_ihl & 0xf) * 4
        if ihl < 20:
            return V_DROP, DROP_BAD_IP
        if l3 + ihl > end:
            return V_DROP, DROP_TRUNCATED
        total_len = load16(umem, l3 + 2)
        if total_len < ihl:
            return V_DROP, DROP_BAD_IP
        if l3 + total_len > end:
            return V_DROP, DROP_TRUNCATED
        if csum_fold(csum_sum_bytes(umem, l3, l3 + ihl, 0)) != 0xffff:
            return V_DROP, DROP_BAD_CSUM
        ip_end = l3 + total_len
        is_fragment = (load16(umem, l3 + 6) & 0x3fff) != 0
        proto = np.int64(umem[l3 + 9])
        src = load32(umem, l3 + 12)
        dst = load32(umem, l3 + 16)
        if (proto == IPPROTO_IPIP and not is_fragment and not decapsulated and dst == node_addr
                and ingress_iface == IFACE_TRANSPORT):
            inner = l3 + ihl
            if inner + 20 > ip_end:
                return V_DROP, DROP_TRUNCATED
            l2_len = l3 - base
            for k in range(l2_len - 1, -1, -1):
                umem[base + ihl + k] = umem[base + k]
            base = base + ihl
            end = ip_end
            l3 = base + l2_len
            addrs[i] = base
            lens[i] = end - base
            counters[CNT_DSR_DECAP] += 1
            decapsulated = True
            continue
        break
    if umem[l3 + 8] <= 1:
        return answer_icmp_error(umem, lens, i, base, l3, ihl, ip_end, chunk, st, counters, now_ns,
                                 ICMP_TIME_EXCEEDED, 0, np.int64(st.node[0].node_addr),
                                 DROP_TTL_EXCEEDED)
    l4 = l3 + ihl
    if is_fragment:
        if decapsulated:
            return V_DROP, DROP_FRAGMENT
        verdict, reason = bypass_stage(umem, base, l3, src, dst, proto, 0, 0, False, st, ft,
                                       counters, now_ns)
        if verdict != CONTINUE:
            return verdict, reason
        return V_DROP, DROP_FRAGMENT
    sport = np.int64(0)
    dport = np.int64(0)
    if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
        if proto == IPPROTO_TCP:
            if l4 + 20 > ip_end:
                return V_DROP, DROP_TRUNCATED
            data_offset = np.int64(umem[l4 + 12] >> 4) * 4
            if data_offset < 20 or l4 + data_offset > ip_end:
                return V_DROP, DROP_TRUNCATED
            tcp_flags = np.int64(umem[l4 + 13])
            csum_off = l4 + 16
        else:
            if l4 + 8 > ip_end:
                return V_DROP, DROP_TRUNCATED
            tcp_flags = np.int64(0)
            csum_off = l4 + 6
        sport = load16(umem, l4)
        dport = load16(umem, l4 + 2)
        complete_partial_checksum(umem, l4, ip_end, proto, src, dst, csum_off, counters)
        verdict, reason = conntrack_stage(umem, addrs, lens, i, base, l3, ip_end, l4, proto,
                                          csum_off, src, dst, sport, dport, tcp_flags, 0, chunk,
                                          st, ft, counters, now_ns)
        if verdict != CONTINUE:
            return verdict, reason
        verdict, reason = service_stage(umem, addrs, lens, i, base, l3, ip_end, l4, proto,
                                        csum_off, src, dst, sport, dport, tcp_flags, 0,
                                        decapsulated, ingress_iface, chunk, st, ft, counters,
                                        now_ns)
        if verdict != CONTINUE:
            return verdict, reason
    elif proto == IPPROTO_SCTP:
        if l4 + _sctp.COMMON_HEADER_LEN > ip_end:
            return V_DROP, DROP_TRUNCATED
        reason, sctp_chunks = _sctp.parse_chunks(umem, l4, ip_end)
        if reason != 0:
            return V_DROP, reason
        if not _sctp.verify_checksum(umem, l4, ip_end, counters):
            return V_DROP, DROP_SCTP_BAD_CRC
        sport = load16(umem, l4)
        dport = load16(umem, l4 + 2)
        verdict, reason = conntrack_stage(umem, addrs, lens, i, base, l3, ip_end, l4, proto,
                                          0, src, dst, sport, dport, 0, sctp_chunks, chunk,
                                          st, ft, counters, now_ns)
        if verdict != CONTINUE:
            return verdict, reason
        verdict, reason = service_stage(umem, addrs, lens, i, base, l3, ip_end, l4, proto,
                                        0, src, dst, sport, dport, 0, sctp_chunks,
                                        decapsulated, ingress_iface, chunk, st, ft, counters,
                                        now_ns)
        if verdict != CONTINUE:
            return verdict, reason
    elif proto == IPPROTO_ICMP:
        if l4 + 8 > ip_end:
            return V_DROP, DROP_TRUNCATED
        icmp_type = umem[l4]
        if icmp_type == 3 or icmp_type == 11 or icmp_type == 12:
            verdict, reason = icmp_error_stage(umem, base, l3, ihl, ip_end, l4, src, dst, st, ft,
                                               counters)
            if verdict != CONTINUE:
                return verdict, reason
    if decapsulated:
        return V_DROP, DROP_NOT_OURS
    verdict, reason = bypass_stage(umem, base, l3, src, dst, proto, sport, dport,
                                   proto == IPPROTO_TCP or proto == IPPROTO_UDP, st, ft, counters,
                                   now_ns)
    if verdict != CONTINUE:
        return verdict, reason
    return V_DROP, DROP_NOT_OURS


@packet_njit
def process_batch(umem, addrs, lens, n, ingress_iface, svc_tables, flow_tables, counters,
                  verdicts, now_ns):
    """Run frames 0..n-1 through the pipeline.

    Reads: umem frames, addrs/lens (uint64/uint32 descriptors), svc_tables (ServiceTables).
    Writes: the frames (in place, within their UMEM chunk), addrs/lens (frame start and length
    after encapsulation or decapsulation), flow_tables (FlowTables: conntrack, affinity),
    counters (uint64[XSKP_COUNTER_SLOTS]) and verdicts (int32, enum xskp_verdict) for 0..n-1.
    now_ns (uint64) is the caller's monotonic clock. Returns the number of frames processed.
    """
    n = min(np.int64(n), addrs.shape[0], lens.shape[0], verdicts.shape[0])
    if n <= 0:
        return 0
    if counters.shape[0] < COUNTER_SLOTS:
        for i in range(n):
            verdicts[i] = V_DROP
        return n
    now = np.uint64(now_ns)
    for i in range(n):
        verdict, reason = process_frame(umem, addrs, lens, i, ingress_iface, svc_tables,
                                        flow_tables, counters, now)
        if verdict == V_TX_TRANSPORT:
            counters[CNT_TX_TRANSPORT] += 1
            verdicts[i] = V_TX_TRANSPORT
        elif verdict == V_TX_GATEWAY:
            counters[CNT_TX_GATEWAY] += 1
            verdicts[i] = V_TX_GATEWAY
        else:
            verdicts[i] = V_DROP
            if 0 < reason < COUNTER_MAX:
                counters[reason] += 1
            else:
                counters[DROP_NOT_OURS] += 1
    return n
