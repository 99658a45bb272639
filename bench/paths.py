"""The forwarding paths the benchmark compares, each set up on and torn down from a lab's node namespace.

A path says where the generator must aim (a Pod address or a Service VIP), installs its rules or
starts its worker pinned to the path core, and removes everything again. Never touches the root
namespace; a path that cannot run here says why (`unavailable()`), and so does a path for a workload
it cannot carry (`unsupported()`): neither is ever silently skipped.
"""
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from bench import agent_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XSKFWD_C = os.path.join(REPO, "build", "native", "xskfwd_c")
SERVICE_NET = ipaddress.ip_network("10.96.0.0/16")
SERVICE_PORT = 80
BACKEND_PORT = {"udp": 8080, "tcp": 5201}   # tcp: the Pod's one TCP server of the moment (iperf3, sockperf, nginx)


def service_vip(index):
    """ClusterIP of Service number `index` (0-based) in the benchmark's Service range."""
    return str(SERVICE_NET[10 + index])


class Path:
    """One forwarding path. Subclasses set key/name and override setup/teardown."""
    key = "?"
    name = "?"
    per_service_count = False   # True: measured once for every N in the Service counts
    kernel_forwards = True      # ip_forward in the node namespace while this path runs
    serves_services = False     # True: target() is a Service VIP the path translates (request/response rows)
    request_response_floor = False  # True: carries request/response aimed at the Pod (no Service): the floor
    pod_to_pod = False          # True: a cross-node Pod-to-Pod row (carries the Pod-to-Pod workloads only)
    label_extra = ""            # added to the name in the label (e.g. a setting)
    id_extra = ""               # added to row_id

    def __init__(self, services=None, gateway="veth"):
        """gateway: the lab the row runs on (bench.measure.GATEWAYS): "veth", or "bridge" (the node's gw0
        a Linux bridge, generic XDP for an agent), whose rows carry the TCP workloads only."""
        self.services = services
        self.gateway = gateway
        self.attach = None      # what run.py saw attached after setup (BenchLab.attach_modes)

    @property
    def label(self):
        suffix = f" N={self.services}" if self.per_service_count else ""
        bridge = ", bridge gateway" if self.gateway == "bridge" else ""
        return f"({self.key}) {self.name}{self.label_extra}{suffix}{bridge}"

    @property
    def row_id(self):
        base = f"{self.key}{self.services}" if self.per_service_count else self.key
        return f"{base}{self.id_extra}{'-bridge' if self.gateway == 'bridge' else ''}"

    comparison = False          # True: a comparison row (another agent setting), established-flow workloads only

    def carries(self, workload):
        """Whether `workload` belongs to this row's part of the matrix at all (no cell otherwise): the
        Pod-to-Pod workloads only on Pod-to-Pod rows and only there; on the bridge lab only TCP bulk; on
        a comparison row only what rides established flows through the path (UDP established, TCP bulk)."""
        if workload.pod_to_pod != self.pod_to_pod:
            return False
        if self.comparison and not (workload.bulk_tcp or (workload.proto == "udp" and not workload.new_flows)):
            return False
        return self.gateway == "veth" or workload.tool == "iperf3"

    def unavailable(self, bench):
        """None when this path can run here, else the reason it cannot (shown in the report)."""
        return None

    def unsupported(self, workload):
        """None when this path can carry `workload` (bench.measure.Workload), else why not (shown in
        its cell instead of a measurement)."""
        if workload.request_response and not (self.serves_services or self.request_response_floor):
            return ("no Service on this path (it aims at the Pod): request/response rows are for (a), the "
                    "floor, and (b), (c), (f)")
        return None

    def target(self, bench, proto="udp"):
        """(destination IP, destination port) the client aims at for `proto`."""
        return bench.topo.pod_if.ip, BACKEND_PORT[proto]

    def setup(self, bench):
        pass

    def teardown(self, bench):
        pass

    def worker_pid(self):
        """The pid of this path's own forwarding process, if it has one."""
        return None

    def path_counters(self, bench, newer_than=None):
        """The path's own cumulative counters ({name: n}), read after time.time() `newer_than`, or
        None when it keeps none (run.py stores their delta over each measurement)."""
        return None

    def protocols(self, service_index):
        """Every Service has a UDP port; the measured (last) one also a TCP port."""
        return ("udp", "tcp") if service_index == self.services - 1 else ("udp",)

    def describe(self):
        return {"key": self.key, "name": self.name, "services": self.services if self.per_service_count else None,
                "label": self.label, "row_id": self.row_id, "gateway": self.gateway, "pod_to_pod": self.pod_to_pod,
                "attach": self.attach}


class KernelRouting(Path):
    key, name = "a", "kernel routing"
    # request/response straight to the Pod, routed, no netfilter: what the endpoints themselves cost
    # (their TCP stacks' receive work runs on the path core as for every path), the floor of (b), (c), (f)
    request_response_floor = True


class IptablesKubeProxy(Path):
    """kube-proxy iptables mode for N UDP Services, the measured one last in KUBE-SERVICES (it alone also
    has a TCP port, for the TCP workloads)."""
    key, name = "b", "conntrack + iptables DNAT (kube-proxy)"
    per_service_count = True
    serves_services = True

    def unavailable(self, bench):
        return None if shutil.which("iptables-restore") else "iptables-restore is not installed"

    def target(self, bench, proto="udp"):
        return service_vip(self.services - 1), SERVICE_PORT

    def ruleset(self, backend_ip):
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
        body = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
        for i in range(self.services):
            for proto in self.protocols(i):
                svc, sep = f"KUBE-SVC-{proto.upper()}{i:012d}", f"KUBE-SEP-{proto.upper()}{i:012d}"
                backend = f"{backend_ip}:{BACKEND_PORT[proto]}"
                lines += [f":{svc} - [0:0]", f":{sep} - [0:0]"]
                body += [
                    f"-A KUBE-SERVICES -d {service_vip(i)}/32 -p {proto} -m comment --comment "
                    f"\"bench/svc-{i}:{proto} cluster IP\" -m {proto} --dport {SERVICE_PORT} -j {svc}",
                    f"-A {svc} -m comment --comment \"bench/svc-{i}:{proto} -> {backend}\" -j {sep}",
                    f"-A {sep} -p {proto} -m comment --comment bench/svc-{i}:{proto} -m {proto} "
                    f"-j DNAT --to-destination {backend}",
                ]
        return "\n".join(lines + body + ["COMMIT", ""])

    def setup(self, bench):
        bench.lab.run(bench.topo.node, ["iptables-restore"], input=self.ruleset(bench.topo.pod_if.ip),
                      timeout=300)

    def teardown(self, bench):
        bench.lab.run(bench.topo.node, ["iptables-restore"], input="*nat\nCOMMIT\n", check=False)
        bench.lab.run(bench.topo.node, ["iptables", "-t", "nat", "-F"], check=False)
        bench.lab.run(bench.topo.node, ["iptables", "-t", "nat", "-X"], check=False)
        # iptables-nft keeps an empty `ip nat` table whose hooks keep conntrack on: remove it
        bench.lab.run(bench.topo.node, ["nft", "delete", "table", "ip", "nat"], check=False)


class NftablesKubeProxy(Path):
    """kube-proxy nftables mode for N UDP Services: one verdict map keyed by (VIP, proto, port).

    Loading 10,000 Services takes nft tens of seconds here, so the table is loaded once per lab and
    only its hooked base chain is added by setup() and deleted by teardown(): without it the table
    has no hook, costs no packet anything and conntrack is off."""
    key, name = "c", "conntrack + nftables vmap (kube-proxy)"
    per_service_count = True
    serves_services = True

    def unavailable(self, bench):
        return None if shutil.which("nft") else "nft is not installed"

    def target(self, bench, proto="udp"):
        return service_vip(self.services - 1), SERVICE_PORT

    def ruleset(self, backend_ip):
        chains, elements = [], []
        for i in range(self.services):
            for proto in self.protocols(i):
                name = f"{i}-{proto}"
                elements.append(f"{service_vip(i)} . {proto} . {SERVICE_PORT} : goto service-{name}")
                chains.append(f"chain service-{name} {{ numgen random mod 1 vmap {{ 0 : goto endpoint-{name} }}; }}")
                chains.append(f"chain endpoint-{name} {{ meta l4proto {proto} dnat to "
                              f"{backend_ip}:{BACKEND_PORT[proto]}; }}")
        return "\n".join([
            f"table ip {self.table} {{",
            *chains,
            "map service-ips { type ipv4_addr . inet_proto . inet_service : verdict",
            "  elements = { " + ",\n".join(elements) + " } }",
            "chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }",
            "}", ""])

    @property
    def table(self):
        return f"xskp-bench-kube-proxy-{self.services}"

    def setup(self, bench):
        node = bench.topo.node
        if getattr(self, "loaded_in", None) != node:
            bench.lab.run(node, ["nft", "-f", "-"], input=self.ruleset(bench.topo.pod_if.ip), timeout=600)
            self.loaded_in = node
        bench.lab.run(node, ["nft", "-f", "-"], input=(
            f"add chain ip {self.table} nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
            f"add rule ip {self.table} nat-prerouting jump services\n"))

    def teardown(self, bench):
        bench.lab.run(bench.topo.node, ["nft", "delete", "chain", "ip", self.table, "nat-prerouting"], check=False)


class NftablesFlowtable(Path):
    """nftables flowtable between transport and gateway: after a flow's first packet, the ingress hook
    forwards it without the IP stack (Antrea's noEncap acceleration)."""
    key, name = "d", "nftables flowtable"
    RULESET = "\n".join([
        "table inet xskp-bench-flowtable {",
        "  flowtable fastpath { hook ingress priority filter; devices = { tr0, gw0 }; }",
        "  chain forward { type filter hook forward priority filter; policy accept;",
        "    meta l4proto { tcp, udp } flow add @fastpath; }",
        "}", ""])

    def unavailable(self, bench):
        if not shutil.which("nft"):
            return "nft is not installed"
        probe = bench.lab.run(bench.topo.node, ["nft", "-f", "-"], input=self.RULESET, check=False)
        self.teardown(bench)
        if probe.returncode != 0:
            return ("this kernel has no nftables flowtable (CONFIG_NF_FLOW_TABLE is off)"
                    if "No such file or directory" in probe.stderr else f"nft refuses the flowtable: {probe.stderr.strip()}")
        return None

    def setup(self, bench):
        bench.lab.run(bench.topo.node, ["nft", "-f", "-"], input=self.RULESET)

    def teardown(self, bench):
        bench.lab.run(bench.topo.node, ["nft", "delete", "table", "inet", "xskp-bench-flowtable"], check=False)


class TcRedirect(Path):
    """tc clsact on the transport's ingress redirecting the Pod CIDR to the gateway with MACs rewritten
    and TTL decremented (the TCManager proposal). This kernel has no pedit/csum actions
    (CONFIG_NET_ACT_PEDIT/CSUM off), so the same work is a cls_bpf direct-action program + bpf_redirect."""
    key, name = "e", "tc clsact redirect (BPF for pedit)"

    def unavailable(self, bench):
        from bench.measure import TRAFFICGEN
        return None if os.access(TRAFFICGEN, os.X_OK) else f"{TRAFFICGEN} is not built (make build)"

    def setup(self, bench):
        from bench.measure import TRAFFICGEN
        t, lab = bench.topo, bench.lab
        self.proc = lab.popen(t.node, [TRAFFICGEN, "tc-redirect", "--dev", "tr0", "--out", "gw0",
                                       "--prefix", t.pod_if.network, "--dst-mac", t.pod_if.mac])
        deadline = time.monotonic() + 10
        while "tc_redirect" not in lab.run(t.node, "tc filter show dev tr0 ingress").stdout:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tc-redirect did not attach: {lab.stop(self.proc).stderr}")
            time.sleep(0.05)

    def teardown(self, bench):
        proc = getattr(self, "proc", None)
        if proc is not None:
            bench.lab.stop(proc)
            self.proc = None
        bench.lab.run(bench.topo.node, "tc qdisc del dev tr0 clsact", check=False)


class _AfxdpWorker(Path):
    """A forwarding process in the node namespace, pinned to the path core; ip_forward is 0 so that
    only it can have carried the traffic."""
    kernel_forwards = False
    ready_timeout = 30.0
    stop_timeout = 3.0

    def command(self, bench):
        raise NotImplementedError

    def start(self, bench):
        """Start the process (stdout/stderr piped unless a subclass says otherwise)."""
        return bench.lab.popen(bench.topo.node, self.command(bench), cpu=bench.path_cpu, cwd=REPO)

    def setup(self, bench):
        self.proc = self.start(bench)
        self.wait_ready(bench)

    def wait_ready(self, bench):
        """Wait until the steering program is attached on the transport (or, upcall mode, on the
        socket end of its upcall pair) and the process still runs half a second later (a start-up
        step after the attach can still fail)."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self.check_running(bench)
            if self.steering_attached(bench) and self.extra_ready(bench):
                time.sleep(0.5)
                self.check_running(bench)
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready within {self.ready_timeout:.0f} s: "
                           f"{self.output(None)}")

    @staticmethod
    def steering_attached(bench):
        node, lab = bench.topo.node, bench.lab
        transport = lab.ip(node, "link show dev tr0")
        if "prog/xdp" in transport:
            return True
        ifindex = transport.split(":", 1)[0].strip()
        socket_end = lab.run(node, ["ip", "link", "show", "dev", f"xskp{ifindex}u"], check=False).stdout
        return "prog/xdp" in socket_end

    def check_running(self, bench):
        """Raise with what the process printed if it has exited."""
        if self.proc.poll() is not None:
            result = bench.lab.stop(self.proc)
            self.proc = None
            raise RuntimeError(f"{self.name} exited with {result.returncode}: {self.output(result)}")

    def extra_ready(self, bench):
        return True

    def output(self, result):
        """What the process printed, for an error message (`result`: from lab.stop, or None)."""
        return ((result.stderr or "") if result is not None else "").strip()[-2000:]

    def worker_pid(self):
        proc = getattr(self, "proc", None)
        return proc.pid if proc is not None else None

    def teardown(self, bench):
        proc = getattr(self, "proc", None)
        if proc is not None:
            self.result = bench.lab.stop(proc, timeout=self.stop_timeout)
            self.proc = None


class CForwarder(_AfxdpWorker):
    """build/native/xskfwd_c: MAC rewrite between transport and gateway, nothing else (no checksum
    completion), aimed at the Pod address like (a), (d), (e)."""
    key, name = "g", "minimal C AF_XDP forwarder"

    def unavailable(self, bench):
        return None if os.access(XSKFWD_C, os.X_OK) else f"{XSKFWD_C} is not built (make build)"

    def unsupported(self, workload):
        if workload.proto == "tcp" and workload.offloads and not workload.request_response:
            return ("a pure L2 forwarder does not complete partial (offloaded) checksums: "
                    "the Pod drops the segments")
        return super().unsupported(workload)

    def command(self, bench):
        from bench.measure import BENCH_SOURCE_NET
        t = bench.topo
        return [XSKFWD_C, "--transport", "tr0", "--gateway", "gw0",
                "--transport-peer-mac", t.client_if.mac, "--gateway-peer-mac", t.pod_if.mac,
                # Pod CIDR arriving on the transport; the client and the generator's sources on the gateway
                "--steer-prefix", f"{t.pod_if.network}@transport",
                "--steer-prefix", f"{t.client_if.ip}/32@gateway",
                "--steer-prefix", f"{BENCH_SOURCE_NET}@gateway"]


class XskproxyAgent(_AfxdpWorker):
    """The product: `python -m control.cli run` with N Services from manifest files (bench/agent_setup.py),
    the Service pipeline load-balancing service_vip(N-1) to the Pod (DNAT), as (b) and (c) do.

    Config, manifest, log and stateDir live in a fresh temporary directory per setup (on tmpfs when
    /dev/shm is one, as /run is on a node, so the memory-mapped flow tables cause no disk writeback).
    The agent reads the node namespace's routes and neighbours itself: the Pod and the client have
    permanent neighbours there, and BenchLab routes the generator's sources via the client."""
    key, name = "f", "xskproxy agent (Service pipeline)"
    per_service_count = True
    serves_services = True
    ready_timeout = 300.0        # the first start compiles the pipeline with numba (cached after)
    stop_timeout = 20.0          # stop flushes the flow tables
    METRICS_ADDRESS = ""         # disabled: the bench reads stats.json
    extra_config = {}            # more agent config keys (e.g. queues)
    cpus = None                  # taskset CPU list for the agent; None: the path core

    def __init__(self, services=None, flow_offload=None, gateway="veth"):
        """flow_offload: the agent's `flowOffload` (kernel fast path for established flows) as True or
        False, or None to leave it out of the config (the agent's default); the rows of different
        settings are told apart by their label and row_id."""
        super().__init__(services, gateway)
        self.flow_offload = flow_offload

    @property
    def label_extra(self):
        return "" if self.flow_offload is None else f", flowOffload {str(self.flow_offload).lower()}"

    @property
    def id_extra(self):
        return "" if self.flow_offload is None else ("-offload" if self.flow_offload else "-no-offload")

    def describe(self):
        return {**super().describe(), "flow_offload": self.flow_offload}

    def unavailable(self, bench):
        try:
            import pyxdp  # noqa: F401
        except ImportError as e:
            return f"pyxdp is not built (make build): {e}"
        return None

    def target(self, bench, proto="udp"):
        return service_vip(self.services - 1), SERVICE_PORT

    def manifest(self, bench):
        t = bench.topo
        services = [agent_setup.service_objects(i, service_vip(i), agent_setup.cluster_ip(SERVICE_NET, service_vip(i)),
                                                self.protocols(i), SERVICE_PORT, BACKEND_PORT, t.pod_if.ip)
                    for i in range(self.services)]
        return agent_setup.manifest(services, node_ip=t.transport.ip, pod_cidr=t.pod_if.network,
                                    other_nodes=self.other_nodes(bench))

    def other_nodes(self, bench):
        """[(name, InternalIP, podCIDR)] of the cluster's other Nodes in the manifest (none here)."""
        return []

    def write_files(self, bench):
        """config.yaml, manifests/services.json (the agent parses .json manifests as JSON: 10,000
        Services load far faster than as YAML) in a new work directory; returns the config's path."""
        parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.workdir = tempfile.mkdtemp(prefix="xskp-bench-agent-", dir=parent)
        manifest_dir = os.path.join(self.workdir, "manifests")
        os.makedirs(manifest_dir)
        with open(os.path.join(manifest_dir, "services.json"), "w") as f:
            json.dump(self.manifest(bench), f, separators=(",", ":"))
        config = agent_setup.agent_config(manifest_dir, os.path.join(self.workdir, "state"), self.METRICS_ADDRESS,
                                          flow_offload=self.flow_offload)
        config.update(self.extra_config)
        path = os.path.join(self.workdir, "config.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    @property
    def log_path(self):
        return os.path.join(self.workdir, "agent.log")

    @property
    def stats_path(self):
        return os.path.join(self.workdir, "state", "stats.json")

    def start(self, bench):
        config = self.write_files(bench)
        with open(self.log_path, "w") as log:   # a file, not a pipe nobody reads while it runs
            return bench.lab.popen(bench.topo.node, [sys.executable, "-m", "control.cli", "run", "--config", config],
                                   cpu=self.cpus if self.cpus is not None else bench.path_cpu, cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT)

    def extra_ready(self, bench):
        """The agent logged event=started and wrote stats.json with its first generation."""
        stats = self.read_stats()
        return bool(stats and stats.get("generation", 0) > 0) and "event=started" in self.log_text()

    def log_text(self):
        if not getattr(self, "workdir", None):
            return getattr(self, "last_log", "")
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def output(self, result):
        """The agent's error lines (`xskproxy: error: ...`, ERROR records), else its log's tail."""
        text = self.log_text()
        errors = [line for line in text.splitlines() if line.startswith("xskproxy: error") or " ERROR " in line]
        return ("\n".join(errors) or text.strip())[-2000:]

    def read_stats(self):
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def path_counters(self, bench, newer_than=None, timeout=3.0):
        """The agent's pipeline counters summed over its queues ({XSKP_...: n}) and its steering and
        kernel fast path counters ({STEER_...: n, FAST_...: n}; with flowOffload an established flow's
        packets count as FAST_FLOW, not in the pipeline), from a stats.json written after `newer_than`
        (time.time(); the agent rewrites it every second). Raises if the agent has exited."""
        self.check_running(bench)
        deadline = time.monotonic() + timeout
        while newer_than is not None and time.monotonic() < deadline:
            try:
                if os.stat(self.stats_path).st_mtime > newer_than:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        stats = self.read_stats() or {}
        total = {}
        for queue in stats.get("queues", {}).values():
            for name, value in queue.get("pipeline", {}).items():
                total[name] = total.get(name, 0) + value
        total.update(stats.get("steering", {}))
        return total

    def teardown(self, bench):
        """SIGTERM (handoverSeconds 0: the agent detaches at once), make sure no XDP program stays on
        the node's interfaces, keep the log's tail, remove the work directory."""
        try:
            super().teardown(bench)
            for ifname in ("tr0", "gw0"):
                if "prog/xdp" in bench.lab.ip(bench.topo.node, f"link show dev {ifname}"):
                    for mode in ("xdp", "xdpgeneric"):
                        bench.lab.run(bench.topo.node, ["ip", "link", "set", "dev", ifname, mode, "off"],
                                      check=False)
                # the fast path's clsact qdisc (the agent removes the one it created when it stops)
                bench.lab.run(bench.topo.node, ["tc", "qdisc", "del", "dev", ifname, "clsact"], check=False)
        finally:
            workdir = getattr(self, "workdir", None)
            if workdir:
                self.last_log = self.log_text()[-4000:]
                self.workdir = None
                shutil.rmtree(workdir, ignore_errors=True)


class NodeNetfilter:
    """What a node's netfilter holds besides the Service rules, as kube-proxy (iptables mode) and Antrea
    (noEncap) install it: the filter FORWARD chains (conntrack state INVALID dropped, marked and
    ESTABLISHED accepted, Pod gateway traffic accepted) and nat POSTROUTING (kube-proxy's mark-based
    masquerade, Antrea's masquerade of Pod traffic leaving the Pod network), on top of path (b)'s
    KUBE-SERVICES for N Services with its KUBE-NODEPORTS jump. Every forwarded packet crosses
    conntrack and the filter chains; a new connection also the nat chains. Loaded with
    iptables-restore (iptables-nft, as (b)); removed with every table it created."""

    def __init__(self, services):
        self.services_rules = IptablesKubeProxy(services)

    def ruleset(self, pod_ip, pod_cidr, gateway="gw0", pod_supernet="10.244.0.0/16"):
        nat = self.services_rules.ruleset(pod_ip).splitlines()
        commit = nat.index("COMMIT")
        nat[commit:commit] = [
            ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":ANTREA-POSTROUTING - [0:0]",
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype "
            "--dst-type LOCAL -j KUBE-NODEPORTS",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" "
            "-j MASQUERADE --random-fully",
            "-A POSTROUTING -m comment --comment \"Antrea: jump to Antrea postrouting rules\" -j ANTREA-POSTROUTING",
            f"-A ANTREA-POSTROUTING -s {pod_cidr} ! -d {pod_supernet} ! -o {gateway} -m comment "
            "--comment \"Antrea: masquerade Pod to external packets\" -j MASQUERADE"]
        filter_table = [
            "*filter", ":KUBE-FORWARD - [0:0]", ":ANTREA-FORWARD - [0:0]",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
            "-A FORWARD -m comment --comment \"Antrea: jump to Antrea forwarding rules\" -j ANTREA-FORWARD",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 "
            "-j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack "
            "--ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-A ANTREA-FORWARD -i {gateway} -m comment --comment \"Antrea: accept packets from local Pods\" "
            "-j ACCEPT",
            f"-A ANTREA-FORWARD -o {gateway} -m comment --comment \"Antrea: accept packets to local Pods\" "
            "-j ACCEPT",
            "COMMIT"]
        return "\n".join(filter_table + nat) + "\n"

    def install(self, bench):
        t = bench.topo
        bench.lab.run(t.node, ["iptables-restore"], input=self.ruleset(t.pod_if.ip, t.pod_if.network), timeout=300)

    def remove(self, bench):
        node = bench.topo.node
        bench.lab.run(node, ["iptables-restore"], input="*filter\nCOMMIT\n*nat\nCOMMIT\n", check=False)
        for table in ("filter", "nat"):
            bench.lab.run(node, ["iptables", "-t", table, "-F"], check=False)
            bench.lab.run(node, ["iptables", "-t", table, "-X"], check=False)
            # iptables-nft keeps empty tables whose hooks keep conntrack on: remove them
            bench.lab.run(node, ["nft", "delete", "table", "ip", table], check=False)


def route_peer_pods(bench):
    """The node routes the other node's podCIDR (PEER_POD_CIDR) via that node: the client namespace."""
    from bench.measure import PEER_POD_CIDR
    bench.lab.add_route(bench.topo.node, PEER_POD_CIDR, via=bench.topo.client_if.ip)


def unroute_peer_pods(bench):
    from bench.measure import PEER_POD_CIDR
    bench.lab.run(bench.topo.node, ["ip", "route", "del", PEER_POD_CIDR], check=False)


class CrossNodeKernel(Path):
    """Cross-node Pod-to-Pod through the kernel (issue 12, must-show 4): a Pod of another node (the
    client namespace, PEER_POD_IP) to the Pod's own address; the node routes with ip_forward, conntrack
    and a node's netfilter rules (NodeNetfilter with the Services of (b) N = `services`)."""
    key, name = "h", "cross-node Pod-to-Pod: kernel routing + kube-proxy/Antrea iptables, conntrack"
    pod_to_pod = True

    def unavailable(self, bench):
        return None if shutil.which("iptables-restore") else "iptables-restore is not installed"

    @property
    def label_extra(self):
        return f" ({self.services} Services)"

    def target(self, bench, proto="tcp"):
        from bench.measure import POD_TO_POD_PORT
        return bench.topo.pod_if.ip, POD_TO_POD_PORT

    def setup(self, bench):
        route_peer_pods(bench)
        NodeNetfilter(self.services).install(bench)

    def teardown(self, bench):
        NodeNetfilter(self.services).remove(bench)
        unroute_peer_pods(bench)


class CrossNodeBypass(XskproxyAgent):
    """Cross-node Pod-to-Pod through xskproxy's netfilter bypass (issue 12, must-show 4): the same
    traffic, routes and netfilter rules as CrossNodeKernel, and the agent with flowOffload true whose
    manifest also has the other node (InternalIP: the client, podCIDR: PEER_POD_CIDR). Its tc fast path
    routes Pod-CIDR traffic with the kernel FIB and redirects it (counter FAST_BYPASS), so the node's
    netfilter and conntrack never see it. ip_forward stays on: bpf_fib_lookup refuses to route for an
    interface that does not forward (and a packet the bypass passes, the kernel then forwards: the
    counters tell the two apart)."""
    key, name = "i", "cross-node Pod-to-Pod: xskproxy netfilter bypass (tc fast path), same iptables loaded"
    pod_to_pod = True
    kernel_forwards = True
    per_service_count = False

    def __init__(self, services=None, gateway="veth"):
        super().__init__(services, flow_offload=True, gateway=gateway)

    @property
    def label_extra(self):
        return f" ({self.services} Services)"

    @property
    def id_extra(self):
        return ""

    def target(self, bench, proto="tcp"):
        from bench.measure import POD_TO_POD_PORT
        return bench.topo.pod_if.ip, POD_TO_POD_PORT

    def other_nodes(self, bench):
        from bench.measure import PEER_POD_CIDR
        return [("bench-peer", bench.topo.client_if.ip, PEER_POD_CIDR)]

    def setup(self, bench):
        route_peer_pods(bench)
        NodeNetfilter(self.services).install(bench)
        super().setup(bench)

    def teardown(self, bench):
        try:
            super().teardown(bench)
        finally:
            NodeNetfilter(self.services).remove(bench)
            unroute_peer_pods(bench)


# the paths the bridge lab can run: the Service paths' TCP bulk rows and the Pod-to-Pod rows
BRIDGE_PATH_KEYS = "bcfhi"


def all_paths(service_counts, agent_flow_offload=(None,), gateway="veth"):
    """Every path row of the matrix for the lab with `gateway`, (b), (c) and (f) once per Service count;
    (f) also once per `agent_flow_offload` setting (None: the agent's default, True/False: flowOffload
    set): the first setting at every N, the others at the smallest N only as comparison rows (UDP
    established and TCP bulk only: what the setting changes, cheaply); then the cross-node Pod-to-Pod
    rows (h), (i) with the smallest N's rules. The bridge lab (gateway "bridge") can run (b), (c), (f) at
    the smallest N only (they carry only TCP bulk there, which runs at the smallest N anyway; (f) with the
    first setting only) and (h), (i)."""
    smallest = min(service_counts)
    rows = [KernelRouting(gateway=gateway)]
    rows += [IptablesKubeProxy(n, gateway) for n in service_counts]
    rows += [NftablesKubeProxy(n, gateway) for n in service_counts]
    rows += [NftablesFlowtable(gateway=gateway), TcRedirect(gateway=gateway)]
    for i, flow_offload in enumerate(agent_flow_offload):
        for n in (service_counts if i == 0 else [smallest]):
            row = XskproxyAgent(n, flow_offload, gateway)
            row.comparison = i > 0
            rows.append(row)
    rows += [CForwarder(gateway=gateway)]
    rows += [CrossNodeKernel(smallest, gateway), CrossNodeBypass(smallest, gateway)]
    if gateway == "bridge":
        rows = [r for r in rows if r.key in BRIDGE_PATH_KEYS and r.services in (None, smallest) and not r.comparison]
    return rows
