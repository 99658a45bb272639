"""Kubernetes objects (dicts as `kubectl get -o yaml` prints them, or the client's models) -> model.

Shared by the Kubernetes and the manifest-file source: client models are first turned into dicts
with ApiClient().sanitize_for_serialization, so there is one code path. Never returns a
Kubernetes type; a bad object raises ManifestError naming the field path and the value.
"""
import dataclasses
import datetime
import ipaddress
import socket

from control.model import (
    AFFINITY_TIMEOUT_DEFAULT, AFFINITY_TIMEOUT_MAX, HEADLESS_LABEL, LB_IP_MODES, LOAD_BALANCER_MODE_ANNOTATION,
    LOAD_BALANCER_MODES, PROTOCOLS, PROXY_IGNORED_LABELS, SERVICE_PROXY_NAME_LABEL, SERVICE_TYPES,
    TRAFFIC_POLICIES,
    ClusterState, Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"   # the cluster autoscaler's, before it deletes a node
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
ZONE_LABEL = "topology.kubernetes.io/zone"   # kube-proxy's only source of the node's zone
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
KINDS = ("Service", "EndpointSlice", "Node")


class ManifestError(ValueError):
    """An object is malformed: `field` is its path inside the object, `where` says which object
    (file, document index, kind and name) when known."""

    def __init__(self, field, message, where=""):
        self.field = field
        self.message = message
        self.where = where
        text = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {text}" if where else text)

    def located(self, where):
        """The same error, told where the object came from."""
        return ManifestError(self.field, self.message, where)


_api_client = None


def to_dict(obj):
    """A plain dict for a Kubernetes client model (or a dict, returned as it is)."""
    if isinstance(obj, dict):
        return obj
    global _api_client
    if _api_client is None:
        from kubernetes.client import ApiClient  # imported lazily: the file source needs no client
        _api_client = ApiClient()
    return _api_client.sanitize_for_serialization(obj)


# --- small typed readers: each names the path it reads when the value is wrong ---

def _mapping(value, path):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(path, f"{_short(value)} is not a mapping")
    return value


def _list(value, path):
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(path, f"{_short(value)} is not a list")
    return value


def _str(value, path, required=False, default=""):
    if value is None or value == "":
        if required:
            raise ManifestError(path, "is required")
        return default
    if not isinstance(value, str):
        raise ManifestError(path, f"{_short(value)} is not a string")
    return value


def _int(value, path, lo, hi, default=None):
    if value is None:
        if default is None:
            raise ManifestError(path, "is required")
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(path, f"{_short(value)} is not an integer")
    if not lo <= value <= hi:
        raise ManifestError(path, f"{value!r} is not between {lo} and {hi}")
    return value


def _bool(value, path, default):
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ManifestError(path, f"{_short(value)} is not a boolean")
    return value


def _choice(value, path, choices, default):
    if value is None or value == "":
        return default
    if value not in choices:
        raise ManifestError(path, f"{_short(value)} is not one of {', '.join(choices)}")
    return value


def _ip(value, path):
    if not isinstance(value, str):
        raise ManifestError(path, f"{_short(value)} is not an IP address")
    if "." in value and ":" not in value:
        try:
            socket.inet_pton(socket.AF_INET, value)      # strict dotted quad: already canonical
            return value
        except OSError:
            pass                                          # let ipaddress decide and explain
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ManifestError(path, f"{value!r} is not an IP address") from None


def _cidr(value, path):
    if not isinstance(value, str):
        raise ManifestError(path, f"{_short(value)} is not a CIDR")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ManifestError(path, f"{value!r} is not a CIDR") from None


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _labels(meta, path):
    labels = _mapping(meta.get("labels"), path + ".labels")
    for k, v in labels.items():
        if not isinstance(v, str):
            raise ManifestError(f"{path}.labels[{k!r}]", f"{_short(v)} is not a string")
    return labels


def _name_namespace(obj, namespaced):
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _str(meta.get("name"), "metadata.name", required=True)
    namespace = _str(meta.get("namespace"), "metadata.namespace", default="default") if namespaced else ""
    return meta, name, namespace


# --- Service ---

def _service_port(port, path, many):
    port = _mapping(port, path)
    name = _str(port.get("name"), path + ".name")
    if many and not name:
        raise ManifestError(path + ".name", "is required when a Service has several ports")
    target = port.get("targetPort")
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if isinstance(target, bool) or not (target is None or isinstance(target, (int, str))):
        raise ManifestError(path + ".targetPort", f"{_short(target)} is not a port number or name")
    if isinstance(target, int):
        _int(target, path + ".targetPort", 1, 65535)
    return ServicePort(
        name=name,
        protocol=_choice(port.get("protocol"), path + ".protocol", PROTOCOLS, "TCP"),
        port=_int(port.get("port"), path + ".port", 1, 65535),
        target_port=target if target != "" else None,
        node_port=_int(port.get("nodePort"), path + ".nodePort", 0, 65535, default=0),
    )


def service_from_dict(obj):
    """Service from a v1 Service object (dict or client model)."""
    obj = to_dict(obj)
    meta, name, namespace = _name_namespace(obj, namespaced=True)
    labels = _labels(meta, "metadata")
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    svc_type = _choice(spec.get("type"), "spec.type", SERVICE_TYPES, "ClusterIP")

    cluster_ips = spec.get("clusterIPs")
    ips_path = "spec.clusterIPs"
    if not cluster_ips:
        cluster_ips = [spec["clusterIP"]] if spec.get("clusterIP") else []
        ips_path = "spec.clusterIP"
    cluster_ips = _list(cluster_ips, ips_path)
    if svc_type == "ExternalName" or (cluster_ips and cluster_ips[0] == "None"):
        cluster_ips = ()                                   # headless or ExternalName: no VIP
    else:
        cluster_ips = tuple(_ip(ip, f"{ips_path}[{i}]" if ips_path.endswith("s") else ips_path)
                            for i, ip in enumerate(cluster_ips))

    raw_ports = _list(spec.get("ports"), "spec.ports")
    ports = tuple(_service_port(p, f"spec.ports[{i}]", len(raw_ports) > 1)
                  for i, p in enumerate(raw_ports))

    external_ips = tuple(_ip(ip, f"spec.externalIPs[{i}]")
                         for i, ip in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs")))
    lb = _mapping(status.get("loadBalancer"), "status.loadBalancer")
    lb_ips, lb_proxy_ips = [], []
    for i, ingress in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{i}]"
        ingress = _mapping(ingress, path)
        # ipMode Proxy: the load balancer itself proxies, traffic to its IP must go out to it
        # (kube-proxy's IsVIPMode); VIP, or no ipMode, is delivered to the node as it is.
        mode = _choice(ingress.get("ipMode"), path + ".ipMode", LB_IP_MODES, "VIP")
        if ingress.get("ip"):                              # hostname-only ingress: nothing to proxy
            (lb_ips if mode == "VIP" else lb_proxy_ips).append(_ip(ingress["ip"], path + ".ip"))
    source_ranges = tuple(
        _cidr(c, f"spec.loadBalancerSourceRanges[{i}]")
        for i, c in enumerate(_list(spec.get("loadBalancerSourceRanges"),
                                    "spec.loadBalancerSourceRanges")))

    affinity = _choice(spec.get("sessionAffinity"), "spec.sessionAffinity", ("None", "ClientIP"), "None")
    timeout = 0
    if affinity == "ClientIP":
        client_ip = _mapping(_mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
                             .get("clientIP"), "spec.sessionAffinityConfig.clientIP")
        timeout = _int(client_ip.get("timeoutSeconds"), "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                       1, AFFINITY_TIMEOUT_MAX, default=AFFINITY_TIMEOUT_DEFAULT)

    mode = annotations.get(LOAD_BALANCER_MODE_ANNOTATION)
    if mode is not None:
        mode_path = f"metadata.annotations[{LOAD_BALANCER_MODE_ANNOTATION!r}]"
        mode = _choice(_str(mode, mode_path).lower(), mode_path, LOAD_BALANCER_MODES, None)

    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=ports,
        external_ips=external_ips,
        load_balancer_ips=tuple(lb_ips),
        load_balancer_source_ranges=source_ranges,
        external_traffic_policy=_choice(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy",
                                        TRAFFIC_POLICIES, "Cluster"),
        internal_traffic_policy=_choice(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy",
                                        TRAFFIC_POLICIES, "Cluster"),
        session_affinity=affinity,
        affinity_timeout_seconds=timeout,
        load_balancer_mode=mode,
        service_proxy_name=labels.get(SERVICE_PROXY_NAME_LABEL),     # "" is a value: set
        headless_label=HEADLESS_LABEL in labels,
        load_balancer_proxy_ips=tuple(lb_proxy_ips),
        # Not validated: kube-proxy reads only the hints the EndpointSlice controller derives from it
        traffic_distribution=_str(spec.get("trafficDistribution"), "spec.trafficDistribution", default=None),
        health_check_node_port=_int(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort", 0, 65535,
                                    default=0),
        labels=tuple(sorted(labels.items())),
    )


# --- EndpointSlice ---

_FAMILIES = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6, "FQDN": None}


_FAST_FIELDS = ("addresses", "ready", "serving", "terminating", "node_name", "zone", "hint_zones",
                "hint_nodes")
# The fast path fills an Endpoint's __dict__ directly (a frozen dataclass' __init__ costs ~4 us here,
# a lot at 250,000 endpoints); it is off if the model's fields ever differ from what it writes.
_FAST_ENDPOINT = tuple(f.name for f in dataclasses.fields(Endpoint)) == _FAST_FIELDS
_new_object = object.__new__
_set_attribute = object.__setattr__
_inet_pton = socket.inet_pton


def _endpoint_fast(ep, family):
    """The Endpoint for the common shape (one address, plain conditions, no hints), checked as
    strictly as _endpoint does; None for anything else, which _endpoint then handles or reports."""
    if type(ep) is not dict:
        return None
    addresses = ep.get("addresses")
    if type(addresses) is not list or len(addresses) != 1:
        return None
    address = addresses[0]
    if type(address) is not str or not address:
        return None
    if family is not None:
        try:
            _inet_pton(family, address)
        except OSError:
            return None
    cond = ep.get("conditions")
    if cond is None:
        ready, serving, terminating = True, True, False
    elif type(cond) is dict:
        ready, serving, terminating = cond.get("ready"), cond.get("serving"), cond.get("terminating")
        ready = True if ready is None else ready
        serving = True if serving is None else serving
        terminating = False if terminating is None else terminating
        if type(ready) is not bool or type(serving) is not bool or type(terminating) is not bool:
            return None
    else:
        return None
    node, zone = ep.get("nodeName"), ep.get("zone")
    if (node is not None and type(node) is not str) or (zone is not None and type(zone) is not str) \
            or ep.get("hints"):
        return None
    endpoint = _new_object(Endpoint)
    _set_attribute(endpoint, "__dict__", {
        "addresses": (address,), "ready": ready, "serving": serving, "terminating": terminating,
        "node_name": node or None, "zone": zone or None, "hint_zones": (), "hint_nodes": ()})
    return endpoint


def _endpoint(ep, path, address_type):
    if not isinstance(ep, dict):
        raise ManifestError(path, f"{_short(ep)} is not a mapping")
    addresses = ep.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        raise ManifestError(path + ".addresses", f"{_short(addresses)} is not a non-empty list")
    family = _FAMILIES[address_type]
    for i, a in enumerate(addresses):
        if not isinstance(a, str) or not a:
            raise ManifestError(f"{path}.addresses[{i}]", f"{_short(a)} is not an address")
        if family is not None:
            try:
                socket.inet_pton(family, a)     # ~10x cheaper than ipaddress at 250,000 endpoints
            except OSError:
                raise ManifestError(f"{path}.addresses[{i}]",
                                    f"{a!r} is not an {address_type} address") from None
    cond = ep.get("conditions")
    if cond is None:
        ready = serving = True
        terminating = False
    else:
        cond = _mapping(cond, path + ".conditions")
        # The EndpointSlice API: a nil ready or serving means true, a nil terminating means false.
        ready = _bool(cond.get("ready"), path + ".conditions.ready", True)
        serving = _bool(cond.get("serving"), path + ".conditions.serving", True)
        terminating = _bool(cond.get("terminating"), path + ".conditions.terminating", False)
    hints = ep.get("hints")
    hint_zones = hint_nodes = ()
    if hints:
        hints = _mapping(hints, path + ".hints")
        hint_zones, hint_nodes = (
            tuple(_str(_mapping(h, f"{path}.hints.{key}[{i}]").get("name"),
                       f"{path}.hints.{key}[{i}].name", required=True)
                  for i, h in enumerate(_list(hints.get(key), f"{path}.hints.{key}")))
            for key in ("forZones", "forNodes"))
    return Endpoint(
        addresses=tuple(addresses),
        ready=ready,
        serving=serving,
        terminating=terminating,
        node_name=_str(ep.get("nodeName"), path + ".nodeName", default=None),
        zone=_str(ep.get("zone"), path + ".zone", default=None),
        hint_zones=hint_zones,
        hint_nodes=hint_nodes,
    )


def _endpoint_port(port, path):
    port = _mapping(port, path)
    return EndpointPort(
        name=_str(port.get("name"), path + ".name"),
        protocol=_choice(port.get("protocol"), path + ".protocol", PROTOCOLS, "TCP"),
        port=_int(port.get("port"), path + ".port", 0, 65535, default=0),   # 0: not restricted
    )


def endpoint_slice_from_dict(obj):
    """EndpointSlice from a discovery.k8s.io/v1 EndpointSlice (dict or client model). A slice
    without the kubernetes.io/service-name label gets service_name "" and belongs to no Service."""
    obj = to_dict(obj)
    meta, name, namespace = _name_namespace(obj, namespaced=True)
    labels = _labels(meta, "metadata")
    address_type = _choice(obj.get("addressType"), "addressType", ADDRESS_TYPES, None)
    if address_type is None:
        raise ManifestError("addressType", "is required")
    raw_endpoints = _list(obj.get("endpoints"), "endpoints")
    family = _FAMILIES[address_type]
    endpoints = []
    for i, ep in enumerate(raw_endpoints):
        endpoint = _endpoint_fast(ep, family) if _FAST_ENDPOINT else None
        endpoints.append(endpoint if endpoint is not None else _endpoint(ep, f"endpoints[{i}]", address_type))
    endpoints = tuple(endpoints)
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=labels.get(SERVICE_NAME_LABEL, ""),
        address_type=address_type,
        endpoints=endpoints,
        ports=tuple(_endpoint_port(p, f"ports[{i}]") for i, p in enumerate(_list(obj.get("ports"), "ports"))),
        last_change_trigger_time=_trigger_time(meta),
        proxy_ignored_label=next((label for label in PROXY_IGNORED_LABELS if label in labels), None),
    )


def _trigger_time(meta):
    """The annotation endpoints.kubernetes.io/last-change-trigger-time (RFC 3339, set by the
    EndpointSlice controller) as Unix seconds; None when absent or unreadable (as kube-proxy,
    which then records no network programming latency for the change)."""
    annotations = meta.get("annotations")
    value = annotations.get(TRIGGER_TIME_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:                   # RFC 3339 always has a zone; read none as UTC
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


# --- Node ---

def node_from_dict(obj):
    """Node from a v1 Node object (dict or client model)."""
    obj = to_dict(obj)
    meta, name, _ = _name_namespace(obj, namespaced=False)
    labels = _labels(meta, "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    addresses = []
    for i, a in enumerate(_list(status.get("addresses"), "status.addresses")):
        a = _mapping(a, f"status.addresses[{i}]")
        addr_type = _str(a.get("type"), f"status.addresses[{i}].type", required=True)
        address = _str(a.get("address"), f"status.addresses[{i}].address", required=True)
        if addr_type in ("InternalIP", "ExternalIP"):
            address = _ip(address, f"status.addresses[{i}].address")
        addresses.append((addr_type, address))
    cidrs = spec.get("podCIDRs")
    cidrs_path = "spec.podCIDRs"
    if not cidrs:
        cidrs = [spec["podCIDR"]] if spec.get("podCIDR") else []
        cidrs_path = "spec.podCIDR"
    pod_cidrs = tuple(_cidr(c, f"{cidrs_path}[{i}]" if cidrs_path.endswith("s") else cidrs_path)
                      for i, c in enumerate(_list(cidrs, cidrs_path)))
    zone = labels.get(ZONE_LABEL) or None
    taints = _list(spec.get("taints"), "spec.taints")
    to_be_deleted = bool(meta.get("deletionTimestamp")) or any(
        _mapping(t, f"spec.taints[{i}]").get("key") == TO_BE_DELETED_TAINT for i, t in enumerate(taints))
    return Node(name=name, addresses=tuple(addresses), pod_cidrs=pod_cidrs, zone=zone,
                labels=tuple(sorted(labels.items())), to_be_deleted=to_be_deleted)


CONVERTERS = {"Service": service_from_dict, "EndpointSlice": endpoint_slice_from_dict, "Node": node_from_dict}


def model_from_dict(obj, kind=None):
    """Service, EndpointSlice or Node for an object of that kind (`kind` defaults to obj["kind"])."""
    obj = to_dict(obj)
    kind = kind or obj.get("kind")
    converter = CONVERTERS.get(kind)
    if converter is None:
        raise ManifestError("kind", f"{_short(kind)} is not one of {', '.join(KINDS)}")
    return converter(obj)


def state_from_models(models):
    """ClusterState from an iterable of Service, EndpointSlice and Node (later ones win)."""
    services, slices, nodes = {}, {}, {}
    for m in models:
        if isinstance(m, Service):
            services[m.key] = m
        elif isinstance(m, EndpointSlice):
            slices[m.key] = m
        elif isinstance(m, Node):
            nodes[m.name] = m
    return ClusterState(services=services, endpoint_slices=slices, nodes=nodes)
