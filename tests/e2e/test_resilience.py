"""The agent's lifetime with real traffic: netfilter bypass and its absence when stopped, clean
SIGTERM, fail-open on kill -9, restart with live flows, proxyLoadBalancerIPs=false. Each test
leaves every agent running again."""
import json
import signal
import time

import pytest

from control.agent import read_conntrack
from lab import scenarios


def _node_ns_run(sl, node, *argv, check=True):
    return sl.lab.run(node.ns, list(argv), check=check)


def _forward_drop(sl, node, src, dst, action):
    _node_ns_run(sl, node, "iptables", action, "FORWARD", "-s", src, "-d", dst, "-j", "DROP")


def _forward_drop_packets(sl, node, src, dst):
    out = _node_ns_run(sl, node, "iptables", "-L", "FORWARD", "-v", "-x", "-n").stdout
    for line in out.splitlines():
        fields = line.split()
        if "DROP" in fields and src in fields and dst in fields:
            return int(fields[0])
    raise AssertionError(f"no FORWARD DROP rule {src} -> {dst} in\n{out}")


def _restart(sl, node, **agent_options):
    sl.agent_options = agent_options
    sl.start_agent(node)


def test_cross_node_pod_traffic_bypasses_netfilter_until_the_agent_stops(service_lab):
    """Pod -> remote Pod leaves no conntrack entry on either node and ignores a FORWARD DROP rule
    while the agents run; SIGTERM stops the agent (exit 0 within 2 s) and the rule applies."""
    sl = service_lab
    node0, node1 = sl.cluster.nodes
    pod, target = node0.pods[0], node1.pods[0]
    for node in (node0, node1):
        _forward_drop(sl, node, pod.iface.ip, target.iface.ip, "-I")
        _node_ns_run(sl, node, "conntrack", "-F", check=False)
    try:
        answers = sl.http_many(pod.ns, f"http://{target.iface.ip}:8080/", 3)
        assert answers == {(target.name, pod.iface.ip): 3}
        for node in (node0, node1):
            listed = _node_ns_run(sl, node, "conntrack", "-L", "-s", pod.iface.ip, "-d", target.iface.ip,
                                  check=False).stdout
            assert listed.strip() == "", f"{node.name} tracked the bypassed flow: {listed}"
            assert _forward_drop_packets(sl, node, pod.iface.ip, target.iface.ip) == 0

        started = time.monotonic()
        assert sl.stop_agent(node0, signal.SIGTERM, timeout=2.0) == 0
        assert time.monotonic() - started < 2.0
        assert "event=stopped" in sl.node_log(node0)
        assert sl.http(pod.ns, f"http://{target.iface.ip}:8080/", timeout=1) is None
        assert _forward_drop_packets(sl, node0, pod.iface.ip, target.iface.ip) > 0
    finally:
        for node in (node0, node1):
            _forward_drop(sl, node, pod.iface.ip, target.iface.ip, "-D")
        if node0.name not in sl.agents:
            _restart(sl, node0)


def test_kill_9_fails_open_to_the_kernel_path_within_a_second(service_lab):
    """New connections to a ClusterIP keep succeeding across kill -9 of the node's agent: the
    kernel's kube-proxy-style rules serve them, with no gap between successes of 1 s or more."""
    sl = service_lab
    node0 = sl.cluster.nodes[0]
    pod = node0.pods[0]
    loop = sl.start_client(pod.ns, "connect-loop", "10.96.0.10", 80, 5)
    try:
        time.sleep(2.0)
        proc = sl.agents.pop(node0.name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        attempts = sl.client_result(loop, 30)["attempts"]
    finally:
        _restart(sl, node0)
    successes = [t for t, pod in attempts if pod]
    assert len(successes) > 10 and successes[-1] > 4.0, attempts
    gaps = [b - a for a, b in zip(successes, successes[1:])]
    assert max(gaps) < 1.0, f"largest gap between successful connections {max(gaps):.3f}s"
    assert sl.http(pod.ns, "http://10.96.0.10/") is not None          # and the restarted agent serves


def _iperf(sl, ns, address, port, seconds):
    """An iperf3 client (rate-capped: on two cores it must leave room for the restart)."""
    return sl.lab.popen(ns, ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-i", "0.1",
                             "-b", "200M", "-J"])


def _iperf_result(proc, timeout):
    """(exit code, iperf3's error or None, longest stall in seconds, bytes received, retransmits)."""
    out, _ = proc.communicate(timeout=timeout)
    data = json.loads(out)
    stall = longest = 0.0
    for interval in data.get("intervals", []):
        step = interval["sum"]
        stall = stall + step["seconds"] if step["bytes"] == 0 else 0.0
        longest = max(longest, stall)
    end = data.get("end", {})
    return (proc.returncode, data.get("error"), round(longest, 2),
            end.get("sum_received", {}).get("bytes", 0), end.get("sum_sent", {}).get("retransmits"))


def test_restart_keeps_long_lived_connections(service_lab):
    """SIGTERM + start of the agent, as a DaemonSet upgrade does it (the handover): a long-lived
    TCP echo connection through a ClusterIP, an iperf3 stream through a ClusterIP from a Pod and
    one through a NodePort from the external client all survive without a reset, and the new
    agent adopts their flows. The largest gap of each is reported."""
    sl = service_lab
    node0 = sl.cluster.nodes[0]
    stream = sl.start_client(node0.pods[1].ns, "echo-stream", "10.96.0.20", 7000, 25)
    cluster_ip = _iperf(sl, node0.pods[0].ns, "10.96.0.21", 5201, 20)
    node_port = _iperf(sl, sl.cluster.client, node0.ip, 30522, 20)
    try:
        time.sleep(3.0)
        tracked = {f["dst"] for f in read_conntrack(f"{sl.workdir}/state-{node0.name}")
                   if f["state"] == "ESTABLISHED"}
        assert {"10.96.0.20:7000", "10.96.0.21:5201", f"{node0.ip}:30522"} <= tracked, \
            f"the agent does not carry every stream before the restart: {tracked}"
        assert sl.stop_agent(node0, signal.SIGTERM, timeout=2.0) == 0
        _restart(sl, node0)
        echo = sl.client_result(stream, 60)
        results = {"iperf3 ClusterIP": _iperf_result(cluster_ip, 60),
                   "iperf3 NodePort": _iperf_result(node_port, 60)}
    finally:
        if node0.name not in sl.agents:
            _restart(sl, node0)
    print(f"\nrestart gap: echo stream through a ClusterIP: largest gap between echoes "
          f"{echo['max_gap']:.3f}s, {echo['received']}/{echo['sent']} echoes")
    for name, (code, error, stall, received, retransmits) in results.items():
        print(f"restart gap: {name}: longest stall {stall:.1f}s, {received / 1e6:.0f} MB received, "
              f"{retransmits} retransmits, exit {code}")
    assert echo["error"] is None, echo
    assert echo["received"] >= echo["sent"] - 1, echo
    for name, (code, error, stall, received, _) in results.items():
        assert (code, error) == (0, None), name
        assert received > 0, name
    log = sl.node_log(node0)
    stopped = [line for line in log.splitlines() if "event=stopped" in line]
    assert "handover_seconds=10" in stopped[-1], "the agent did not hand over"
    assert "in_use={'ct': 0" not in log.split("event=stopped")[-1]


def test_proxy_load_balancer_ips_false_leaves_them_to_the_kernel(service_lab):
    """With proxyLoadBalancerIPs=false the LB IP is no frontend of the agent; the kernel's rules
    serve it (the frontend redirect counter does not move) and the ClusterIP stays proxied."""
    sl = service_lab
    node0 = sl.cluster.nodes[0]
    try:
        sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        _restart(sl, node0, proxyLoadBalancerIPs=False)
        described = json.dumps(json.load(open(f"{sl.workdir}/state-{node0.name}/services.json")))
        assert "10.97.0.1" not in described and "10.96.0.30" in described
        before = sl.agent_stats(node0)["steering"]["STEER_REDIRECT_FRONTEND"]
        answers = sl.http_many(sl.cluster.client, "http://10.97.0.1/", 4)
        assert None not in answers and all(a[0] in scenarios._pods_of(sl.cluster.nodes[1]) for a in answers)
        time.sleep(1.5)                                   # stats.json is written every second
        assert sl.agent_stats(node0)["steering"]["STEER_REDIRECT_FRONTEND"] == before
    finally:
        if node0.name in sl.agents:
            sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        _restart(sl, node0)
