"""Interfaces with 4 queues served in upcall mode (the default on virtual and multi-queue
interfaces) by the agent's default `queues: auto`, on this 2-CPU machine 2 workers: the tc program
runs on every queue of tr0 and gw0 and spreads what userspace takes over the upcall pair's 2
queues by a key both directions of a flow share (the client for a Service's flows, the port for
a SNAT reply), so each worker sees every packet of its flows, whichever queue of which interface
they arrived on (issue 15)."""
import shutil
import time

import pytest

from conftest import _start_agents
from lab import lifecycle, scenarios
from lab.netns import Lab

QUEUES = 4
NODE_PORT_CONNECTIONS = 200


@pytest.fixture(scope="module")
def four_queue_lab(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lab-4q"))
    with Lab("xe4q") as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir, queues=QUEUES)
        _start_agents(sl, workdir)
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)


def test_the_lab_has_four_queues_and_the_agents_serve_them_in_upcall_mode(four_queue_lab):
    sl = four_queue_lab
    for node in sl.cluster.nodes:
        channels = sl.lab.run(node.ns, ["ethtool", "-l", "tr0"]).stdout.split("Current hardware settings:")[1]
        assert channels.split()[:2] == ["RX:", str(QUEUES)], channels
        started = [line for line in sl.node_log(node).splitlines() if "event=started" in line][-1]
        assert "tr0:upcall" in started and "gw0:upcall" in started, started


def _worker_rx(sl, node):
    """{queue: frames its worker received on either interface} from the agent's stats."""
    stats = scenarios.agent_stats_after(sl, node, time.time())
    return {q: sum(c["rx_frames"] for c in row["worker"].values()) for q, row in stats["queues"].items()}


def test_two_workers_serve_the_four_queues_each_seeing_its_own_flows(four_queue_lab):
    """queues auto: min(4 queues, 2 CPUs) = 2 workers, each with its own pair queue; connections
    from several sources (the client and every Pod, to a ClusterIP and a NodePort) all succeed,
    and both workers carried frames."""
    sl = four_queue_lab
    node0 = sl.cluster.nodes[0]
    started = [line for line in sl.node_log(node0).splitlines() if "event=started" in line][-1]
    assert " queues=2 " in started, started
    before = _worker_rx(sl, node0)
    requests = [(sl.cluster.client, f"http://{node0.ip}:30080/")] + [
        (pod.ns, url) for pod in node0.pods for url in (f"http://{node0.ip}:30080/", "http://10.96.0.10/")]
    answered = [sl.http(ns, url) is not None for ns, url in requests for _ in range(5)]
    after = _worker_rx(sl, node0)
    assert all(answered), answered
    assert sorted(after) == ["0", "1"] and all(after[q] > before.get(q, 0) for q in after), (before, after)


def test_every_nodeport_connection_from_outside_is_answered(four_queue_lab):
    """The repro of issue 15 (200 separate connections to a NodePort with a local Pod, 140 answered
    with queues: 1 in XDP mode): every one is answered, and the replies were steered back."""
    sl = four_queue_lab
    node0 = sl.cluster.nodes[0]
    before = scenarios.agent_stats_after(sl, node0, time.time())["steering"]
    answered = sum(sl.http(sl.cluster.client, f"http://{node0.ip}:30080/") is not None
                   for _ in range(NODE_PORT_CONNECTIONS))
    after = scenarios.agent_stats_after(sl, node0, time.time())["steering"]
    assert answered == NODE_PORT_CONNECTIONS
    assert after["STEER_REDIRECT_FRONTEND"] > before["STEER_REDIRECT_FRONTEND"]


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS, ids=[s.__name__ for s in scenarios.SCENARIOS])
def test_service_scenario_on_four_queues(four_queue_lab, scenario):
    result = scenario(four_queue_lab)
    assert result.ok, f"{scenario.__doc__.strip()} -> {result.detail}"


LIFETIME = [lifecycle.netfilter_bypass, lifecycle.fail_open_on_kill, lifecycle.restart_without_loss]


@pytest.mark.parametrize("scenario", LIFETIME, ids=[s.__name__ for s in LIFETIME])
def test_bypass_and_lifetime_on_four_queues(four_queue_lab, scenario):
    """The bypass, kill -9 and SIGTERM handover (its flows kept, on both tiers) with 2 workers."""
    result = scenario(four_queue_lab)
    print(f"\n{result.name}: {result.detail}")
    assert result.ok, f"{scenario.__doc__.strip()} -> {result.detail}"
