"""The userspace half of the two-tier dataplane, without root: which flows the pipeline hands to
the kernel fast path and with what entries (dataplane/pipeline.py offload_flow), and how the
sweep (dataplane/_fastpath.py) keeps conntrack true to what the fast path reports: handshake,
close, idle expiry, removed backends, FIB changes, a full flow table."""
import numpy as np

import fixtures_pipeline as fx
from dataplane import abi, tables
from dataplane._conntrack import ct_lookup
from dataplane._fastpath import fast_path_step, SWEEP_IDLE_SKIPS, SWEEP_PERIOD_NS
from dataplane._flowtable import flow_lookup

L = abi.lib
S = 10**9
T0 = 1000 * S
IFINDEX = (11, 12)          # kernel ifindex of the transport and gateway interfaces
VIP = "10.96.0.10"          # local-web: ClusterIP, one local backend POD_A1:8080


def topology(flow_capacity=64):
    st, ft = fx.make_topology()
    ft = tables.with_fast_path(ft, np.zeros(flow_capacity, tables.FLOW_V4_DTYPE),
                               np.zeros(1, tables.FAST_CONFIG_DTYPE), IFINDEX, owner=0)
    return st, ft


def send(st, ft, pkt, ingress, now_ns=T0, counters=None):
    verdicts, outs, counters = fx.run([bytes(pkt)], ingress, st, ft, now_ns=now_ns, counters=counters)
    return int(verdicts[0]), counters


def ct_entry(ft, src, dst, sport, dport, proto=6):
    idx = ct_lookup(ft.ct, fx.ip4(src), fx.ip4(dst), sport, dport, proto)
    return None if idx < 0 else ft.ct[idx]


def flow_entry(ft, src, dst, sport, dport, proto=6):
    slot = flow_lookup(ft.flows, fx.ip4(src), fx.ip4(dst), sport, dport, proto)
    return None if slot < 0 else ft.flows[slot]


def in_use_flows(ft):
    return int(np.count_nonzero(ft.flows["flags"] & L.XSKP_FLOW_IN_USE))


def pod_segment(sport, flags):
    return fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, VIP, sport, 80, flags)


def snat_port(ft, sport):
    return int(ct_entry(ft, fx.POD_A2, VIP, sport, 80)["new_src_port"])


def backend_segment(ft, sport, flags):
    return fx.from_pod(fx.MAC_POD_A1) / fx.tcp(fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, sport), flags)


def handshake(st, ft, sport=44000, now_ns=T0):
    counters = tables.make_counters()
    assert send(st, ft, pod_segment(sport, "S"), fx.GATEWAY, now_ns, counters)[0] == fx.TX_G
    assert send(st, ft, backend_segment(ft, sport, "SA"), fx.GATEWAY, now_ns, counters)[0] == fx.TX_G
    return tables.counters_by_name(counters)


def sweep_all(st, ft, now_ns):
    """Two steps one sweep period apart: the second looks at every slot."""
    counters = tables.make_counters()
    fast_path_step(st, ft, np.uint64(now_ns - SWEEP_PERIOD_NS), counters)
    fast_path_step(st, ft, np.uint64(now_ns), counters)
    return tables.counters_by_name(counters)


def test_a_tcp_flow_is_offloaded_at_its_syn_with_the_pipelines_rewrite():
    """A Pod's flow to a ClusterIP with a local backend is handed over, both directions, as its
    SYN goes through (so the backend's SYN+ACK meets the fast path): each entry carries the
    rewrite, MACs and egress interface of its conntrack entry."""
    st, ft = topology()
    _, c = send(st, ft, pod_segment(44000, "S"), fx.GATEWAY)
    assert tables.counters_by_name(c).get("XSKP_CNT_FLOW_OFFLOADED") == 1
    assert ft.fast_state[0]["owned_flows"] == 2
    port = snat_port(ft, 44000)
    orig_ct = ct_entry(ft, fx.POD_A2, VIP, 44000, 80)
    reply_ct = ct_entry(ft, fx.POD_A1, fx.NODE_A, 8080, port)
    orig = flow_entry(ft, fx.POD_A2, VIP, 44000, 80)
    reply = flow_entry(ft, fx.POD_A1, fx.NODE_A, 8080, port)
    assert orig is not None and reply is not None and in_use_flows(ft) == 2
    assert (orig["new_src_addr"], orig["new_src_port"]) == (fx.ip4(fx.NODE_A), port)
    assert (orig["new_dst_addr"], orig["new_dst_port"]) == (fx.ip4(fx.POD_A1), 8080)
    assert (reply["new_src_addr"], reply["new_src_port"]) == (fx.ip4(VIP), 80)
    assert (reply["new_dst_addr"], reply["new_dst_port"]) == (fx.ip4(fx.POD_A2), 44000)
    assert orig["out_ifindex"] == IFINDEX[fx.GATEWAY] and reply["out_ifindex"] == IFINDEX[fx.GATEWAY]
    assert list(orig["dst_mac"]) == list(fx.mac_bytes(fx.MAC_POD_A1))
    assert list(reply["dst_mac"]) == list(fx.mac_bytes(fx.MAC_POD_A2))
    assert list(orig["src_mac"]) == list(fx.mac_bytes(fx.MAC_GATEWAY))
    for f, e in ((orig, orig_ct), (reply, reply_ct)):
        assert e["flags"] & L.XSKP_CT_OFFLOADED
        assert ft.ct[f["ct_index"]]["src_addr"] == e["src_addr"]
        assert f["fib_generation"] == fx.FIB_GENERATION


def test_beyond_half_its_share_of_the_table_a_worker_offloads_tcp_at_the_syn_ack():
    """Unanswered SYNs never crowd out established flows: with half of the worker's share of
    the flow table held (its count from the sweep), a SYN hands nothing over and the backend's
    SYN+ACK hands the flow over, as when the table was full."""
    st, ft = topology(flow_capacity=64)
    ft.fast_state[0]["partitions"] = 2                 # a share of 32 slots
    ft.fast_state[0]["owned_flows"] = 16
    send(st, ft, pod_segment(44000, "S"), fx.GATEWAY)
    assert in_use_flows(ft) == 0
    _, c = send(st, ft, backend_segment(ft, 44000, "SA"), fx.GATEWAY)
    assert tables.counters_by_name(c).get("XSKP_CNT_FLOW_OFFLOADED") == 1 and in_use_flows(ft) == 2
    ft.fast_state[0]["owned_flows"] = 15
    send(st, ft, pod_segment(44001, "S"), fx.GATEWAY)
    assert in_use_flows(ft) == 4


def test_the_sweep_counts_the_entries_a_worker_holds():
    """owned_flows: what a whole sweep pass found held, plus the worker's inserts since (the
    budget of offloads at the SYN); a flow that left both tiers no longer counts."""
    st, ft = topology(flow_capacity=64)
    for port in range(44000, 44003):
        send(st, ft, pod_segment(port, "S"), fx.GATEWAY)
    assert ft.fast_state[0]["owned_flows"] == 6
    ft.fast_state[0]["owned_flows"] = 99                  # wrong: a pass puts it right
    sweep_all(st, ft, T0 + S)
    assert ft.fast_state[0]["owned_flows"] == 6
    flow_entry(ft, fx.POD_A2, VIP, 44000, 80)["tcp_flags_seen"] = 0x04     # RST: closed, recalled
    sweep_all(st, ft, T0 + 2 * S)
    sweep_all(st, ft, T0 + 3 * S)
    assert in_use_flows(ft) == 4 and ft.fast_state[0]["owned_flows"] == 4


def test_the_sweep_brings_a_handshake_the_fast_path_carried_back():
    """A flow offloaded at its SYN: the SYN+ACK the fast path forwarded makes it SYN_RECV, the
    client's ACK ESTABLISHED, so that it gets the established timeout."""
    st, ft = topology()
    send(st, ft, pod_segment(44000, "S"), fx.GATEWAY)
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] == L.XSKP_CT_SYN_SENT
    flow_entry(ft, fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, 44000))["tcp_flags_seen"] = 0x12
    sweep_all(st, ft, T0 + S)
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] == L.XSKP_CT_SYN_RECV
    flow_entry(ft, fx.POD_A2, VIP, 44000, 80)["tcp_flags_seen"] = 0x10
    sweep_all(st, ft, T0 + 2 * S)
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] == L.XSKP_CT_ESTABLISHED
    assert in_use_flows(ft) == 2


def test_a_udp_flow_is_offloaded_at_its_second_frame():
    """UDP: the first datagram creates the flow in userspace, the second (either direction)
    hands it over."""
    st, ft = topology()
    dns = fx.from_pod(fx.MAC_POD_A2) / fx.udp(fx.POD_A2, "10.96.0.53", 5000, 53)
    send(st, ft, dns, fx.GATEWAY)
    assert in_use_flows(ft) == 0
    send(st, ft, dns, fx.GATEWAY)
    assert in_use_flows(ft) == 2


def test_the_sweep_brings_the_handshake_and_the_close_back_and_recalls_a_closing_flow():
    """What the fast path saw becomes conntrack state: the client's ACK makes the flow
    ESTABLISHED with its last_seen, a FIN each way makes it CLOSING, and a closing flow is taken
    back (its entries removed, XSKP_CT_OFFLOADED cleared) for userspace to finish."""
    st, ft = topology()
    handshake(st, ft)
    orig = flow_entry(ft, fx.POD_A2, VIP, 44000, 80)
    orig["tcp_flags_seen"] = 0x10
    orig["last_seen_ns"] = T0 + 5 * S
    sweep_all(st, ft, T0 + 6 * S)
    e = ct_entry(ft, fx.POD_A2, VIP, 44000, 80)
    assert e["state"] == L.XSKP_CT_ESTABLISHED and e["last_seen_ns"] == T0 + 5 * S
    assert in_use_flows(ft) == 2
    orig["tcp_flags_seen"] |= 0x01
    sweep_all(st, ft, T0 + 7 * S)
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] == L.XSKP_CT_FIN_WAIT
    assert in_use_flows(ft) == 2, "a half-closed flow stays in the fast path"
    flow_entry(ft, fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, 44000))["tcp_flags_seen"] = 0x11
    counters = sweep_all(st, ft, T0 + 8 * S)
    e = ct_entry(ft, fx.POD_A2, VIP, 44000, 80)
    assert e["state"] == L.XSKP_CT_CLOSING
    assert counters.get("XSKP_CNT_FLOW_RECALLED") == 1
    assert in_use_flows(ft) == 0 and not e["flags"] & L.XSKP_CT_OFFLOADED
    # the last ACK now goes through userspace, which still translates it
    assert send(st, ft, pod_segment(44000, "A"), fx.GATEWAY, T0 + 8 * S)[0] == fx.TX_G


def test_an_rst_seen_by_the_fast_path_closes_the_flow():
    st, ft = topology()
    handshake(st, ft)
    flow_entry(ft, fx.POD_A2, VIP, 44000, 80)["tcp_flags_seen"] = 0x14
    sweep_all(st, ft, T0 + S)
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] == L.XSKP_CT_CLOSING
    assert in_use_flows(ft) == 0


def test_an_offloaded_flow_the_fast_path_keeps_busy_does_not_expire():
    """A flow userspace has not seen for longer than its timeout lives on while the fast path
    carries it (its last_seen comes from the fast path)."""
    st, ft = topology()
    dns = fx.from_pod(fx.MAC_POD_A2) / fx.udp(fx.POD_A2, "10.96.0.53", 5000, 53)
    send(st, ft, dns, fx.GATEWAY)
    send(st, ft, dns, fx.GATEWAY)
    f = flow_entry(ft, fx.POD_A2, "10.96.0.53", 5000, 53, 17)
    f["last_seen_ns"] = T0 + 100 * S
    f["packets"] = 10
    counters = sweep_all(st, ft, T0 + 110 * S)
    assert "XSKP_CNT_CT_EXPIRED" not in counters
    assert in_use_flows(ft) == 2
    assert ct_entry(ft, fx.POD_A2, "10.96.0.53", 5000, 53, 17)["last_seen_ns"] == T0 + 100 * S


def test_an_idle_offloaded_flow_expires_from_both_tiers():
    st, ft = topology()
    dns = fx.from_pod(fx.MAC_POD_A2) / fx.udp(fx.POD_A2, "10.96.0.53", 5000, 53)
    send(st, ft, dns, fx.GATEWAY)
    send(st, ft, dns, fx.GATEWAY)
    counters = sweep_all(st, ft, T0 + 200 * S)
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1
    assert in_use_flows(ft) == 0
    assert ct_entry(ft, fx.POD_A2, "10.96.0.53", 5000, 53, 17) is None


def test_a_removed_backends_offloaded_flows_leave_both_tiers_at_the_next_sweep():
    st, ft = topology()
    handshake(st, ft)
    st.backends[1]["flags"] &= 0xffff ^ L.XSKP_BE_ALIVE
    counters = sweep_all(st, ft, T0 + S)
    assert counters.get("XSKP_CNT_CT_STALE") == 1
    assert in_use_flows(ft) == 0
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80) is None


def test_a_terminating_backends_offloaded_flows_keep_running():
    st, ft = topology()
    handshake(st, ft)
    st.backends[1]["flags"] |= L.XSKP_BE_TERMINATING
    sweep_all(st, ft, T0 + S)
    assert in_use_flows(ft) == 2


def test_a_fib_change_re_resolves_an_offloaded_flows_next_hop_in_place():
    """The FIB changed (here: the backend Pod's MAC): the sweep gives both entries the new MACs
    without taking the flow back (its super-frames could not go through userspace)."""
    st, ft = topology()
    handshake(st, ft)
    new_mac = "02:00:00:00:00:77"
    from dataplane.tables import lookup_neighbour
    nb = lookup_neighbour(st.neighbours, fx.ip4(fx.POD_A1), fx.GATEWAY)
    st.neighbours[nb]["mac"] = list(fx.mac_bytes(new_mac))
    st.node[0]["fib_generation"] = fx.FIB_GENERATION + 1
    counters = sweep_all(st, ft, T0 + S)
    assert "XSKP_CNT_FLOW_RECALLED" not in counters and in_use_flows(ft) == 2
    f = flow_entry(ft, fx.POD_A2, VIP, 44000, 80)
    assert f["fib_generation"] == fx.FIB_GENERATION + 1
    assert list(f["dst_mac"]) == list(fx.mac_bytes(new_mac))


def test_a_next_hop_that_no_longer_resolves_recalls_the_flow():
    st, ft = topology()
    handshake(st, ft)
    from dataplane.tables import lookup_neighbour
    st.neighbours[lookup_neighbour(st.neighbours, fx.ip4(fx.POD_A1), fx.GATEWAY)]["in_use"] = 0
    st.node[0]["fib_generation"] = fx.FIB_GENERATION + 1
    counters = sweep_all(st, ft, T0 + S)
    assert counters.get("XSKP_CNT_FLOW_RECALLED") == 1 and in_use_flows(ft) == 0


def test_a_full_flow_table_keeps_the_flow_in_userspace_never_drops_it():
    """Every slot of the probe window taken: the flow is not handed over (counted), and its
    frames are still forwarded by userspace."""
    st, ft = topology(flow_capacity=L.XSKP_FLOW_MAX_PROBE)
    ft.flows["flags"] = L.XSKP_FLOW_IN_USE
    ft.flows["src_addr"] = 1            # keys that match no frame
    counters = handshake(st, ft)
    assert counters.get("XSKP_CNT_FLOW_OFFLOAD_FULL", 0) >= 1
    assert "XSKP_CNT_FLOW_OFFLOADED" not in counters
    assert send(st, ft, pod_segment(44000, "A"), fx.GATEWAY)[0] == fx.TX_G
    assert not ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["flags"] & L.XSKP_CT_OFFLOADED


def test_a_syn_reusing_a_closing_offloaded_tuple_removes_the_old_entries_at_once():
    """A flow userspace deletes (here: a new SYN on the tuple of a half-closed flow) loses its
    fast-path entries in the same step, before the new flow is created (whose SYN hands it over
    anew: entries under the same keys, fresh)."""
    st, ft = topology()
    handshake(st, ft)
    ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] = L.XSKP_CT_FIN_WAIT
    old_keys = [(fx.POD_A2, VIP, 44000, 80), (fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, 44000))]
    for key in old_keys:
        flow_entry(ft, *key)["packets"] = 7
    _, c = send(st, ft, pod_segment(44000, "S"), fx.GATEWAY, T0 + S)
    assert tables.counters_by_name(c).get("XSKP_CNT_CT_REUSED") == 1
    assert in_use_flows(ft) == 2
    assert all(f["packets"] == 0 for f in ft.flows if f["flags"] & L.XSKP_FLOW_IN_USE)


def test_a_syn_after_a_reset_the_fast_path_carried_opens_a_new_flow_that_stays_offloaded():
    """A flow offloaded at its SYN that the server refused (a challenge ACK to a SYN that hit its
    TIME_WAIT) and the client reset, both in the fast path, then the client's SYN again before
    any sweep: the reset closes the old connection first, so the SYN opens a new flow
    (XSKP_CNT_CT_REUSED) whose fresh entries the next sweep leaves in the fast path; the old
    flags would otherwise close the new connection and keep it in userspace for good."""
    st, ft = topology()
    send(st, ft, pod_segment(44000, "S"), fx.GATEWAY)
    flow_entry(ft, fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, 44000))["tcp_flags_seen"] = 0x10
    flow_entry(ft, fx.POD_A2, VIP, 44000, 80)["tcp_flags_seen"] = 0x04
    _, c = send(st, ft, pod_segment(44000, "S"), fx.GATEWAY, T0 + S)
    assert tables.counters_by_name(c).get("XSKP_CNT_CT_REUSED") == 1
    counters = sweep_all(st, ft, T0 + 2 * S)
    assert "XSKP_CNT_FLOW_RECALLED" not in counters
    assert ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["state"] == L.XSKP_CT_SYN_SENT
    assert in_use_flows(ft) == 2


def test_a_dsr_ingress_flow_is_offloaded_one_way_with_its_tunnel_end():
    """The ingress node's DSR flow (one entry, no reply direction here) is handed over at its
    SYN with XSKP_FLOW_ENCAP and the backend's node as the tunnel's end; the client's ACK the
    fast path carried makes it ESTABLISHED."""
    st, ft = topology()
    syn = fx.from_transport() / fx.tcp(fx.CLIENT, "198.51.100.12", 45000, 80, "S")
    send(st, ft, syn, fx.TRANSPORT)
    assert in_use_flows(ft) == 1
    f = flow_entry(ft, fx.CLIENT, "198.51.100.12", 45000, 80)
    assert f["flags"] & L.XSKP_FLOW_ENCAP and f["encap_dst"] == fx.ip4(fx.NODE_B)
    assert f["out_ifindex"] == IFINDEX[fx.TRANSPORT]
    counters = tables.make_counters()
    fast_path_step(st, ft, np.uint64(T0), counters)
    assert ft.fast_config[0]["encap_src"] == fx.ip4(fx.NODE_A)
    f["tcp_flags_seen"] = 0x10
    sweep_all(st, ft, T0 + S)
    assert ct_entry(ft, fx.CLIENT, "198.51.100.12", 45000, 80)["state"] == L.XSKP_CT_ESTABLISHED


def test_without_a_flow_table_nothing_is_offloaded():
    st, ft = fx.make_topology()
    handshake(st, ft)
    assert not ct_entry(ft, fx.POD_A2, VIP, 44000, 80)["flags"] & L.XSKP_CT_OFFLOADED


def test_a_backend_reply_routed_for_another_nodes_flow_is_cached_as_a_route_and_aged():
    """A frame the steering program sent here that only needs routing (a remote-node flow's
    backend reply to a remote Pod) is bypassed and its routing cached (XSKP_FLOW_ROUTE: no
    rewrite, the next hop's MAC, the transport); the sweep removes it once idle, or at FIN."""
    st, ft = topology()
    reply = fx.from_pod(fx.MAC_POD_A1) / fx.tcp(fx.POD_A1, "10.10.2.7", 8080, 41000, "A")
    verdict, counters = send(st, ft, reply, fx.GATEWAY)
    assert verdict == fx.TX_T and tables.counters_by_name(counters).get("XSKP_CNT_BYPASS") == 1
    f = flow_entry(ft, fx.POD_A1, "10.10.2.7", 8080, 41000)
    assert f is not None and f["flags"] & L.XSKP_FLOW_ROUTE
    assert (f["new_src_addr"], f["new_dst_addr"], f["new_src_port"], f["new_dst_port"]) == (
        f["src_addr"], f["dst_addr"], 8080, 41000)
    assert f["out_ifindex"] == IFINDEX[fx.TRANSPORT]
    assert list(f["dst_mac"]) == list(fx.mac_bytes(fx.MAC_NODE_B))
    sweep_all(st, ft, T0 + 10 * S)
    assert in_use_flows(ft) == 1, "still fresh"
    f["tcp_flags_seen"] = 0x11
    sweep_all(st, ft, T0 + 11 * S)
    assert in_use_flows(ft) == 0
    send(st, ft, reply, fx.GATEWAY, T0 + 12 * S)
    assert in_use_flows(ft) == 1
    sweep_all(st, ft, T0 + 60 * S)
    assert in_use_flows(ft) == 0, "idle past its time"


def test_a_tracked_flow_replaces_a_cached_route_with_the_same_key():
    """A new conntrack flow whose reply key was cached as a route: the route goes, the flow's
    own entries follow its rules."""
    st, ft = topology()
    send(st, ft, fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, "10.10.2.7", 41000, 80, "A"), fx.GATEWAY)
    assert flow_entry(ft, fx.POD_A2, "10.10.2.7", 41000, 80)["flags"] & L.XSKP_FLOW_ROUTE
    syn = fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, VIP, 41000, 80, "S")
    send(st, ft, syn, fx.GATEWAY)
    assert flow_entry(ft, fx.POD_A2, "10.10.2.7", 41000, 80) is not None  # another key: untouched
    key = (fx.POD_A1, fx.NODE_A, 8080, snat_port(ft, 41000))
    from dataplane._flowtable import flow_insert_route
    flow_insert_route(ft.flows, *(fx.ip4(key[0]), fx.ip4(key[1]), key[2], key[3]), 6, 12,
                      np.zeros(6, np.uint8), np.zeros(6, np.uint8), fx.FIB_GENERATION, T0, 0)
    send(st, ft, syn, fx.GATEWAY, T0 + 31 * S)     # the SYN_SENT flow expired: a new one
    assert flow_entry(ft, *key) is None or not flow_entry(ft, *key)["flags"] & L.XSKP_FLOW_ROUTE


def test_a_dsr_backends_syn_ack_announces_an_mss_that_fits_the_tunnel():
    """On the backend's node, the SYN+ACK of a DSR flow leaves with its MSS lowered to
    node.dsr_mss (checksum still valid), so the client's segments fit once encapsulated; other
    flows' SYN+ACKs keep theirs."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    st, ft = topology()
    st.node[0]["dsr_mss"] = 1440
    syn = (fx.eth(fx.MAC_NODE_B, fx.MAC_TRANSPORT) / IP(src=fx.NODE_B, dst=fx.NODE_A, proto=4, ttl=64)
           / fx.tcp(fx.CLIENT, "198.51.100.13", 51008, 80, "S", ttl=63))
    assert send(st, ft, syn, fx.TRANSPORT)[0] == fx.TX_G
    syn_ack = (fx.from_pod(fx.MAC_POD_A9) / IP(src=fx.POD_A9, dst=fx.CLIENT)
               / TCP(sport=80, dport=51008, flags="SA", options=[("MSS", 1460), ("SAckOK", b"")]))
    verdicts, outs, _ = fx.run([bytes(syn_ack)], fx.GATEWAY, st, ft, now_ns=T0)
    assert verdicts[0] == fx.TX_T
    out = Ether(outs[0])
    assert dict(out["TCP"].options)["MSS"] == 1440 and out["IP"].src == "198.51.100.13"
    check = out["TCP"].chksum
    del out["TCP"].chksum
    assert Ether(bytes(out))["TCP"].chksum == check
    # a plain NAT flow's SYN+ACK is left alone
    send(st, ft, pod_segment(44100, "S"), fx.GATEWAY)
    plain = (fx.from_pod(fx.MAC_POD_A1) / IP(src=fx.POD_A1, dst=fx.NODE_A)
             / TCP(sport=8080, dport=snat_port(ft, 44100), flags="SA", options=[("MSS", 1460)]))
    _, outs, _ = fx.run([bytes(plain)], fx.GATEWAY, st, ft, now_ns=T0)
    assert dict(Ether(outs[0])["TCP"].options)["MSS"] == 1460


def test_an_offloaded_flow_keeps_its_clients_affinity_fresh():
    """ClientIP affinity counts from the last packet of the client's flows: a flow the fast path
    carries for longer than the affinity timeout keeps the entry (its last_seen reaches the
    affinity table through the sweep), so the client's next connection meets the same backend."""
    from dataplane._conntrack import affinity_lookup
    st, ft = topology()
    sid = fx.SERVICE_IDS["affinity"]
    st.services[sid]["affinity_timeout_s"] = 60
    vip = "10.96.0.16"
    send(st, ft, fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, vip, 46000, 80, "S"), fx.GATEWAY)
    orig = ct_entry(ft, fx.POD_A2, vip, 46000, 80)
    backend = int(orig["backend_id"])
    be = st.backends[backend]
    reply_key = (int(be["addr"]), int(orig["new_src_addr"]), int(be["port"]), int(orig["new_src_port"]))
    from scapy.layers.inet import IP, TCP
    import ipaddress
    syn_ack = (fx.eth(fx.MAC_NODE_B, fx.MAC_TRANSPORT)
               / IP(src=str(ipaddress.IPv4Address(reply_key[0])), dst=str(ipaddress.IPv4Address(reply_key[1])))
               / TCP(sport=reply_key[2], dport=reply_key[3], flags="SA"))
    send(st, ft, syn_ack, fx.TRANSPORT)
    f = flow_entry(ft, fx.POD_A2, vip, 46000, 80)
    assert f is not None, "offloaded"
    f["last_seen_ns"] = T0 + 100 * S               # the fast path carried it ever since
    sweep_all(st, ft, T0 + 101 * S)
    timeout_ns = np.uint64(60 * S)
    assert affinity_lookup(ft.affinity, fx.ip4(fx.POD_A2), sid, timeout_ns, np.uint64(T0 + 130 * S)) == backend
    assert affinity_lookup(ft.affinity, fx.ip4(fx.POD_A2), sid, timeout_ns, np.uint64(T0 + 170 * S)) == 0


def test_a_snat_port_closed_in_the_fast_path_is_free_for_a_new_syn_before_the_next_sweep():
    """A SNAT flow closed while the fast path carried it (FIN both ways in its entries, not yet
    swept) gives its port to a new connection at once, as the kernel's NAT would."""
    from dataplane._conntrack import ct_lookup as lookup
    st, ft = topology()
    st.node[0]["snat_port_max"] = st.node[0]["snat_port_min"]      # a pool of one port
    handshake(st, ft, sport=44000)
    port = snat_port(ft, 44000)
    for key in ((fx.POD_A2, VIP, 44000, 80), (fx.POD_A1, fx.NODE_A, 8080, port)):
        flow_entry(ft, *key)["tcp_flags_seen"] = 0x11
    verdict, counters = send(st, ft, pod_segment(44001, "S"), fx.GATEWAY, T0 + S)
    counters = tables.counters_by_name(counters)
    assert verdict == fx.TX_G and "XSKP_DROP_SNAT_EXHAUSTED" not in counters
    assert counters.get("XSKP_CNT_CT_REUSED") == 1
    assert lookup(ft.ct, fx.ip4(fx.POD_A2), fx.ip4(VIP), 44000, 80, 6) < 0, "the old flow is gone"


def test_a_worker_grants_upcall_credit_as_the_room_its_rings_have_beyond_what_tc_sent():
    """Admission (struct xskp_upcall_credit): limit = sent + room for the socket's slot, written
    only when it changes; no slot, or no fast path, grants nothing; 0 stays 'never granted'."""
    from dataplane._fastpath import grant_upcall_credit
    st, ft = topology()
    credit = ft.fast_config[0]["credit"]
    credit[7]["sent"] = 1000
    grant_upcall_credit(ft, 7, 256)
    assert int(credit[7]["limit"]) == 1256
    credit[7]["sent"] = 1300                    # tc sent past it (frames lost on the way included)
    grant_upcall_credit(ft, 7, 0)
    assert int(credit[7]["limit"]) == 1300      # no room: the next new flow is shed
    grant_upcall_credit(ft, -1, 64)
    grant_upcall_credit(ft, len(credit), 64)    # beyond the XSKMAP: nothing written out of bounds
    grant_upcall_credit(ft, 8, 0)               # sent 0, room 0: still a grant, never 0
    assert int(credit[8]["limit"]) == 1 and int(credit[7]["limit"]) == 1300
    no_offload = tables.make_flow_tables(64, 64)
    grant_upcall_credit(no_offload, 7, 64)
    assert int(no_offload.fast_config[0]["credit"][7]["limit"]) == 0


def _marked(ft):
    """The flow slots set in ft.sweep_marks."""
    bits = np.unpackbits(ft.sweep_marks.view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits[:ft.flows.shape[0]]).tolist())


def test_the_sweep_looks_only_at_marked_slots_and_unmarks_those_no_longer_owned():
    """Each insert marks its slot; the sweep unmarks a slot whose entry went or another worker
    took, and never looks at an unmarked one (an insert that forgot its mark would never be
    swept: here an offloaded flow past its idle timeout stays)."""
    st, ft = topology()
    handshake(st, ft, 44000)
    slots = {flow_lookup(ft.flows, fx.ip4(fx.POD_A2), fx.ip4(VIP), 44000, 80, 6),
             flow_lookup(ft.flows, fx.ip4(fx.POD_A1), fx.ip4(fx.NODE_A), 8080, snat_port(ft, 44000), 6)}
    assert _marked(ft) == slots
    taken = min(slots)
    ft.flows[taken]["owner"] = 1                      # another worker's now
    sweep_all(st, ft, T0 + S)
    assert _marked(ft) == slots - {taken}
    ft.sweep_marks[:] = 0
    counters = sweep_all(st, ft, T0 + 10_000 * S)     # long expired, but nothing is marked
    assert "XSKP_CNT_CT_EXPIRED" not in counters and in_use_flows(ft) == 2


def test_an_adopted_tables_entries_are_marked_for_their_owner_only():
    """A restarted agent maps its predecessor's flow table: with_fast_path marks the entries the
    worker owns, so the sweep keeps expiring them."""
    flows = np.zeros(256, tables.FLOW_V4_DTYPE)
    flows["flags"][[3, 64, 65, 200]] = L.XSKP_FLOW_IN_USE
    flows["owner"][[3, 64, 65, 200]] = [0, 1, 0, 0]
    flows["flags"][9] = L.XSKP_FLOW_TOMBSTONE
    st, ft = fx.make_topology()
    ft = tables.with_fast_path(ft, flows, np.zeros(1, tables.FAST_CONFIG_DTYPE), IFINDEX, owner=0)
    assert _marked(ft) == {3, 65, 200}


def test_a_table_smaller_than_a_mark_word_is_swept_whole_in_one_period():
    """16 slots, the cursor in the middle: a marked slot before the cursor is reached in the same
    period (the skip over an empty word stops at the table's end)."""
    st, ft = topology(flow_capacity=16)
    handshake(st, ft, 44000)
    marked = sorted(_marked(ft))
    ft.fast_state[0]["sweep_cursor"] = max(marked) + 1 if max(marked) < 15 else 0
    counters = sweep_all(st, ft, T0 + 10_000 * S)
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1 and in_use_flows(ft) == 0


def _periods(st, ft, start_ns, count):
    """`count` sweep steps one period apart after `start_ns`; the time of the last one."""
    counters = tables.make_counters()
    now = start_ns
    for _ in range(count):
        now += SWEEP_PERIOD_NS
        fast_path_step(st, ft, np.uint64(now), counters)
    return now


def test_an_idle_entry_is_checked_in_full_every_few_visits_and_at_once_after_a_packet_or_a_publish():
    """A full check reads the conntrack entry and the backend (the probe here: a backend marked
    gone behind the sweep's back, which only a full check notices). An entry without packets,
    publish or FIB change since its last check gets one every SWEEP_IDLE_SKIPS + 1 visits; a
    packet (the BPF side moves last_seen_ns) or a publish (node.generation) brings it forward."""
    for change in ("nothing", "packet", "publish"):
        st, ft = topology()
        handshake(st, ft)
        now = _periods(st, ft, T0 + S, 2)                  # the first visit checks in full
        st.backends[1]["flags"] &= 0xffff ^ L.XSKP_BE_ALIVE
        if change == "packet":
            flow_entry(ft, fx.POD_A2, VIP, 44000, 80)["last_seen_ns"] = now
        elif change == "publish":
            st.node[0]["generation"] += 1
        now = _periods(st, ft, now, 1)
        if change == "nothing":
            assert in_use_flows(ft) == 2, "checked in full although nothing changed"
            now = _periods(st, ft, now, SWEEP_IDLE_SKIPS - 1)
            assert in_use_flows(ft) == 2
            _periods(st, ft, now, 1)
        assert in_use_flows(ft) == 0, change
