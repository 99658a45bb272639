"""The XDP steering classifier, decision by decision (root): frames made with scapy are run
through the loaded program with BPF_PROG_RUN as if received on the lab's interfaces, and each
must land on its expected counter and action."""
import pytest

from xsk_test_support import LAB_PREFIX, in_netns, needs_native, needs_root

pytestmark = [needs_root, needs_native]

XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
NODE, CLIENT, POD, GATEWAY_IP, CLUSTER_IP = "10.0.0.1", "10.0.0.100", "10.244.0.2", "10.244.0.1", "10.96.0.10"


@pytest.fixture(scope="module")
def steering():
    """The program attached to the lab node's tr0 (transport) and gw0 (gateway), maps filled as
    the agent would: a ClusterIP on both roles, a NodePort on the node address from the transport
    only, a backend's replies on the gateway, a SNAT range, the Pod CIDR minus the gateway's /32."""
    from lab import Lab, forwarder_lab
    from dataplane import xsk
    with Lab(LAB_PREFIX) as lab:
        topo = forwarder_lab(lab)
        for ns in topo.namespaces:  # no IPv6 router solicitations or DAD counted mid-test
            lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
        with in_netns(topo.node):
            program = xsk.SteeringProgram()
            try:
                program.attach("tr0", "transport")
                program.attach("gw0", "gateway")
                program.add_frontend(CLUSTER_IP, 80, "tcp", ["transport", "gateway"])
                program.add_frontend(NODE, 30080, "tcp", "transport")
                program.add_backend(POD, 8080, "tcp", "gateway")
                program.add_frontend(CLUSTER_IP, 3868, "sctp", ["transport", "gateway"])
                program.add_frontend(NODE, 30868, "sctp", "transport")
                program.add_backend(POD, 3868, "sctp", "gateway")
                program.set_node_address(NODE, 40000, 40999, "transport")
                program.add_prefix("10.244.0.0/24", "transport")
                program.add_prefix(f"{GATEWAY_IP}/32", 0)
                yield topo, program
            finally:
                program.close()


def _tcp(src, dst, sport, dport, **ip_fields):
    from scapy.all import IP, TCP, Ether
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") /
                 IP(src=src, dst=dst, **ip_fields) / TCP(sport=sport, dport=dport, flags="S"))


def _udp(src, dst, sport, dport):
    from scapy.all import IP, UDP, Ether
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src=src, dst=dst) /
                 UDP(sport=sport, dport=dport) / b"x")


def _sctp(src, dst, sport, dport):
    from scapy.all import IP, Ether
    from scapy.layers.sctp import SCTP, SCTPChunkInit
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src=src, dst=dst) /
                 SCTP(sport=sport, dport=dport) / SCTPChunkInit(init_tag=1))


def _tagged(vlan_type=0x8100):
    from scapy.all import IP, TCP, Dot1Q, Ether
    return bytes(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02", type=vlan_type) / Dot1Q(vlan=10) /
                 IP(src=CLIENT, dst=NODE) / TCP(sport=1234, dport=30080, flags="S"))


def _arp():
    from scapy.all import ARP, Ether
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:02") / ARP(pdst=NODE))


CASES = [
    # (what must happen, frame, ingress interface, decision counted)
    ("ARP goes to the kernel", _arp, "tr0", "STEER_PASS_NOT_IPV4"),
    ("a SYN tagged VLAN 10 to a NodePort goes to the kernel (its VLAN device, or a drop)", _tagged, "tr0",
     "STEER_PASS_VLAN"),
    ("an 802.1ad-tagged frame goes to the kernel", lambda: _tagged(0x88a8), "tr0", "STEER_PASS_VLAN"),
    ("a truncated IPv4 header goes to the kernel", lambda: _tcp(CLIENT, CLUSTER_IP, 1234, 80)[:24], "tr0",
     "STEER_PASS_MALFORMED"),
    ("a fragment (ports unknown) goes to the kernel", lambda: _tcp(CLIENT, CLUSTER_IP, 1234, 80, flags="MF"),
     "tr0", "STEER_PASS_FRAGMENT"),
    ("an interface without a role is not looked at", lambda: _tcp(CLIENT, CLUSTER_IP, 1234, 80), "lo",
     "STEER_PASS_NO_IFACE"),
    ("a ClusterIP from the transport is steered", lambda: _tcp(CLIENT, CLUSTER_IP, 1234, 80), "tr0",
     "STEER_REDIRECT_FRONTEND"),
    ("a ClusterIP from a Pod is steered", lambda: _tcp(POD, CLUSTER_IP, 1234, 80), "gw0",
     "STEER_REDIRECT_FRONTEND"),
    ("another port of the ClusterIP is not", lambda: _tcp(CLIENT, CLUSTER_IP, 1234, 81), "tr0",
     "STEER_PASS_NO_MATCH"),
    ("a NodePort from the transport is steered", lambda: _tcp(CLIENT, NODE, 1234, 30080), "tr0",
     "STEER_REDIRECT_FRONTEND"),
    ("a transport-only NodePort from a Pod is not", lambda: _tcp(POD, NODE, 1234, 30080), "gw0",
     "STEER_PASS_NO_MATCH"),
    ("a reply to a SNAT port on the node address is steered", lambda: _tcp(POD, NODE, 8080, 40500), "tr0",
     "STEER_REDIRECT_SNAT_REPLY"),
    ("a port outside the SNAT range (ssh to the node) is not", lambda: _tcp(CLIENT, NODE, 1234, 22), "tr0",
     "STEER_PASS_NODE_ADDRESS"),
    ("a backend's reply to a node address outside the SNAT range is the kernel's (its masquerade)",
     lambda: _tcp(POD, NODE, 8080, 33000), "tr0", "STEER_PASS_NODE_ADDRESS"),
    ("a backend's reply from the gateway is steered", lambda: _tcp(POD, CLIENT, 8080, 1234), "gw0",
     "STEER_REDIRECT_BACKEND_REPLY"),
    ("the same Pod on another port is not", lambda: _tcp(POD, CLIENT, 9090, 1234), "gw0", "STEER_PASS_NO_MATCH"),
    ("the Pod CIDR from the transport is steered", lambda: _udp(CLIENT, POD, 1234, 53), "tr0",
     "STEER_REDIRECT_PREFIX"),
    ("the gateway's own address (a roles-0 /32 in the Pod CIDR) is not", lambda: _udp(CLIENT, GATEWAY_IP, 1234, 53),
     "tr0", "STEER_PASS_NO_MATCH"),
    ("the Pod CIDR is not steered on the gateway (local traffic)", lambda: _udp(POD, "10.244.0.3", 1234, 53), "gw0",
     "STEER_PASS_NO_MATCH"),
    ("an SCTP ClusterIP port from a Pod is steered", lambda: _sctp(POD, CLUSTER_IP, 40000, 3868), "gw0",
     "STEER_REDIRECT_FRONTEND"),
    ("an SCTP NodePort from the transport is steered", lambda: _sctp(CLIENT, NODE, 40000, 30868), "tr0",
     "STEER_REDIRECT_FRONTEND"),
    ("SCTP to a TCP-only frontend port is not", lambda: _sctp(CLIENT, CLUSTER_IP, 40000, 80), "tr0",
     "STEER_PASS_NO_MATCH"),
    ("an SCTP backend's reply from the gateway is steered", lambda: _sctp(POD, CLIENT, 3868, 40000), "gw0",
     "STEER_REDIRECT_BACKEND_REPLY"),
    ("an SCTP reply to a SNAT port on the node address is steered", lambda: _sctp(POD, NODE, 3868, 40500), "tr0",
     "STEER_REDIRECT_SNAT_REPLY"),
]


@pytest.mark.parametrize("what, make_frame, ifname, decision", CASES, ids=[c[0] for c in CASES])
def test_each_frame_gets_its_decision(steering, what, make_frame, ifname, decision):
    topo, program = steering
    with in_netns(topo.node):
        before = program.counters()
        action = program.test_run(make_frame(), ifname)
        after = program.counters()
    changed = {name for name in after if after[name] != before[name]}
    if decision.startswith("STEER_REDIRECT_"):
        # no socket is bound: the redirect falls back to the kernel and says so
        assert changed == {decision, "STEER_REDIRECT_FAILED"}, what
    else:
        assert changed == {decision}, what
    assert action == XDP_PASS, what


def test_a_bound_socket_takes_the_redirect(steering):
    """With a socket bound on tr0 queue 0, a steered frame is redirected (and nothing fails)."""
    from dataplane import xsk
    topo, program = steering
    with in_netns(topo.node):
        with xsk.Umem(frame_count=64, ring_size=32) as umem:
            sock = xsk.XskSocket(umem, "tr0", 0)
            program.bind_socket(sock)
            before = program.counters()
            action = program.test_run(_tcp(CLIENT, CLUSTER_IP, 1234, 80), "tr0")
            after = program.counters()
            program.unbind_socket(sock)
    assert action == XDP_REDIRECT
    assert after["STEER_REDIRECT_FRONTEND"] == before["STEER_REDIRECT_FRONTEND"] + 1
    assert after["STEER_REDIRECT_FAILED"] == before["STEER_REDIRECT_FAILED"]


def test_a_held_program_drops_translated_traffic_until_the_next_agent_replaces_it(steering):
    """The handover of a restart: after hold() a redirect without socket drops a frontend's
    frame (counted) but still passes prefix traffic; release() leaves the program attached; the
    next program binds first, then replaces it in one step, with no hold of its own."""
    import subprocess
    import time
    from dataplane import xsk
    topo, _ = steering
    subprocess.run(["ip", "-n", topo.node, "link", "add", "hv0", "type", "veth", "peer", "name", "hv1"],
                   check=True)
    for name in ("hv0", "hv1"):
        subprocess.run(["ip", "-n", topo.node, "link", "set", name, "up"], check=True)
    frontend, routed = _tcp(CLIENT, CLUSTER_IP, 1234, 80), _tcp(CLIENT, POD, 1234, 8080)
    with in_netns(topo.node):
        old = xsk.SteeringProgram()
        try:
            old.attach("hv0", "transport")
            old.add_frontend(CLUSTER_IP, 80, "tcp", "transport")
            old.add_prefix("10.244.0.0/24", "transport")
            assert old.test_run(frontend, "hv0") == XDP_PASS        # no socket, no hold: the kernel's
            old.hold(0.3)
            before = old.counters()
            assert old.test_run(frontend, "hv0") == XDP_DROP
            assert old.test_run(routed, "hv0") == XDP_PASS
            after = old.counters()
            assert after["STEER_DROP_HELD"] == before["STEER_DROP_HELD"] + 1
            assert after["STEER_REDIRECT_FAILED"] == before["STEER_REDIRECT_FAILED"] + 1   # the routed one
            time.sleep(0.4)
            assert old.test_run(frontend, "hv0") == XDP_PASS        # the hold ran out: fail-open again
            old.hold(30)
            old_id, old_mode, _ = xsk.attached_program("hv0")
        finally:
            old.release()
        assert xsk.attached_program("hv0") == (old_id, old_mode, "xskp_steer")   # still attached

        new = xsk.SteeringProgram()
        try:
            new.prepare("hv0", "transport")
            new.add_frontend(CLUSTER_IP, 80, "tcp", "transport")
            with xsk.Umem(frame_count=64, ring_size=32) as umem:
                sock = xsk.XskSocket(umem, "hv0", 0)
                new.bind_socket(sock)                               # before the program sees a packet
                assert new.attach("hv0") == old_mode
                new_id, mode, name = xsk.attached_program("hv0")
                assert new_id != old_id and (mode, name) == (old_mode, "xskp_steer")
                assert new.test_run(frontend, "hv0") == XDP_REDIRECT
                new.unbind_socket(sock)
                assert new.test_run(frontend, "hv0") == XDP_PASS    # the new one holds nothing
                sock.close()
        finally:
            new.close()
        assert xsk.attached_program("hv0")[0] == 0


def test_a_reply_of_a_kernel_nated_flow_in_the_snat_range_is_the_kernels(steering):
    """The kernel's masquerade (kube-proxy --random-fully) picked a port in the SNAT range: a
    reply to it, whose flow is in the kernel's conntrack, goes to the kernel (STEER_PASS_KERNEL_NAT);
    the same reply without that conntrack entry is steered as a SNAT reply."""
    import subprocess
    topo, program = steering
    entry = ["-p", "tcp", "-s", NODE, "-d", CLIENT, "--sport", "40600", "--dport", "443"]
    subprocess.run(["ip", "netns", "exec", topo.node, "conntrack", "-I", *entry, "--state", "ESTABLISHED",
                    "--timeout", "120", "-u", "ASSURED"], check=True, capture_output=True)
    try:
        with in_netns(topo.node):
            before = program.counters()
            assert program.test_run(_tcp(CLIENT, NODE, 443, 40600), "tr0") == XDP_PASS
            middle = program.counters()
            assert program.test_run(_tcp(CLIENT, NODE, 443, 40601), "tr0") == XDP_PASS  # no socket bound
            after = program.counters()
    finally:
        subprocess.run(["ip", "netns", "exec", topo.node, "conntrack", "-D", *entry], capture_output=True)
    assert {k for k in middle if middle[k] != before[k]} == {"STEER_PASS_KERNEL_NAT"}
    assert {k for k in after if after[k] != middle[k]} == {"STEER_REDIRECT_SNAT_REPLY", "STEER_REDIRECT_FAILED"}


def test_a_frame_on_a_queue_no_worker_serves_goes_to_the_kernel_and_is_counted():
    """XDP mode on a 2-queue interface served by 1 worker (queues: 1): a Service's frame arriving
    on queue 1 is the kernel's, counted as STEER_PASS_UNSERVED_QUEUE; on queue 0 it is steered."""
    from lab import Lab, forwarder_lab
    from dataplane import xsk
    with Lab(LAB_PREFIX + "q") as lab:
        topo = forwarder_lab(lab, queues=2)
        with in_netns(topo.node):
            program = xsk.SteeringProgram()
            try:
                program.prepare("tr0", "transport", queues=1)
                program.attach("tr0")
                program.add_frontend(CLUSTER_IP, 80, "tcp", ["transport"])
                runs = []
                for queue in (1, 0):
                    before = program.counters()
                    action = program.test_run(_tcp(CLIENT, CLUSTER_IP, 1234, 80), "tr0", queue=queue)
                    after = program.counters()
                    runs.append((action, {k for k in after if after[k] != before[k]}))
            finally:
                program.close()
    assert runs[0] == (XDP_PASS, {"STEER_PASS_UNSERVED_QUEUE"})
    assert runs[1] == (XDP_PASS, {"STEER_REDIRECT_FRONTEND", "STEER_REDIRECT_FAILED"})
