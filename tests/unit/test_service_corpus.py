"""The Service semantics corpus (corpus/service_semantics.yaml) run against the translation and
the pipeline: each case's objects are translated on node n1, and each probe's packets (64 new
flows from one source) go through process_batch with the translated tables; the backends the
flows reach, or "kernel" (the steering maps leave the packet to the kernel), or "drop", must be
what kube-proxy would do. Also checks that the corpus covers every field it lists."""
import ipaddress
import os

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit

import fixtures_pipeline as fx
from control.convert import model_from_dict, state_from_models
from control.netlink import Address, FibEntry, Link, NodeNetwork
from control.translate import PROTOCOL_NUMBERS, ROLE_GATEWAY, ROLE_TRANSPORT, ProxyOptions, Translator
from dataplane import abi, tables
from dataplane._conntrack import ct_lookup

CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "service_semantics.yaml")
L = abi.lib
FLOWS = 64                                   # new flows per probe, source ports 40000..40063
FLOW_GAP_NS = 2_000_000                      # between two flows of a probe

TRANSPORT = Link(2, "eth0", "02:00:00:00:01:01", 1500, True)
GATEWAY = Link(3, "gw0", "02:00:00:00:00:01", 1500, True)
ROUTER_MAC = "02:00:00:00:01:fe"
# name -> (InternalIP, Pod CIDR prefix, zone label, MAC of its transport)
NODES = {"n1": ("192.168.1.1", "10.1.0", "zone-a", TRANSPORT.mac),
         "n2": ("192.168.1.2", "10.2.0", "zone-b", "02:00:00:00:01:02"),
         "n3": ("192.168.1.3", "10.3.0", "zone-a", "02:00:00:00:01:03")}
# probe source -> (address, interface it arrives on, MAC it comes from)
SOURCES = {"pod": ("10.1.0.200", GATEWAY, "0a:00:00:01:00:c8"),
           "remote-pod": ("10.2.0.200", TRANSPORT, NODES["n2"][3]),
           "external": ("203.0.113.7", TRANSPORT, ROUTER_MAC),
           "outsider": ("198.18.0.9", TRANSPORT, ROUTER_MAC)}
API_VERSIONS = {"Service": "v1", "Node": "v1", "EndpointSlice": "discovery.k8s.io/v1"}
XFAIL = {}   # key -> why xskproxy differs from kube-proxy there (a probe's `xfail: key`); none today


def load_corpus():
    with open(CORPUS) as f:
        return yaml.safe_load(f)


def node_objects(labels_override):
    out = []
    for name, (address, pods, zone, _) in NODES.items():
        labels = labels_override.get(name, {"topology.kubernetes.io/zone": zone})
        out.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                    "spec": {"podCIDRs": [f"{pods}.0/24"]},
                    "status": {"addresses": [{"type": "InternalIP", "address": address},
                                             {"type": "Hostname", "address": name}]}})
    return out


def pod_mac(host):
    return "0a:00:00:01:00:%02x" % host


def network_of_n1():
    """n1's links, addresses and FIB: its Pods resolved on the gateway, the other nodes' Pod
    CIDRs through them on the transport, everything else through the router."""
    fib = [FibEntry(f"10.1.0.{h}/32", GATEWAY.index, pod_mac(h), GATEWAY.mac, f"10.1.0.{h}", 1500)
           for h in range(2, 255)]
    for name, (address, pods, _, mac) in NODES.items():
        if name != "n1":
            fib.append(FibEntry(f"{address}/32", TRANSPORT.index, mac, TRANSPORT.mac, address, 1500))
            fib.append(FibEntry(f"{pods}.0/24", TRANSPORT.index, mac, TRANSPORT.mac, address, 1500))
    fib.append(FibEntry("0.0.0.0/0", TRANSPORT.index, ROUTER_MAC, TRANSPORT.mac, "192.168.1.254", 1500))
    return NodeNetwork(links=(TRANSPORT, GATEWAY),
                       addresses=(Address(TRANSPORT.index, "192.168.1.1", 24),
                                  Address(GATEWAY.index, "10.1.0.1", 24)),
                       fib=tuple(fib))


_translations = {}


def translated(case):
    """(Translation, steering contents) of a case on n1, built once per case."""
    name = case["name"]
    if name not in _translations:
        objects = node_objects(case.get("nodeLabels", {})) + [
            dict(o, apiVersion=o.get("apiVersion", API_VERSIONS[o["kind"]])) for o in case["objects"]]
        state = state_from_models(model_from_dict(o) for o in objects)
        options = dict(proxy_all=True, node_name="n1", transport_interface=TRANSPORT.name,
                       gateway_interface=GATEWAY.name)
        options.update(case.get("options", {}))
        translator = Translator(ProxyOptions(**options))
        result = translator.translate(state, network_of_n1())
        _translations[name] = (result, translator.steering_contents())
    return _translations[name]


def probe_frames(source, dst, port, protocol):
    src, iface, mac = SOURCES[source]
    frames = []
    for i in range(FLOWS):
        l4 = {"TCP": lambda: TCP(sport=40000 + i, dport=port, flags="S"),
              "UDP": lambda: UDP(sport=40000 + i, dport=port) / b"query",
              "SCTP": lambda: SCTP(sport=40000 + i, dport=port) / SCTPChunkInit(init_tag=1 + i)}[protocol]()
        frames.append(bytes(Ether(src=mac, dst=iface.mac) / IP(src=src, dst=dst, ttl=64) / l4))
    return frames


def outcome(case, probe):
    """What a probe's flows meet: "kernel", ("drop", {reason names}) or a set of "addr:port"
    backends (a list, one entry per flow, for sticky probes)."""
    result, steering = translated(case)
    address, rest = probe["to"].rsplit(":", 1)
    port, protocol = rest.split("/")
    port, proto = int(port), PROTOCOL_NUMBERS[protocol]
    src, iface, _ = SOURCES[probe["from"]]
    role = ROLE_GATEWAY if iface is GATEWAY else ROLE_TRANSPORT
    if not steering.frontends.get((address, port, proto), 0) & role:
        return "kernel"
    ingress = L.XSKP_IFACE_GATEWAY if iface is GATEWAY else L.XSKP_IFACE_TRANSPORT
    flow_tables = tables.make_flow_tables(4096, 1024)
    # one flow every 2 ms: the pipeline's ICMP error rate limit (a burst of 50, then one per
    # ms) must not turn a refusal into a drop
    counters = tables.make_counters()
    verdicts, outs = [], []
    for i, frame in enumerate(probe_frames(probe["from"], address, port, protocol)):
        verdict, out, _ = fx.run([frame], ingress, result.tables, flow_tables, now_ns=10**12 + i * FLOW_GAP_NS,
                                 counters=counters)
        verdicts.append(int(verdict[0]))
        outs.append(out[0])
    if all(v != fx.DROP for v in verdicts) and all(refused(Ether(out), src) for out in outs):
        return "reject"
    if all(v == fx.DROP for v in verdicts):
        reasons = {name[len("XSKP_DROP_"):] for name, count in tables.counters_by_name(counters).items()
                   if name.startswith("XSKP_DROP_") and count}
        return "drop", reasons
    reached = []
    backends = result.tables.backends
    for i, verdict in enumerate(verdicts):
        assert verdict != fx.DROP, f"flow {i} dropped while others were forwarded"
        entry = ct_lookup(flow_tables.ct, fx.ip4(src), fx.ip4(address), 40000 + i, port, proto)
        backend = backends[int(flow_tables.ct[entry]["backend_id"])]
        reached.append(f"{ipaddress.IPv4Address(int(backend['addr']))}:{int(backend['port'])}")
    return reached


def refused(frame, client):
    """True for a TCP RST or an ICMP port unreachable sent back to the client."""
    if IP not in frame or frame[IP].dst != client:
        return False
    if ICMP in frame:
        return frame[ICMP].type == 3 and frame[ICMP].code == 3
    return TCP in frame and bool(frame[TCP].flags & 0x04)


def probes():
    for case in load_corpus()["cases"]:
        for probe in case["probes"]:
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[probe["xfail"]])] if "xfail" in probe else []
            yield pytest.param(case, probe, id=f"{case['name']}:{probe['from']}->{probe['to']}", marks=marks)


@pytest.mark.parametrize("case,probe", list(probes()))
def test_probe_reaches_what_kube_proxy_would(case, probe):
    """A probe's new flows reach exactly the expected backends (each one of them), or are left
    to the kernel, or are refused, or are dropped for the expected reason."""
    got = outcome(case, probe)
    expected = probe["expect"]
    if expected == "kernel":
        assert got == "kernel", case["about"]
    elif expected == "reject":
        assert got == "reject", case["about"]
    elif expected == "drop":
        assert got != "kernel" and got[0] == "drop", case["about"]
        assert "reason" not in probe or got[1] == {probe["reason"]}, got
    elif probe.get("sticky"):
        assert got != "kernel" and got[0] != "drop", got
        assert len(set(got)) == 1 and got[0] in expected, case["about"]
    else:
        assert got != "kernel" and got[0] != "drop", got
        assert set(got) == set(expected), case["about"]


def test_corpus_covers_every_listed_field_and_lists_every_covered_one():
    """Every Service, EndpointSlice and Node field of the corpus' list is covered by a case, and
    no case claims a field the list does not name."""
    corpus = load_corpus()
    listed = {f for fields in corpus["fields"].values() for f in fields}
    covered = {f for case in corpus["cases"] for f in case["covers"]}
    assert listed - covered == set(), "fields no case covers"
    assert covered - listed == set(), "cases cover fields the list does not name"


def test_case_names_are_unique_and_objects_are_valid_kubernetes_kinds():
    names = [case["name"] for case in load_corpus()["cases"]]
    assert len(names) == len(set(names))
    for case in load_corpus()["cases"]:
        assert {o["kind"] for o in case["objects"]} <= set(API_VERSIONS), case["name"]


def test_a_pods_flow_to_an_etp_local_lb_ip_reaches_a_remote_endpoint_and_its_reply_comes_back():
    """This node's Pod opens a connection to the LB IP of an externalTrafficPolicy Local Service:
    like kube-proxy, xskproxy sends it to any endpoint, a remote one without SNAT (the Pod's
    address is kept, as for a ClusterIP), and the endpoint's SYN+ACK, arriving on the transport,
    goes back to the Pod from the LB IP."""
    case = next(c for c in load_corpus()["cases"] if c["name"] == "external-traffic-policy-local")
    result, steering = translated(case)
    pod, _, pod_mac_ = SOURCES["pod"]
    flow_tables = tables.make_flow_tables(4096, 1024)
    for sport in range(45000, 45064):
        syn = Ether(src=pod_mac_, dst=GATEWAY.mac) / IP(src=pod, dst="203.0.113.35") / TCP(sport=sport, dport=80, flags="S")
        verdicts, outs, _ = fx.run([bytes(syn)], L.XSKP_IFACE_GATEWAY, result.tables, flow_tables)
        if verdicts[0] == fx.TX_T:
            break
    else:
        raise AssertionError("no flow of this node's Pod reached the remote endpoint")
    forwarded = Ether(outs[0])
    assert (forwarded[IP].src, forwarded[IP].dst, forwarded[TCP].dport) == (pod, "10.2.0.5", 8080)
    assert steering.backends[("10.2.0.5", 8080, 6)] & ROLE_TRANSPORT
    reply = Ether(src=NODES["n2"][3], dst=TRANSPORT.mac) / IP(src="10.2.0.5", dst=pod) / TCP(
        sport=8080, dport=sport, flags="SA", ack=1)
    verdicts, outs, _ = fx.run([bytes(reply)], L.XSKP_IFACE_TRANSPORT, result.tables, flow_tables)
    back = Ether(outs[0])
    assert verdicts[0] == fx.TX_G
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == ("203.0.113.35", 80, pod, sport)


def test_readme_says_how_every_field_is_honoured():
    """README.md's Service semantics section has a row for every field the corpus lists."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as f:
        readme = f.read()
    section = readme.split("## Service semantics", 1)[1].split("\n## ", 1)[0]
    corpus = load_corpus()
    for kind, fields in corpus["fields"].items():
        for name in fields:
            assert f"| `{name}` |" in section, f"README lists no {kind} field {name}"
