"""Translate: the cluster model + the node's network + config -> the pipeline's tables and the
steering maps' contents, one complete generation at a time. Never does I/O and never touches
a table a published generation uses (new rings go to free space of the ring arena).

Kubernetes semantics follow kube-proxy and Antrea (references in each function). The
Translator keeps caches between calls so that an unchanged Service is not rebuilt: its plans,
backend ids and Maglev rings carry over. Its outputs depend only on its inputs and on the
history of ids (backend and service ids are stable across generations, never reused while a
live generation may still refer to them). New Maglev rings are built on a helper thread (numba,
without the GIL) while planning goes on; that changes when they are built, never what they hold.

Byte order: the pipeline's tables hold host-order numbers (10.0.0.1 is 0x0a000001); the
steering contents hold the strings and ints that dataplane.xsk.SteeringProgram takes.
"""
import ipaddress
import logging
import socket
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from dataclasses import dataclass, field

import numpy as np

from control.model import AFFINITY_TIMEOUT_DEFAULT, AFFINITY_TIMEOUT_MAX
from dataplane import abi
from dataplane.maglev import backend_hash_keys_v4, build_maglev_rings, maglev_ring_size
from dataplane.tables import (
    BACKEND_DTYPE, FRONTEND_DTYPE, NEIGHBOUR_DTYPE, NODE_DTYPE, ROUTE_DTYPE, SERVICE_DTYPE,
    SOURCE_RANGE_DTYPE, ServiceTables, fill_frontends, insert_neighbour, next_pow2, set_routes,
)

log = logging.getLogger("xskproxy.translate")
inet_pton, AF_INET, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes

lib = abi.lib
PROTOCOL_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
# Every Service protocol is proxied: TCP and UDP in both tiers, SCTP in the userspace tier only
# (the pipeline tracks associations and redoes the CRC32c; the fast path never takes them).
PROXIED_PROTOCOLS = ("TCP", "UDP", "SCTP")
IPPROTO_IPIP = 4
ROLE_GATEWAY = lib.STEER_ROLE_GATEWAY
ROLE_TRANSPORT = lib.STEER_ROLE_TRANSPORT
ROLES_BOTH = ROLE_GATEWAY | ROLE_TRANSPORT
_BE_ALIVE, _BE_LOCAL, _BE_TERMINATING = lib.XSKP_BE_ALIVE, lib.XSKP_BE_LOCAL, lib.XSKP_BE_TERMINATING


# --- inputs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProxyOptions:
    """The options translate honours (antrea-agent.conf's antreaProxy section, plus ours)."""
    proxy_all: bool = False
    skip_services: tuple = ()             # "namespace/name" or a ClusterIP
    proxy_load_balancer_ips: bool = True
    default_load_balancer_mode: str = "nat"
    node_port_addresses: tuple = ()       # CIDRs; empty: every node address
    snat_port_range: tuple = (61000, 65535)
    node_name: str = ""
    transport_interface: str = ""
    gateway_interface: str = ""

    @classmethod
    def from_config(cls, config, node_name=None):
        """From control.config.Config (node_name overrides config.node_name, e.g. the host name)."""
        ap = config.antrea_proxy
        return cls(proxy_all=ap.proxy_all, skip_services=tuple(ap.skip_services),
                   proxy_load_balancer_ips=ap.proxy_load_balancer_ips,
                   default_load_balancer_mode=ap.default_load_balancer_mode,
                   node_port_addresses=tuple(ap.node_port_addresses),
                   snat_port_range=tuple(config.snat_port_range),
                   node_name=node_name or config.node_name,
                   transport_interface=config.transport_interface,
                   gateway_interface=config.gateway_interface)


@dataclass(frozen=True)
class _NodeContext:
    """What every Service's plan depends on besides the Service and its slices. When it
    changes, every Service is re-planned (rings whose backends did not change are kept)."""
    options: ProxyOptions
    node_name: str
    zone: object                          # this node's topology zone, or None
    node_port_addrs: tuple                # host-order IPv4 addresses serving NodePorts
    node_addr_of: tuple                   # sorted (node name, host-order InternalIP) pairs


# --- outputs -----------------------------------------------------------------------------

@dataclass
class SteeringChanges:
    """What to change in the steering maps to go from the previous translation to this one.
    Keys as dataplane.xsk.SteeringProgram takes them: (address str, port, protocol number)."""
    add_frontends: dict = field(default_factory=dict)      # (addr, port, proto) -> roles
    remove_frontends: list = field(default_factory=list)   # (addr, port, proto)
    add_backends: dict = field(default_factory=dict)       # (addr, port, proto) -> roles
    remove_backends: list = field(default_factory=list)
    add_prefixes: dict = field(default_factory=dict)       # "cidr" -> roles (0: excluded)
    remove_prefixes: list = field(default_factory=list)
    set_node_addrs: dict = field(default_factory=dict)     # addr -> (snat_min, snat_max, roles)
    remove_node_addrs: list = field(default_factory=list)

    def empty(self):
        return not any((self.add_frontends, self.remove_frontends, self.add_backends,
                        self.remove_backends, self.add_prefixes, self.remove_prefixes,
                        self.set_node_addrs, self.remove_node_addrs))


@dataclass(frozen=True)
class SteeringContents:
    """The complete contents of the steering maps (for a first load or a resync)."""
    frontends: dict
    backends: dict
    prefixes: dict
    node_addrs: dict


def apply_backend_steering(program, changes):
    """The backend additions of SteeringChanges, before the tables that use those backends are
    published: a new flow's first reply (a SYN-ACK within microseconds) must find its backend
    steered. Until then no flow of ours goes to such a backend, so the few kernel-path replies
    this takes early would be taken a moment later anyway. apply_steering_changes then skips them."""
    for key, roles in changes.add_backends.items():
        program.add_backend(*key, roles)
    changes.add_backends.clear()


def apply_steering_changes(program, changes):
    """Apply SteeringChanges to a dataplane.xsk.SteeringProgram: removals first, then additions.
    (With apply_backend_steering, the only functions here that act on something outside: the
    program passed in.)"""
    for key in changes.remove_frontends:
        program.remove_frontend(*key)
    for key in changes.remove_backends:
        program.remove_backend(*key)
    for cidr in changes.remove_prefixes:
        program.remove_prefix(cidr)
    for addr in changes.remove_node_addrs:
        program.remove_node_address(addr)
    for key, roles in changes.add_frontends.items():
        program.add_frontend(*key, roles)
    for key, roles in changes.add_backends.items():
        program.add_backend(*key, roles)
    for cidr, roles in changes.add_prefixes.items():
        program.add_prefix(cidr, roles)
    for addr, (lo, hi, roles) in changes.set_node_addrs.items():
        program.set_node_address(addr, lo, hi, roles)


def steering_changes_between(old, new):
    """SteeringChanges turning SteeringContents `old` into `new` (e.g. after an agent restart,
    from what the maps hold to what they should hold)."""
    changes = SteeringChanges()
    for name, add, remove in (("frontends", changes.add_frontends, changes.remove_frontends),
                              ("backends", changes.add_backends, changes.remove_backends),
                              ("prefixes", changes.add_prefixes, changes.remove_prefixes),
                              ("node_addrs", changes.set_node_addrs, changes.remove_node_addrs)):
        before, after = getattr(old, name), getattr(new, name)
        remove.extend(sorted(k for k in before if k not in after))
        add.update({k: v for k, v in after.items() if before.get(k) != v})
    return changes


@dataclass
class Translation:
    """One generation's table contents plus what changed in the steering maps."""
    generation: int
    tables: ServiceTables
    steering: SteeringChanges
    service_names: dict           # service id -> "namespace/name:port/protocol"
    stats: dict                   # counts: services, service_ports, backends, rebuilt, ...


# --- stable ids --------------------------------------------------------------------------

class StableIdAllocator:
    """Ids for keys that stay the same while the key is in use. A released id is reused only
    after every generation up to the one that released it has retired (reclaim), oldest first,
    so a conntrack entry holding an old id sees it dead for as long as possible."""

    def __init__(self, first_id=1):
        self.first_id = first_id
        self.ids = {}                       # key -> id
        self.next_id = first_id             # high-water mark
        self._pending = deque()             # (released in generation, id)
        self._free = deque()                # reusable ids, oldest release first

    def acquire(self, key):
        """The id of key, allocating one if key is new. Returns (id, is_new)."""
        existing = self.ids.get(key)
        if existing is not None:
            return existing, False
        if self._free:
            new_id = self._free.popleft()
        else:
            new_id = self.next_id
            self.next_id += 1
        self.ids[key] = new_id
        return new_id, True

    def reserve(self, ids):
        """Before any acquire: give keys the ids they had ({key: id}); conflicting entries
        (an id or key twice, an id below first_id) are ignored. Returns the keys reserved.
        Ids in between become free."""
        taken = set(self.ids.values())
        reserved = set()
        for key, wanted in sorted(ids.items(), key=lambda kv: kv[1]):
            if wanted < self.first_id or wanted in taken or key in self.ids:
                continue
            self.ids[key] = wanted
            taken.add(wanted)
            reserved.add(key)
        high = max(taken, default=self.first_id - 1) + 1
        if high > self.next_id:
            self._free.extend(i for i in range(self.next_id, high) if i not in taken)
            self.next_id = high
        return reserved

    def release(self, key, generation):
        """key is no longer used from `generation` on."""
        released = self.ids.pop(key)
        self._pending.append((generation, released))
        return released

    def reclaim(self, oldest_in_use):
        """Make ids released in generations <= oldest_in_use reusable."""
        while self._pending and self._pending[0][0] <= oldest_in_use:
            self._free.append(self._pending.popleft()[1])

    def copy(self):
        """An allocator in the same state (ids in use, released ids and when, free ids)."""
        other = StableIdAllocator(self.first_id)
        other.ids, other.next_id = dict(self.ids), self.next_id
        other._pending, other._free = deque(self._pending), deque(self._free)
        return other

    def __len__(self):
        return len(self.ids)


# --- the Maglev ring arena -----------------------------------------------------------------

class RingArena:
    """One uint32 array holding every Service's rings, shared by generations. A ring is written
    once into free space and never changed; a released ring's space is reused only once every
    generation that may read it has retired. Growing copies into a new, larger array: older
    generations keep the old one."""

    def __init__(self, capacity=1 << 16):
        self.array = np.zeros(capacity, dtype=np.uint32)
        self._free = [(0, capacity)]        # sorted, merged (offset, size) extents
        self._pending = []                  # (released in generation, offset, size)
        self.used = 0

    def allocate(self, ring):
        """Copy `ring` (uint32 backend ids) into free space; returns its offset."""
        size = int(ring.size)
        if size == 0:
            return 0
        for i, (offset, extent) in enumerate(self._free):
            if extent >= size:
                break
        else:
            self._grow(size)
            i, (offset, extent) = len(self._free) - 1, self._free[-1]
        if extent == size:
            del self._free[i]
        else:
            self._free[i] = (offset + size, extent - size)
        self.array[offset:offset + size] = ring
        self.used += size
        return offset

    def reserve(self, size):
        """Grow now, once, if `size` slots would not fit in one free extent (before allocating
        many rings: growing ring by ring copies the array again and again)."""
        if size > max((extent for _, extent in self._free), default=0):
            self._grow(size)

    def release(self, offset, size, generation):
        if size:
            self._pending.append((generation, offset, size))

    def reclaim(self, oldest_in_use):
        """Free the rings released in generations <= oldest_in_use."""
        keep, freed = [], []
        for entry in self._pending:
            (freed if entry[0] <= oldest_in_use else keep).append(entry)
        if not freed:
            return
        self._pending = keep
        extents = sorted(self._free + [(offset, size) for _, offset, size in freed])
        merged = []
        for offset, size in extents:
            if merged and merged[-1][0] + merged[-1][1] == offset:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((offset, size))
        self._free = merged
        self.used -= sum(size for _, _, size in freed)

    def _grow(self, needed):
        old = self.array.size
        new_size = max(2 * old, old + needed)
        array = np.zeros(new_size, dtype=np.uint32)
        array[:old] = self.array
        self.array = array
        if self._free and self._free[-1][0] + self._free[-1][1] == old:
            offset, size = self._free.pop()
            self._free.append((offset, size + new_size - old))
        else:
            self._free.append((old, new_size - old))


class _RingBatch:
    """The Maglev rings one translate needs. Collected while Services are planned and built in
    chunks by dataplane.maglev.build_maglev_rings on a helper thread: it releases the GIL, so
    the second core builds rings while this one plans (a full sync of 5,000 Services: ~1 s of
    ring building off the critical path). The last chunk is built here; place() then copies
    each chunk into the arena and gives every plan its (offset, size)."""

    CHUNK_KEYS = 16384                    # backends per chunk handed to the helper thread
    _helper = None
    _helper_lock = threading.Lock()

    def __init__(self):
        self._addrs, self._ports, self._ids, self._starts, self._sizes, self._owners = [], [], [], [0], [], []
        self._chunks = []                 # (future or (slots, starts), owners, sizes)

    def add(self, plan, attribute, keys, ids, size):
        """Schedule the ring over backend `keys` ((addr, port, proto), unique) holding `ids`, of
        `size` slots; place() sets plan.<attribute> to its (offset, size)."""
        for addr, port, _ in keys:
            self._addrs.append(addr)
            self._ports.append(port)
        self._ids.extend(ids)
        self._starts.append(len(self._addrs))
        self._sizes.append(size)
        self._owners.append((plan, attribute))
        if len(self._addrs) >= self.CHUNK_KEYS:
            self._flush(self._helper_executor().submit)

    def place(self, arena):
        """Wait for every chunk, copy each into the arena; returns the plans given rings."""
        self._flush(None)
        arena.reserve(sum(sum(sizes) for _, _, sizes in self._chunks))
        plans = []
        for result, owners, sizes in self._chunks:
            slots, starts = result.result() if hasattr(result, "result") else result
            base = arena.allocate(slots)
            for (plan, attribute), start, size in zip(owners, starts.tolist(), sizes):
                setattr(plan, attribute, (base + start, size))
                plans.append(plan)
        return plans

    def scheduled_plans(self):
        """Every plan given a ring to build by this batch, placed or not."""
        for _, owners, _ in self._chunks:
            yield from (plan for plan, _ in owners)
        yield from (plan for plan, _ in self._owners)

    def _flush(self, submit):
        if not self._sizes:
            return
        args = (backend_hash_keys_v4(self._addrs, self._ports), np.array(self._starts, dtype=np.int64),
                np.array(self._sizes, dtype=np.int64), np.array(self._ids, dtype=np.uint32))
        result = submit(build_maglev_rings, *args) if submit else build_maglev_rings(*args)
        self._chunks.append((result, self._owners, self._sizes))
        self._addrs, self._ports, self._ids, self._starts, self._sizes, self._owners = [], [], [], [0], [], []

    @staticmethod
    def warm_up():
        """Load the compiled ring builder now (~0.5 s on first use in a process), not in the
        first sync."""
        build_maglev_rings(np.array([1], np.uint64), np.array([0, 1]), np.array([3]), np.array([1], np.uint32))

    @classmethod
    def _helper_executor(cls):
        with cls._helper_lock:
            if cls._helper is None:
                cls._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maglev")
            return cls._helper


# --- per Service port plans -----------------------------------------------------------------

@dataclass
class _PortPlan:
    """Everything one Service port contributes to a generation."""
    key: tuple                    # (namespace, name, port name, protocol)
    service_id: int
    flags: int
    affinity_timeout_s: int
    frontends: tuple              # (addr, port, proto, kind, roles), host-order addr
    backends: dict                # (addr, port, proto) -> (node_addr, flags), all referenced
    cluster_keys: tuple           # backend keys of the cluster ring, sorted
    local_keys: tuple             # backend keys of the local ring, sorted
    source_ranges: tuple          # (net, mask)
    ring: tuple = (0, 0)          # (offset, size) in the arena
    local_ring: tuple = (0, 0)


@dataclass
class _ServiceEntry:
    service: object
    slices: tuple
    plans: dict                   # port key -> _PortPlan


def _slice_name(s):
    return s.name


def _ip4(text):
    """Host-order int of an IPv4 address string, or None for anything else."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, TypeError):
        return None


def _ip4_str(value):
    return socket.inet_ntop(socket.AF_INET, int(value).to_bytes(4, "big"))


def _first_ip4(addresses):
    for a in addresses:
        v = _ip4(a)
        if v is not None:
            return v
    return None


def skip_reason(service, options):
    """Why translate leaves a Service to the kernel/another proxy, or None (it is proxied).

    As kube-proxy (its informers' label selector): a service-proxy-name label, whatever its
    value, means another proxy owns it; the headless label leaves it alone, ClusterIP or not.
    ExternalName and headless Services have no VIP. As Antrea's skipServices: "namespace/name"
    or a ClusterIP.
    """
    if service.service_proxy_name is not None:
        return "service-proxy-name"
    if service.headless_label:
        return "headless"
    if service.type == "ExternalName":
        return "ExternalName"
    if not service.cluster_ips:
        return "headless"
    skip = options.skip_services
    if skip and (f"{service.namespace}/{service.name}" in skip
                 or any(ip in skip for ip in service.cluster_ips)):
        return "skipServices"
    return None


def _slice_port(slice_, service_port):
    """The EndpointSlice port serving a Service port (matched by name and protocol, as
    kube-proxy does), or None."""
    for p in slice_.ports:
        if p.name == service_port.name and p.protocol == service_port.protocol:
            return p
    return None


def _topology_filtered(ready, node_name, zone):
    """The ready endpoints this node uses by their hints (kube-proxy's topologyModeFromHints and
    availableForTopology): the ones hinted for this node when every ready endpoint has node
    hints and one names this node (PreferSameNode); else the ones hinted for this node's zone
    when every ready endpoint has zone hints and one names the zone (PreferSameZone, which
    PreferClose also produces); else all. The hints, not spec.trafficDistribution, decide: the
    EndpointSlice controller writes them from it."""
    if all(e.hint_nodes for _, e in ready):
        same_node = [item for item in ready if node_name in item[1].hint_nodes]
        if same_node:
            return same_node
    if zone and all(e.hint_zones for _, e in ready):
        same_zone = [item for item in ready if zone in item[1].hint_zones]
        if same_zone:
            return same_zone
    return ready


def _categorize(endpoints, node_name, zone):
    """kube-proxy's CategorizeEndpoints for one port: (cluster, local) lists of endpoints.

    Cluster: ready endpoints, filtered by topology hints (_topology_filtered); when none is
    ready, the serving and terminating ones (hints ignored). Local: this node's ready
    endpoints, else its serving+terminating ones.
    """
    ready = [e for e in endpoints if e[1].ready]
    fallback = [e for e in endpoints if e[1].serving and e[1].terminating]
    cluster = _topology_filtered(ready, node_name, zone) if ready else fallback
    local_ready = [e for e in ready if e[1].node_name == node_name]
    local = local_ready or [e for e in fallback if e[1].node_name == node_name]
    return cluster, local


def _source_ranges_v4(cidrs):
    out = []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError:
            continue
        if net.version == 4:
            out.append((int(net.network_address), int(net.netmask)))
    return tuple(sorted(set(out)))


def _plan_service(service, slices, ctx):
    """The port plans of one proxied Service (no ids, no rings yet): port key -> _PortPlan."""
    opts = ctx.options
    mode = service.load_balancer_mode or opts.default_load_balancer_mode
    base_flags = 0
    if mode == "dsr":
        base_flags |= lib.XSKP_SVC_DSR
    affinity = 0
    if service.session_affinity == "ClientIP":
        base_flags |= lib.XSKP_SVC_AFFINITY_CLIENTIP
        affinity = service.affinity_timeout_seconds or AFFINITY_TIMEOUT_DEFAULT
        affinity = min(max(affinity, 1), AFFINITY_TIMEOUT_MAX)
    if service.external_traffic_policy == "Local":
        base_flags |= lib.XSKP_SVC_ETP_LOCAL
    if service.internal_traffic_policy == "Local":
        base_flags |= lib.XSKP_SVC_ITP_LOCAL
    ranges = ()
    if service.load_balancer_source_ranges:
        base_flags |= lib.XSKP_SVC_SOURCE_RANGES
        ranges = _source_ranges_v4(service.load_balancer_source_ranges)

    external_roles = ROLES_BOTH if opts.proxy_all else ROLE_GATEWAY
    node_addr_of = dict(ctx.node_addr_of)
    # a slice labelled headless or for another proxy is one kube-proxy's selector never sees
    ipv4_slices = [s for s in slices if s.address_type == "IPv4" and s.proxy_ignored_label is None]
    plans = {}
    for sp in service.ports:
        if sp.protocol not in PROXIED_PROTOCOLS:
            continue
        proto = PROTOCOL_NUMBERS[sp.protocol]
        frontends = []
        for ip in service.cluster_ips:
            addr = _ip4(ip)
            if addr is not None:
                frontends.append((addr, sp.port, proto, lib.XSKP_FE_CLUSTER_IP, ROLE_GATEWAY))
        if opts.proxy_all and sp.node_port and service.type in ("NodePort", "LoadBalancer"):
            for addr in ctx.node_port_addrs:
                frontends.append((addr, sp.node_port, proto, lib.XSKP_FE_NODE_PORT, ROLES_BOTH))
        for ip in service.external_ips:
            addr = _ip4(ip)
            if addr is not None:
                frontends.append((addr, sp.port, proto, lib.XSKP_FE_EXTERNAL_IP, external_roles))
        if opts.proxy_load_balancer_ips and service.type == "LoadBalancer":
            for ip in service.load_balancer_ips:
                addr = _ip4(ip)
                if addr is not None:
                    frontends.append((addr, sp.port, proto, lib.XSKP_FE_LOAD_BALANCER,
                                      external_roles))
        # Endpoints of this port, deduplicated by (address, port) across slices.
        seen = {}
        for s in ipv4_slices:
            port = _slice_port(s, sp)
            if port is None or not port.port:
                continue
            target = port.port
            for ep in s.endpoints:
                addresses = ep.addresses
                if not addresses:
                    continue
                try:
                    addr = from_bytes(inet_pton(AF_INET, addresses[0]), "big")
                except OSError:
                    continue
                seen.setdefault((addr, target, proto), ep)
        endpoints = sorted(seen.items())          # keys are unique: endpoints never compared
        cluster, local = _categorize(endpoints, ctx.node_name, ctx.zone)
        backends = {}
        node_name = ctx.node_name
        # Every listed endpoint stays a backend, so flows it has keep going (kube-proxy leaves
        # their conntrack entries too); one that new flows must not pick (terminating, or not
        # ready while others are) is flagged TERMINATING and is in no ring.
        chosen = None if len(cluster) == len(endpoints) else {key for key, _ in cluster + local}
        get_node_addr = node_addr_of.get
        for key, ep in endpoints:
            ep_node = ep.node_name
            flags = _BE_ALIVE | _BE_LOCAL if ep_node == node_name else _BE_ALIVE
            if ep.terminating or (chosen is not None and key not in chosen):
                flags |= _BE_TERMINATING
            # inet_pton accepted the text, so it is canonical dotted decimal (glibc refuses
            # leading zeros): the steering key can use it as it is.
            backends[key] = (get_node_addr(ep_node, 0), flags, ep.addresses[0])
        # DSR: the backend node picks among its own endpoints for decapsulated flows
        needs_local = bool(base_flags & (lib.XSKP_SVC_ETP_LOCAL | lib.XSKP_SVC_ITP_LOCAL
                                         | lib.XSKP_SVC_DSR))
        key = (service.namespace, service.name, sp.name, sp.protocol)
        plans[key] = _PortPlan(
            key=key, service_id=0, flags=base_flags, affinity_timeout_s=affinity,
            frontends=tuple(frontends), backends=backends,
            cluster_keys=tuple(k for k, _ in cluster),
            local_keys=tuple(k for k, _ in local) if needs_local else (),
            source_ranges=ranges)
    return plans


def _copy_rows(rows):
    """A copy of a contiguous structured array, made as bytes: numpy copies structured dtypes
    field by field, ~10x slower (4 MB of backends: 6.7 ms against 0.7 ms)."""
    out = np.empty_like(rows)
    out.view(np.uint8)[...] = rows.view(np.uint8)
    return out


def _identity_diff(new, old):
    """[(key, new value or None, old value or None)] for the keys whose value is not the same
    object in both dicts. Sources keep the key and value objects (and the order) of unchanged
    entries, so the common case pairs the items in order without hashing a key."""
    if len(new) == len(old):
        out = []
        for (key, value), (old_key, old_value) in zip(new.items(), old.items()):
            if key is not old_key:
                break
            if value is not old_value:
                out.append((key, value, old_value))
        else:
            return out
    get = old.get
    out = [(key, value, get(key)) for key, value in new.items() if get(key) is not value]
    out += [(key, None, value) for key, value in old.items() if key not in new]
    return out


def _merged_backend_info(variants):
    """The row of a backend (one endpoint address and port) that Service ports see differently
    ({row info: references}): a ready endpoint of one Service and a draining (or, by topology
    hints, unchosen) one of another. It drains (TERMINATING) only when every reference drains it,
    so no Service's affinity to it is refused while another sends it new flows; node address and
    locality come from the smallest info (they agree in a consistent cluster). The same whatever
    order the references came in, as a fresh translate gives it."""
    base = min(variants)
    flags = base[2] & ~_BE_TERMINATING
    if all(info[2] & _BE_TERMINATING for info in variants):
        flags |= _BE_TERMINATING
    return (base[0], base[1], flags, base[3])


def _changed_maps(changes):
    """The additions of SteeringChanges, map by map (frontends, backends, prefixes, node addresses)."""
    return changes.add_frontends, changes.add_backends, changes.add_prefixes, changes.set_node_addrs


def _removed_maps(changes):
    """The removal lists of SteeringChanges, in the order of _changed_maps."""
    return changes.remove_frontends, changes.remove_backends, changes.remove_prefixes, changes.remove_node_addrs


class Translator:
    """model + node network -> Translation, keeping what did not change between calls.

    translate() is not thread-safe: call it from the control thread only. `oldest_in_use` is
    the oldest generation a worker may still read (dataplane.store.GenerationStore's
    oldest_in_use()); ids and ring space released after it are not reused before it retires.
    """

    def __init__(self, options, fib_generation_base=0):
        self.options = options
        self.generation = 0
        self.fib_generation = fib_generation_base  # start above adopted conntrack entries' MACs
        self._reserved_backends = set()
        self._reserved_services = set()
        self.backend_ids = StableIdAllocator(first_id=1)
        self.service_ids = StableIdAllocator(first_id=1)
        self.arena = RingArena()
        self._rings = _RingBatch()               # rings scheduled by the translate under way
        _RingBatch.warm_up()
        self._entries = {}                       # service key -> _ServiceEntry
        self._ctx = None
        self._backend_refs = {}                  # backend key -> reference count
        self._backend_variants = {}              # backend key -> {row info: references}, when they differ
        self._backend_rows = np.zeros(1024, BACKEND_DTYPE)   # written in batches (_write_rows)
        self._service_rows = np.zeros(1024, SERVICE_DTYPE)
        self._backend_info = {}                  # id -> (addr, port, flags, node_addr)
        self._service_info = {}                  # id -> (flags, affinity, ring off/size, local off/size)
        self._dirty_backend_ids = set()
        self._dirty_service_ids = set()
        self._service_names = {}
        self._frontend_owners = {}               # (addr, port, proto) -> {port key: (kind, sid, roles)}
        self._steer_frontends = {}
        self._steer_backends = {}                # what the maps should hold
        self._reported_backends = {}             # what earlier translations reported
        self._dirty_backend_keys = set()
        self._ranged_plans = {}                  # port key -> plan with source ranges
        self._dsr_plans = set()
        self._frontend_extra = {}
        self._steering_frontends_dirty = False
        self._steer_prefixes = {}
        self._steer_node_addrs = {}
        self._previous_tables = None
        self._frontends_dirty = True
        self._network_inputs = None
        self._last_services = None               # the last state's dicts (copies), for identity
        self._last_slices = None
        self._slice_index = {}                   # service key -> keys of its slices (in _last_slices)
        self._skipped = set()
        self._replan_all = False
        self._pending_changes = None
        self._inherited_steering = None          # a successor's: what its predecessors may have steered
        self._transport_addr = 0
        self._fib_parts = None

    # -- public ------------------------------------------------------------------------------

    def translate(self, state, network=None, oldest_in_use=None):
        """Translation of `state` (ClusterState) on a node whose network is `network`
        (control.netlink.NodeNetwork or None: addresses from the Node object, no FIB)."""
        generation = self.generation + 1
        if oldest_in_use is None:
            oldest_in_use = self.generation       # only the last published one is read
        self.arena.reclaim(oldest_in_use)
        self.backend_ids.reclaim(oldest_in_use)
        self.service_ids.reclaim(oldest_in_use)
        # Steering changes accumulate until a translate completes, so a failed attempt loses none.
        if self._pending_changes is None:
            self._pending_changes = SteeringChanges()
        changes = self._pending_changes
        self._rings = _RingBatch()                # nothing left over from a failed attempt

        network_inputs = (state.nodes, network)
        if self._network_inputs is not None and self._network_inputs == network_inputs:
            ctx, network_changed = self._ctx, False   # the common case: only Services changed
        else:
            ctx, network_changed = self._context(state, network), True
        if ctx != self._ctx:
            self._ctx = ctx
            self._replan_all = True               # until a translate completes
            for entry in self._entries.values():
                entry.service = None              # re-plan every Service, keep equal rings
        everything = self._replan_all or self._last_services is None
        candidates, slice_changes = self._changed_services(state, everything)
        slices_by_service, slice_index = self._slices_by_service(state, candidates, slice_changes)

        try:
            rebuilt = self._rebuild_services(state, candidates, slices_by_service, ctx, generation)
            for plan in self._rings.place(self.arena):
                self._write_service_info(plan)
        except BaseException:
            self._drop_unplaced_rings()
            raise
        skipped = len(self._skipped)
        # Remembered only now: a translate that raised part-way finds the same candidates again.
        self._last_services = dict(state.services)
        self._last_slices = dict(state.endpoint_slices)
        if slice_changes is None:
            self._slice_index = slice_index
        else:
            for service, keys in slice_index.items():
                if keys:
                    self._slice_index[service] = keys
                else:
                    self._slice_index.pop(service, None)
        self._replan_all = False

        for key in self._reserved_backends:
            if key not in self._backend_refs:
                self.backend_ids.release(key, generation)
        self._reserved_backends.clear()
        if self._reserved_services:
            planned = {k for e in self._entries.values() for k in e.plans}
            for key in self._reserved_services - planned:
                self.service_ids.release(key, generation)
            self._reserved_services.clear()
        if network_changed:
            self._network_parts(state, network, ctx, changes)
            self._network_inputs = network_inputs
        self._dsr_frontend(changes)
        frontends_dirty = (self._frontends_dirty or self._steering_frontends_dirty
                           or self._previous_tables is None)
        tables = self._assemble(generation, changes)
        self._flush_steering(changes, frontends_dirty)
        if self._inherited_steering is not None:
            self._remove_inherited_steering(changes)
        self._steering_frontends_dirty = False
        self.generation = generation
        stats = {"services": len(self._entries), "skipped_services": skipped,
                 "service_ports": len(self.service_ids), "backends": len(self.backend_ids),
                 "rebuilt_services": rebuilt, "frontends": len(self._frontend_owners),
                 "ring_slots": self.arena.used, "ring_arena_slots": int(self.arena.array.size)}
        self._pending_changes = None
        return Translation(generation, tables, changes, dict(self._service_names), stats)

    def adopt_backend_ids(self, ids):
        """Before the first translate: keep the ids that adopted conntrack entries refer to
        ({(host-order addr, port, proto): id}, from dataplane.store.backend_ids_in_use), so
        flows that survived a restart still find their backend. Ids not claimed by the first
        translation are released then."""
        if self.generation:
            raise RuntimeError("adopt_backend_ids: only before the first translate")
        self._reserved_backends |= self.backend_ids.reserve(ids)

    def adopt_service_ids(self, ids):
        """Before the first translate: keep the previous agent's service ids
        ({(namespace, name, port name, protocol): id}, saved with dataplane.store.save_id_map),
        which adopted conntrack and affinity entries hold. Unclaimed ones are released."""
        if self.generation:
            raise RuntimeError("adopt_service_ids: only before the first translate")
        self._reserved_services |= self.service_ids.reserve(ids)

    def successor(self, unapplied=None):
        """A Translator with none of this one's caches, to translate everything anew after a
        translate, or the publishing of its result, failed: whatever the failure left in the
        incremental state goes with it. It keeps what must outlive a Translator: the backend and
        service ids (flows hold them; ids of keys its first translation does not claim are
        released then, none is reused before its generation retires), the generation and FIB
        generation numbering. Its first translation reports the whole steering contents as
        additions, and as removals whatever this one may have steered that is no longer wanted
        (including `unapplied`, SteeringChanges the caller could not apply in full)."""
        other = Translator(self.options, fib_generation_base=self.fib_generation)
        other.generation = self.generation
        other.backend_ids, other.service_ids = self.backend_ids.copy(), self.service_ids.copy()
        other._reserved_backends = set(other.backend_ids.ids)
        other._reserved_services = set(other.service_ids.ids)
        other._inherited_steering = self._steering_maybe_applied(unapplied)
        return other

    def _steering_maybe_applied(self, unapplied):
        """(frontends, backends, prefixes, node addresses): the keys of every steering entry the
        maps may hold after this Translator's translations, applied in full or in part."""
        maybe = (set(self._steer_frontends), set(self._steer_backends) | set(self._reported_backends),
                 set(self._steer_prefixes), set(self._steer_node_addrs))
        for changes in (self._pending_changes, unapplied):
            if changes is not None:
                for keys, added, removed in zip(maybe, _changed_maps(changes), _removed_maps(changes)):
                    keys.update(added)
                    keys.update(removed)
        if self._inherited_steering is not None:
            for keys, inherited in zip(maybe, self._inherited_steering):
                keys.update(inherited)
        return maybe

    def _remove_inherited_steering(self, changes):
        """A successor's first translation: remove what its predecessors may have steered and is
        not wanted now (everything wanted is reported as added: nothing was reported before)."""
        wanted = (self._steer_frontends, self._steer_backends, self._steer_prefixes, self._steer_node_addrs)
        for inherited, current, removed in zip(self._inherited_steering, wanted, _removed_maps(changes)):
            listed = set(removed)
            removed.extend(sorted(k for k in inherited if k not in current and k not in listed))
        self._inherited_steering = None

    def service_id_map(self):
        """{(namespace, name, port name, protocol): service id} now (to save for a restart)."""
        return dict(self.service_ids.ids)

    def steering_contents(self):
        """What the steering maps should hold now (copies)."""
        return SteeringContents(dict(self._steer_frontends), dict(self._steer_backends),
                                dict(self._steer_prefixes), dict(self._steer_node_addrs))

    # -- Services ----------------------------------------------------------------------------

    def _rebuild_services(self, state, candidates, slices_by_service, ctx, generation):
        """Plan the candidate Services again where they changed; returns how many were rebuilt.
        Their new rings are only scheduled (self._rings) until translate places them."""
        rebuilt = 0
        for key in sorted(candidates):
            service = state.services.get(key)
            if service is None or skip_reason(service, self.options):
                if service is not None:
                    self._skipped.add(key)
                else:
                    self._skipped.discard(key)
                if key in self._entries:
                    self._replace_service(key, None, generation)
                continue
            self._skipped.discard(key)
            slices = tuple(sorted(slices_by_service.get(key, ()), key=_slice_name))
            entry = self._entries.get(key)
            if entry is not None and (entry.service is service or entry.service == service) \
                    and entry.slices == slices:
                continue
            try:
                plans = _plan_service(service, slices, ctx)
            except Exception:                     # a model the converter let through; keep going
                log.exception("event=translate_service_failed service=%s/%s", *key)
                continue
            self._replace_service(key, _ServiceEntry(service, slices, plans), generation)
            rebuilt += 1
        return rebuilt

    def _drop_unplaced_rings(self):
        """After a translate failed part-way: the Services given new rings are planned again by
        the next translate. A ring placed meanwhile is valid and is reused then; one never
        placed becomes an empty ring over no backends, so the next plan builds it anew."""
        for plan in self._rings.scheduled_plans():
            if plan.ring is None:
                plan.ring, plan.cluster_keys = (0, 0), ()
            if plan.local_ring is None:
                plan.local_ring, plan.local_keys = (0, 0), ()
            entry = self._entries.get(plan.key[:2])
            if entry is not None:
                entry.service = None

    def _changed_services(self, state, everything):
        """(keys of the Services that may have changed since the last call, the slices that did
        as [(key, new or None, old or None)]): by identity of the model objects (sources keep
        the object of an unchanged Kubernetes object); the caller then compares by value."""
        if everything:
            return set(state.services) | set(self._entries) | self._skipped, None
        candidates = {key for key, _, _ in _identity_diff(state.services, self._last_services)}
        slice_changes = _identity_diff(state.endpoint_slices, self._last_slices)
        for _, new, old in slice_changes:
            for sl in (new, old):
                if sl is not None:
                    candidates.add(sl.service_key)
        return candidates, slice_changes

    def _slices_by_service(self, state, candidates, slice_changes):
        """{service key: [EndpointSlice]} for the candidates, and the slice index to keep once
        the translate completes: from the index and the changes, or (everything) a full walk."""
        slices = state.endpoint_slices
        index = {}
        if slice_changes is None:
            for key, sl in slices.items():
                index.setdefault(sl.service_key, set()).add(key)
            kept = {}          # the walk is the whole index: a Service it did not find has no slice
        else:
            for key, new, old in slice_changes:
                if old is not None:
                    self._slice_keys(index, old.service_key).discard(key)
                if new is not None:
                    self._slice_keys(index, new.service_key).add(key)
            kept = self._slice_index   # the index before the changes, for Services they left alone
        found = {}
        for service in candidates:
            keys = index.get(service, kept.get(service, ()))
            if keys:
                found[service] = [slices[k] for k in keys]
        return found, index

    def _slice_keys(self, index, service):
        """index's set of slice keys for `service`, started from the kept index's (a copy)."""
        keys = index.get(service)
        if keys is None:
            keys = index[service] = set(self._slice_index.get(service, ()))
        return keys

    def _context(self, state, network):
        opts = self.options
        node = state.nodes.get(opts.node_name)
        addresses = []
        if network is not None:
            addresses = [a.address for a in network.addresses]
        if not addresses and node is not None:
            addresses = list(node.internal_ips())
        nets = [ipaddress.ip_network(c, strict=False) for c in opts.node_port_addresses]
        node_port_addrs = []
        for a in addresses:
            v = _ip4(a)
            if v is None:
                continue
            if nets and not any(ipaddress.ip_address(a) in n for n in nets):
                continue
            node_port_addrs.append(v)
        node_addr_of = []
        for name, n in state.nodes.items():
            v = _first_ip4(n.internal_ips())
            if v is not None:
                node_addr_of.append((name, v))
        return _NodeContext(options=opts, node_name=opts.node_name,
                            zone=node.zone if node is not None else None,
                            node_port_addrs=tuple(sorted(set(node_port_addrs))),
                            node_addr_of=tuple(sorted(node_addr_of)))

    def _replace_service(self, key, entry, generation):
        """Swap a Service's plans: acquire ids and rings of the new ones, release the old ones."""
        old = self._entries.pop(key, None)
        old_plans = old.plans if old is not None else {}
        new_plans = entry.plans if entry is not None else {}
        for port_key, plan in new_plans.items():
            self._add_plan(plan, old_plans.get(port_key))
        for port_key, plan in old_plans.items():
            self._remove_plan(plan, new_plans.get(port_key), generation)
        if entry is not None:
            self._entries[key] = entry

    def _add_plan(self, plan, previous):
        sid, _ = self.service_ids.acquire(plan.key)
        plan.service_id = sid
        self._acquire_backends(plan.backends)
        pending = self._ring_for(plan, "ring", plan.cluster_keys, previous.cluster_keys if previous else None,
                                 previous.ring if previous else None)
        pending |= self._ring_for(plan, "local_ring", plan.local_keys,
                                  previous.local_keys if previous else None,
                                  previous.local_ring if previous else None)
        if not pending:
            self._write_service_info(plan)
        self._service_names[sid] = "{}/{}:{}/{}".format(*plan.key)
        self._ranged_plans.pop(plan.key, None)
        if plan.flags & lib.XSKP_SVC_SOURCE_RANGES:
            self._ranged_plans[plan.key] = plan
        self._dsr_plans.discard(plan.key)
        if plan.flags & lib.XSKP_SVC_DSR:
            self._dsr_plans.add(plan.key)
        old_frontends = set(previous.frontends) if previous else set()
        if set(plan.frontends) != old_frontends or (previous and previous.service_id != sid):
            if previous:
                self._drop_frontends(previous)
            for addr, port, proto, kind, roles in plan.frontends:
                self._frontend_owners.setdefault((addr, port, proto), {})[plan.key] = (kind, sid, roles)
            self._frontends_dirty = True

    def _remove_plan(self, plan, replacement, generation):
        if replacement is None:
            self._drop_frontends(plan)
            self._frontends_dirty = True
            self.service_ids.release(plan.key, generation)
            self._service_info[plan.service_id] = (0, 0, 0, 0, 0, 0)
            self._dirty_service_ids.add(plan.service_id)
            self._service_names.pop(plan.service_id, None)
            self._ranged_plans.pop(plan.key, None)
            self._dsr_plans.discard(plan.key)
        if replacement is None or replacement.ring != plan.ring:
            self.arena.release(*plan.ring, generation)
        if replacement is None or replacement.local_ring != plan.local_ring:
            self.arena.release(*plan.local_ring, generation)
        for bkey, (node_addr, flags, text) in plan.backends.items():
            self._release_backend(bkey, (bkey[0], bkey[1], flags, node_addr), text, generation)

    def _drop_frontends(self, plan):
        for addr, port, proto, _, _ in plan.frontends:
            owners = self._frontend_owners.get((addr, port, proto))
            if owners is not None:
                owners.pop(plan.key, None)
                if not owners:
                    del self._frontend_owners[(addr, port, proto)]

    def _ring_for(self, plan, attribute, keys, previous_keys, previous_ring):
        """Set plan.<attribute> to the ring over backend `keys`: the previous one if they are the
        same backends (ids are stable, so the same ids), none without backends; else schedule a
        new one in self._rings (plan.<attribute> is None until placed) and return True."""
        if previous_ring is not None and previous_keys == keys:
            setattr(plan, attribute, previous_ring)
        elif not keys:
            setattr(plan, attribute, (0, 0))
        else:
            setattr(plan, attribute, None)
            size = maglev_ring_size(len(keys), previous=previous_ring[1] if previous_ring else 0)
            self._rings.add(plan, attribute, keys, map(self.backend_ids.ids.__getitem__, keys), size)
            return True
        return False

    def _write_service_info(self, plan):
        self._service_info[plan.service_id] = (plan.flags, plan.affinity_timeout_s) + plan.ring + plan.local_ring
        self._dirty_service_ids.add(plan.service_id)

    # -- backends ----------------------------------------------------------------------------

    def _acquire_backends(self, backends):
        """Take a reference on each of a plan's backends ({key: (node_addr, flags, address text)}),
        giving new ones an id; a backend whose row changes is marked for _write_rows and for
        steering. One loop with everything local: it runs 250,000 times in a full sync."""
        refs, id_of, acquire = self._backend_refs, self.backend_ids.ids, self.backend_ids.acquire
        infos, dirty_ids = self._backend_info, self._dirty_backend_ids
        steer, dirty_keys = self._steer_backends, self._dirty_backend_keys
        variants = self._backend_variants
        for key, (node_addr, flags, text) in backends.items():
            count = refs.get(key)
            info = (key[0], key[1], flags, node_addr)
            if count:
                refs[key] = count + 1
                bid = id_of[key]
                shared = variants.get(key)
                if shared is None:
                    if infos[bid] == info:
                        continue
                    shared = variants[key] = {infos[bid]: count}   # the first reference that differs
                shared[info] = shared.get(info, 0) + 1
                info = _merged_backend_info(shared)
                if infos[bid] == info:
                    continue
            else:
                refs[key] = 1
                bid = acquire(key)[0]             # new, or an id adopted from a previous agent
            infos[bid] = info
            dirty_ids.add(bid)
            roles = ROLE_GATEWAY if info[2] & _BE_LOCAL else ROLE_TRANSPORT
            steer_key = (text, key[1], key[2])
            if steer.get(steer_key) != roles:
                steer[steer_key] = roles
                dirty_keys.add(steer_key)

    def _release_backend(self, key, info, text, generation):
        """Drop a plan's reference to backend `key`, which it saw as row `info`: the row follows
        the references left (see _merged_backend_info); the last one releases the id."""
        count = self._backend_refs[key] - 1
        if count:
            self._backend_refs[key] = count
            shared = self._backend_variants.get(key)
            if shared is None:
                return
            left = shared[info] - 1
            if left:
                shared[info] = left
            else:
                del shared[info]
            if len(shared) == 1:
                del self._backend_variants[key]
                info = next(iter(shared))
            else:
                info = _merged_backend_info(shared)
            bid = self.backend_ids.ids[key]
            if self._backend_info[bid] != info:
                self._backend_info[bid] = info
                self._dirty_backend_ids.add(bid)
                roles = ROLE_GATEWAY if info[2] & _BE_LOCAL else ROLE_TRANSPORT
                steer_key = (text, key[1], key[2])
                if self._steer_backends.get(steer_key) != roles:
                    self._steer_backends[steer_key] = roles
                    self._dirty_backend_keys.add(steer_key)
            return
        del self._backend_refs[key]
        self._backend_variants.pop(key, None)
        bid = self.backend_ids.release(key, generation)
        addr, port, _, node_addr = self._backend_info[bid]
        self._backend_info[bid] = (addr, port, 0, node_addr)  # not ALIVE; address kept
        self._dirty_backend_ids.add(bid)
        steer_key = (_ip4_str(key[0]), key[1], key[2])
        self._steer_backends.pop(steer_key, None)
        self._dirty_backend_keys.add(steer_key)

    def _write_rows(self, name, info, dirty, fields, count):
        """Write the dirty rows of a master array (grown to `count` rows) in one go."""
        rows = getattr(self, name)
        if count > rows.size:
            grown = np.zeros(next_pow2(count), rows.dtype)
            grown[:rows.size] = rows
            rows = grown
            setattr(self, name, grown)
        if not dirty:
            return False
        ids = np.fromiter(dirty, dtype=np.int64, count=len(dirty))
        values = np.fromiter(chain.from_iterable(map(info.__getitem__, ids.tolist())), dtype=np.int64,
                             count=len(ids) * len(fields)).reshape(len(ids), len(fields))
        for column, field_name in enumerate(fields):
            rows[field_name][ids] = values[:, column]
        dirty.clear()
        return True

    # -- node network ------------------------------------------------------------------------

    def _network_parts(self, state, network, ctx, changes):
        """Routes, neighbours, node constants and the prefix/node-address steering."""
        opts = self.options
        links = {l.name: l for l in network.links} if network is not None else {}
        transport, gateway = links.get(opts.transport_interface), links.get(opts.gateway_interface)
        iface_of = {}
        if transport is not None:
            iface_of[transport.index] = lib.XSKP_IFACE_TRANSPORT
        if gateway is not None:
            iface_of[gateway.index] = lib.XSKP_IFACE_GATEWAY
        transport_addr = None
        if network is not None and transport is not None:
            transport_addr = _first_ip4(a.address for a in network.addresses
                                        if a.ifindex == transport.index)
        if transport_addr is None:
            transport_addr = dict(ctx.node_addr_of).get(ctx.node_name, 0)
        local = state.nodes.get(ctx.node_name)
        local_cidrs = [ipaddress.ip_network(c, strict=False) for c in (local.pod_cidrs if local else ())]
        local_cidrs = [c for c in local_cidrs if c.version == 4]
        remote_cidrs = [ipaddress.ip_network(c, strict=False)
                        for name, n in state.nodes.items() if name != ctx.node_name
                        for c in n.pod_cidrs]
        remote_cidrs = [c for c in remote_cidrs if c.version == 4]
        pod_cidrs = local_cidrs + remote_cidrs

        routes, neighbours, prefixes = [], [], {}
        for e in (network.fib if network is not None else ()):
            iface = iface_of.get(e.ifindex)
            net = ipaddress.ip_network(e.prefix, strict=False)
            if iface is None or net.version != 4:
                continue
            bypass = any(net.subnet_of(c) for c in pod_cidrs)
            route_flags = lib.XSKP_ROUTE_BYPASS if bypass else 0
            if e.next_hop_mac is None:      # connected: each destination is its own next hop
                routes.append((int(net.network_address), net.prefixlen, 0, iface, route_flags))
                continue
            hop = (_ip4(e.next_hop) if e.next_hop else None) or int(net.network_address)
            routes.append((int(net.network_address), net.prefixlen, hop or 0, iface, route_flags))
            neighbours.append((hop, iface, bytes.fromhex(e.next_hop_mac.replace(":", ""))))
            # Netfilter bypass steering: remote Pod CIDRs arriving from local Pods, resolved
            # local Pods arriving from the transport. Only what the FIB can forward.
            if not bypass:
                continue
            if iface == lib.XSKP_IFACE_TRANSPORT and any(net.subnet_of(c) for c in remote_cidrs):
                prefixes[str(net)] = ROLE_GATEWAY
            elif iface == lib.XSKP_IFACE_GATEWAY and any(net.subnet_of(c) for c in local_cidrs):
                prefixes[str(net)] = ROLE_TRANSPORT
        if network is not None:
            for a in network.addresses:               # never steer the node's own addresses
                v = _ip4(a.address)
                if v is not None and any(ipaddress.ip_address(a.address) in c for c in pod_cidrs):
                    prefixes[f"{a.address}/32"] = 0

        macs = [bytes(6), bytes(6)]
        if transport is not None and transport.mac:
            macs[lib.XSKP_IFACE_TRANSPORT] = bytes.fromhex(transport.mac.replace(":", ""))
        if gateway is not None and gateway.mac:
            macs[lib.XSKP_IFACE_GATEWAY] = bytes.fromhex(gateway.mac.replace(":", ""))
        transport_mtu = transport.mtu if transport is not None else 0
        fib_parts = (tuple(routes), tuple(neighbours), tuple(macs), transport_addr, transport_mtu)
        if fib_parts != self._fib_parts:
            self._fib_parts = fib_parts
            self.fib_generation += 1
        self._transport_addr = transport_addr

        # Node addresses are the kernel's (the steering program passes them) except the SNAT
        # range of our transport address: this node's other addresses (a kernel-masqueraded
        # flow's replies) and the other Nodes' (their SNATed flows' replies, which our local
        # backends send and the kernel routes).
        lo, hi = opts.snat_port_range
        node_addrs = {}
        for _, addr in ctx.node_addr_of:
            node_addrs[_ip4_str(addr)] = (0, 0, ROLES_BOTH)
        for a in (network.addresses if network is not None else ()):
            if _ip4(a.address) is not None:
                node_addrs[a.address] = (0, 0, ROLES_BOTH)
        if transport_addr:
            node_addrs[_ip4_str(transport_addr)] = (lo, hi, ROLES_BOTH)
        self._diff_into(self._steer_prefixes, prefixes, changes.add_prefixes, changes.remove_prefixes)
        self._diff_into(self._steer_node_addrs, node_addrs, changes.set_node_addrs,
                        changes.remove_node_addrs)

    def _dsr_frontend(self, changes):
        """DSR: other nodes send IPIP to this node for its local backends: steer it in."""
        extra = {}
        if self._transport_addr and self._dsr_plans:
            extra[(_ip4_str(self._transport_addr), 0, IPPROTO_IPIP)] = ROLE_TRANSPORT
        if extra != self._frontend_extra:
            self._frontend_extra = extra
            self._steering_frontends_dirty = True

    @staticmethod
    def _diff_into(current, wanted, add, remove):
        for k in sorted(k for k in current if k not in wanted):
            remove.append(k)
            add.pop(k, None)
            del current[k]
        for k, v in wanted.items():
            if current.get(k) != v:
                add[k] = v
                current[k] = v

    # -- assembly ----------------------------------------------------------------------------

    def _assemble(self, generation, changes):
        prev = self._previous_tables
        if self._frontends_dirty or prev is None:
            rows = sorted(self._frontend_owners.items())
            n = len(rows)
            addrs = np.empty(n, np.uint32)
            ports = np.empty(n, np.uint16)
            protos = np.empty(n, np.uint8)
            kinds = np.empty(n, np.uint8)
            sids = np.empty(n, np.uint32)
            for i, ((addr, port, proto), owners) in enumerate(rows):
                kind, sid, _ = owners[min(owners)]    # a clash (same IP:port twice): one wins
                addrs[i], ports[i], protos[i], kinds[i], sids[i] = addr, port, proto, kind, sid
            frontends = np.zeros(next_pow2(2 * max(n, 4)), FRONTEND_DTYPE)
            fill_frontends(frontends, addrs, ports, protos, kinds, sids)
        else:
            frontends = prev.frontends
        backend_count = max(self.backend_ids.next_id, 1)
        changed = self._write_rows("_backend_rows", self._backend_info, self._dirty_backend_ids,
                                   ("addr", "port", "flags", "node_addr"), backend_count)
        if changed or prev is None or prev.backends.shape[0] != backend_count:
            backends = _copy_rows(self._backend_rows[:backend_count])
        else:
            backends = prev.backends
        service_count = max(self.service_ids.next_id, 1)
        self._write_rows("_service_rows", self._service_info, self._dirty_service_ids,
                         ("flags", "affinity_timeout_s", "ring_offset", "ring_size",
                          "local_ring_offset", "local_ring_size"), service_count)
        services = _copy_rows(self._service_rows[:service_count])
        ranges = []
        for _, plan in sorted(self._ranged_plans.items()):
            row = services[plan.service_id]
            row["source_ranges_offset"], row["source_ranges_count"] = len(ranges), len(plan.source_ranges)
            ranges.extend(plan.source_ranges)
        source_ranges = np.zeros(max(len(ranges), 1), SOURCE_RANGE_DTYPE)
        for i, (net, mask) in enumerate(ranges):
            source_ranges[i]["net"], source_ranges[i]["mask"] = net, mask

        routes_spec, neighbour_spec, macs, transport_addr, transport_mtu = self._fib_parts
        if prev is not None and prev.node[0]["fib_generation"] == self.fib_generation:
            routes, neighbours = prev.routes, prev.neighbours
            route_count = int(prev.node[0]["route_count"])
        else:
            routes = np.zeros(max(len(routes_spec), 1), ROUTE_DTYPE)
            neighbours = np.zeros(next_pow2(2 * max(len(neighbour_spec), 4)), NEIGHBOUR_DTYPE)
            holder = ServiceTables(None, None, None, None, None, routes, neighbours,
                                   np.zeros(1, NODE_DTYPE))
            set_routes(holder, list(routes_spec))
            route_count = int(holder.node[0]["route_count"])
            for addr, iface, mac in neighbour_spec:
                insert_neighbour(neighbours, addr, iface, np.frombuffer(mac, np.uint8))
        node = np.zeros(1, NODE_DTYPE)
        node[0]["node_addr"] = transport_addr or 0
        node[0]["snat_port_min"], node[0]["snat_port_max"] = self.options.snat_port_range
        node[0]["iface_mac"] = np.frombuffer(b"".join(macs), np.uint8).reshape(2, 6)
        # DSR clients' segments are tunnelled (IPIP, 20 bytes) to this node: MTU - 60
        node[0]["dsr_mss"] = transport_mtu - 60 if transport_mtu >= 576 else 0
        node[0]["generation"] = generation
        node[0]["fib_generation"] = self.fib_generation
        node[0]["route_count"] = route_count
        tables = ServiceTables(frontends=frontends, services=services, backends=backends,
                               maglev=self.arena.array, source_ranges=source_ranges,
                               routes=routes, neighbours=neighbours, node=node)
        self._previous_tables = tables
        self._frontends_dirty = False
        return tables

    def _flush_steering(self, changes, frontends_dirty):
        if frontends_dirty:
            wanted = {}
            for (addr, port, proto), owners in self._frontend_owners.items():
                roles = 0
                for _, _, r in owners.values():
                    roles |= r
                wanted[(_ip4_str(addr), port, proto)] = roles
            wanted.update(self._frontend_extra)
            self._diff_into(self._steer_frontends, wanted, changes.add_frontends,
                            changes.remove_frontends)
        # Backends changed in place as they were acquired and released: report only those.
        if not self._reported_backends:           # nothing reported yet (a first translate)
            self._reported_backends = dict(self._steer_backends)
            changes.add_backends.update(self._steer_backends)
            self._dirty_backend_keys.clear()
        for k in self._dirty_backend_keys:
            roles = self._steer_backends.get(k)
            if roles is None:
                if self._reported_backends.pop(k, None) is not None:
                    changes.remove_backends.append(k)
                    changes.add_backends.pop(k, None)
            elif self._reported_backends.get(k) != roles:
                self._reported_backends[k] = roles
                changes.add_backends[k] = roles
        self._dirty_backend_keys.clear()


# --- reading tables back (tests, the CLI's `services` dump) --------------------------------

_FLAG_NAMES = (("XSKP_SVC_DSR", "dsr"), ("XSKP_SVC_AFFINITY_CLIENTIP", "affinity"),
               ("XSKP_SVC_ETP_LOCAL", "etp-local"), ("XSKP_SVC_ITP_LOCAL", "itp-local"),
               ("XSKP_SVC_SOURCE_RANGES", "source-ranges"))
_KIND_NAMES = {lib.XSKP_FE_CLUSTER_IP: "ClusterIP", lib.XSKP_FE_NODE_PORT: "NodePort",
               lib.XSKP_FE_LOAD_BALANCER: "LoadBalancer", lib.XSKP_FE_EXTERNAL_IP: "ExternalIP"}
_PROTO_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}


def describe_tables(tables, service_names):
    """The Service side of a generation as plain data, keyed by "namespace/name:port/protocol":
    flags, affinity timeout, frontends ("ClusterIP 10.96.0.10:80"), the backends of the
    cluster ring and of the local ring with their slot counts ({"10.1.0.5:8080": slots}),
    source ranges. Reads the arrays only."""
    out = {}
    by_service = {}
    for fe in tables.frontends[tables.frontends["kind"] != lib.XSKP_FE_EMPTY]:
        text = "{} {}:{}/{}".format(_KIND_NAMES.get(int(fe["kind"]), fe["kind"]),
                                    _ip4_str(fe["addr"]), int(fe["port"]),
                                    _PROTO_NAMES.get(int(fe["proto"]), int(fe["proto"])))
        by_service.setdefault(int(fe["service_id"]), []).append(text)

    backend_addrs, backend_ports = tables.backends["addr"], tables.backends["port"]

    def ring_members(offset, size):
        ids, counts = np.unique(tables.maglev[offset:offset + size], return_counts=True)
        # whole columns, not a record per backend: 10x faster at 250,000 backends
        return {f"{_ip4_str(addr)}:{port}": count for addr, port, count in
                zip(backend_addrs[ids].tolist(), backend_ports[ids].tolist(), counts.tolist())}

    for sid, name in sorted(service_names.items()):
        row = tables.services[sid]
        flags = int(row["flags"])
        ranges = tables.source_ranges[int(row["source_ranges_offset"]):
                                      int(row["source_ranges_offset"]) + int(row["source_ranges_count"])]
        out[name] = {
            "service_id": sid,
            "flags": sorted(n for c, n in _FLAG_NAMES if flags & getattr(lib, c)),
            "affinity_timeout_s": int(row["affinity_timeout_s"]),
            "frontends": sorted(by_service.get(sid, [])),
            "backends": ring_members(int(row["ring_offset"]), int(row["ring_size"])),
            "local_backends": ring_members(int(row["local_ring_offset"]), int(row["local_ring_size"])),
            "source_ranges": [str(ipaddress.ip_network((int(r["net"]), bin(int(r["mask"])).count("1"))))
                              for r in ranges],
        }
    return out
