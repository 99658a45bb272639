"""What path (f) hands the xskproxy agent: its config mapping and one manifest (`kind: List`) with the
bench's N Services, their EndpointSlices and the bench Node. Pure data; never writes or starts anything.

The Services mirror what (b) and (c) install: Service i answers on service_vip(i):SERVICE_PORT for UDP
(and the measured, last one also for TCP) and is served by the bench Pod at BACKEND_PORT[proto]. The
agent proxies a ClusterIP only for traffic from Pods (gateway side), as Antrea does, while the bench
client is off-node; so service_vip(i) is each Service's externalIP (served from the transport with
proxyAll) and its clusterIP is another address of the Service range the generator never aims at.
"""
import os
import ipaddress

NODE_NAME = "bench-node"
NAMESPACE = "bench"
CLUSTER_IP_OFFSET = 1 << 15   # clusterIP of Service i: this far above service_vip(i) in the Service range


def service_name(index):
    return f"svc-{index}"


def cluster_ip(service_net, vip):
    """The clusterIP the agent's Service i gets: `vip` moved CLUSTER_IP_OFFSET up in `service_net`."""
    net = ipaddress.ip_network(service_net)
    address = ipaddress.ip_address(vip) + CLUSTER_IP_OFFSET
    if address not in net:
        raise ValueError(f"clusterIP for {vip}: {address} is outside {net}")
    return str(address)


def service_objects(index, vip, clusterip, protocols, service_port, backend_ports, backend_ip):
    """(Service, EndpointSlice) of bench Service `index`: one port per protocol in `protocols`
    ("udp", "tcp"), each `vip`:service_port -> backend_ip:backend_ports[proto].

    Fields left at their API defaults are omitted (sessionAffinity None, traffic policies Cluster,
    endpoint conditions nil = ready and serving): at 10,000 Services the agent's YAML parser spends
    most of its start-up on the manifest's bytes."""
    name = service_name(index)
    ports = [{"name": proto, "protocol": proto.upper(), "port": service_port,
              "targetPort": backend_ports[proto]} for proto in protocols]
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": NAMESPACE},
               "spec": {"type": "ClusterIP", "clusterIP": clusterip, "externalIPs": [vip], "ports": ports}}
    endpoint_slice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                      "metadata": {"name": f"{name}-bench", "namespace": NAMESPACE,
                                   "labels": {"kubernetes.io/service-name": name}},
                      "endpoints": [{"addresses": [backend_ip], "nodeName": NODE_NAME}],
                      "ports": [{"name": proto, "protocol": proto.upper(), "port": backend_ports[proto]}
                                for proto in protocols]}
    return service, endpoint_slice


def node_object(node_ip, pod_cidr, name=NODE_NAME):
    """A Node (by default the bench node): its transport address as InternalIP, its Pods' network as
    its podCIDR."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip},
                                     {"type": "Hostname", "address": name}]}}


def manifest(services, node_ip, pod_cidr, other_nodes=()):
    """One `kind: List` document. `services`: [(Service, EndpointSlice)] from service_objects();
    `other_nodes`: [(name, InternalIP, podCIDR)] of the cluster's other Nodes (the agent steers traffic
    to their podCIDRs through its netfilter bypass)."""
    items = [obj for pair in services for obj in pair] + [node_object(node_ip, pod_cidr)]
    items += [node_object(ip, cidr, name) for name, ip, cidr in other_nodes]
    return {"apiVersion": "v1", "kind": "List", "items": items}


XDP_MODE_ENV = "XSKP_BENCH_XDP_MODE"   # set: the (f) agent's xdpMode (default: left to the agent)


def agent_config(manifest_dir, state_dir, metrics_address, transport="tr0", gateway="gw0", flow_offload=None):
    """The agent's config mapping (control/config.py): manifest files, this node, both interfaces,
    proxyAll, and handoverSeconds 0 so that the SIGTERM of teardown detaches at once (a handover
    would keep the steering program on the interfaces and drop the next path's traffic).

    flow_offload True/False sets `flowOffload` (the kernel fast path for established flows); None
    leaves it out, so the agent runs with its default (and a config parser without the key still
    accepts the file: unknown keys are errors)."""
    config = {"nodeName": NODE_NAME, "transportInterface": transport, "gatewayInterface": gateway,
              "source": "files", "manifestPath": manifest_dir, "stateDir": state_dir,
              "metricsAddress": metrics_address, "handoverSeconds": 0, "logLevel": "info",
              "antreaProxy": {"proxyAll": True}}
    if flow_offload is not None:
        config["flowOffload"] = bool(flow_offload)
    if os.environ.get(XDP_MODE_ENV):
        config["xdpMode"] = os.environ[XDP_MODE_ENV]   # e.g. native: the per-packet tier's best case
    return config
