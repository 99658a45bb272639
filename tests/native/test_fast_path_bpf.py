"""The kernel fast path (root): entries written by the numba side into the shared flow table are
found by the BPF programs (same hash and probing), the tc program applies their rewrite with
valid checksums, TTL - 1 and MACs and redirects, the steering program hands such flows to it,
and both stop while no agent is live. Frames run with BPF_PROG_RUN on the lab's interfaces."""
import time

import numpy as np
import pytest

from xsk_test_support import LAB_PREFIX, in_netns, needs_native, needs_root

pytestmark = [needs_root, needs_native]

XDP_PASS, XDP_REDIRECT = 2, 4
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
CLIENT, VIP, BACKEND, NODE = "10.0.0.100", "10.96.0.10", "10.244.0.2", "10.0.0.1"
BACKEND_MAC, OWN_MAC = "02:00:00:00:0b:01", "02:00:00:00:0a:01"


def ip4(text):
    import ipaddress
    return int(ipaddress.IPv4Address(text))


@pytest.fixture(scope="module")
def fast():
    """The program attached to the lab node's tr0 and gw0 with a ClusterIP frontend, the tc fast
    path on both, and one offloaded flow CLIENT:40000 -> VIP:80 rewritten to BACKEND:8080."""
    from lab import Lab, forwarder_lab
    from dataplane import xsk
    with Lab(LAB_PREFIX + "f") as lab:
        topo = forwarder_lab(lab)
        for ns in topo.namespaces:
            lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        with in_netns(topo.node):
            program = xsk.SteeringProgram(flow_entries=1024)
            try:
                program.attach("tr0", "transport")
                program.attach("gw0", "gateway")
                program.add_frontend(VIP, 80, "tcp", ["transport", "gateway"])
                program.add_frontend(VIP, 53, "udp", ["transport", "gateway"])
                program.add_prefix("10.244.0.0/24", "transport")
                program.attach_fast_path("tr0")
                program.attach_fast_path("gw0")
                flows, config = program.fast_tables()
                config[0]["flow_mask"] = flows.shape[0] - 1
                yield topo, program, flows, config
            finally:
                program.close()


def offload(flows, src, dst, sport, dport, proto, new_src, new_dst, new_sport, new_dport, out_ifindex,
            ct_flags=0, encap_dst=None):
    """Insert an entry the way the pipeline does (flow_insert_from_ct on a conntrack record)."""
    from dataplane import tables
    from dataplane._flowtable import flow_insert_from_ct
    ct = np.zeros(1, tables.CT_ENTRY_DTYPE)
    e = ct[0]
    e["src_addr"], e["dst_addr"], e["src_port"], e["dst_port"], e["proto"] = (
        ip4(src), ip4(dst), sport, dport, proto)
    e["new_src_addr"], e["new_dst_addr"], e["new_src_port"], e["new_dst_port"] = (
        ip4(new_src), ip4(new_dst), new_sport, new_dport)
    e["dst_mac"] = list(bytes.fromhex(BACKEND_MAC.replace(":", "")))
    e["src_mac"] = list(bytes.fromhex(OWN_MAC.replace(":", "")))
    e["flags"] = ct_flags | 1
    if encap_dst:
        e["encap_dst"] = ip4(encap_dst)
    slot = flow_insert_from_ct(flows, ct[0], 0, out_ifindex, 0)
    assert slot >= 0
    return slot


def live(config, seconds=30):
    config[0]["alive_until_ns"] = time.monotonic_ns() + int(seconds * 1e9)


def frame(proto="tcp", flags="A", sport=40000, dport=80, src=CLIENT, dst=VIP, ttl=64, payload=b"data",
          udp_checksum=None):
    from scapy.all import IP, TCP, UDP, Ether
    l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == "tcp" else UDP(sport=sport, dport=dport)
    pkt = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src=src, dst=dst, ttl=ttl) / l4 / payload
    if udp_checksum is not None:
        pkt = Ether(bytes(pkt))
        pkt["UDP"].chksum = udp_checksum
    return bytes(pkt)


def checksums_valid(raw):
    """(IPv4 ok, L4 ok) recomputed by scapy."""
    from scapy.all import Ether
    pkt = Ether(raw)
    ip = pkt["IP"]
    l4 = ip.payload
    got_ip, got_l4 = ip.chksum, l4.chksum
    del ip.chksum
    del l4.chksum
    again = Ether(bytes(pkt))
    return again["IP"].chksum == got_ip, (got_l4 == 0 and l4.name == "UDP") or again["IP"].payload.chksum == got_l4


def test_an_offloaded_tcp_flow_is_rewritten_and_redirected_by_the_tc_program(fast):
    """A frame of an offloaded flow: addresses and ports rewritten with both checksums valid,
    TTL - 1, the entry's MACs, redirected to the entry's interface (counted FAST_FLOW); the
    entry's last_seen, TCP flags and counts are updated."""
    from scapy.all import Ether
    from dataplane import xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        gw = xsk.ifindex_of("gw0")
        slot = offload(flows, CLIENT, VIP, 40000, 80, 6, NODE, BACKEND, 61000, 8080, gw)
        live(config)
        before = program.counters()
        action, out = program.fast_test_run(frame(flags="PA"), "tr0")
        after = program.counters()
    assert action == TC_ACT_REDIRECT
    assert after["FAST_FLOW"] == before["FAST_FLOW"] + 1
    pkt = Ether(out)
    assert (pkt["IP"].src, pkt["IP"].dst, pkt["TCP"].sport, pkt["TCP"].dport) == (NODE, BACKEND, 61000, 8080)
    assert pkt["IP"].ttl == 63
    assert (pkt.dst, pkt.src) == (BACKEND_MAC, OWN_MAC)
    assert checksums_valid(out) == (True, True)
    assert bytes(pkt["TCP"].payload) == b"data"
    f = flows[slot]
    assert f["packets"] == 1 and f["bytes"] == len(out) and f["tcp_flags_seen"] == 0x18
    assert abs(int(f["last_seen_ns"]) - time.monotonic_ns()) < 5 * 10**9


def test_rewrites_of_random_tuples_ttls_and_ip_options_keep_both_checksums_valid(fast):
    """The rewrite computes the header checksum itself (RFC 1624) and the L4 one by differences:
    200 random flows (TCP and UDP, random addresses, ports, TTLs, with or without an IP option)
    come out with the entry's tuple, TTL - 1, the payload and options intact, both checksums
    valid."""
    import random
    from scapy.all import IP, TCP, UDP, Ether, IPOption_Router_Alert
    from dataplane import xsk
    topo, program, flows, config = fast
    rng = random.Random(1624)

    def address():
        return ".".join(str(rng.randrange(1, 255)) for _ in range(4))

    with in_netns(topo.node):
        gw = xsk.ifindex_of("gw0")
        live(config)
        for i in range(200):
            proto = rng.choice(("tcp", "udp"))
            src, dst, new_src, new_dst = address(), address(), address(), address()
            sport, dport, new_sport, new_dport = (rng.randrange(1, 65536) for _ in range(4))
            if i % 4 == 0:
                new_src, new_sport = src, sport           # DNAT only
            ttl = rng.randrange(2, 256)
            options = [IPOption_Router_Alert()] if i % 3 == 0 else []
            l4 = TCP(sport=sport, dport=dport, flags="A") if proto == "tcp" else UDP(sport=sport, dport=dport)
            payload = bytes([i]) * (i % 50 + 1)
            raw = bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02")
                        / IP(src=src, dst=dst, ttl=ttl, options=options) / l4 / payload)
            slot = offload(flows, src, dst, sport, dport, 6 if proto == "tcp" else 17,
                           new_src, new_dst, new_sport, new_dport, gw)
            action, out = program.fast_test_run(raw, "tr0")
            flows[slot]["flags"] = 0
            pkt = Ether(out)
            got = (pkt["IP"].src, pkt["IP"].dst, pkt["IP"].payload.sport, pkt["IP"].payload.dport, pkt["IP"].ttl)
            assert (action, got) == (TC_ACT_REDIRECT, (new_src, new_dst, new_sport, new_dport, ttl - 1)), i
            assert checksums_valid(out) == (True, True), (i, proto, options)
            assert (pkt.dst, pkt.src) == (BACKEND_MAC, OWN_MAC)
            assert bytes(pkt["IP"].payload.payload) == payload and pkt["IP"].options == Ether(raw)["IP"].options


def test_udp_without_checksum_keeps_it_zero_and_with_one_stays_valid(fast):
    from scapy.all import Ether
    from dataplane import xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        gw = xsk.ifindex_of("gw0")
        offload(flows, CLIENT, VIP, 5353, 53, 17, CLIENT, BACKEND, 5353, 5353, gw)
        live(config)
        _, no_sum = program.fast_test_run(frame("udp", sport=5353, dport=53, udp_checksum=0), "tr0")
        action, with_sum = program.fast_test_run(frame("udp", sport=5353, dport=53), "tr0")
    assert action == TC_ACT_REDIRECT
    assert Ether(no_sum)["UDP"].chksum == 0 and Ether(no_sum)["IP"].dst == BACKEND
    assert checksums_valid(with_sum) == (True, True)


def test_the_steering_program_hands_offloaded_flows_to_the_fast_path_but_not_a_new_syn(fast):
    from dataplane import xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        offload(flows, CLIENT, VIP, 40001, 80, 6, NODE, BACKEND, 61001, 8080, xsk.ifindex_of("gw0"))
        live(config)
        before = program.counters()
        assert program.test_run(frame(sport=40001, flags="A"), "tr0") == XDP_PASS
        assert program.test_run(frame(sport=40001, flags="S"), "tr0") == XDP_PASS   # no socket bound
        after = program.counters()
    assert after["STEER_PASS_FAST_FLOW"] == before["STEER_PASS_FAST_FLOW"] + 1
    assert after["STEER_REDIRECT_FRONTEND"] == before["STEER_REDIRECT_FRONTEND"] + 1   # the SYN


def test_sctp_is_never_taken_by_the_fast_path_even_with_a_flow_entry(fast):
    """SCTP belongs to the userspace tier: an entry for an SCTP 5-tuple (which the pipeline never
    writes) is neither passed on by the steering program nor executed by the tc program; the
    frame is steered to userspace as a frontend's."""
    from scapy.all import IP, Ether
    from scapy.layers.sctp import SCTP, SCTPChunkData
    from dataplane import xsk
    topo, program, flows, config = fast
    sctp = bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src=CLIENT, dst=VIP) /
                 SCTP(sport=40100, dport=3868, tag=7) / SCTPChunkData(tsn=1, data=b"x"))
    with in_netns(topo.node):
        program.add_frontend(VIP, 3868, "sctp", ["transport", "gateway"])
        slot = offload(flows, CLIENT, VIP, 40100, 3868, 132, NODE, BACKEND, 61100, 3868,
                       xsk.ifindex_of("gw0"))
        live(config)
        try:
            before = program.counters()
            action, out = program.fast_test_run(sctp, "tr0")
            xdp_action = program.test_run(sctp, "tr0")
            after = program.counters()
        finally:
            program.remove_frontend(VIP, 3868, "sctp")
            flows[slot]["flags"] = 0
    assert action == TC_ACT_OK and out == sctp
    assert after["FAST_FLOW"] == before["FAST_FLOW"]
    assert after["STEER_PASS_FAST_FLOW"] == before["STEER_PASS_FAST_FLOW"]
    assert xdp_action == XDP_PASS     # no socket bound: the redirect falls back
    assert after["STEER_REDIRECT_FRONTEND"] == before["STEER_REDIRECT_FRONTEND"] + 1


def test_nothing_is_executed_without_a_live_agent_but_a_handover_hold_keeps_it(fast):
    """The heartbeat ran out (a killed agent): the kernel's, at both hooks. A hold set by an
    agent stopping for a handover keeps the fast path running."""
    from dataplane import xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        offload(flows, CLIENT, VIP, 40002, 80, 6, NODE, BACKEND, 61002, 8080, xsk.ifindex_of("gw0"))
        config[0]["alive_until_ns"] = time.monotonic_ns() - 1
        before = program.counters()
        action, out = program.fast_test_run(frame(sport=40002), "tr0")
        xdp_action = program.test_run(frame(sport=40002), "tr0")
        after = program.counters()
        assert action == TC_ACT_OK and out == frame(sport=40002)
        assert xdp_action == XDP_PASS
        assert after["FAST_PASS_NOT_LIVE"] == before["FAST_PASS_NOT_LIVE"] + 1
        assert after["STEER_PASS_FAST_FLOW"] == before["STEER_PASS_FAST_FLOW"]
        program.hold(30)
        try:
            action, _ = program.fast_test_run(frame(sport=40002), "tr0")
        finally:
            program.hold(0)
    assert action == TC_ACT_REDIRECT


def test_an_expiring_ttl_is_left_to_the_kernel(fast):
    from dataplane import xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        offload(flows, CLIENT, VIP, 40003, 80, 6, NODE, BACKEND, 61003, 8080, xsk.ifindex_of("gw0"))
        live(config)
        action, _ = program.fast_test_run(frame(sport=40003, ttl=1), "tr0")
    assert action == TC_ACT_OK


def test_an_offloaded_flows_expiring_ttl_goes_to_the_pipeline_not_the_fast_path(fast):
    """A TTL 1 frame of an offloaded flow is steered as a frontend's (the pipeline answers ICMP
    time exceeded) instead of going to the fast path, which would leave it to the kernel."""
    from dataplane import xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        offload(flows, CLIENT, VIP, 40004, 80, 6, NODE, BACKEND, 61004, 8080, xsk.ifindex_of("gw0"))
        live(config)
        before = program.counters()
        assert program.test_run(frame(sport=40004, ttl=1), "tr0") == XDP_PASS   # no socket bound
        assert program.test_run(frame(sport=40004, ttl=2), "tr0") == XDP_PASS
        after = program.counters()
    assert after["STEER_REDIRECT_FRONTEND"] == before["STEER_REDIRECT_FRONTEND"] + 1    # TTL 1
    assert after["STEER_PASS_FAST_FLOW"] == before["STEER_PASS_FAST_FLOW"] + 1          # TTL 2


def test_every_slot_of_a_probe_chain_is_found_by_the_bpf_lookup(fast):
    """Flows whose hashes collide fill consecutive slots; the BPF lookup walks the same chain."""
    from dataplane import xsk
    from dataplane.tables import hash_flow
    topo, program, flows, config = fast
    mask = flows.shape[0] - 1
    target = None
    ports = []
    for sport in range(20000, 60000):
        slot = int(hash_flow(ip4(CLIENT), ip4(VIP), sport, 80, 6)) & mask
        if target is None:
            target = slot
        if slot == target and not flows[slot]["flags"] and not flows[(slot + 1) & mask]["flags"]:
            ports.append(sport)
        if len(ports) == 3:
            break
    assert len(ports) == 3
    with in_netns(topo.node):
        gw = xsk.ifindex_of("gw0")
        slots = [offload(flows, CLIENT, VIP, p, 80, 6, NODE, BACKEND, 62000 + i, 8080, gw)
                 for i, p in enumerate(ports)]
        live(config)
        actions = [program.fast_test_run(frame(sport=p), "tr0")[0] for p in ports]
    assert slots == [target, (target + 1) & mask, (target + 2) & mask]
    assert actions == [TC_ACT_REDIRECT] * 3


def test_the_tc_program_sits_at_our_handle_on_both_interfaces_and_goes_at_close(fast):
    from dataplane import xsk
    topo, program, _, _ = fast
    with in_netns(topo.node):
        for ifname in ("tr0", "gw0"):
            prog_id, name = xsk.fast_path_attached(ifname)
            assert prog_id and name == "xskp_fast"


def test_the_heartbeat_keeps_the_fast_path_live_and_stops_with_it(fast):
    """A thread of its own pushes alive_until_ns forward; once stopped, the fast path runs out
    within the liveness time (what a kill -9 does)."""
    from dataplane import abi, xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        offload(flows, CLIENT, VIP, 40004, 80, 6, NODE, BACKEND, 61004, 8080, xsk.ifindex_of("gw0"))
        config[0]["alive_until_ns"] = 0
        program.start_heartbeat(config, period_ns=20_000_000, liveness_ns=200_000_000)
        try:
            time.sleep(0.3)
            assert config[0]["alive_until_ns"] > time.monotonic_ns()
            action, _ = program.fast_test_run(frame(sport=40004), "tr0")
        finally:
            program.stop_heartbeat()
        assert action == TC_ACT_REDIRECT
        time.sleep(0.25)
        action, _ = program.fast_test_run(frame(sport=40004), "tr0")
    assert action == TC_ACT_OK


LB, OTHER_NODE = "198.51.100.12", "10.0.0.2"


def test_a_dsr_ingress_flow_is_encapsulated_to_the_backends_node(fast):
    """XSKP_FLOW_ENCAP: inner TTL - 1, an outer IPv4 header node -> backend's node (IPIP, TTL 64,
    DF copied, valid checksum), the entry's MACs, redirected."""
    from scapy.all import Ether
    from dataplane import abi, xsk
    topo, program, flows, config = fast
    with in_netns(topo.node):
        config[0]["encap_src"] = ip4(NODE)
        offload(flows, CLIENT, LB, 40010, 80, 6, CLIENT, LB, 40010, 80, xsk.ifindex_of("tr0"),
                ct_flags=abi.lib.XSKP_CT_DSR_ENCAP, encap_dst=OTHER_NODE)
        live(config)
        action, out = program.fast_test_run(frame(sport=40010, dst=LB, payload=b"dsr"), "tr0")
    assert action == TC_ACT_REDIRECT
    pkt = Ether(out)
    outer, inner = pkt["IP"], pkt["IP"].payload
    assert (outer.src, outer.dst, outer.proto, outer.ttl) == (NODE, OTHER_NODE, 4, 64)
    assert outer.len == len(out) - 14 and outer.flags.DF == inner.flags.DF
    assert (inner.src, inner.dst, inner.ttl, inner["TCP"].dport) == (CLIENT, LB, 63, 80)
    assert pkt.dst == BACKEND_MAC
    check = outer.chksum
    del outer.chksum
    assert Ether(bytes(pkt))["IP"].chksum == check
    assert bytes(inner["TCP"].payload) == b"dsr"


def test_a_dsr_flow_on_the_backends_node_is_decapsulated_then_translated(fast):
    """XSKP_FLOW_DECAP: an IPIP packet to the node whose inner 5-tuple is the flow loses its
    outer header and is DNATed to the backend, checksums valid; the steering program passes it."""
    from scapy.all import IP, TCP, Ether
    from dataplane import abi, xsk
    topo, program, flows, config = fast
    tunnelled = bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") /
                      IP(src=OTHER_NODE, dst=NODE, proto=4) /
                      IP(src=CLIENT, dst=LB, ttl=63) / TCP(sport=40011, dport=80, flags="A") / b"in")
    with in_netns(topo.node):
        offload(flows, CLIENT, LB, 40011, 80, 6, CLIENT, BACKEND, 40011, 8080, xsk.ifindex_of("gw0"),
                ct_flags=abi.lib.XSKP_CT_DSR_LOCAL)
        live(config)
        before = program.counters()
        xdp_action = program.test_run(tunnelled, "tr0")
        action, out = program.fast_test_run(tunnelled, "tr0")
        after = program.counters()
    assert xdp_action == XDP_PASS
    assert after["STEER_PASS_FAST_FLOW"] == before["STEER_PASS_FAST_FLOW"] + 1
    assert action == TC_ACT_REDIRECT
    pkt = Ether(out)
    assert pkt.type == 0x0800 and pkt["IP"].proto == 6
    assert (pkt["IP"].src, pkt["IP"].dst, pkt["IP"].ttl, pkt["TCP"].dport) == (CLIENT, BACKEND, 62, 8080)
    assert checksums_valid(out) == (True, True)
    assert bytes(pkt["TCP"].payload) == b"in"
