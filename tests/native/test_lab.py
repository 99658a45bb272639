"""The namespace lab itself: topologies build, carry traffic, and leave no namespace behind (root only)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from lab import Lab, LabError, cleanup_stale, cluster_lab, forwarder_lab, list_namespaces

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
PREFIX = "xlt"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_forwarder_lab_routes_client_to_pod_and_leaves_nothing():
    """The client reaches the Pod through the node's kernel, and teardown removes all three namespaces."""
    with Lab(PREFIX) as lab:
        topo = forwarder_lab(lab, queues=2)
        assert lab.ping(topo.client, topo.pod_if.ip)
        assert lab.ping(topo.pods, topo.client_if.ip)
        assert topo.transport.ifindex != topo.gateway.ifindex
        assert lab.read_sysctl(topo.node, "net.ipv4.ip_forward") == "1"
        queues = lab.run(topo.node, "ls /sys/class/net/tr0/queues").stdout.split()
        assert sorted(queues) == ["rx-0", "rx-1", "tx-0", "tx-1"]
        created = list(lab.namespaces)
        assert all(ns in list_namespaces(lab.run_id) for ns in created)
    assert not [ns for ns in created if ns in list_namespaces(PREFIX)]


def test_forwarder_lab_without_ip_forward_does_not_route():
    """With ip_forward=0 the node answers for itself but forwards nothing."""
    with Lab(PREFIX) as lab:
        topo = forwarder_lab(lab, ip_forward=False)
        assert lab.ping(topo.client, topo.transport.ip)
        assert not lab.ping(topo.client, topo.pod_if.ip, timeout=0.5)
        neigh = lab.ip(topo.node, "neigh show dev gw0")
        assert topo.pod_if.mac in neigh and "PERMANENT" in neigh


def test_cluster_lab_routes_pods_across_nodes_without_encapsulation():
    """A Pod on node0 reaches a Pod on node1 over the podCIDR-via-nodeIP routes; the client reaches nodes."""
    with Lab(PREFIX) as lab:
        cluster = cluster_lab(lab, nodes=2, pods_per_node=2)
        a, b = cluster.nodes[0].pods[0], cluster.nodes[1].pods[1]
        assert lab.ping(a.ns, b.iface.ip)
        assert lab.ping(cluster.client, cluster.nodes[1].ip)
        assert f"{cluster.nodes[1].pod_cidr} via {cluster.nodes[1].ip}" in lab.ip(cluster.nodes[0].ns, "route")
        assert len({p.iface.ip for p in cluster.pods}) == 4
        created = list(lab.namespaces)
    assert not [ns for ns in created if ns in list_namespaces(PREFIX)]


def test_teardown_runs_on_error_and_stops_processes():
    """An exception inside the lab still kills its processes and removes its namespaces."""
    with pytest.raises(RuntimeError):
        with Lab(PREFIX) as lab:
            topo = forwarder_lab(lab)
            proc = lab.popen(topo.pods, ["sleep", "60"])
            created = list(lab.namespaces)
            raise RuntimeError("test failure inside the lab")
    assert proc.poll() is not None
    assert not [ns for ns in created if ns in list_namespaces(PREFIX)]


def test_failed_command_names_command_and_namespace():
    """A failing command raises LabError carrying the command line and the kernel's message."""
    with Lab(PREFIX) as lab:
        ns = lab.add_namespace("solo")
        with pytest.raises(LabError, match="no-such-if"):
            lab.ip(ns, "link set dev no-such-if up")


def test_sigterm_tears_down_a_lab_in_another_process():
    """SIGTERM to a process holding an open lab removes its namespaces before it exits."""
    script = ("import time, lab\n"
              f"with lab.Lab({PREFIX!r}) as l:\n"
              "    lab.forwarder_lab(l); print(l.run_id, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    assert run_id and list_namespaces(run_id)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert list_namespaces(run_id) == []


def test_cleanup_stale_removes_namespaces_of_dead_runs():
    """A namespace left by a run whose process died (kill -9) is removed by cleanup_stale."""
    script = ("import os, lab\n"
              f"l = lab.Lab({PREFIX!r}); l.add_namespace('orphan'); print(l.run_id, flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    run_id = proc.stdout.strip()
    assert run_id and list_namespaces(run_id)
    deleted = cleanup_stale(PREFIX)
    assert f"{run_id}-orphan" in deleted and list_namespaces(run_id) == []
