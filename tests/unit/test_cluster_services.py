"""The lab's bundled Services convert cleanly into the model, and the kernel fallback rules cover them."""
import yaml

from control.manifests import load_state
from lab import cluster_services
from lab.netns import ClusterLab, Iface, Node, Pod


def fake_cluster():
    """A ClusterLab description as cluster_lab() returns it, without building namespaces."""
    nodes = []
    for i in range(2):
        node = Node(name=f"node{i}", ns=f"n{i}", transport=Iface(f"n{i}", "tr0", "02:00:00:00:00:0%d" % i, 2,
                                                                     f"172.18.0.{11 + i}", 24),
                    gateway=Iface(f"n{i}", "gw0", "02:00:00:00:01:0%d" % i, 3, f"10.244.{i}.1", 24),
                    pod_cidr=f"10.244.{i}.0/24")
        node.pods = [Pod(name=f"node{i}-pod{j}", ns=f"p{i}{j}",
                         iface=Iface(f"p{i}{j}", "eth0", "02:00:00:00:02:%d%d" % (i, j), 2, f"10.244.{i}.{2 + j}", 24))
                     for j in range(2)]
        nodes.append(node)
    return ClusterLab(lab=None, segment="seg", client="client",
                      client_if=Iface("client", "eth0", "02:00:00:00:03:00", 2, "172.18.0.100", 24), nodes=nodes)


def test_lab_manifest_loads_into_the_model(tmp_path):
    """Every Service, EndpointSlice and Node of the lab manifest becomes a model object."""
    cluster = fake_cluster()
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(cluster_services.lab_manifest(cluster)))
    state = load_state(str(tmp_path))
    assert len(state.services) == len(cluster_services.lab_services(cluster))
    assert set(state.nodes) == {"node0", "node1"}
    dsr = state.services[("default", "lb-dsr")]
    assert dsr.load_balancer_mode == "dsr" and dsr.load_balancer_ips == ("10.97.0.2",)
    assert state.services[("default", "sticky")].affinity_timeout_seconds == 86400
    assert state.services[("default", "web-local")].external_traffic_policy == "Local"


def test_terminating_endpoints_are_marked():
    """A Pod named terminating is serving but not ready in its EndpointSlice."""
    cluster = fake_cluster()
    pairs = dict((s["metadata"]["name"], e) for s, e in
                 cluster_services.lab_services(cluster, terminating={"node0-pod0"}))
    conditions = {e["targetRef"]["name"]: e["conditions"] for e in pairs["web"]["endpoints"]}
    assert conditions["node0-pod0"] == {"ready": False, "serving": True, "terminating": True}
    assert conditions["node1-pod1"]["ready"] is True


def test_kernel_rules_cover_every_frontend():
    """The kube-proxy-style fallback DNATs each ClusterIP, LB IP, externalIP and NodePort."""
    cluster = fake_cluster()
    rules = cluster_services.kernel_service_rules(cluster, cluster.nodes[0])
    for frontend in ("-d 10.96.0.10/32 -p tcp --dport 80", "-d 10.97.0.2/32 -p tcp --dport 80",
                     "-d 10.97.0.3/32 -p tcp --dport 80", "-d 172.18.0.11/32 -p tcp --dport 30080",
                     "-d 10.96.0.53/32 -p udp --dport 53"):
        assert frontend in rules
    assert rules.rstrip().endswith("COMMIT")
