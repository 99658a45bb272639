"""The node's network as the dataplane needs it: links, addresses, routes, neighbours (pyroute2),
watched for changes, and a pure function from them to FIB entries for the translate step.

Reading and watching touch netlink; fib_from_net_state and next_hops are pure (tests feed them
hand-made state). The one change xskproxy makes to the node's network is NeighbourKeeper's:
kernel-managed neighbour entries for the next hops it transmits to, because traffic it takes
off the kernel path no longer makes the kernel resolve them (Cilium keeps its next hops the
same way); and, in upcall mode, one veth pair per served interface (below).
"""
import ipaddress
import logging
import select
import socket
import threading
from dataclasses import dataclass
from typing import NamedTuple, Optional

log = logging.getLogger("xskproxy.netlink")

MAIN_TABLE = 254
RTN_UNICAST = 1
IFF_UP = 0x1
# neighbour states (NUD_*) that carry a MAC the kernel itself would use (its NUD_VALID but
# NOARP). DELAY and PROBE belong here: an entry nobody confirms (xskproxy's traffic never does)
# cycles REACHABLE -> STALE -> DELAY -> PROBE -> REACHABLE, and the FIB must not flap with it.
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_PERMANENT = 0x80
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    up: bool


@dataclass(frozen=True)
class Address:
    ifindex: int
    address: str
    prefixlen: int

    @property
    def family(self):
        return 6 if ":" in self.address else 4


@dataclass(frozen=True)
class Route:
    dst: str                        # prefix, "10.2.0.0/24"; "0.0.0.0/0" for default
    ifindex: int
    gateway: Optional[str] = None   # None: directly connected
    table: int = MAIN_TABLE
    type: int = RTN_UNICAST


@dataclass(frozen=True)
class Neighbour:
    ifindex: int
    address: str
    mac: Optional[str]
    state: int                      # NUD_* bits

    @property
    def usable(self):
        return bool(self.state & NUD_USABLE) and bool(self.mac) and self.mac != "00:00:00:00:00:00"


@dataclass(frozen=True)
class NetState:
    """One read of the node's network; tuples sorted so equal networks compare equal."""
    links: tuple = ()
    addresses: tuple = ()
    routes: tuple = ()
    neighbours: tuple = ()

    def link(self, name):
        return next((l for l in self.links if l.name == name), None)

    def link_by_index(self, index):
        return next((l for l in self.links if l.index == index), None)

    def addresses_of(self, name):
        link = self.link(name)
        return tuple(a for a in self.addresses if link is not None and a.ifindex == link.index)


class FibEntry(NamedTuple):
    """Where a destination prefix goes: out of `ifindex` to `next_hop_mac`, from `src_mac`.
    A connected prefix has no next hop and no MAC: each destination is its own next hop, and
    its host entry (when resolved) carries the MAC."""
    prefix: str
    ifindex: int
    next_hop_mac: Optional[str]
    src_mac: str
    next_hop: Optional[str]         # the gateway, or the neighbour itself for host entries
    mtu: int


def _route_dst(attrs, msg, family):
    dst = attrs.get("RTA_DST")
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    return f"{dst}/{msg['dst_len']}"


def read_net_state(ipr):
    """NetState from an open pyroute2 IPRoute (IPv4 and IPv6; main-table unicast routes only)."""
    links = []
    for msg in ipr.get_links():
        links.append(Link(index=msg["index"], name=msg.get("ifname") or "", mac=msg.get("address") or "",
                          mtu=msg.get("mtu") or 0, up=bool(msg["flags"] & IFF_UP)))
    addresses = [Address(ifindex=m["index"], address=m.get("address"), prefixlen=m["prefixlen"])
                 for m in ipr.get_addr() if m.get("address")]
    routes = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=MAIN_TABLE):
            if msg["type"] != RTN_UNICAST:
                continue
            attrs = dict(msg["attrs"])
            oif, gateway = attrs.get("RTA_OIF"), attrs.get("RTA_GATEWAY")
            if oif is None and "RTA_MULTIPATH" in attrs:     # ECMP: the first next hop only
                hops = attrs["RTA_MULTIPATH"]
                if hops:
                    hop = hops[0]
                    oif = hop["oif"]
                    gateway = dict(hop.get("attrs", ())).get("RTA_GATEWAY")
            if oif is None:
                continue
            routes.append(Route(dst=_route_dst(attrs, msg, family), ifindex=oif, gateway=gateway,
                                table=attrs.get("RTA_TABLE", msg["table"]), type=msg["type"]))
    neighbours = [Neighbour(ifindex=m["ifindex"], address=m.get("dst"), mac=m.get("lladdr"), state=m["state"])
                  for m in ipr.get_neighbours() if m.get("dst")]
    return NetState(links=tuple(sorted(links, key=lambda l: l.index)),
                    addresses=tuple(sorted(addresses, key=lambda a: (a.ifindex, a.address))),
                    routes=tuple(sorted(routes, key=lambda r: (r.dst, r.ifindex))),
                    neighbours=tuple(sorted(neighbours, key=lambda n: (n.ifindex, n.address))))


def read_net_state_in(netns=None):
    """NetState of a network namespace (None: the current one)."""
    from pyroute2 import IPRoute
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        return read_net_state(ipr)


def fib_from_net_state(net, interfaces=None):
    """FIB entries for routes out of `interfaces` (names; None: all up links but loopback).

    A route via a gateway gives one entry for its prefix if the gateway's neighbour entry is
    usable (REACHABLE, STALE, DELAY, PROBE or PERMANENT); a connected route gives an entry for
    its prefix without MAC and one host entry (/32, /128) per usable neighbour inside it.
    Sorted by family, then longest prefix first, so the first match is the longest-prefix match.
    """
    by_index = {l.index: l for l in net.links}
    if interfaces is None:
        wanted = {l.index for l in net.links if l.up and l.name != "lo"}
    else:
        names = set(interfaces)
        wanted = {l.index for l in net.links if l.up and l.name in names}
    neighbours = {(n.ifindex, n.address): n for n in net.neighbours if n.usable}
    entries = {}
    for route in net.routes:
        link = by_index.get(route.ifindex)
        if route.ifindex not in wanted or link is None or route.table != MAIN_TABLE:
            continue
        if route.gateway is not None:
            hop = neighbours.get((route.ifindex, route.gateway))
            if hop is not None:
                entries.setdefault(route.dst, FibEntry(route.dst, link.index, hop.mac, link.mac,
                                                       route.gateway, link.mtu))
            continue
        network = ipaddress.ip_network(route.dst, strict=False)
        entries.setdefault(route.dst, FibEntry(route.dst, link.index, None, link.mac, None, link.mtu))
        for (ifindex, address), hop in neighbours.items():
            if ifindex != route.ifindex:
                continue
            ip = ipaddress.ip_address(address)
            if ip.version == network.version and ip in network:
                host = f"{address}/{ip.max_prefixlen}"
                entries.setdefault(host, FibEntry(host, link.index, hop.mac, link.mac, address, link.mtu))
    return tuple(sorted(entries.values(),
                        key=lambda e: (ipaddress.ip_network(e.prefix).version,
                                       -ipaddress.ip_network(e.prefix).prefixlen, e.prefix)))


def next_hops(net, destinations, interfaces):
    """{(ifindex, next hop address)} the IPv4 `destinations` leave through, by longest-prefix match
    over main-table routes out of `interfaces` (names): the route's gateway, or the destination
    itself on a connected route. Destinations routed elsewhere (or nowhere) give nothing."""
    wanted = {l.index for l in net.links if l.name in set(interfaces)}
    routes = [(ipaddress.ip_network(r.dst, strict=False), r) for r in net.routes
              if r.table == MAIN_TABLE and ":" not in r.dst]
    routes.sort(key=lambda r: -r[0].prefixlen)
    local = {a.address for a in net.addresses}
    hops = set()
    for dest in destinations:
        ip = ipaddress.ip_address(dest)
        if ip.version != 4 or dest in local:
            continue
        for network, route in routes:
            if ip in network:
                if route.ifindex in wanted:
                    hops.add((route.ifindex, route.gateway or dest))
                break
    return hops


class NeighbourKeeper:
    """Keeps kernel-managed (NTF_EXT_MANAGED) neighbour entries for the next hops xskproxy needs,
    so the kernel resolves and refreshes them although it no longer forwards that traffic. Leaves
    resolved entries alone, removes only the ones it made (when no longer needed and at stop()).
    Errors are logged and retried at the next ensure(); they never stop the agent."""

    NDA_FLAGS_EXT_MANAGED = 1

    def __init__(self, netns=None):
        self.netns = netns
        self.added = set()              # (ifindex, address) entries this keeper created

    def _ipr(self):
        from pyroute2 import IPRoute
        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    def ensure(self, hops, neighbours=()):
        """Make `hops` ({(ifindex, address)}) the set of entries this keeper holds. A hop with a
        usable entry in `neighbours` (Neighbour, from the last NetState) is left to its owner; an
        unresolved or failed one is replaced by a managed entry."""
        from pyroute2.netlink.exceptions import NetlinkError
        hops = set(hops)
        usable = {(n.ifindex, n.address) for n in neighbours if n.usable}
        to_add, to_remove = hops - self.added - usable, self.added - hops
        if not to_add and not to_remove:
            return                      # the usual publish: no netlink round trip
        try:
            with self._ipr() as ipr:
                for ifindex, address in sorted(to_add):
                    try:
                        ipr.neigh("replace", dst=address, ifindex=ifindex, state=0,
                                  NDA_FLAGS_EXT=self.NDA_FLAGS_EXT_MANAGED)
                        self.added.add((ifindex, address))
                        log.info("event=neighbour_managed ifindex=%d address=%s", ifindex, address)
                    except NetlinkError as e:
                        log.warning("event=neighbour_add_failed ifindex=%d address=%s error=%s",
                                    ifindex, address, e)
                for ifindex, address in sorted(to_remove):
                    self._delete(ipr, ifindex, address)
        except Exception:
            log.exception("event=neighbour_keeper_failed netns=%s retry=next_publish", self.netns)

    def adopt(self, ifindexes):
        """Count the managed entries already on these interfaces as this keeper's own: those a
        predecessor left at a handover (stop(keep=True)); the next ensure() drops the unwanted."""
        try:
            with self._ipr() as ipr:
                for ifindex in ifindexes:
                    for msg in ipr.get_neighbours(ifindex=ifindex, family=socket.AF_INET):
                        if (msg.get_attr("NDA_FLAGS_EXT") or 0) & self.NDA_FLAGS_EXT_MANAGED:
                            self.added.add((ifindex, msg.get_attr("NDA_DST")))
        except Exception:
            log.exception("event=neighbour_adopt_failed netns=%s", self.netns)
        return set(self.added)

    def _delete(self, ipr, ifindex, address):
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            ipr.neigh("del", dst=address, ifindex=ifindex)
        except NetlinkError as e:
            log.debug("event=neighbour_del_failed ifindex=%d address=%s error=%s", ifindex, address, e)
        self.added.discard((ifindex, address))

    def stop(self, keep=False):
        """Remove the entries this keeper made, or with keep=True leave them for the next agent."""
        if keep:
            self.added.clear()
        else:
            self.ensure(set())


class NetlinkWatcher:
    """Calls `on_change()` after any link, address, route or neighbour notification in `netns`.
    The caller re-reads NetState (the sync loop debounces bursts)."""

    def __init__(self, on_change, netns=None):
        self.on_change = on_change
        self.netns = netns
        self.notifications = 0
        self._stop = threading.Event()
        self._thread = None
        self._ready = threading.Event()

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="netlink-watch", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self):
        from pyroute2 import IPRoute
        from pyroute2.netlink import rtnl
        groups = (rtnl.RTMGRP_LINK | rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV4_ROUTE
                  | rtnl.RTMGRP_IPV6_IFADDR | rtnl.RTMGRP_IPV6_ROUTE)
        while not self._stop.is_set():
            try:
                with IPRoute(netns=self.netns) if self.netns else IPRoute() as ipr:
                    ipr.bind(groups=groups)
                    self._ready.set()
                    while not self._stop.is_set():
                        readable, _, _ = select.select([ipr.fileno()], [], [], 0.2)
                        if not readable:
                            continue
                        messages = ipr.get()
                        if messages:
                            self.notifications += len(messages)
                            self.on_change()
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("event=netlink_watch_failed netns=%s retry_in=1s", self.netns)
                self._stop.wait(1.0)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


@dataclass(frozen=True)
class NodeNetwork:
    """What the translate step needs of the node's network: the served links, the node's addresses
    and the FIB. Neighbour state flapping between REACHABLE and STALE does not change it."""
    links: tuple = ()               # Link of each served interface that exists
    addresses: tuple = ()           # Address on any interface but loopback
    fib: tuple = ()                 # FibEntry, longest prefix first


def node_network(net, interfaces=None):
    """NodeNetwork from a NetState (pure). `interfaces`: names of the served links (None: all)."""
    loopback = {l.index for l in net.links if l.name == "lo"}
    links = tuple(l for l in net.links if interfaces is None or l.name in interfaces)
    addresses = tuple(a for a in net.addresses if a.ifindex not in loopback
                      and not a.address.startswith("fe80:"))
    return NodeNetwork(links=links, addresses=addresses, fib=fib_from_net_state(net, interfaces))


class NetworkView:
    """The node's NodeNetwork, re-read from netlink only after a notification (or the first time)."""

    def __init__(self, interfaces=None, netns=None):
        self.interfaces = tuple(interfaces) if interfaces else None
        self.netns = netns
        self._dirty = True
        self._current = NodeNetwork()
        self.state = NetState()         # the NetState self._current was made from
        self._watcher = None
        self._lock = threading.Lock()

    def mark_dirty(self):
        self._dirty = True

    def current(self):
        with self._lock:
            if self._dirty:
                self._dirty = False
                try:
                    state = read_net_state_in(self.netns)
                    self._current = node_network(state, self.interfaces)
                    self.state = state
                except Exception:
                    self._dirty = True          # keep the last good view, try again next time
                    log.exception("event=netlink_read_failed netns=%s kept=last_good", self.netns)
            return self._current

    def start(self, on_change):
        """Watch netlink; each notification marks the view dirty, then calls on_change()."""
        def changed():
            self._dirty = True
            on_change()
        self._watcher = NetlinkWatcher(changed, netns=self.netns).start()
        return self

    def stop(self):
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


# -- upcall pairs --------------------------------------------------------------------------------
# Upcall mode (xdpMode upcall; auto on virtual interfaces with the fast path): a served interface
# carries no XDP program, its tc fast path sends what userspace takes into a veth pair of its
# own: the kernel end xskp<ifindex>k, the socket end xskp<ifindex>u (native XDP, the sockets).
# The pair has no addresses and no IPv6, so the kernel itself never sends anything through it.

def upcall_pair_names(ifindex):
    """(kernel end, socket end) of the upcall pair of the interface with this ifindex."""
    return f"xskp{ifindex}k", f"xskp{ifindex}u"


def _kind(link):
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_kind(ifname):
    """The rtnetlink kind of an interface ("veth", "bridge", ...; None for a physical one or
    none by that name)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=ifname)
        return _kind(ipr.get_links(indexes[0])[0]) if indexes else None


def _veth_peer_index(ipr, index):
    link = ipr.get_links(index)[0]
    return link.get_attr("IFLA_LINK") if _kind(link) == "veth" else None


def rx_queue_count(ifname):
    """The receive queues (channels) ifname has, as the kernel reports them (IFLA_NUM_RX_QUEUES)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=ifname)
        if not links:
            raise OSError(f"interface {ifname} not found")
        return int(links[0].get_attr("IFLA_NUM_RX_QUEUES") or 1)


def ensure_upcall_pair(ifname, mtu, queues=1):
    """The upcall pair of ifname with `queues` queues each way (one per worker), up, with `mtu` and
    IPv6 off: reused when a previous agent left it (a handover, a kill) with as many queues,
    created otherwise. Returns (kernel end, socket end)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        served = ipr.link_lookup(ifname=ifname)
        if not served:
            raise OSError(f"interface {ifname} not found (upcall pair)")
        kernel_end, socket_end = upcall_pair_names(served[0])
        found, peer = ipr.link_lookup(ifname=kernel_end), ipr.link_lookup(ifname=socket_end)
        if found and not (peer and _veth_peer_index(ipr, found[0]) == peer[0]
                          and _queue_counts(ipr, found[0]) == _queue_counts(ipr, peer[0]) == (queues, queues)):
            ipr.link("del", index=found[0])             # not the pair we make: made again
            found = []
        if not found:
            for index in ipr.link_lookup(ifname=socket_end):
                ipr.link("del", index=index)
            ipr.link("add", ifname=kernel_end, kind="veth", num_tx_queues=queues, num_rx_queues=queues,
                     peer={"ifname": socket_end, "num_tx_queues": queues, "num_rx_queues": queues})
        for end in (kernel_end, socket_end):
            _disable_ipv6(end)
            ipr.link("set", index=ipr.link_lookup(ifname=end)[0], mtu=mtu, state="up")
    _set_features(kernel_end, lambda name: True if name == "rx-gro" else None)
    _set_features(socket_end, lambda name: False if _is_tcp_segmentation(name) else None)
    return kernel_end, socket_end


def _queue_counts(ipr, index):
    link = ipr.get_links(index)[0]
    return int(link.get_attr("IFLA_NUM_TX_QUEUES") or 1), int(link.get_attr("IFLA_NUM_RX_QUEUES") or 1)


# What the agent sends on the socket end must reach the kernel end's own NAPI ring, not the
# CPU's backlog queue, which a flood of received packets (RPS) fills and then drops from: veth
# uses NAPI at the receiver when GRO is on there and the sender's skbs need no segmentation
# (veth_skb_is_eligible_for_gro), so the kernel end gets GRO and the socket end no TSO.
def _is_tcp_segmentation(name):
    """Every TSO flavour (tx-tcp-segmentation, -ecn-, -mangleid-, tcp6-, accecn- on 6.18, ...)."""
    return name.startswith("tx-tcp") and name.endswith("-segmentation")


def _set_features(ifname, wanted):
    """ethtool -K through pyroute2's ethtool ioctl: wanted(feature name) -> True (on), False
    (off) or None (left as it is)."""
    from pyroute2.ethtool import Ethtool
    ethtool = Ethtool()
    try:
        features = ethtool.get_features(ifname)
        for name, feature in features.features.items():
            on = wanted(name)
            if on is not None:
                feature.enable = on
        ethtool.set_features(ifname, features)
    finally:
        ethtool.close()


def _disable_ipv6(ifname):
    """Hygiene only: the kernel end's tc program drops whatever the kernel itself would send
    (IPv6 neighbour discovery) as UPCALL_DROP_TX_STRAY; a container's read-only /proc/sys or a
    kernel without IPv6 leaves IPv6 on."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError as e:
        log.debug("event=upcall_pair_ipv6_left_on iface=%s error=%r", ifname, str(e))


def remove_upcall_pair(ifname):
    """Delete ifname's upcall pair (both ends go with one); absent: nothing. True if deleted."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        served = ipr.link_lookup(ifname=ifname)
        found = served and ipr.link_lookup(ifname=upcall_pair_names(served[0])[0])
        if not found:
            return False
        ipr.link("del", index=found[0])
        return True
