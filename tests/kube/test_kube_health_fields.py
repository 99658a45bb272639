"""What the health servers and kube-proxy's metrics read, through the Kubernetes source and the
loopback API server: a Service's healthCheckNodePort, an EndpointSlice's trigger time, a Node
tainted for deletion, each added and changed by watch."""
import time

import pytest
from kubernetes import client as k

from apiserver import FakeApiServer
from control.kube import KubeSource, make_client_factory


def _wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def source(tmp_path):
    server = FakeApiServer(bookmark_interval=0.1).start()
    path = tmp_path / "kubeconfig"
    path.write_text(server.kubeconfig_text())
    src = KubeSource(make_client_factory(path), watch_timeout=30, idle_timeout=10, backoff_initial=0.05,
                     backoff_max=0.5)
    src.server = server
    src.start()
    assert src.wait_synced(10), "the first list did not complete"
    yield src
    src.stop()
    server.stop()


def _lb(health_check_node_port):
    return k.V1Service(api_version="v1", kind="Service", metadata=k.V1ObjectMeta(name="web", namespace="shop"),
                       spec=k.V1ServiceSpec(type="LoadBalancer", cluster_ip="10.96.0.10",
                                            external_traffic_policy="Local",
                                            health_check_node_port=health_check_node_port,
                                            ports=[k.V1ServicePort(name="http", port=80, node_port=30080)]))


def _slice(trigger):
    return k.V1EndpointSlice(
        api_version="discovery.k8s.io/v1", kind="EndpointSlice", address_type="IPv4",
        metadata=k.V1ObjectMeta(name="web-1", namespace="shop", labels={"kubernetes.io/service-name": "web"},
                                annotations={"endpoints.kubernetes.io/last-change-trigger-time": trigger}),
        endpoints=[k.V1Endpoint(addresses=["10.1.0.5"], node_name="node-a")],
        ports=[k.DiscoveryV1EndpointPort(name="http", port=8080, protocol="TCP")])


def _node(taints=None):
    return k.V1Node(api_version="v1", kind="Node", metadata=k.V1ObjectMeta(name="node-a"),
                    spec=k.V1NodeSpec(taints=taints))


def test_health_fields_arrive_by_list_and_watch(source):
    """healthCheckNodePort, the trigger-time annotation and the autoscaler's deletion taint reach
    the model, and their changes arrive by watch."""
    source.server.put(_lb(32000))
    source.server.put(_slice("2026-11-29T09:00:00Z"))
    source.server.put(_node())
    key, slice_key = ("shop", "web"), ("shop", "web-1")
    _wait_for(lambda: key in source.snapshot().services and slice_key in source.snapshot().endpoint_slices
              and "node-a" in source.snapshot().nodes, "the objects")
    state = source.snapshot()
    assert state.services[key].health_check_node_port == 32000
    assert state.endpoint_slices[slice_key].last_change_trigger_time == 1795942800.0
    assert state.nodes["node-a"].to_be_deleted is False

    source.server.put(_lb(32001))
    source.server.put(_slice("2026-11-29T09:00:01.5Z"))
    source.server.put(_node([k.V1Taint(key="ToBeDeletedByClusterAutoscaler", value="1795942800",
                                       effect="NoSchedule")]))
    _wait_for(lambda: source.snapshot().services[key].health_check_node_port == 32001
              and source.snapshot().endpoint_slices[slice_key].last_change_trigger_time == 1795942801.5
              and source.snapshot().nodes["node-a"].to_be_deleted, "the changes")
