"""SCTP Services through real agents, with crafted frames: this kernel has no SCTP sockets
(socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT), so no real association
runs. lab.sctp_peer sends an INIT over a raw IP socket and the backend Pod answers it with an
INIT_ACK the same way; both sides check every CRC32c with their own implementation."""
import os
import shutil

import pytest

from control import agent
from lab import scenarios
from lab.netns import Lab

from conftest import _start_agents


# How the agents take packets in: xdpMode auto picks upcall mode on the lab's veths (xskp_fast
# steers at tc), native puts the XDP steering program on them.
XDP_MODES = ("auto", "native")


@pytest.fixture(scope="module", params=XDP_MODES)
def sctp_lab(request, tmp_path_factory):
    """The two-node ServiceLab with the SCTP Service (scenarios.sctp_services) and its agents,
    in each of XDP_MODES."""
    workdir = str(tmp_path_factory.mktemp("sctp"))
    with Lab("xsctp" + request.param[0]) as lab:
        sl = scenarios.ServiceLab(lab, workdir=workdir, agent_options={"xdpMode": request.param})
        scenarios.write_sctp_manifest(sl)
        _start_agents(sl, workdir)
        yield sl
    shutil.rmtree(workdir, ignore_errors=True)


def test_this_kernel_has_no_sctp_sockets():
    """The premise of crafting frames: an SCTP socket cannot be made here (when it can, real
    associations should be added to these tests)."""
    import socket
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()
    except OSError:
        return
    pytest.skip("this kernel has SCTP sockets: a real association test would be possible")


def _describe(sl, called, received):
    return f"client: {called}, backend: {received}, node0: {sl.agent_stats(sl.cluster.nodes[0])}"


def test_an_init_to_a_node_port_reaches_the_backend_translated_and_the_init_ack_returns(sctp_lab):
    """An external client's INIT to node0's SCTP NodePort reaches the remote backend at
    Pod:3868, SNATed to node0's address and a SNAT port, with a valid CRC32c; the backend's
    INIT_ACK comes back to the client from node0:30868 with a valid CRC32c and the client's tag."""
    sl = sctp_lab
    node0 = sl.cluster.nodes[0]
    backend = sl.cluster.nodes[1].pods[0]
    called, received = scenarios.sctp_exchange(sl, sl.cluster.client, node0.ip, scenarios.SCTP_NODE_PORT, 45000)
    detail = _describe(sl, called, received)
    assert received, detail
    first = received[0]
    assert (first["dst"], first["dport"]) == (backend.iface.ip, scenarios.SCTP_PORT), detail
    assert first["src"] == node0.ip and 61000 <= first["sport"] <= 65535, detail
    assert first["crc_ok"] and first["tag"] == 0, detail
    assert first["init_tag"] == called["sent"]["init_tag"], detail
    reply = called["reply"]
    assert reply is not None, detail
    assert (reply["src"], reply["sport"]) == (node0.ip, scenarios.SCTP_NODE_PORT), detail
    assert (reply["dst"], reply["dport"]) == (sl.cluster.client_if.ip, 45000), detail
    assert reply["crc_ok"] and reply["chunks"] == ["INIT_ACK"], detail
    assert reply["tag"] == called["sent"]["init_tag"], detail


def test_an_init_to_a_cluster_ip_keeps_its_crc_and_the_reply_comes_from_the_cluster_ip(sctp_lab):
    """A Pod's INIT to the SCTP ClusterIP reaches the backend on another node with only its
    destination address changed: the CRC32c bytes are the ones the client sent (SCTP has no
    pseudo-header) and verify; the INIT_ACK returns from ClusterIP:3868."""
    sl = sctp_lab
    pod = sl.cluster.nodes[0].pods[0]
    backend = sl.cluster.nodes[1].pods[0]
    called, received = scenarios.sctp_exchange(sl, pod.ns, scenarios.SCTP_CLUSTER_IP, scenarios.SCTP_PORT, 45001)
    detail = _describe(sl, called, received)
    assert received, detail
    first = received[0]
    assert (first["src"], first["sport"]) == (pod.iface.ip, 45001), detail
    assert (first["dst"], first["dport"]) == (backend.iface.ip, scenarios.SCTP_PORT), detail
    assert first["crc_ok"] and first["crc"] == called["sent"]["crc"], detail
    reply = called["reply"]
    assert reply is not None, detail
    assert (reply["src"], reply["sport"], reply["dport"]) == (scenarios.SCTP_CLUSTER_IP, scenarios.SCTP_PORT, 45001)
    assert reply["crc_ok"] and reply["chunks"] == ["INIT_ACK"], detail


def test_the_agent_tracked_the_associations_in_userspace(sctp_lab):
    """node0's agent holds both associations as SCTP flows in COOKIE_WAIT (or expired by now),
    in the userspace tier, and dropped no frame as malformed SCTP."""
    sl = sctp_lab
    node0 = sl.cluster.nodes[0]
    stats = sl.agent_stats(node0)
    pipeline = stats["queues"]["0"]["pipeline"]
    for reason in ("XSKP_DROP_SCTP_BAD_CHUNK", "XSKP_DROP_SCTP_BAD_CRC", "XSKP_DROP_SCTP_INVALID"):
        assert pipeline.get(reason, 0) == 0, pipeline
    flows = [f for f in agent.read_conntrack(os.path.join(sl.workdir, f"state-{node0.name}"))
             if f["proto"] == "sctp"]
    assert len(flows) >= 2, flows
    for flow in flows:
        assert flow["tier"] == "userspace" and flow["state"] == "SCTP_COOKIE_WAIT", flows
