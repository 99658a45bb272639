"""`python -m dataplane.forwarder` on the forwarder lab (root): it carries real TCP and UDP
between client and Pod with the node's kernel forwarding switched off, leaves what it does not
steer to the kernel, fails open when killed, and fails setting up with one clear line."""
import os
import signal
import subprocess
import sys
import time

import pytest

from xsk_test_support import (LAB_PREFIX, OFFLOADS_OFF, REPO, ForwarderProcess, forwarder_argv,
                              iperf3_tcp, needs_native, needs_root, udp_exchange, xdp_program_id)

pytestmark = [needs_root, needs_native]


@pytest.fixture(scope="module")
def topo():
    from lab import Lab, forwarder_lab
    with Lab(LAB_PREFIX) as lab:
        yield forwarder_lab(lab, ip_forward=False, client_features=OFFLOADS_OFF, pod_features=OFFLOADS_OFF)


@pytest.fixture
def stats_file(tmp_path):
    return str(tmp_path / "forwarder-stats.json")


def _nothing_attached(topo):
    return xdp_program_id(topo.lab, topo.node, "tr0") == 0 and xdp_program_id(topo.lab, topo.node, "gw0") == 0


def _assert_udp_delivered(lab, src_ns, dst_ns, dst_ip, count, port):
    """Every datagram reaches the receiver, except those its veth dropped on a full per-CPU
    backlog (shared with every namespace on the machine: a benchmark flooding the same CPU makes
    them); those are counted as the receiving interface's rx_dropped."""
    dropped_before = lab.link_stats(dst_ns, "eth0")["rx_dropped"]
    received = udp_exchange(lab, src_ns, dst_ns, dst_ip, count, port=port)
    dropped = lab.link_stats(dst_ns, "eth0")["rx_dropped"] - dropped_before
    assert received + dropped >= count and received >= 0.9 * count, (received, dropped)


def test_tcp_and_udp_cross_the_forwarder_with_kernel_forwarding_off(topo, stats_file):
    """With ip_forward=0 on the node, UDP and TCP between client and Pod pass (only the
    forwarder can carry them); the worker's and sockets' counters account for the frames, a
    clean stop exits 0 and detaches."""
    lab = topo.lab
    assert lab.read_sysctl(topo.node, "net.ipv4.ip_forward") == "0"
    assert not lab.ping(topo.client, topo.pod_if.ip, timeout=0.3)
    fwd = ForwarderProcess(lab, topo, stats_file)
    try:
        assert lab.ping(topo.client, topo.pod_if.ip, count=3, timeout=1.0)
        before = fwd.stats(settle=0.3)
        _assert_udp_delivered(lab, topo.client, topo.pods, topo.pod_if.ip, 300, port=5001)
        _assert_udp_delivered(lab, topo.pods, topo.client, topo.client_if.ip, 100, port=5003)
        after = fwd.stats()
        tr, gw = "tr0", "gw0"
        assert after["worker"][tr]["rx_frames"] - before["worker"][tr]["rx_frames"] >= 300
        assert after["worker"][gw]["tx_frames"] - before["worker"][gw]["tx_frames"] >= 300
        assert after["worker"][gw]["rx_frames"] - before["worker"][gw]["rx_frames"] >= 100
        assert after["worker"][tr]["tx_frames"] - before["worker"][tr]["tx_frames"] >= 100
        assert after["steering"]["STEER_REDIRECT_PREFIX"] - before["steering"]["STEER_REDIRECT_PREFIX"] >= 400
        received, retransmits = iperf3_tcp(lab, topo.client, topo.pods, topo.pod_if.ip, seconds=2)
        assert received > 10_000_000, "TCP through the forwarder carried less than 10 MB in 2 s"
        final_code, final, _ = fwd.stop()
    finally:
        fwd.stop()
    assert final_code == 0
    for ifname in ("tr0", "gw0"):
        w, s = final["worker"][ifname], final["sockets"][ifname]
        assert w["tx_completed"] == w["tx_frames"] and w["tx_kick_errors"] == 0 and w["dropped"] == 0
        assert s["rx_dropped"] == 0 and s["rx_ring_full"] == 0
    assert final["pipeline"]["XSKP_CNT_TX_GATEWAY"] == final["worker"]["gw0"]["tx_frames"]
    assert _nothing_attached(topo)


def test_traffic_it_does_not_steer_still_reaches_the_node_kernel(topo, stats_file):
    """While the forwarder runs, a ping to the node's address and a TCP connection to a port on
    the node are answered by the node's kernel (counted as not matched), not forwarded."""
    lab = topo.lab
    server = lab.popen(topo.node, [sys.executable, "-c",
                                   "import socket; s = socket.create_server(('0.0.0.0', 8022)); "
                                   "c, _ = s.accept(); c.sendall(b'node-kernel'); c.close()"])
    time.sleep(0.3)
    fwd = ForwarderProcess(lab, topo, stats_file)
    try:
        assert lab.ping(topo.client, topo.transport.ip, count=3, timeout=1.0)
        assert lab.ping(topo.pods, topo.gateway.ip, count=3, timeout=1.0)
        reply = lab.run(topo.client, [sys.executable, "-c",
                                      "import socket; c = socket.create_connection(('%s', 8022), timeout=3); "
                                      "print(c.recv(64).decode())" % topo.transport.ip]).stdout.strip()
        assert reply == "node-kernel"
        stats = fwd.stats()
        assert stats["steering"]["STEER_PASS_NO_MATCH"] >= 3
        assert stats["worker"]["tr0"]["rx_frames"] == 0 and stats["worker"]["gw0"]["rx_frames"] == 0
    finally:
        fwd.stop()
        lab.stop(server)


def test_a_steered_port_on_the_node_is_taken_from_the_kernel(topo, stats_file):
    """--steer-port tcp:8023 redirects connections to the node's 8023 into the forwarder (the
    kernel's listener never sees them), while other ports stay with the kernel."""
    lab = topo.lab
    fwd = ForwarderProcess(lab, topo, stats_file, "--steer-port", "tcp:8023")
    try:
        probe = lab.run(topo.client, [sys.executable, "-c",
                                      "import socket\ntry:\n socket.create_connection(('%s', 8023), timeout=1)\n"
                                      " print('connected')\nexcept OSError as e:\n print('failed')" % topo.transport.ip],
                        check=False).stdout.strip()
        assert probe == "failed"  # the SYN went to the forwarder (and on to the Pod side), not to the kernel
        assert fwd.stats()["steering"]["STEER_REDIRECT_FRONTEND"] >= 1
    finally:
        fwd.stop()


def test_after_kill_9_the_kernel_forwards_within_a_second_and_a_restart_reattaches(topo, stats_file):
    """kill -9 leaves the program attached but fail-open: with ip_forward=1 the kernel carries the
    traffic again within 1 s; the next start replaces the stale program and forwards."""
    lab = topo.lab
    lab.sysctl(topo.node, "net.ipv4.ip_forward", 1)
    try:
        fwd = ForwarderProcess(lab, topo, stats_file)
        assert lab.ping(topo.client, topo.pod_if.ip, count=3, timeout=1.0)
        assert fwd.stats(settle=0.3)["worker"]["tr0"]["rx_frames"] >= 1
        os.kill(fwd.pid, signal.SIGKILL)
        fwd.proc.wait(5)
        killed_at = time.monotonic()
        while not lab.ping(topo.client, topo.pod_if.ip, timeout=0.2):
            assert time.monotonic() - killed_at < 1.0, "the kernel did not take over within 1 s"
        assert xdp_program_id(lab, topo.node, "tr0") != 0  # still attached, passing everything
        os.remove(stats_file)
        restarted = ForwarderProcess(lab, topo, stats_file)
        try:
            assert lab.ping(topo.client, topo.pod_if.ip, count=3, timeout=1.0)
            assert restarted.stats()["worker"]["tr0"]["rx_frames"] >= 1
        finally:
            code, _, _ = restarted.stop()
        assert code == 0 and _nothing_attached(topo)
    finally:
        lab.sysctl(topo.node, "net.ipv4.ip_forward", 0)




def _forwarder_exec(topo, prefix=(), env=(), extra=()):
    argv = list(prefix) + ["env", *[f"{k}={v}" for k, v in env], *forwarder_argv(topo, *extra)]
    return subprocess.run(["ip", "netns", "exec", topo.node, *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def _assert_one_line_failure(proc, *words):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("forwarder: error: ")
    for word in words:
        assert word in lines[0], lines[0]


def test_a_missing_interface_fails_with_one_line_and_attaches_nothing(topo):
    """--transport naming no interface: one line naming it, exit 1, no program left anywhere."""
    argv = forwarder_argv(topo)
    argv[argv.index("tr0")] = "nosuch0"
    proc = subprocess.run(["ip", "netns", "exec", topo.node, *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    _assert_one_line_failure(proc, "nosuch0", "no such interface")
    assert _nothing_attached(topo)


def test_a_queue_already_bound_fails_with_one_line_and_leaves_the_first_running(topo, stats_file):
    """A second forwarder on the same queues: one line saying the queue is busy, exit 1; the first
    keeps its program attached and keeps forwarding."""
    lab = topo.lab
    first = ForwarderProcess(lab, topo, stats_file)
    try:
        second = _forwarder_exec(topo)
        _assert_one_line_failure(second, "queue 0", "busy")
        assert lab.ping(topo.client, topo.pod_if.ip, count=3, timeout=1.0)
    finally:
        code, _, _ = first.stop()
    assert code == 0 and _nothing_attached(topo)


def test_missing_privileges_fail_with_one_line(topo):
    """Root without capabilities (bounding set emptied with setpriv): one line saying to run as
    root, exit 1, nothing attached."""
    proc = _forwarder_exec(topo, prefix=["setpriv", "--bounding-set=-all", "--inh-caps=-all"])
    _assert_one_line_failure(proc, "run as root")
    assert _nothing_attached(topo)


def test_a_missing_bpf_object_fails_with_one_line(topo):
    """No XDP program object (the native build or its package missing): one line saying how to
    build it, exit 1, nothing attached."""
    proc = _forwarder_exec(topo, env=[("XSKPROXY_BPF_OBJ", "/nonexistent/xskproxy_steer.bpf.o")])
    _assert_one_line_failure(proc, "/nonexistent/xskproxy_steer.bpf.o", "make native")
    assert _nothing_attached(topo)


def test_a_missing_libxdp_fails_with_one_line(topo):
    """libxdp hidden (as if Debian's libxdp1 were not installed; a private mount namespace bind-
    mounts an empty file over it): one line naming the package, exit 1, nothing attached."""
    library = os.path.realpath("/usr/lib/x86_64-linux-gnu/libxdp.so.1")
    if not os.path.exists(library):
        pytest.skip(f"libxdp is not at {library} on this machine")
    hide = f"mount --bind /dev/null {library} && exec \"$@\""
    proc = _forwarder_exec(topo, prefix=["unshare", "--mount", "sh", "-c", hide, "hide-libxdp"])
    _assert_one_line_failure(proc, "libxdp1")
    assert _nothing_attached(topo)


def test_the_c_reference_forwarder_forwards_and_detaches(topo):
    """build/native/xskfwd_c (the benchmarks' C path) carries a ping with ip_forward=0, then stops
    on SIGTERM with exit 0 and detaches."""
    lab = topo.lab
    binary = os.path.join(REPO, "build", "native", "xskfwd_c")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not built: run `make native`")
    argv = [binary, "--transport", "tr0", "--gateway", "gw0", "--transport-peer-mac", topo.client_if.mac,
            "--gateway-peer-mac", topo.pod_if.mac, "--poll",
            "--steer-prefix", f"{topo.pod_if.network}@transport", "--steer-prefix", f"{topo.gateway.ip}/32@transport",
            "--steer-prefix", f"{topo.client_if.network}@gateway", "--steer-prefix", f"{topo.transport.ip}/32@gateway"]
    proc = lab.popen(topo.node, argv)
    try:
        deadline = time.monotonic() + 10
        while not lab.ping(topo.client, topo.pod_if.ip, timeout=0.3):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no ping through xskfwd_c"
    finally:
        result = lab.stop(proc, timeout=5)
    assert result.returncode == 0, result.stderr
    assert "tr0 rx=" in result.stdout
    assert _nothing_attached(topo)


MANY_FLOWS_SOURCE = r"""
import socket, sys, time
address, port, flows, per_flow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
for i in range(per_flow):
    for s in socks:
        s.sendto(b"many-flows", (address, port))
    time.sleep(0.002)
"""


def test_two_queues_get_a_worker_each_and_every_frame_is_accounted(tmp_path):
    """--queue 0 --queue 1 on two-queue veths: flows spread over both queues, each queue's worker
    forwards its share, and every datagram reaches the Pod."""
    from lab import Lab, forwarder_lab
    from xsk_test_support import UDP_SINK, _read_line
    with Lab(LAB_PREFIX) as lab:
        topo = forwarder_lab(lab, queues=2, ip_forward=False, client_features=OFFLOADS_OFF,
                             pod_features=OFFLOADS_OFF)
        fwd = ForwarderProcess(lab, topo, str(tmp_path / "stats.json"), "--queue", "0", "--queue", "1")
        try:
            assert "queues=0,1" in fwd.ready_line
            sink = lab.popen(topo.pods, [sys.executable, "-c", UDP_SINK, "5004", "640", "10"])
            assert _read_line(sink, 10) == "listening"
            lab.run(topo.client, [sys.executable, "-c", MANY_FLOWS_SOURCE, topo.pod_if.ip, "5004", "32", "20"])
            assert _read_line(sink, 15) == "640"
            stats = fwd.stats()
            per_queue = [stats["queues"][q]["tr0"]["rx_frames"] for q in ("0", "1")]
            assert min(per_queue) > 0, per_queue
            assert stats["worker"]["gw0"]["tx_frames"] >= 640
        finally:
            code, _, _ = fwd.stop()
        assert code == 0
