"""Bulk TCP through xskproxy from Pods that keep their default offloads, on the labs of
conftest.OFFLOAD_LABS: today's veth gateways, a Linux-bridge gateway (no native XDP: served in
upcall mode, as an OVS internal port is) and MTU 9000 on every link. Each path runs iperf3 both
ways and a curl of a few MB, reports what it measured (a section at the end of the run), and
checks that the agents carried it."""
import time
from dataclasses import dataclass

import pytest

from lab import cluster_services as svc
from lab import scenarios

IPERF_SECONDS = 3
MIN_BITS_PER_SECOND = 100e6     # far below any working path here (~1-20 Gbit/s): below it, a stall
SUPER_FRAME_BYTES = 65536       # the most payload one forwarded packet can carry (a GSO super-frame)


@dataclass(frozen=True)
class Path:
    """A client reaching a server; `carriers` are the nodes whose agent forwards the data when
    the client sends, `reverse_carriers` when the server sends."""
    name: str
    client: object            # ClusterLab -> namespace
    address: object           # ClusterLab -> address to connect to
    iperf_port: int
    http_port: int
    carriers: tuple
    reverse_carriers: tuple


def _pod0(cluster):
    return cluster.nodes[0].pods[0].ns


PATHS = [
    Path("clusterip_local", _pod0, lambda c: "10.96.2.1", svc.IPERF_PORTS[0], 80, ("node0",), ("node0",)),
    Path("clusterip_remote", _pod0, lambda c: "10.96.2.2", svc.IPERF_PORTS[0], 80,
         ("node0", "node1"), ("node0", "node1")),
    Path("pod_to_remote_pod", _pod0, lambda c: c.nodes[1].pods[0].iface.ip, svc.IPERF_PORTS[0],
         svc.HTTP_PORT, ("node0", "node1"), ("node0", "node1")),
    # a remote backend's replies to node0's SNAT address are routed by node1's kernel
    Path("nodeport_local", lambda c: c.client, lambda c: c.nodes[0].ip, 30601, 30602, ("node0",), ("node0",)),
    Path("nodeport_remote", lambda c: c.client, lambda c: c.nodes[0].ip, 30611, 30612,
         ("node0", "node1"), ("node0",)),
    # DSR: node0 encapsulates to node1, whose agent decapsulates and replies straight to the client
    Path("loadbalancer_dsr", lambda c: c.client, lambda c: scenarios.BULK_LB_IP, svc.IPERF_PORTS[0], 80,
         ("node0", "node1"), ("node1",)),
]


def _mbit(bits_per_second):
    return f"{bits_per_second / 1e6:,.0f} Mbit/s"


def _carried(sl, moment):
    return {node.name: scenarios.carried_by_agent(sl, node, moment) for node in sl.cluster.nodes}


def _drops(sl, moment):
    return {node.name: scenarios.socket_drops(sl, node, moment) for node in sl.cluster.nodes}


def test_lab_shape(bulk_lab, bulk_report):
    """The variant is what it claims: Pods keep TSO and GSO on; a bridge gateway is served in
    upcall mode (auto: no XDP on a virtual interface); MTU 9000 is on every Pod and transport
    link."""
    sl, lab = bulk_lab, bulk_lab.lab
    for node in sl.cluster.nodes:
        features = lab.run(node.pods[0].ns, ["ethtool", "-k", "eth0"]).stdout
        assert "tcp-segmentation-offload: on" in features and "generic-segmentation-offload: on" in features
        started = [line for line in sl.node_log(node).splitlines() if "event=started" in line][-1]
        bulk_report(f"{sl.variant} {node.name} XDP attach modes: {started.split('xdp=')[1].split()[0]}")
        if sl.variant == "bridge":
            kind = lab.ip(node.ns, ["-d", "-j", "link", "show", "dev", "gw0"])
            assert '"info_kind":"bridge"' in kind.replace(" ", "")
            assert "gw0:upcall" in started, started
            assert lab.ip(node.ns, ["-j", "link", "show", "dev", "gw0"]).count('"xdp"') == 0
        if sl.variant == "mtu9000":
            for ns, ifname in ((node.ns, "tr0"), (node.ns, "gw0"), (node.pods[0].ns, "eth0")):
                assert '"mtu":9000' in lab.ip(ns, ["-j", "link", "show", "dev", ifname]).replace(" ", "")


@pytest.mark.parametrize("reverse", [False, True], ids=["client_sends", "server_sends"])
@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_iperf3(bulk_lab, bulk_report, path, reverse):
    """iperf3 over the path completes above MIN_BITS_PER_SECOND, and the agents of the nodes on
    the data's way forwarded at least one packet per 64 KB it moved."""
    sl = bulk_lab
    cluster = sl.cluster
    carriers = path.reverse_carriers if reverse else path.carriers
    mark = time.time()
    before, drops_before = _carried(sl, mark), _drops(sl, mark)
    result = scenarios.iperf3(sl, path.client(cluster), path.address(cluster), path.iperf_port,
                              seconds=IPERF_SECONDS, reverse=reverse)
    mark = time.time()
    after, drops_after = _carried(sl, mark), _drops(sl, mark)
    carried = {name: after[name] - before[name] for name in after}
    dropped = {name: {ifname: count - drops_before[name].get(ifname, 0)
                      for ifname, count in drops_after[name].items() if count > drops_before[name].get(ifname, 0)}
               for name in drops_after}
    bulk_report(f"{sl.variant} {path.name} iperf3 {'server' if reverse else 'client'} sends: "
                f"{_mbit(result['bits_per_second'])}, {result['bytes']:,} bytes, retransmits "
                f"{result['retransmits']}, longest stall {result['stall']}s, error {result['error']}; "
                f"packets forwarded by agents {carried}, AF_XDP rx drops {dropped}")
    assert result["exit"] == 0 and result["error"] is None, f"iperf3 did not complete: {result}"
    assert result["bits_per_second"] >= MIN_BITS_PER_SECOND, \
        f"stalled: {_mbit(result['bits_per_second'])} (floor {_mbit(MIN_BITS_PER_SECOND)}): {result}"
    least = result["bytes"] // SUPER_FRAME_BYTES
    for name in carriers:
        assert carried[name] >= least, (f"{name}'s agent forwarded {carried[name]} packets for "
                                        f"{result['bytes']:,} bytes (at least {least}): not through xskproxy")


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_curl(bulk_lab, bulk_report, path):
    """curl fetches a few MB over the path: HTTP 200 and the whole body within the time limit."""
    sl = bulk_lab
    cluster = sl.cluster
    url = f"http://{path.address(cluster)}:{path.http_port}/bytes/{scenarios.BULK_BODY_BYTES}"
    result = scenarios.http_fetch(sl, path.client(cluster), url)
    bulk_report(f"{sl.variant} {path.name} curl: HTTP {result['code']}, {result['bytes']:,} bytes, "
                f"{_mbit(result['bits_per_second'])}, exit {result['exit']}")
    assert result["code"] == 200 and result["bytes"] == scenarios.BULK_BODY_BYTES, result
