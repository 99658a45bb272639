"""The pure FIB and next-hop functions: only resolved neighbours give MACs, longest prefix first."""
from control.netlink import Link, NetState, Neighbour, Route, fib_from_net_state

NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_FAILED, NUD_PERMANENT = 0x01, 0x02, 0x04, 0x20, 0x80

TR = Link(2, "eth0", "02:00:00:00:00:01", 1500, True)
GW = Link(3, "gw0", "02:00:00:00:00:02", 1450, True)
DOWN = Link(4, "eth1", "02:00:00:00:00:03", 1500, False)


def net(neighbours, routes=()):
    return NetState(links=(Link(1, "lo", "00:00:00:00:00:00", 65536, True), TR, GW, DOWN),
                    routes=(Route("192.168.0.0/24", 2), Route("10.1.0.0/24", 3),
                            Route("10.2.0.0/24", 2, "192.168.0.2"), Route("0.0.0.0/0", 2, "192.168.0.254"),
                            Route("10.3.0.0/24", 4, "192.168.1.3")) + tuple(routes),
                    neighbours=tuple(neighbours))


def test_only_reachable_stale_permanent_neighbours_make_entries():
    """INCOMPLETE and FAILED next hops (and ones without a MAC) give no entry; the others do."""
    fib = fib_from_net_state(net([
        Neighbour(2, "192.168.0.2", "0a:00:00:00:00:02", NUD_STALE),
        Neighbour(2, "192.168.0.254", None, NUD_INCOMPLETE),
        Neighbour(3, "10.1.0.5", "0a:00:00:00:01:05", NUD_REACHABLE),
        Neighbour(3, "10.1.0.6", "0a:00:00:00:01:06", NUD_FAILED),
        Neighbour(4, "192.168.1.3", "0a:00:00:00:01:03", NUD_PERMANENT),
    ]))
    assert [e.prefix for e in fib] == ["10.1.0.5/32", "192.168.0.2/32", "10.1.0.0/24", "10.2.0.0/24",
                                       "192.168.0.0/24"]
    assert fib[0] == ("10.1.0.5/32", 3, "0a:00:00:00:01:05", GW.mac, "10.1.0.5", 1450)
    assert fib[3][:4] == ("10.2.0.0/24", 2, "0a:00:00:00:00:02", TR.mac)
    # connected prefixes come without next hop and MAC: the host entries carry the MACs
    assert fib[2] == ("10.1.0.0/24", 3, None, GW.mac, None, 1450)


def test_interface_filter_and_default_route():
    """Restricting to one interface drops the others' entries; a resolved default gateway gives 0.0.0.0/0."""
    fib = fib_from_net_state(net([Neighbour(2, "192.168.0.254", "0a:00:00:00:00:fe", NUD_REACHABLE),
                                  Neighbour(3, "10.1.0.5", "0a:00:00:00:01:05", NUD_REACHABLE)]),
                             interfaces=("eth0",))
    assert [e.prefix for e in fib] == ["192.168.0.254/32", "192.168.0.0/24", "0.0.0.0/0"]


def test_next_hops_follow_the_longest_prefix_route():
    """A remote Pod goes to its node's gateway, an on-link Pod to itself, an external client to
    the default gateway; destinations routed out of other interfaces, or local, give nothing."""
    from control.netlink import Address, next_hops
    state = net([])
    state = NetState(links=state.links, routes=state.routes,
                     addresses=(Address(2, "192.168.0.1", 24),))
    hops = next_hops(state, ["10.2.0.7", "10.1.0.5", "203.0.113.9", "10.3.0.1", "192.168.0.1",
                             "192.168.0.2"], ("eth0", "gw0"))
    assert hops == {(2, "192.168.0.2"), (3, "10.1.0.5"), (2, "192.168.0.254")}
    more_specific = NetState(links=state.links, addresses=state.addresses,
                             routes=state.routes + (Route("10.2.0.0/25", 4, "192.168.1.3"),))
    assert next_hops(more_specific, ["10.2.0.7"], ("eth0", "gw0")) == set()


def test_delay_and_probe_keep_their_entries():
    """An unconfirmed entry passing through DELAY and PROBE keeps its MAC: the FIB does not flap."""
    fibs = [fib_from_net_state(net([Neighbour(2, "192.168.0.2", "0a:00:00:00:00:02", state)]))
            for state in (NUD_REACHABLE, NUD_STALE, 0x08, 0x10)]
    assert all(fib == fibs[0] for fib in fibs) and "10.2.0.0/24" in {e.prefix for e in fibs[0]}
