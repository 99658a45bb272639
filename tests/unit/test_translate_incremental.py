"""Incremental translation equals a fresh one: the Translator driven the way control/sync.py and
control/agent.py drive it (one translate per published snapshot, sources keeping the objects
of unchanged Kubernetes objects) never raises on a valid update and always gives the tables
and steering contents a fresh Translator gives for the same state, ids aside."""
import contextlib
from collections import Counter

from hypothesis import HealthCheck, given, settings, strategies as st_

from control.model import ClusterState, Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort
from control.netlink import Address, FibEntry, Link, NodeNetwork
from control.translate import ProxyOptions, Translator, apply_steering_changes
from dataplane import abi

_ALIVE = abi.lib.XSKP_BE_ALIVE


# --- comparing two translations -------------------------------------------------------------

def _ring(tables, offset, size):
    """A ring as the (addr, port) of each slot's backend: the same whatever ids were given."""
    ids = tables.maglev[offset:offset + size].tolist()
    return tuple(zip(tables.backends["addr"][ids].tolist(), tables.backends["port"][ids].tolist()))


def canonical_tables(translation):
    """A Translation's tables as plain data with every id replaced by what it names (a Service
    by its "namespace/name:port/protocol", a backend by its address and port), field by field:
    two translators that gave different ids to the same things give equal results. The
    generation numbers are left out; rings are compared slot by slot (their size is part of
    them: a Service whose backends shrank may keep a larger ring than a fresh one would build,
    never at the sizes these tests use)."""
    t, names = translation.tables, translation.service_names
    backends = t.backends
    services = {}
    for sid, name in names.items():
        row = t.services[sid]
        start, count = int(row["source_ranges_offset"]), int(row["source_ranges_count"])
        ranges = t.source_ranges[start:start + count]
        services[name] = {
            "flags": int(row["flags"]), "affinity_timeout_s": int(row["affinity_timeout_s"]),
            "ring": _ring(t, int(row["ring_offset"]), int(row["ring_size"])),
            "local_ring": _ring(t, int(row["local_ring_offset"]), int(row["local_ring_size"])),
            "source_ranges": list(zip(ranges["net"].tolist(), ranges["mask"].tolist())),
        }
    used = t.frontends[t.frontends["kind"] != abi.lib.XSKP_FE_EMPTY]
    frontends = {(int(f["addr"]), int(f["port"]), int(f["proto"]), int(f["kind"]),
                  names.get(int(f["service_id"]), f"unnamed service id {int(f['service_id'])}"))
                 for f in used}
    alive = backends[(backends["flags"] & _ALIVE) != 0]
    node = t.node[0]
    route_count = int(node["route_count"])
    neighbours = t.neighbours[t.neighbours["in_use"] != 0]
    return {
        "services": services,
        "frontends": frontends,
        "backends": Counter(zip(alive["addr"].tolist(), alive["port"].tolist(), alive["flags"].tolist(),
                                alive["node_addr"].tolist())),
        "node": {"node_addr": int(node["node_addr"]), "snat_port_min": int(node["snat_port_min"]),
                 "snat_port_max": int(node["snat_port_max"]), "iface_mac": node["iface_mac"].tolist(),
                 "route_count": route_count},
        "routes": list(zip(*(t.routes[:route_count][f].tolist()
                             for f in ("prefix", "mask", "next_hop", "iface", "flags")))),
        "neighbours": sorted(zip(neighbours["addr"].tolist(), neighbours["iface"].tolist(),
                                 map(bytes, neighbours["mac"]))),
    }


def rings_use_only_live_backends(translation):
    """Every slot of every Service's rings names an ALIVE backend row."""
    t = translation.tables
    for sid in translation.service_names:
        row = t.services[sid]
        for offset, size in ((row["ring_offset"], row["ring_size"]),
                             (row["local_ring_offset"], row["local_ring_size"])):
            ids = t.maglev[int(offset):int(offset) + int(size)]
            if size and not (t.backends["flags"][ids] & _ALIVE).all():
                return False
    return True


class MapsProgram:
    """The steering maps as dicts, written by apply_steering_changes as the agent does."""

    def __init__(self):
        self.frontends, self.backends, self.prefixes, self.node_addrs = {}, {}, {}, {}

    def add_frontend(self, addr, port, proto, roles):
        self.frontends[(addr, port, proto)] = roles

    def remove_frontend(self, addr, port, proto):
        self.frontends.pop((addr, port, proto), None)

    def add_backend(self, addr, port, proto, roles):
        self.backends[(addr, port, proto)] = roles

    def remove_backend(self, addr, port, proto):
        self.backends.pop((addr, port, proto), None)

    def add_prefix(self, cidr, roles):
        self.prefixes[cidr] = roles

    def remove_prefix(self, cidr):
        self.prefixes.pop(cidr, None)

    def set_node_address(self, addr, lo, hi, roles):
        self.node_addrs[addr] = (lo, hi, roles)

    def remove_node_address(self, addr):
        self.node_addrs.pop(addr, None)

    def contents(self):
        return {"frontends": self.frontends, "backends": self.backends, "prefixes": self.prefixes,
                "node_addrs": self.node_addrs}


def contents_of(steering_contents):
    return {"frontends": steering_contents.frontends, "backends": steering_contents.backends,
            "prefixes": steering_contents.prefixes, "node_addrs": steering_contents.node_addrs}


# --- the reported failure ---------------------------------------------------------------------

def _node(name, address, cidr):
    return Node(name, (("InternalIP", address),), (cidr,))


N1 = _node("n1", "192.168.1.1", "10.1.0.0/24")
N2 = _node("n2", "192.168.1.2", "10.2.0.0/24")
WEB = Service("default", "web", cluster_ips=("10.96.0.10",), ports=(ServicePort("http", "TCP", 80),))
WEB_1 = EndpointSlice("default", "web-1", "web", endpoints=(Endpoint(("10.2.0.5",), node_name="n2"),),
                      ports=(EndpointPort("http", "TCP", 8080),))


def test_an_update_removing_a_node_and_a_slice_together_is_translated():
    """One update that removes Node n2 and the only EndpointSlice of Service web (its endpoint
    was on n2) gives web no backend, steers the endpoint no more, and later updates are
    translated too (issue 13: KeyError ('default', 'web-1') on every attempt, for good)."""
    translator, maps = Translator(ProxyOptions(node_name="n1")), MapsProgram()
    first = translator.translate(ClusterState({WEB.key: WEB}, {WEB_1.key: WEB_1}, {"n1": N1, "n2": N2}))
    apply_steering_changes(maps, first.steering)
    assert ("10.2.0.5", 8080, 6) in maps.backends

    after = ClusterState({WEB.key: WEB}, {}, {"n1": N1})
    second = translator.translate(after)
    apply_steering_changes(maps, second.steering)
    assert canonical_tables(second)["services"]["default/web:http/TCP"]["ring"] == ()
    assert maps.backends == {}
    fresh = Translator(ProxyOptions(node_name="n1")).translate(after)
    assert canonical_tables(second) == canonical_tables(fresh)

    back = ClusterState({WEB.key: WEB}, {WEB_1.key: WEB_1}, {"n1": N1, "n2": N2})
    third = translator.translate(back)
    assert canonical_tables(third) == canonical_tables(first)


def test_a_successor_translates_anew_keeps_ids_and_unsteers_what_is_gone(monkeypatch):
    """After a translate failed, the successor's first translation equals a fresh one; it keeps
    the ids flows hold (the released endpoint's id is not handed to the new one), numbers the
    generation on, and removes the steering its predecessor left that is no longer wanted."""
    translator, maps = Translator(ProxyOptions(node_name="n1")), MapsProgram()
    before = EndpointSlice("default", "web-1", "web", endpoints=(
        Endpoint(("10.1.0.5",), node_name="n1"), Endpoint(("10.2.0.5",), node_name="n2")),
        ports=(EndpointPort("http", "TCP", 8080),))
    apply_steering_changes(maps, translator.translate(
        ClusterState({WEB.key: WEB}, {before.key: before}, {"n1": N1, "n2": N2})).steering)
    ids = dict(translator.backend_ids.ids)
    sid = translator.service_ids.ids[("default", "web", "http", "TCP")]

    after = EndpointSlice("default", "web-1", "web", endpoints=(
        Endpoint(("10.1.0.5",), node_name="n1"), Endpoint(("10.1.0.6",), node_name="n1")),
        ports=(EndpointPort("http", "TCP", 8080),))
    state = ClusterState({WEB.key: WEB}, {after.key: after}, {"n1": N1})
    monkeypatch.setattr(translator, "_assemble", lambda *args: 1 / 0)
    try:
        translator.translate(state)
    except ZeroDivisionError:
        translator = translator.successor()
    result = translator.translate(state)
    apply_steering_changes(maps, result.steering)

    fresh = Translator(ProxyOptions(node_name="n1"))
    assert canonical_tables(result) == canonical_tables(fresh.translate(state))
    assert maps.contents() == contents_of(fresh.steering_contents())
    assert result.steering.remove_backends == [("10.2.0.5", 8080, 6)]
    assert result.generation == 2
    assert translator.service_ids.ids[("default", "web", "http", "TCP")] == sid
    kept, gone, new = ((int.from_bytes(bytes(map(int, a.split("."))), "big"), 8080, 6)
                       for a in ("10.1.0.5", "10.2.0.5", "10.1.0.6"))
    assert translator.backend_ids.ids[kept] == ids[kept]
    assert gone not in translator.backend_ids.ids and translator.backend_ids.ids[new] != ids[gone]


def test_an_endpoint_two_services_share_drains_only_while_every_one_drains_it():
    """An endpoint (address and port) in two Services, ready in one and terminating in the other,
    is one backend row: not draining (no Service's affinity to it is refused) whatever order the
    Services came in, draining once the Service that has it ready is gone, ready again after."""
    def svc(name, ip_):
        return Service("default", name, cluster_ips=(ip_,), ports=(ServicePort("http", "TCP", 80),))

    def sl(service, terminating):
        return EndpointSlice("default", f"{service}-1", service, ports=(EndpointPort("http", "TCP", 8080),),
                             endpoints=(Endpoint(("10.1.0.5",), node_name="n1", terminating=terminating),))

    ready, draining = (svc("a", "10.96.0.1"), sl("a", False)), (svc("b", "10.96.0.2"), sl("b", True))

    def state(*pairs):
        return ClusterState({s.key: s for s, _ in pairs}, {e.key: e for _, e in pairs}, {"n1": N1})

    def flags(translation):
        (row,) = canonical_tables(translation)["backends"]
        return row[2] & (abi.lib.XSKP_BE_TERMINATING | _ALIVE)

    alive, drains = _ALIVE, _ALIVE | abi.lib.XSKP_BE_TERMINATING
    for order in ((draining,), (ready, draining), (draining, ready)):
        translator = Translator(ProxyOptions(node_name="n1"))
        seen = [flags(translator.translate(state(*order[:i + 1]))) for i in range(len(order))]
        assert seen[-1] == (drains if len(order) == 1 else alive)
    assert flags(translator.translate(state(draining))) == drains
    assert flags(translator.translate(state(draining, ready))) == alive


# --- random sequences of updates ---------------------------------------------------------------

NODE_NAMES = ("n1", "n2", "n3")                 # n1 is the node translating
SERVICE_KEYS = (("default", "s0"), ("default", "s1"), ("shop", "s0"))
SLICE_KEYS = (("default", "e0"), ("default", "e1"), ("default", "e2"), ("shop", "e0"))
ENDPOINT_ADDRESSES = ("10.1.0.5", "10.1.0.6", "10.2.0.5", "10.2.0.6", "10.3.0.5", "fd00::5")
# What may go wrong in a publish: the agent replaces its Translator by its successor anyway
# ("reset"), translate raises in one of these steps, applying the steering changes raises half-way.
FAILURES = ("reset", "_replace_service", "_network_parts", "_assemble", "_flush_steering", "steering")
KEEP = "keep"          # an update that leaves the object as it is (the same object)
TOUCH = "touch"        # an update that replaces an object by an equal one (a resync, a no-op edit)

_nodes = st_.builds(
    lambda name, address, cidr, zone: Node(name, (("InternalIP", address),), (cidr,), zone),
    st_.just(None), st_.sampled_from(("192.168.1.{}", "192.168.2.{}")),
    st_.sampled_from(("10.{}.0.0/24", "10.{}.128.0/24")), st_.sampled_from((None, "zone-a", "zone-b")))


def _node_named(name, drawn):
    index = NODE_NAMES.index(name) + 1
    address, cidr = drawn.addresses[0][1].format(index), drawn.pod_cidrs[0].format(index)
    return Node(name, (("InternalIP", address),), (cidr,), drawn.zone)


_service_ports = st_.lists(st_.sampled_from((ServicePort("http", "TCP", 80, node_port=30080),
                                             ServicePort("dns", "UDP", 53, node_port=30053),
                                             ServicePort("sctp", "SCTP", 9))), unique=True, min_size=1, max_size=3)
_services = st_.fixed_dictionaries({
    "type": st_.sampled_from(("ClusterIP", "NodePort", "LoadBalancer") * 3 + ("ExternalName",)),
    "cluster_ips": st_.sampled_from((("10.96.0.1",), ("10.96.0.2",), ("10.96.0.3",)) * 2 + ((),)),
    "ports": _service_ports.map(tuple),
    "external_ips": st_.sampled_from(((), ("198.51.100.1",))),
    "load_balancer_ips": st_.sampled_from(((), ("203.0.113.1",), ("203.0.113.2",))),
    "load_balancer_source_ranges": st_.sampled_from(((), ("192.0.2.0/24",), ("192.0.2.7/32", "2001:db8::/32"))),
    "external_traffic_policy": st_.sampled_from(("Cluster", "Local")),
    "internal_traffic_policy": st_.sampled_from(("Cluster", "Local")),
    "session_affinity": st_.sampled_from(("None", "ClientIP")),
    "affinity_timeout_seconds": st_.sampled_from((0, 60)),
    "load_balancer_mode": st_.sampled_from((None, "nat", "dsr")),
    "service_proxy_name": st_.sampled_from((None,) * 7 + ("other-proxy",)),
})
_endpoints = st_.builds(
    lambda address, node, ready, serving, terminating, hint: Endpoint(
        (address,), ready=ready, serving=serving, terminating=terminating, node_name=node,
        hint_zones=hint),
    st_.sampled_from(ENDPOINT_ADDRESSES), st_.sampled_from(NODE_NAMES + (None,)),
    st_.sampled_from((True, True, False)), st_.booleans(), st_.booleans(),
    st_.sampled_from(((), ("zone-a",), ("zone-b",))))
_slices = st_.fixed_dictionaries({
    "service_name": st_.sampled_from(("s0", "s1") * 3 + ("s2",)),
    "address_type": st_.sampled_from(("IPv4",) * 5 + ("IPv6",)),
    "endpoints": st_.lists(_endpoints, max_size=3).map(tuple),
    "ports": st_.lists(st_.sampled_from((EndpointPort("http", "TCP", 8080),) * 2 + (
        EndpointPort("dns", "UDP", 5353), EndpointPort("", "TCP", 8081))), unique=True, min_size=1, max_size=2).map(tuple),
})


def _changes(keys, values):
    """{key: KEEP, a new value, None (removed) or TOUCH} for every key."""
    change = st_.one_of(st_.just(KEEP), st_.just(KEEP), st_.none(), st_.just(TOUCH), values, values)
    return st_.fixed_dictionaries({key: change for key in keys})


def _initial(keys, values):
    """{key: a value, or None (absent)} for every key: what a source lists first."""
    return st_.fixed_dictionaries({key: st_.one_of(values, values, values, st_.none()) for key in keys})


_networks = st_.sampled_from((None, "fib", "fib-moved"))
_first_update = st_.fixed_dictionaries({
    "nodes": _initial(NODE_NAMES, _nodes), "services": _initial(SERVICE_KEYS, _services),
    "slices": _initial(SLICE_KEYS, _slices), "network": _networks, "retired": st_.just(0),
    "failure": st_.sampled_from((None,) * 6 + FAILURES),
})
_updates = st_.fixed_dictionaries({
    "nodes": _changes(NODE_NAMES, _nodes), "services": _changes(SERVICE_KEYS, _services),
    "slices": _changes(SLICE_KEYS, _slices), "network": _networks,
    "retired": st_.integers(0, 2),             # generations the workers lag behind
    "failure": st_.sampled_from((None,) * 6 + FAILURES),
})


def _network(kind):
    """The node's network: none (addresses from the Node), or links, addresses and a FIB."""
    if kind is None:
        return None
    links = (Link(2, "eth0", "02:00:00:00:00:02", 1500, True),
             Link(3, "antrea-gw0", "02:00:00:00:00:03", 1500, True))
    address = "192.168.1.1" if kind == "fib" else "192.168.1.11"
    addresses = (Address(2, address, 24), Address(3, "10.1.0.1", 24))
    fib = (FibEntry("10.1.0.5/32", 3, "0a:00:00:00:01:05", "02:00:00:00:00:03", "10.1.0.5", 1500),
           FibEntry("10.2.0.0/24", 2, "0a:00:00:00:00:12", "02:00:00:00:00:02", "192.168.1.2", 1500),
           FibEntry("0.0.0.0/0", 2, "0a:00:00:00:00:fe", "02:00:00:00:00:02", "192.168.1.254", 1500))
    return NodeNetwork(links=links, addresses=addresses, fib=fib if kind == "fib" else fib[1:])


def _apply(current, changes, build):
    """A source's next dict: unchanged entries keep their object and place."""
    out = dict(current)
    for key, value in changes.items():
        if value == KEEP:
            continue
        if value is None:
            out.pop(key, None)
        elif value == TOUCH:
            if key in out:
                out[key] = build(key, out[key].__dict__ if hasattr(out[key], "__dict__") else out[key])
        else:
            out[key] = build(key, value)
    return out


def _build_node(name, value):
    return _node_named(name, value) if isinstance(value, Node) else Node(**value)


def _build_service(key, fields):
    fields = {k: v for k, v in fields.items() if k not in ("namespace", "name")}
    return Service(key[0], key[1], **fields)


def _build_slice(key, fields):
    fields = {k: v for k, v in fields.items() if k not in ("namespace", "name")}
    return EndpointSlice(key[0], key[1], **fields)


class InjectedFailure(Exception):
    pass


@contextlib.contextmanager
def _failing(translator, step):
    """translator's method `step` raises InjectedFailure (_replace_service: on its second call,
    the first Service already replaced) for the duration."""
    real, calls = getattr(translator, step), []

    def fail(*args):
        calls.append(1)
        if len(calls) == (2 if step == "_replace_service" else 1):
            raise InjectedFailure(step)
        return real(*args)

    setattr(translator, step, fail)
    try:
        yield
    finally:
        delattr(translator, step)


class FailingProgram:
    """A steering program that applies `calls` changes to `maps`, then raises."""

    def __init__(self, maps, calls):
        self.maps, self.calls = maps, calls

    def __getattr__(self, name):
        method = getattr(self.maps, name)

        def call(*args):
            if not self.calls:
                raise InjectedFailure("steering")
            self.calls -= 1
            return method(*args)
        return call


def _publish(translator, maps, state, network, oldest, failure):
    """One publish as control/agent.py does it, with `failure` (FAILURES) injected: a failed
    attempt replaces the Translator by its successor, and the sync loop's next attempt
    translates the same state. Returns (the Translator to go on with, the Translation)."""
    unapplied = None
    if failure == "steering":
        result = translator.translate(state, network, oldest_in_use=oldest)
        changes = sum(map(len, (result.steering.add_frontends, result.steering.remove_frontends,
                                result.steering.add_backends, result.steering.remove_backends)))
        try:
            apply_steering_changes(FailingProgram(maps, changes // 2), result.steering)
            return translator, result
        except InjectedFailure:
            unapplied = result.steering
    elif failure not in (None, "reset"):
        try:
            with _failing(translator, failure):
                result = translator.translate(state, network, oldest_in_use=oldest)
            apply_steering_changes(maps, result.steering)
            return translator, result
        except InjectedFailure:
            pass
    if failure is not None:
        translator = translator.successor(unapplied)
    result = translator.translate(state, network, oldest_in_use=oldest)
    apply_steering_changes(maps, result.steering)
    return translator, result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=_first_update, updates=st_.lists(_updates, min_size=2, max_size=8), proxy_all=st_.booleans(), default_mode=st_.sampled_from(("nat", "dsr")))
def test_incremental_translation_equals_a_fresh_one_after_any_updates(first, updates, proxy_all, default_mode):
    """After each of a random sequence of updates (Nodes, Services, EndpointSlices and the
    node's network added, changed, replaced by equal objects and removed, any number of each
    at once), the incremental translate does not raise, its tables equal a fresh Translator's
    for the same state field by field (ids aside), its rings name live backends only, and the
    steering maps written from its changes hold what the fresh one's contents say; the same
    when a publish failed on the way (translate or the steering changes raising part-way) and
    the Translator's successor took over."""
    options = ProxyOptions(node_name="n1", proxy_all=proxy_all, default_load_balancer_mode=default_mode,
                           transport_interface="eth0", gateway_interface="antrea-gw0")
    translator, maps = Translator(options), MapsProgram()
    nodes, services, slices = {}, {}, {}
    for update in [first] + updates:
        nodes = _apply(nodes, update["nodes"], _build_node)
        services = _apply(services, update["services"], _build_service)
        slices = _apply(slices, update["slices"], _build_slice)
        state, network = ClusterState(services, slices, nodes), _network(update["network"])
        oldest = max(translator.generation - update["retired"], 0)
        translator, result = _publish(translator, maps, state, network, oldest, update["failure"])
        fresh_translator = Translator(options)
        fresh = fresh_translator.translate(state, network)
        assert canonical_tables(result) == canonical_tables(fresh)
        assert rings_use_only_live_backends(result)
        assert maps.contents() == contents_of(fresh_translator.steering_contents())
        assert contents_of(translator.steering_contents()) == contents_of(fresh_translator.steering_contents())
