"""SNAT port pool (issue 13 item 2): the whole snatPortRange per destination (backend, backend
port, proto), closed flows' ports taken over by new connections as nf_nat does in TIME_WAIT,
close timeouts as nf_conntrack's (nf_conntrack_proto_tcp.c: TIME_WAIT 120 s, CLOSE 10 s,
FIN_WAIT 120 s), and `ab -c 20`-like churn through a hairpin ClusterIP without exhaustion."""
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

import fixtures_pipeline as fx
from dataplane import abi, tables
from dataplane._conntrack import ct_lookup

L = abi.lib
S = 10**9
T0 = 1000 * S
SPAN = fx.SNAT_PORT_MAX - fx.SNAT_PORT_MIN + 1


def send(st, ft, pkt, ingress, now_ns=T0):
    verdicts, outs, counters = fx.run([bytes(pkt)], ingress, st, ft, now_ns=now_ns)
    return int(verdicts[0]), outs[0], tables.counters_by_name(counters)


def entry(ft, src, dst, sport, dport, proto=6):
    idx = ct_lookup(ft.ct, fx.ip4(src), fx.ip4(dst), sport, dport, proto)
    return None if idx < 0 else ft.ct[idx]


def nodeport(client, sport, flags="S"):
    """An external client's segment to remote-web's NodePort (ETP Cluster, remote backend)."""
    return fx.from_transport() / fx.tcp(client, fx.NODE_A, sport, 30011, flags)


def backend_to(port, flags):
    """remote-web's backend (10.10.2.7:8080, via node B) answering SNAT port `port`."""
    return fx.from_transport() / fx.tcp(fx.POD_B7, fx.NODE_A, 8080, port, flags)


def open_nodeport_flow(st, ft, client, sport, now_ns=T0):
    """SYN through the NodePort; returns the SNAT port it got."""
    verdict, out, _ = send(st, ft, nodeport(client, sport), fx.TRANSPORT, now_ns)
    assert verdict == fx.TX_T
    return Ether(out)[TCP].sport


def close_nodeport_flow(st, ft, client, sport, port, now_ns, rst=False):
    """Handshake then FINs both ways (TIME_WAIT) or a client RST (CLOSE)."""
    steps = [(backend_to(port, "SA"), fx.TRANSPORT), (nodeport(client, sport, "A"), fx.TRANSPORT)]
    if rst:
        steps.append((nodeport(client, sport, "R"), fx.TRANSPORT))
    else:
        steps += [(backend_to(port, "FA"), fx.TRANSPORT), (nodeport(client, sport, "FA"), fx.TRANSPORT),
                  (backend_to(port, "A"), fx.TRANSPORT)]
    for pkt, ingress in steps:
        assert send(st, ft, pkt, ingress, now_ns)[0] == fx.TX_T
    assert entry(ft, client, fx.NODE_A, sport, 30011)["state"] == L.XSKP_CT_CLOSING


def test_every_port_of_the_range_serves_one_destination():
    """Flows still opening to one backend get every port of the SNAT range, not only the
    XSKP_SNAT_MAX_TRIES ports after their hash; the next one is SNAT_EXHAUSTED, and another
    destination (a hairpin to a local backend) still gets a port."""
    st, ft = fx.make_topology(ct_capacity=1 << 14)
    frames = [bytes(nodeport(f"203.0.113.{1 + i % 250}", 20000 + i)) for i in range(SPAN)]
    ports = set()
    for chunk in range(0, SPAN, 50):
        verdicts, outs, counters = fx.run(frames[chunk:chunk + 50], fx.TRANSPORT, st, ft, now_ns=T0)
        assert (verdicts == fx.TX_T).all(), tables.counters_by_name(counters)
        ports.update(Ether(o)[TCP].sport for o in outs)
    assert ports == set(range(fx.SNAT_PORT_MIN, fx.SNAT_PORT_MAX + 1))
    verdict, _, counters = send(st, ft, nodeport("203.0.113.251", 19999), fx.TRANSPORT)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SNAT_EXHAUSTED") == 1
    hairpin = fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, "10.96.0.10", 45000, 80, "S")
    verdict, out, _ = send(st, ft, hairpin, fx.GATEWAY)
    assert verdict == fx.TX_G and fx.SNAT_PORT_MIN <= Ether(out)[TCP].sport <= fx.SNAT_PORT_MAX


def test_a_worker_among_several_takes_only_its_share_of_the_range():
    """Worker 1 of 3 (upcall mode spreads flows over workers, and sends a reply to a SNAT port to
    worker port % 3): every port it gives is one of its share, the share is used whole, then
    SNAT_EXHAUSTED; its replies are un-NATed."""
    st, ft = fx.make_topology(ct_capacity=1 << 14)
    ft = tables.with_partition(ft, 1, 3)
    share = {p for p in range(fx.SNAT_PORT_MIN, fx.SNAT_PORT_MAX + 1) if p % 3 == 1}
    frames = [bytes(nodeport(f"203.0.113.{1 + i % 250}", 20000 + i)) for i in range(len(share))]
    ports = set()
    for chunk in range(0, len(frames), 50):
        verdicts, outs, counters = fx.run(frames[chunk:chunk + 50], fx.TRANSPORT, st, ft, now_ns=T0)
        assert (verdicts == fx.TX_T).all(), tables.counters_by_name(counters)
        ports.update(Ether(o)[TCP].sport for o in outs)
    assert ports == share
    verdict, _, counters = send(st, ft, nodeport("203.0.113.251", 19999), fx.TRANSPORT)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SNAT_EXHAUSTED") == 1
    port = min(share)
    verdict, out, _ = send(st, ft, backend_to(port, "SA"), fx.TRANSPORT)
    assert verdict == fx.TX_T and 20000 <= Ether(out)[TCP].dport < 20000 + len(share)


def test_a_closed_flows_port_is_taken_over_by_a_new_syn():
    """With every port held, a SYN takes over the port of the closed flow (FINs both ways, or
    RST) idle longest: that flow is removed (XSKP_CNT_CT_REUSED) and the new one SNATed to its
    port, as nf_nat reuses a tuple in TIME_WAIT or CLOSE."""
    st, ft = fx.make_topology()
    st.node[0]["snat_port_min"] = 50000
    st.node[0]["snat_port_max"] = 50001
    a = open_nodeport_flow(st, ft, fx.CLIENT, 30000)
    b = open_nodeport_flow(st, ft, fx.CLIENT, 30001)
    close_nodeport_flow(st, ft, fx.CLIENT, 30001, b, T0 + 1 * S)
    close_nodeport_flow(st, ft, fx.CLIENT, 30000, a, T0 + 2 * S, rst=True)
    verdict, out, counters = send(st, ft, nodeport(fx.CLIENT, 30002), fx.TRANSPORT, T0 + 3 * S)
    assert verdict == fx.TX_T and "XSKP_DROP_SNAT_EXHAUSTED" not in counters
    assert counters.get("XSKP_CNT_CT_REUSED") == 1 and Ether(out)[TCP].sport == b
    assert entry(ft, fx.CLIENT, fx.NODE_A, 30001, 30011) is None
    reply = entry(ft, fx.POD_B7, fx.NODE_A, 8080, b)
    assert reply["new_dst_port"] == 30002 and reply["state"] == L.XSKP_CT_SYN_SENT
    verdict, out, counters = send(st, ft, nodeport(fx.CLIENT, 30003), fx.TRANSPORT, T0 + 4 * S)
    assert verdict == fx.TX_T and Ether(out)[TCP].sport == a
    assert counters.get("XSKP_CNT_CT_REUSED") == 1


def test_ports_of_open_or_half_closed_flows_are_never_taken():
    """Ports held by an ESTABLISHED flow and a half-closed one (FIN one way) stay theirs: a new
    SYN is SNAT_EXHAUSTED; a closed flow's port is not taken by a mid-stream segment either."""
    st, ft = fx.make_topology()
    st.node[0]["snat_port_min"] = 50000
    st.node[0]["snat_port_max"] = 50001
    a = open_nodeport_flow(st, ft, fx.CLIENT, 30000)
    b = open_nodeport_flow(st, ft, fx.CLIENT, 30001)
    for pkt in (backend_to(a, "SA"), nodeport(fx.CLIENT, 30000, "A"), backend_to(b, "SA"),
                nodeport(fx.CLIENT, 30001, "A"), nodeport(fx.CLIENT, 30001, "FA")):
        assert send(st, ft, pkt, fx.TRANSPORT)[0] == fx.TX_T
    verdict, _, counters = send(st, ft, nodeport(fx.CLIENT, 30002), fx.TRANSPORT, T0 + 60 * S)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SNAT_EXHAUSTED") == 1
    for pkt in (backend_to(b, "FA"), nodeport(fx.CLIENT, 30001, "A")):
        assert send(st, ft, pkt, fx.TRANSPORT)[0] == fx.TX_T
    verdict, _, counters = send(st, ft, nodeport(fx.CLIENT, 30003, "A"), fx.TRANSPORT)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SNAT_EXHAUSTED") == 1


def test_close_timeouts_are_nf_conntracks():
    """A flow closed by FINs both ways keeps translating late segments for TIME_WAIT (120 s) and
    is gone after it; a half-closed one lasts FIN_WAIT (120 s)."""
    assert (L.XSKP_CT_TIMEOUT_TCP_TIME_WAIT_S, L.XSKP_CT_TIMEOUT_TCP_CLOSE_S,
            L.XSKP_CT_TIMEOUT_TCP_FIN_WAIT_S) == (120, 10, 120)
    st, ft = fx.make_topology()
    port = open_nodeport_flow(st, ft, fx.CLIENT, 30000)
    close_nodeport_flow(st, ft, fx.CLIENT, 30000, port, T0)
    verdict, _, counters = send(st, ft, nodeport(fx.CLIENT, 30000, "A"), fx.TRANSPORT, T0 + 60 * S)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_CT_HIT") == 1
    later = T0 + 60 * S + (L.XSKP_CT_TIMEOUT_TCP_TIME_WAIT_S + 1) * S
    _, _, counters = send(st, ft, nodeport(fx.CLIENT, 30000, "A"), fx.TRANSPORT, later)
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1
    port = open_nodeport_flow(st, ft, fx.CLIENT, 30001)
    for pkt in (backend_to(port, "SA"), nodeport(fx.CLIENT, 30001, "A"),
                nodeport(fx.CLIENT, 30001, "FA")):
        send(st, ft, pkt, fx.TRANSPORT)
    verdict, _, counters = send(st, ft, backend_to(port, "A"), fx.TRANSPORT, T0 + 100 * S)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_CT_HIT") == 1


def _frames(pkt, ports, at):
    """Copies of a scapy frame with the 16-bit port at TCP offset `at` (0: source, 2:
    destination) set to each of ports (checksum left stale: the pipeline does not verify it)."""
    data = bytes(pkt)
    off = len(data) - len(pkt[TCP]) + at
    return [data[:off] + int(p).to_bytes(2, "big") + data[off + 2:] for p in ports]


def test_ab_churn_through_a_hairpin_clusterip_never_exhausts_the_pool():
    """`ab -n 10000 -c 20` through a ClusterIP whose backend is local (hairpin SNAT), at 2,000
    connections/s: a pool of 1,000 ports serves 10,000 connections (SYN, SYN+ACK, ACK, backend
    FIN, client FIN) with no SNAT_EXHAUSTED, taking over closed flows' ports (before, a port
    stayed held 10 s after close and only 64 were probed)."""
    st, ft = fx.make_topology(ct_capacity=1 << 15)
    counters = tables.make_counters()
    umem = fx.Umem(64)
    conns, concurrency = 10000, 20

    def client(flags):
        return fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, "10.96.0.10", 1, 80, flags)

    def backend(flags):
        return fx.from_pod(fx.MAC_POD_A1) / fx.tcp(fx.POD_A1, fx.NODE_A, 8080, 1, flags)

    for wave in range(conns // concurrency):
        now = T0 + wave * (concurrency * S // 2000)
        sports = [32768 + wave * concurrency + k for k in range(concurrency)]
        verdicts, outs, _ = fx.run(_frames(client("S"), sports, 0), fx.GATEWAY, st, ft, now,
                                   counters, umem)
        assert (verdicts == fx.TX_G).all(), (wave, tables.counters_by_name(counters))
        snat = [Ether(o)[TCP].sport for o in outs]
        for flags_back, flags_client in (("SA", "A"), ("FA", "FA")):
            frames = (_frames(backend(flags_back), snat, 2)
                      + _frames(client(flags_client), sports, 0))
            verdicts, _, _ = fx.run(frames, fx.GATEWAY, st, ft, now, counters, umem)
            assert (verdicts == fx.TX_G).all(), (wave, tables.counters_by_name(counters))
    total = tables.counters_by_name(counters)
    assert "XSKP_DROP_SNAT_EXHAUSTED" not in total and total["XSKP_CNT_HAIRPIN"] == conns
    assert total.get("XSKP_CNT_CT_REUSED", 0) > 0
