"""Network-namespace labs: a `Lab` owns namespaces with a unique per-run prefix and always removes them.

Never creates, changes or reads anything in the root namespace's interfaces; every veth is created
directly inside its namespaces. Topologies (forwarder_lab, cluster_lab) are plain functions on a Lab.
"""
import atexit
import ipaddress
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

NETNS_DIR = "/run/netns"
_PREFIX_SHAPE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_LIVE_LABS = weakref.WeakSet()
_SIGNALS_TO_UNWIND = (signal.SIGTERM, signal.SIGHUP)


class LabError(RuntimeError):
    """A lab command failed; the message names the command, the namespace and the kernel's words."""


def _check_prefix(prefix):
    if not _PREFIX_SHAPE.match(prefix):
        raise ValueError(f"lab prefix: {prefix!r} must be 1-8 lowercase letters/digits starting with a letter")


def _run_host(argv, check=True, timeout=60, input=None):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` failed (exit {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(ns):
    """SIGKILL every process still living in namespace `ns` (they would keep it alive)."""
    proc = _run_host(["ip", "netns", "pids", ns], check=False, timeout=10)
    for word in proc.stdout.split():
        try:
            os.kill(int(word), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def _delete_namespace(ns):
    _kill_namespace_processes(ns)
    proc = _run_host(["ip", "netns", "del", ns], check=False, timeout=20)
    return proc.returncode == 0 or not os.path.exists(os.path.join(NETNS_DIR, ns))


def list_namespaces(prefix=""):
    """Names of the namespaces under /run/netns that start with `prefix`."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def cleanup_stale(prefix, include_live=False):
    """Delete namespaces left by earlier runs of `prefix` whose creating process is gone.

    Lab namespaces are named `<prefix>-<pid>-<hex4>-<role>`; those whose pid still runs are kept
    unless include_live. Returns the names deleted."""
    _check_prefix(prefix)
    shape = re.compile(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]{{4}}-")
    deleted = []
    for ns in list_namespaces(prefix + "-"):
        m = shape.match(ns)
        if not m:
            continue
        if int(m.group(1)) == os.getpid() or (_pid_alive(int(m.group(1))) and not include_live):
            continue
        if _delete_namespace(ns):
            deleted.append(ns)
    return deleted


@dataclass
class Iface:
    """One interface of a lab namespace as it was when the topology was built."""
    ns: str
    name: str
    mac: str
    ifindex: int
    ip: str = None          # IPv4 address without prefix length, or None
    prefixlen: int = None

    @property
    def cidr(self):
        return f"{self.ip}/{self.prefixlen}" if self.ip else None

    @property
    def network(self):
        return str(ipaddress.ip_interface(self.cidr).network) if self.ip else None


class Lab:
    """Namespaces and processes of one test or benchmark run; `teardown()` removes all of them.

    Use as a context manager; teardown also runs at interpreter exit and when SIGTERM/SIGHUP
    arrive while the context is open (SIGINT unwinds through KeyboardInterrupt)."""

    def __init__(self, prefix, keep=False):
        _check_prefix(prefix)
        self.prefix = prefix
        self.run_id = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        self.keep = keep or os.environ.get("XSKP_LAB_KEEP") == "1"
        self.namespaces = []
        self._processes = []
        self._lock = threading.Lock()
        self._saved_handlers = {}
        self._torn_down = False
        _LIVE_LABS.add(self)

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS_TO_UNWIND:
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    self._saved_handlers[sig] = signal.signal(sig, _raise_system_exit)
        return self

    def __exit__(self, *exc):
        try:
            self.teardown()
        finally:
            for sig, handler in self._saved_handlers.items():
                signal.signal(sig, handler)
            self._saved_handlers.clear()
        return False

    def teardown(self):
        """Stop every process started here, then delete every namespace; never raises."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        for proc in reversed(self._processes):
            _stop_process(proc)
        if self.keep:
            print(f"lab {self.run_id}: kept namespaces {' '.join(self.namespaces)}")
            return
        for ns in reversed(self.namespaces):
            try:
                _delete_namespace(ns)
            except Exception:  # teardown must reach every namespace
                pass

    # -- namespaces and links -------------------------------------------------------------
    def ns_name(self, role):
        return f"{self.run_id}-{role}"

    def add_namespace(self, role):
        """Create namespace `<run_id>-<role>` with loopback up; returns its name."""
        if self._torn_down:
            raise LabError(f"lab {self.run_id} is already torn down")
        ns = self.ns_name(role)
        _run_host(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self.ip(ns, "link set lo up")
        return ns

    def ip(self, ns, args):
        """Run `ip -n ns <args>` (args: str or list); returns stdout."""
        argv = ["ip", "-n", ns] + (shlex.split(args) if isinstance(args, str) else list(args))
        return _run_host(argv).stdout

    def add_veth(self, ns_a, name_a, ns_b, name_b, queues=1, mtu=None):
        """A veth pair created directly in ns_a/ns_b (never in the root namespace), both ends up."""
        for name in (name_a, name_b):
            if len(name) > 15:
                raise ValueError(f"interface name: {name!r} is longer than 15 characters")
        q = ["numtxqueues", str(queues), "numrxqueues", str(queues)]
        _run_host(["ip", "link", "add", name_a, "netns", ns_a, *q, "type", "veth",
                   "peer", "name", name_b, "netns", ns_b, *q])
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if mtu:
                self.ip(ns, f"link set dev {name} mtu {mtu}")
            self.ip(ns, f"link set dev {name} up")

    def add_address(self, ns, ifname, cidr):
        self.ip(ns, ["addr", "add", cidr, "dev", ifname])

    def add_route(self, ns, dest, via=None, dev=None, src=None):
        argv = ["route", "replace", dest]
        argv += ["via", via] if via else []
        argv += ["dev", dev] if dev else []
        argv += ["src", src] if src else []
        self.ip(ns, argv)

    def set_neighbour(self, ns, ifname, ip, mac):
        """A permanent neighbour entry (ARP) for `ip` -> `mac` on `ifname`."""
        self.ip(ns, ["neigh", "replace", ip, "lladdr", mac, "dev", ifname, "nud", "permanent"])

    def iface(self, ns, ifname):
        """An `Iface` describing `ifname` in `ns` now (MAC, ifindex, first IPv4 address)."""
        info = json.loads(self.ip(ns, ["-j", "addr", "show", "dev", ifname]))[0]
        v4 = [a for a in info.get("addr_info", []) if a.get("family") == "inet"]
        return Iface(ns=ns, name=ifname, mac=info["address"], ifindex=info["ifindex"],
                     ip=v4[0]["local"] if v4 else None, prefixlen=v4[0]["prefixlen"] if v4 else None)

    def link_stats(self, ns, ifname):
        """Interface counters (rx/tx packets, bytes, errors, dropped) of `ifname` in `ns`."""
        info = json.loads(self.ip(ns, ["-j", "-s", "-s", "link", "show", "dev", ifname]))[0]
        stats = info["stats64"]
        return {"rx_packets": stats["rx"]["packets"], "rx_bytes": stats["rx"]["bytes"],
                "rx_dropped": stats["rx"]["dropped"], "rx_errors": stats["rx"]["errors"],
                "tx_packets": stats["tx"]["packets"], "tx_bytes": stats["tx"]["bytes"],
                "tx_dropped": stats["tx"]["dropped"], "tx_errors": stats["tx"]["errors"]}

    # -- knobs ----------------------------------------------------------------------------
    def sysctl(self, ns, key, value):
        """Set sysctl `key` (dotted, e.g. net.ipv4.ip_forward) to `value` inside `ns`."""
        self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])

    def read_sysctl(self, ns, key):
        return self.run(ns, ["sysctl", "-n", key]).stdout.strip()

    def ethtool_features(self, ns, ifname, **features):
        """Switch offloads with ethtool -K: ethtool_features(ns, "eth0", tx=False, tso=False, gro=True)."""
        argv = ["ethtool", "-K", ifname]
        for feature, on in features.items():
            argv += [feature.replace("_", "-"), "on" if on else "off"]
        self.run(ns, argv)

    def set_channels(self, ns, ifname, combined=None, rx=None, tx=None):
        """Active queue counts (`ethtool -L`); veth takes rx/tx, at most the count created."""
        argv = ["ethtool", "-L", ifname]
        for name, value in (("combined", combined), ("rx", rx), ("tx", tx)):
            if value is not None:
                argv += [name, str(value)]
        self.run(ns, argv)

    def set_rps(self, ns, ifname, cpu_mask, queue=0):
        """Steer receive processing of rx queue `queue` to the CPUs in hex mask `cpu_mask` (0 = off)."""
        self.write_file(ns, f"/sys/class/net/{ifname}/queues/rx-{queue}/rps_cpus", f"{cpu_mask:x}")

    def write_file(self, ns, path, text):
        """Write `text` to a /proc or /sys file as seen from inside `ns`."""
        self.run(ns, ["sh", "-c", f"printf %s {shlex.quote(text)} > {shlex.quote(path)}"])

    # -- commands -------------------------------------------------------------------------
    def _argv(self, ns, cmd, cpu=None):
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        return ["ip", "netns", "exec", ns] + argv

    def run(self, ns, cmd, check=True, timeout=60, cpu=None, input=None):
        """Run `cmd` (str or list) inside `ns` and wait; returns CompletedProcess (text).

        check=True raises LabError with the command's stderr on a non-zero exit."""
        return _run_host(self._argv(ns, cmd, cpu), check=check, timeout=timeout, input=input)

    def popen(self, ns, cmd, cpu=None, **kwargs):
        """Start `cmd` inside `ns` in its own process group; stopped by teardown() or stop()."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(self._argv(ns, cmd, cpu), start_new_session=True, **kwargs)
        self._processes.append(proc)
        return proc

    def stop(self, proc, timeout=3.0):
        """SIGTERM the process group of `proc`, SIGKILL after `timeout`; returns a CompletedProcess
        with its exit code and whatever it printed (when started with pipes)."""
        return _stop_process(proc, timeout)

    def ping(self, ns, address, count=1, timeout=2.0):
        """True when `address` answers one of `count` ICMP echoes sent from `ns` (no ping binary needed)."""
        proc = self.run(ns, [sys.executable, "-c", _ICMP_ECHO_SCRIPT, address, str(count), str(timeout)],
                        check=False, timeout=count * timeout + 10)
        return proc.returncode == 0


# Sends ICMP echo requests from a raw socket and exits 0 at the first matching reply.
_ICMP_ECHO_SCRIPT = r"""
import os, select, socket, struct, sys, time
address, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
for seq in range(count):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"xskproxy-lab"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    sock.sendto(body, (address, 0))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        packet, peer = sock.recvfrom(2048)
        icmp = packet[(packet[0] & 15) * 4:]
        if peer[0] == address and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            sys.exit(0)
sys.exit(1)
"""


def _stop_process(proc, timeout=3.0):
    """Stop `proc` (SIGTERM to its group, SIGKILL after `timeout`) and collect what it printed."""
    out = err = None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            out, err = proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
        except ValueError:  # streams already closed by an earlier stop
            proc.wait(wait)
            break
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


@atexit.register
def _teardown_live_labs():
    for lab in list(_LIVE_LABS):
        lab.teardown()


# ---- topologies ----------------------------------------------------------------------------

@dataclass
class ForwarderLab:
    """client ns --veth-- node ns (transport, gateway) --veth-- pods ns."""
    lab: Lab
    client: str            # namespace names
    node: str
    pods: str
    client_if: Iface       # client's end of the transport link
    transport: Iface       # node's transport interface
    gateway: Iface         # node's gateway interface (towards the Pods)
    pod_if: Iface          # the Pod's interface

    @property
    def namespaces(self):
        return [self.client, self.node, self.pods]


BRIDGE_POD_PORT = "p0"   # forwarder_lab(gateway="bridge"): the Pod's veth peer, a port of gw0


def forwarder_lab(lab, queues=1, ip_forward=True, static_neighbours=True, mtu=None, tag="",
                  transport_net="10.0.0.0/24", pod_net="10.244.0.0/24",
                  client_features=None, pod_features=None, node_features=None, gateway="veth"):
    """Build client --(eth0|tr0)-- node --(gw0|eth0)-- pods on `lab`; returns a ForwarderLab.

    gateway="bridge": gw0 is a Linux bridge in the node namespace (as cluster_lab's), the Pod's
    veth peer BRIDGE_POD_PORT enslaved to it.

    Addresses: node .1 and client .100 on transport_net; gateway .1 and Pod .2 on pod_net. Client
    and Pod route everything through the node. `queues` sets numtxqueues/numrxqueues on both
    node links. static_neighbours adds permanent ARP entries everywhere, so a forwarder finds
    next-hop MACs without the kernel having forwarded anything. *_features go to ethtool -K
    (client_features to client eth0, pod_features to the Pod's eth0, node_features to tr0 and gw0).
    `tag` prefixes the namespace roles, so that two topologies can share one Lab."""
    tnet, pnet = ipaddress.ip_network(transport_net), ipaddress.ip_network(pod_net)
    node_ip, client_ip = str(tnet[1]), str(tnet[100])
    gw_ip, pod_ip = str(pnet[1]), str(pnet[2])
    client, node, pods = (lab.add_namespace(tag + role) for role in ("client", "node", "pods"))
    lab.add_veth(client, "eth0", node, "tr0", queues=queues, mtu=mtu)
    if gateway == "bridge":
        _add_gateway_bridge(lab, node, "gw0", queues=queues, mtu=mtu)
        lab.add_veth(pods, "eth0", node, BRIDGE_POD_PORT, queues=queues, mtu=mtu)
        lab.ip(node, f"link set dev {BRIDGE_POD_PORT} master gw0")
    elif gateway == "veth":
        lab.add_veth(node, "gw0", pods, "eth0", queues=queues, mtu=mtu)
    else:
        raise ValueError(f"gateway: {gateway!r} is not one of {', '.join(GATEWAY_KINDS)}")
    lab.add_address(client, "eth0", f"{client_ip}/{tnet.prefixlen}")
    lab.add_address(node, "tr0", f"{node_ip}/{tnet.prefixlen}")
    lab.add_address(node, "gw0", f"{gw_ip}/{pnet.prefixlen}")
    lab.add_address(pods, "eth0", f"{pod_ip}/{pnet.prefixlen}")
    lab.add_route(client, "default", via=node_ip)
    lab.add_route(pods, "default", via=gw_ip)
    lab.sysctl(node, "net.ipv4.ip_forward", 1 if ip_forward else 0)
    topo = ForwarderLab(lab=lab, client=client, node=node, pods=pods,
                        client_if=lab.iface(client, "eth0"), transport=lab.iface(node, "tr0"),
                        gateway=lab.iface(node, "gw0"), pod_if=lab.iface(pods, "eth0"))
    if static_neighbours:
        lab.set_neighbour(client, "eth0", node_ip, topo.transport.mac)
        lab.set_neighbour(node, "tr0", client_ip, topo.client_if.mac)
        lab.set_neighbour(node, "gw0", pod_ip, topo.pod_if.mac)
        lab.set_neighbour(pods, "eth0", gw_ip, topo.gateway.mac)
    for ns, ifnames, features in ((client, ["eth0"], client_features), (pods, ["eth0"], pod_features),
                                  (node, ["tr0", "gw0"], node_features)):
        for ifname in ifnames if features else []:
            lab.ethtool_features(ns, ifname, **features)
    return topo


@dataclass
class Pod:
    name: str              # e.g. "node0-pod1"
    ns: str
    iface: Iface           # the Pod's eth0


@dataclass
class Node:
    name: str              # the Kubernetes Node name, e.g. "node0"
    ns: str
    transport: Iface       # on the shared segment
    gateway: Iface         # towards this node's Pods
    pod_cidr: str
    pods: list = field(default_factory=list)

    @property
    def ip(self):
        return self.transport.ip


@dataclass
class ClusterLab:
    """Nodes whose transports share one segment (a bridge in its own namespace), each with Pods
    behind its gateway (a veth to a bridge in a per-node switch namespace, or the node's own
    bridge device: see cluster_lab's `gateway`), noEncap routes between them and an external
    client on the segment."""
    lab: Lab
    segment: str           # namespace holding bridge br0 (the shared L2 segment)
    client: str            # external client namespace
    client_if: Iface
    nodes: list

    @property
    def pods(self):
        return [pod for node in self.nodes for pod in node.pods]

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    @property
    def namespaces(self):
        return self.lab.namespaces


GATEWAY_KINDS = ("veth", "bridge")   # cluster_lab's gateway: a veth to a switch, or the switch's own bridge


def _add_gateway_bridge(lab, ns, name, queues=1, mtu=None):
    """A Linux bridge `name` in `ns` as a node's gateway: MAC pinned, bridged frames past iptables."""
    q = ["numtxqueues", str(queues), "numrxqueues", str(queues)]
    lab.ip(ns, ["link", "add", name, *q, "type", "bridge"])
    mac = json.loads(lab.ip(ns, ["-j", "link", "show", "dev", name]))[0]["address"]
    lab.ip(ns, ["link", "set", "dev", name, "address", mac])      # set, not random: it stays
    if mtu:
        lab.ip(ns, f"link set dev {name} mtu {mtu}")
    for family in ("iptables", "ip6tables", "arptables"):
        lab.sysctl(ns, f"net.bridge.bridge-nf-call-{family}", 0)
    lab.ip(ns, f"link set dev {name} up")


def cluster_lab(lab, nodes=2, pods_per_node=2, queues=1, ip_forward=True, mtu=None, tag="",
                segment_net="172.18.0.0/24", pod_supernet="10.244.0.0/16",
                pod_features=None, client_features=None, gateway="veth"):
    """Build a noEncap cluster on `lab`; returns a ClusterLab.

    Node i: namespace `node<i>`, transport tr0 = segment .(11+i), gateway gw0 = 10.244.i.1/24 to a
    switch namespace (bridge br0) holding the Pods' veths; Pod j of node i: 10.244.i.(2+j), eth0,
    default route via the gateway. Each node routes every other node's podCIDR via that node's
    IP (noEncap). The client (segment .100) reaches nodes directly and has no Pod routes.
    `tag` prefixes the namespace roles, so that two topologies can share one Lab.

    gateway="bridge": gw0 is instead a Linux bridge device in the node namespace, the node's L3
    port to its Pods as antrea-gw0 is (an OVS internal port; neither has native XDP, so an agent
    serving gw0 attaches in generic mode); Pod j's veth peer p<j> sits in the node namespace,
    enslaved to gw0, and there is no switch namespace. gw0's MAC is pinned (a bridge otherwise
    takes its ports' lowest MAC as they join) and bridged frames skip iptables
    (bridge-nf-call-*=0 in the node namespace: OVS has no br_netfilter, and with it kube-proxy
    rules would DNAT a Pod's Service traffic before any XDP program on gw0 sees it).
    `mtu` applies to every link: segment, gateway, Pods (the bridges follow their ports)."""
    if not 1 <= nodes <= 8 or not 0 <= pods_per_node <= 50:
        raise ValueError(f"cluster_lab: nodes={nodes} must be 1..8 and pods_per_node={pods_per_node} 0..50")
    if gateway not in GATEWAY_KINDS:
        raise ValueError(f"cluster_lab: gateway={gateway!r} is not one of {', '.join(GATEWAY_KINDS)}")
    snet = ipaddress.ip_network(segment_net)
    pod_cidrs = list(ipaddress.ip_network(pod_supernet).subnets(new_prefix=24))
    segment = lab.add_namespace(tag + "seg")
    lab.ip(segment, "link add br0 type bridge")
    lab.ip(segment, "link set br0 up")

    def attach_to_segment(ns, ifname, port):
        lab.add_veth(ns, ifname, segment, port, queues=queues, mtu=mtu)
        lab.ip(segment, f"link set dev {port} master br0")

    client = lab.add_namespace(tag + "client")
    attach_to_segment(client, "eth0", "client")
    lab.add_address(client, "eth0", f"{snet[100]}/{snet.prefixlen}")
    built = []
    for i in range(nodes):
        name = f"node{i}"
        ns = lab.add_namespace(tag + name)
        attach_to_segment(ns, "tr0", name)
        lab.add_address(ns, "tr0", f"{snet[11 + i]}/{snet.prefixlen}")
        cidr = pod_cidrs[i]
        if gateway == "bridge":
            switch, switch_bridge = ns, "gw0"
            _add_gateway_bridge(lab, ns, "gw0", queues=queues, mtu=mtu)
        else:
            switch, switch_bridge = lab.add_namespace(f"{tag}{name}sw"), "br0"
            lab.ip(switch, "link add br0 type bridge")
            lab.ip(switch, "link set br0 up")
            lab.add_veth(ns, "gw0", switch, "gw", queues=queues, mtu=mtu)
            lab.ip(switch, "link set dev gw master br0")
        lab.add_address(ns, "gw0", f"{cidr[1]}/{cidr.prefixlen}")
        lab.sysctl(ns, "net.ipv4.ip_forward", 1 if ip_forward else 0)
        node = Node(name=name, ns=ns, transport=lab.iface(ns, "tr0"), gateway=lab.iface(ns, "gw0"),
                    pod_cidr=str(cidr))
        for j in range(pods_per_node):
            pod_ns = lab.add_namespace(f"{tag}{name}pod{j}")
            lab.add_veth(pod_ns, "eth0", switch, f"p{j}", mtu=mtu)
            lab.ip(switch, f"link set dev p{j} master {switch_bridge}")
            lab.add_address(pod_ns, "eth0", f"{cidr[2 + j]}/{cidr.prefixlen}")
            lab.add_route(pod_ns, "default", via=str(cidr[1]))
            if pod_features:
                lab.ethtool_features(pod_ns, "eth0", **pod_features)
            node.pods.append(Pod(name=f"{name}-pod{j}", ns=pod_ns, iface=lab.iface(pod_ns, "eth0")))
        built.append(node)
    for node in built:
        for other in built:
            if other is not node:
                lab.add_route(node.ns, other.pod_cidr, via=other.ip, dev="tr0")
    if client_features:
        lab.ethtool_features(client, "eth0", **client_features)
    return ClusterLab(lab=lab, segment=segment, client=client, client_if=lab.iface(client, "eth0"),
                      nodes=built)
