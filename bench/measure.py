"""One benchmark lab and one measurement: generator on the generator core, path on the path core,
forwarded packets counted at the sink (or round trips, requests and connections that completed through
the path), CPU time per packet (or per transaction) from /proc/stat deltas.

Never asserts a speed; it reports what it saw, including what the generator offered.
"""
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass

from lab import Lab, forwarder_lab
from lab.netns import BRIDGE_POD_PORT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAFFICGEN = os.environ.get("XSKP_TRAFFICGEN") or os.path.join(REPO, "build", "bench", "xskp-trafficgen")
BENCH_SOURCE_NET = "198.18.0.0/15"   # RFC 2544 benchmark range: the generator's source addresses
BENCH_SOURCE_FIRST = "198.18.0.1"
TCP_SERVER_PORT = 5201
# Cross-node Pod-to-Pod (issue 12, must-show 4): the client namespace also holds a Pod of another node
# (PEER_POD_IP in PEER_POD_CIDR, that node's podCIDR, routed via the client by the rows that need it);
# its server port is no Service's backend port, so that no path treats the flow as a Service's
PEER_POD_CIDR = "10.244.1.0/24"
PEER_POD_IP = "10.244.1.2"
POD_TO_POD_PORT = 5301
GATEWAYS = ("veth", "bridge")   # the node's gateway: a veth to the Pod, or a Linux bridge with the Pod's veth
XDP_ATTACH_MODES = {1: "native", 2: "skb", 3: "hw", 4: "multi"}   # `ip -j -d link`'s xdp.mode


@dataclass
class Workload:
    """What the client sends: 64-byte UDP frames from the generator, TCP bulk from iperf3, or TCP
    request/response through the Service (sockperf ping-pong, HTTP from wrk or ab to nginx)."""
    key: str
    name: str
    proto: str = "udp"         # "udp": xskp-trafficgen; "tcp": `tool`
    tool: str = "trafficgen"   # trafficgen, iperf3, or one of REQUEST_RESPONSE_UNITS
    new_flows: bool = False    # udp: every frame a new 5-tuple; ab: every request a new connection
    flows: int = 256           # udp established: 5-tuples cycled over
    streams: int = 1           # iperf3: parallel streams
    connections: int = 16      # wrk, ab: concurrent connections
    offloads: bool = True      # tcp: checksum/segmentation offloads of client and Pod as veth defaults them
    every_service_count: bool = True   # False: run at the smallest N only (established connections skip the rules)
    pod_to_pod: bool = False   # tcp: from PEER_POD_IP (a Pod of another node) to the Pod's own address

    @property
    def server_port(self):
        """The Pod's TCP server port for this workload."""
        return POD_TO_POD_PORT if self.pod_to_pod else TCP_SERVER_PORT

    @property
    def bulk_tcp(self):
        """iperf3 towards the path's usual target (a Service or the Pod), not Pod-to-Pod."""
        return self.tool == "iperf3" and not self.pod_to_pod

    @property
    def unit(self):
        if self.proto == "udp":
            return "pps"
        return REQUEST_RESPONSE_UNITS.get(self.tool, "Gbit/s")

    @property
    def request_response(self):
        return self.tool in REQUEST_RESPONSE_UNITS

    def generator_args(self):
        if self.new_flows:
            # every frame a new (source IP, source port): 60,000 ports x 65,536 addresses
            return ["--new-flows", "--src-ports", "60000", "--src-ips", "65536"]
        return ["--flows", str(self.flows), "--src-ports", str(self.flows), "--src-ips", "1"]


# request/response tools and the unit of their headline figure (the sample's "rate")
REQUEST_RESPONSE_UNITS = {"sockperf": "us", "wrk": "req/s", "ab": "conn/s"}

UDP_ESTABLISHED = Workload("udp64_established", "64 B UDP, 256 established flows")
UDP_NEW_FLOWS = Workload("udp64_new_flows", "64 B UDP, every packet a new flow", new_flows=True)
TCP_WORKLOADS = [
    Workload("tcp1_offloads_on", "TCP 1 stream, offloads on", proto="tcp", tool="iperf3", streams=1, offloads=True,
             every_service_count=False),
    Workload("tcp4_offloads_on", "TCP 4 streams, offloads on", proto="tcp", tool="iperf3", streams=4, offloads=True,
             every_service_count=False),
    Workload("tcp1_offloads_off", "TCP 1 stream, offloads off", proto="tcp", tool="iperf3", streams=1,
             offloads=False, every_service_count=False),
    Workload("tcp4_offloads_off", "TCP 4 streams, offloads off", proto="tcp", tool="iperf3", streams=4,
             offloads=False, every_service_count=False),
]
# Request/response through the Service's TCP port, endpoints with their default offloads (as Pods have)
RR_LATENCY = Workload("tcp_rr_latency", "TCP ping-pong round trip (sockperf)", proto="tcp", tool="sockperf",
                      every_service_count=False)
RR_KEEPALIVE = Workload("http_keepalive", "HTTP requests/s, keep-alive (wrk)", proto="tcp", tool="wrk",
                        every_service_count=False)
RR_NEW_CONNECTIONS = Workload("http_new_connections", "HTTP new connections/s, no keep-alive (ab)", proto="tcp",
                              tool="ab", new_flows=True)
REQUEST_RESPONSE_WORKLOADS = [RR_LATENCY, RR_KEEPALIVE, RR_NEW_CONNECTIONS]
# Cross-node Pod-to-Pod TCP (issue 12, must-show 4): Pods with their default offloads, as on a node
POD_TO_POD_WORKLOADS = [
    Workload("p2p_tcp1", "cross-node Pod-to-Pod TCP, 1 stream", proto="tcp", tool="iperf3", streams=1,
             offloads=True, every_service_count=False, pod_to_pod=True),
    Workload("p2p_tcp4", "cross-node Pod-to-Pod TCP, 4 streams", proto="tcp", tool="iperf3", streams=4,
             offloads=True, every_service_count=False, pod_to_pod=True),
]
WORKLOADS = [UDP_ESTABLISHED, UDP_NEW_FLOWS] + TCP_WORKLOADS + REQUEST_RESPONSE_WORKLOADS + POD_TO_POD_WORKLOADS
QUICK_WORKLOADS = ([UDP_ESTABLISHED, UDP_NEW_FLOWS, TCP_WORKLOADS[2]] + REQUEST_RESPONSE_WORKLOADS
                   + POD_TO_POD_WORKLOADS[:1])
TCP_OFFLOADS = ("tx", "tso", "gso")

# nginx for the HTTP workloads: one worker (pinned with the clients to the generator core), no logs, a
# fixed 3-byte body answered from memory (no file I/O), keep-alive for as many requests as wrk sends
NGINX_CONF = """daemon off; master_process off; worker_processes 1;
pid {dir}/nginx.pid; error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; default_type text/plain; keepalive_requests 100000000; keepalive_timeout 60s;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{ listen {port} backlog=4096; location / {{ return 200 "ok\\n"; }} }}
}}
"""


_PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def read_cpu_times():
    """Per-CPU seconds spent in each /proc/stat state (user, system, softirq, idle, ...)."""
    hz = os.sysconf("SC_CLK_TCK")
    result = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                result[int(fields[0][3:])] = {name: int(v) / hz for name, v in zip(_PROC_STAT_FIELDS, fields[1:])}
    return result


def cpu_delta(before, after, cpu, forwarded):
    """What `cpu` did between two read_cpu_times(): busy seconds, utilisation, shares, ns per packet."""
    d = {name: after[cpu][name] - before[cpu][name] for name in _PROC_STAT_FIELDS}
    total = sum(d.values())
    busy = total - d["idle"] - d["iowait"]
    share = (lambda x: x / total if total else 0.0)
    return {"busy_s": busy, "utilisation": share(busy),
            "user_share": share(d["user"] + d["nice"]), "system_share": share(d["system"]),
            "softirq_share": share(d["softirq"] + d["irq"]), "steal_share": share(d["steal"]),
            "ns_per_packet": busy / forwarded * 1e9 if forwarded else None}


def process_user_seconds(pid):
    """User CPU seconds of process `pid` (all threads), or 0.0 when there is none."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / os.sysconf("SC_CLK_TCK")   # utime, field 14 of proc(5)
    except (OSError, IndexError, ValueError):
        return 0.0


def own_cpu(before, after, cpu, forwarded, worker_user_s):
    """The path's own CPU time on `cpu` per forwarded packet, robust to other processes: everything
    but user time on that core (kernel paths run in softirq/system), plus the user time of the
    path's own worker process (AF_XDP paths). Other processes' user time is left out."""
    d = {name: after[cpu][name] - before[cpu][name] for name in _PROC_STAT_FIELDS}
    own = d["system"] + d["softirq"] + d["irq"] + worker_user_s
    total = sum(d.values())
    return {"own_s": own, "own_ns_per_packet": own / forwarded * 1e9 if forwarded else None,
            "worker_user_s": worker_user_s,
            "noise_share": max(0.0, d["user"] + d["nice"] - worker_user_s) / total if total else 0.0}


def cpu_per_gb(busy_s, own_s, received_bytes):
    """The path core's CPU per GB (10^9 bytes) received, in ms: all its busy time and its own time."""
    gb = received_bytes / 1e9 if received_bytes else 0
    return {"ms_per_gb": busy_s / gb * 1e3 if gb else None, "own_ms_per_gb": own_s / gb * 1e3 if gb else None}


def xdp_attach_mode(link):
    """'native', 'skb', ... for one entry of `ip -j -d link show`, or None when no XDP program is attached."""
    xdp = link.get("xdp")
    if not xdp:
        return None
    return XDP_ATTACH_MODES.get(xdp.get("mode"), f"mode {xdp.get('mode')}")


# A sample is "clean" when other processes used less than this share of either core.
CLEAN_NOISE_SHARE = 0.05


def unavailable_reason():
    """Why the macro benchmark cannot run here at all, or None."""
    if os.geteuid() != 0:
        return "the benchmark lab needs root (network namespaces, XDP)"
    if (os.cpu_count() or 1) < 2:
        return "the benchmark needs two CPUs (generator core and path core)"
    if not os.access(TRAFFICGEN, os.X_OK):
        return f"{TRAFFICGEN} is not built (make build)"
    return None


class BenchLab:
    """The forwarder lab set up for measuring: generator in the client namespace, the node as the
    router under test, an XDP counting sink on the Pod's interface."""

    RX_MODES = ("rps", "napi")

    def __init__(self, prefix="xlb", gen_cpu=0, path_cpu=1, rx_mode="rps", gateway="veth", queues=1):
        """rx_mode "rps": the transport's NAPI (skb build, GRO; XDP and the UMEM copy for AF_XDP paths)
        runs on the generator core, RPS moves the kernel's forwarding to the path core (issue 5's
        method). "napi": the transport's NAPI runs threaded, pinned to the path core, so the path core
        pays for receiving too and the generator core only generates.
        gateway "veth": the node's gw0 is a veth to the Pod (lab.forwarder_lab); "bridge": gw0 is a Linux
        bridge in the node namespace with the Pod's veth peer enslaved (forwarder_lab's), as
        lab.cluster_lab(gateway="bridge") builds it and as Antrea's antrea-gw0 is an L3 port to the Pods.
        queues: receive/transmit queues of every veth (the generator's frames all arrive on tr0's
        queue 0: veth hands XDP_TX frames to the queue of the sending CPU)."""
        if rx_mode not in self.RX_MODES:
            raise ValueError(f"rx_mode: {rx_mode!r} is not one of {', '.join(self.RX_MODES)}")
        if gateway not in GATEWAYS:
            raise ValueError(f"gateway: {gateway!r} is not one of {', '.join(GATEWAYS)}")
        self.gen_cpu, self.path_cpu, self.rx_mode, self.gateway = gen_cpu, path_cpu, rx_mode, gateway
        self.queues = queues
        self.lab = Lab(prefix)
        self.topo = None
        self.sink = None

    def __enter__(self):
        self.lab.__enter__()
        try:
            self.build()
        except BaseException:
            self.lab.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        return self.lab.__exit__(*exc)

    def build(self):
        lab = self.lab
        self.topo = t = forwarder_lab(lab, gateway=self.gateway, queues=self.queues)
        # the client namespace is also a Pod of another node (cross-node Pod-to-Pod rows)
        lab.add_address(t.client, "eth0", f"{PEER_POD_IP}/32")
        # replies and flowtable reverse routes for the generator's sources
        lab.add_route(t.node, BENCH_SOURCE_NET, via=t.client_if.ip)
        # frames sent by XDP_TX reach the stack (and RPS) only through veth's NAPI path: GRO on
        lab.ethtool_features(t.node, "tr0", gro=True)
        if self.rx_mode == "rps":
            # kernel paths: receive processing of the transport moves to the path core
            lab.set_rps(t.node, "tr0", 1 << self.path_cpu)
        else:
            lab.write_file(t.node, "/sys/class/net/tr0/threaded", "1")
        # replies from the Pod (TCP ACKs, responses) are forwarded on the path core too, not inside the
        # Pod's send on the generator core (bridge: on the Pod's port, the bridge passes frames up to gw0
        # on the core that received them)
        for queue in range(self.queues):
            lab.set_rps(t.node, "gw0" if self.gateway == "veth" else BRIDGE_POD_PORT, 1 << self.path_cpu, queue)
        # ab opens tens of thousands of connections to one VIP:port: more source ports than the default
        lab.sysctl(t.client, "net.ipv4.ip_local_port_range", "1024 65535")
        # no TIME_WAIT in the Pod (nginx closes first): (a) aims at the Pod, (b), (c), (f) at the VIP, so
        # one client port meets the server under two ISN and timestamp bases, and a SYN that hits the
        # TIME_WAIT a previous row left is refused (challenge ACK, reset, SYN again after 1 s): measured,
        # ab fell from ~18 k to ~3-6 k connections/s on every row that ran within 60 s after another kind
        lab.sysctl(t.pods, "net.ipv4.tcp_max_tw_buckets", 0)
        self.pin_rx()
        self.start_sink()

    def pin_rx(self):
        """rx_mode "napi": pin the transport's NAPI threads (re-created when XDP attaches) to the path core."""
        if self.rx_mode != "napi":
            return []
        import glob
        import subprocess
        pinned = []
        for comm in glob.glob("/proc/[0-9]*/comm"):
            try:
                with open(comm) as f:
                    name = f.read().strip()
            except OSError:
                continue
            # threaded NAPI kthreads are named napi/<dev>-<napi id>; only this bench switches a veth
            # named tr0 to threaded mode, so every napi/tr0-* thread is the node's transport
            if name.startswith("napi/tr0-"):
                subprocess.run(["taskset", "-pc", str(self.path_cpu), comm.split("/")[2]], capture_output=True)
                pinned.append(name)
        return pinned

    def start_sink(self):
        """The counting XDP drop on the Pod's eth0 (UDP workloads)."""
        lab, t = self.lab, self.topo
        if self.sink is not None:
            return
        self.sink = lab.popen(t.pods, [TRAFFICGEN, "sink", "--dev", "eth0", "--duration", "0"])
        deadline = time.monotonic() + 10
        while "prog/xdp" not in lab.ip(t.pods, "link show dev eth0"):
            if self.sink.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"traffic sink did not start: {lab.stop(self.sink).stderr}")
            time.sleep(0.05)

    def stop_sink(self):
        """Remove the sink so that TCP reaches the Pod's stack."""
        if self.sink is not None:
            self.lab.stop(self.sink)
            self.sink = None

    def attach_modes(self):
        """{interface: XDP attach mode} of the node's transport and gateway now (no entry: no program),
        which of them have a tc ingress filter (a path's fast path), and which have an xskproxy
        upcall pair (upcall mode): {"xdp": {...}, "tc": [...], "upcall": [...]}."""
        t, lab = self.topo, self.lab
        links = json.loads(lab.ip(t.node, ["-j", "-d", "link", "show"]))
        xdp = {link["ifname"]: xdp_attach_mode(link) for link in links
               if link.get("ifname") in ("tr0", "gw0") and xdp_attach_mode(link)}
        tc = [ifname for ifname in ("tr0", "gw0")
              if lab.run(t.node, ["tc", "filter", "show", "dev", ifname, "ingress"], check=False).stdout.strip()]
        names = {link.get("ifname") for link in links}
        upcall = [link["ifname"] for link in links if link.get("ifname") in ("tr0", "gw0")
                  and f"xskp{link['ifindex']}u" in names]
        return {"xdp": xdp, "tc": tc, "upcall": upcall}

    def set_ip_forward(self, on):
        self.lab.sysctl(self.topo.node, "net.ipv4.ip_forward", 1 if on else 0)

    def flush_conntrack(self):
        self.lab.run(self.topo.node, ["conntrack", "-F"], check=False)

    def generate(self, dst_ip, dst_port, workload, seconds):
        """Run the generator for `seconds` on the generator core; returns its JSON report."""
        import json
        t = self.topo
        argv = [TRAFFICGEN, "generate", "--dev", "eth0", "--dst-mac", t.transport.mac, "--dst-ip", dst_ip,
                "--dst-port", str(dst_port), "--src-ip", BENCH_SOURCE_FIRST, "--src-port", "1024",
                "--duration", str(seconds), "--cpu", str(self.gen_cpu), *workload.generator_args()]
        proc = self.lab.run(t.client, argv, timeout=seconds + 30)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def set_tcp_offloads(self, on):
        """Checksum and segmentation offloads of the client's and the Pod's eth0 (the TCP endpoints)."""
        for ns in (self.topo.client, self.topo.pods):
            self.lab.ethtool_features(ns, "eth0", **{name: on for name in TCP_OFFLOADS})

    def measure(self, dst_ip, dst_port, workload, seconds, worker_pid=None):
        """One measurement of `workload` towards dst_ip:dst_port (see measure_udp / measure_tcp).
        worker_pid: the path's own process (AF_XDP paths), whose user time counts as the path's."""
        if workload.request_response:
            return self.measure_request_response(dst_ip, dst_port, workload, seconds, worker_pid)
        if workload.proto == "tcp":
            return self.measure_tcp(dst_ip, dst_port, workload, seconds, worker_pid)
        return self.measure_udp(dst_ip, dst_port, workload, seconds, worker_pid)

    def measure_tcp(self, dst_ip, dst_port, workload, seconds, worker_pid=None):
        """iperf3 client (client ns) -> server (Pod ns, on workload.server_port), both on the generator core;
        Gbit/s received, and the path core's CPU time per GB received (all its busy time, and its own
        time as for the other workloads: system + softirq + the worker's user time). A Pod-to-Pod workload
        binds the client to PEER_POD_IP.

        A transfer that fails (e.g. a path that cannot carry offloaded frames) gives rate 0 and its error."""
        import json
        t, lab = self.topo, self.lab
        self.stop_sink()
        self.set_tcp_offloads(workload.offloads)
        port = str(workload.server_port)
        server = lab.popen(t.pods, ["iperf3", "-s", "-1", "-p", port], cpu=self.gen_cpu)
        deadline = time.monotonic() + 5
        while f":{port}" not in lab.run(t.pods, ["ss", "-Hltn", f"sport = :{port}"]).stdout:
            if server.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        bind = ["-B", PEER_POD_IP] if workload.pod_to_pod else []
        worker0, cpu0 = process_user_seconds(worker_pid), read_cpu_times()
        proc = lab.run(t.client, ["iperf3", "-c", dst_ip, "-p", str(dst_port), *bind,
                                  "-t", str(max(1, round(seconds))), "-P", str(workload.streams), "-J",
                                  "--connect-timeout", "3000"],
                       cpu=self.gen_cpu, check=False, timeout=seconds + 20)
        cpu1, worker1 = read_cpu_times(), process_user_seconds(worker_pid)
        lab.stop(server)
        self.set_tcp_offloads(True)
        error, gbps, retransmits, received = None, 0.0, None, None
        try:
            report = json.loads(proc.stdout)
            error = report.get("error")
            end = report.get("end", {})
            gbps = end.get("sum_received", {}).get("bits_per_second", 0.0) / 1e9
            received = end.get("sum_received", {}).get("bytes")
            retransmits = end.get("sum_sent", {}).get("retransmits")
        except ValueError:
            error = (proc.stderr or proc.stdout).strip()[:200] or f"iperf3 exited {proc.returncode}"
        received = received if received is not None else int(gbps * 1e9 * seconds / 8)
        path_cpu = cpu_delta(cpu0, cpu1, self.path_cpu, 0)
        path_cpu.update(own_cpu(cpu0, cpu1, self.path_cpu, 0, worker1 - worker0))
        path_cpu.update(cpu_per_gb(path_cpu["busy_s"], path_cpu["own_s"], received))
        return {"rate": gbps, "gbit_s": gbps, "retransmits": retransmits, "error": error,
                "forwarded": received, "seconds": seconds, "path_cpu": path_cpu,
                "noise_share": path_cpu["noise_share"],   # informational: TCP cells keep every run
                "generator_cpu": cpu_delta(cpu0, cpu1, self.gen_cpu, 0)}

    def start_tcp_server(self, tool, workdir):
        """The Pod's server for a request/response tool on TCP_SERVER_PORT, pinned to the generator core:
        sockperf's server (ping-pong) or nginx (wrk, ab); returns once it listens."""
        t, lab = self.topo, self.lab
        if tool == "sockperf":
            # SO_REUSEADDR: the previous server's connections on the port may still be in TIME_WAIT
            argv = ["sockperf", "server", "--tcp", "--uc-reuseaddr", "-i", "0.0.0.0", "-p", str(TCP_SERVER_PORT)]
        else:
            conf = os.path.join(workdir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(dir=workdir, port=TCP_SERVER_PORT))
            argv = ["nginx", "-e", "stderr", "-p", workdir, "-c", conf]
        server = lab.popen(t.pods, argv, cpu=self.gen_cpu)
        deadline = time.monotonic() + 10
        while f":{TCP_SERVER_PORT}" not in lab.run(t.pods, ["ss", "-Hltn", f"sport = :{TCP_SERVER_PORT}"]).stdout:
            if server.poll() is not None or time.monotonic() > deadline:
                result = lab.stop(server)
                raise RuntimeError(f"{argv[0]} server did not listen on :{TCP_SERVER_PORT}: "
                                   f"{(result.stderr or result.stdout or '').strip()[-500:]}")
            time.sleep(0.05)
        return server

    def client_command(self, workload, dst_ip, dst_port, seconds):
        """The client's argv: sockperf ping-pong (one connection, one message in flight, round trips),
        wrk (keep-alive, one thread) or ab (a new connection per request)."""
        whole_seconds = str(max(1, round(seconds)))
        if workload.tool == "sockperf":
            return ["sockperf", "ping-pong", "--tcp", "-i", dst_ip, "-p", str(dst_port), "-t", whole_seconds,
                    "--full-rtt"]
        url = f"http://{dst_ip}:{dst_port}/"
        if workload.tool == "wrk":
            return ["wrk", "-t1", f"-c{workload.connections}", f"-d{whole_seconds}s", "--latency", url]
        # -n: more than fit in -t (given after -t, which would set 50,000); -r: go on after a receive error
        return ["ab", "-q", "-r", "-s", "5", "-c", str(workload.connections), "-t", whole_seconds, "-n", "100000000",
                url]

    def measure_request_response(self, dst_ip, dst_port, workload, seconds, worker_pid=None):
        """One request/response measurement through the path: the tool's client (client ns) and server
        (Pod ns, on TCP_SERVER_PORT) both on the generator core. `rate` is the headline figure in
        workload.unit (round-trip p50 in us, requests/s, connections/s); `forwarded` the transactions
        that completed (round trips, requests, connections), for CPU time per transaction.

        A client that fails (the path did not carry the traffic) gives rate None and its error."""
        t, lab = self.topo, self.lab
        self.stop_sink()
        self.set_tcp_offloads(workload.offloads)
        workdir = tempfile.mkdtemp(prefix="xskp-bench-rr-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        server = None
        try:
            server = self.start_tcp_server(workload.tool, workdir)
            worker0, cpu0 = process_user_seconds(worker_pid), read_cpu_times()
            started = time.monotonic()
            proc = lab.run(t.client, self.client_command(workload, dst_ip, dst_port, seconds), cpu=self.gen_cpu,
                           check=False, timeout=seconds + 30)
            elapsed = time.monotonic() - started
            cpu1, worker1 = read_cpu_times(), process_user_seconds(worker_pid)
        finally:
            if server is not None:
                lab.stop(server)
            shutil.rmtree(workdir, ignore_errors=True)
            self.set_tcp_offloads(True)
        parsed = REQUEST_RESPONSE_PARSERS[workload.tool](proc.stdout)
        error = parsed.pop("error", None)
        if parsed.get("rate") is None or proc.returncode != 0:
            error = error or (proc.stderr or proc.stdout).strip()[-300:] or f"{workload.tool} exited {proc.returncode}"
        transactions = parsed.get("transactions") or 0
        per_cpu = {cpu: cpu_delta(cpu0, cpu1, cpu, transactions) for cpu in (self.gen_cpu, self.path_cpu)}
        per_cpu[self.path_cpu].update(own_cpu(cpu0, cpu1, self.path_cpu, transactions, worker1 - worker0))
        # the clients and the server run on the generator core: only the path core's noise is measurable
        noise = per_cpu[self.path_cpu]["noise_share"]
        return {**parsed, "forwarded": transactions, "error": error, "seconds": elapsed,
                "noise_share": noise, "clean": noise < CLEAN_NOISE_SHARE,
                "path_cpu": per_cpu[self.path_cpu], "generator_cpu": per_cpu[self.gen_cpu]}

    def measure_udp(self, dst_ip, dst_port, workload, seconds, worker_pid=None):
        """One measurement: forwarded pps at the sink, offered pps, CPU seconds per packet per core."""
        self.start_sink()
        worker0 = process_user_seconds(worker_pid)
        t, lab = self.topo, self.lab
        sink0, ingress0, cpu0 = lab.link_stats(t.pods, "eth0"), lab.link_stats(t.node, "tr0"), read_cpu_times()
        gen = self.generate(dst_ip, dst_port, workload, seconds)
        time.sleep(0.05)  # let the last frames drain through the path
        sink1, ingress1, cpu1 = lab.link_stats(t.pods, "eth0"), lab.link_stats(t.node, "tr0"), read_cpu_times()
        forwarded = sink1["rx_packets"] - sink0["rx_packets"]
        seconds_run = gen["seconds"]
        per_cpu = {cpu: cpu_delta(cpu0, cpu1, cpu, forwarded) for cpu in (self.gen_cpu, self.path_cpu)}
        per_cpu[self.path_cpu].update(own_cpu(cpu0, cpu1, self.path_cpu, forwarded,
                                              process_user_seconds(worker_pid) - worker0))
        # the generator runs in the kernel (BPF_PROG_RUN): user time on its core is other processes
        noise = max(per_cpu[self.path_cpu]["noise_share"], per_cpu[self.gen_cpu]["user_share"])
        return {
            "forwarded": forwarded,
            "rate": forwarded / seconds_run if seconds_run else 0.0,
            "pps": forwarded / seconds_run if seconds_run else 0.0,
            "offered_pps": gen["generated"] / seconds_run if seconds_run else 0.0,
            "ingress_dropped": ingress1["rx_dropped"] - ingress0["rx_dropped"],
            "noise_share": noise, "clean": noise < CLEAN_NOISE_SHARE,
            "seconds": seconds_run,
            "path_cpu": per_cpu[self.path_cpu],
            "generator_cpu": per_cpu[self.gen_cpu],
        }


# ---- request/response tools' output ---------------------------------------------------------------

def _number(pattern, text, cast=float):
    match = re.search(pattern, text, re.MULTILINE)
    return cast(match.group(1)) if match else None


def parse_sockperf(text):
    """sockperf ping-pong --full-rtt: round-trip percentiles in us over the valid (post warm-up) part.
    rate = p50; transactions = round trips measured."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)   # its colour codes
    p50 = _number(r"percentile 50\.000 =\s*([0-9.]+)", text)
    out = {"rate": p50, "p50_us": p50, "p99_us": _number(r"percentile 99\.000 =\s*([0-9.]+)", text),
           "p999_us": _number(r"percentile 99\.900 =\s*([0-9.]+)", text),
           "avg_us": _number(r"Round trip is ([0-9.]+) usec", text),
           "transactions": _number(r"Total (\d+) observations", text, int)}
    dropped = _number(r"# dropped messages = (\d+)", text, int)
    if dropped:
        out["error"] = f"{dropped} messages dropped"
    return out


def _wrk_duration_us(value):
    number, unit = re.match(r"([0-9.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]


def parse_wrk(text):
    """wrk --latency: requests/s, request latency p50/p99 in us, socket errors and non-2xx/3xx replies.
    rate = requests/s; transactions = requests completed."""
    latency = dict(re.findall(r"^\s+(50|99)%\s+([0-9.]+(?:us|ms|s|m))\s*$", text, re.MULTILINE))
    out = {"rate": _number(r"^Requests/sec:\s+([0-9.]+)", text),
           "p50_us": _wrk_duration_us(latency["50"]) if "50" in latency else None,
           "p99_us": _wrk_duration_us(latency["99"]) if "99" in latency else None,
           "transactions": _number(r"^\s+(\d+) requests in", text, int)}
    problems = []
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errors and any(int(n) for n in errors.groups()):
        problems.append(errors.group(0))
    bad_status = _number(r"Non-2xx or 3xx responses: (\d+)", text, int)
    if bad_status:
        problems.append(f"{bad_status} non-2xx/3xx responses")
    if problems:
        out["error"] = "; ".join(problems)
    return out


def parse_ab(text):
    """ab without -k: connections (= requests) per second, failed requests.
    rate = requests/s, each on a new connection; transactions = requests completed."""
    out = {"rate": _number(r"^Requests per second:\s+([0-9.]+)", text),
           "transactions": _number(r"^Complete requests:\s+(\d+)", text, int)}
    failed = _number(r"^Failed requests:\s+(\d+)", text, int)
    bad_status = _number(r"^Non-2xx responses:\s+(\d+)", text, int)
    if failed or bad_status:
        out["error"] = f"{failed or 0} failed requests, {bad_status or 0} non-2xx responses"
    return out


REQUEST_RESPONSE_PARSERS = {"sockperf": parse_sockperf, "wrk": parse_wrk, "ab": parse_ab}
