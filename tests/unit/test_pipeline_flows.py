"""Pipeline behaviour over time and under pressure: TCP/UDP conntrack states and timeouts, stale
backends, SNAT port allocation, a full table, ClientIP affinity, partial checksums, FIB changes,
headroom and descriptor checks, mixed batches."""
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

import fixtures_pipeline as fx
from dataplane import abi, tables
from dataplane._conntrack import ct_lookup
from test_pipeline import scapy_rebuilt

L = abi.lib
S = 10**9
T0 = 1000 * S


def send(st, ft, pkt, ingress, now_ns=T0):
    """One frame through the pipeline: (verdict, output bytes, {counter: value})."""
    verdicts, outs, counters = fx.run([bytes(pkt)], ingress, st, ft, now_ns=now_ns)
    return int(verdicts[0]), outs[0], tables.counters_by_name(counters)


def entry(ft, src, dst, sport, dport, proto):
    idx = ct_lookup(ft.ct, fx.ip4(src), fx.ip4(dst), sport, dport, proto)
    return None if idx < 0 else ft.ct[idx]


def pod_syn(sport, flags="S", dst="10.96.0.10", payload=b""):
    return fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, dst, sport, 80, flags, payload=payload)


def snat_port(ft, sport, dst="10.96.0.10"):
    """The node-address port a Pod's flow to a local backend was SNATed to (from its entry)."""
    return int(entry(ft, fx.POD_A2, dst, sport, 80, 6)["new_src_port"])


def backend_reply(ft, sport, flags="SA"):
    """The local backend's answer to the Pod's flow: to the node address (hairpin SNAT)."""
    return fx.from_pod(fx.MAC_POD_A1) / fx.tcp(fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, sport),
                                               flags)


def test_tcp_states_follow_the_handshake_and_close():
    """SYN, SYN+ACK, ACK, FIN, FIN move the flow SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSING
    in both entries."""
    st, ft = fx.make_topology()
    steps = [(lambda: pod_syn(44000), L.XSKP_CT_SYN_SENT),
             (lambda: backend_reply(ft, 44000), L.XSKP_CT_SYN_RECV),
             (lambda: pod_syn(44000, "A"), L.XSKP_CT_ESTABLISHED),
             (lambda: pod_syn(44000, "FA"), L.XSKP_CT_FIN_WAIT),
             (lambda: backend_reply(ft, 44000, "FA"), L.XSKP_CT_CLOSING)]
    for make_pkt, state in steps:
        verdict, _, _ = send(st, ft, make_pkt(), fx.GATEWAY)
        assert verdict == fx.TX_G
        orig = entry(ft, fx.POD_A2, "10.96.0.10", 44000, 80, 6)
        reply = entry(ft, fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, 44000), 6)
        assert orig["state"] == state and reply["state"] == state


def test_closing_flow_expires_after_its_short_timeout():
    """A flow closed by an RST is gone after XSKP_CT_TIMEOUT_TCP_CLOSE_S (nf_conntrack's CLOSE):
    a new SYN then creates a new flow."""
    st, ft = fx.make_topology()
    send(st, ft, pod_syn(44001), fx.GATEWAY)
    for pkt in (backend_reply(ft, 44001), pod_syn(44001, "A"), pod_syn(44001, "R")):
        send(st, ft, pkt, fx.GATEWAY)
    assert entry(ft, fx.POD_A2, "10.96.0.10", 44001, 80, 6)["state"] == L.XSKP_CT_CLOSING
    later = T0 + (L.XSKP_CT_TIMEOUT_TCP_CLOSE_S + 1) * S
    verdict, _, counters = send(st, ft, pod_syn(44001), fx.GATEWAY, now_ns=later)
    assert verdict == fx.TX_G
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1


def test_a_new_syn_on_a_closing_flows_tuple_is_a_new_flow():
    """A client reusing the ports of a flow that is closing (within its timeout) opens a new
    connection: the old flow is removed (XSKP_CNT_CT_REUSED) and the SYN balanced afresh; a
    retransmitted SYN of a flow still opening keeps its entry."""
    st, ft = fx.make_topology()
    send(st, ft, pod_syn(44003), fx.GATEWAY)
    _, _, counters = send(st, ft, pod_syn(44003), fx.GATEWAY)
    assert counters.get("XSKP_CNT_CT_HIT") == 1 and "XSKP_CNT_CT_REUSED" not in counters
    for pkt in (backend_reply(ft, 44003), pod_syn(44003, "A"), pod_syn(44003, "FA"),
                backend_reply(ft, 44003, "FA")):
        send(st, ft, pkt, fx.GATEWAY)
    assert entry(ft, fx.POD_A2, "10.96.0.10", 44003, 80, 6)["state"] == L.XSKP_CT_CLOSING
    verdict, _, counters = send(st, ft, pod_syn(44003), fx.GATEWAY, now_ns=T0 + S)
    assert verdict == fx.TX_G
    assert counters.get("XSKP_CNT_CT_REUSED") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1
    assert entry(ft, fx.POD_A2, "10.96.0.10", 44003, 80, 6)["state"] == L.XSKP_CT_SYN_SENT


def test_established_flow_survives_hours_but_not_its_timeout():
    """An ESTABLISHED flow idle for 5 h still matches; idle past 6 h it is expired."""
    st, ft = fx.make_topology()
    send(st, ft, pod_syn(44002), fx.GATEWAY)
    for pkt in (backend_reply(ft, 44002), pod_syn(44002, "A")):
        send(st, ft, pkt, fx.GATEWAY)
    _, _, counters = send(st, ft, pod_syn(44002, "A"), fx.GATEWAY, now_ns=T0 + 5 * 3600 * S)
    assert counters.get("XSKP_CNT_CT_HIT") == 1
    idle = (L.XSKP_CT_TIMEOUT_TCP_ESTABLISHED_S + 1) * S
    _, _, counters = send(st, ft, pod_syn(44002, "A"), fx.GATEWAY, now_ns=T0 + 5 * 3600 * S + idle)
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1


def test_midstream_segment_is_picked_up_and_established_by_the_next_ack():
    """A non-SYN segment without entry opens a SYN_RECV flow that its next ACK establishes."""
    st, ft = fx.make_topology()
    assert send(st, ft, pod_syn(44003, "A"), fx.GATEWAY)[0] == fx.TX_G
    assert entry(ft, fx.POD_A2, "10.96.0.10", 44003, 80, 6)["state"] == L.XSKP_CT_SYN_RECV
    send(st, ft, pod_syn(44003, "PA", payload=b"x"), fx.GATEWAY)
    assert entry(ft, fx.POD_A2, "10.96.0.10", 44003, 80, 6)["state"] == L.XSKP_CT_ESTABLISHED


def dns_query(sport):
    return fx.from_pod(fx.MAC_POD_A2) / fx.udp(fx.POD_A2, "10.96.0.53", sport, 53)


def test_udp_flow_is_established_by_a_reply_and_expires_one_way_after_30s():
    """UDP: NEW one way (expires after XSKP_CT_TIMEOUT_UDP_S), ESTABLISHED once a reply is seen."""
    st, ft = fx.make_topology()
    send(st, ft, dns_query(45000), fx.GATEWAY)
    assert entry(ft, fx.POD_A2, "10.96.0.53", 45000, 53, 17)["state"] == L.XSKP_CT_NEW
    later = T0 + (L.XSKP_CT_TIMEOUT_UDP_S + 1) * S
    _, _, counters = send(st, ft, dns_query(45000), fx.GATEWAY, now_ns=later)
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1
    reply = fx.from_transport() / fx.udp(fx.POD_B8, fx.POD_A2, 5353, 45000)
    assert send(st, ft, reply, fx.TRANSPORT, now_ns=later)[0] == fx.TX_G
    assert entry(ft, fx.POD_A2, "10.96.0.53", 45000, 53, 17)["state"] == L.XSKP_CT_ESTABLISHED
    _, _, counters = send(st, ft, dns_query(45000), fx.GATEWAY, now_ns=later + 100 * S)
    assert counters.get("XSKP_CNT_CT_HIT") == 1


def test_stale_udp_flow_rebalances_when_its_backend_goes_away():
    """A UDP flow whose backend is no longer ALIVE stops matching and is re-balanced to the ring's
    current backend."""
    st, ft = fx.make_topology()
    send(st, ft, dns_query(45001), fx.GATEWAY)
    st.backends[3]["flags"] = 0                      # backend 3 removed
    st.backends[9] = (fx.ip4("10.10.2.40"), 5353, L.XSKP_BE_ALIVE, fx.ip4(fx.NODE_B), 0)
    svc = st.services[fx.SERVICE_IDS["dns"]]
    st.maglev[svc["ring_offset"]:svc["ring_offset"] + svc["ring_size"]] = 9
    verdict, out, counters = send(st, ft, dns_query(45001), fx.GATEWAY)
    assert verdict == fx.TX_T
    assert counters.get("XSKP_CNT_CT_STALE") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1
    assert Ether(out)[IP].dst == "10.10.2.40"


def test_stale_flow_stops_matching_when_the_backend_id_changes_address():
    """A backend id reused for another address makes the old flow stale."""
    st, ft = fx.make_topology()
    send(st, ft, dns_query(45002), fx.GATEWAY)
    st.backends[3]["addr"] = fx.ip4("10.10.2.41")
    verdict, out, counters = send(st, ft, dns_query(45002), fx.GATEWAY)
    assert counters.get("XSKP_CNT_CT_STALE") == 1
    assert Ether(out)[IP].dst == "10.10.2.41"


def nodeport_syn(client, sport):
    return fx.from_transport() / fx.tcp(client, fx.NODE_A, sport, 30011, "S")


def test_snat_ports_never_collide_for_one_backend():
    """500 external flows to one remote backend get 500 distinct SNAT ports inside the range."""
    st, ft = fx.make_topology(ct_capacity=1 << 14)
    frames = [bytes(nodeport_syn(f"203.0.113.{1 + i % 200}", 20000 + i)) for i in range(500)]
    ports = set()
    for chunk in range(0, 500, 50):
        verdicts, outs, _ = fx.run(frames[chunk:chunk + 50], fx.TRANSPORT, st, ft, now_ns=T0)
        assert (verdicts == fx.TX_T).all()
        ports.update(Ether(o)[TCP].sport for o in outs)
    assert len(ports) == 500
    assert all(fx.SNAT_PORT_MIN <= p <= fx.SNAT_PORT_MAX for p in ports)


def test_snat_range_exhaustion_drops_and_counts():
    """With a two-port SNAT range the third concurrent flow to the same backend is dropped."""
    st, ft = fx.make_topology()
    st.node[0]["snat_port_min"] = 50000
    st.node[0]["snat_port_max"] = 50001
    verdicts = [send(st, ft, nodeport_syn(fx.CLIENT, 30000 + i), fx.TRANSPORT)[0] for i in range(2)]
    assert verdicts == [fx.TX_T, fx.TX_T]
    verdict, _, counters = send(st, ft, nodeport_syn(fx.CLIENT, 30002), fx.TRANSPORT)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SNAT_EXHAUSTED") == 1


def test_full_conntrack_evicts_unestablished_flows_and_counts():
    """A table whose probe window is full of SYN_SENT flows evicts the oldest for a new flow."""
    st, ft = fx.make_topology(ct_capacity=32)
    total = {}
    for i in range(40):
        _, _, counters = send(st, ft, pod_syn(46000 + i), fx.GATEWAY, now_ns=T0 + i)
        for k, v in counters.items():
            total[k] = total.get(k, 0) + v
    assert total.get("XSKP_CNT_TX_GATEWAY") == 40
    assert total.get("XSKP_CNT_CT_EVICTED", 0) >= 40 - 16


def test_full_conntrack_of_established_flows_drops_new_ones():
    """When every flow in the window is ESTABLISHED nothing is evicted: CT_FULL drop."""
    st, ft = fx.make_topology(ct_capacity=32)
    for i in range(16):
        send(st, ft, pod_syn(47000 + i), fx.GATEWAY)
        for pkt in (backend_reply(ft, 47000 + i), pod_syn(47000 + i, "A")):
            send(st, ft, pkt, fx.GATEWAY)
    in_use = (ft.ct["flags"] & L.XSKP_CT_IN_USE) != 0
    assert in_use.sum() == 32 and (ft.ct["state"][in_use] == L.XSKP_CT_ESTABLISHED).all()
    verdict, _, counters = send(st, ft, pod_syn(47100), fx.GATEWAY)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_CT_FULL") == 1


def affinity_syn(client_mac, client, sport):
    return fx.eth(client_mac, fx.MAC_GATEWAY) / fx.tcp(client, "10.96.0.16", sport, 80, "S")


def test_clientip_affinity_sticks_for_a_day_and_then_rebalances():
    """Every flow of a client goes to its first backend while idle < 86,400 s; after that the
    remembered backend is not used."""
    st, ft = fx.make_topology()
    first = None
    for i in range(20):
        verdict, out, counters = send(st, ft, affinity_syn(fx.MAC_POD_A2, fx.POD_A2, 48000 + i),
                                      fx.GATEWAY, now_ns=T0 + i * 86399 * S // 20)
        dst = Ether(out)[IP].dst
        first = first or dst
        assert dst == first
        assert i == 0 or counters.get("XSKP_CNT_AFFINITY_HIT") == 1
    last = T0 + 19 * 86399 * S // 20
    _, _, counters = send(st, ft, affinity_syn(fx.MAC_POD_A2, fx.POD_A2, 48100), fx.GATEWAY,
                          now_ns=last + 86401 * S)
    assert "XSKP_CNT_AFFINITY_HIT" not in counters


def test_without_affinity_flows_spread_over_backends():
    """Control for the affinity test: the same ring without affinity spreads one client's flows."""
    st, ft = fx.make_topology()
    svc = st.services[fx.SERVICE_IDS["affinity"]]
    svc["flags"] = 0
    dsts = {Ether(send(st, ft, affinity_syn(fx.MAC_POD_A2, fx.POD_A2, 48200 + i), fx.GATEWAY)[1])[IP].dst
            for i in range(30)}
    assert len(dsts) == 3


def with_partial_checksum(pkt):
    """pkt's bytes with its L4 checksum replaced by the folded pseudo-header sum, as a local
    sender with checksum offload leaves it (CHECKSUM_PARTIAL)."""
    raw = bytearray(bytes(pkt))
    ip = Ether(bytes(raw))[IP]
    l3 = 14
    l4 = l3 + ip.ihl * 4
    l4_len = ip.len - ip.ihl * 4
    src, dst = fx.ip4(ip.src), fx.ip4(ip.dst)
    s = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + ip.proto + l4_len
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    off = l4 + (16 if ip.proto == 6 else 6)
    raw[off:off + 2] = s.to_bytes(2, "big")
    return bytes(raw)


def test_partial_tcp_checksum_is_completed_while_dnating():
    """A TCP SYN with a partial (pseudo-header only) checksum leaves with a full, valid checksum."""
    st, ft = fx.make_topology()
    frame = with_partial_checksum(pod_syn(49000, "S", payload=b"data"))
    verdict, out, counters = send(st, ft, frame, fx.GATEWAY)
    assert verdict == fx.TX_G and counters.get("XSKP_CNT_CSUM_COMPLETED") == 1
    expected = fx.to_gateway(fx.MAC_POD_A1) / fx.tcp(fx.NODE_A, fx.POD_A1, snat_port(ft, 49000),
                                                      8080, "S", ttl=63, payload=b"data")
    assert out == bytes(expected)


def test_partial_udp_checksum_is_completed_on_the_bypass_path():
    """A bypassed UDP datagram with a partial checksum leaves with a full, valid checksum."""
    st, ft = fx.make_topology()
    pkt = fx.from_pod(fx.MAC_POD_A2) / fx.udp(fx.POD_A2, fx.POD_B7, 5000, 6000, payload=b"abc" * 9)
    verdict, out, counters = send(st, ft, with_partial_checksum(pkt), fx.GATEWAY)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_CSUM_COMPLETED") == 1
    assert out == bytes(fx.to_transport(fx.MAC_NODE_B)
                        / fx.udp(fx.POD_A2, fx.POD_B7, 5000, 6000, ttl=63, payload=b"abc" * 9))


def test_full_checksums_are_not_counted_as_partial():
    """Ordinary frames never take the completion path."""
    st, ft = fx.make_topology()
    _, out, counters = send(st, ft, pod_syn(49001), fx.GATEWAY)
    assert "XSKP_CNT_CSUM_COMPLETED" not in counters
    assert scapy_rebuilt(out) == out


def test_fib_generation_change_refreshes_cached_macs():
    """After node B's MAC changes (new fib_generation), a tracked flow's frames use the new MAC."""
    st, ft = fx.make_topology()
    syn = fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, "10.96.0.11", 44010, 80, "S")
    send(st, ft, syn, fx.GATEWAY)
    tables.insert_neighbour(st.neighbours, fx.ip4(fx.NODE_B), fx.TRANSPORT,
                            fx.mac_bytes("02:00:00:00:01:99"))
    st.node[0]["fib_generation"] += 1
    verdict, out, counters = send(st, ft, syn, fx.GATEWAY)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_FIB_REFRESH") == 1
    assert Ether(out).dst == "02:00:00:00:01:99"


@pytest.mark.parametrize("generation", [8, 9])
def test_a_reply_whose_next_hop_was_unresolved_resolves_on_the_next_fib(generation):
    """The reply of a tracked flow whose next hop has no neighbour yet is dropped (the miss
    reported); once a FIB generation with the neighbour is published, the next reply leaves with
    both MACs set, whatever the parity of the generation numbers."""
    st, ft = fx.make_topology()
    st.node[0]["fib_generation"] = generation
    st.neighbours[:] = 0
    for addr, iface, mac in fx.NEIGHBOURS:
        if addr != fx.POD_A2:
            tables.insert_neighbour(st.neighbours, fx.ip4(addr), iface, fx.mac_bytes(mac))
    syn = fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, "10.96.0.11", 44011, 80, "S")
    assert send(st, ft, syn, fx.GATEWAY)[0] == fx.TX_T
    reply = fx.from_transport() / fx.tcp(fx.POD_B7, fx.POD_A2, 8080, 44011, "SA")
    verdict, _, counters = send(st, ft, reply, fx.TRANSPORT)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_NO_NEIGHBOUR") == 1
    tables.insert_neighbour(st.neighbours, fx.ip4(fx.POD_A2), fx.GATEWAY, fx.mac_bytes(fx.MAC_POD_A2))
    st.node[0]["fib_generation"] = generation + 1
    verdict, out, _ = send(st, ft, reply, fx.TRANSPORT)
    assert verdict == fx.TX_G
    assert (Ether(out).dst, Ether(out).src) == (fx.MAC_POD_A2, fx.MAC_GATEWAY)


def test_dsr_encapsulation_without_headroom_drops():
    """A DSR frame that starts at its chunk's first byte cannot be encapsulated: NO_HEADROOM."""
    st, ft = fx.make_topology()
    umem = fx.Umem(2)
    frame = bytes(fx.from_transport() / fx.tcp(fx.CLIENT, "198.51.100.12", 51100, 80, "S"))
    umem.array[fx.FRAME_SIZE:fx.FRAME_SIZE + len(frame)] = np.frombuffer(frame, np.uint8)
    addrs = np.array([fx.FRAME_SIZE], np.uint64)
    lens = np.array([len(frame)], np.uint32)
    verdicts = np.zeros(1, np.int32)
    counters = tables.make_counters()
    from dataplane.pipeline import process_batch
    process_batch(umem.array, addrs, lens, 1, fx.TRANSPORT, st, ft, counters, verdicts, np.uint64(T0))
    assert verdicts[0] == fx.DROP
    assert tables.counters_by_name(counters).get("XSKP_DROP_NO_HEADROOM") == 1


def test_descriptors_outside_the_umem_or_frame_are_dropped():
    """An address past the UMEM end or a length crossing the chunk end is BAD_DESC."""
    st, ft = fx.make_topology()
    umem = fx.Umem(2)
    addrs = np.array([10 * fx.FRAME_SIZE, fx.FRAME_SIZE - 10, 2**63 + 5], np.uint64)
    lens = np.array([64, 64, 64], np.uint32)
    verdicts = np.full(3, 9, np.int32)
    counters = tables.make_counters()
    from dataplane.pipeline import process_batch
    process_batch(umem.array, addrs, lens, 3, fx.TRANSPORT, st, ft, counters, verdicts, np.uint64(T0))
    assert (verdicts == fx.DROP).all()
    assert tables.counters_by_name(counters).get("XSKP_DROP_BAD_DESC") == 3
    assert not umem.array.any()


def test_a_mixed_batch_gives_every_frame_one_verdict_and_one_count():
    """All fixture input frames in one batch: n verdicts, and drop reasons + tx counts sum to n."""
    st, ft = fx.make_topology()
    frames = [(bytes(step.frame), step.ingress) for sc in fx.scenarios() for step in sc.steps
              if step.ingress == fx.GATEWAY]
    verdicts, _, counters = fx.run([f for f, _ in frames], fx.GATEWAY, st, ft)
    assert set(verdicts.tolist()) <= {fx.DROP, fx.TX_T, fx.TX_G}
    per_frame = counters[1:L.XSKP_DROP_REASON_MAX].sum() + counters[L.XSKP_CNT_TX_TRANSPORT] + \
        counters[L.XSKP_CNT_TX_GATEWAY]
    assert per_frame == len(frames)
