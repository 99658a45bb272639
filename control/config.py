"""The agent's configuration: one YAML file parsed into frozen dataclasses, with defaults.

Proxy keys mirror antrea-agent.conf under `antreaProxy:`; the rest are xskproxy's own. Every
error names the full field path and the bad value (shortened, with its length, when long);
unknown and duplicate keys are errors, never ignored. The file is read bounded
(control._safe_yaml: size cap, no alias bomb).
"""
import ipaddress
import os
import socket
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import yaml

from control import _safe_yaml
from control._safe_yaml import short

LOAD_BALANCER_MODES = ("nat", "dsr")
SOURCES = ("files", "kube")
LOG_LEVELS = ("debug", "info", "warning", "error")
XDP_MODES = ("auto", "native", "skb", "upcall")
CONNTRACK_ENTRIES_DEFAULT = 1 << 20
MAX_CONFIG_BYTES = 1 << 20       # a configuration file is a few hundred bytes
FLOW_ENTRIES_DEFAULT = 1 << 18


class ConfigError(ValueError):
    """A configuration value is wrong; `path` is the dotted field path ("" for the file)."""

    def __init__(self, path, message):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def _key(yaml_name, default, check=None, doc=""):
    """A config field: its YAML key, default and a validator (value, path) -> parsed value."""
    return field(default=default, metadata={"yaml": yaml_name, "check": check, "doc": doc})


# --- validators: each takes (value, path) and returns the parsed value or raises ConfigError ---

def _bool(value, path):
    if not isinstance(value, bool):
        raise ConfigError(path, f"{short(value)} is not a boolean (true or false)")
    return value


def _int_between(lo, hi):
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"{short(value)} is not an integer")
        if not lo <= value <= hi:
            raise ConfigError(path, f"{short(value)} is not between {lo} and {hi}")
        return value
    return check


def _int_between_or_auto(lo, hi):
    as_int = _int_between(lo, hi)

    def check(value, path):
        return value if value == "auto" else as_int(value, path)
    return check


def _one_of(choices):
    def check(value, path):
        if value not in choices:
            raise ConfigError(path, f"{short(value)} is not one of {', '.join(choices)}")
        return value
    return check


def _string(allow_empty=True):
    def check(value, path):
        if not isinstance(value, str):
            raise ConfigError(path, f"{short(value)} is not a string")
        if not allow_empty and not value:
            raise ConfigError(path, "must not be empty")
        return value
    return check


def _optional_string(value, path):
    if value is None:
        return None
    return _string()(value, path)


def _string_list(item_check=None):
    def check(value, path):
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(path, f"{short(value)} is not a list")
        out = []
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if not isinstance(item, str):
                raise ConfigError(item_path, f"{short(item)} is not a string")
            out.append(item_check(item, item_path) if item_check else item)
        return tuple(out)
    return check


def _cidr(value, path):
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ConfigError(path, f"{short(value)} is not a CIDR (e.g. 10.0.0.0/24)") from None


def _skip_service(value, path):
    """Antrea's skipServices entries: "namespace/name" or a ClusterIP address."""
    if "/" in value:
        namespace, _, name = value.partition("/")
        if namespace and name and "/" not in name:
            return value
        raise ConfigError(path, f"{short(value)} is neither namespace/name nor an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(path, f"{short(value)} is neither namespace/name nor an IP address") from None


def _host_port(value, path):
    """host:port on which to serve metrics; "" disables the endpoint."""
    if not isinstance(value, str):
        raise ConfigError(path, f"{short(value)} is not a string (host:port)")
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(path, f"{short(value)} is not host:port with a port in 1..65535")
    return value


def _port_range(value, path):
    """"lo-hi", both in 1024..65535, lo <= hi; returned as the tuple (lo, hi)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, str) and value.count("-") == 1:
        lo, hi = (p.strip() for p in value.split("-"))
        if not (lo.isdigit() and hi.isdigit()):
            raise ConfigError(path, f"{short(value)} is not a port range lo-hi")
        lo, hi = int(lo), int(hi)
    else:
        raise ConfigError(path, f"{short(value)} is not a port range lo-hi")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1024 <= lo <= hi <= 65535):
        raise ConfigError(path, f"{short(value)} is not a port range lo-hi within 1024..65535")
    return (lo, hi)


LOCAL_PORT_RANGE_SYSCTL = "/proc/sys/net/ipv4/ip_local_port_range"


def read_local_port_range(path=LOCAL_PORT_RANGE_SYSCTL):
    """net.ipv4.ip_local_port_range of the calling thread's network namespace, as (lo, hi)."""
    with open(path) as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


def check_snat_port_range(snat_range, local_range):
    """Refuse a snatPortRange that overlaps net.ipv4.ip_local_port_range: the steering program
    takes every packet to a node address + SNAT port, so the node's own outgoing connections
    with an ephemeral port in the range would lose their replies (XSKP_DROP_NOT_OURS). Refused
    rather than reserved through net.ipv4.ip_local_reserved_ports: that sysctl is host-wide and
    shared with other software, only autobind honours it (not an explicit bind, not the kernel's
    NAT), and a crashed agent could not give it back."""
    lo, hi = snat_range
    local_lo, local_hi = local_range
    if lo <= local_hi and local_lo <= hi:
        raise ConfigError("snatPortRange",
                          f"{lo}-{hi} overlaps net.ipv4.ip_local_port_range {local_lo}-{local_hi} "
                          "(the node's own connections would lose their replies); choose a range "
                          "outside it or narrow the sysctl")


@dataclass(frozen=True)
class AntreaProxyConfig:
    """The keys of antrea-agent.conf's `antreaProxy:` section that xskproxy honours."""
    proxy_all: bool = _key("proxyAll", False, _bool,
                           "also proxy NodePort/LB/externalIP traffic, not only ClusterIP")
    skip_services: tuple = _key("skipServices", (), _string_list(_skip_service),
                                "namespace/name or ClusterIP entries left to the kernel")
    proxy_load_balancer_ips: bool = _key("proxyLoadBalancerIPs", True, _bool,
                                         "false: LoadBalancer ingress IPs go to the kernel")
    default_load_balancer_mode: str = _key("defaultLoadBalancerMode", "nat",
                                           _one_of(LOAD_BALANCER_MODES),
                                           "nat or dsr, overridden per Service by annotation")
    node_port_addresses: tuple = _key("nodePortAddresses", (), _string_list(_cidr),
                                      "CIDRs selecting the node addresses serving NodePorts; "
                                      "empty: all")


@dataclass(frozen=True)
class TableSizes:
    """Capacities of the dataplane's fixed-size tables (entries)."""
    conntrack_entries: int = _key("conntrackEntries", CONNTRACK_ENTRIES_DEFAULT,
                                  _int_between(1024, 1 << 28))
    affinity_entries: int = _key("affinityEntries", 1 << 18, _int_between(1024, 1 << 28))
    max_services: int = _key("maxServices", 1 << 18, _int_between(1, 1 << 22),
                             "frontends (address, port, protocol) across all Services: each "
                             "ClusterIP, externalIP and LoadBalancer IP of each Service port, a "
                             "NodePort once; a cluster state with more is not published")
    max_backends: int = _key("maxBackends", 1 << 19, _int_between(1, 1 << 24),
                             "backends across all Services: each IPv4 endpoint of each port of "
                             "each EndpointSlice; a cluster state with more is not published")
    flow_entries: int = _key("flowEntries", FLOW_ENTRIES_DEFAULT, _int_between(1024, 1 << 26),
                             "the kernel fast path's flow table (one entry per direction of an "
                             "offloaded flow), rounded up to a power of two")

    def refuse_excess(self, cluster):
        """Raise ConfigError naming maxServices or maxBackends when the ClusterState `cluster`
        needs more than they allow. Counted on the state, before translation (a refused state
        leaves the translator and the published tables as they were), as upper bounds of what
        translate makes: skipped Services count, an endpoint of two Services counts twice.
        O(Services + EndpointSlices)."""
        frontends = 0
        for service in cluster.services.values():
            addresses = len(service.cluster_ips) + len(service.external_ips) + len(service.load_balancer_ips)
            frontends += sum(addresses + (1 if port.node_port else 0) for port in service.ports)
        if frontends > self.max_services:
            raise ConfigError("tables.maxServices", f"the cluster state has {frontends} frontends "
                              f"(each ClusterIP, externalIP and LoadBalancer IP of each Service "
                              f"port, a NodePort once), more than {self.max_services}: not published")
        backends = sum(len(s.endpoints) * max(1, len(s.ports)) for s in cluster.endpoint_slices.values()
                       if s.address_type == "IPv4")
        if backends > self.max_backends:
            raise ConfigError("tables.maxBackends", f"the cluster state has {backends} backends "
                              f"(each endpoint of each port of each IPv4 EndpointSlice), more than "
                              f"{self.max_backends}: not published")


@dataclass(frozen=True)
class Config:
    node_name: str = _key("nodeName", "", _string(),
                          "this Node's name; empty: the NODE_NAME environment variable (the DaemonSet "
                          "sets it from spec.nodeName), else the host name in lower case")
    transport_interface: str = _key("transportInterface", "", _string(),
                                    "interface to other Nodes and external clients")
    gateway_interface: str = _key("gatewayInterface", "", _string(),
                                  "interface to this Node's Pods")
    queues: object = _key("queues", "auto", _int_between_or_auto(1, 256),
                          "workers (auto: one per receive queue of the served interfaces, at most one per "
                          "CPU); in upcall mode tc serves every queue and spreads flows over the workers")
    source: str = _key("source", "files", _one_of(SOURCES), "where Services come from")
    manifest_path: str = _key("manifestPath", "/etc/xskproxy/manifests", _string(),
                              "file or directory of YAML manifests (source: files)")
    kubeconfig: Optional[str] = _key("kubeconfig", None, _optional_string,
                                     "kubeconfig file (source: kube); unset: in-cluster config")
    metrics_address: str = _key("metricsAddress", "127.0.0.1:9847", _host_port,
                                "Prometheus endpoint host:port; empty: disabled")
    healthz_bind_address: str = _key("healthzBindAddress", "0.0.0.0:10256", _host_port,
                                     "kube-proxy's node health endpoint host:port (/healthz, /livez: "
                                     "200 while the dataplane forwards); empty: disabled")
    state_dir: str = _key("stateDir", "/run/xskproxy", _string(allow_empty=False),
                          "memory-mapped per-flow tables that outlive the process")
    snat_port_range: tuple = _key("snatPortRange", (61000, 65535), _port_range,
                                  "source ports used for SNAT to the node address; keep it "
                                  "outside net.ipv4.ip_local_port_range")
    handover_seconds: int = _key("handoverSeconds", 10, _int_between(0, 600),
                                 "on SIGTERM, how long the XDP program stays attached and drops "
                                 "translated traffic it has no socket for, so that the next agent "
                                 "takes over live flows; 0: detach at once (SIGINT always does)")
    flow_offload: bool = _key("flowOffload", True, _bool,
                              "established flows and the Pod-CIDR bypass run in the kernel fast "
                              "path (tc eBPF), decided by the userspace engine; false: every "
                              "packet through AF_XDP")
    xdp_mode: str = _key("xdpMode", "auto", _one_of(XDP_MODES),
                         "how packets reach userspace: native or skb (generic) XDP on the "
                         "interfaces, or upcall (no XDP there: the tc fast path sends what "
                         "userspace takes through a veth pair with native XDP; needs "
                         "flowOffload); auto: upcall on virtual interfaces (veth, bridge, OVS "
                         "internal port) with flowOffload, else native where the driver has "
                         "it, falling back to skb")
    log_level: str = _key("logLevel", "info", _one_of(LOG_LEVELS))
    tables: TableSizes = _key("tables", TableSizes())
    antrea_proxy: AntreaProxyConfig = _key("antreaProxy", AntreaProxyConfig())


def _parse_section(cls, data, path):
    """Build dataclass `cls` from mapping `data` whose keys are the fields' YAML names."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path or "", f"{short(data)} is not a mapping")
    by_yaml = {f.metadata["yaml"]: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        name = key if isinstance(key, str) and len(key) <= 80 else short(key, 40)
        key_path = f"{path}.{name}" if path else name
        f = by_yaml.get(key)
        if f is None:
            raise ConfigError(key_path, f"unknown key (known: {', '.join(sorted(by_yaml))})")
        if isinstance(f.default, (TableSizes, AntreaProxyConfig)):
            values[f.name] = _parse_section(type(f.default), value, key_path)
        else:
            values[f.name] = f.metadata["check"](value, key_path)
    return cls(**values)


def parse_config(data):
    """Config from a parsed YAML mapping (None or {} gives all defaults)."""
    config = _parse_section(Config, data, "")
    if config.xdp_mode == "upcall" and not config.flow_offload:
        raise ConfigError("xdpMode", "upcall needs flowOffload: true (the tc fast path makes the "
                          "upcalls)")
    return config


def load_config(path):
    """Config from the YAML file at `path`; errors name the file and the field."""
    try:
        with open(path, "rb") as f:
            data = _safe_yaml.load(_safe_yaml.read_capped(f, MAX_CONFIG_BYTES, "the file"))
    except OSError as e:
        raise ConfigError("", f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path}: not valid YAML: {e}") from None
    except _safe_yaml.YamlRefused as e:
        raise ConfigError("", f"{path}: refused: {e}") from None
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(e.path, f"{e.message} (in {path})") from None


def with_node_name(config, environ=None, hostname=None):
    """config with an empty nodeName filled in as kube-proxy and Antrea's agent do in a DaemonSet:
    from NODE_NAME (deploy/daemonset.yaml sets it to the Pod's spec.nodeName), else the host
    name in lower case."""
    if config.node_name:
        return config
    environ = os.environ if environ is None else environ
    name = environ.get("NODE_NAME", "").strip() or (hostname or socket.gethostname()).strip().lower()
    return replace(config, node_name=name)


def config_to_dict(config):
    """The YAML mapping that parse_config would turn back into `config` (for dumps and docs)."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, (TableSizes, AntreaProxyConfig)):
            value = config_to_dict(value)
        elif f.name == "snat_port_range":
            value = f"{value[0]}-{value[1]}"
        elif isinstance(value, tuple):
            value = list(value)
        out[f.metadata["yaml"]] = value
    return out
