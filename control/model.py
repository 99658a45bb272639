"""The cluster as xskproxy sees it: plain, immutable dataclasses, no Kubernetes types.

Sources (Kubernetes informers, manifest files) produce these; translate turns them into tables.
Equality is by value, so an unchanged Service compares equal and is not rebuilt.
"""
from dataclasses import dataclass, field
from typing import Optional

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
TRAFFIC_POLICIES = ("Cluster", "Local")
LOAD_BALANCER_MODES = ("nat", "dsr")
LOAD_BALANCER_MODE_ANNOTATION = "service.antrea.io/load-balancer-mode"
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
# kube-proxy lists and watches only Services and EndpointSlices carrying neither label (any
# value, "" included): another proxy owns the first kind, the second is a headless Service's.
PROXY_IGNORED_LABELS = (SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL)
PROXY_LABEL_SELECTOR = ",".join("!" + label for label in PROXY_IGNORED_LABELS)
LB_IP_MODES = ("VIP", "Proxy")        # status.loadBalancer.ingress[].ipMode
AFFINITY_TIMEOUT_DEFAULT = 10800      # seconds, Kubernetes' default for ClientIP affinity
AFFINITY_TIMEOUT_MAX = 86400          # seconds, Kubernetes' upper bound


@dataclass(frozen=True)
class ServicePort:
    name: str                         # "" for a single unnamed port
    protocol: str                     # one of PROTOCOLS
    port: int                         # the frontend port on ClusterIP / LB IP / externalIP
    target_port: object = None        # int, a named port (str), or None (= port)
    node_port: int = 0                # 0: none


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple = ()           # "None" (headless) is dropped by the source: empty tuple
    ports: tuple = ()                 # of ServicePort
    external_ips: tuple = ()
    load_balancer_ips: tuple = ()     # status.loadBalancer.ingress[].ip with ipMode VIP (or none)
    load_balancer_source_ranges: tuple = ()   # CIDR strings; empty: everyone
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"    # "None" or "ClientIP"
    affinity_timeout_seconds: int = 0  # for ClientIP: 1..86400 (default 10800)
    load_balancer_mode: Optional[str] = None  # from the annotation; None: the configured default
    service_proxy_name: Optional[str] = None  # the label's value ("" too): another proxy owns it
    headless_label: bool = False      # label service.kubernetes.io/headless set (any value)
    load_balancer_proxy_ips: tuple = ()  # ingress IPs with ipMode Proxy: the LB's, never ours
    traffic_distribution: Optional[str] = None  # spec.trafficDistribution, as given
    health_check_node_port: int = 0   # spec.healthCheckNodePort (LoadBalancer, ETP Local); 0: none
    labels: tuple = ()                # sorted (key, value) pairs, informational

    @property
    def key(self):
        return (self.namespace, self.name)


@dataclass(frozen=True)
class EndpointPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple                  # usually one address
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: Optional[str] = None
    zone: Optional[str] = None
    hint_zones: tuple = ()            # hints.forZones[].name
    hint_nodes: tuple = ()            # hints.forNodes[].name


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str                 # label kubernetes.io/service-name
    address_type: str = "IPv4"        # IPv4, IPv6, FQDN (ignored)
    endpoints: tuple = ()             # of Endpoint
    ports: tuple = ()                 # of EndpointPort
    proxy_ignored_label: Optional[str] = None  # one of PROXY_IGNORED_LABELS it carries: unused
    last_change_trigger_time: Optional[float] = None  # Unix seconds of the annotation
                                      # endpoints.kubernetes.io/last-change-trigger-time; None: absent

    @property
    def key(self):
        return (self.namespace, self.name)

    @property
    def service_key(self):
        return (self.namespace, self.service_name)


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple = ()             # (type, address) pairs: ("InternalIP", "10.0.0.1"), ...
    pod_cidrs: tuple = ()             # spec.podCIDRs
    zone: Optional[str] = None        # label topology.kubernetes.io/zone (kube-proxy reads no other)
    labels: tuple = ()                # sorted (key, value) pairs
    to_be_deleted: bool = False       # metadata.deletionTimestamp set, or tainted
                                      # ToBeDeletedByClusterAutoscaler: kube-proxy's /healthz fails

    def internal_ips(self):
        return tuple(a for t, a in self.addresses if t == "InternalIP")


@dataclass(frozen=True)
class ClusterState:
    """One consistent snapshot: what a source has seen so far. Dicts keyed by .key / name."""
    services: dict = field(default_factory=dict)          # (ns, name) -> Service
    endpoint_slices: dict = field(default_factory=dict)   # (ns, name) -> EndpointSlice
    nodes: dict = field(default_factory=dict)             # name -> Node

    def slices_of(self, service_key):
        return [s for s in self.endpoint_slices.values() if s.service_key == service_key]
