"""The Kubernetes source against the loopback API server (and, opt-in, a real cluster).

The loopback server (apiserver.py) stands in for kube-apiserver, which cannot be installed here.
The scenarios that only need the API (add/modify/delete of each kind) also run against a real
cluster when KUBECONFIG is set; the fault scenarios (410, restarts, malformed objects) need
control over the server and run only against the loopback one.
"""
import os
import time
import uuid

import pytest
from kubernetes import client as k

from apiserver import FakeApiServer
from control.kube import KubeSource, make_client_factory

FAST = dict(watch_timeout=30, idle_timeout=10, backoff_initial=0.05, backoff_max=0.5)


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def service_model(name, namespace, port=80):
    return k.V1Service(api_version="v1", kind="Service",
                       metadata=k.V1ObjectMeta(name=name, namespace=namespace),
                       spec=k.V1ServiceSpec(ports=[k.V1ServicePort(name="http", port=port, target_port=8080)]))


def slice_model(name, namespace, service, addresses):
    return k.V1EndpointSlice(
        api_version="discovery.k8s.io/v1", kind="EndpointSlice", address_type="IPv4",
        metadata=k.V1ObjectMeta(name=name, namespace=namespace,
                                labels={"kubernetes.io/service-name": service}),
        endpoints=[k.V1Endpoint(addresses=[a], conditions=k.V1EndpointConditions(ready=True))
                   for a in addresses],
        ports=[k.DiscoveryV1EndpointPort(name="http", port=8080, protocol="TCP")])


def node_model(name, pod_cidr):
    return k.V1Node(api_version="v1", kind="Node", metadata=k.V1ObjectMeta(name=name),
                    spec=k.V1NodeSpec(pod_cidr=pod_cidr, pod_cidrs=[pod_cidr]))


def scenario_add_modify_delete(api_client, source, namespace, node_name):
    """Each kind added, modified and deleted through the API shows up in the source's snapshot."""
    core, discovery = k.CoreV1Api(api_client), k.DiscoveryV1Api(api_client)
    key = (namespace, "web")

    core.create_namespaced_service(namespace, service_model("web", namespace))
    wait_for(lambda: key in source.snapshot().services, what="Service added")
    svc = core.read_namespaced_service("web", namespace)
    svc.spec.ports[0].port = 81
    core.replace_namespaced_service("web", namespace, svc)
    wait_for(lambda: source.snapshot().services[key].ports[0].port == 81, what="Service modified")

    discovery.create_namespaced_endpoint_slice(namespace, slice_model("web-1", namespace, "web", ["10.9.0.1"]))
    wait_for(lambda: key in {s.service_key for s in source.snapshot().endpoint_slices.values()},
             what="EndpointSlice added")
    sl = discovery.read_namespaced_endpoint_slice("web-1", namespace)
    sl.endpoints.append(k.V1Endpoint(addresses=["10.9.0.2"], conditions=k.V1EndpointConditions(ready=False)))
    discovery.replace_namespaced_endpoint_slice("web-1", namespace, sl)
    wait_for(lambda: len(source.snapshot().endpoint_slices[(namespace, "web-1")].endpoints) == 2,
             what="EndpointSlice modified")
    assert source.snapshot().endpoint_slices[(namespace, "web-1")].endpoints[1].ready is False

    core.create_node(node_model(node_name, "10.99.0.0/24"))
    wait_for(lambda: node_name in source.snapshot().nodes, what="Node added")
    node = core.read_node(node_name)
    # podCIDR may only be set once on a real cluster: the modification is a label
    node.metadata.labels = dict(node.metadata.labels or {}, **{"topology.kubernetes.io/zone": "zone-x"})
    core.replace_node(node_name, node)
    wait_for(lambda: source.snapshot().nodes[node_name].zone == "zone-x", what="Node modified")

    discovery.delete_namespaced_endpoint_slice("web-1", namespace)
    core.delete_namespaced_service("web", namespace)
    core.delete_node(node_name)
    wait_for(lambda: key not in source.snapshot().services
             and (namespace, "web-1") not in source.snapshot().endpoint_slices
             and node_name not in source.snapshot().nodes, what="all deleted")


# --- the loopback server ---

@pytest.fixture
def server():
    srv = FakeApiServer(bookmark_interval=0.1).start()
    yield srv
    srv.stop()


@pytest.fixture
def kubeconfig(server, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(server.kubeconfig_text())
    return path


@pytest.fixture
def source(kubeconfig):
    changes = []
    src = KubeSource(make_client_factory(kubeconfig), on_change=lambda: changes.append(time.monotonic()), **FAST)
    src.changes = changes
    src.start()
    assert src.wait_synced(10), "the first list did not complete"
    yield src
    src.stop()


def put_service(server, name, port=80, namespace="default"):
    return server.put(service_model(name, namespace, port))


def test_add_modify_delete_each_kind(server, source, kubeconfig):
    """Services, EndpointSlices and Nodes created, replaced and deleted via the API reach the snapshot."""
    api = make_client_factory(kubeconfig)()
    scenario_add_modify_delete(api, source, "xc-test", "xc-node")
    assert source.counters()["services"]["lists"] == 1      # all of it by watch, no re-list


def test_in_stream_410_relists_and_diffs(server, source):
    """An ERROR 410 event mid-stream makes the source re-list; changes made meanwhile are not lost."""
    put_service(server, "a")
    wait_for(lambda: ("default", "a") in source.snapshot().services)
    server.expire_watches()
    put_service(server, "b")
    server.delete("Service", "default", "a")
    wait_for(lambda: set(source.snapshot().services) == {("default", "b")}, what="re-listed state")
    counters = source.counters()["services"]
    assert counters["expired"] >= 1 and counters["lists"] >= 2


def test_http_410_after_restart_same_port_relists(tmp_path):
    """A restarted API server (same port, history lost) answers the old watch with HTTP 410; the
    source re-lists and sees what changed while it was down, with the last good state kept meanwhile."""
    server = FakeApiServer(bookmark_interval=0.1, too_old_as="status").start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(server.kubeconfig_text())
    source = KubeSource(make_client_factory(kubeconfig), **FAST).start()
    try:
        put_service(server, "keep")
        put_service(server, "gone")
        wait_for(lambda: len(source.snapshot().services) == 2)
        server.stop()
        wait_for(lambda: source.staleness() > 0.2, what="staleness to grow while the API is down")
        assert len(source.snapshot().services) == 2             # last good state kept
        server.store.delete("services", "default", "gone")
        put_service(server, "new")
        server.restart()                                        # same port, history compacted
        wait_for(lambda: set(source.snapshot().services) == {("default", "keep"), ("default", "new")},
                 what="state after restart")
        assert source.counters()["services"]["expired"] >= 1
        wait_for(lambda: source.staleness() < 0.5, what="staleness back under the bookmark interval")
    finally:
        source.stop()
        server.stop()


def test_restart_on_new_port_found_through_rewritten_kubeconfig(server, source, kubeconfig):
    """The API server comes back on another port; the source re-reads the kubeconfig on reconnect."""
    put_service(server, "a")
    wait_for(lambda: ("default", "a") in source.snapshot().services)
    server.stop()
    put_service(server, "b")
    server.restart(new_port=True)
    kubeconfig.write_text(server.kubeconfig_text())
    wait_for(lambda: ("default", "b") in source.snapshot().services, timeout=15, what="Service b")


def test_dropped_connection_resumes_from_resource_version(server, source):
    """A watch connection reset mid-stream resumes from the last resourceVersion without a re-list."""
    put_service(server, "a")
    wait_for(lambda: ("default", "a") in source.snapshot().services)
    server.drop_watches()
    put_service(server, "b")
    wait_for(lambda: ("default", "b") in source.snapshot().services)
    counters = source.counters()["services"]
    assert counters["errors"] >= 1 and counters["lists"] == 1 and counters["expired"] == 0


def test_bookmarks_advance_the_resource_version(server, source):
    """With no Service changes, bookmarks still move the Services watch to the server's newest version."""
    server.put(node_model("n1", "10.1.0.0/24"))
    services = source.reflectors["services"]
    wait_for(lambda: services.resource_version == str(server.store.rv), what="bookmark")
    assert services.counters["bookmarks"] >= 1


def test_watch_timeout_reconnects_without_relist(server, kubeconfig):
    """A watch ended by timeoutSeconds is re-opened from the same version; no re-list."""
    source = KubeSource(make_client_factory(kubeconfig), **dict(FAST, watch_timeout=1)).start()
    try:
        wait_for(lambda: source.counters()["nodes"]["watches"] >= 3, timeout=10, what="3 watches")
        assert source.counters()["nodes"]["lists"] == 1
        assert source.counters()["nodes"]["errors"] == 0
    finally:
        source.stop()


def test_malformed_object_is_reported_and_others_still_sync(server, source):
    """A bad Service is reported with its field; good objects still sync; a bad update of a good
    Service keeps its last good version."""
    put_service(server, "good", port=80)
    server.put({"kind": "Service", "metadata": {"name": "bad", "namespace": "default"},
                "spec": {"ports": [{"port": "eighty"}]}})
    put_service(server, "later", port=90)
    wait_for(lambda: ("default", "later") in source.snapshot().services)
    assert ("default", "bad") not in source.snapshot().services
    errors = source.errors()
    assert "spec.ports[0].port: 'eighty'" in errors[("services", ("default", "bad"))]

    server.put({"kind": "Service", "metadata": {"name": "good", "namespace": "default"},
                "spec": {"ports": [{"port": 70000}]}})
    wait_for(lambda: ("services", ("default", "good")) in source.errors(), what="error for good")
    assert source.snapshot().services[("default", "good")].ports[0].port == 80
    put_service(server, "good", port=81)                    # fixed: error cleared, new version used
    wait_for(lambda: source.snapshot().services[("default", "good")].ports[0].port == 81)
    assert ("services", ("default", "good")) not in source.errors()


def test_unchanged_objects_keep_identity_across_relist(server, source):
    """A re-list that finds an object unchanged keeps the same model object (cheap diffs downstream)."""
    put_service(server, "a")
    wait_for(lambda: ("default", "a") in source.snapshot().services)
    before = source.snapshot().services[("default", "a")]
    server.expire_watches()
    put_service(server, "b")
    wait_for(lambda: ("default", "b") in source.snapshot().services)
    assert source.snapshot().services[("default", "a")] is before


# --- a real cluster, opt-in ---

@pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                    reason="KUBECONFIG is not set: no real cluster to run against (the loopback "
                           "API server variants above ran instead)")
class TestRealCluster:
    """The API-only scenarios against the cluster KUBECONFIG points to. Creates a namespace
    xc-test-<random> and a Node object xc-node-<random> (no kubelet behind it), deletes both."""

    def test_add_modify_delete_each_kind(self):
        kubeconfig = os.environ["KUBECONFIG"].split(os.pathsep)[0]
        api = make_client_factory(kubeconfig)()
        core = k.CoreV1Api(api)
        suffix = uuid.uuid4().hex[:6]
        namespace = f"xc-test-{suffix}"
        core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=namespace)))
        source = KubeSource(make_client_factory(kubeconfig), watch_timeout=60, idle_timeout=90).start()
        try:
            assert source.wait_synced(60)
            scenario_add_modify_delete(api, source, namespace, f"xc-node-{suffix}")
            assert source.staleness() < 60                 # the events just seen, or a bookmark
        finally:
            source.stop()
            try:
                core.delete_node(f"xc-node-{suffix}")
            except k.ApiException:
                pass
            core.delete_namespace(namespace)


def test_unreachable_api_reports_an_error_and_never_syncs(tmp_path):
    """With nothing listening, the source is not synced, says why, and its staleness grows."""
    kubeconfig = tmp_path / "kubeconfig"
    with FakeApiServer() as srv:                       # take a free port, then free it again
        kubeconfig.write_text(srv.kubeconfig_text())
    source = KubeSource(make_client_factory(kubeconfig), **FAST).start()
    try:
        wait_for(lambda: source.error is not None, what="an error")
        assert not source.has_synced()
        assert "refused" in source.error.lower()
        time.sleep(0.3)
        assert source.staleness() >= 0.3
    finally:
        source.stop()
