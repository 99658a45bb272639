"""SCTP through the pipeline with crafted frames (this kernel has no SCTP sockets): the CRC32c,
DNAT/SNAT with and without port translation, replies, association states and timeouts, and
malformed packets counted and dropped. Every CRC is checked against crc32c_reference, the lab's
bitwise implementation (lab/sctp_peer.py, from RFC 9260 appendix A), independent of
dataplane/_sctp.py's table."""
import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.sctp import (SCTP, SCTPChunkAbort, SCTPChunkCookieAck, SCTPChunkCookieEcho,
                               SCTPChunkData, SCTPChunkHeartbeatReq, SCTPChunkInit,
                               SCTPChunkInitAck, SCTPChunkShutdown, SCTPChunkShutdownAck,
                               SCTPChunkShutdownComplete)

import fixtures_pipeline as fx
from dataplane import abi, tables
from dataplane._conntrack import ct_lookup
from dataplane._sctp import CRC32C_TABLE, crc32c_bytes
from lab.sctp_peer import crc32c as crc32c_reference   # bitwise, independent of the table

L = abi.lib
S = 10**9
T0 = 1000 * S
SCTP_P = 132
CLUSTER_IP = "10.96.0.60"
NODE_PORT_REMOTE = 30868          # -> POD_B7:3868 (remote: SNAT to the node address)
NODE_PORT_LOCAL = 30869           # -> POD_A1:3868 (local: DNAT only, port translated)
DIAMETER = 3868
CLIENT_TAG, SERVER_TAG = 0x1111AAAA, 0x2222BBBB

SCTP_BACKENDS = dict(fx.BACKENDS)
SCTP_BACKENDS[9] = fx.Backend(fx.POD_B7, DIAMETER, False, fx.NODE_B)
SCTP_BACKENDS[10] = fx.Backend(fx.POD_A1, DIAMETER, True, fx.NODE_A)
SCTP_SERVICES = fx.SERVICES + [
    fx.Service("diameter", [(fx.CLUSTER_IP, CLUSTER_IP, DIAMETER, SCTP_P),
                            (fx.NODE_PORT, fx.NODE_A, NODE_PORT_REMOTE, SCTP_P)], ring=[9]),
    fx.Service("diameter-local", [(fx.NODE_PORT, fx.NODE_A, NODE_PORT_LOCAL, SCTP_P)], ring=[10],
               local_ring=[10]),
]


def sctp_crc_ok(frame):
    """The SCTP packet in an Ethernet frame carries the CRC32c of itself (field as zero, stored
    least significant byte first)."""
    ip = IP(frame[14:])
    packet = bytes(ip)[ip.ihl * 4:ip.len]
    field = int.from_bytes(packet[8:12], "little")
    return field == crc32c_reference(packet[:8] + bytes(4) + packet[12:])


def ip_header_ok(frame):
    header = frame[14:14 + (frame[14] & 0xf) * 4]
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return total == 0xffff


def sctp(src, dst, sport, dport, *chunks, tag=0, ttl=64):
    packet = IP(src=src, dst=dst, ttl=ttl) / SCTP(sport=sport, dport=dport, tag=tag)
    for chunk in chunks:
        packet = packet / chunk
    return packet


def init(init_tag=CLIENT_TAG):
    return SCTPChunkInit(init_tag=init_tag, a_rwnd=65536, n_out_streams=10, n_in_streams=10,
                         init_tsn=1)


def init_ack(init_tag=SERVER_TAG):
    return SCTPChunkInitAck(init_tag=init_tag, a_rwnd=65536, n_out_streams=10, n_in_streams=10,
                            init_tsn=1)


def topology():
    return fx.make_topology(services=SCTP_SERVICES, backends=SCTP_BACKENDS)


def send(st, ft, pkt, ingress, now_ns=T0):
    """One frame through the pipeline: (verdict, output frame, {counter: value})."""
    verdicts, outs, counters = fx.run([bytes(pkt)], ingress, st, ft, now_ns=now_ns)
    return int(verdicts[0]), outs[0], tables.counters_by_name(counters)


def entry(ft, src, dst, sport, dport):
    idx = ct_lookup(ft.ct, fx.ip4(src), fx.ip4(dst), sport, dport, SCTP_P)
    return None if idx < 0 else ft.ct[idx]


def in_use_entries(ft):
    return int(np.count_nonzero(ft.ct["flags"] & L.XSKP_CT_IN_USE))


# --- CRC32c ---------------------------------------------------------------------------------

def test_crc32c_gives_the_check_value_of_123456789():
    """CRC32c("123456789") is 0xE3069283 (the catalogued check value of CRC-32C/Castagnoli)."""
    data = np.frombuffer(b"123456789", np.uint8)
    assert int(crc32c_bytes(data, 0, 9)) == 0xE3069283
    assert crc32c_reference(b"123456789") == 0xE3069283


def test_crc32c_table_agrees_with_the_bitwise_reference_on_random_data():
    """The table-driven CRC equals the bitwise one for random lengths and contents, and every
    table entry is the bitwise CRC step of its index."""
    rng = np.random.default_rng(14)
    for length in (0, 1, 3, 4, 63, 64, 1500):
        data = rng.integers(0, 256, length, dtype=np.uint8)
        assert int(crc32c_bytes(data, 0, length)) == crc32c_reference(bytes(data)), length
    for value in (0, 1, 0x80, 0xff):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        assert int(CRC32C_TABLE[value]) == crc


def test_the_reference_agrees_with_scapys_sctp_checksum():
    """A packet scapy checksums itself verifies under crc32c_reference (the byte order of the
    field is the one the pipeline assumes)."""
    frame = bytes(fx.from_pod(fx.MAC_POD_A2) / sctp(fx.POD_A2, CLUSTER_IP, 40000, DIAMETER, init()))
    assert sctp_crc_ok(frame)


# --- translation ----------------------------------------------------------------------------

def test_an_init_to_a_cluster_ip_is_dnated_and_its_crc_left_as_it_was():
    """A Pod's INIT to an SCTP ClusterIP goes to the remote backend on the same port: only the
    address changes, which SCTP's CRC32c does not cover, so the checksum bytes stay as sent
    and still verify; the flow is in COOKIE_WAIT."""
    st, ft = topology()
    pkt = fx.from_pod(fx.MAC_POD_A2) / sctp(fx.POD_A2, CLUSTER_IP, 40000, DIAMETER, init())
    sent = bytes(pkt)
    verdict, out, counters = send(st, ft, pkt, fx.GATEWAY)
    assert verdict == fx.TX_T, counters
    got = IP(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (fx.POD_A2, fx.POD_B7, 40000, DIAMETER)
    assert out[:6] == fx.mac_bytes(fx.MAC_NODE_B).tobytes()
    assert out[34 + 8:34 + 12] == sent[34 + 8:34 + 12]
    assert sctp_crc_ok(out) and ip_header_ok(out) and got.ttl == 63
    assert counters.get("XSKP_CNT_DNAT") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1
    assert entry(ft, fx.POD_A2, CLUSTER_IP, 40000, DIAMETER)["state"] == L.XSKP_CT_SCTP_COOKIE_WAIT


def test_an_init_to_a_node_port_is_dnated_snated_and_its_reply_undone():
    """An external INIT to a NodePort with a remote backend is DNATed to backend:3868 and SNATed
    to the node address and a SNAT port, with a new valid CRC32c; the backend's INIT_ACK to the
    SNAT port returns to the client from NodePort, CRC valid again."""
    st, ft = topology()
    pkt = fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 50000, NODE_PORT_REMOTE, init())
    verdict, out, counters = send(st, ft, pkt, fx.TRANSPORT)
    assert verdict == fx.TX_T, counters
    snat = fx.expected_snat_port(fx.CLIENT, fx.NODE_A, 50000, NODE_PORT_REMOTE, SCTP_P)
    got = IP(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (fx.NODE_A, fx.POD_B7, snat, DIAMETER)
    assert got[SCTP].tag == 0 and got[SCTPChunkInit].init_tag == CLIENT_TAG
    assert sctp_crc_ok(out) and ip_header_ok(out)
    assert counters.get("XSKP_CNT_SNAT") == 1

    reply = fx.from_transport() / sctp(fx.POD_B7, fx.NODE_A, DIAMETER, snat, init_ack(), tag=CLIENT_TAG)
    verdict, out, counters = send(st, ft, reply, fx.TRANSPORT, T0 + S // 100)
    assert verdict == fx.TX_T, counters
    got = IP(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (fx.NODE_A, fx.CLIENT, NODE_PORT_REMOTE, 50000)
    assert out[:6] == fx.mac_bytes(fx.MAC_ROUTER).tobytes()
    assert sctp_crc_ok(out) and ip_header_ok(out)
    assert counters.get("XSKP_CNT_CT_HIT") == 1


def test_a_node_port_with_a_local_backend_translates_the_port_both_ways():
    """A NodePort to a local backend keeps the client's address (no SNAT) but changes the
    destination port 30869 -> 3868, so the CRC32c is computed again; the backend's reply gets
    the NodePort back as its source port, CRC valid."""
    st, ft = topology()
    pkt = fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 50001, NODE_PORT_LOCAL, init())
    verdict, out, _ = send(st, ft, pkt, fx.TRANSPORT)
    assert verdict == fx.TX_G
    got = IP(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (fx.CLIENT, fx.POD_A1, 50001, DIAMETER)
    assert sctp_crc_ok(out) and out[34 + 8:34 + 12] != bytes(pkt)[34 + 8:34 + 12]
    reply = fx.from_pod(fx.MAC_POD_A1) / sctp(fx.POD_A1, fx.CLIENT, DIAMETER, 50001, init_ack(),
                                              tag=CLIENT_TAG)
    verdict, out, _ = send(st, ft, reply, fx.GATEWAY)
    assert verdict == fx.TX_T
    got = IP(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (fx.NODE_A, fx.CLIENT, NODE_PORT_LOCAL, 50001)
    assert sctp_crc_ok(out)


def test_a_partial_crc_from_a_local_sender_is_completed():
    """A frame whose CRC32c field is 0 (a local socket's SCTP CRC offload on veth) has it
    computed (XSKP_CNT_CSUM_COMPLETED), so that the backend does not drop it."""
    st, ft = topology()
    pkt = fx.from_pod(fx.MAC_POD_A2) / IP(src=fx.POD_A2, dst=CLUSTER_IP) / SCTP(
        sport=40001, dport=DIAMETER, chksum=0) / init()
    verdict, out, counters = send(st, ft, pkt, fx.GATEWAY)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_CSUM_COMPLETED") == 1
    assert sctp_crc_ok(out)


# --- association states ---------------------------------------------------------------------

def test_the_association_goes_through_its_states_and_closes_with_shutdown_complete():
    """INIT, INIT_ACK, COOKIE_ECHO, COOKIE_ACK, DATA, SHUTDOWN, SHUTDOWN_ACK, SHUTDOWN_COMPLETE
    move the flow (both entries) COOKIE_WAIT, COOKIE_WAIT, COOKIE_ECHOED, ESTABLISHED,
    ESTABLISHED, SHUTDOWN, SHUTDOWN, CLOSED; every packet is forwarded with a valid CRC."""
    st, ft = topology()
    snat = fx.expected_snat_port(fx.CLIENT, fx.NODE_A, 50002, NODE_PORT_REMOTE, SCTP_P)

    def client(*chunks):
        return fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 50002, NODE_PORT_REMOTE, *chunks,
                                          tag=SERVER_TAG)

    def server(*chunks):
        return fx.from_transport() / sctp(fx.POD_B7, fx.NODE_A, DIAMETER, snat, *chunks, tag=CLIENT_TAG)

    steps = [
        (fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 50002, NODE_PORT_REMOTE, init()),
         L.XSKP_CT_SCTP_COOKIE_WAIT),
        (server(init_ack()), L.XSKP_CT_SCTP_COOKIE_WAIT),
        (client(SCTPChunkCookieEcho(cookie=b"c" * 8)), L.XSKP_CT_SCTP_COOKIE_ECHOED),
        (server(SCTPChunkCookieAck()), L.XSKP_CT_ESTABLISHED),
        (client(SCTPChunkData(tsn=1, data=b"diameter-request")), L.XSKP_CT_ESTABLISHED),
        (client(SCTPChunkShutdown(cumul_tsn_ack=1)), L.XSKP_CT_SCTP_SHUTDOWN),
        (server(SCTPChunkShutdownAck()), L.XSKP_CT_SCTP_SHUTDOWN),
        (client(SCTPChunkShutdownComplete()), L.XSKP_CT_SCTP_CLOSED),
    ]
    for n, (pkt, state) in enumerate(steps):
        verdict, out, counters = send(st, ft, pkt, fx.TRANSPORT, T0 + n * S // 100)
        assert verdict == fx.TX_T, (n, counters)
        assert sctp_crc_ok(out), n
        orig = entry(ft, fx.CLIENT, fx.NODE_A, 50002, NODE_PORT_REMOTE)
        reply = entry(ft, fx.POD_B7, fx.NODE_A, DIAMETER, snat)
        assert orig["state"] == state and reply["state"] == state, n
    assert in_use_entries(ft) == 2


def test_a_closed_association_expires_after_its_short_timeout():
    """A flow closed by SHUTDOWN_COMPLETE or ABORT is removed XSKP_CT_TIMEOUT_SCTP_CLOSED_S
    (10 s) after its last packet: a later INIT is a new flow."""
    st, ft = topology()
    first = fx.from_pod(fx.MAC_POD_A2) / sctp(fx.POD_A2, CLUSTER_IP, 40002, DIAMETER, init())
    send(st, ft, first, fx.GATEWAY)
    abort = fx.from_transport() / sctp(fx.POD_B7, fx.POD_A2, DIAMETER, 40002, SCTPChunkAbort(),
                                       tag=CLIENT_TAG)
    assert send(st, ft, abort, fx.TRANSPORT, T0 + S)[0] == fx.TX_G
    assert entry(ft, fx.POD_A2, CLUSTER_IP, 40002, DIAMETER)["state"] == L.XSKP_CT_SCTP_CLOSED
    late = T0 + S + (L.XSKP_CT_TIMEOUT_SCTP_CLOSED_S + 1) * S
    verdict, _, counters = send(st, ft, first, fx.GATEWAY, late)
    assert verdict == fx.TX_T
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1


def test_an_init_on_the_tuple_of_an_aborted_association_starts_a_new_flow_at_once():
    """An ABORT from the backend closes the flow; the client's next INIT on the same ports,
    within the CLOSED timeout, removes it (XSKP_CNT_CT_REUSED) and is balanced afresh, while a
    retransmitted INIT of an opening association keeps its entry."""
    st, ft = topology()
    first = fx.from_pod(fx.MAC_POD_A2) / sctp(fx.POD_A2, CLUSTER_IP, 40003, DIAMETER, init())
    send(st, ft, first, fx.GATEWAY)
    _, _, counters = send(st, ft, first, fx.GATEWAY, T0 + S)
    assert counters.get("XSKP_CNT_CT_HIT") == 1 and "XSKP_CNT_CT_REUSED" not in counters
    abort = fx.from_transport() / sctp(fx.POD_B7, fx.POD_A2, DIAMETER, 40003, SCTPChunkAbort(),
                                       tag=CLIENT_TAG)
    send(st, ft, abort, fx.TRANSPORT, T0 + 2 * S)
    verdict, _, counters = send(st, ft, first, fx.GATEWAY, T0 + 3 * S)
    assert verdict == fx.TX_T
    assert counters.get("XSKP_CNT_CT_REUSED") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1
    assert entry(ft, fx.POD_A2, CLUSTER_IP, 40003, DIAMETER)["state"] == L.XSKP_CT_SCTP_COOKIE_WAIT


def establish(st, ft, sport, now_ns=T0):
    """A Pod's association to the ClusterIP, handshake done (ESTABLISHED)."""
    def pod(*chunks, tag=SERVER_TAG):
        return fx.from_pod(fx.MAC_POD_A2) / sctp(fx.POD_A2, CLUSTER_IP, sport, DIAMETER, *chunks, tag=tag)

    def backend(*chunks):
        return fx.from_transport() / sctp(fx.POD_B7, fx.POD_A2, DIAMETER, sport, *chunks, tag=CLIENT_TAG)

    for pkt, ingress in ((pod(init(), tag=0), fx.GATEWAY), (backend(init_ack()), fx.TRANSPORT),
                         (pod(SCTPChunkCookieEcho(cookie=b"c" * 8)), fx.GATEWAY),
                         (backend(SCTPChunkCookieAck()), fx.TRANSPORT)):
        assert send(st, ft, pkt, ingress, now_ns)[0] != fx.DROP
    assert entry(ft, fx.POD_A2, CLUSTER_IP, sport, DIAMETER)["state"] == L.XSKP_CT_ESTABLISHED
    return pod


def test_an_established_association_lives_210s_idle_and_no_longer():
    """ESTABLISHED lasts XSKP_CT_TIMEOUT_SCTP_ESTABLISHED_S (210 s, nf_conntrack's) idle: a
    HEARTBEAT after 200 s still matches; DATA idle past 210 s finds the flow expired and, not
    being an INIT, is dropped as invalid (XSKP_DROP_SCTP_INVALID)."""
    st, ft = topology()
    pod = establish(st, ft, 40004)
    _, _, counters = send(st, ft, pod(SCTPChunkHeartbeatReq()), fx.GATEWAY, T0 + 200 * S)
    assert counters.get("XSKP_CNT_CT_HIT") == 1
    data = pod(SCTPChunkData(tsn=2, data=b"ping"))
    idle = (L.XSKP_CT_TIMEOUT_SCTP_ESTABLISHED_S + 1) * S
    verdict, _, counters = send(st, ft, data, fx.GATEWAY, T0 + 200 * S + idle)
    assert verdict == fx.DROP
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1 and counters.get("XSKP_DROP_SCTP_INVALID") == 1


def test_an_unanswered_init_expires_after_3s():
    """COOKIE_WAIT lasts XSKP_CT_TIMEOUT_SCTP_HANDSHAKE_S (3 s, RTO.Initial): an INIT sent again
    after 4 s is a new flow."""
    st, ft = topology()
    first = fx.from_pod(fx.MAC_POD_A2) / sctp(fx.POD_A2, CLUSTER_IP, 40005, DIAMETER, init())
    send(st, ft, first, fx.GATEWAY)
    _, _, counters = send(st, ft, first, fx.GATEWAY, T0 + (L.XSKP_CT_TIMEOUT_SCTP_HANDSHAKE_S + 1) * S)
    assert counters.get("XSKP_CNT_CT_EXPIRED") == 1 and counters.get("XSKP_CNT_CT_CREATED") == 1


def test_a_shutdown_flow_expires_after_3s():
    """SHUTDOWN moves an established flow to closing, which lasts XSKP_CT_TIMEOUT_SCTP_SHUTDOWN_S."""
    st, ft = topology()
    pod = establish(st, ft, 40006)
    send(st, ft, pod(SCTPChunkShutdown(cumul_tsn_ack=1)), fx.GATEWAY, T0 + S)
    assert entry(ft, fx.POD_A2, CLUSTER_IP, 40006, DIAMETER)["state"] == L.XSKP_CT_SCTP_SHUTDOWN
    verdict, _, counters = send(st, ft, pod(SCTPChunkData(tsn=3, data=b"x")), fx.GATEWAY,
                                T0 + S + (L.XSKP_CT_TIMEOUT_SCTP_SHUTDOWN_S + 1) * S)
    assert verdict == fx.DROP and counters.get("XSKP_CNT_CT_EXPIRED") == 1


def test_sctp_flows_stay_in_userspace_with_the_fast_path_on():
    """With a fast-path flow table, an established SCTP association is never offloaded (no
    flow-table entry, no XSKP_CT_OFFLOADED), while a UDP flow's second frame is."""
    st, ft = topology()
    ft = tables.with_fast_path(ft, np.zeros(64, tables.FLOW_V4_DTYPE),
                               np.zeros(1, tables.FAST_CONFIG_DTYPE), (11, 12), owner=0)
    pod = establish(st, ft, 40007)
    send(st, ft, pod(SCTPChunkData(tsn=2, data=b"x")), fx.GATEWAY, T0 + S)
    assert not (ft.ct["flags"] & L.XSKP_CT_OFFLOADED).any()
    assert not (ft.flows["flags"] & L.XSKP_FLOW_IN_USE).any()
    query = fx.from_pod(fx.MAC_POD_A2) / fx.udp(fx.POD_A2, "10.96.0.53", 40053, 53)
    send(st, ft, query, fx.GATEWAY)
    send(st, ft, fx.from_transport() / fx.udp(fx.POD_B8, fx.POD_A2, 5353, 40053), fx.TRANSPORT)
    assert (ft.flows["flags"] & L.XSKP_FLOW_IN_USE).any()


def test_an_icmp_frag_needed_quoting_a_translated_association_reaches_the_client():
    """An ICMP fragmentation-needed about a SNATed INIT is translated back: outer destination to
    the client, quoted addresses and ports to what the client sent (SCTP path MTU discovery)."""
    st, ft = topology()
    send(st, ft, fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 50003, NODE_PORT_REMOTE, init()),
         fx.TRANSPORT)
    snat = fx.expected_snat_port(fx.CLIENT, fx.NODE_A, 50003, NODE_PORT_REMOTE, SCTP_P)
    quoted = bytes(IP(src=fx.NODE_A, dst=fx.POD_B7, ttl=62) / SCTP(sport=snat, dport=DIAMETER))[:28]
    error = fx.from_transport() / IP(src="192.168.1.254", dst=fx.NODE_A) / ICMP(
        type=3, code=4, nexthopmtu=1400) / quoted
    verdict, out, counters = send(st, ft, error, fx.TRANSPORT)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_ICMP_ERROR_TRANSLATED") == 1
    got = IP(out[14:])
    assert got.dst == fx.CLIENT
    inner = bytes(got[ICMP])[8:]
    assert IP(inner[:20]).src == fx.CLIENT and IP(inner[:20]).dst == fx.NODE_A
    assert int.from_bytes(inner[20:22], "big") == 50003
    assert int.from_bytes(inner[22:24], "big") == NODE_PORT_REMOTE


def test_an_init_takes_over_the_snat_port_of_an_aborted_association_but_not_of_a_live_one():
    """With every SNAT port held (a range of 2), a new INIT takes over the port of the
    association closed by ABORT (XSKP_CNT_CT_REUSED), never the one still opening: once that
    one is the only one left, the next INIT is XSKP_DROP_SNAT_EXHAUSTED."""
    st, ft = topology()
    st.node[0]["snat_port_min"], st.node[0]["snat_port_max"] = 50000, 50001
    ports = []
    for sport in (51000, 51001):
        pkt = fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, sport, NODE_PORT_REMOTE, init())
        verdict, out, _ = send(st, ft, pkt, fx.TRANSPORT)
        assert verdict == fx.TX_T
        ports.append(IP(out[14:])[SCTP].sport)
    abort = fx.from_transport() / sctp(fx.POD_B7, fx.NODE_A, DIAMETER, ports[1], SCTPChunkAbort(),
                                       tag=CLIENT_TAG)
    assert send(st, ft, abort, fx.TRANSPORT, T0 + S)[0] == fx.TX_T
    third = fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 51002, NODE_PORT_REMOTE, init())
    verdict, out, counters = send(st, ft, third, fx.TRANSPORT, T0 + 2 * S)
    assert verdict == fx.TX_T and counters.get("XSKP_CNT_CT_REUSED") == 1, counters
    assert IP(out[14:])[SCTP].sport == ports[1] and sctp_crc_ok(out)
    assert entry(ft, fx.CLIENT, fx.NODE_A, 51001, NODE_PORT_REMOTE) is None
    fourth = fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 51003, NODE_PORT_REMOTE, init())
    verdict, _, counters = send(st, ft, fourth, fx.TRANSPORT, T0 + 2 * S)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SNAT_EXHAUSTED") == 1


# --- refused and malformed packets ----------------------------------------------------------

def with_chunk_bytes(src, dst, sport, dport, chunk_bytes, tag=0):
    """An SCTP packet whose chunk area is chunk_bytes as given, with a correct CRC32c."""
    header = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + tag.to_bytes(4, "big")
    crc = crc32c_reference(header + bytes(4) + chunk_bytes)
    return IP(src=src, dst=dst, proto=SCTP_P) / (header + crc.to_bytes(4, "little") + chunk_bytes)


INIT_BYTES = bytes(init())
DATA_BYTES = bytes(SCTPChunkData(tsn=1, data=b"abcd"))

REFUSED = [
    ("a DATA chunk opening no known association is invalid, as nf_conntrack has it",
     lambda: sctp(fx.POD_A2, CLUSTER_IP, 41000, DIAMETER, SCTPChunkData(tsn=1, data=b"x"), tag=5),
     "XSKP_DROP_SCTP_INVALID"),
    ("an ABORT for no known association is invalid (out of the blue, RFC 9260 8.4)",
     lambda: sctp(fx.POD_A2, CLUSTER_IP, 41001, DIAMETER, SCTPChunkAbort(), tag=5),
     "XSKP_DROP_SCTP_INVALID"),
    ("a COOKIE_ECHO opening no known association is invalid",
     lambda: sctp(fx.POD_A2, CLUSTER_IP, 41002, DIAMETER, SCTPChunkCookieEcho(cookie=b"c" * 8), tag=5),
     "XSKP_DROP_SCTP_INVALID"),
    ("an INIT with a nonzero verification tag is invalid (RFC 9260 8.5.1)",
     lambda: sctp(fx.POD_A2, CLUSTER_IP, 41003, DIAMETER, init(), tag=7), "XSKP_DROP_SCTP_INVALID"),
    ("an SCTP header cut short is truncated",
     lambda: IP(src=fx.POD_A2, dst=CLUSTER_IP, proto=SCTP_P) / bytes(8), "XSKP_DROP_TRUNCATED"),
    ("a packet without any chunk is malformed",
     lambda: with_chunk_bytes(fx.POD_A2, CLUSTER_IP, 41004, DIAMETER, b""), "XSKP_DROP_SCTP_BAD_CHUNK"),
    ("a chunk length below 4 is malformed",
     lambda: with_chunk_bytes(fx.POD_A2, CLUSTER_IP, 41005, DIAMETER, b"\x01\x00\x00\x02" + bytes(16)),
     "XSKP_DROP_SCTP_BAD_CHUNK"),
    ("a chunk length past the packet's end is malformed",
     lambda: with_chunk_bytes(fx.POD_A2, CLUSTER_IP, 41006, DIAMETER, INIT_BYTES[:2] + b"\x00\x40" + INIT_BYTES[4:]),
     "XSKP_DROP_SCTP_BAD_CHUNK"),
    ("a chunk header cut after its type is malformed",
     lambda: with_chunk_bytes(fx.POD_A2, CLUSTER_IP, 41007, DIAMETER, INIT_BYTES + b"\x00\x00"),
     "XSKP_DROP_SCTP_BAD_CHUNK"),
    ("an INIT bundled with DATA is malformed (RFC 9260 6.10)",
     lambda: with_chunk_bytes(fx.POD_A2, CLUSTER_IP, 41008, DIAMETER, INIT_BYTES + DATA_BYTES),
     "XSKP_DROP_SCTP_BAD_CHUNK"),
    ("an INIT too short for its fixed fields is malformed",
     lambda: with_chunk_bytes(fx.POD_A2, CLUSTER_IP, 41009, DIAMETER, b"\x01\x00\x00\x08" + bytes(4)),
     "XSKP_DROP_SCTP_BAD_CHUNK"),
    ("an INIT whose CRC32c does not verify is dropped",
     lambda: IP(src=fx.POD_A2, dst=CLUSTER_IP) / SCTP(sport=41010, dport=DIAMETER, chksum=0x12345678) / init(),
     "XSKP_DROP_SCTP_BAD_CRC"),
]


@pytest.mark.parametrize("what, make_packet, reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_sctp_packets_are_counted_and_dropped_before_any_state(what, make_packet, reason):
    """Each refused packet is dropped under its reason and leaves no conntrack entry."""
    st, ft = topology()
    verdict, _, counters = send(st, ft, fx.from_pod(fx.MAC_POD_A2) / make_packet(), fx.GATEWAY)
    assert verdict == fx.DROP, what
    assert counters.get(reason) == 1, (what, counters)
    assert in_use_entries(ft) == 0, what


def test_a_bad_crc_on_a_tracked_association_is_dropped_not_laundered():
    """A packet of an existing flow whose CRC32c does not verify is dropped before its ports
    are rewritten: recomputing the CRC would deliver corrupted data as valid."""
    st, ft = topology()
    send(st, ft, fx.from_transport() / sctp(fx.CLIENT, fx.NODE_A, 50004, NODE_PORT_REMOTE, init()),
         fx.TRANSPORT)
    bad = fx.from_transport() / IP(src=fx.CLIENT, dst=fx.NODE_A) / SCTP(
        sport=50004, dport=NODE_PORT_REMOTE, tag=SERVER_TAG, chksum=0xdeadbeef) / SCTPChunkData(tsn=1, data=b"x")
    verdict, _, counters = send(st, ft, bad, fx.TRANSPORT, T0 + S)
    assert verdict == fx.DROP and counters.get("XSKP_DROP_SCTP_BAD_CRC") == 1
