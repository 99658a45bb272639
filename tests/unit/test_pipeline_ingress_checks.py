"""What the pipeline refuses or answers before it touches any state: 802.1Q-tagged frames, IPv4
headers whose checksum does not verify, and TTL expiry (answered with ICMP time exceeded, rate
limited as the kernel's icmp_msgs_per_sec / icmp_msgs_burst)."""
import numpy as np
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Dot1Q, Ether

import fixtures_pipeline as fx
from dataplane import abi, tables

L = abi.lib


def ct_in_use(ft):
    return int(np.count_nonzero(ft.ct["flags"] & L.XSKP_CT_IN_USE))


def test_tagged_syns_to_a_nodeport_are_dropped_as_vlan_and_create_no_flow():
    """100 SYNs tagged VLAN 10 to a NodePort are all XSKP_DROP_VLAN: none is NATed, no flow."""
    st, ft = fx.make_topology()
    frames = [bytes(fx.from_transport() / Dot1Q(vlan=10)
                    / fx.tcp(fx.CLIENT, fx.NODE_A, 52000 + k, 30011, "S")) for k in range(100)]
    verdicts, _, counters = fx.run(frames, fx.TRANSPORT, st, ft, umem=fx.Umem(100))
    assert list(verdicts) == [fx.DROP] * 100
    assert tables.counters_by_name(counters) == {"XSKP_DROP_VLAN": 100}
    assert ct_in_use(ft) == 0


def test_a_bad_ip_header_checksum_creates_no_flow():
    """A NodePort SYN whose IPv4 header checksum is off by one is XSKP_DROP_BAD_CSUM and leaves the
    conntrack table empty; the same SYN with its checksum right is translated."""
    st, ft = fx.make_topology()
    good = bytearray(bytes(fx.from_transport() / fx.tcp(fx.CLIENT, fx.NODE_A, 52100, 30011, "S")))
    bad = bytearray(good)
    bad[24] ^= 0x01                      # IPv4 checksum, low byte
    verdicts, _, counters = fx.run([bytes(bad)], fx.TRANSPORT, st, ft)
    assert verdicts[0] == fx.DROP
    assert tables.counters_by_name(counters) == {"XSKP_DROP_BAD_CSUM": 1}
    assert ct_in_use(ft) == 0
    verdicts, _, _ = fx.run([bytes(good)], fx.TRANSPORT, st, ft)
    assert verdicts[0] == fx.TX_T and ct_in_use(ft) == 2


def test_ttl_expiry_is_answered_before_any_flow_is_made():
    """A TTL 1 SYN to a NodePort gets a time exceeded (type 11 code 0) to the client and creates
    neither a flow nor a SNAT port."""
    st, ft = fx.make_topology()
    frame = fx.from_transport() / fx.tcp(fx.CLIENT, fx.NODE_A, 52200, 30011, "S", ttl=1)
    verdicts, outs, counters = fx.run([bytes(frame)], fx.TRANSPORT, st, ft)
    assert verdicts[0] == fx.TX_T
    reply = Ether(outs[0])
    assert reply[IP].src == fx.NODE_A and reply[IP].dst == fx.CLIENT
    assert (reply[ICMP].type, reply[ICMP].code) == (11, 0)
    assert bytes(reply[ICMP].payload) == bytes(frame[IP])
    got = tables.counters_by_name(counters)
    assert got == {"XSKP_CNT_ICMP_TIME_EXCEEDED": 1, "XSKP_CNT_TX_TRANSPORT": 1}
    assert ct_in_use(ft) == 0


def test_time_exceeded_is_rate_limited_like_the_kernel():
    """60 expiring frames at one instant: the first XSKP_ICMP_ERROR_BURST are answered, the rest
    dropped as TTL_EXCEEDED; one interval later one more is answered."""
    st, ft = fx.make_topology()
    burst = L.XSKP_ICMP_ERROR_BURST
    frames = [bytes(fx.from_pod(fx.MAC_POD_A2) / fx.tcp(fx.POD_A2, fx.POD_B7, 43100 + k, 8080, "S",
                                                        ttl=1)) for k in range(60)]
    counters = tables.make_counters()
    verdicts, _, counters = fx.run(frames, fx.GATEWAY, st, ft, now_ns=10**12, counters=counters,
                                   umem=fx.Umem(60))
    assert list(verdicts) == [fx.TX_G] * burst + [fx.DROP] * (60 - burst)
    got = tables.counters_by_name(counters)
    assert got["XSKP_CNT_ICMP_TIME_EXCEEDED"] == burst
    assert got["XSKP_DROP_TTL_EXCEEDED"] == 60 - burst
    verdicts, _, _ = fx.run(frames[:2], fx.GATEWAY, st, ft,
                            now_ns=10**12 + L.XSKP_ICMP_ERROR_INTERVAL_NS, counters=counters)
    assert list(verdicts) == [fx.TX_G, fx.DROP]
