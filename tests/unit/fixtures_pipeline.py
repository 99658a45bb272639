"""Pipeline test topology and Katran-style fixtures (description, input frame, expected verdict,
expected output frame), built with scapy; shared by tests/unit and bench/test_pipeline_bench.py.
Fills tables directly (no control/translate): a Maglev ring here is a repeated list of ids.

Topology, seen from node A (this node):
  transport: node A 192.168.1.10 (MAC 02:00:00:00:01:0a), node B 192.168.1.20, router
             192.168.1.1 (default route for external clients such as 203.0.113.7).
  gateway:   MAC 02:00:00:00:00:01, local Pod CIDR 10.10.1.0/24 (on-link, bypass route);
             remote Pod CIDR 10.10.2.0/24 via node B (bypass route).
"""
import ipaddress
from dataclasses import dataclass, field

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.inet6 import IPv6

from dataplane import abi, tables
from dataplane.tables import hash_flow

L = abi.lib
TRANSPORT = L.XSKP_IFACE_TRANSPORT
GATEWAY = L.XSKP_IFACE_GATEWAY
FRAME_SIZE = L.XSKP_FRAME_SIZE
HEADROOM = L.XSKP_FRAME_HEADROOM


def ip4(text):
    return int(ipaddress.IPv4Address(text))


def mac_bytes(text):
    return np.frombuffer(bytes.fromhex(text.replace(":", "")), np.uint8)


NODE_A = "192.168.1.10"
NODE_B = "192.168.1.20"
ROUTER = "192.168.1.1"
CLIENT = "203.0.113.7"          # external client, inside LB source ranges
OUTSIDER = "198.18.0.9"         # external client outside every source range
POD_A1 = "10.10.1.5"            # local Pod, backend of svc "local-web"
POD_A2 = "10.10.1.6"            # local Pod client
POD_A9 = "10.10.1.9"            # local Pod, DSR backend on this node
POD_B7 = "10.10.2.7"            # remote Pod (node B), backend of "remote-web"
POD_B8 = "10.10.2.8"            # remote Pod, DNS backend
POD_B9 = "10.10.2.9"            # remote Pod, DSR backend

MAC_TRANSPORT = "02:00:00:00:01:0a"
MAC_GATEWAY = "02:00:00:00:00:01"
MAC_NODE_B = "02:00:00:00:01:14"
MAC_ROUTER = "02:00:00:00:01:01"
MAC_POD_A1 = "0a:00:00:01:01:05"
MAC_POD_A2 = "0a:00:00:01:01:06"
MAC_POD_A9 = "0a:00:00:01:01:09"
MAC_CLIENT_SIDE = "02:00:00:00:01:99"   # whatever sent the frame onto our transport

SNAT_PORT_MIN = 40000
SNAT_PORT_MAX = 40999
FIB_GENERATION = 7

CLUSTER_IP, NODE_PORT, LOAD_BALANCER, EXTERNAL_IP = (
    L.XSKP_FE_CLUSTER_IP, L.XSKP_FE_NODE_PORT, L.XSKP_FE_LOAD_BALANCER, L.XSKP_FE_EXTERNAL_IP)
TCP_P, UDP_P = 6, 17


@dataclass
class Backend:
    addr: str
    port: int
    local: bool
    node: str
    terminating: bool = False


@dataclass
class Service:
    name: str
    frontends: list                 # [(kind, addr, port, proto)]
    ring: list                      # backend ids (cluster ring, repeated as a fake Maglev ring)
    local_ring: list = field(default_factory=list)
    flags: int = 0
    affinity_timeout_s: int = 0
    source_ranges: list = field(default_factory=list)   # ["203.0.113.0/24"]


# backend id -> Backend (id 0 unused)
BACKENDS = {
    1: Backend(POD_A1, 8080, True, NODE_A),
    2: Backend(POD_B7, 8080, False, NODE_B),
    3: Backend(POD_B8, 5353, False, NODE_B),
    4: Backend(POD_B9, 80, False, NODE_B),
    5: Backend(POD_A9, 80, True, NODE_A),
    6: Backend("10.10.2.31", 80, False, NODE_B),
    7: Backend("10.10.2.32", 80, False, NODE_B),
    8: Backend("10.10.2.33", 80, False, NODE_B),
}

SERVICES = [
    Service("local-web", [(CLUSTER_IP, "10.96.0.10", 80, TCP_P), (NODE_PORT, NODE_A, 30010, TCP_P)],
            ring=[1], local_ring=[1]),
    Service("remote-web", [(CLUSTER_IP, "10.96.0.11", 80, TCP_P), (NODE_PORT, NODE_A, 30011, TCP_P),
                           (LOAD_BALANCER, "198.51.100.11", 80, TCP_P),
                           (EXTERNAL_IP, "198.51.100.21", 80, TCP_P)],
            ring=[2], flags=L.XSKP_SVC_SOURCE_RANGES, source_ranges=["203.0.113.0/24"]),
    Service("dns", [(CLUSTER_IP, "10.96.0.53", 53, UDP_P), (NODE_PORT, NODE_A, 30053, UDP_P)],
            ring=[3]),
    Service("dsr-web", [(LOAD_BALANCER, "198.51.100.12", 80, TCP_P)], ring=[4],
            flags=L.XSKP_SVC_DSR),
    Service("dsr-here", [(LOAD_BALANCER, "198.51.100.13", 80, TCP_P)], ring=[5], local_ring=[5],
            flags=L.XSKP_SVC_DSR),
    Service("etp-local", [(NODE_PORT, NODE_A, 30015, TCP_P)], ring=[2, 1], local_ring=[1],
            flags=L.XSKP_SVC_ETP_LOCAL),
    Service("affinity", [(CLUSTER_IP, "10.96.0.16", 80, TCP_P)], ring=[6, 7, 8],
            flags=L.XSKP_SVC_AFFINITY_CLIENTIP, affinity_timeout_s=86400),
    Service("empty", [(CLUSTER_IP, "10.96.0.17", 80, TCP_P)], ring=[]),
    Service("itp-local", [(CLUSTER_IP, "10.96.0.18", 80, TCP_P)], ring=[2], local_ring=[1],
            flags=L.XSKP_SVC_ITP_LOCAL),
    Service("etp-local-empty", [(NODE_PORT, NODE_A, 30019, TCP_P)], ring=[2], local_ring=[],
            flags=L.XSKP_SVC_ETP_LOCAL),
]
SERVICE_IDS = {svc.name: i for i, svc in enumerate(SERVICES)}

NEIGHBOURS = [
    (ROUTER, TRANSPORT, MAC_ROUTER),
    (NODE_B, TRANSPORT, MAC_NODE_B),
    (POD_A1, GATEWAY, MAC_POD_A1),
    (POD_A2, GATEWAY, MAC_POD_A2),
    (POD_A9, GATEWAY, MAC_POD_A9),
]

ROUTES = [  # (prefix, prefixlen, next hop, iface, flags)
    ("10.10.1.0", 24, None, GATEWAY, L.XSKP_ROUTE_BYPASS),
    ("10.10.2.0", 24, NODE_B, TRANSPORT, L.XSKP_ROUTE_BYPASS),
    ("192.168.1.0", 24, None, TRANSPORT, 0),
    ("0.0.0.0", 0, ROUTER, TRANSPORT, 0),
]


def fill_service_tables(st, services=SERVICES, backends=BACKENDS, ring_repeat=7):
    """Write services, frontends, backends and rings into st (a ServiceTables)."""
    for bid, be in backends.items():
        flags = L.XSKP_BE_ALIVE | (L.XSKP_BE_LOCAL if be.local else 0) | (
            L.XSKP_BE_TERMINATING if be.terminating else 0)
        st.backends[bid] = (ip4(be.addr), be.port, flags, ip4(be.node), 0)
    ring_at = 0
    range_at = 0
    for sid, svc in enumerate(services):
        rec = st.services[sid]
        rec["flags"] = svc.flags
        rec["affinity_timeout_s"] = svc.affinity_timeout_s
        for ring, off_field, size_field in ((svc.ring, "ring_offset", "ring_size"),
                                            (svc.local_ring, "local_ring_offset", "local_ring_size")):
            ids = list(ring) * ring_repeat
            st.maglev[ring_at:ring_at + len(ids)] = ids
            rec[off_field] = ring_at
            rec[size_field] = len(ids)
            ring_at += len(ids)
        rec["source_ranges_offset"] = range_at
        rec["source_ranges_count"] = len(svc.source_ranges)
        for cidr in svc.source_ranges:
            net = ipaddress.IPv4Network(cidr)
            st.source_ranges[range_at] = (int(net.network_address), int(net.netmask))
            range_at += 1
        for kind, addr, port, proto in svc.frontends:
            assert tables.insert_frontend(st.frontends, ip4(addr), port, proto, kind, sid) >= 0
    return st


def make_topology(services=SERVICES, backends=BACKENDS, ct_capacity=4096, affinity_capacity=1024):
    """(ServiceTables, FlowTables) of node A with the services above."""
    st = tables.make_service_tables(64, max(len(services), 1), max(backends) + 1, 4096, 16, 64, 16)
    node = st.node[0]
    node["node_addr"] = ip4(NODE_A)
    node["snat_port_min"] = SNAT_PORT_MIN
    node["snat_port_max"] = SNAT_PORT_MAX
    node["iface_mac"][TRANSPORT] = mac_bytes(MAC_TRANSPORT)
    node["iface_mac"][GATEWAY] = mac_bytes(MAC_GATEWAY)
    node["generation"] = 1
    node["fib_generation"] = FIB_GENERATION
    tables.set_routes(st, [(ip4(p), plen, ip4(nh) if nh else 0, iface, flags)
                           for p, plen, nh, iface, flags in ROUTES])
    for addr, iface, mac in NEIGHBOURS:
        assert tables.insert_neighbour(st.neighbours, ip4(addr), iface, mac_bytes(mac)) >= 0
    fill_service_tables(st, services, backends)
    return st, tables.make_flow_tables(ct_capacity, affinity_capacity)


def expected_snat_port(src, dst, sport, dport, proto):
    """The first SNAT port the pipeline tries for this original 5-tuple (the flow hash)."""
    h = int(hash_flow(ip4(src), ip4(dst), sport, dport, proto))
    return SNAT_PORT_MIN + h % (SNAT_PORT_MAX - SNAT_PORT_MIN + 1)


# --- running frames --------------------------------------------------------------------------

class Umem:
    """A small UMEM of FRAME_SIZE chunks; frame i starts at chunk i + HEADROOM."""

    def __init__(self, frames=64):
        self.array = np.zeros(frames * FRAME_SIZE, np.uint8)
        self.frames = frames

    def load(self, frames_bytes):
        n = len(frames_bytes)
        addrs = np.zeros(max(n, 1), np.uint64)
        lens = np.zeros(max(n, 1), np.uint32)
        for i, data in enumerate(frames_bytes):
            base = i * FRAME_SIZE + HEADROOM
            self.array[base:base + len(data)] = np.frombuffer(data, np.uint8)
            addrs[i] = base
            lens[i] = len(data)
        return addrs, lens

    def frame(self, addr, length):
        return self.array[int(addr):int(addr) + int(length)].tobytes()


def run(frames_bytes, ingress, st, ft, now_ns=10**12, counters=None, umem=None):
    """Run frames through process_batch; returns (verdicts, output frames, counters)."""
    from dataplane.pipeline import process_batch
    umem = umem or Umem(max(len(frames_bytes), 1))
    addrs, lens = umem.load(frames_bytes)
    verdicts = np.full(max(len(frames_bytes), 1), -7, np.int32)
    if counters is None:
        counters = tables.make_counters()
    process_batch(umem.array, addrs, lens, len(frames_bytes), ingress, st, ft, counters, verdicts,
                  np.uint64(now_ns))
    outs = [umem.frame(addrs[i], lens[i]) for i in range(len(frames_bytes))]
    return verdicts[:len(frames_bytes)], outs, counters


# --- frame builders -------------------------------------------------------------------------

def eth(src_mac, dst_mac):
    return Ether(src=src_mac, dst=dst_mac)


def from_transport(to_mac=MAC_TRANSPORT):
    return eth(MAC_CLIENT_SIDE, to_mac)


def from_pod(pod_mac):
    return eth(pod_mac, MAC_GATEWAY)


def to_transport(next_hop_mac):
    return eth(MAC_TRANSPORT, next_hop_mac)


def to_gateway(pod_mac):
    return eth(MAC_GATEWAY, pod_mac)


def tcp(src, dst, sport, dport, flags="S", ttl=64, payload=b"", seq=1000, ack=0):
    return IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                               ack=ack) / payload


def udp(src, dst, sport, dport, ttl=64, payload=b"hello"):
    return IP(src=src, dst=dst, ttl=ttl) / UDP(sport=sport, dport=dport) / payload


# Verdicts and reasons
DROP = L.XSKP_VERDICT_DROP
TX_T = L.XSKP_VERDICT_TX_TRANSPORT
TX_G = L.XSKP_VERDICT_TX_GATEWAY


@dataclass
class Step:
    """One Katran-style fixture step: a frame in, the verdict and frame (or drop reason) out."""
    description: str
    ingress: int
    frame: object                   # scapy packet or bytes
    verdict: int
    expected: object = None         # scapy packet / bytes, for tx verdicts
    reason: str = ""                # XSKP_DROP_* name, for drops
    now_s: float = 1000.0


@dataclass
class Scenario:
    """Steps that share one set of tables (a flow's directions in order)."""
    name: str
    steps: list
    setup: object = None            # callable(st, ft) run before the steps


def _nodeport_remote_scenario():
    c_port = 51000
    snat = expected_snat_port(CLIENT, NODE_A, c_port, 30011, TCP_P)
    return Scenario("nodeport-remote-snat", [
        Step("an external SYN to a NodePort with a remote backend is DNATed to the backend and "
             "SNATed to the node address", TRANSPORT,
             from_transport() / tcp(CLIENT, NODE_A, c_port, 30011, "S"), TX_T,
             to_transport(MAC_NODE_B) / tcp(NODE_A, POD_B7, snat, 8080, "S", ttl=63)),
        Step("the backend's SYN+ACK to the SNAT port is translated back to NodePort -> client",
             TRANSPORT, from_transport() / tcp(POD_B7, NODE_A, 8080, snat, "SA", ack=1001), TX_T,
             to_transport(MAC_ROUTER) / tcp(NODE_A, CLIENT, 30011, c_port, "SA", ttl=63,
                                            ack=1001)),
        Step("the client's ACK with payload follows the same translation", TRANSPORT,
             from_transport() / tcp(CLIENT, NODE_A, c_port, 30011, "A", payload=b"GET / HTTP/1.0\r\n\r\n"),
             TX_T, to_transport(MAC_NODE_B) / tcp(NODE_A, POD_B7, snat, 8080, "A", ttl=63,
                                                  payload=b"GET / HTTP/1.0\r\n\r\n")),
    ])


def scenarios():
    """Every fixture scenario; each starts from fresh tables (make_topology)."""
    out = []
    # ClusterIP from a local Pod to a local backend: DNAT + SNAT to the node address (the
    # backend's reply would otherwise stay on the Pods' switch), both directions.
    local_snat = expected_snat_port(POD_A2, "10.96.0.10", 43000, 80, TCP_P)
    out.append(Scenario("clusterip-local", [
        Step("a Pod's SYN to a ClusterIP with a local backend is DNATed and SNATed to the node",
             GATEWAY, from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.10", 43000, 80, "S"), TX_G,
             to_gateway(MAC_POD_A1) / tcp(NODE_A, POD_A1, local_snat, 8080, "S", ttl=63)),
        Step("the backend's SYN+ACK to the node gets the ClusterIP back as its source", GATEWAY,
             from_pod(MAC_POD_A1) / tcp(POD_A1, NODE_A, 8080, local_snat, "SA", ack=1001), TX_G,
             to_gateway(MAC_POD_A2) / tcp("10.96.0.10", POD_A2, 80, 43000, "SA", ttl=63,
                                          ack=1001)),
    ]))
    # ClusterIP to a remote backend: out the transport to node B, reply back to the Pod.
    out.append(Scenario("clusterip-remote", [
        Step("a Pod's SYN to a ClusterIP with a remote backend leaves on the transport to node B "
             "without SNAT", GATEWAY,
             from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.11", 43001, 80, "S"), TX_T,
             to_transport(MAC_NODE_B) / tcp(POD_A2, POD_B7, 43001, 8080, "S", ttl=63)),
        Step("the remote backend's reply arriving on the transport is un-DNATed to the Pod",
             TRANSPORT, from_transport() / tcp(POD_B7, POD_A2, 8080, 43001, "SA", ack=1001), TX_G,
             to_gateway(MAC_POD_A2) / tcp("10.96.0.11", POD_A2, 80, 43001, "SA", ttl=63,
                                          ack=1001)),
    ]))
    out.append(_nodeport_remote_scenario())
    # NodePort with a local backend (ETP Cluster): DNAT only, client address kept.
    out.append(Scenario("nodeport-local", [
        Step("an external SYN to a NodePort with a local backend is DNATed without SNAT",
             TRANSPORT, from_transport() / tcp(CLIENT, NODE_A, 51001, 30010, "S"), TX_G,
             to_gateway(MAC_POD_A1) / tcp(CLIENT, POD_A1, 51001, 8080, "S", ttl=63)),
        Step("the local backend's reply goes to the client via the router from the NodePort",
             GATEWAY, from_pod(MAC_POD_A1) / tcp(POD_A1, CLIENT, 8080, 51001, "SA", ack=1001),
             TX_T, to_transport(MAC_ROUTER) / tcp(NODE_A, CLIENT, 30010, 51001, "SA", ttl=63,
                                                  ack=1001)),
    ]))
    # LoadBalancer IP with source ranges and externalIP.
    lb_snat = expected_snat_port(CLIENT, "198.51.100.11", 51002, 80, TCP_P)
    out.append(Scenario("loadbalancer-source-ranges", [
        Step("a client inside loadBalancerSourceRanges reaches the LB IP (SNAT, remote backend)",
             TRANSPORT, from_transport() / tcp(CLIENT, "198.51.100.11", 51002, 80, "S"), TX_T,
             to_transport(MAC_NODE_B) / tcp(NODE_A, POD_B7, lb_snat, 8080, "S", ttl=63)),
        Step("its reply leaves from the LB IP", TRANSPORT,
             from_transport() / tcp(POD_B7, NODE_A, 8080, lb_snat, "SA", ack=1001), TX_T,
             to_transport(MAC_ROUTER) / tcp("198.51.100.11", CLIENT, 80, 51002, "SA", ttl=63,
                                            ack=1001)),
        Step("a client outside loadBalancerSourceRanges is dropped and counted", TRANSPORT,
             from_transport() / tcp(OUTSIDER, "198.51.100.11", 51003, 80, "S"), DROP,
             reason="XSKP_DROP_SOURCE_RANGE"),
    ]))
    ext_snat = expected_snat_port(OUTSIDER, "198.51.100.21", 51004, 80, TCP_P)
    out.append(Scenario("external-ip", [
        Step("an externalIP is served like the LB IP (source ranges apply to LB IPs only)",
             TRANSPORT, from_transport() / tcp(OUTSIDER, "198.51.100.21", 51004, 80, "S"), TX_T,
             to_transport(MAC_NODE_B) / tcp(NODE_A, POD_B7, ext_snat, 8080, "S", ttl=63)),
        Step("its reply leaves from the externalIP", TRANSPORT,
             from_transport() / tcp(POD_B7, NODE_A, 8080, ext_snat, "SA", ack=1001), TX_T,
             to_transport(MAC_ROUTER) / tcp("198.51.100.21", OUTSIDER, 80, 51004, "SA", ttl=63,
                                            ack=1001)),
    ]))
    # UDP, checksum kept and checksum 0 kept 0.
    out.append(Scenario("udp-dns", [
        Step("a Pod's UDP query to a ClusterIP is DNATed with its checksum updated", GATEWAY,
             from_pod(MAC_POD_A2) / udp(POD_A2, "10.96.0.53", 40053, 53), TX_T,
             to_transport(MAC_NODE_B) / udp(POD_A2, POD_B8, 40053, 5353, ttl=63)),
        Step("the UDP reply is translated back to the ClusterIP", TRANSPORT,
             from_transport() / udp(POD_B8, POD_A2, 5353, 40053, payload=b"answer"), TX_G,
             to_gateway(MAC_POD_A2) / udp("10.96.0.53", POD_A2, 53, 40053, ttl=63,
                                          payload=b"answer")),
        Step("a UDP datagram without checksum (0) keeps checksum 0 through DNAT", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst="10.96.0.53") / UDP(sport=40054, dport=53,
                                                                          chksum=0) / b"q",
             TX_T, to_transport(MAC_NODE_B) / IP(src=POD_A2, dst=POD_B8, ttl=63)
             / UDP(sport=40054, dport=5353, chksum=0) / b"q"),
    ]))
    # ETP Local / ITP Local.
    itp_snat = expected_snat_port(POD_A2, "10.96.0.18", 43002, 80, TCP_P)
    out.append(Scenario("traffic-policy-local", [
        Step("externalTrafficPolicy Local sends a NodePort client to the local backend, no SNAT",
             TRANSPORT, from_transport() / tcp(CLIENT, NODE_A, 51005, 30015, "S"), TX_G,
             to_gateway(MAC_POD_A1) / tcp(CLIENT, POD_A1, 51005, 8080, "S", ttl=63)),
        Step("externalTrafficPolicy Local without a local endpoint drops (no backend)", TRANSPORT,
             from_transport() / tcp(CLIENT, NODE_A, 51006, 30019, "S"), DROP,
             reason="XSKP_DROP_NO_BACKEND"),
        Step("internalTrafficPolicy Local sends a Pod to the local backend only", GATEWAY,
             from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.18", 43002, 80, "S"), TX_G,
             to_gateway(MAC_POD_A1) / tcp(NODE_A, POD_A1, itp_snat, 8080, "S", ttl=63)),
        Step("a Service without endpoints refuses the connection with ICMP port unreachable from "
             "its ClusterIP, quoting the SYN (kube-proxy's REJECT)", GATEWAY,
             from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.17", 43003, 80, "S"), TX_G,
             to_gateway(MAC_POD_A2) / IP(src="10.96.0.17", dst=POD_A2, ttl=64, tos=0xc0, id=0)
             / ICMP(type=3, code=3) / bytes(tcp(POD_A2, "10.96.0.17", 43003, 80, "S"))),
    ]))
    # Hairpin.
    hp_snat = expected_snat_port(POD_A1, "10.96.0.10", 43004, 80, TCP_P)
    out.append(Scenario("hairpin", [
        Step("a Pod reaching itself through its ClusterIP is SNATed to the node address", GATEWAY,
             from_pod(MAC_POD_A1) / tcp(POD_A1, "10.96.0.10", 43004, 80, "S"), TX_G,
             to_gateway(MAC_POD_A1) / tcp(NODE_A, POD_A1, hp_snat, 8080, "S", ttl=63)),
        Step("its own reply to the node address comes back from the ClusterIP", GATEWAY,
             from_pod(MAC_POD_A1) / tcp(POD_A1, NODE_A, 8080, hp_snat, "SA", ack=1001), TX_G,
             to_gateway(MAC_POD_A1) / tcp("10.96.0.10", POD_A1, 80, 43004, "SA", ttl=63,
                                          ack=1001)),
    ]))
    # DSR ingress node: IPIP to node B, one-way.
    inner = tcp(CLIENT, "198.51.100.12", 51007, 80, "S")
    inner_out = tcp(CLIENT, "198.51.100.12", 51007, 80, "S", ttl=63)
    out.append(Scenario("dsr-ingress", [
        Step("a DSR LoadBalancer SYN is IPIP-encapsulated unchanged to the backend's node",
             TRANSPORT, from_transport() / inner, TX_T,
             to_transport(MAC_NODE_B) / IP(src=NODE_A, dst=NODE_B, proto=4, ttl=64, id=0)
             / inner_out),
        Step("the flow's next segment follows the tracked tunnel", TRANSPORT,
             from_transport() / tcp(CLIENT, "198.51.100.12", 51007, 80, "A"), TX_T,
             to_transport(MAC_NODE_B) / IP(src=NODE_A, dst=NODE_B, proto=4, ttl=64, id=0)
             / tcp(CLIENT, "198.51.100.12", 51007, 80, "A", ttl=63)),
    ]))
    # DSR backend node (this node): decapsulate, DNAT to the local backend, reply from the VIP.
    out.append(Scenario("dsr-backend-node", [
        Step("IPIP to this node carrying a DSR LB flow is decapsulated and DNATed to the local "
             "backend", TRANSPORT,
             eth(MAC_NODE_B, MAC_TRANSPORT) / IP(src=NODE_B, dst=NODE_A, proto=4, ttl=64)
             / tcp(CLIENT, "198.51.100.13", 51008, 80, "S", ttl=63), TX_G,
             to_gateway(MAC_POD_A9) / tcp(CLIENT, POD_A9, 51008, 80, "S",
                                          ttl=62)),
        Step("the backend's reply goes straight to the client from the VIP", GATEWAY,
             from_pod(MAC_POD_A9) / tcp(POD_A9, CLIENT, 80, 51008, "SA", ack=1001), TX_T,
             to_transport(MAC_ROUTER) / tcp("198.51.100.13", CLIENT, 80, 51008, "SA", ttl=63,
                                            ack=1001)),
    ]))
    # Netfilter bypass, both directions.
    out.append(Scenario("bypass", [
        Step("Pod -> remote Pod CIDR leaves on the transport with node B's MAC, TTL - 1, untracked",
             GATEWAY, from_pod(MAC_POD_A2) / tcp(POD_A2, POD_B7, 43005, 8080, "S"), TX_T,
             to_transport(MAC_NODE_B) / tcp(POD_A2, POD_B7, 43005, 8080, "S", ttl=63)),
        Step("transport -> local Pod goes out the gateway with the Pod's MAC", TRANSPORT,
             from_transport() / tcp(POD_B7, POD_A2, 8080, 43005, "SA", ack=1001), TX_G,
             to_gateway(MAC_POD_A2) / tcp(POD_B7, POD_A2, 8080, 43005, "SA", ttl=63, ack=1001)),
        Step("ICMP echo between Pods is bypassed too", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst=POD_B7) / ICMP(id=7, seq=1), TX_T,
             to_transport(MAC_NODE_B) / IP(src=POD_A2, dst=POD_B7, ttl=63) / ICMP(id=7, seq=1)),
        Step("a fragment to a bypass route is forwarded (routing needs no ports)", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst=POD_B7, flags="MF", frag=0, proto=17)
             / (b"\x01" * 16), TX_T,
             to_transport(MAC_NODE_B) / IP(src=POD_A2, dst=POD_B7, flags="MF", frag=0, proto=17,
                                           ttl=63) / (b"\x01" * 16)),
        Step("a frame with TTL 1 is answered, as the kernel's forwarding does, with an ICMP time "
             "exceeded from the node address to its source, quoting it as received", GATEWAY,
             from_pod(MAC_POD_A2) / tcp(POD_A2, POD_B7, 43006, 8080, "S", ttl=1), TX_G,
             to_gateway(MAC_POD_A2) / IP(src=NODE_A, dst=POD_A2, ttl=64, tos=0xc0, id=0)
             / ICMP(type=11, code=0) / tcp(POD_A2, POD_B7, 43006, 8080, "S", ttl=1)),
        Step("a TTL 0 SYN to a NodePort is answered from the node out the route to the client, "
             "before any flow is created", TRANSPORT,
             from_transport() / tcp(CLIENT, NODE_A, 51020, 30011, "S", ttl=0, payload=b"x" * 600),
             TX_T, to_transport(MAC_ROUTER) / IP(src=NODE_A, dst=CLIENT, ttl=64, tos=0xc0, id=0)
             / ICMP(type=11, code=0)
             / bytes(tcp(CLIENT, NODE_A, 51020, 30011, "S", ttl=0, payload=b"x" * 600))[:548]),
        Step("an ICMP error with TTL 1 is dropped, never answered with another", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst=POD_B7, ttl=1) / ICMP(type=3, code=3)
             / IP(src=POD_B7, dst=POD_A2) / UDP(sport=53, dport=40000), DROP,
             reason="XSKP_DROP_TTL_EXCEEDED"),
        Step("a non-first fragment with TTL 1 is dropped unanswered", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst=POD_B7, frag=100, proto=17, ttl=1)
             / (b"\x02" * 16), DROP, reason="XSKP_DROP_TTL_EXCEEDED"),
        Step("a destination outside every bypass route and Service is not ours", GATEWAY,
             from_pod(MAC_POD_A2) / tcp(POD_A2, "8.8.8.8", 43007, 443, "S"), DROP,
             reason="XSKP_DROP_NOT_OURS"),
    ]))
    # Parsing.
    out.append(Scenario("parsing", [
        Step("ARP is not ours", GATEWAY, Ether(src=MAC_POD_A2, dst="ff:ff:ff:ff:ff:ff")
             / ARP(psrc=POD_A2, pdst="10.10.1.1"), DROP, reason="XSKP_DROP_NOT_OURS"),
        Step("IPv6 is counted as unsupported", GATEWAY,
             from_pod(MAC_POD_A2) / IPv6(src="fd00::5", dst="fd00::6") / UDP(sport=1, dport=2),
             DROP, reason="XSKP_DROP_UNSUPPORTED"),
        Step("a frame cut inside the IPv4 header is truncated", GATEWAY,
             bytes(from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.10", 43008, 80))[:30], DROP,
             reason="XSKP_DROP_TRUNCATED"),
        Step("a frame cut inside the TCP header is truncated", GATEWAY,
             bytes(from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.10", 43008, 80))[:40], DROP,
             reason="XSKP_DROP_TRUNCATED"),
        Step("a bad IPv4 version is dropped", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst=POD_B7, version=5) / UDP(), DROP,
             reason="XSKP_DROP_BAD_IP"),
        Step("a non-first fragment to a Service cannot be port-matched and is dropped", GATEWAY,
             from_pod(MAC_POD_A2) / IP(src=POD_A2, dst="10.96.0.53", frag=100, proto=17)
             / (b"\x02" * 16), DROP, reason="XSKP_DROP_FRAGMENT"),
        Step("IPv4 options are skipped while NATing", GATEWAY,
             Ether(src=MAC_POD_A2, dst=MAC_GATEWAY)
             / IP(src=POD_A2, dst="10.96.0.10", options=b"\x94\x04\x00\x00")
             / TCP(sport=43009, dport=80, flags="S", seq=1000), TX_G,
             Ether(src=MAC_GATEWAY, dst=MAC_POD_A1)
             / IP(src=NODE_A, dst=POD_A1, ttl=63, options=b"\x94\x04\x00\x00")
             / TCP(sport=expected_snat_port(POD_A2, "10.96.0.10", 43009, 80, TCP_P), dport=8080,
                   flags="S", seq=1000)),
        Step("a SYN tagged VLAN 10 to a NodePort is not translated (no VLAN is configured)",
             TRANSPORT, from_transport() / Dot1Q(vlan=10) / tcp(CLIENT, NODE_A, 51021, 30011, "S"),
             DROP, reason="XSKP_DROP_VLAN"),
        Step("an 802.1ad (QinQ) tagged frame is not translated either", GATEWAY,
             Ether(src=MAC_POD_A2, dst=MAC_GATEWAY, type=0x88a8) / Dot1Q(vlan=20)
             / tcp(POD_A2, "10.96.0.10", 43011, 80, "S"), DROP, reason="XSKP_DROP_VLAN"),
        Step("a SYN whose IPv4 header checksum does not verify is dropped", TRANSPORT,
             from_transport() / IP(src=CLIENT, dst=NODE_A, chksum=0x1234)
             / TCP(sport=51022, dport=30011, flags="S"), DROP, reason="XSKP_DROP_BAD_CSUM"),
        Step("an RST for no tracked flow is invalid", GATEWAY,
             from_pod(MAC_POD_A2) / tcp(POD_A2, "10.96.0.10", 43010, 80, "R"), DROP,
             reason="XSKP_DROP_TCP_INVALID"),
    ]))
    # ICMP errors for translated flows.
    np_snat = expected_snat_port(CLIENT, NODE_A, 51009, 30011, TCP_P)
    quoted_fwd = IP(src=NODE_A, dst=POD_B7, ttl=62) / TCP(sport=np_snat, dport=8080, flags="S",
                                                          seq=1000)
    quoted_fwd_back = IP(src=CLIENT, dst=NODE_A, ttl=62) / TCP(sport=51009, dport=30011,
                                                               flags="S", seq=1000)
    out.append(Scenario("icmp-errors", [
        Step("(setup) a SYN to the NodePort with a remote backend creates a SNATed flow",
             TRANSPORT, from_transport() / tcp(CLIENT, NODE_A, 51009, 30011, "S"), TX_T,
             to_transport(MAC_NODE_B) / tcp(NODE_A, POD_B7, np_snat, 8080, "S", ttl=63)),
        Step("an ICMP frag-needed from a router about the forwarded SYN is translated back to "
             "the client (outer destination and quoted header)", TRANSPORT,
             from_transport() / IP(src="192.168.1.254", dst=NODE_A)
             / ICMP(type=3, code=4, nexthopmtu=1400) / quoted_fwd, TX_T,
             to_transport(MAC_ROUTER) / IP(src="192.168.1.254", dst=CLIENT, ttl=63)
             / ICMP(type=3, code=4, nexthopmtu=1400) / quoted_fwd_back),
        Step("an ICMP port unreachable from the client about the reply is translated to the "
             "backend (both outer addresses and the quoted header)", TRANSPORT,
             from_transport() / IP(src=CLIENT, dst=NODE_A) / ICMP(type=3, code=3)
             / IP(src=NODE_A, dst=CLIENT, ttl=60) / TCP(sport=30011, dport=51009, flags="SA"),
             TX_T,
             to_transport(MAC_NODE_B) / IP(src=NODE_A, dst=POD_B7, ttl=63) / ICMP(type=3, code=3)
             / IP(src=POD_B7, dst=NODE_A, ttl=60) / TCP(sport=8080, dport=np_snat, flags="SA")),
    ]))
    return out
