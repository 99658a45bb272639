"""What kube-proxy does besides forwarding, through xskproxy agents in the lab (issue 14): health-
check node ports and /healthz over real sockets, a DNS backend replaced under dig loops, and
kube-proxy's metric series. Each test prints what it measured."""
import json
import shutil

import pytest

from lab import kube_proxy_parity as parity
from lab import scenarios
from lab.netns import Lab

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed")


@pytest.fixture(scope="module")
def parity_lab(tmp_path_factory):
    """A two-node ServiceLab with lb-local served by node0's Pods and every agent running."""
    workdir = str(tmp_path_factory.mktemp("h14b"))
    with Lab("h14b") as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir)
        parity.write_parity_manifest(sl, sl.cluster.nodes[0].pods, [])
        sl.start_agents()
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)


def test_health_check_node_port_answers_200_only_where_endpoints_are_local(parity_lab):
    """An external load balancer probing the healthCheckNodePort gets 200 from node0 (lb-local's
    two Pods run there) and 503 from node1, with kube-proxy's JSON; /healthz and /livez say 200."""
    seen = parity.health_checks(parity_lab)
    print(json.dumps(seen, indent=1))
    node0, node1 = (seen[n.name] for n in parity_lab.cluster.nodes)
    assert node0["health_check_node_port"] == (200, {"service": {"namespace": "default", "name": "lb-local"},
                                                     "localEndpoints": 2, "serviceProxyHealthy": True})
    assert node1["health_check_node_port"][0] == 503
    assert node1["health_check_node_port"][1]["localEndpoints"] == 0
    for node in (node0, node1):
        assert node["/healthz"][0] == 200 and node["/healthz"][1]["nodeEligible"] is True
        assert node["/livez"][0] == 200 and node["/livez"][1]["problems"] == []


def test_health_check_node_port_follows_the_endpoints(parity_lab):
    """lb-local's endpoints move to node1: node1 answers 200 and node0 503 within seconds of
    the change (each agent's manifest poll, then its publish); and back."""
    node0, node1 = parity_lab.cluster.nodes
    to_node1 = parity.health_check_flip(parity_lab, node1.pods, {node0.name: 503, node1.name: 200})
    back = parity.health_check_flip(parity_lab, node0.pods, {node0.name: 200, node1.name: 503})
    print(f"healthCheckNodePort answers after an EndpointSlice change (s): to node1 {to_node1}, back {back}")
    for flipped in (to_node1, back):
        assert all(seconds is not None and seconds < 5 for seconds in flipped.values()), flipped


def test_dns_backend_replaced_under_a_dig_loop_waits_at_most_one_retry(parity_lab):
    """A ClusterIP DNS Service's backend replaced gracefully, then by a crash (the old dnsmasq
    killed as the slice moves on): no dig query, from a fixed source port (one UDP flow for the
    whole run) or a new port each, goes unanswered within its one retry."""
    result = parity.dns_backend_replacement(parity_lab)
    print(json.dumps(result, indent=1))
    for node in parity_lab.cluster.nodes:          # what the agents dropped, should a query be lost
        stats = parity_lab.agent_stats(node) or {}
        drops = {name: value for q in stats.get("queues", {}).values()
                 for name, value in q.get("pipeline", {}).items() if "DROP" in name and value}
        print(f"{node.name}: pipeline drops {drops}, load average {open('/proc/loadavg').read().split()[:3]}")
    try:
        for loop, phases in result.items():
            if not isinstance(phases, dict):
                continue
            for phase, summary in phases.items():
                assert summary["queries"] > 0, (loop, phase)
                assert summary["failed"] == 0, (loop, phase, summary)
                assert summary["longest_wait_s"] < 2.5, (loop, phase, summary)
            assert phases["graceful"]["programming_s"] is not None, (loop, phases)
            assert phases["crash"]["first_answer_from_new_s"] is not None, (loop, phases)
    except AssertionError:
        print("--- node0.log, last lines ---\n" + "\n".join(parity_lab.node_log(parity_lab.cluster.nodes[0])
                                                        .splitlines()[-40:]))
        raise


def test_kube_proxy_series_are_exposed_next_to_ours(parity_lab):
    """Node0's agent exposes kube-proxy's sync and network programming series; the DNS test's
    EndpointSlice changes (trigger times after the agent started) were measured."""
    metrics = parity.agent_metrics(parity_lab, parity_lab.cluster.nodes[0])
    print(json.dumps({k: v for k, v in metrics.items() if "_bucket" not in k}, indent=1))
    assert metrics["kubeproxy_sync_proxy_rules_duration_seconds_count"] > 0
    assert metrics["kubeproxy_sync_proxy_rules_endpoint_changes_total"] > 0
    assert metrics["kubeproxy_sync_proxy_rules_endpoint_changes_pending"] == 0
    assert metrics["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > 0
    count = metrics["kubeproxy_network_programming_duration_seconds_count"]
    assert count > 0
    print(f"network programming latency: {count:.0f} changes, mean "
          f"{metrics['kubeproxy_network_programming_duration_seconds_sum'] / count:.3f}s")


def test_healthz_turns_503_when_the_kernel_no_longer_runs_our_xdp_program(parity_lab):
    """Detaching the agent's XDP programs behind its back on node1 (another tool loading over
    them): node1's /healthz and /livez answer 503 naming the interface within a few seconds,
    and its healthCheckNodePort says serviceProxyHealthy false; node0 stays healthy. Last in
    this module: node1's agent is left broken."""
    node0, node1 = parity_lab.cluster.nodes
    detached = parity.detach_xdp_programs(parity_lab, node1)
    assert detached, "no XDP program found on node1"
    seconds, answer = parity.wait_for_healthz(parity_lab, node1, 503)
    print(f"XDP detached from {detached} on node1: /healthz 503 after {seconds}s: {answer}")
    assert seconds is not None and seconds < 5, answer
    assert any("is not ours" in p for p in answer["problems"]), answer
    status, body = parity.http_get(parity_lab, parity_lab.cluster.client,
                                   f"http://{node1.ip}:{parity.HEALTH_CHECK_NODE_PORT}/")
    assert body["serviceProxyHealthy"] is False
    assert parity.http_get(parity_lab, parity_lab.cluster.client, f"http://{node0.ip}:{parity.NODE_HEALTH_PORT}/livez")[0] == 200
