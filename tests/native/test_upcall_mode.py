"""Upcall mode (root): no XDP on the served interface; the tc fast path sends what userspace takes
into the interface's upcall veth pair, whose socket end's AF_XDP socket receives it, and what the
agent transmits on that socket leaves through the served interface. Decisions run with
BPF_PROG_RUN; the socket path with real frames between the lab's namespaces."""
import subprocess
import sys
import time

import numpy as np
import pytest

from xsk_test_support import LAB_PREFIX, in_netns, needs_native, needs_root

pytestmark = [needs_root, needs_native]

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
CLIENT, VIP, BACKEND, NODE = "10.0.0.100", "10.96.0.10", "10.244.0.2", "10.0.0.1"
DNS_PORT = 53


@pytest.fixture(scope="module")
def upcall():
    """The steering object with tr0 and gw0 in upcall mode (pairs made as the agent makes them),
    a ClusterIP frontend for TCP 80 and UDP 53, the tc fast path on both, a live heartbeat."""
    from control import netlink
    from dataplane import abi, xsk
    from lab import Lab, forwarder_lab
    with Lab(LAB_PREFIX + "u") as lab:
        topo = forwarder_lab(lab)
        for ns in topo.namespaces:
            lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        with in_netns(topo.node):
            pairs = {ifname: netlink.ensure_upcall_pair(ifname, abi.lib.XSKP_UPCALL_MTU)
                     for ifname in ("tr0", "gw0")}
            program = xsk.SteeringProgram(flow_entries=1024)
            try:
                program.prepare("tr0", "transport", upcall_pair=pairs["tr0"])
                program.prepare("gw0", "gateway", upcall_pair=pairs["gw0"])
                program.add_frontend(VIP, 80, "tcp", ["transport", "gateway"])
                program.add_frontend(VIP, DNS_PORT, "udp", ["transport", "gateway"])
                program.set_node_address(NODE, 61000, 61999, ["transport"])
                assert program.attach("tr0", mode="upcall") == "upcall"
                assert program.attach("gw0", mode="upcall") == "upcall"
                program.attach_fast_path("tr0")
                program.attach_fast_path("gw0")
                flows, config = program.fast_tables()
                config[0]["flow_mask"] = flows.shape[0] - 1
                config[0]["alive_until_ns"] = time.monotonic_ns() + 600 * 10**9
                yield topo, program, flows, config, pairs
            finally:
                program.close()
                for ifname in ("tr0", "gw0"):
                    netlink.remove_upcall_pair(ifname)


def frame(proto="tcp", flags="S", sport=40000, dport=80, src=CLIENT, dst=VIP, ttl=64, size=0):
    from scapy.all import IP, TCP, UDP, Ether
    l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src=src, dst=dst, ttl=ttl)
                 / l4 / (b"x" * size or b"data"))


def run(program, raw, ifname="tr0"):
    before = program.counters()
    action, _ = program.fast_test_run(raw, ifname)
    after = program.counters()
    return action, {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_the_served_interfaces_carry_no_xdp_and_the_pairs_carry_the_programs(upcall):
    from dataplane import xsk
    topo, program, flows, config, pairs = upcall
    with in_netns(topo.node):
        assert xsk.attached_program("tr0")[0] == 0 and xsk.attached_program("gw0")[0] == 0
        for kernel_end, socket_end in pairs.values():
            assert xsk.attached_program(socket_end)[1:] == ("native", "xskp_upcall")
            assert xsk.fast_path_attached(kernel_end)[1] == "xskp_upcall_tx"
        assert xsk.fast_path_attached("tr0")[1] == "xskp_fast"


def test_the_agents_transmissions_take_the_kernel_ends_napi_ring_not_the_cpus_backlog(upcall):
    """GRO on at the kernel end and no TSO at the socket end: veth then queues what the socket end
    sends to the kernel end's own NAPI ring; the CPU's backlog queue, which a flood of received
    packets fills, dropped the agent's transmissions (new flows/s fell to 8 k in the bench)."""
    topo, program, flows, config, pairs = upcall
    kernel_end, socket_end = pairs["tr0"]
    lab_run = lambda dev: subprocess.run(["ip", "netns", "exec", topo.node, "ethtool", "-k", dev],
                                         capture_output=True, text=True, check=True).stdout
    assert "generic-receive-offload: on" in lab_run(kernel_end)
    assert "tcp-segmentation-offload: off" in lab_run(socket_end)


@pytest.mark.parametrize("what, raw, action, counter", [
    ("a new connection to a frontend", frame(), TC_ACT_REDIRECT, "STEER_REDIRECT_FRONTEND"),
    ("a reply to a SNAT port", frame(flags="SA", src="10.0.0.100", dst=NODE, sport=80, dport=61010),
     TC_ACT_REDIRECT, "STEER_REDIRECT_SNAT_REPLY"),
    ("another port of the node address", frame(dst=NODE, dport=22), TC_ACT_OK, "STEER_PASS_NODE_ADDRESS"),
    ("nothing of ours", frame(dst="10.0.0.7"), TC_ACT_OK, "STEER_PASS_NO_MATCH"),
    ("a segment larger than the pair carries", frame(flags="A", size=3550), TC_ACT_SHOT, "STEER_DROP_TOO_BIG"),
])
def test_each_frame_gets_its_upcall_decision(upcall, what, raw, action, counter):
    topo, program, flows, config, pairs = upcall
    with in_netns(topo.node):
        got, counted = run(program, raw)
    assert (got, counted.get(counter)) == (action, 1), f"{what}: {counted}"


def test_an_offloaded_flow_runs_in_the_fast_path_but_its_expiring_ttl_is_upcalled(upcall):
    """The frame of an offloaded flow is executed at tc; with TTL 1 it goes up instead, so that
    the pipeline answers ICMP time exceeded (the kernel would deliver it untranslated)."""
    from dataplane import xsk
    from test_fast_path_bpf import offload
    topo, program, flows, config, pairs = upcall
    with in_netns(topo.node):
        offload(flows, CLIENT, VIP, 40100, 80, 6, NODE, BACKEND, 61100, 8080, xsk.ifindex_of("gw0"))
        executed = run(program, frame(flags="A", sport=40100))
        expiring = run(program, frame(flags="A", sport=40100, ttl=1))
    assert executed == (TC_ACT_REDIRECT, {"FAST_FLOW": 1})
    assert expiring == (TC_ACT_REDIRECT, {"STEER_REDIRECT_FRONTEND": 1})


def test_without_credit_new_flows_are_shed_at_tc_and_flows_under_way_go_up(upcall):
    """Admission: tc counts what it sends up to a socket; with no credit left (the worker granted
    no more room than was sent) a new connection's SYN and a UDP datagram to a frontend are
    dropped at tc (UPCALL_DROP_SHED), while the handshake's ACK and a SNAT reply still go up
    (and are counted); one more frame of credit lets one SYN up; a socket whose worker never
    granted (limit 0) has no admission."""
    from dataplane import abi
    topo, program, flows, config, pairs = upcall
    base = program.ifaces["tr0"][1]
    credit = config[0]["credit"][base:base + abi.lib.STEER_MAX_QUEUES]   # tr0's sockets, by queue
    with in_netns(topo.node):
        try:
            credit["sent"] += 100                      # what tc sent earlier, all of the credit
            credit["limit"] = credit["sent"]
            shed = [run(program, frame()), run(program, frame("udp", dport=DNS_PORT))]
            sent = int(credit["sent"].sum())
            kept = [run(program, frame(flags="A")),
                    run(program, frame(flags="SA", src=CLIENT, dst=NODE, sport=80, dport=61010))]
            counted = int(credit["sent"].sum()) - sent
            credit["limit"] = credit["sent"] + 1
            granted = [run(program, frame()), run(program, frame())]
        finally:
            credit["limit"] = 0
        ungranted = run(program, frame())
    assert shed == [(TC_ACT_SHOT, {"UPCALL_DROP_SHED": 1})] * 2
    assert kept == [(TC_ACT_REDIRECT, {"STEER_REDIRECT_FRONTEND": 1}),
                    (TC_ACT_REDIRECT, {"STEER_REDIRECT_SNAT_REPLY": 1})] and counted == 2
    assert granted == [(TC_ACT_REDIRECT, {"STEER_REDIRECT_FRONTEND": 1}), (TC_ACT_SHOT, {"UPCALL_DROP_SHED": 1})]
    assert ungranted == (TC_ACT_REDIRECT, {"STEER_REDIRECT_FRONTEND": 1})


def test_without_a_heartbeat_the_kernel_takes_everything_and_a_hold_drops_what_we_translate(upcall):
    topo, program, flows, config, pairs = upcall
    with in_netns(topo.node):
        alive = int(config[0]["alive_until_ns"])
        config[0]["alive_until_ns"] = time.monotonic_ns() - 1
        try:
            dead = run(program, frame())
            program.hold(30)
            held = run(program, frame())
        finally:
            program.hold(0)
            config[0]["alive_until_ns"] = alive
    assert dead == (TC_ACT_OK, {"FAST_PASS_NOT_LIVE": 1})
    assert held == (TC_ACT_SHOT, {"STEER_DROP_HELD": 1})


def _recv_one(px, sock, timeout=3.0):
    addrs, lens = np.zeros(16, np.uint64), np.zeros(16, np.uint32)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = px.lib.xskp_rx(sock.handle, px.ffi.from_buffer("uint64_t[]", addrs),
                           px.ffi.from_buffer("uint32_t[]", lens), 16)
        if n:
            return int(addrs[0]), int(lens[0])
        px.lib.xskp_wakeup_rx(sock.handle)
        time.sleep(0.01)
    return None


def test_an_upcall_reaches_the_socket_and_the_agents_transmission_leaves_the_served_interface(upcall):
    """A real UDP datagram from the client to the ClusterIP arrives in the socket bound on tr0's
    socket end (registered for tr0); a frame transmitted on that socket leaves tr0 and reaches
    the client's UDP socket."""
    from scapy.all import IP, UDP, Ether
    from dataplane import xsk
    topo, program, flows, config, pairs = upcall
    px = xsk.pyxdp_module()
    with in_netns(topo.node):
        umem = xsk.Umem(frame_count=64, ring_size=32)
        try:
            sock = xsk.XskSocket(umem, pairs["tr0"][1], 0, serves="tr0")
            fill = umem.chunk_addresses()[:32].copy()
            assert px.lib.xskp_fill(sock.handle, px.ffi.from_buffer("uint64_t[]", fill), 32) == 32
            program.bind_socket(sock)
            sender = subprocess.run(
                ["ip", "netns", "exec", topo.client, sys.executable, "-c",
                 f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                 f".sendto(b'upcalled', ('{VIP}', {DNS_PORT}))"], capture_output=True)
            assert sender.returncode == 0, sender.stderr
            got = _recv_one(px, sock)
            assert got is not None, f"nothing reached the socket: {program.counters()}"
            addr, length = got
            received = Ether(bytes(umem.frames[addr:addr + length]))
            assert (received["IP"].dst, received["UDP"].dport, bytes(received["UDP"].payload)) == \
                (VIP, DNS_PORT, b"upcalled")

            # the agent's answer: an IPv4 frame to the client, sent on the socket end
            listener = subprocess.Popen(
                ["ip", "netns", "exec", topo.client, sys.executable, "-c",
                 "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 f"s.bind(('{CLIENT}', 40999)); s.settimeout(5); print(s.recv(100).decode(), flush=True)"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(0.3)
            answer = bytes(Ether(dst=topo.client_if.mac, src=topo.transport.mac) /
                           IP(src=VIP, dst=CLIENT) / UDP(sport=DNS_PORT, dport=40999) / b"answered")
            out = int(umem.chunk_addresses()[40])
            umem.frames[out:out + len(answer)] = np.frombuffer(answer, np.uint8)
            descs = np.array([out], np.uint64)
            sizes = np.array([len(answer)], np.uint32)
            assert px.lib.xskp_tx(sock.handle, px.ffi.from_buffer("uint64_t[]", descs),
                                  px.ffi.from_buffer("uint32_t[]", sizes), 1) == 1
            px.lib.xskp_kick_tx(sock.handle)
            heard, _ = listener.communicate(timeout=10)
            program.unbind_socket(sock)
        finally:
            umem.close()
    assert heard.strip() == "answered"
