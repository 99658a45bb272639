"""Translate: manifests in (tests/unit/manifests/translate/), tables and steering contents out,
one test per Service feature; then generations: unchanged Services are not rebuilt, ids are
stable, freed space is reused only after the generations using it retire."""
import os

import numpy as np
import pytest

from control.manifests import load_models
from control.convert import state_from_models
from control.model import ClusterState, Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort
from control.netlink import Address, FibEntry, Link, NodeNetwork
from control.translate import (
    ProxyOptions, RingArena, SteeringContents, StableIdAllocator, Translator, _RingBatch,
    apply_backend_steering, apply_steering_changes, describe_tables, skip_reason,
    steering_changes_between,
)
from dataplane import abi
from dataplane.tables import lookup_frontend, lookup_neighbour, lookup_route

MANIFESTS = os.path.join(os.path.dirname(__file__), "manifests", "translate")
TCP, UDP, IPIP, SCTP = 6, 17, 4, 132
GW, TR, BOTH = 1, 2, 3


def state_of(*names):
    """ClusterState of nodes.yaml plus the named fixture files."""
    models = []
    for name in ("nodes.yaml",) + names:
        models.extend(m for m, _ in load_models(os.path.join(MANIFESTS, name)))
    return state_from_models(models)


def translate(*names, **options):
    options.setdefault("node_name", "n1")
    translator = Translator(ProxyOptions(**options))
    result = translator.translate(state_of(*names))
    return result, describe_tables(result.tables, result.service_names)


def ip(text):
    return int.from_bytes(bytes(int(p) for p in text.split(".")), "big")


def test_clusterip_service_ports_get_frontends_rings_and_steering():
    """Each port of a ClusterIP Service is a frontend on the ClusterIP with a ring over the
    endpoints' target ports; ClusterIPs are steered from Pods only, backends' replies from
    where they live (local Pod: gateway, remote: transport)."""
    result, services = translate("clusterip.yaml")
    http, dns = services["default/web:http/TCP"], services["default/web:dns/UDP"]
    assert http["frontends"] == ["ClusterIP 10.96.0.10:80/TCP"]
    assert dns["frontends"] == ["ClusterIP 10.96.0.10:53/UDP"]
    assert set(http["backends"]) == {"10.1.0.5:8080", "10.2.0.6:8080"}
    assert set(dns["backends"]) == {"10.1.0.5:5353", "10.2.0.6:5353"}
    assert http["flags"] == [] and http["local_backends"] == {}
    slot = lookup_frontend(result.tables.frontends, ip("10.96.0.10"), 80, TCP)
    assert slot >= 0 and result.tables.frontends[slot]["service_id"] == http["service_id"]
    assert lookup_frontend(result.tables.frontends, ip("10.96.0.10"), 80, UDP) < 0
    steer = result.steering
    assert steer.add_frontends == {("10.96.0.10", 80, TCP): GW, ("10.96.0.10", 53, UDP): GW}
    assert steer.add_backends == {("10.1.0.5", 8080, TCP): GW, ("10.1.0.5", 5353, UDP): GW,
                                  ("10.2.0.6", 8080, TCP): TR, ("10.2.0.6", 5353, UDP): TR}
    be = result.tables.backends
    local = be[(be["addr"] == ip("10.1.0.5")) & (be["port"] == 8080)][0]
    remote = be[(be["addr"] == ip("10.2.0.6")) & (be["port"] == 8080)][0]
    assert local["flags"] == abi.lib.XSKP_BE_ALIVE | abi.lib.XSKP_BE_LOCAL
    assert remote["flags"] == abi.lib.XSKP_BE_ALIVE and remote["node_addr"] == ip("192.168.1.2")
    assert be[0]["flags"] == 0                       # id 0 means "none"


def test_nodeport_needs_proxy_all_and_follows_node_port_addresses():
    """NodePorts are frontends on the node's addresses only with proxyAll (Antrea: without it
    NodePort is left to kube-proxy), steered on both interfaces; nodePortAddresses selects
    the addresses (empty: all)."""
    _, without = translate("nodeport.yaml", proxy_all=False)
    assert without["default/np:http/TCP"]["frontends"] == ["ClusterIP 10.96.0.20:80/TCP"]

    network = NodeNetwork(links=(), addresses=(Address(2, "192.168.1.1", 24), Address(3, "10.1.0.1", 24),
                                               Address(4, "172.16.0.1", 16)))
    for cidrs, expected in (((), ["10.1.0.1", "172.16.0.1", "192.168.1.1"]),
                            (("192.168.1.0/24", "172.16.0.0/12"), ["172.16.0.1", "192.168.1.1"])):
        translator = Translator(ProxyOptions(proxy_all=True, node_name="n1", node_port_addresses=cidrs))
        result = translator.translate(state_of("nodeport.yaml"), network)
        services = describe_tables(result.tables, result.service_names)
        assert services["default/np:http/TCP"]["frontends"] == (
            ["ClusterIP 10.96.0.20:80/TCP"] + [f"NodePort {a}:30080/TCP" for a in expected])
        assert all(result.steering.add_frontends[(a, 30080, TCP)] == BOTH for a in expected)


def test_sctp_service_ports_get_frontends_and_their_endpoints_steering_like_tcp():
    """An SCTP port is proxied like a TCP one: ClusterIP and NodePort frontends with protocol
    132, a ring over its endpoints, and its endpoints' replies steered, apart from the TCP port
    of the same number."""
    network = NodeNetwork(links=(), addresses=(Address(2, "192.168.1.1", 24),))
    result = Translator(ProxyOptions(proxy_all=True, node_name="n1")).translate(state_of("sctp.yaml"), network)
    services = describe_tables(result.tables, result.service_names)
    sctp, tcp = services["default/diameter:diameter/SCTP"], services["default/diameter:tcp/TCP"]
    assert sctp["frontends"] == ["ClusterIP 10.96.0.60:3868/SCTP", "NodePort 192.168.1.1:30868/SCTP"]
    assert set(sctp["backends"]) == {"10.1.0.8:3868", "10.2.0.8:3868"}
    assert sctp["service_id"] != tcp["service_id"]
    assert lookup_frontend(result.tables.frontends, ip("10.96.0.60"), 3868, SCTP) >= 0
    steer = result.steering
    assert steer.add_frontends[("10.96.0.60", 3868, SCTP)] == GW
    assert steer.add_frontends[("192.168.1.1", 30868, SCTP)] == BOTH
    assert steer.add_backends[("10.1.0.8", 3868, SCTP)] == GW
    assert steer.add_backends[("10.2.0.8", 3868, SCTP)] == TR


def test_load_balancer_ips_external_ips_and_source_ranges():
    """LB ingress IPs and externalIPs are frontends (hostname-only ingress is not);
    loadBalancerSourceRanges become the Service's IPv4 ranges with the source-ranges flag."""
    result, services = translate("loadbalancer.yaml", proxy_all=True)
    lb = services["shop/lb:https/TCP"]
    assert lb["frontends"] == ["ClusterIP 10.96.0.30:443/TCP", "ExternalIP 203.0.113.9:443/TCP",
                               "LoadBalancer 203.0.113.1:443/TCP", "NodePort 192.168.1.1:31443/TCP"]
    assert lb["flags"] == ["source-ranges"]
    assert lb["source_ranges"] == ["192.0.2.7/32", "198.51.100.0/24"]
    assert set(lb["backends"]) == {"10.1.0.8:8443", "10.2.0.8:8443", "10.2.0.9:8443"}
    assert result.steering.add_frontends[("203.0.113.1", 443, TCP)] == BOTH


def test_proxy_load_balancer_ips_false_leaves_lb_ips_to_the_kernel():
    """With proxyLoadBalancerIPs=false the ingress IP is neither a frontend nor steered; the
    externalIP still is. Without proxyAll, external frontends are steered from Pods only."""
    result, services = translate("loadbalancer.yaml", proxy_load_balancer_ips=False)
    assert services["shop/lb:https/TCP"]["frontends"] == ["ClusterIP 10.96.0.30:443/TCP",
                                                          "ExternalIP 203.0.113.9:443/TCP"]
    assert ("203.0.113.1", 443, TCP) not in result.steering.add_frontends
    assert result.steering.add_frontends[("203.0.113.9", 443, TCP)] == GW


def test_traffic_policy_local_builds_a_ring_of_this_nodes_endpoints():
    """externalTrafficPolicy/internalTrafficPolicy Local: a local ring over n1's ready
    endpoints (a terminating one is left out while a ready one exists), the cluster ring kept."""
    _, services = translate("traffic-policy-local.yaml", proxy_all=True)
    etp, itp = services["default/etp:http/TCP"], services["default/itp:http/TCP"]
    assert etp["flags"] == ["etp-local"] and itp["flags"] == ["itp-local"]
    assert set(etp["local_backends"]) == {"10.1.0.40:8080"}
    assert set(etp["backends"]) == {"10.1.0.40:8080", "10.2.0.40:8080"}
    assert set(itp["local_backends"]) == {"10.1.0.41:8080"}
    assert set(itp["backends"]) == {"10.1.0.41:8080", "10.2.0.41:8080"}


def test_local_ring_is_empty_on_a_node_without_endpoints():
    """The local ring is per node: on n2 it holds n2's endpoint; on a node without any, none."""
    _, services = translate("traffic-policy-local.yaml", node_name="n2")
    assert set(services["default/itp:http/TCP"]["local_backends"]) == {"10.2.0.41:8080"}
    _, on_n3 = translate("traffic-policy-local.yaml", node_name="n3")
    assert on_n3["default/itp:http/TCP"]["local_backends"] == {}


def test_affinity_timeouts_are_kept_up_to_86400_seconds():
    """ClientIP affinity keeps the full Kubernetes range: 86,400 s stays 86,400 (no 65,535
    truncation); no timeout given means Kubernetes' default 10,800 s."""
    _, services = translate("affinity.yaml")
    assert services["default/sticky-max:http/TCP"]["flags"] == ["affinity"]
    assert services["default/sticky-max:http/TCP"]["affinity_timeout_s"] == 86400
    assert services["default/sticky-default:http/TCP"]["affinity_timeout_s"] == 10800


def test_skipped_services_get_nothing():
    """skipServices (namespace/name or ClusterIP), the service-proxy-name label, headless and
    ExternalName Services give no frontend, backend or steering entry."""
    result, services = translate("skipped.yaml",
                                 skip_services=("kube-system/by-name", "10.96.0.61"))
    assert list(services) == ["default/kept:http/TCP"]
    assert set(result.steering.add_frontends) == {("10.96.0.63", 80, TCP)}
    assert result.steering.add_backends == {}
    assert result.stats["skipped_services"] == 5
    state = state_of("skipped.yaml")
    reasons = {k[1]: skip_reason(s, ProxyOptions(skip_services=("kube-system/by-name", "10.96.0.61")))
               for k, s in state.services.items()}
    assert reasons == {"by-name": "skipServices", "by-ip": "skipServices",
                       "other-proxy": "service-proxy-name", "headless": "headless",
                       "external-name": "ExternalName", "kept": None}


def test_dsr_by_annotation_or_default_and_the_ipip_frontend():
    """The annotation service.antrea.io/load-balancer-mode sets dsr or nat per Service, else
    defaultLoadBalancerMode applies; when any Service is DSR, IPIP to the node address is
    steered from the transport (other nodes tunnel to this node's backends)."""
    result, services = translate("dsr.yaml", proxy_all=True)
    assert services["default/dsr:http/TCP"]["flags"] == ["dsr"]
    assert services["default/nat:http/TCP"]["flags"] == []
    assert services["default/default-mode:http/TCP"]["flags"] == []
    assert result.steering.add_frontends[("192.168.1.1", 0, IPIP)] == TR
    _, by_default = translate("dsr.yaml", proxy_all=True, default_load_balancer_mode="dsr")
    assert by_default["default/default-mode:http/TCP"]["flags"] == ["dsr"]
    assert by_default["default/nat:http/TCP"]["flags"] == []
    result, _ = translate("clusterip.yaml")
    assert not any(k[2] == IPIP for k in result.steering.add_frontends)


def test_terminating_endpoints_only_when_none_is_ready():
    """Serving+terminating endpoints are used only when no endpoint is ready; a terminating
    endpoint that is not serving, and a not-ready one, never are."""
    result, services = translate("terminating.yaml")
    assert set(services["default/drain:http/TCP"]["backends"]) == {"10.1.0.80:80"}
    assert set(services["default/mixed:http/TCP"]["backends"]) == {"10.1.0.82:80"}


def test_endpoints_new_flows_must_not_pick_stay_backends_for_the_flows_they_have():
    """A terminating or not-ready endpoint is in no ring while a ready one exists, but stays an
    ALIVE backend flagged TERMINATING, with its replies steered: its established flows drain
    instead of being re-balanced (and reset) mid-stream."""
    result, _ = translate("terminating.yaml")
    rows = {int(b["addr"]): int(b["flags"]) for b in result.tables.backends if b["flags"]}
    draining = abi.lib.XSKP_BE_ALIVE | abi.lib.XSKP_BE_TERMINATING
    for address in ("10.2.0.82", "10.2.0.80", "10.2.0.81"):
        assert rows[ip(address)] & draining == draining, address
        assert result.steering.add_backends[(address, 80, TCP)] == TR
    assert rows[ip("10.1.0.82")] & abi.lib.XSKP_BE_TERMINATING == 0


def test_topology_hints_when_every_endpoint_has_them():
    """With hints on every ready endpoint, n1 (zone-a) uses the endpoints hinted for zone-a;
    with one endpoint unhinted, hints are ignored and every endpoint is used."""
    _, services = translate("topology.yaml")
    assert set(services["default/hinted:http/TCP"]["backends"]) == {"10.1.0.90:80", "10.2.0.91:80"}
    assert set(services["default/partly-hinted:http/TCP"]["backends"]) == {"10.1.0.92:80", "10.2.0.92:80"}
    _, on_n2 = translate("topology.yaml", node_name="n2")
    assert set(on_n2["default/hinted:http/TCP"]["backends"]) == {"10.2.0.90:80"}


def test_rings_are_maglev_balanced_over_backend_ids():
    """A Service's ring holds only its backends' ids, each within 1% of an equal share."""
    _, services = translate("loadbalancer.yaml")
    counts = np.array(list(services["shop/lb:https/TCP"]["backends"].values()))
    assert counts.min() >= 0.99 * counts.mean() and counts.max() <= 1.01 * counts.mean()


# --- generations ----------------------------------------------------------------------------

def _svc(name, ip_, port=80):
    return Service("default", name, cluster_ips=(ip_,), ports=(ServicePort("", "TCP", port),))


def _slice(service, addrs, name=None, node="n1"):
    return EndpointSlice("default", name or f"{service}-1", service,
                         endpoints=tuple(Endpoint((a,), node_name=node) for a in addrs),
                         ports=(EndpointPort("", "TCP", 8080),))


def _state(slices, services=None):
    services = services or {("default", "a"): _svc("a", "10.96.1.1"), ("default", "b"): _svc("b", "10.96.1.2")}
    return ClusterState(services=services, endpoint_slices={s.key: s for s in slices},
                        nodes={"n1": Node("n1", (("InternalIP", "192.168.1.1"),), ("10.1.0.0/24",))})


def test_rings_built_on_the_helper_thread_equal_rings_built_inline(monkeypatch):
    """A translate large enough to hand chunks of rings to the helper thread gives every Service
    the same ring contents as building them all inline, each ring over its own backends' ids."""
    services = {("default", f"s{i}"): _svc(f"s{i}", f"10.96.2.{i}") for i in range(40)}
    slices = [_slice(f"s{i}", [f"10.1.{i}.{j}" for j in range(1, 2 + i)]) for i in range(40)]
    state = _state(slices, services)

    def described(chunk_keys):
        monkeypatch.setattr(_RingBatch, "CHUNK_KEYS", chunk_keys)
        translation = Translator(ProxyOptions(node_name="n1")).translate(state)
        return describe_tables(translation.tables, translation.service_names)

    chunked, inline = described(64), described(1 << 30)       # 820 backends: ~13 chunks vs none
    assert chunked == inline and len(chunked) == 40
    for i in range(40):
        members = chunked[f"default/s{i}:/TCP"]["backends"]
        assert sorted(members) == sorted(f"10.1.{i}.{j}:8080" for j in range(1, 2 + i))


def test_a_translate_failing_while_building_rings_is_made_good_by_the_next(monkeypatch):
    """Ring building fails on the third chunk (rings of earlier chunks already placed): translate
    raises, and the next translate of the same state gives what a fresh Translator gives."""
    import control.translate as translate_module
    services = {("default", f"s{i}"): _svc(f"s{i}", f"10.96.2.{i}") for i in range(40)}
    slices = [_slice(f"s{i}", [f"10.1.{i}.{j}" for j in range(1, 2 + i)]) for i in range(40)]
    state = _state(slices, services)
    monkeypatch.setattr(_RingBatch, "CHUNK_KEYS", 64)
    real_build, calls = translate_module.build_maglev_rings, []

    def failing_build(*args):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("no room for the ring")
        return real_build(*args)

    translator = Translator(ProxyOptions(node_name="n1"))
    first = translator.translate(_state(slices[:5], services))          # a generation before
    monkeypatch.setattr(translate_module, "build_maglev_rings", failing_build)
    with pytest.raises(MemoryError):
        translator.translate(state)
    monkeypatch.setattr(translate_module, "build_maglev_rings", real_build)
    again = translator.translate(state)
    fresh = Translator(ProxyOptions(node_name="n1")).translate(state)
    assert first.generation == 1 and again.generation == 2
    assert describe_tables(again.tables, again.service_names) == describe_tables(fresh.tables, fresh.service_names)


def test_an_unchanged_service_is_not_rebuilt_and_keeps_its_ring():
    """Changing one endpoint of Service a rebuilds a only: b's ring stays where it was, backend
    ids of unchanged endpoints stay, the removed endpoint's slot is no longer alive, and the
    steering changes name just the removed and added backends."""
    translator = Translator(ProxyOptions(node_name="n1"))
    a1 = _slice("a", ["10.1.0.1", "10.1.0.2", "10.1.0.3"])
    b1 = _slice("b", ["10.1.0.10", "10.1.0.11"])
    first = translator.translate(_state([a1, b1]))
    before = describe_tables(first.tables, first.service_names)
    ids_before = dict(translator.backend_ids.ids)

    a2 = _slice("a", ["10.1.0.1", "10.1.0.2", "10.1.0.4"])
    second = translator.translate(_state([a2, b1]))
    after = describe_tables(second.tables, second.service_names)
    assert second.stats["rebuilt_services"] == 1
    sid_b = after["default/b:/TCP"]["service_id"]
    for field in ("ring_offset", "ring_size"):
        assert first.tables.services[sid_b][field] == second.tables.services[sid_b][field]
    assert after["default/b:/TCP"] == before["default/b:/TCP"]
    assert set(after["default/a:/TCP"]["backends"]) == {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.4:8080"}
    for key in ((ip("10.1.0.1"), 8080, TCP), (ip("10.1.0.10"), 8080, TCP)):
        assert translator.backend_ids.ids[key] == ids_before[key]
    gone = ids_before[(ip("10.1.0.3"), 8080, TCP)]
    assert second.tables.backends[gone]["flags"] == 0
    assert second.tables.backends[gone]["addr"] == ip("10.1.0.3")
    assert second.steering.remove_backends == [("10.1.0.3", 8080, TCP)]
    assert second.steering.add_backends == {("10.1.0.4", 8080, TCP): GW}
    assert second.steering.add_frontends == {} and second.steering.remove_frontends == []
    assert second.tables.frontends is first.tables.frontends      # shared: nothing changed
    assert second.tables.node[0]["generation"] == 2

    third = translator.translate(_state([a2, b1]))
    assert third.stats["rebuilt_services"] == 0 and third.steering.empty()


def test_incremental_translation_follows_slices_added_moved_and_removed():
    """A slice added to a Service, one moved to another Service (its service label changed) and
    one deleted, each in its own translate, with dicts in changed and in unchanged order: the
    incremental translator ends with the Services a fresh translator builds from the last state."""
    translator = Translator(ProxyOptions(node_name="n1"))
    a1, b1 = _slice("a", ["10.1.0.1"]), _slice("b", ["10.1.0.10"])
    a2 = _slice("a", ["10.1.0.2"], name="a-2")
    moved = _slice("b", ["10.1.0.2"], name="a-2")                 # a-2 now labelled for b
    steps = [[a1, b1], [a1, b1, a2], [a1, b1, moved], [moved, a1], [moved]]
    for slices in steps:
        result = translator.translate(_state(slices))
    fresh = Translator(ProxyOptions(node_name="n1")).translate(_state(steps[-1]))
    incremental = describe_tables(result.tables, result.service_names)
    expected = describe_tables(fresh.tables, fresh.service_names)
    assert {k: set(v["backends"]) for k, v in incremental.items()} == \
        {k: set(v["backends"]) for k, v in expected.items()} == {"default/a:/TCP": set(),
                                                                 "default/b:/TCP": {"10.1.0.2:8080"}}


def test_the_first_generation_is_untouched_by_the_next():
    """Building generation 2 writes nothing a reader of generation 1 can see: its arrays, and
    the slices of the shared ring arena its services point at, stay as they were."""
    translator = Translator(ProxyOptions(node_name="n1"))
    first = translator.translate(_state([_slice("a", ["10.1.0.1", "10.1.0.2"]),
                                         _slice("b", ["10.1.0.10"])]))
    snapshot = [np.copy(a) for a in first.tables]

    def rings(tables):
        return [tables.maglev[r["ring_offset"]:r["ring_offset"] + r["ring_size"]].copy()
                for r in tables.services]

    rings_before = rings(first.tables)
    second = translator.translate(_state([_slice("a", ["10.1.0.5", "10.1.0.6", "10.1.0.7"]),
                                          _slice("b", ["10.1.0.11"])]))
    for name, kept, array in zip(first.tables._fields, snapshot, first.tables):
        if name != "maglev":                      # shared by design: compare the used slices
            assert np.array_equal(kept, array), name
    assert all(np.array_equal(a, b) for a, b in zip(rings_before, rings(first.tables)))
    assert not any(np.array_equal(a, b) for a, b in zip(rings_before[1:], rings(second.tables)[1:]))


def test_removed_services_free_their_ids_and_space_after_retirement():
    """A removed Service's frontends are unsteered; its service id, backend ids and ring space
    are reused only after the generation that dropped them is the oldest in use."""
    translator = Translator(ProxyOptions(node_name="n1"))
    both = _state([_slice("a", ["10.1.0.1"]), _slice("b", ["10.1.0.10"])])
    translator.translate(both)
    sid_b = translator.service_ids.ids[("default", "b", "", "TCP")]
    only_a = _state([_slice("a", ["10.1.0.1"])], {("default", "a"): _svc("a", "10.96.1.1")})
    second = translator.translate(only_a, oldest_in_use=1)
    assert second.steering.remove_frontends == [("10.96.1.2", 80, TCP)]
    assert second.steering.remove_backends == [("10.1.0.10", 8080, TCP)]
    assert second.tables.services[sid_b]["ring_size"] == 0
    # A reader still on generation 1: b's id is not handed out again yet.
    c = {("default", "a"): _svc("a", "10.96.1.1"), ("default", "c"): _svc("c", "10.96.1.3")}
    translator.translate(_state([_slice("a", ["10.1.0.1"]), _slice("c", ["10.1.0.20"])], c),
                         oldest_in_use=1)
    assert translator.service_ids.ids[("default", "c", "", "TCP")] != sid_b
    # Once every reader is past generation 2, it is.
    d = dict(c)
    d[("default", "d")] = _svc("d", "10.96.1.4")
    translator.translate(_state([_slice("a", ["10.1.0.1"]), _slice("c", ["10.1.0.20"])], d),
                         oldest_in_use=3)
    assert translator.service_ids.ids[("default", "d", "", "TCP")] == sid_b


def test_ring_arena_reuses_space_only_after_retirement_and_grows():
    """Released ring space is reused once reclaimed; growing keeps the contents."""
    arena = RingArena(capacity=16)
    a = arena.allocate(np.arange(1, 11, dtype=np.uint32))
    b = arena.allocate(np.arange(20, 26, dtype=np.uint32))
    assert (a, b) == (0, 10)
    arena.release(a, 10, generation=2)
    arena.reclaim(oldest_in_use=1)
    old_array = arena.array
    c = arena.allocate(np.full(8, 7, np.uint32))       # no space before reclaim: grows
    assert c >= 16 and arena.array is not old_array
    assert list(arena.array[10:16]) == list(range(20, 26))
    arena.reclaim(oldest_in_use=2)
    assert arena.allocate(np.full(10, 9, np.uint32)) == 0


def test_stable_ids_reuse_the_oldest_released_first():
    """Ids come back in release order, never before their generation retires."""
    ids = StableIdAllocator(first_id=1)
    assert [ids.acquire(k)[0] for k in "abc"] == [1, 2, 3]
    ids.release("b", generation=5)
    ids.release("a", generation=6)
    assert ids.acquire("d")[0] == 4
    ids.reclaim(6)
    assert ids.acquire("e")[0] == 2 and ids.acquire("f")[0] == 1
    assert ids.acquire("c") == (3, False)


def test_adopted_backend_ids_survive_a_restart():
    """A restarted translator keeps the ids that adopted conntrack entries hold, and releases
    the adopted ids no Service claims."""
    translator = Translator(ProxyOptions(node_name="n1"), fib_generation_base=7)
    translator.adopt_backend_ids({(ip("10.1.0.2"), 8080, TCP): 9, (ip("10.1.0.99"), 8080, TCP): 4})
    result = translator.translate(_state([_slice("a", ["10.1.0.1", "10.1.0.2"])],
                                         {("default", "a"): _svc("a", "10.96.1.1")}))
    assert translator.backend_ids.ids[(ip("10.1.0.2"), 8080, TCP)] == 9
    assert (ip("10.1.0.99"), 8080, TCP) not in translator.backend_ids.ids
    assert result.tables.backends[9]["flags"] & abi.lib.XSKP_BE_ALIVE
    assert result.tables.node[0]["fib_generation"] > 7


# --- the node's network -----------------------------------------------------------------------

def _network():
    links = (Link(2, "eth0", "02:00:00:00:00:02", 1500, True),
             Link(3, "antrea-gw0", "02:00:00:00:00:03", 1500, True))
    addresses = (Address(2, "192.168.1.1", 24), Address(3, "10.1.0.1", 24))
    fib = (FibEntry("10.1.0.5/32", 3, "0a:00:00:00:01:05", "02:00:00:00:00:03", "10.1.0.5", 1500),
           FibEntry("192.168.1.2/32", 2, "0a:00:00:00:00:12", "02:00:00:00:00:02", "192.168.1.2", 1500),
           FibEntry("10.2.0.0/24", 2, "0a:00:00:00:00:12", "02:00:00:00:00:02", "192.168.1.2", 1500),
           FibEntry("0.0.0.0/0", 2, "0a:00:00:00:00:fe", "02:00:00:00:00:02", "192.168.1.254", 1500))
    return NodeNetwork(links=links, addresses=addresses, fib=fib)


def test_fib_becomes_routes_neighbours_and_bypass_steering():
    """FIB entries become routes (Pod CIDRs flagged for bypass) and resolved neighbours; remote
    Pod CIDRs are steered from the gateway, resolved local Pods from the transport, the
    gateway's own address never; SNAT replies to the node address are steered."""
    state = state_of("clusterip.yaml")
    translator = Translator(ProxyOptions(node_name="n1", transport_interface="eth0",
                                         gateway_interface="antrea-gw0"))
    result = translator.translate(state, _network())
    t = result.tables
    node = t.node[0]
    assert node["node_addr"] == ip("192.168.1.1") and node["route_count"] == 4
    assert bytes(node["iface_mac"][abi.lib.XSKP_IFACE_GATEWAY]) == bytes.fromhex("020000000003")
    r = lookup_route(t.routes, node["route_count"], ip("10.2.0.9"))
    assert t.routes[r]["iface"] == abi.lib.XSKP_IFACE_TRANSPORT
    assert t.routes[r]["next_hop"] == ip("192.168.1.2") and t.routes[r]["flags"] == abi.lib.XSKP_ROUTE_BYPASS
    r = lookup_route(t.routes, node["route_count"], ip("8.8.8.8"))
    assert t.routes[r]["next_hop"] == ip("192.168.1.254") and t.routes[r]["flags"] == 0
    r = lookup_route(t.routes, node["route_count"], ip("10.1.0.5"))
    assert t.routes[r]["iface"] == abi.lib.XSKP_IFACE_GATEWAY and t.routes[r]["flags"] == abi.lib.XSKP_ROUTE_BYPASS
    n = lookup_neighbour(t.neighbours, ip("10.1.0.5"), abi.lib.XSKP_IFACE_GATEWAY)
    assert n >= 0 and bytes(t.neighbours[n]["mac"]) == bytes.fromhex("0a0000000105")
    assert result.steering.add_prefixes == {"10.2.0.0/24": GW, "10.1.0.5/32": TR, "10.1.0.1/32": 0}
    # the SNAT range on our transport address; the other node addresses are the kernel's
    assert result.steering.set_node_addrs == {"192.168.1.1": (61000, 65535, BOTH),
                                              "192.168.1.2": (0, 0, BOTH), "10.1.0.1": (0, 0, BOTH)}
    # The same network again: no steering change, routes shared.
    again = translator.translate(state, _network())
    assert again.steering.empty() and again.tables.routes is t.routes


def test_steering_changes_between_contents():
    """The diff between two steering contents removes what is gone and adds what is new or changed."""
    old = SteeringContents({("10.0.0.1", 80, TCP): GW}, {}, {"10.2.0.0/24": GW}, {})
    new = SteeringContents({("10.0.0.1", 80, TCP): BOTH, ("10.0.0.2", 80, TCP): GW}, {}, {}, {})
    changes = steering_changes_between(old, new)
    assert changes.add_frontends == {("10.0.0.1", 80, TCP): BOTH, ("10.0.0.2", 80, TCP): GW}
    assert changes.remove_prefixes == ["10.2.0.0/24"] and not changes.remove_frontends


def test_new_backends_are_steered_before_the_rest_and_only_once():
    """The agent steers new backends' replies before publishing the tables that use them (a
    SYN-ACK must not reach the kernel), then applies the rest: no backend is added twice."""
    calls = []

    class Program:
        def __getattr__(self, name):
            return lambda *args: calls.append((name,) + args)

    state = _state([_slice("a", ["10.1.0.5", "10.1.0.6"])])
    changes = Translator(ProxyOptions(node_name="n1")).translate(state).steering
    apply_backend_steering(Program(), changes)
    assert sorted(calls) == [("add_backend", "10.1.0.5", 8080, TCP, GW), ("add_backend", "10.1.0.6", 8080, TCP, GW)]
    calls.clear()
    apply_steering_changes(Program(), changes)
    assert calls and not [c for c in calls if c[0] == "add_backend"]
    assert ("add_frontend", "10.96.1.1", 80, TCP, GW) in calls


# --- translate -> pipeline, end to end (no hand-made tables) --------------------------------

def _network_with_client_pod():
    net = _network()
    client = FibEntry("10.1.0.9/32", 3, "0a:00:00:00:01:09", "02:00:00:00:00:03", "10.1.0.9", 1500)
    return NodeNetwork(links=net.links, addresses=net.addresses, fib=(client,) + net.fib)


def test_translated_tables_drive_the_pipeline(tmp_path):
    """The tables translate builds from manifests, with flow tables from the state store, make
    the pipeline DNAT a Pod's SYN to the ClusterIP onto one of the Service's endpoints (out the
    interface and to the MAC the FIB gives), and translate the reply back."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    import fixtures_pipeline as fx
    from dataplane.store import open_flow_tables

    translator = Translator(ProxyOptions(node_name="n1", transport_interface="eth0",
                                         gateway_interface="antrea-gw0", proxy_all=True))
    st = translator.translate(state_of("clusterip.yaml"), _network_with_client_pod()).tables
    ft = open_flow_tables(str(tmp_path), 0, 4096, 1024)
    macs = {"10.1.0.5": ("0a:00:00:00:01:05", fx.TX_G), "10.2.0.6": ("0a:00:00:00:00:12", fx.TX_T)}
    seen = set()
    for sport in range(40000, 40040):
        syn = Ether(src="0a:00:00:00:01:09", dst="02:00:00:00:00:03") / IP(src="10.1.0.9", dst="10.96.0.10") \
            / TCP(sport=sport, dport=80, flags="S")
        verdicts, outs, _ = fx.run([bytes(syn)], fx.GATEWAY, st, ft)
        out = Ether(outs[0])
        backend = out[IP].dst
        # a local backend sees the Pod's flow from the node address (hairpin SNAT)
        client = ("192.168.1.1", out[TCP].sport) if backend == "10.1.0.5" else ("10.1.0.9", sport)
        assert backend in macs and out[TCP].dport == 8080 and (out[IP].src, out[TCP].sport) == client
        assert (out.dst, int(verdicts[0])) == macs[backend]
        seen.add(backend)
        if backend == "10.1.0.5":
            reply = Ether(src="0a:00:00:00:01:05", dst="02:00:00:00:00:03") / \
                IP(src="10.1.0.5", dst=client[0]) / TCP(sport=8080, dport=client[1], flags="SA")
            verdicts, outs, _ = fx.run([bytes(reply)], fx.GATEWAY, st, ft)
            back = Ether(outs[0])
            assert int(verdicts[0]) == fx.TX_G and back.dst == "0a:00:00:00:01:09"
            assert (back[IP].src, back[TCP].sport) == ("10.96.0.10", 80)
    assert seen == set(macs)                 # Maglev spreads 40 flows over both endpoints


def test_a_translate_that_fails_part_way_loses_nothing(monkeypatch):
    """If translate raises after planning (the sync loop then retries), the retry still
    reports every steering change and builds the changed Service."""
    translator = Translator(ProxyOptions(node_name="n1"))
    translator.translate(_state([_slice("a", ["10.1.0.1"]), _slice("b", ["10.1.0.10"])]))
    changed = _state([_slice("a", ["10.1.0.2"]), _slice("b", ["10.1.0.10"])])
    real_assemble = Translator._assemble
    calls = []

    def failing_once(self, *args):
        if not calls:
            calls.append(1)
            raise MemoryError("simulated")
        return real_assemble(self, *args)

    monkeypatch.setattr(Translator, "_assemble", failing_once)
    with pytest.raises(MemoryError):
        translator.translate(changed)
    result = translator.translate(changed)
    assert result.steering.add_backends == {("10.1.0.2", 8080, TCP): GW}
    assert result.steering.remove_backends == [("10.1.0.1", 8080, TCP)]
    services = describe_tables(result.tables, result.service_names)
    assert set(services["default/a:/TCP"]["backends"]) == {"10.1.0.2:8080"}
    assert result.generation == 2


def test_established_flows_survive_an_agent_restart(tmp_path):
    """A flow DNATed by one agent keeps its backend after a restart: the new agent adopts the
    flow tables from their files, its translator keeps the backend ids the flows hold (while
    new endpoints take other ids), and the next segment hits the tracked flow."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    import fixtures_pipeline as fx
    from dataplane import tables as tbl
    from dataplane.store import backend_ids_in_use, max_fib_generation, open_flow_tables

    options = ProxyOptions(node_name="n1", transport_interface="eth0", gateway_interface="antrea-gw0")
    first = Translator(options)
    st = first.translate(state_of("clusterip.yaml"), _network_with_client_pod()).tables
    ft = open_flow_tables(str(tmp_path), 0, 4096, 1024)

    def segment(sport, flags):
        return bytes(Ether(src="0a:00:00:00:01:09", dst="02:00:00:00:00:03")
                     / IP(src="10.1.0.9", dst="10.96.0.10") / TCP(sport=sport, dport=80, flags=flags))

    _, outs, _ = fx.run([segment(41000 + i, "S") for i in range(8)], fx.GATEWAY, st, ft)
    chosen = [Ether(o)[IP].dst for o in outs]
    del ft, st, first                                          # the agent stops

    ft = open_flow_tables(str(tmp_path), 0, 4096, 1024)
    second = Translator(options, fib_generation_base=max_fib_generation(ft) + 1)
    second.adopt_backend_ids(backend_ids_in_use(ft))
    # A Service that sorts first now exists too: without adoption its endpoints would take ids
    # 1 and 2, and the adopted flows would point at the wrong backends.
    state = state_of("clusterip.yaml")
    services = dict(state.services)
    services[("default", "aaa")] = _svc("aaa", "10.96.0.99")
    slices = dict(state.endpoint_slices)
    first_slice = _slice("aaa", ["10.1.0.77", "10.1.0.78"])
    slices[first_slice.key] = first_slice
    state = ClusterState(services, slices, state.nodes)
    st = second.translate(state, _network_with_client_pod()).tables
    verdicts, outs, counters = fx.run([segment(41000 + i, "A") for i in range(8)], fx.GATEWAY, st, ft)
    assert [Ether(o)[IP].dst for o in outs] == chosen
    assert tbl.counters_by_name(counters).get("XSKP_CNT_CT_HIT") == 8
    assert "XSKP_CNT_CT_STALE" not in tbl.counters_by_name(counters)


def test_service_ids_survive_a_restart_through_the_saved_map(tmp_path):
    """Service ids saved by one agent are kept by the next (affinity and conntrack entries hold
    them), even when a new Service sorts before the old ones; unclaimed ids are released."""
    from dataplane.store import load_id_map, save_id_map
    first = Translator(ProxyOptions(node_name="n1"))
    first.translate(_state([_slice("b", ["10.1.0.10"])], {("default", "b"): _svc("b", "10.96.1.2"),
                                                          ("default", "c"): _svc("c", "10.96.1.3")}))
    save_id_map(str(tmp_path), "service-ids", first.service_id_map())
    second = Translator(ProxyOptions(node_name="n1"))
    second.adopt_service_ids(load_id_map(str(tmp_path), "service-ids"))
    second.translate(_state([_slice("b", ["10.1.0.10"])], {("default", "a"): _svc("a", "10.96.1.1"),
                                                           ("default", "b"): _svc("b", "10.96.1.2")}))
    assert second.service_id_map()[("default", "b", "", "TCP")] == first.service_id_map()[("default", "b", "", "TCP")]
    assert ("default", "c", "", "TCP") not in second.service_id_map()
    assert len(set(second.service_id_map().values())) == 2
