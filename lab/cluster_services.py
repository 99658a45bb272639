"""The Services, EndpointSlices and Nodes of the demo/e2e cluster lab, as `kubectl get -o yaml` prints them.

Built from a ClusterLab (lab/netns.py): every address comes from the lab, nothing is hard-wired
twice. Also the kube-proxy-style iptables rules that serve the same Services through the kernel,
the fail-open path when no agent runs (and the path for Services xskproxy is told to skip).
"""
import ipaddress

HTTP_PORT = 8080          # every Pod's HTTP server (lab/servers.py)
UDP_PORT = 5353           # every Pod's UDP echo server
TCP_ECHO_PORT = 7000      # every Pod's TCP echo server
IPERF_PORTS = (5201, 5202)  # every Pod's iperf3 servers (one test at a time each)
LB_NET = "10.97.0.0/24"         # LoadBalancer ingress IPs and externalIPs; the client routes it via node0
POD_SUPERNET = "10.244.0.0/16"  # cluster_lab's default pod_supernet


def _svc(name, ports, cluster_ip, type_="ClusterIP", annotations=None, lb_ips=(), external_ips=(),
         etp=None, affinity_timeout=None, source_ranges=()):
    spec = {"type": type_, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports,
            "selector": {"app": name}, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"}
    if type_ in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = etp or "Cluster"
    if external_ips:
        spec["externalIPs"] = list(external_ips)
        spec.setdefault("externalTrafficPolicy", etp or "Cluster")
    if affinity_timeout:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    status = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]} if lb_ips else {}}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
            "spec": spec, "status": status}


def _port(name, protocol, port, target, node_port=None):
    p = {"name": name, "protocol": protocol, "port": port, "targetPort": target}
    if node_port:
        p["nodePort"] = node_port
    return p


def _slice(service, pods, ports, terminating=()):
    endpoints = []
    for pod in pods:
        ending = pod.name in terminating
        endpoints.append({"addresses": [pod.iface.ip], "nodeName": pod.name.split("-")[0],
                          "targetRef": {"kind": "Pod", "name": pod.name, "namespace": "default"},
                          "conditions": {"ready": not ending, "serving": True, "terminating": ending}})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service}-abc12", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "endpoints": endpoints, "ports": ports}


def lab_services(cluster, backends=None, terminating=()):
    """[(Service, EndpointSlice)] of the lab. backends: {service name: [Pod]} overrides who serves."""
    pods = cluster.pods
    remote = [p for p in pods if not p.name.startswith(cluster.nodes[0].name + "-")]
    lb = ipaddress.ip_network(LB_NET)
    http = [{"name": "http", "protocol": "TCP", "port": HTTP_PORT}]
    udp = [{"name": "dns", "protocol": "UDP", "port": UDP_PORT}]
    echo = [{"name": "echo", "protocol": "TCP", "port": TCP_ECHO_PORT}]
    bulk = [[{"name": "iperf", "protocol": "TCP", "port": port}] for port in IPERF_PORTS]
    table = [
        (_svc("web", [_port("http", "TCP", 80, HTTP_PORT, 30080)], "10.96.0.10", "NodePort"), pods, http),
        (_svc("web-local", [_port("http", "TCP", 80, HTTP_PORT, 30081)], "10.96.0.14", "NodePort",
              etp="Local"), pods, http),
        (_svc("dns", [_port("dns", "UDP", 53, UDP_PORT)], "10.96.0.53"), pods, udp),
        (_svc("sticky", [_port("http", "TCP", 80, HTTP_PORT)], "10.96.0.11",
              affinity_timeout=86400), pods, http),
        (_svc("echo", [_port("echo", "TCP", 7000, TCP_ECHO_PORT, 30700)], "10.96.0.20", "NodePort"),
         pods, echo),
        (_svc("lb-nat", [_port("http", "TCP", 80, HTTP_PORT)], "10.96.0.30", "LoadBalancer",
              lb_ips=[str(lb[1])]), remote, http),
        (_svc("lb-dsr", [_port("http", "TCP", 80, HTTP_PORT)], "10.96.0.31", "LoadBalancer",
              lb_ips=[str(lb[2])], annotations={"service.antrea.io/load-balancer-mode": "dsr"}),
         remote, http),
        (_svc("ext-ip", [_port("http", "TCP", 80, HTTP_PORT)], "10.96.0.32", external_ips=[str(lb[3])]),
         remote, http),
        (_svc("hairpin", [_port("http", "TCP", 80, HTTP_PORT)], "10.96.0.40"), pods[:1], http),
        (_svc("skipped", [_port("http", "TCP", 80, HTTP_PORT)], "10.96.0.50"), pods, http),
        # iperf3's control and data connections must meet the same server: ClientIP affinity
        (_svc("bulk", [_port("iperf", "TCP", 5201, IPERF_PORTS[0])], "10.96.0.21",
              affinity_timeout=600), pods, bulk[0]),
        (_svc("bulk-np", [_port("iperf", "TCP", 5202, IPERF_PORTS[1], 30522)], "10.96.0.22", "NodePort",
              affinity_timeout=600), pods, bulk[1]),
    ]
    out = []
    for service, serving, ports in table:
        name = service["metadata"]["name"]
        serving = (backends or {}).get(name, serving)
        out.append((service, _slice(name, serving, ports, terminating)))
    return out


def lab_nodes(cluster):
    return [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
             "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
             "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                      {"type": "Hostname", "address": node.name}]}}
            for node in cluster.nodes]


def lab_manifest(cluster, **kwargs):
    """One `kind: List` document holding every Service, EndpointSlice and Node of the lab."""
    items = [obj for pair in lab_services(cluster, **kwargs) for obj in pair] + lab_nodes(cluster)
    return {"apiVersion": "v1", "kind": "List", "items": items}


def kernel_service_rules(cluster, node):
    """iptables-restore text for `node`: kube-proxy-style DNAT of every lab Service, the kernel path."""
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
             ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]",
             "-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES",
             "-A POSTROUTING -j KUBE-POSTROUTING",
             # kube-proxy's masqueradeAll: the Pods share an L2 switch, so a local backend would
             # answer its client directly (bypassing the node's conntrack) unless SNATed too
             "-A KUBE-POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE"]
    for n, (service, eps) in enumerate(lab_services(cluster)):
        spec = service["spec"]
        addrs = [e["addresses"][0] for e in eps["endpoints"]]
        if not addrs:
            continue
        for port in spec["ports"]:
            chain = f"KUBE-SVC-{n}-{port['name']}"[:28]
            lines.append(f":{chain} - [0:0]")
            proto = port["protocol"].lower()
            frontends = [(spec["clusterIP"], port["port"])]
            frontends += [(ing["ip"], port["port"]) for ing in service["status"]["loadBalancer"].get("ingress", [])]
            frontends += [(ip, port["port"]) for ip in spec.get("externalIPs", [])]
            for addr, fport in frontends:
                lines.append(f"-A KUBE-SERVICES -d {addr}/32 -p {proto} --dport {fport} -j {chain}")
            if port.get("nodePort"):
                lines.append(f"-A KUBE-SERVICES -d {node.ip}/32 -p {proto} --dport {port['nodePort']} -j {chain}")
            for i, addr in enumerate(addrs):
                left = len(addrs) - i
                pick = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
                lines.append(f"-A {chain} -p {proto} {pick}-j DNAT --to-destination {addr}:{port['targetPort']}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
