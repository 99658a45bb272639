"""The Service scenarios of the demo and of tests/e2e, run with real clients in a cluster lab.

`ServiceLab` builds a cluster_lab with real servers in every Pod, the bundled manifests, the
kube-proxy-style kernel rules (the fail-open path) and one `xskproxy run` per node. Each
scenario is a function (ServiceLab) -> Result; the demo prints them as a table, the e2e tests
assert them one by one. Nothing here asserts speed.
"""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import yaml

from lab import cluster_services as svc
from lab.netns import cluster_lab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ANSWER = re.compile(r"pod=(\S+) client=([\d.]+):(\d+)")


@dataclass
class Result:
    name: str
    ok: bool
    detail: str


# agent options (ServiceLab.agent_options) that are top-level config keys; the rest are
# antreaProxy keys
TOP_LEVEL_OPTIONS = {"flowOffload", "xdpMode", "handoverSeconds", "queues", "snatPortRange"}


class ServiceLab:
    """A cluster lab with Services, servers, kernel fallback rules and (optionally) agents."""

    def __init__(self, lab, nodes=2, pods_per_node=2, workdir=None, pod_features=None,
                 client_features=None, agent_options=None, gateway="veth", mtu=None, queues=1):
        self.lab = lab
        self.workdir = workdir or tempfile.mkdtemp(prefix="xskproxy-lab-")
        self.cluster = cluster_lab(lab, nodes=nodes, pods_per_node=pods_per_node,
                                   pod_features=pod_features, client_features=client_features,
                                   gateway=gateway, mtu=mtu, queues=queues)
        self.agent_options = agent_options or {}
        self.agent_command = [sys.executable, "-m", "control.cli"]   # a wrapper may go first (setpriv)
        self.agents = {}
        self.manifest_dir = os.path.join(self.workdir, "manifests")
        os.makedirs(self.manifest_dir, exist_ok=True)
        self.write_manifests()
        node0 = self.cluster.nodes[0]
        lab.add_route(self.cluster.client, svc.LB_NET, via=node0.ip)
        for node in self.cluster.nodes:
            lab.run(node.ns, ["iptables-restore"], input=svc.kernel_service_rules(self.cluster, node))
        for pod in self.cluster.pods:
            for kind, port in (("http", svc.HTTP_PORT), ("udp", svc.UDP_PORT), ("tcp-echo", svc.TCP_ECHO_PORT)):
                lab.popen(pod.ns, [sys.executable, "-m", "lab.servers", kind, port, pod.name], cwd=REPO,
                          stdout=None, stderr=None)
            for port in svc.IPERF_PORTS:
                lab.popen(pod.ns, ["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        self.wait_for_servers()

    # -- manifests and agents ------------------------------------------------------------------
    def write_manifests(self, **kwargs):
        """(Re)write the bundled manifests; running agents reload them."""
        path = os.path.join(self.manifest_dir, "lab.yaml")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(svc.lab_manifest(self.cluster, **kwargs), f)
        os.replace(tmp, path)

    def agent_config(self, node):
        options = {"proxyAll": True, "skipServices": ["default/skipped"], "proxyLoadBalancerIPs": True,
                   "defaultLoadBalancerMode": "nat"}
        top = {k: v for k, v in self.agent_options.items() if k in TOP_LEVEL_OPTIONS}
        options.update({k: v for k, v in self.agent_options.items() if k not in TOP_LEVEL_OPTIONS})
        return {"nodeName": node.name, "transportInterface": node.transport.name,
                "gatewayInterface": node.gateway.name, "source": "files",
                "manifestPath": self.manifest_dir,
                "stateDir": os.path.join(self.workdir, f"state-{node.name}"),
                "tables": {"conntrackEntries": 1 << 16, "affinityEntries": 1 << 12},
                "antreaProxy": options, **top}

    def start_agent(self, node, wait=True):
        path = os.path.join(self.workdir, f"{node.name}.yaml")
        try:
            os.unlink(self.stats_path(node))          # a previous agent's: wait for the new one's
        except FileNotFoundError:
            pass
        with open(path, "w") as f:
            yaml.safe_dump(self.agent_config(node), f)
        log = open(os.path.join(self.workdir, f"{node.name}.log"), "a")
        proc = self.lab.popen(node.ns, [*self.agent_command, "run", "--config", path],
                              cwd=REPO, stdout=log, stderr=log)
        self.agents[node.name] = proc
        if wait:
            self.wait_for_agent(node)
        return proc

    def start_agents(self):
        for node in self.cluster.nodes:
            self.start_agent(node, wait=False)
        for node in self.cluster.nodes:
            self.wait_for_agent(node)

    def stats_path(self, node):
        return os.path.join(self.workdir, f"state-{node.name}", "stats.json")

    def wait_for_agent(self, node, timeout=120.0):
        """Until the agent published its first generation (stats.json says so) or died."""
        deadline = time.monotonic() + timeout
        proc = self.agents[node.name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"agent on {node.name} exited with {proc.returncode}: "
                                   f"see {self.workdir}/{node.name}.log")
            stats = self.agent_stats(node)
            if stats and stats.get("generation", 0) > 0:
                return stats
            time.sleep(0.2)
        raise TimeoutError(f"agent on {node.name} did not publish within {timeout}s")

    def agent_stats(self, node):
        try:
            with open(self.stats_path(node)) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def stop_agent(self, node, sig=signal.SIGTERM, timeout=5.0):
        proc = self.agents.pop(node.name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
        return proc.returncode

    def node_log(self, node):
        with open(os.path.join(self.workdir, f"{node.name}.log")) as f:
            return f.read()

    # -- clients -----------------------------------------------------------------------------
    def wait_for_servers(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        for pod in self.cluster.pods:
            while self.http(pod.ns, f"http://{pod.iface.ip}:{svc.HTTP_PORT}/") is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server in {pod.name} did not start")
                time.sleep(0.2)

    def http(self, ns, url, timeout=3):
        """(pod, client ip) that answered a GET from `ns`, or None."""
        proc = self.lab.run(ns, ["curl", "-s", "-m", str(timeout), url], check=False, timeout=timeout + 5)
        m = _ANSWER.search(proc.stdout)
        return (m.group(1), m.group(2)) if m else None

    def http_many(self, ns, url, count):
        """Counter of (pod, client ip) over `count` fresh connections; None for failures."""
        return collections.Counter(self.http(ns, url) for _ in range(count))

    def start_client(self, ns, kind, address, port, seconds):
        """A lab.clients measuring client (connect-loop, echo-stream) running in `ns`."""
        return self.lab.popen(ns, [sys.executable, "-m", "lab.clients", kind, address, str(port), str(seconds)],
                              cwd=REPO)

    @staticmethod
    def client_result(proc, timeout):
        """The JSON line a start_client() client printed when it finished."""
        out, err = proc.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        if not lines:
            raise RuntimeError(f"client printed nothing (exit {proc.returncode}): {err.strip()}")
        return json.loads(lines[-1])

    def udp(self, ns, address, port, payload="ping", timeout=2):
        script = ("import socket,sys;s=socket.socket(2,2);s.settimeout(%r);"
                  "s.sendto(sys.argv[3].encode(),(sys.argv[1],int(sys.argv[2])));"
                  "print(s.recvfrom(65535)[0].decode())" % timeout)
        proc = self.lab.run(ns, [sys.executable, "-c", script, address, port, payload], check=False,
                            timeout=timeout + 5)
        m = _ANSWER.search(proc.stdout)
        return (m.group(1), m.group(2)) if m else None


# -- scenarios ---------------------------------------------------------------------------------
def _pods_of(node):
    return {p.name for p in node.pods}


def clusterip_tcp(sl):
    """A Pod reaches a ClusterIP over TCP and is served by local and remote backends."""
    pod = sl.cluster.nodes[0].pods[0]
    answers = sl.http_many(pod.ns, "http://10.96.0.10/", 16)
    served = {a[0] for a in answers if a}
    ok = None not in answers and served & _pods_of(sl.cluster.nodes[0]) and served & _pods_of(sl.cluster.nodes[1])
    return Result("ClusterIP TCP, local and remote backends", bool(ok), f"served by {sorted(served)}, "
                  f"failures {answers[None]}")


def clusterip_udp(sl):
    """A Pod reaches a ClusterIP over UDP; remote backends see the Pod's own address (no SNAT)."""
    pod = sl.cluster.nodes[0].pods[0]
    local = _pods_of(sl.cluster.nodes[0])
    answers = collections.Counter()
    # each query's source port picks its backend: with half of them local, 12 local answers in a
    # row come once in ~10^4 runs (one CI run failed so); after 12, ask on (up to 48) until a
    # remote backend or a failure has answered
    for i in range(48):
        if i >= 12 and (None in answers or any(a[0] not in local for a in answers)):
            break
        answers[sl.udp(pod.ns, "10.96.0.53", 53, f"q{i}")] += 1
    remote = [a for a in answers if a and a[0] not in local]
    ok = None not in answers and remote and all(a[1] == pod.iface.ip for a in remote)
    return Result("ClusterIP UDP", bool(ok), f"{dict(answers)}")


def nodeport_cluster(sl):
    """An external client reaches a NodePort (ETP Cluster); remote backends see the node's address (SNAT)."""
    node0 = sl.cluster.nodes[0]
    answers = sl.http_many(sl.cluster.client, f"http://{node0.ip}:30080/", 16)
    remote = [a for a in answers if a and a[0] not in _pods_of(node0)]
    ok = None not in answers and remote and all(a[1] == node0.ip for a in remote)
    return Result("NodePort, externalTrafficPolicy Cluster (SNAT)", bool(ok), f"{dict(answers)}")


def nodeport_local(sl):
    """A NodePort with ETP Local is served only by the node's own Pods and sees the client's address."""
    node0 = sl.cluster.nodes[0]
    answers = sl.http_many(sl.cluster.client, f"http://{node0.ip}:30081/", 12)
    ok = None not in answers and all(a[0] in _pods_of(node0) and a[1] == sl.cluster.client_if.ip for a in answers)
    return Result("NodePort, externalTrafficPolicy Local (client IP kept)", ok, f"{dict(answers)}")


def load_balancer_nat(sl):
    """A LoadBalancer IP (nat mode) on node0 is served by node1's Pods."""
    answers = sl.http_many(sl.cluster.client, "http://10.97.0.1/", 8)
    ok = None not in answers and all(a[0] in _pods_of(sl.cluster.nodes[1]) for a in answers)
    return Result("LoadBalancer IP, nat mode", ok, f"{dict(answers)}")


def load_balancer_dsr(sl):
    """A LoadBalancer IP in dsr mode: the backend sees the client's address (no SNAT)."""
    answers = sl.http_many(sl.cluster.client, "http://10.97.0.2/", 8)
    ok = None not in answers and all(a[1] == sl.cluster.client_if.ip for a in answers)
    return Result("LoadBalancer IP, dsr mode (client IP kept)", ok, f"{dict(answers)}")


def external_ip(sl):
    """An externalIP is served by the Service's backends."""
    answers = sl.http_many(sl.cluster.client, "http://10.97.0.3/", 8)
    ok = None not in answers and all(a[0] in _pods_of(sl.cluster.nodes[1]) for a in answers)
    return Result("externalIP", ok, f"{dict(answers)}")


def session_affinity(sl):
    """With ClientIP affinity every connection of one client lands on the same backend."""
    pod = sl.cluster.nodes[0].pods[1]
    answers = sl.http_many(pod.ns, "http://10.96.0.11/", 12)
    ok = None not in answers and len({a[0] for a in answers}) == 1
    return Result("session affinity ClientIP", ok, f"{dict(answers)}")


def hairpin(sl):
    """A Pod reaches itself through a Service whose only backend it is."""
    pod = sl.cluster.pods[0]
    answers = sl.http_many(pod.ns, "http://10.96.0.40/", 4)
    ok = None not in answers and all(a[0] == pod.name for a in answers)
    return Result("hairpin", ok, f"{dict(answers)}")


def skipped_service(sl):
    """A Service in skipServices is still served, by the kernel's rules."""
    pod = sl.cluster.nodes[0].pods[0]
    answers = sl.http_many(pod.ns, "http://10.96.0.50/", 4)
    return Result("skipServices left to the kernel", None not in answers, f"{dict(answers)}")


SCENARIOS = [clusterip_tcp, clusterip_udp, nodeport_cluster, nodeport_local, load_balancer_nat,
             load_balancer_dsr, external_ip, session_affinity, hairpin, skipped_service]


def run_scenarios(sl, scenarios=SCENARIOS, keep_going=True, report=print):
    """Run each scenario on `sl` and report its row; [Result]. A scenario that fails or raises is a
    FAIL row and the next one runs (keep_going=False: stop at the first failure). Before each
    scenario, an agent a previous one left stopped or dead is started again (and said so), so
    that one failure does not fail the rows after it for a reason of its own."""
    results = []
    for scenario in scenarios:
        for node in sl.cluster.nodes:
            proc = sl.agents.get(node.name)
            if proc is not None and proc.poll() is None:
                continue
            sl.agents.pop(node.name, None)
            report(f"  ({node.name}'s agent was not running: starting it before {scenario.__name__})")
            try:
                sl.start_agent(node)
            except Exception as e:  # the scenario then fails on its own and says why
                report(f"  ({node.name}'s agent did not start: {e})")
        try:
            result = scenario(sl)
        except Exception as e:  # a broken scenario is a failed row, not a crashed demo
            result = Result(scenario.__name__, False, f"error: {type(e).__name__}: {e}")
        report(f"  {'PASS' if result.ok else 'FAIL'}  {result.name}: {result.detail}")
        results.append(result)
        if not result.ok and not keep_going:
            break
    return results


# -- bulk transfers (tests/e2e/test_offload_labs.py) -------------------------------------------
# Services with one chosen backend each, so that a transfer's path is known in advance; they
# live in their own manifest file next to lab.yaml and have no kernel fallback rules.
BULK_MANIFEST = "bulk.yaml"
BULK_LB_IP = "10.97.0.10"          # in svc.LB_NET: the client routes it via node0
BULK_BODY_BYTES = 4 << 20          # what a bulk curl fetches (lab.servers' /bytes/N)


def bulk_services(cluster):
    """[(Service, EndpointSlice)] of the bulk transfers: iperf3 (5201) and HTTP (80) to one Pod.

    bulk-local / bulk-remote: ClusterIPs served by node0-pod1 / node1-pod0; bulk-np-local /
    bulk-np-remote: the same backends behind NodePorts (iperf3, HTTP) 30601, 30602 / 30611, 30612;
    bulk-dsr: LoadBalancer BULK_LB_IP in dsr mode, served by node1-pod0."""
    node0, node1 = cluster.nodes[:2]
    local, remote = node0.pods[1], node1.pods[0]
    iperf_port = svc.IPERF_PORTS[0]
    targets = [{"name": "iperf", "protocol": "TCP", "port": iperf_port},
               {"name": "http", "protocol": "TCP", "port": svc.HTTP_PORT}]

    def ports(node_ports=(None, None)):
        return [svc._port("iperf", "TCP", iperf_port, iperf_port, node_ports[0]),
                svc._port("http", "TCP", 80, svc.HTTP_PORT, node_ports[1])]

    table = [
        (svc._svc("bulk-local", ports(), "10.96.2.1"), local),
        (svc._svc("bulk-remote", ports(), "10.96.2.2"), remote),
        (svc._svc("bulk-np-local", ports((30601, 30602)), "10.96.2.3", "NodePort"), local),
        (svc._svc("bulk-np-remote", ports((30611, 30612)), "10.96.2.4", "NodePort"), remote),
        (svc._svc("bulk-dsr", ports(), "10.96.2.5", "LoadBalancer", lb_ips=[BULK_LB_IP],
                  annotations={"service.antrea.io/load-balancer-mode": "dsr"}), remote),
    ]
    return [(service, svc._slice(service["metadata"]["name"], [pod], targets)) for service, pod in table]


def _write_extra_manifest(sl, name, pairs):
    """Write [(Service, EndpointSlice)] as a List to the agents' manifest file `name`, next to lab.yaml."""
    path = os.path.join(sl.manifest_dir, name)
    items = [obj for pair in pairs for obj in pair]
    with open(path + ".tmp", "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
    os.replace(path + ".tmp", path)


def write_bulk_manifest(sl):
    """Add the bulk Services (bulk_services) to the agents' manifests, next to lab.yaml."""
    _write_extra_manifest(sl, BULK_MANIFEST, bulk_services(sl.cluster))


# -- SCTP with crafted frames (tests/e2e/test_sctp.py) ------------------------------------------
# This kernel has no SCTP sockets: lab.sctp_peer speaks an association's first two packets
# over raw sockets. The Service lives in its own manifest file, without kernel fallback rules.
SCTP_MANIFEST = "sctp.yaml"
SCTP_CLUSTER_IP = "10.96.3.1"
SCTP_PORT = 3868                   # Diameter's, Service port and targetPort
SCTP_NODE_PORT = 30868


def sctp_services(cluster):
    """[(Service, EndpointSlice)]: sctp-diameter, ClusterIP SCTP_CLUSTER_IP:3868 and NodePort
    30868, served by node1-pod0:3868 alone (remote from node0: a NodePort flow there is SNATed)."""
    backend = cluster.nodes[1].pods[0]
    service = svc._svc("sctp-diameter", [svc._port("diameter", "SCTP", SCTP_PORT, SCTP_PORT, SCTP_NODE_PORT)],
                       SCTP_CLUSTER_IP, "NodePort")
    target = [{"name": "diameter", "protocol": "SCTP", "port": SCTP_PORT}]
    return [(service, svc._slice("sctp-diameter", [backend], target))]


def write_sctp_manifest(sl):
    """Add the SCTP Service (sctp_services) to the agents' manifests, next to lab.yaml."""
    _write_extra_manifest(sl, SCTP_MANIFEST, sctp_services(sl.cluster))


def sctp_exchange(sl, client_ns, address, port, source_port, seconds=8.0):
    """An INIT from client_ns to address:port, answered by lab.sctp_peer serving in the backend
    Pod: ({what the client sent and got back}, [what the backend received, per INIT])."""
    backend = sl.cluster.nodes[1].pods[0]
    server = sl.lab.popen(backend.ns, [sys.executable, "-m", "lab.sctp_peer", "serve", str(SCTP_PORT),
                                       str(seconds + 2)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        if json.loads(server.stdout.readline() or "{}").get("ready") is not True:
            raise RuntimeError("lab.sctp_peer serve did not start")
        proc = sl.lab.run(client_ns, [sys.executable, "-m", "lab.sctp_peer", "call", address, str(port),
                                      str(source_port), str(seconds)], check=False, timeout=seconds + 10)
        called = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    finally:
        out = sl.lab.stop(server).stdout or ""
    received = [json.loads(line)["received"] for line in out.splitlines() if '"received"' in line]
    return called, received


def iperf3_longest_stall(data):
    """The longest run of seconds in which an iperf3 -J report's intervals moved no byte."""
    stall = longest = 0.0
    for interval in data.get("intervals", []):
        step = interval["sum"]
        stall = stall + step["seconds"] if step["bytes"] == 0 else 0.0
        longest = max(longest, stall)
    return longest


def iperf3(sl, ns, address, port, seconds=3, reverse=False):
    """Run an iperf3 client in `ns` (unlimited rate; reverse: the server sends) and wait.

    Returns {exit, error, bits_per_second and bytes (receiver side), retransmits, stall (longest
    run of empty 0.5 s intervals)}; a client that hangs is killed and reported as an error."""
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-i", "0.5", "-J",
            "--connect-timeout", "3000"] + (["-R"] if reverse else [])
    try:
        proc = sl.lab.run(ns, argv, check=False, timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        return {"exit": None, "error": f"no result within {seconds + 20}s", "bits_per_second": 0.0,
                "bytes": 0, "retransmits": None, "stall": float(seconds)}
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = {"error": f"no JSON (exit {proc.returncode}): {proc.stderr.strip()[:200]}"}
    longest = iperf3_longest_stall(data)
    end = data.get("end", {})
    received = end.get("sum_received", {})
    return {"exit": proc.returncode, "error": data.get("error"),
            "bits_per_second": float(received.get("bits_per_second", 0.0)),
            "bytes": int(received.get("bytes", 0)),
            "retransmits": end.get("sum_sent", {}).get("retransmits"), "stall": round(longest, 2)}


def http_fetch(sl, ns, url, timeout=5):
    """GET `url` with curl from `ns`: {exit, code (HTTP status, 0 without one), bytes, bits_per_second}."""
    proc = sl.lab.run(ns, ["curl", "-s", "-o", "/dev/null", "-m", str(timeout), "-w",
                           "%{http_code} %{size_download} %{speed_download}", url],
                      check=False, timeout=timeout + 5)
    try:
        code, size, speed = (float(word) for word in proc.stdout.split())
    except ValueError:              # curl printed nothing (killed) or something else
        code = size = speed = 0.0
    return {"exit": proc.returncode, "code": int(code), "bytes": int(size), "bits_per_second": 8 * speed}


def agent_stats_after(sl, node, moment, timeout=5.0):
    """node's agent's stats.json once it was written after `moment` (time.time()); it is
    rewritten every second."""
    deadline = time.monotonic() + timeout
    path = sl.stats_path(node)
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_mtime > moment:
                stats = sl.agent_stats(node)
                if stats is not None:
                    return stats
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"agent on {node.name} wrote no stats.json within {timeout}s after the mark")


def carried_by_agent(sl, node, moment=None):
    """How many packets `node`'s agent forwarded on every path it owns, from its stats.json
    (with `moment`: as written after that time.time()). Today that is the AF_XDP pipeline's
    frames transmitted on the transport and the gateway, summed over queues, plus the packets
    its kernel fast path rewrote or routed (FAST_FLOW, FAST_BYPASS). A packet here may be a GSO
    super-frame: count at most 64 KB of payload per packet when comparing with bytes moved."""
    stats = agent_stats_after(sl, node, moment) if moment is not None else sl.agent_stats(node)
    return carried_by_tier(stats)["userspace"] + carried_by_tier(stats)["kernel"]


def carried_by_tier(stats):
    """{"userspace": frames the AF_XDP pipeline transmitted, "kernel": packets the tc fast path
    forwarded} from an agent's stats."""
    return {"userspace": sum(queue["pipeline"].get(name, 0) for queue in stats["queues"].values()
                             for name in ("XSKP_CNT_TX_TRANSPORT", "XSKP_CNT_TX_GATEWAY")),
            "kernel": sum(stats.get("steering", {}).get(name, 0) for name in ("FAST_FLOW", "FAST_BYPASS"))}


def socket_drops(sl, node, moment=None):
    """{interface: frames its AF_XDP sockets dropped} (rx_dropped: e.g. a frame over a UMEM chunk)."""
    stats = agent_stats_after(sl, node, moment) if moment is not None else sl.agent_stats(node)
    drops = collections.Counter()
    for queue in stats["queues"].values():
        for ifname, sock in queue["sockets"].items():
            drops[ifname] += int(sock.get("rx_dropped", 0))
    return dict(drops)
