"""The pipeline's tables: tuples of C-contiguous numpy arrays (layouts from native/xskproxy_abi.h)
built by make_* constructors, and the njit hash/insert/lookup functions that the control side
(writes) and the pipeline (reads) share. Nothing here does I/O; the njit functions never raise.

Byte order: every address and port in these tables is a HOST-order number (10.0.0.1 is
0x0a000001, port 80 is 80); MACs are 6 bytes in wire order. The pipeline reads frames with
explicit big-endian loads.

ServiceTables (one generation, built off to the side by control/translate.py, read-only to
the pipeline):
  frontends     struct xskp_frontend[pow2]   open addressing on (addr, port, proto), linear
                                             probing, at most half full; kind EMPTY = free.
                                             ClusterIPs, NodePorts on each node address, LB
                                             ingress IPs, externalIPs. Fill: insert_frontend.
  services      struct xskp_service[S]       one per Service port; service_id indexes it.
  backends      struct xskp_backend[B + 1]   index = backend id (stable across generations);
                                             id 0 is "none" and never used.
  maglev        uint32[R]                    backend ids; each service owns the slices
                                             [ring_offset, +ring_size) and
                                             [local_ring_offset, +local_ring_size).
  source_ranges struct xskp_source_range[N]  slices per service (loadBalancerSourceRanges).
  routes        struct xskp_route[K]         first node.route_count used, longest prefix first.
  neighbours    struct xskp_neighbour[pow2]  open addressing on (addr, iface), at most half
                                             full; in_use 0 = free. Fill: insert_neighbour.
  node          struct xskp_node[1]          node address, SNAT range, own MACs, generations.

FlowTables (per worker, mutable, one writer; dataplane/store.py may back them by mmap'd files):
  ct            struct xskp_ct_entry[pow2]        conntrack, two entries per flow (see
                                                  dataplane/_conntrack.py), probe window
                                                  XSKP_CT_MAX_PROBE.
  affinity      struct xskp_affinity_entry[pow2]  ClientIP affinity (client, service) ->
                                                  backend, probe window XSKP_CT_MAX_PROBE.
  flows         struct xskp_flow_v4[pow2 or 0]    the kernel fast path's flow table (shared by
                                                  every worker and the BPF programs when the
                                                  agent maps it; length 0: offload off). See
                                                  dataplane/_fastpath.py.
  fast_config   struct xskp_fast_config[1]        the fast path's switches (heartbeat).
  fast_state    FAST_STATE_DTYPE[1]               this worker's fast-path bookkeeping: owner
                                                  id, interface indexes, sweep position, how
                                                  many flow entries it holds.
  sweep_marks   uint64[ceil(flows / 64)]          one bit per flow slot this worker may own
                                                  (set at insert; the sweep looks only at marked
                                                  slots and unmarks those no longer its own).
  sweep_checks  SWEEP_CHECK_DTYPE[flows]          per flow slot, what the sweep's last full check
                                                  saw (dataplane/_fastpath.py).

Numba accepts both tuples as arguments (namedtuples of arrays); the field order above is the
tuple order.
"""
from collections import namedtuple

import numpy as np
from dataplane._jit import packet_njit

from dataplane import abi

FRONTEND_DTYPE = abi.dtype("struct xskp_frontend")
SERVICE_DTYPE = abi.dtype("struct xskp_service")
BACKEND_DTYPE = abi.dtype("struct xskp_backend")
SOURCE_RANGE_DTYPE = abi.dtype("struct xskp_source_range")
ROUTE_DTYPE = abi.dtype("struct xskp_route")
NEIGHBOUR_DTYPE = abi.dtype("struct xskp_neighbour")
NODE_DTYPE = abi.dtype("struct xskp_node")
CT_ENTRY_DTYPE = abi.dtype("struct xskp_ct_entry")
AFFINITY_ENTRY_DTYPE = abi.dtype("struct xskp_affinity_entry")
FLOW_V4_DTYPE = abi.dtype("struct xskp_flow_v4")
FAST_CONFIG_DTYPE = abi.dtype("struct xskp_fast_config")
# Userspace-only bookkeeping of one worker's share of the fast path (never read by BPF).
FAST_STATE_DTYPE = np.dtype([
    ("ifindex", np.uint32, (abi.lib.XSKP_IFACE_MAX,)),  # kernel ifindex per enum xskp_iface
    ("owner", np.uint32),                               # this worker's id in xskp_flow_v4.owner
    ("sweep_cursor", np.uint64),                        # next flow slot the sweep looks at
    ("sweep_last_ns", np.uint64),                       # when the sweep last ran
    ("partition", np.uint32),                           # this worker's index among `partitions`
    ("partitions", np.uint32),                          # workers sharing the flows (0, 1: none): a
                                                        # worker's SNAT ports p have
                                                        # p % partitions == partition
    ("owned_flows", np.uint64),                         # flow entries this worker held at the end of
                                                        # its last sweep pass, plus its inserts since
    ("pass_owned", np.uint64),                          # entries the current sweep pass found held
])

# Userspace-only, per flow slot: what the sweep's last full check of the entry there saw.
SWEEP_CHECK_DTYPE = np.dtype([
    ("seen_ns", np.uint64),       # the entry's last_seen_ns then (the BPF side moves it per packet)
    ("generation", np.uint32),    # node.generation (publishes) then
    ("skips", np.uint32),         # visits skipped since (SWEEP_CHECK_FORCE: check at the next one)
    ("tcp_flags", np.uint8),      # the entry's tcp_flags_seen then
])
SWEEP_CHECK_FORCE = 0xffffffff

ServiceTables = namedtuple(
    "ServiceTables",
    "frontends services backends maglev source_ranges routes neighbours node")
def _no_flows():
    """The fast-path fields of FlowTables when offload is off: an empty flow table."""
    return (np.zeros(0, FLOW_V4_DTYPE), np.zeros(1, FAST_CONFIG_DTYPE), np.zeros(1, FAST_STATE_DTYPE),
            np.zeros(1, np.uint64), np.zeros(1, SWEEP_CHECK_DTYPE))


FlowTables = namedtuple("FlowTables", "ct affinity flows fast_config fast_state sweep_marks sweep_checks",
                        defaults=_no_flows())

_FE_EMPTY = abi.lib.XSKP_FE_EMPTY
_SVC_DSR = abi.lib.XSKP_SVC_DSR
_SVC_AFFINITY_CLIENTIP = abi.lib.XSKP_SVC_AFFINITY_CLIENTIP
_SVC_ETP_LOCAL = abi.lib.XSKP_SVC_ETP_LOCAL
_SVC_ITP_LOCAL = abi.lib.XSKP_SVC_ITP_LOCAL
_SVC_SOURCE_RANGES = abi.lib.XSKP_SVC_SOURCE_RANGES
_FE_CLUSTER_IP = abi.lib.XSKP_FE_CLUSTER_IP
_FE_LOAD_BALANCER = abi.lib.XSKP_FE_LOAD_BALANCER
_FE_EXTERNAL_IP = abi.lib.XSKP_FE_EXTERNAL_IP
_BE_ALIVE = abi.lib.XSKP_BE_ALIVE
_BE_LOCAL = abi.lib.XSKP_BE_LOCAL
_ROUTE_BYPASS = abi.lib.XSKP_ROUTE_BYPASS


def next_pow2(n):
    """The smallest power of two >= max(n, 1)."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def make_service_tables(max_frontends, max_services, max_backends, max_ring, max_routes,
                        max_neighbours, max_source_ranges):
    """Empty ServiceTables sized for the given counts (hash tables get 2x, rounded to pow2)."""
    return ServiceTables(
        frontends=np.zeros(next_pow2(2 * max(max_frontends, 4)), FRONTEND_DTYPE),
        services=np.zeros(max(max_services, 1), SERVICE_DTYPE),
        backends=np.zeros(max(max_backends, 1) + 1, BACKEND_DTYPE),
        maglev=np.zeros(max(max_ring, 1), np.uint32),
        source_ranges=np.zeros(max(max_source_ranges, 1), SOURCE_RANGE_DTYPE),
        routes=np.zeros(max(max_routes, 1), ROUTE_DTYPE),
        neighbours=np.zeros(next_pow2(2 * max(max_neighbours, 4)), NEIGHBOUR_DTYPE),
        node=np.zeros(1, NODE_DTYPE),
    )


def make_flow_tables(ct_capacity, affinity_capacity, flow_capacity=0, ifindex=(0, 0), owner=0):
    """Empty FlowTables; capacities are rounded up to powers of two (ct >= XSKP_CT_MAX_PROBE).
    flow_capacity > 0 gives a private fast-path flow table (unit tests; the agent uses the BPF
    map's memory instead, see with_fast_path)."""
    ft = FlowTables(
        ct=np.zeros(next_pow2(max(ct_capacity, abi.lib.XSKP_CT_MAX_PROBE)), CT_ENTRY_DTYPE),
        affinity=np.zeros(next_pow2(max(affinity_capacity, abi.lib.XSKP_CT_MAX_PROBE)),
                          AFFINITY_ENTRY_DTYPE),
    )
    if flow_capacity:
        flows = np.zeros(next_pow2(max(flow_capacity, abi.lib.XSKP_FLOW_MAX_PROBE)), FLOW_V4_DTYPE)
        ft = with_fast_path(ft, flows, np.zeros(1, FAST_CONFIG_DTYPE), ifindex, owner)
    return ft


def with_fast_path(ft, flows, fast_config, ifindex, owner):
    """ft with the fast path's flow table and switches (e.g. the BPF maps' shared memory), the
    kernel ifindex of each enum xskp_iface interface and this worker's owner id."""
    if flows.shape[0] & (flows.shape[0] - 1):
        raise ValueError(f"flow table: {flows.shape[0]} entries is not a power of two")
    fast_config[0]["flow_mask"] = flows.shape[0] - 1
    fast_state = np.zeros(1, FAST_STATE_DTYPE)
    fast_state[0]["ifindex"][:] = ifindex
    fast_state[0]["owner"] = owner
    checks = np.zeros(flows.shape[0], SWEEP_CHECK_DTYPE)
    checks["skips"] = SWEEP_CHECK_FORCE                   # an adopted table's entries first
    return ft._replace(flows=flows, fast_config=fast_config, fast_state=fast_state,
                       sweep_marks=owned_flow_marks(flows, owner), sweep_checks=checks)


def owned_flow_marks(flows, owner):
    """FlowTables.sweep_marks for the entries of `flows` that `owner` holds now (an adopted table)."""
    marks = np.zeros(max(1, (flows.shape[0] + 63) // 64), np.uint64)
    slots = np.flatnonzero(((flows["flags"] & abi.lib.XSKP_FLOW_IN_USE) != 0) & (flows["owner"] == owner))
    np.bitwise_or.at(marks, slots >> 6, np.left_shift(np.uint64(1), (slots & 63).astype(np.uint64)))
    return marks


def with_partition(ft, partition, partitions):
    """ft for worker `partition` of `partitions`, among which tc spreads the flows (upcall mode):
    its SNAT ports are those p with p % partitions == partition, so that a reply to one reaches
    the worker that holds its flow."""
    if not 0 <= partition < max(partitions, 1):
        raise ValueError(f"partition: {partition} is not below {partitions}")
    fast_state = ft.fast_state.copy()
    fast_state[0]["partition"], fast_state[0]["partitions"] = partition, partitions
    return ft._replace(fast_state=fast_state)


def make_counters():
    """The pipeline's counter array: uint64[XSKP_COUNTER_SLOTS], indexed by drop reason,
    XSKP_CNT_* and XSKP_SLOT_*."""
    return np.zeros(abi.lib.XSKP_COUNTER_SLOTS, np.uint64)


def counters_by_name(counters):
    """{name: value} of every non-zero counter (drop reasons and XSKP_CNT_* outcomes)."""
    names = {}
    for name, value in abi.enum_members("XSKP_DROP_").items():
        if 0 < value < abi.lib.XSKP_DROP_REASON_MAX:
            names[value] = name
    for name, value in abi.enum_members("XSKP_CNT_").items():
        names[value] = name
    return {names[i]: int(c) for i, c in enumerate(counters) if c and i in names}


# --- hashing -------------------------------------------------------------------------------

@packet_njit(inline="always")
def mix64(x):
    """murmur3's 64-bit finalizer: a bijective mix of x (uint64)."""
    x = np.uint64(x)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xff51afd7ed558ccd)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xc4ceb9fe1a85ec53)
    x ^= x >> np.uint64(33)
    return x


@packet_njit(inline="always")
def hash_frontend(addr, port, proto):
    """Hash of a frontend key (host-order addr, port, proto) as uint64."""
    key = (np.uint64(addr) << np.uint64(32)) | (np.uint64(port) << np.uint64(8)) | np.uint64(proto)
    return mix64(key)


@packet_njit(inline="always")
def hash_neighbour(addr, iface):
    """Hash of a neighbour key (host-order addr, enum xskp_iface) as uint64."""
    return mix64((np.uint64(addr) << np.uint64(8)) | np.uint64(iface) | np.uint64(0x5a00000000000000))


@packet_njit(inline="always")
def hash_flow(src_addr, dst_addr, src_port, dst_port, proto):
    """Hash of a 5-tuple as uint64 (conntrack slot and Maglev ring position)."""
    a = (np.uint64(src_addr) << np.uint64(32)) | np.uint64(dst_addr)
    b = (np.uint64(src_port) << np.uint64(24)) | (np.uint64(dst_port) << np.uint64(8)) | np.uint64(proto)
    return mix64(a ^ mix64(b + np.uint64(0x9e3779b97f4a7c15)))


@packet_njit(inline="always")
def hash_client(client_addr, service_id):
    """Hash of an affinity key (client address, service id) as uint64."""
    return mix64((np.uint64(client_addr) << np.uint64(32)) ^ np.uint64(service_id)
                 ^ np.uint64(0x3c6ef372fe94f82b))


# --- frontends ----------------------------------------------------------------------------

@packet_njit
def insert_frontend(frontends, addr, port, proto, kind, service_id):
    """Add or replace the frontend (addr, port, proto) -> (kind, service_id).

    Writes one slot of frontends. Returns the slot index, or -1 when the table is full or kind
    is XSKP_FE_EMPTY. Keep the table at most half full (make_service_tables sizes it so).
    """
    if kind == _FE_EMPTY:
        return -1
    mask = np.uint64(frontends.shape[0] - 1)
    slot = hash_frontend(addr, port, proto) & mask
    for _ in range(frontends.shape[0]):
        fe = frontends[slot]
        if fe.kind == _FE_EMPTY or (fe.addr == addr and fe.port == port and fe.proto == proto):
            fe.addr = addr
            fe.port = port
            fe.proto = proto
            fe.kind = kind
            fe.service_id = service_id
            return np.int64(slot)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(-1)


@packet_njit
def fill_frontends(frontends, addrs, ports, protos, kinds, service_ids):
    """Insert every frontend row into an empty table (the control side's bulk build; here, next
    to insert_frontend, so that numba's cache of both is invalidated together). Returns how many
    did not fit."""
    failed = 0
    for i in range(addrs.shape[0]):
        if insert_frontend(frontends, addrs[i], ports[i], protos[i], kinds[i], service_ids[i]) < 0:
            failed += 1
    return failed


@packet_njit
def lookup_frontend(frontends, addr, port, proto):
    """Slot index of the frontend (addr, port, proto), or -1. Reads frontends only."""
    mask = np.uint64(frontends.shape[0] - 1)
    slot = hash_frontend(addr, port, proto) & mask
    for _ in range(frontends.shape[0]):
        fe = frontends[slot]
        if fe.kind == _FE_EMPTY:
            return np.int64(-1)
        if fe.addr == addr and fe.port == port and fe.proto == proto:
            return np.int64(slot)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(-1)


# --- neighbours ---------------------------------------------------------------------------

@packet_njit
def insert_neighbour(neighbours, addr, iface, mac):
    """Add or replace the resolved neighbour (addr, iface) -> mac (6 uint8).

    Writes one slot of neighbours. Returns the slot index, or -1 when the table is full.
    """
    mask = np.uint64(neighbours.shape[0] - 1)
    slot = hash_neighbour(addr, iface) & mask
    for _ in range(neighbours.shape[0]):
        nb = neighbours[slot]
        if nb.in_use == 0 or (nb.addr == addr and nb.iface == iface):
            nb.addr = addr
            nb.iface = iface
            nb.in_use = 1
            for i in range(6):
                nb.mac[i] = mac[i]
            return np.int64(slot)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(-1)


@packet_njit
def lookup_neighbour(neighbours, addr, iface):
    """Slot index of the neighbour (addr, iface), or -1. Reads neighbours only."""
    mask = np.uint64(neighbours.shape[0] - 1)
    slot = hash_neighbour(addr, iface) & mask
    for _ in range(neighbours.shape[0]):
        nb = neighbours[slot]
        if nb.in_use == 0:
            return np.int64(-1)
        if nb.addr == addr and nb.iface == iface:
            return np.int64(slot)
        slot = (slot + np.uint64(1)) & mask
    return np.int64(-1)


# --- routes -------------------------------------------------------------------------------

@packet_njit
def lookup_route(routes, route_count, addr):
    """Index of the first route (longest prefix first) containing addr, or -1."""
    n = min(route_count, routes.shape[0])
    for i in range(n):
        r = routes[i]
        if (np.uint32(addr) & r.mask) == r.prefix:
            return np.int64(i)
    return np.int64(-1)


def set_routes(service_tables, routes):
    """Fill the routes array from [(prefix, prefixlen, next_hop, iface, flags)], sorting longest
    prefix first, and set node.route_count. Host-order addresses. Python (control side)."""
    ordered = sorted(routes, key=lambda r: -r[1])
    if len(ordered) > service_tables.routes.shape[0]:
        raise ValueError(f"routes: {len(ordered)} entries exceed capacity "
                         f"{service_tables.routes.shape[0]}")
    for i, (prefix, prefixlen, next_hop, iface, flags) in enumerate(ordered):
        mask = (0xffffffff << (32 - prefixlen)) & 0xffffffff if prefixlen else 0
        r = service_tables.routes
        r["prefix"][i], r["mask"][i], r["next_hop"][i] = prefix & mask, mask, next_hop
        r["iface"][i], r["flags"][i] = iface, flags
    service_tables.node[0]["route_count"] = len(ordered)


# --- predicates (read flags through these, not bit tests) ------------------------------

@packet_njit(inline="always")
def svc_is_dsr(svc):
    return (svc.flags & _SVC_DSR) != 0


@packet_njit(inline="always")
def svc_has_affinity(svc):
    return (svc.flags & _SVC_AFFINITY_CLIENTIP) != 0


@packet_njit(inline="always")
def svc_etp_local(svc):
    return (svc.flags & _SVC_ETP_LOCAL) != 0


@packet_njit(inline="always")
def svc_itp_local(svc):
    return (svc.flags & _SVC_ITP_LOCAL) != 0


@packet_njit(inline="always")
def svc_has_source_ranges(svc):
    return (svc.flags & _SVC_SOURCE_RANGES) != 0


@packet_njit(inline="always")
def fe_is_external(kind):
    """NodePort, LoadBalancer ingress IP or externalIP (externalTrafficPolicy applies)."""
    return kind != _FE_CLUSTER_IP and kind != _FE_EMPTY


@packet_njit(inline="always")
def fe_allows_dsr(kind):
    """DSR applies to LoadBalancer ingress IPs and externalIPs (every node knows them)."""
    return kind == _FE_LOAD_BALANCER or kind == _FE_EXTERNAL_IP


@packet_njit(inline="always")
def be_is_alive(be):
    return (be.flags & _BE_ALIVE) != 0


@packet_njit(inline="always")
def be_is_local(be):
    return (be.flags & _BE_LOCAL) != 0


@packet_njit(inline="always")
def route_allows_bypass(route):
    return (route.flags & _ROUTE_BYPASS) != 0
