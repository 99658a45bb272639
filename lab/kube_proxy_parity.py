"""Lab scenarios for what kube-proxy does besides forwarding (issue 14): the healthCheckNodePort
and node health servers answering over real sockets, and a UDP DNS backend (dnsmasq) replaced
while `dig` loops query its ClusterIP, measuring each query's wait and which backend answered.

Every scenario takes a running ServiceLab (lab.scenarios) and writes its own manifest file next
to the lab's (parity.yaml); each returns a dict of what it measured and never asserts.
"""
import datetime
import json
import os
import signal
import threading
import time

import yaml

HEALTH_CHECK_NODE_PORT = 32100
LB_LOCAL_NODE_PORT = 30090
LB_LOCAL_IP = "10.97.0.9"               # inside lab.cluster_services.LB_NET
DNS_CLUSTER_IP = "10.96.0.54"
DNSMASQ_PORT = 5354                     # the Pods' UDP echo server has 5353
NODE_HEALTH_PORT = 10256
DIG_SOURCE_PORT = 53000                 # the fixed-port loop: every query the same 5-tuple
QUERY_NAME = "who.test"


def _now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _slice(service, pods, port, trigger_time=None):
    meta = {"name": f"{service}-h14", "namespace": "default", "labels": {"kubernetes.io/service-name": service}}
    if trigger_time:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger_time}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": meta, "ports": [port],
            "endpoints": [{"addresses": [p.iface.ip], "nodeName": p.name.split("-")[0],
                           "conditions": {"ready": True, "serving": True, "terminating": False}}
                          for p in pods]}


def parity_manifest(lb_local_pods, dns_pods, trigger_time=None):
    """A LoadBalancer Service with externalTrafficPolicy Local and a healthCheckNodePort, and a
    ClusterIP DNS Service on dnsmasq, with the given backends."""
    http = {"name": "http", "protocol": "TCP", "port": 8080}
    dns = {"name": "dns", "protocol": "UDP", "port": DNSMASQ_PORT}
    lb_local = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb-local", "namespace": "default"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.33", "externalTrafficPolicy": "Local",
                         "healthCheckNodePort": HEALTH_CHECK_NODE_PORT,
                         "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080,
                                    "nodePort": LB_LOCAL_NODE_PORT}]},
                "status": {"loadBalancer": {"ingress": [{"ip": LB_LOCAL_IP}]}}}
    kube_dns = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns-h14", "namespace": "default"},
                "spec": {"type": "ClusterIP", "clusterIP": DNS_CLUSTER_IP,
                         "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": DNSMASQ_PORT}]}}
    items = [lb_local, _slice("lb-local", lb_local_pods, http, trigger_time),
             kube_dns, _slice("kube-dns-h14", dns_pods, dns, trigger_time)]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def write_parity_manifest(sl, lb_local_pods, dns_pods):
    """(Re)write parity.yaml beside the lab's manifests; returns the trigger time it carries (Unix)."""
    stamp = _now_rfc3339()
    path = os.path.join(sl.manifest_dir, "parity.yaml")
    with open(path + ".tmp", "w") as f:
        yaml.safe_dump(parity_manifest(lb_local_pods, dns_pods, stamp), f)
    os.replace(path + ".tmp", path)
    return datetime.datetime.fromisoformat(stamp).timestamp()


# -- health-check node ports and node health -------------------------------------------------

def http_get(sl, ns, url, timeout=2, source_address=None):
    """(status, parsed JSON body or text) of a GET from `ns` (from `source_address` if given);
    (None, error) when nothing answered. sl: anything with a `lab`."""
    source = ["--interface", source_address] if source_address else []
    proc = sl.lab.run(ns, ["curl", "-s", *source, "-m", str(timeout), "-w", "\n%{http_code}", url], check=False,
                      timeout=timeout + 5)
    body, _, code = proc.stdout.rpartition("\n")
    if not code.isdigit() or code == "000":
        return None, proc.stderr.strip() or "no answer"
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code), body


def health_checks(sl):
    """What an external load balancer probing every node sees: the healthCheckNodePort on each
    node's address (200 where lb-local has endpoints, 503 elsewhere) and /healthz, /livez."""
    out = {}
    for node in sl.cluster.nodes:
        status, body = http_get(sl, sl.cluster.client, f"http://{node.ip}:{HEALTH_CHECK_NODE_PORT}/")
        out[node.name] = {"health_check_node_port": (status, body)}
        for path in ("/healthz", "/livez"):
            out[node.name][path] = http_get(sl, sl.cluster.client, f"http://{node.ip}:{NODE_HEALTH_PORT}{path}")
    return out


def health_check_flip(sl, lb_local_pods, want, timeout=10.0):
    """Move lb-local's endpoints to `lb_local_pods` and poll every node's healthCheckNodePort
    until each answers as `want` ({node name: status}); the seconds from the manifest write to
    the first answer of each node with its wanted status ({node name: seconds or None})."""
    written = time.time()
    write_parity_manifest(sl, lb_local_pods, [])
    flipped = {name: None for name in want}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and None in flipped.values():
        for node in sl.cluster.nodes:
            if node.name in want and flipped[node.name] is None:
                status, _ = http_get(sl, sl.cluster.client, f"http://{node.ip}:{HEALTH_CHECK_NODE_PORT}/",
                                     timeout=1)
                if status == want[node.name]:
                    flipped[node.name] = round(time.time() - written, 3)
        time.sleep(0.05)
    return flipped


# -- a DNS backend replaced under a dig loop ---------------------------------------------------

def start_dnsmasq(sl, pod, answer):
    """dnsmasq in `pod` on DNSMASQ_PORT answering QUERY_NAME with `answer` (who answered)."""
    return sl.lab.popen(pod.ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                                 "--no-hosts", "--user=root", "--pid-file=", f"--port={DNSMASQ_PORT}",
                                 f"--listen-address={pod.iface.ip}", "--bind-interfaces",
                                 f"--address=/{QUERY_NAME}/{answer}"])


def wait_for_dnsmasq(sl, pod, answer, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dig(sl, pod.ns, pod.iface.ip, port=DNSMASQ_PORT)[0] == answer:
            return
        time.sleep(0.1)
    raise TimeoutError(f"dnsmasq in {pod.name} does not answer")


def dig(sl, ns, server, port=53, source=None):
    """(answer or None, seconds waited) of one `dig +time=1 +tries=2` (one retry at most) from `ns`."""
    argv = ["dig", f"@{server}", "-p", str(port), QUERY_NAME, "A", "+short", "+time=1", "+tries=2"]
    if source:
        argv += ["-b", source]
    started = time.monotonic()
    proc = sl.lab.run(ns, argv, check=False, timeout=10)
    waited = time.monotonic() - started
    answer = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
    return (answer if answer and not answer.startswith(";") else None), waited


class DigLoop:
    """A thread running dig against the DNS ClusterIP every `interval` s from a Pod, recording
    (start, answer, seconds waited) per query; fixed_port: every query from DIG_SOURCE_PORT."""

    def __init__(self, sl, pod, fixed_port, interval=0.1):
        self.sl, self.pod, self.interval = sl, pod, interval
        self.source = f"{pod.iface.ip}#{DIG_SOURCE_PORT}" if fixed_port else None
        self.queries = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            started = time.time()
            answer, waited = dig(self.sl, self.pod.ns, DNS_CLUSTER_IP, source=self.source)
            self.queries.append((started, answer, waited))
            self._stop.wait(max(0.0, self.interval - waited))

    def stop(self):
        self._stop.set()
        self._thread.join(15)
        return self.queries


def summarize(queries, answers_of, since=None):
    """Counts of a DigLoop's queries (from Unix time `since`): total, failed (no answer within the
    retry), retried (waited over the first 1 s timeout), the longest wait, answers per backend."""
    chosen = [q for q in queries if since is None or q[0] >= since]
    waits = [w for _, _, w in chosen]
    by_backend = {}
    for _, answer, _ in chosen:
        name = answers_of.get(answer, "none" if answer is None else answer)
        by_backend[name] = by_backend.get(name, 0) + 1
    return {"queries": len(chosen), "failed": sum(1 for _, a, _ in chosen if a is None),
            "retried": sum(1 for w in waits if w > 1.0), "longest_wait_s": round(max(waits, default=0.0), 3),
            "answered_by": by_backend}


def first_answer_from(queries, answer, since):
    """Seconds from `since` (Unix) to the start of the first query answered with `answer`."""
    for started, got, waited in queries:
        if started >= since and got == answer:
            return round(started + waited - since, 3)
    return None


def dns_backend_replacement(sl, settle=2.0):
    """Replace a ClusterIP DNS Service's backend twice while two dig loops (one with a fixed
    source port, the 5-tuple a stale UDP flow keeps; one with a new port per query) run from a
    Pod on node0, every 100 ms:

    1. graceful: the EndpointSlice moves from X to Y while X still answers; measured: the time
       from the slice's trigger time to the first answer from Y (network programming latency);
    2. crash: Y's dnsmasq is killed (SIGKILL) and the slice moves to Z in the same instant;
       measured: queries that failed (no answer within dig's one retry), that needed the retry,
       and the longest wait.

    X, Y: node1's Pods (remote), Z: node0's second Pod (local). Returns the measurements."""
    node0, node1 = sl.cluster.nodes[0], sl.cluster.nodes[1]
    client, x, y, z = node0.pods[0], node1.pods[0], node1.pods[1], node0.pods[1]
    answers = {x.name: "10.9.9.1", y.name: "10.9.9.2", z.name: "10.9.9.3"}
    names = {v: k for k, v in answers.items()}
    procs = {p.name: start_dnsmasq(sl, p, answers[p.name]) for p in (x, y, z)}
    for p in (x, y, z):
        wait_for_dnsmasq(sl, p, answers[p.name])
    write_parity_manifest(sl, [], [x])
    deadline = time.monotonic() + 15
    while dig(sl, client.ns, DNS_CLUSTER_IP)[0] != answers[x.name]:
        if time.monotonic() > deadline:
            raise TimeoutError("the DNS ClusterIP does not answer from X")
        time.sleep(0.2)
    loops = {"fixed_port": DigLoop(sl, client, fixed_port=True).start(),
             "new_port_each": DigLoop(sl, client, fixed_port=False).start()}
    time.sleep(settle)
    graceful_at = write_parity_manifest(sl, [], [y])
    time.sleep(settle + 1.0)
    z_neighbour = sl.lab.run(node0.ns, ["ip", "neigh", "show", z.iface.ip], check=False).stdout.strip()
    crash_at = time.time()
    os.killpg(procs[y.name].pid, signal.SIGKILL)
    write_parity_manifest(sl, [], [z])
    time.sleep(settle + 3.0)
    queries = {name: loop.stop() for name, loop in loops.items()}
    result = {}
    for name, qs in queries.items():
        result[name] = {
            "before": summarize([q for q in qs if q[0] < graceful_at], names),
            "graceful": dict(summarize([q for q in qs if graceful_at <= q[0] < crash_at], names),
                             programming_s=first_answer_from(qs, answers[y.name], graceful_at)),
            "crash": dict(summarize(qs, names, since=crash_at),
                          first_answer_from_new_s=first_answer_from(qs, answers[z.name], crash_at),
                          timeline=[(round(t - crash_at, 3), names.get(a, a), round(w, 3))
                                    for t, a, w in qs if crash_at - 0.5 <= t < crash_at + 4]),
        }
    result["new_backend_neighbour_at_crash"] = z_neighbour or "none"
    for proc in procs.values():
        sl.lab.stop(proc)
    return result


def agent_metrics(sl, node, prefix="kubeproxy_"):
    """{sample line name with labels: value} of the agent's Prometheus metrics starting with `prefix`."""
    proc = sl.lab.run(node.ns, ["curl", "-s", "-m", "3", "http://127.0.0.1:9847/metrics"], check=False, timeout=10)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def detach_xdp_programs(sl, node):
    """Detach every XDP program in `node`'s namespace behind the agent's back; the device names."""
    links = json.loads(sl.lab.run(node.ns, ["ip", "-j", "-d", "link", "show"]).stdout)
    detached = []
    for link in links:
        if "xdp" not in link:
            continue
        for mode in ("xdpdrv", "xdpgeneric"):
            sl.lab.run(node.ns, ["ip", "link", "set", "dev", link["ifname"], mode, "off"], check=False)
        detached.append(link["ifname"])
    return detached


def wait_for_healthz(sl, node, want_status, timeout=10.0):
    """Poll `node`'s /healthz from the client until it answers `want_status`: (seconds, body),
    or (None, the last answer)."""
    started = time.monotonic()
    answer = None
    while time.monotonic() - started < timeout:
        status, answer = http_get(sl, sl.cluster.client, f"http://{node.ip}:{NODE_HEALTH_PORT}/healthz", timeout=1)
        if status == want_status:
            return round(time.monotonic() - started, 3), answer
        time.sleep(0.1)
    return None, answer
