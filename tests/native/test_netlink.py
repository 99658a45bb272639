"""Netlink reading and watching in a throwaway namespace: links, addresses, routes, neighbours -> FIB."""
import os
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace")

from control.netlink import NetlinkWatcher, fib_from_net_state, read_net_state_in  # noqa: E402


def ip(netns, *args):
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns():
    name = f"xc-nl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "add", "xtr", "mtu", "1450", "address", "02:00:00:00:01:01",
           "type", "veth", "peer", "name", "xtr-peer")
        ip(name, "link", "add", "xgw", "address", "02:00:00:00:02:01", "type", "veth", "peer", "name", "xgw-peer")
        for dev in ("xtr", "xtr-peer", "xgw", "xgw-peer"):
            ip(name, "link", "set", dev, "up")
        ip(name, "addr", "add", "192.168.50.1/24", "dev", "xtr")
        ip(name, "addr", "add", "10.10.1.1/24", "dev", "xgw")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_links_addresses_and_fib_of_a_noencap_node(netns):
    """podCIDR routes via resolved node IPs and resolved local Pods become FIB entries with the right
    MACs; a route whose next hop is unresolved gives none."""
    ip(netns, "neigh", "add", "192.168.50.2", "lladdr", "02:00:00:00:00:02", "dev", "xtr", "nud", "permanent")
    ip(netns, "neigh", "add", "192.168.50.3", "lladdr", "02:00:00:00:00:03", "dev", "xtr", "nud", "stale")
    ip(netns, "route", "add", "10.10.2.0/24", "via", "192.168.50.2")        # node 2: resolved
    ip(netns, "route", "add", "10.10.3.0/24", "via", "192.168.50.3")        # node 3: stale, still usable
    ip(netns, "route", "add", "10.10.4.0/24", "via", "192.168.50.4")        # node 4: never resolved
    ip(netns, "neigh", "add", "10.10.1.7", "lladdr", "02:00:00:00:07:07", "dev", "xgw", "nud", "reachable")

    net = read_net_state_in(netns)
    xtr, xgw = net.link("xtr"), net.link("xgw")
    assert (xtr.mac, xtr.mtu, xtr.up) == ("02:00:00:00:01:01", 1450, True)
    assert [a.address for a in net.addresses_of("xtr") if a.family == 4] == ["192.168.50.1"]

    fib = fib_from_net_state(net, interfaces=("xtr", "xgw"))
    by_prefix = {e.prefix: e for e in fib}
    assert by_prefix["10.10.2.0/24"] == ("10.10.2.0/24", xtr.index, "02:00:00:00:00:02", xtr.mac,
                                         "192.168.50.2", 1450)
    assert by_prefix["10.10.3.0/24"].next_hop_mac == "02:00:00:00:00:03"
    assert "10.10.4.0/24" not in by_prefix
    assert by_prefix["10.10.1.7/32"][:4] == ("10.10.1.7/32", xgw.index, "02:00:00:00:07:07", xgw.mac)
    assert by_prefix["192.168.50.2/32"].ifindex == xtr.index
    assert fib[0].prefix.endswith("/32")                                     # longest prefix first
    only_gw = fib_from_net_state(net, interfaces=("xgw",))
    assert {e.ifindex for e in only_gw} == {xgw.index}


def test_watcher_reports_route_and_neighbour_changes(netns):
    """A route added and a neighbour resolved in the namespace each wake the watcher, and the re-read
    FIB then has the new entry."""
    calls = []
    watcher = NetlinkWatcher(lambda: calls.append(time.monotonic()), netns=netns).start()
    try:
        before = len(calls)
        ip(netns, "route", "add", "10.10.9.0/24", "via", "192.168.50.9")
        deadline = time.monotonic() + 5
        while len(calls) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) > before, "no notification for a new route"
        assert "10.10.9.0/24" not in {e.prefix for e in fib_from_net_state(read_net_state_in(netns))}

        before = len(calls)
        ip(netns, "neigh", "add", "192.168.50.9", "lladdr", "02:00:00:00:00:09", "dev", "xtr", "nud", "permanent")
        deadline = time.monotonic() + 5
        while len(calls) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) > before, "no notification for a new neighbour"
        fib = fib_from_net_state(read_net_state_in(netns))
        assert {e.prefix: e.next_hop_mac for e in fib}["10.10.9.0/24"] == "02:00:00:00:00:09"
    finally:
        watcher.stop()


def test_network_view_and_sync_loop_publish_a_new_fib(netns):
    """A neighbour resolved in the namespace reaches a published Snapshot through the sync loop, and
    a neighbour moving from REACHABLE to STALE (same MAC) publishes nothing new."""
    from control.model import ClusterState
    from control.netlink import NetworkView
    from control.sync import SyncLoop, collector

    class NoCluster:
        def snapshot(self):
            return ClusterState()

    ip(netns, "route", "add", "10.10.5.0/24", "via", "192.168.50.5")
    published = []
    view = NetworkView(interfaces=("xtr", "xgw"), netns=netns)
    loop = SyncLoop(collector(NoCluster(), view), published.append, debounce=0.02)
    view.start(loop.notify)
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not published and time.monotonic() < deadline:
            time.sleep(0.02)
        assert published and "10.10.5.0/24" not in {e.prefix for e in published[-1].network.fib}
        ip(netns, "neigh", "add", "192.168.50.5", "lladdr", "02:00:00:00:00:05", "dev", "xtr", "nud", "reachable")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "10.10.5.0/24" not in {e.prefix for e in published[-1].network.fib}:
            time.sleep(0.02)
        assert "10.10.5.0/24" in {e.prefix for e in published[-1].network.fib}
        count = len(published)
        ip(netns, "neigh", "change", "192.168.50.5", "lladdr", "02:00:00:00:00:05", "dev", "xtr", "nud", "stale")
        time.sleep(0.3)
        assert len(published) == count and loop.counters["unchanged"] >= 1
    finally:
        view.stop()
        loop.stop()


def neighbours(netns, dev):
    return subprocess.run(["ip", "-n", netns, "neigh", "show", "dev", dev], check=True,
                          capture_output=True, text=True).stdout


def test_neighbour_keeper_manages_only_its_own_entries(netns):
    """ensure() adds managed entries for unresolved next hops, leaves a resolved one alone,
    removes the entries it made when they are no longer needed, and stop() removes the rest."""
    from control.netlink import NeighbourKeeper
    ip(netns, "neigh", "add", "192.168.50.2", "lladdr", "02:00:00:00:00:02", "dev", "xtr", "nud", "permanent")
    state = read_net_state_in(netns)
    xtr, xgw = state.link("xtr").index, state.link("xgw").index
    keeper = NeighbourKeeper(netns)
    keeper.ensure({(xtr, "192.168.50.2"), (xtr, "192.168.50.3"), (xgw, "10.10.1.7")}, state.neighbours)
    assert "192.168.50.3" in neighbours(netns, "xtr") and "managed" in neighbours(netns, "xtr")
    assert "10.10.1.7" in neighbours(netns, "xgw")
    assert keeper.added == {(xtr, "192.168.50.3"), (xgw, "10.10.1.7")}
    keeper.ensure({(xtr, "192.168.50.2"), (xtr, "192.168.50.3")}, state.neighbours)
    assert "10.10.1.7" not in neighbours(netns, "xgw")
    keeper.stop()
    assert "192.168.50.3" not in neighbours(netns, "xtr")
    assert "192.168.50.2 lladdr 02:00:00:00:00:02 PERMANENT" in neighbours(netns, "xtr")


def test_neighbour_keeper_hands_its_entries_to_the_next_one(netns):
    """stop(keep=True) leaves the managed entries (a handover); the next keeper adopts them as
    its own, never someone else's entry, and removes them once they are no longer needed."""
    from control.netlink import NeighbourKeeper
    ip(netns, "neigh", "replace", "192.168.50.2", "lladdr", "02:00:00:00:00:02", "dev", "xtr", "nud", "permanent")
    state = read_net_state_in(netns)
    xtr = state.link("xtr").index
    first = NeighbourKeeper(netns)
    first.ensure({(xtr, "192.168.50.4")}, state.neighbours)
    first.stop(keep=True)
    assert "192.168.50.4" in neighbours(netns, "xtr")
    second = NeighbourKeeper(netns)
    assert second.adopt([xtr]) == {(xtr, "192.168.50.4")}
    second.ensure(set(), state.neighbours)
    assert "192.168.50.4" not in neighbours(netns, "xtr")
    assert "192.168.50.2 lladdr 02:00:00:00:00:02 PERMANENT" in neighbours(netns, "xtr")
