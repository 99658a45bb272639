"""Health endpoints (control.health): what a healthCheckNodePort and /healthz, /livez answer, what
"healthy" means for the dataplane, and servers that no client can stall or crash."""
import http.client
import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from control import health
from control.health import (BadRequest, DataplaneProbe, HealthServers, NodeHealth, health_check_services,
                            node_addresses, node_health_answer, parse_request_head, service_health_answer)
from control.kube_proxy_metrics import KubeProxyMetrics
from control.model import ClusterState, Endpoint, EndpointSlice, Node, Service, ServicePort
from control.netlink import Address, NodeNetwork
from control.translate import ProxyOptions, skip_reason

NODE = "node-a"


# --- the request head --------------------------------------------------------------------

def test_a_complete_request_head_gives_method_and_path_without_query():
    """GET /healthz?verbose HTTP/1.1 with headers: ("GET", "/healthz")."""
    assert parse_request_head(b"GET /healthz?verbose HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/healthz")
    assert parse_request_head(b"HEAD / HTTP/1.0\n\n") == ("HEAD", "/")
    assert parse_request_head(b"GET http://10.0.0.1:10256/livez HTTP/1.1\r\n\r\n") == ("GET", "/livez")


def test_an_incomplete_head_waits_for_more():
    """Until the blank line arrives there is nothing to answer yet."""
    assert parse_request_head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n") is None
    assert parse_request_head(b"") is None


@pytest.mark.parametrize("data, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),   # a TLS hello
    (b"GET /healthz\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, 431),                  # no end in sight
])
def test_what_is_not_an_http_1_request_is_refused_with_a_status(data, status):
    """Garbage, other protocols and endless heads get a 4xx/5xx answer, never an exception."""
    with pytest.raises(BadRequest) as caught:
        parse_request_head(data)
    assert caught.value.status == status


# --- the answers -------------------------------------------------------------------------

def test_a_health_check_node_port_answers_200_with_local_endpoints_as_kube_proxy():
    """Local ready endpoints and a healthy proxy: 200, kube-proxy's JSON and headers."""
    status, headers, body = service_health_answer("shop", "web", 2, True)
    assert status == 200
    assert json.loads(body) == {"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2,
                                "serviceProxyHealthy": True}
    assert dict(headers) == {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff",
                             "X-Load-Balancing-Endpoint-Weight": "2"}


@pytest.mark.parametrize("count, proxy_healthy", [(0, True), (3, False), (0, False)])
def test_a_health_check_node_port_answers_503_without_local_endpoints_or_proxy(count, proxy_healthy):
    """No local ready endpoint, or a dataplane that does not forward: 503 (the LB avoids the node)."""
    status, _, body = service_health_answer("shop", "web", count, proxy_healthy)
    assert status == 503
    assert json.loads(body)["localEndpoints"] == count
    assert json.loads(body)["serviceProxyHealthy"] is proxy_healthy


def test_healthz_and_livez_answer_kube_proxys_fields_and_the_problems():
    """Healthy: 200 with lastUpdated = currentTime; /healthz adds nodeEligible; other paths 404."""
    now = 1795942800.5
    status, _, body = node_health_answer("/healthz", NodeHealth(True, (), now), now)
    body = json.loads(body)
    assert status == 200 and body["lastUpdated"] == body["currentTime"] == "2026-11-29T09:00:00.500000Z"
    assert body["nodeEligible"] is True and body["problems"] == []
    status, _, body = node_health_answer("/livez", NodeHealth(False, ("queue 0: the worker is not running",),
                                                                now - 60), now)
    body = json.loads(body)
    assert status == 503 and "nodeEligible" not in body
    assert body["lastUpdated"] == "2026-11-29T08:59:00.500000Z"
    assert body["problems"] == ["queue 0: the worker is not running"]
    assert node_health_answer("/metrics", NodeHealth(True, (), now), now)[0] == 404


def test_a_node_being_deleted_fails_healthz_only():
    """nodeEligible false (the Node is being deleted): /healthz 503, /livez still 200."""
    now = 1795942800.0
    leaving = NodeHealth(True, (), now, node_eligible=False)
    status, _, body = node_health_answer("/healthz", leaving, now)
    assert status == 503 and json.loads(body)["nodeEligible"] is False
    assert node_health_answer("/livez", leaving, now)[0] == 200


@pytest.mark.parametrize("node, eligible", [
    (None, True),                                              # not known yet: eligible
    (Node(NODE), True),
    (Node(NODE, to_be_deleted=True), False),
    (Node("node-b", to_be_deleted=True), True),                # another node's deletion
])
def test_node_eligibility_follows_the_published_node(node, eligible):
    """The probe reads this Node from the published state, as kube-proxy's SyncNode."""
    cluster = _cluster([], [], [node] if node is not None else [])
    result = _probe(_agent(cluster))(now=1000.0)
    assert result.healthy and result.node_eligible is eligible


# --- what to serve -----------------------------------------------------------------------

def _lb(name, port=32000, **kw):
    return Service("shop", name, type="LoadBalancer", cluster_ips=("10.96.0.1",), external_traffic_policy="Local",
                   ports=(ServicePort("", "TCP", 80, node_port=30080),), health_check_node_port=port, **kw)


def _ep(address, node=NODE, ready=True, terminating=False):
    return Endpoint((address,), ready=ready, serving=ready or terminating, terminating=terminating,
                    node_name=node)


def _slice(service, name, *endpoints, address_type="IPv4"):
    return EndpointSlice("shop", name, service, address_type=address_type, endpoints=endpoints)


def _cluster(services, slices, nodes=()):
    return ClusterState(services={s.key: s for s in services}, endpoint_slices={s.key: s for s in slices},
                        nodes={n.name: n for n in nodes})


def test_local_endpoints_are_distinct_ready_addresses_on_this_node():
    """Counted as kube-proxy: ready endpoints on this node, each address once across slices;
    terminating ones and other nodes' do not count; a Service without a port is not served."""
    cluster = _cluster(
        [_lb("web"), _lb("idle", port=32001), _lb("plain", port=0)],
        [_slice("web", "web-1", _ep("10.1.0.5"), _ep("10.1.0.6"), _ep("10.2.0.7", node="node-b"),
                _ep("10.1.0.8", ready=False, terminating=True)),
         _slice("web", "web-2", _ep("10.1.0.5")),                      # the same Pod again
         _slice("idle", "idle-1", _ep("10.1.0.9", ready=False, terminating=True)),
         _slice("plain", "plain-1", _ep("10.1.0.10"))])
    got = health_check_services(cluster, NODE, ProxyOptions(proxy_all=True), skip_reason)
    assert got == {("shop", "web"): (32000, 2), ("shop", "idle"): (32001, 0)}


def test_a_slice_labelled_for_another_proxy_does_not_count():
    """kube-proxy lists slices without service-proxy-name and headless labels: an endpoint only
    such a slice has is not a local endpoint (the node answers 503)."""
    labelled = EndpointSlice("shop", "web-x", "web", address_type="IPv4", endpoints=(_ep("10.1.0.5"),),
                             proxy_ignored_label="service.kubernetes.io/service-proxy-name")
    cluster = _cluster([_lb("web")], [labelled])
    assert health_check_services(cluster, NODE, ProxyOptions(proxy_all=True), skip_reason) == \
        {("shop", "web"): (32000, 0)}


def test_services_another_proxy_owns_get_no_health_check_port():
    """A Service labelled service.kubernetes.io/service-proxy-name, or in skipServices, is not ours."""
    cluster = _cluster([_lb("web", service_proxy_name="other"), _lb("kept", port=32001)], [])
    options = ProxyOptions(proxy_all=True, skip_services=("shop/kept",))
    assert health_check_services(cluster, NODE, options, skip_reason) == {}


def test_node_addresses_follow_node_port_addresses():
    """Interface addresses (no loopback, no link-local) filtered by nodePortAddresses; without a
    network view, the Node's InternalIPs."""
    network = NodeNetwork(addresses=(Address(2, "192.168.1.10", 24), Address(3, "10.0.0.1", 24),
                                     Address(1, "127.0.0.1", 8), Address(2, "fe80::1", 64),
                                     Address(2, "fd00::10", 64)))
    assert node_addresses(network, ClusterState(), NODE) == ("10.0.0.1", "192.168.1.10", "fd00::10")
    assert node_addresses(network, ClusterState(), NODE, ("192.168.1.0/24",)) == ("192.168.1.10",)
    node = Node(NODE, addresses=(("InternalIP", "172.18.0.2"), ("Hostname", "a")))
    assert node_addresses(None, _cluster([], [], [node]), NODE) == ("172.18.0.2",)


# --- what healthy means ------------------------------------------------------------------

class _Alive:
    def is_alive(self):
        return True


def _agent(cluster=None, published=None):
    """An agent as the probe sees it: steering attached to both interfaces, one worker running
    with both sockets, a synced source holding `cluster`, `published` last published."""
    cluster = cluster if cluster is not None else ClusterState()
    published = published if published is not None else cluster
    config = SimpleNamespace(transport_interface="eth0", gateway_interface="gw0", node_name=NODE)
    steering = SimpleNamespace(ifaces={"eth0": (2, 0, "native"), "gw0": (3, 64, "native")})
    sock = SimpleNamespace(handle=1)
    worker = SimpleNamespace(queue=0, error=None, _thread=_Alive(), last_pass_at=time.monotonic,
                             sockets=[sock, sock])
    source = SimpleNamespace(snapshot=lambda: cluster, has_synced=lambda: True)
    sync = SimpleNamespace(consecutive_failures=0, last_error=None, counters={"notifications": 1},
                           published=SimpleNamespace(cluster=published))
    return SimpleNamespace(config=config, steering=steering, steering_ready=True, workers=[worker],
                           source=source, sync=sync)


def _probe(agent, read_xdp=None):
    return DataplaneProbe(agent, KubeProxyMetrics(started_at=0.0), sync_timeout=30.0, stall_seconds=2.0,
                          read_xdp=read_xdp)


def test_a_forwarding_dataplane_is_healthy():
    """Steering attached, worker alive with sockets and recent slices, nothing pending: healthy."""
    agent = _agent()
    agent.fast_path_live = lambda: True
    result = _probe(agent)(now=1000.0)
    assert result.healthy and result.problems == () and result.last_healthy == 1000.0


@pytest.mark.parametrize("breaks, problem", [
    (lambda a: setattr(a, "steering_ready", False), "the steering program is not loaded"),
    (lambda a: a.steering.ifaces.pop("gw0"), "not attached to gw0"),
    (lambda a: setattr(a.workers[0], "error", RuntimeError("boom")), "queue 0: the worker failed"),
    (lambda a: setattr(a.workers[0], "_thread", None), "queue 0: the worker is not running"),
    (lambda a: a.workers[0].sockets.__setitem__(1, None), "queue 0: no socket bound on gw0"),
    (lambda a: setattr(a.workers[0], "last_pass_at", lambda: time.monotonic() - 10), "loop has not run for"),
    (lambda a: setattr(a, "workers", []), "no worker runs"),
    (lambda a: setattr(a, "fast_path_live", lambda: False),
     "the tc fast path's heartbeat has stopped"),
])
def test_a_dataplane_that_does_not_forward_is_unhealthy_and_says_why(breaks, problem):
    """Each way the dataplane can stop forwarding makes the node unhealthy, named in problems."""
    agent = _agent()
    agent.workers[0].sockets = list(agent.workers[0].sockets)
    breaks(agent)
    result = _probe(agent)(now=1000.0)
    assert not result.healthy
    assert any(problem in p for p in result.problems), result.problems


@pytest.mark.parametrize("running, problem", [
    ({"eth0": 41, "up-gw0": 41}, None),
    ({"eth0": 99, "up-gw0": 41}, "the XDP program on eth0 is not ours (program id 99)"),
    ({"eth0": 41, "up-gw0": 0}, "the XDP program on up-gw0 (upcall pair of gw0) is not ours (none attached)"),
    ({"eth0": 41, "up-gw0": None}, "up-gw0 (upcall pair of gw0) is gone"),
])
def test_the_kernel_must_still_run_our_xdp_program_where_it_was_attached(running, problem):
    """The kernel's side: our program on each served interface, or on the socket end of its
    upcall pair; replaced, detached or a deleted pair is unhealthy, named."""
    agent = _agent()
    agent.steering.object_ids = lambda: {"prog": [41, 42, 0, 0], "map": []}
    agent.steering.upcall_pairs = {"gw0": ("up-gw0-k", "up-gw0")}
    asked = []

    def read_xdp(devices):
        asked.append(devices)
        return running

    result = _probe(agent, read_xdp)(now=1000.0)
    assert asked == [["eth0", "up-gw0"]]
    assert result.problems == (() if problem is None else (problem,))


def test_a_netlink_error_is_not_a_dataplane_problem():
    """When the kernel cannot be asked, the check is skipped (logged), not failed."""
    agent = _agent()
    agent.steering.object_ids = lambda: {"prog": [41], "map": []}
    agent.steering.upcall_pairs = {}

    def read_xdp(devices):
        raise OSError("netlink busy")

    assert _probe(agent, read_xdp)(now=1000.0).healthy


def test_xdp_program_ids_reads_the_kernel():
    """Loopback has no XDP program (0); an interface that does not exist is None."""
    assert health.xdp_program_ids(["lo", "h14b-none0"]) == {"lo": 0, "h14b-none0": None}


def test_a_cluster_change_unpublished_past_the_timeout_is_unhealthy():
    """The source holds a Service the tables do not: healthy while recent, unhealthy after
    sync_timeout, healthy again once published (kube-proxy's queued-update rule)."""
    agent = _agent(cluster=_cluster([_lb("web")], []), published=ClusterState())
    agent.workers[0].last_pass_at = lambda: 0.0        # this test moves the clock, not the worker
    probe = _probe(agent)
    start = time.monotonic()
    assert probe(now=1000.0, monotonic_now=start).healthy
    late = probe(now=1031.0, monotonic_now=start + 31)
    assert not late.healthy and "cluster changes unpublished for 31s (1 Services" in late.problems[0]
    assert late.last_healthy == 1000.0
    agent.sync.published = SimpleNamespace(cluster=agent.source.snapshot())
    agent.sync.counters["notifications"] += 1
    assert probe(now=1032.0, monotonic_now=start + 32).healthy


def test_publishing_failing_past_the_timeout_is_unhealthy():
    """Publishes failing in a row for longer than sync_timeout: unhealthy, with the error."""
    agent = _agent()
    agent.sync.consecutive_failures, agent.sync.last_error = 3, "ConfigError: tables.maxServices: too many"
    agent.workers[0].last_pass_at = lambda: 0.0
    probe = _probe(agent)
    start = time.monotonic()
    assert probe(monotonic_now=start).healthy
    result = probe(monotonic_now=start + 40)
    assert not result.healthy and "tables.maxServices" in result.problems[0]
    agent.sync.consecutive_failures = 0
    assert probe(monotonic_now=start + 41).healthy


# --- the servers -------------------------------------------------------------------------

def _free_ports(count):
    """`count` distinct free ports: each socket stays bound until all are picked (two calls of a
    bind-and-close helper can get the same port back, and the fixture then served one port)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(port, path="/healthz", method="GET", timeout=3.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _wait_listening(servers, address, timeout=3.0):
    deadline = time.monotonic() + timeout
    while address not in servers.bound():
        assert time.monotonic() < deadline, f"{address} not bound: {servers.bound()}"
        time.sleep(0.01)


@pytest.fixture
def serving():
    """HealthServers on 127.0.0.1 (node endpoint and one health-check port) with a settable probe."""
    state = {"health": NodeHealth(True, (), time.time())}
    node_port, service_port = _free_ports(2)
    servers = HealthServers(lambda: state["health"], f"127.0.0.1:{node_port}", refresh=0.05).start()
    servers.set_services({("shop", "web"): (service_port, 1)}, ("127.0.0.1",))
    _wait_listening(servers, ("127.0.0.1", node_port))
    _wait_listening(servers, ("127.0.0.1", service_port))
    assert len(servers.bound()) == 2, servers.bound()
    yield SimpleNamespace(servers=servers, state=state, node_port=node_port, service_port=service_port)
    servers.close()


def test_served_answers_follow_each_publish_and_the_probe(serving):
    """Over real sockets: the health-check port answers 200 then 503 once the local endpoint is
    gone; /healthz turns 503 when the probe finds a problem; HEAD gets headers only."""
    status, headers, body = _get(serving.service_port, "/anything")
    assert status == 200 and json.loads(body)["localEndpoints"] == 1
    assert headers["Content-Type"] == "application/json" and headers["Connection"] == "close"
    serving.servers.set_services({("shop", "web"): (serving.service_port, 0)}, ("127.0.0.1",))
    assert _get(serving.service_port)[0] == 503
    assert _get(serving.node_port, "/livez")[0] == 200
    serving.state["health"] = NodeHealth(False, ("queue 0: the worker is not running",), 0.0)
    time.sleep(0.2)
    status, _, body = _get(serving.node_port, "/healthz")
    assert status == 503 and json.loads(body)["problems"] == ["queue 0: the worker is not running"]
    status, headers, body = _get(serving.node_port, "/healthz", method="HEAD")
    assert status == 503 and body == b"" and int(headers["Content-Length"]) > 0
    assert serving.servers.answers[("healthz", 503)] == 2


def test_a_port_no_longer_wanted_closes(serving):
    """A Service losing its healthCheckNodePort: its port stops listening, the node one stays."""
    serving.servers.set_services({}, ("127.0.0.1",))
    deadline = time.monotonic() + 3
    while ("127.0.0.1", serving.service_port) in serving.servers.bound():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(ConnectionRefusedError):
        _get(serving.service_port)
    assert _get(serving.node_port)[0] == 200


def test_slow_and_silent_clients_do_not_hold_up_others(serving, monkeypatch):
    """Clients that connect and send nothing, or half a head, take no thread: a real probe is
    answered at once meanwhile, and the silent ones are closed after CLIENT_TIMEOUT."""
    monkeypatch.setattr(health, "CLIENT_TIMEOUT", 0.5)
    idle = [socket.create_connection(("127.0.0.1", serving.service_port)) for _ in range(20)]
    idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: ")
    started = time.monotonic()
    assert _get(serving.service_port)[0] == 200
    assert time.monotonic() - started < 0.5
    idle[1].settimeout(3)
    assert idle[1].recv(100) == b""                  # closed by the server, without an answer
    for s in idle:
        s.close()


def test_more_clients_than_allowed_drop_the_oldest_not_the_server(serving, monkeypatch):
    """Past MAX_CLIENTS open connections the oldest is dropped; new probes are still answered."""
    monkeypatch.setattr(health, "MAX_CLIENTS", 8)
    held = [socket.create_connection(("127.0.0.1", serving.node_port)) for _ in range(30)]
    time.sleep(0.1)
    assert _get(serving.node_port)[0] == 200
    assert len(serving.servers._clients) <= 8
    for s in held:
        s.close()


def test_garbage_gets_400_and_the_server_goes_on(serving):
    """Bytes that are no HTTP request get a 400 answer; the next request is served."""
    with socket.create_connection(("127.0.0.1", serving.service_port), timeout=3) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", serving.service_port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 10000)
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    assert _get(serving.service_port)[0] == 200


def test_a_probe_that_raises_makes_the_node_unhealthy_not_the_thread_die():
    """A failing probe answers 503 naming the error; once it recovers, 200 again."""
    calls = {"fail": True}

    def probe():
        if calls["fail"]:
            raise ValueError("no snapshot")
        return NodeHealth(True, (), time.time())

    port, = _free_ports(1)
    servers = HealthServers(probe, f"127.0.0.1:{port}", refresh=0.05).start()
    try:
        _wait_listening(servers, ("127.0.0.1", port))
        status, _, body = _get(port)
        assert status == 503 and "ValueError: no snapshot" in json.loads(body)["problems"][0]
        calls["fail"] = False
        time.sleep(0.2)
        assert _get(port)[0] == 200
    finally:
        servers.close()


def test_a_busy_port_is_retried_until_it_is_free(monkeypatch):
    """Another process holds the port (kube-proxy still running): logged, retried, served once free."""
    monkeypatch.setattr(health, "RETRY_SECONDS", 0.2)
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    servers = HealthServers(lambda: NodeHealth(True, (), time.time()), f"127.0.0.1:{port}", refresh=0.05).start()
    try:
        time.sleep(0.3)
        assert ("127.0.0.1", port) not in servers.bound()
        busy.close()
        _wait_listening(servers, ("127.0.0.1", port))
        assert _get(port)[0] == 200
    finally:
        busy.close()
        servers.close()


def test_many_concurrent_probes_are_all_answered(serving):
    """50 clients at once, as several load balancers probing: every one gets its answer."""
    results = []

    def one():
        results.append(_get(serving.service_port)[0])

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 50


def test_the_agents_servers_pick_up_a_publish_they_were_not_handed(monkeypatch):
    """start_health_servers serves the agent's last published snapshot, and each check picks up
    a newer one (a publish that completed while the servers started is not missed)."""
    monkeypatch.setattr(health, "REFRESH_SECONDS", 0.05)
    service = _lb("web", port=32123)
    first = _cluster([service], [_slice("web", "web-1", _ep("10.1.0.5"))])
    network = NodeNetwork(addresses=(Address(2, "192.0.2.10", 24),))
    agent = _agent(first)
    agent.sync.published = SimpleNamespace(cluster=first, network=network)
    agent.config.healthz_bind_address = f"127.0.0.1:{_free_ports(1)[0]}"
    agent.kube_proxy_metrics = KubeProxyMetrics(started_at=0.0)
    agent.translator = SimpleNamespace(options=ProxyOptions(proxy_all=True, node_name=NODE))
    agent.steering.object_ids = lambda: {"prog": [], "map": []}
    agent.steering.upcall_pairs = {}
    servers = health.start_health_servers(agent)
    try:
        assert ("192.0.2.10", 32123) in servers._wanted and servers._services == {("shop", "web"): 1}
        second = _cluster([service], [])
        agent.sync.published = SimpleNamespace(cluster=second, network=network)
        deadline = time.monotonic() + 3
        while servers._services != {("shop", "web"): 0}:
            assert time.monotonic() < deadline, servers._services
            time.sleep(0.02)
    finally:
        servers.close()
