"""Scenarios around the agents' lifetime, with real traffic on a running ServiceLab: netfilter
bypass and its end at SIGTERM, fail-open on kill -9, restart without loss, endpoint churn under
load, proxyLoadBalancerIPs=false. tests/e2e asserts them and the demo prints them; each leaves
every agent running again with the lab's default options and manifests."""
import json
import re
import signal
import time

from control.agent import read_conntrack
from lab.scenarios import Result, _pods_of, iperf3_longest_stall

CHURN_SETTLE = 1.5    # seconds after a manifest write before new connections must follow it
CHURN_STREAMS = 6     # long-lived echo connections through the echo Service


class _Checks:
    """Collects named checks; the Result is ok when none failed and names those that did."""

    def __init__(self):
        self.failed = []

    def __call__(self, ok, what):
        if not ok:
            self.failed.append(what)
        return ok

    def result(self, name, summary):
        return Result(name, not self.failed, "; ".join(self.failed) if self.failed else summary)


def _restart(sl, node, **agent_options):
    sl.agent_options = agent_options
    sl.start_agent(node)


def _ensure_running(sl, node):
    if node.name not in sl.agents:
        _restart(sl, node)


def _forward_drop(sl, node, src, dst, action):
    sl.lab.run(node.ns, ["iptables", action, "FORWARD", "-s", src, "-d", dst, "-j", "DROP"])


def _forward_drop_packets(sl, node, src, dst):
    out = sl.lab.run(node.ns, ["iptables", "-L", "FORWARD", "-v", "-x", "-n"]).stdout
    for line in out.splitlines():
        fields = line.split()
        if "DROP" in fields and src in fields and dst in fields:
            return int(fields[0])
    raise RuntimeError(f"no FORWARD DROP rule {src} -> {dst} in\n{out}")


def netfilter_bypass(sl):
    """Pod -> remote Pod leaves no conntrack entry on either node and ignores a FORWARD DROP rule
    while the agents run; SIGTERM stops node0's agent (exit 0 within 2 s) and the rule applies."""
    check = _Checks()
    node0, node1 = sl.cluster.nodes[:2]
    pod, target = node0.pods[0], node1.pods[0]
    for node in (node0, node1):
        _forward_drop(sl, node, pod.iface.ip, target.iface.ip, "-I")
        sl.lab.run(node.ns, ["conntrack", "-F"], check=False)
    try:
        answers = sl.http_many(pod.ns, f"http://{target.iface.ip}:8080/", 3)
        check(answers == {(target.name, pod.iface.ip): 3}, f"Pod-to-Pod through xskproxy: {dict(answers)}")
        for node in (node0, node1):
            listed = sl.lab.run(node.ns, ["conntrack", "-L", "-s", pod.iface.ip, "-d", target.iface.ip],
                                check=False).stdout
            check(listed.strip() == "", f"{node.name} tracked the bypassed flow: {listed.strip()}")
            check(_forward_drop_packets(sl, node, pod.iface.ip, target.iface.ip) == 0,
                  f"{node.name}'s FORWARD DROP rule saw the bypassed flow")
        started = time.monotonic()
        code = sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        stop_seconds = time.monotonic() - started
        check(code == 0 and stop_seconds < 2.0, f"SIGTERM: exit {code} after {stop_seconds:.2f}s")
        check(sl.http(pod.ns, f"http://{target.iface.ip}:8080/", timeout=1) is None,
              "with the agent stopped the FORWARD DROP rule did not drop")
        check(_forward_drop_packets(sl, node0, pod.iface.ip, target.iface.ip) > 0,
              "with the agent stopped the FORWARD DROP rule counted nothing")
    finally:
        for node in (node0, node1):
            _forward_drop(sl, node, pod.iface.ip, target.iface.ip, "-D")
        _ensure_running(sl, node0)
    return check.result("netfilter bypass (no conntrack entry, FORWARD DROP ignored until SIGTERM)",
                        f"agent stopped in {stop_seconds:.2f}s, then the kernel's rule dropped")


def fail_open_on_kill(sl):
    """New connections to a ClusterIP keep succeeding across kill -9 of node0's agent: the
    kernel's kube-proxy-style rules take over with no gap between successes of 1 s or more."""
    check = _Checks()
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
        _ensure_running(sl, node0)
    successes = [t for t, pod_name in attempts if pod_name]
    gaps = [b - a for a, b in zip(successes, successes[1:])]
    check(len(successes) > 10 and successes[-1] > 4.0, f"{len(successes)} connections succeeded")
    check(max(gaps, default=9.9) < 1.0, f"largest gap between successful connections {max(gaps, default=0):.3f}s")
    check(sl.http(pod.ns, "http://10.96.0.10/") is not None, "the restarted agent does not serve")
    return check.result("fail-open on kill -9 (kernel path takes over)",
                        f"{len(successes)} connections, largest gap {max(gaps, default=0):.3f}s")


def _iperf(sl, ns, address, port, seconds):
    """An iperf3 client (rate-capped: on two cores it must leave room for the restart)."""
    return sl.lab.popen(ns, ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-i", "0.1",
                             "-b", "200M", "-J"])


def _iperf_result(proc, timeout):
    """{exit, error, stall (longest run of empty 0.1 s intervals), received, retransmits}."""
    out, _ = proc.communicate(timeout=timeout)
    data = json.loads(out) if out.strip() else {"error": "no output"}
    longest = iperf3_longest_stall(data)
    end = data.get("end", {})
    return {"exit": proc.returncode, "error": data.get("error"), "stall": round(longest, 2),
            "received": end.get("sum_received", {}).get("bytes", 0),
            "retransmits": end.get("sum_sent", {}).get("retransmits")}


def _restart_without_loss(sl, tier):
    """The handover checks of restart_without_loss with node0's agent carrying the streams on
    `tier`: "kernel" (flowOffload, the default) or "userspace" (flowOffload false)."""
    check = _Checks()
    node0 = sl.cluster.nodes[0]
    options = {} if tier == "kernel" else {"flowOffload": False}
    if options:
        sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        _restart(sl, node0, **options)
    try:
        stream = sl.start_client(node0.pods[1].ns, "echo-stream", "10.96.0.20", 7000, 25)
        iperfs = {"iperf3 ClusterIP": _iperf(sl, node0.pods[0].ns, "10.96.0.21", 5201, 20),
                  "iperf3 NodePort": _iperf(sl, sl.cluster.client, node0.ip, 30522, 20)}
        time.sleep(3.0)
        streams = {"10.96.0.20:7000", "10.96.0.21:5201", f"{node0.ip}:30522"}
        carried = {f["dst"]: f["tier"] for f in read_conntrack(f"{sl.workdir}/state-{node0.name}")
                   if f["state"] == "ESTABLISHED" and f["dst"] in streams}
        check(set(carried) == streams and set(carried.values()) == {tier},
              f"the agent does not carry every stream on the {tier} tier before the restart: {carried}")
        code = sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        check(code == 0, f"SIGTERM: exit {code}")
        _restart(sl, node0, **options)
        echo = sl.client_result(stream, 60)
        results = {name: _iperf_result(proc, 60) for name, proc in iperfs.items()}
    finally:
        if options and node0.name in sl.agents:
            sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
            _restart(sl, node0)
        _ensure_running(sl, node0)
    check(echo["error"] is None and echo["received"] >= echo["sent"] - 1, f"echo stream: {echo}")
    for name, r in results.items():
        check(r["exit"] == 0 and r["error"] is None and r["received"] > 0, f"{name}: {r}")
    log = sl.node_log(node0)
    stopped = [line for line in log.splitlines() if "event=stopped" in line]
    check(stopped and "handover_seconds=10" in stopped[-1], "the agent did not hand over")
    check("in_use={'ct': 0" not in log.split("event=stopped")[-1], "the new agent adopted no flow")
    gaps = [f"echo {echo['max_gap']:.1f}s"] + [f"{name.split()[1]} {r['stall']:.1f}s "
                                                f"({r['retransmits']} retransmits)" for name, r in results.items()]
    return check.result(f"restart without loss, streams on the {tier} tier (SIGTERM handover + start)",
                        f"no reset, no lost echo; longest gaps: {', '.join(gaps)}")


def restart_without_loss(sl):
    """SIGTERM + start of node0's agent, as a DaemonSet upgrade does it (the handover): a TCP echo
    connection through a ClusterIP, iperf3 through a ClusterIP from a Pod and through a NodePort
    from the external client, all carried by the kernel fast path, survive without a reset, and
    the new agent adopts their flows (and the fast path's flow table)."""
    return _restart_without_loss(sl, "kernel")


def restart_without_loss_userspace(sl):
    """The same handover with flowOffload false: the streams carried by the AF_XDP path survive
    without a reset and the new agent adopts their flows."""
    return _restart_without_loss(sl, "userspace")


UPCALL_PAIR_LINK = re.compile(r"^\d+: (xskp\d+[ku])[@:]", re.M)   # `ip -o link`: an upcall pair's end


def _bpf_ids(log):
    started = [line for line in log.splitlines() if "event=started" in line][-1]
    fields = dict(word.split("=", 1) for word in started.split() if "=" in word)
    return {"prog": [int(i) for i in fields["bpf_progs"].split(",")],
            "map": [int(i) for i in fields["bpf_maps"].split(",")]}


def sigint_removes_everything(sl):
    """SIGINT stops node0's agent and takes away what it added: the XDP programs, the tc fast
    path (its filter and the clsact qdisc the agent created), the upcall veth pairs, every BPF
    program and map it loaded (by kernel id, the fast path's flow table included); the kernel
    path serves the ClusterIP."""
    from dataplane.xsk import bpf_object_exists
    check = _Checks()
    node0 = sl.cluster.nodes[0]
    ids = _bpf_ids(sl.node_log(node0))
    upcall = UPCALL_PAIR_LINK.findall(sl.lab.run(node0.ns, ["ip", "-o", "link", "show"]).stdout)
    try:
        code = sl.stop_agent(node0, signal.SIGINT, timeout=3.0)
        check(code == 0, f"SIGINT: exit {code}")
        for ifname in ("tr0", "gw0"):
            link = sl.lab.run(node0.ns, ["ip", "-d", "link", "show", "dev", ifname]).stdout
            check("prog/xdp" not in link, f"{ifname} keeps an XDP program: {link}")
            qdiscs = sl.lab.run(node0.ns, ["tc", "qdisc", "show", "dev", ifname]).stdout
            check("clsact" not in qdiscs, f"{ifname} keeps the clsact qdisc: {qdiscs}")
        left_pairs = UPCALL_PAIR_LINK.findall(sl.lab.run(node0.ns, ["ip", "-o", "link", "show"]).stdout)
        check(not left_pairs, f"upcall pair ends left behind: {left_pairs} (of {upcall})")
        deadline = time.monotonic() + 3.0           # the kernel frees them after an RCU grace period
        left = ids
        while time.monotonic() < deadline:
            left = {kind: [i for i in found if bpf_object_exists(kind, i)] for kind, found in ids.items()}
            if not left["prog"] and not left["map"]:
                break
            time.sleep(0.1)
        check(not left["prog"] and not left["map"], f"BPF objects left behind: {left} of {ids}")
        check(sl.http(node0.pods[0].ns, "http://10.96.0.10/") is not None,
              "the kernel path does not serve the ClusterIP after SIGINT")
    finally:
        _ensure_running(sl, node0)
    return check.result("SIGINT removes everything the agent added",
                        f"{len(ids['prog'])} programs and {len(ids['map'])} maps gone, no XDP, no clsact, "
                        f"upcall pair ends {upcall} gone")


def _phase_pods(attempts, start, end):
    """Pods that answered the loop's connections started in [start + CHURN_SETTLE, end)."""
    return {pod for t, pod in attempts if start + CHURN_SETTLE <= t < end}


def endpoint_churn(sl):
    """Remove a backend, mark another terminating, add the first back, while echo connections and
    a loop of fresh HTTP connections run through node0's agent: every echo connection to a backend
    that was never removed keeps running without loss (terminating ones included); once a change
    is published no new connection goes to a removed or terminating backend, the re-added one
    serves again, and no connection of the loop fails."""
    check = _Checks()
    node0 = sl.cluster.nodes[0]
    pods = sl.cluster.pods
    client = node0.pods[1]
    streams = [sl.start_client(client.ns, "echo-stream", "10.96.0.20", 7000, 15) for _ in range(CHURN_STREAMS)]
    loop = sl.start_client(client.ns, "connect-loop", "10.96.0.10", 80, 14)
    t0 = time.monotonic()
    try:
        time.sleep(2.0)
        # this scenario's streams: established and busy (an earlier scenario's echo flow whose
        # close the agent did not see may still sit in conntrack, idle)
        flows = [f for f in read_conntrack(f"{sl.workdir}/state-{node0.name}", service="default/echo")
                 if f["state"] == "ESTABLISHED" and f["src"].startswith(client.iface.ip + ":")
                 and f["idle_seconds"] < 1.0]
        backend_of = {int(f["src"].split(":")[1]): f["translated_dst"].split(":")[0] for f in flows}
        by_ip = {pod.iface.ip: pod for pod in pods}
        used = [by_ip[ip].name for ip in backend_of.values()]
        # remove the backend fewest streams use; mark terminating the one most streams use
        removed = min(pods, key=lambda p: (used.count(p.name), p.name))
        terminating = max((p for p in pods if p is not removed), key=lambda p: (used.count(p.name), p.name))
        survivors = [p for p in pods if p is not removed]
        marks = {}
        for phase, kwargs in (("removed", {"backends": {"web": survivors, "echo": survivors}}),
                              ("terminating", {"backends": {"web": survivors, "echo": survivors},
                                               "terminating": [terminating.name]}),
                              ("re-added", {"terminating": [terminating.name]})):
            marks[phase] = time.monotonic() - t0
            sl.write_manifests(**kwargs)
            time.sleep(4.0)
        marks["end"] = time.monotonic() - t0
        echoes = [sl.client_result(s, 30) for s in streams]
        looped = sl.client_result(loop, 30)
        attempts = [(t + looped["t0"] - t0, pod) for t, pod in looped["attempts"]]     # on our clock
    finally:
        sl.write_manifests()
    check(len(backend_of) == CHURN_STREAMS, f"conntrack shows {len(backend_of)} of {CHURN_STREAMS} echo flows")
    kept = 0
    for echo in echoes:
        backend = by_ip.get(backend_of.get(echo["local_port"]))
        if backend is None or backend is removed:
            continue            # a flow to a removed backend re-balances: not asserted
        kept += 1
        check(echo["error"] is None and echo["received"] >= echo["sent"] - 1 and echo["max_gap"] < 1.0,
              f"echo connection to {backend.name}: {echo}")
    failed = [round(t, 2) for t, pod in attempts if pod is None]
    check(not failed, f"connections of the loop failed at {failed[:5]} s (changes at "
                      f"{ {k: round(v, 2) for k, v in marks.items()} } s)")
    check(removed.name in {pod for t, pod in attempts if t < marks["removed"]}, f"{removed.name} never served before")
    check(removed.name not in _phase_pods(attempts, marks["removed"], marks["re-added"]),
          f"new connections went to the removed {removed.name}")
    check(terminating.name not in _phase_pods(attempts, marks["terminating"], marks["end"]),
          f"new connections went to the terminating {terminating.name}")
    check(removed.name in _phase_pods(attempts, marks["re-added"], marks["end"]),
          f"the re-added {removed.name} got no new connection")
    return check.result("endpoint churn under load (remove, terminating, re-add)",
                        f"{kept} echo connections to surviving backends unbroken, {len(attempts)} "
                        f"new connections none failed; removed {removed.name}, terminating {terminating.name}")


def proxy_load_balancer_ips_false(sl):
    """With proxyLoadBalancerIPs=false the LB IP is no frontend of the agent: the kernel's rules
    serve it (the frontend redirect counter does not move) and the ClusterIP stays proxied."""
    check = _Checks()
    node0 = sl.cluster.nodes[0]
    try:
        sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        _restart(sl, node0, proxyLoadBalancerIPs=False)
        with open(f"{sl.workdir}/state-{node0.name}/services.json") as f:
            described = f.read()
        check("10.97.0.1" not in described and "10.96.0.30" in described,
              "services.json: the LB IP is a frontend, or the ClusterIP is not")
        before = sl.agent_stats(node0)["steering"]["STEER_REDIRECT_FRONTEND"]
        answers = sl.http_many(sl.cluster.client, "http://10.97.0.1/", 4)
        check(None not in answers and all(a[0] in _pods_of(sl.cluster.nodes[1]) for a in answers),
              f"LB IP through the kernel: {dict(answers)}")
        time.sleep(1.5)                                   # stats.json is written every second
        check(sl.agent_stats(node0)["steering"]["STEER_REDIRECT_FRONTEND"] == before,
              "the agent redirected LB IP traffic")
    finally:
        if node0.name in sl.agents:
            sl.stop_agent(node0, signal.SIGTERM, timeout=2.0)
        _restart(sl, node0)
    return check.result("proxyLoadBalancerIPs=false leaves LB IPs to the kernel",
                        "served by the kernel's rules, no frontend redirect")


SCENARIOS = [netfilter_bypass, fail_open_on_kill, restart_without_loss,
             restart_without_loss_userspace, sigint_removes_everything, endpoint_churn,
             proxy_load_balancer_ips_false]
