"""The Service semantics corpus (tests/unit/corpus/service_semantics.yaml) with real packets: a lab
with the corpus' three nodes, Pod addresses and outside clients, one xskproxy agent on n1 (the
node under test) loaded with one case's objects at a time, and real TCP/UDP clients.

Builds, loads and measures; never asserts (tests/e2e/test_service_corpus_e2e.py judges). The
cases are read from the corpus file itself, never copied here.

Topology (addresses as the corpus' header states them):

    router (192.168.1.254; clients 203.0.113.7 "external", 198.18.0.9 "outsider")
      |  segment 192.168.1.0/24 (bridge)
    n1 .1 (agent) ---- n2 .2 (kernel only) ---- n3 .3 (kernel only)
      | gw0 10.1.0.1      | gw0 10.2.0.1          | gw0 10.3.0.1
    switch: pods (10.1.0.5, ...)  pods (10.2.0.5, ..., 10.2.0.200 "remote-pod")  pods (10.3.0.5, ...)
            pod 10.1.0.200 ("pod", also a backend in the hairpin case)

Each Pod namespace holds every backend address the cases give its node (one namespace standing
for several Pods) and serves every slice port on each address; an answer names the address and
port that answered ("10.2.0.5:8080"). What n1's kernel gets instead of xskproxy answers "kernel":
for each probe of the loaded case n1's nat PREROUTING redirects the probe's destination to a
sentinel on n1, so a probe left to the kernel is seen as such, never lost in routing.

Run as `python lab/corpus_lab.py serve|probe|wait-port ...` inside a namespace (the lab does).
"""
import copy
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)          # run as a script in the namespaces: stdlib imports only
CORPUS = os.path.join(REPO, "tests", "unit", "corpus", "service_semantics.yaml")

# the corpus' nodes: name -> (InternalIP, Pod CIDR, zone label); n1 is the node under test
NODES = {"n1": ("192.168.1.1", "10.1.0.0/24", "zone-a"),
         "n2": ("192.168.1.2", "10.2.0.0/24", "zone-b"),
         "n3": ("192.168.1.3", "10.3.0.0/24", "zone-a")}
SEGMENT_PREFIXLEN = 24
ROUTER = "192.168.1.254"
# the corpus' probe sources: name -> (address, namespace role)
SOURCES = {"pod": ("10.1.0.200", "n1pod"), "remote-pod": ("10.2.0.200", "n2pods"),
           "external": ("203.0.113.7", "router"), "outsider": ("198.18.0.9", "router")}
# what the router sends to n1: every frontend address family of the corpus (LB IPs, externalIPs,
# ClusterIPs, which the kernel must see when xskproxy leaves them)
ROUTED_VIA_N1 = ("203.0.113.0/24", "198.51.100.0/24", "10.96.0.0/16")
API_VERSIONS = {"Service": "v1", "Node": "v1", "EndpointSlice": "discovery.k8s.io/v1"}
SENTINEL_PORT = 9999             # n1's stand-in for the kernel path: answers "kernel"
KERNEL_ANSWER = "kernel"
MARKER_PORTS = (32600, 32999)    # healthCheckNodePort of the marker Service, one per load
MARKER_CLUSTER_IP = "10.96.255.254"


def load_corpus(path=CORPUS):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def probe_id(case, probe):
    """The corpus test's name for a probe: 'case:from->to'."""
    return f"{case['name']}:{probe['from']}->{probe['to']}"


def parse_destination(text):
    """'10.96.0.10:80/TCP' -> ('10.96.0.10', 80, 'TCP')."""
    address, rest = text.rsplit(":", 1)
    port, protocol = rest.split("/")
    return address, int(port), protocol


def node_of(address):
    """The corpus node whose Pod CIDR holds `address`, or None."""
    import ipaddress
    ip = ipaddress.ip_address(address)
    for name, (_, cidr, _) in NODES.items():
        if ip in ipaddress.ip_network(cidr):
            return name
    return None


def backend_addresses(cases):
    """{node name: sorted IPv4 endpoint addresses} of the cases' EndpointSlices, plus each Pod
    source's own address (the "pod" source is a backend in the hairpin case)."""
    out = {name: set() for name in NODES}
    for case in cases:
        for obj in case["objects"]:
            if obj["kind"] != "EndpointSlice" or obj.get("addressType") != "IPv4":
                continue
            for endpoint in obj.get("endpoints", []):
                node = node_of(endpoint["addresses"][0])
                if node:
                    out[node].add(endpoint["addresses"][0])
    for address, _ in SOURCES.values():
        if node_of(address):
            out[node_of(address)].add(address)
    return {name: sorted(addrs, key=lambda a: tuple(int(x) for x in a.split("."))) for name, addrs in out.items()}


def backend_ports(cases):
    """Sorted (port, protocol) of every numbered TCP/UDP slice port of the cases."""
    ports = set()
    for case in cases:
        for obj in case["objects"]:
            if obj["kind"] == "EndpointSlice":
                for p in obj.get("ports", []):
                    if p.get("port") and p.get("protocol", "TCP") in ("TCP", "UDP"):
                        ports.add((int(p["port"]), p.get("protocol", "TCP")))
    return sorted(ports)


def node_objects(labels_override=None):
    """The corpus' Nodes (n1..n3), with a case's `nodeLabels` replacing a node's labels."""
    out = []
    for name, (address, cidr, zone) in NODES.items():
        labels = (labels_override or {}).get(name, {"topology.kubernetes.io/zone": zone})
        out.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                    "spec": {"podCIDRs": [cidr]},
                    "status": {"addresses": [{"type": "InternalIP", "address": address},
                                             {"type": "Hostname", "address": name}]}})
    return out


def marker_service(port):
    """A Service that only says "this load is published": xskproxy serves its healthCheckNodePort
    once the publish holding it is complete (tables, steering), so a listener on `port` means the
    case loaded with it is in force."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"marker-{port}", "namespace": "corpus-e2e"},
            "spec": {"type": "LoadBalancer", "clusterIP": MARKER_CLUSTER_IP, "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": port, "ports": [{"name": "m", "protocol": "TCP", "port": 1}]}}


def case_manifest(case, marker_port):
    """One `kind: List` with the corpus' Nodes, the case's objects and the marker Service."""
    objects = [dict(o, apiVersion=o.get("apiVersion", API_VERSIONS[o["kind"]])) for o in case["objects"]]
    return {"apiVersion": "v1", "kind": "List",
            "items": node_objects(case.get("nodeLabels")) + objects + [marker_service(marker_port)]}


class CorpusLab:
    """The corpus' cluster in namespaces with n1's agent; load(case) then probe(...)."""

    def __init__(self, lab, cases, workdir):
        self.lab, self.workdir = lab, workdir
        self.manifest_dir = os.path.join(workdir, "manifests")
        os.makedirs(self.manifest_dir, exist_ok=True)
        self.addresses = backend_addresses(cases)
        self.ports = backend_ports(cases)
        self.ns = {}
        self.agent = None
        self._next_marker = MARKER_PORTS[0]
        self._build()

    # -- topology --------------------------------------------------------------------------
    def _build(self):
        lab = self.lab
        segment = lab.add_namespace("seg")
        lab.ip(segment, "link add br0 type bridge")
        lab.ip(segment, "link set br0 up")

        def attach(ns, port):
            lab.add_veth(ns, "tr0", segment, port)
            lab.ip(segment, f"link set dev {port} master br0")

        router = self.ns["router"] = lab.add_namespace("router")
        attach(router, "router")
        lab.add_address(router, "tr0", f"{ROUTER}/{SEGMENT_PREFIXLEN}")
        for address, role in SOURCES.values():
            if role == "router":
                lab.add_address(router, "lo", f"{address}/32")
        for dest in ROUTED_VIA_N1:
            lab.add_route(router, dest, via=NODES["n1"][0])
        for name, (address, cidr, _) in NODES.items():
            ns = self.ns[name] = lab.add_namespace(name)
            attach(ns, name)
            lab.add_address(ns, "tr0", f"{address}/{SEGMENT_PREFIXLEN}")
            gateway = cidr.replace(".0/24", ".1")
            lab.sysctl(ns, "net.ipv4.ip_forward", 1)
            if name == "n1":        # a switch, the Pods behind it, the "pod" source a Pod of its own
                switch = self.ns["n1sw"] = lab.add_namespace("n1sw")
                lab.ip(switch, "link add br0 type bridge")
                lab.ip(switch, "link set br0 up")
                lab.add_veth(ns, "gw0", switch, "gw")
                lab.ip(switch, "link set dev gw master br0")
                pod_address = SOURCES["pod"][0]
                groups = {"n1pods": [a for a in self.addresses[name] if a != pod_address],
                          "n1pod": [pod_address]}
                for i, (role, addrs) in enumerate(groups.items()):
                    pod = self.ns[role] = lab.add_namespace(role)
                    lab.add_veth(pod, "eth0", switch, f"p{i}")
                    lab.ip(switch, f"link set dev p{i} master br0")
                    self._pod_addresses(pod, addrs, gateway)
            else:                   # a node without an agent: its Pods straight behind gw0
                pod = self.ns[f"{name}pods"] = lab.add_namespace(f"{name}pods")
                lab.add_veth(ns, "gw0", pod, "eth0")
                self._pod_addresses(pod, self.addresses[name], gateway)
            lab.add_address(ns, "gw0", f"{gateway}/24")
        for name, (address, cidr, _) in NODES.items():
            for other, (other_address, other_cidr, _) in NODES.items():
                if other != name:
                    lab.add_route(self.ns[name], other_cidr, via=other_address, dev="tr0")
            lab.add_route(self.ns[name], "default", via=ROUTER)
        # Every client has spoken before its first probe, as Pods and routers have on a real node,
        # and n1 has spoken with each of its Pod addresses, as the kubelet's probes do before a Pod
        # is ready: the agent finds their neighbour entries instead of dropping the first packets
        # to a next hop it has never seen until the kernel resolved it (README, known limits).
        pings = [("n1pod", "10.1.0.1"), ("n1pods", "10.1.0.1"), ("n2pods", "10.2.0.1"),
                 ("n3pods", "10.3.0.1"), ("router", NODES["n1"][0])]
        pings += [("n1", address) for address in self.addresses["n1"]]
        for role, address in pings:
            if not lab.ping(self.ns[role], address):
                raise RuntimeError(f"{role} does not reach {address}")
        self._serve()

    def _pod_addresses(self, ns, addresses, gateway):
        for address in addresses:
            self.lab.add_address(ns, "eth0", f"{address}/24")
        self.lab.add_route(ns, "default", via=gateway)

    def _serve(self):
        ports = ",".join(f"{p}/{proto}" for p, proto in self.ports)
        for role in ("n1pods", "n1pod", "n2pods", "n3pods"):
            addrs = self.lab.run(self.ns[role], ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
            binds = ",".join(line.split()[3].split("/")[0] for line in addrs.splitlines())
            self.lab.popen(self.ns[role], [sys.executable, SCRIPT, "serve", binds, ports],
                           cwd=REPO, stdout=None, stderr=None)
        self.lab.popen(self.ns["n1"], [sys.executable, SCRIPT, "serve", "0.0.0.0",
                                       f"{SENTINEL_PORT}/TCP,{SENTINEL_PORT}/UDP", KERNEL_ANSWER],
                       cwd=REPO, stdout=None, stderr=None)
        for role in ("n1pods", "n1pod", "n2pods", "n3pods"):     # every server answers
            first = self.lab.run(self.ns[role], ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout.split()[3]
            tcp = next(port for port, protocol in self.ports if protocol == "TCP")
            self.wait_port(role, first.split("/")[0], tcp, timeout=20.0)
        self.wait_port("n1", NODES["n1"][0], SENTINEL_PORT, timeout=20.0)

    # -- the agent -------------------------------------------------------------------------
    def agent_config(self):
        return {"nodeName": "n1", "transportInterface": "tr0", "gatewayInterface": "gw0",
                "source": "files", "manifestPath": self.manifest_dir,
                "stateDir": os.path.join(self.workdir, "state-n1"),
                "tables": {"conntrackEntries": 1 << 16, "affinityEntries": 1 << 12},
                "antreaProxy": {"proxyAll": True, "proxyLoadBalancerIPs": True,
                                "defaultLoadBalancerMode": "nat"}}

    @property
    def log_path(self):
        return os.path.join(self.workdir, "n1.log")

    def start_agent(self, first_case, timeout=120.0):
        """Load `first_case`, start n1's agent and wait until that case is in force."""
        import yaml
        marker = self._write(first_case)
        path = os.path.join(self.workdir, "n1.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(self.agent_config(), f)
        log = open(self.log_path, "a")
        self.agent = self.lab.popen(self.ns["n1"], [sys.executable, "-m", "control.cli", "run", "--config", path],
                                    cwd=REPO, stdout=log, stderr=log)
        self._wait_marker(marker, timeout)

    def drop_counters(self):
        """{reason: frames} of the pipeline's XSKP_DROP_* counters now (the agent's metrics read
        the workers' counters at each scrape), summed over queues."""
        out = {}
        for sample, value in self.metrics("xskproxy_pipeline_packets_total{").items():
            counter = sample.split('counter="', 1)[1].split('"', 1)[0]       # "drop_no_backend"
            if counter.startswith("drop_"):
                reason = counter[len("drop_"):].upper()
                out[reason] = out.get(reason, 0) + int(value)
        return out

    # -- cases -----------------------------------------------------------------------------
    def _write(self, case):
        import yaml
        marker = self._next_marker
        self._next_marker += 1
        if self._next_marker > MARKER_PORTS[1]:
            self._next_marker = MARKER_PORTS[0]
        path = os.path.join(self.manifest_dir, "case.yaml")
        with open(path + ".tmp", "w") as f:
            yaml.safe_dump(case_manifest(case, marker), f)
        os.replace(path + ".tmp", path)
        return marker

    def _wait_marker(self, port, timeout):
        try:
            self.wait_port("n1", NODES["n1"][0], port, timeout=timeout)
        except TimeoutError as e:
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"n1's agent exited with {self.agent.returncode}: see {self.log_path}")
            last = (self.log_tail(1) or "nothing").strip()
            # a last line event=fast_path: the workers were still compiling (a cold numba cache)
            raise TimeoutError(f"{e}; the agent's last log line: {last}") from None

    def load(self, case, kernel_probes=(), timeout=15.0):
        """Put `case` in force on n1 (its objects replace the previous case's; returns once the
        agent's publish holding them is complete) and redirect the destinations of
        `kernel_probes` (probes, any expectation) to the kernel sentinel. Seconds it took."""
        started = time.monotonic()
        self.redirect_to_sentinel(kernel_probes)
        self._wait_marker(self._write(case), timeout)
        return round(time.monotonic() - started, 3)

    def redirect_to_sentinel(self, probes):
        """n1's nat table: each probe's destination (TCP/UDP) redirected to the sentinel."""
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]"]
        for address, port, protocol in sorted({parse_destination(p["to"]) for p in probes}):
            if protocol in ("TCP", "UDP"):
                lines.append(f"-A PREROUTING -d {address}/32 -p {protocol.lower()} --dport {port} "
                             f"-j REDIRECT --to-ports {SENTINEL_PORT}")
        lines.append("COMMIT")
        self.lab.run(self.ns["n1"], ["iptables-restore"], input="\n".join(lines) + "\n")

    def probe(self, source, destination, count, timeout):
        """`count` concurrent new connections (TCP) or exchanges (UDP) from the corpus source to
        'addr:port/PROTO': {"answers": the answer of each ("10.2.0.5:8080", "kernel") or what
        happened to it ("refused", "timeout", an errno name), "seconds": how long each took}."""
        address, role = SOURCES[source]
        dst, port, protocol = parse_destination(destination)
        proc = self.lab.run(self.ns[role], [sys.executable, SCRIPT, "probe", address, dst,
                                            str(port), protocol, str(count), str(timeout)],
                            timeout=timeout + 20)
        return json.loads(proc.stdout)

    def http_get(self, source, url, timeout=2.0):
        """(status, parsed JSON or text) of a GET from a corpus source's namespace and address;
        (None, error) when nothing answered."""
        from lab.kube_proxy_parity import http_get
        address, role = SOURCES[source]
        return http_get(self, self.ns[role], url, timeout, source_address=address)

    def metrics(self, prefix="kubeproxy_"):
        """{sample: value} of n1's agent's Prometheus metrics whose names start with `prefix`."""
        proc = self.lab.run(self.ns["n1"], ["curl", "-s", "-m", "3", "http://127.0.0.1:9847/metrics"],
                            check=False, timeout=10)
        out = {}
        for line in proc.stdout.splitlines():
            if line.startswith(prefix):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_port(self, role, address, port, timeout):
        """Until a TCP connect from namespace `role` to address:port succeeds."""
        proc = self.lab.run(self.ns[role], [sys.executable, SCRIPT, "wait-port", address,
                                            str(port), str(timeout)], check=False, timeout=timeout + 20)
        if proc.returncode != 0:
            raise TimeoutError(f"{address}:{port} did not accept from {role} within {timeout}s")

    def log_tail(self, lines=40):
        try:
            with open(self.log_path) as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def without_local_endpoints(case, node="n1", terminating=False):
    """A copy of `case` whose `node` endpoints are removed (terminating=True: kept, but ready
    false, serving and terminating, as a Pod being deleted)."""
    out = copy.deepcopy(case)
    for obj in out["objects"]:
        if obj["kind"] != "EndpointSlice":
            continue
        kept = []
        for endpoint in obj.get("endpoints", []):
            if endpoint.get("nodeName") != node:
                kept.append(endpoint)
            elif terminating:
                kept.append(dict(endpoint, conditions={"ready": False, "serving": True, "terminating": True}))
        obj["endpoints"] = kept
    return out


# -- the processes run inside the namespaces (python -m lab.corpus_lab ...) ------------------

def serve(binds, ports, name=None):
    """Answer every TCP connection and UDP datagram on each bind address x port with `name`, or
    with the address:port that received it; a TCP connection gets its line, then is closed once
    the client has closed (the client's side holds TIME_WAIT, so its ports are not reused)."""
    import selectors
    import socket
    sel = selectors.DefaultSelector()
    for address in binds:
        for port, protocol in ports:
            kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(256)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, ("listen" if kind == socket.SOCK_STREAM else "udp"))
    while True:
        for key, _ in sel.select():
            sock, role = key.fileobj, key.data
            try:
                if role == "listen":
                    conn, _ = sock.accept()
                    local = "%s:%d" % conn.getsockname()
                    conn.sendall(((name or local) + "\n").encode())
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                elif role == "udp":
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(((name or "%s:%d" % sock.getsockname()) + "\n").encode(), peer)
                elif not sock.recv(4096):
                    sel.unregister(sock)
                    sock.close()
            except OSError:
                if role == "conn":
                    sel.unregister(sock)
                    sock.close()


def probe(source, dst, port, protocol, count, timeout):
    """`count` concurrent connections (or UDP exchanges) from `source` to dst:port; answers and
    seconds, see CorpusLab.probe."""
    import errno
    import selectors
    import socket
    sel = selectors.DefaultSelector()
    results = [None] * count
    seconds = [timeout] * count
    buffers = [b""] * count
    socks = []
    for i in range(count):
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind((source, 0))
        sock.setblocking(False)
        socks.append(sock)
        if kind == socket.SOCK_STREAM:
            code = sock.connect_ex((dst, port))
            if code not in (0, errno.EINPROGRESS):
                results[i] = errno.errorcode.get(code, str(code))
                continue
            sel.register(sock, selectors.EVENT_WRITE, (i, "connect"))
        else:
            sock.connect((dst, port))
            sock.send(b"query %d" % i)
            sel.register(sock, selectors.EVENT_READ, (i, "read"))
    started = time.monotonic()
    deadline = started + timeout
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            i, stage = key.data
            sock = key.fileobj
            if stage == "connect":
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    results[i] = "refused" if code == errno.ECONNREFUSED else errno.errorcode.get(code, str(code))
                    seconds[i] = round(time.monotonic() - started, 3)
                    sel.unregister(sock)
                else:
                    sel.modify(sock, selectors.EVENT_READ, (i, "read"))
                continue
            try:
                data = sock.recv(4096)
            except OSError as e:
                data = None
                results[i] = "refused" if e.errno == errno.ECONNREFUSED else errno.errorcode.get(e.errno, str(e.errno))
            if data is not None:
                buffers[i] += data
                if b"\n" in buffers[i] or not data:
                    results[i] = buffers[i].decode(errors="replace").strip() or "closed"
            if results[i] is not None:
                seconds[i] = round(time.monotonic() - started, 3)
                sel.unregister(sock)
    for sock in socks:
        sock.close()                 # TCP: the client closes first and keeps TIME_WAIT
    return {"answers": [r if r is not None else "timeout" for r in results], "seconds": seconds}


def wait_port(address, port, timeout):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _ports(text):
    return [(int(p), proto) for p, proto in (item.split("/") for item in text.split(","))]


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "serve":
        serve(args[0].split(","), _ports(args[1]), args[2] if len(args) > 2 else None)
    elif command == "probe":
        print(json.dumps(probe(args[0], args[1], int(args[2]), args[3], int(args[4]), float(args[5]))))
    elif command == "wait-port":
        sys.exit(0 if wait_port(args[0], int(args[1]), float(args[2])) else 1)
    else:
        sys.exit(f"unknown command {command!r}")
