"""The agent's side of the health servers and kube-proxy's metrics: each publish updates the
health-check ports and local endpoint counts and the kubeproxy_* series."""
from prometheus_client import CollectorRegistry, generate_latest

from control import agent
from control.config import parse_config
from control.model import ClusterState, Endpoint, EndpointSlice, Service, ServicePort
from control.netlink import Address, NodeNetwork
from control.sync import Snapshot
from control.translate import ProxyOptions, Translator


class RecordingServers:
    def __init__(self):
        self.calls = []
        self.answers = {("healthz", 200): 4, ("livez", 503): 1, ("service", 200): 9}

    def set_services(self, services, addresses):
        self.calls.append((services, addresses))


def _state(local_endpoints):
    svc = Service("shop", "web", type="LoadBalancer", cluster_ips=("10.96.0.10",), external_traffic_policy="Local",
                  ports=(ServicePort("", "TCP", 80, node_port=30080),), health_check_node_port=32123)
    endpoints = tuple(Endpoint((f"10.1.0.{i + 1}",), node_name="node-a") for i in range(local_endpoints))
    endpoints += (Endpoint(("10.2.0.1",), node_name="node-b"),)
    sl = EndpointSlice("shop", "web-1", "web", endpoints=endpoints)
    return ClusterState(services={svc.key: svc}, endpoint_slices={sl.key: sl})


def _agent(tmp_path, proxy_all=True):
    config = parse_config({"stateDir": str(tmp_path), "nodeName": "node-a", "antreaProxy": {"proxyAll": proxy_all}})
    node = agent.Agent(config)
    node.translator = Translator(ProxyOptions.from_config(config))
    node.health = RecordingServers()
    return node


NETWORK = NodeNetwork(addresses=(Address(2, "192.168.7.2", 24),))


def test_each_publish_hands_the_health_servers_ports_counts_and_node_addresses(tmp_path):
    """With proxyAll a published LoadBalancer Service's healthCheckNodePort is served on the node
    addresses with this node's ready endpoints; the next publish updates the count."""
    node = _agent(tmp_path)
    node._publish(Snapshot(cluster=_state(2), network=NETWORK))
    node._publish(Snapshot(cluster=_state(0), network=NETWORK))
    assert node.health.calls == [({("shop", "web"): (32123, 2)}, ("192.168.7.2",)),
                                 ({("shop", "web"): (32123, 0)}, ("192.168.7.2",))]


def test_without_proxy_all_no_health_check_port_is_served(tmp_path):
    """Without proxyAll, NodePort and LoadBalancer traffic (and their health checks) stay kube-proxy's."""
    node = _agent(tmp_path, proxy_all=False)
    node._publish(Snapshot(cluster=_state(2), network=NETWORK))
    assert node.health.calls == [({}, ())]


def test_kube_proxy_series_and_health_answers_are_exposed(tmp_path):
    """A publish shows in kubeproxy_sync_proxy_rules_*; the health answers in kubeproxy_proxy_healthz_total,
    kubeproxy_proxy_livez_total and xskproxy_health_check_node_port_answers_total."""
    node = _agent(tmp_path)
    node._publish(Snapshot(cluster=_state(1), network=NETWORK))
    registry = CollectorRegistry()
    families = list(node.kube_proxy_metrics.families()) + agent.health_metrics(node.health)
    registry.register(type("Collector", (), {"collect": lambda self: families})())
    text = generate_latest(registry).decode()
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1.0" in text
    assert "kubeproxy_sync_proxy_rules_service_changes_total 1.0" in text
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_total 1.0" in text
    assert 'kubeproxy_proxy_healthz_total{code="200"} 4.0' in text
    assert 'kubeproxy_proxy_livez_total{code="503"} 1.0' in text
    assert 'xskproxy_health_check_node_port_answers_total{code="200"} 9.0' in text
