"""Property tests (hypothesis) of process_batch over random, malformed and truncated frames and
random table contents: it never raises, never writes outside a frame's UMEM chunk, gives every
frame exactly one verdict and one count, and keeps conntrack pairs consistent."""
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st_

import fixtures_pipeline as fx
from dataplane import abi, tables
from dataplane.pipeline import process_batch

L = abi.lib
FRAME_SIZE = L.XSKP_FRAME_SIZE
ADDR_POOL = [fx.ip4(a) for a in ("10.96.0.10", "10.96.0.11", "10.96.0.53", fx.NODE_A, fx.NODE_B,
                                 fx.POD_A1, fx.POD_A2, fx.POD_B7, "198.51.100.12", "203.0.113.7",
                                 "10.10.2.9", "0.0.0.0", "255.255.255.255")]
PORT_POOL = [0, 53, 80, 8080, 5353, 30010, 30011, 40000, 40500, 65535]


def fixture_flows():
    """(src, dst, proto, sport, dport) of every fixture input frame, so random frames hit
    Services, tracked flows and routes often."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    flows = []
    for scenario in fx.scenarios():
        for step in scenario.steps:
            pkt = Ether(bytes(step.frame))
            if IP in pkt and pkt[IP].proto in (6, 17) and hasattr(pkt[IP].payload, "dport"):
                ip = pkt[IP]
                flows.append((fx.ip4(ip.src), fx.ip4(ip.dst), ip.proto, ip.payload.sport,
                              ip.payload.dport))
    return flows


FLOWS = fixture_flows()


def random_service_tables(rng):
    """ServiceTables with random (often inconsistent) contents drawn from small pools."""
    n_services = int(rng.integers(1, 6))
    st = tables.make_service_tables(16, n_services, 8, 64, 6, 8, 4)
    node = st.node[0]
    node["node_addr"] = rng.choice(ADDR_POOL)
    node["snat_port_min"] = int(rng.integers(0, 65536))
    node["snat_port_max"] = int(rng.integers(0, 65536))
    node["iface_mac"] = rng.integers(0, 256, (2, 6))
    node["fib_generation"] = int(rng.integers(0, 3))
    for _ in range(int(rng.integers(0, 16))):
        tables.insert_frontend(st.frontends, rng.choice(ADDR_POOL), rng.choice(PORT_POOL),
                               int(rng.choice([6, 17, 1])), int(rng.integers(1, 5)),
                               int(rng.integers(0, n_services + 2)))
    for name in ("flags", "affinity_timeout_s", "ring_offset", "ring_size", "local_ring_offset",
                 "local_ring_size", "source_ranges_offset", "source_ranges_count"):
        st.services[name] = rng.integers(0, 80 if "ring" in name else 100000, n_services)
    st.maglev[:] = rng.integers(0, st.backends.shape[0] + 3, st.maglev.shape[0])
    st.backends["addr"] = rng.choice(ADDR_POOL, st.backends.shape[0])
    st.backends["port"] = rng.choice(PORT_POOL, st.backends.shape[0])
    st.backends["flags"] = rng.integers(0, 8, st.backends.shape[0])
    st.backends["node_addr"] = rng.choice(ADDR_POOL, st.backends.shape[0])
    st.source_ranges["net"] = rng.choice(ADDR_POOL, st.source_ranges.shape[0])
    st.source_ranges["mask"] = rng.choice([0, 0xffffff00, 0xffffffff], st.source_ranges.shape[0])
    routes = [(int(rng.choice(ADDR_POOL)), int(rng.integers(0, 33)),
               int(rng.choice(ADDR_POOL + [0])), int(rng.integers(0, 3)), int(rng.integers(0, 2)))
              for _ in range(int(rng.integers(0, 6)))]
    tables.set_routes(st, routes)
    for _ in range(int(rng.integers(0, 8))):
        tables.insert_neighbour(st.neighbours, rng.choice(ADDR_POOL), int(rng.integers(0, 3)),
                                rng.integers(0, 256, 6).astype(np.uint8))
    return st


def perturbed_topology(rng, ct_capacity):
    """The fixture topology (so DNAT, SNAT, DSR, hairpin and ICMP paths run) with random damage:
    backends dying or moving, service flags flipped, a tiny SNAT range, a new FIB generation."""
    st, ft = fx.make_topology(ct_capacity=ct_capacity, affinity_capacity=32)
    for bid in rng.integers(1, st.backends.shape[0], int(rng.integers(0, 3))):
        st.backends[bid]["flags"] = int(rng.integers(0, 8))
        if rng.integers(0, 2):
            st.backends[bid]["addr"] = rng.choice(ADDR_POOL)
    for sid in rng.integers(0, st.services.shape[0], int(rng.integers(0, 3))):
        st.services[sid]["flags"] = int(rng.integers(0, 32))
        st.services[sid]["affinity_timeout_s"] = int(rng.choice([0, 1, 86400]))
    if rng.integers(0, 3) == 0:
        st.node[0]["snat_port_min"] = 40000
        st.node[0]["snat_port_max"] = 40000 + int(rng.integers(0, 3))
    if rng.integers(0, 3) == 0:
        st.node[0]["fib_generation"] += 1
    return st, ft


def checksum16(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


@st_.composite
def frames(draw):
    """A frame: random bytes, or Ethernet (+802.1Q) / IPv4 (maybe IPIP) / L4 with fields from
    small pools, then maybe truncated and with a few bytes flipped."""
    if draw(st_.integers(0, 9)) == 0:
        return draw(st_.binary(min_size=0, max_size=120))
    l2 = b"\x02" * 6 + b"\x04" * 6
    if draw(st_.booleans()) and draw(st_.integers(0, 4)) == 0:
        l2 += b"\x81\x00\x00\x07"
    ethertype = draw(st_.sampled_from([0x0800] * 8 + [0x0806, 0x86dd, 0x1234]))
    l2 += struct.pack("!H", ethertype)

    flow = draw(st_.sampled_from(FLOWS)) if draw(st_.integers(0, 3)) else None

    def ipv4(proto, payload, depth):
        options = b"\x01" * 4 * draw(st_.integers(0, 2)) if draw(st_.integers(0, 5)) == 0 else b""
        ihl = 5 + len(options) // 4
        frag = draw(st_.sampled_from([0, 0, 0, 0, 0, 0x4000, 0x2000, 0x0010]))
        ttl = draw(st_.sampled_from([64, 64, 64, 1, 0, 2]))
        if flow is not None and depth == 0:
            src, dst = flow[0], flow[1]
        else:
            src = draw(st_.sampled_from(ADDR_POOL))
            dst = draw(st_.sampled_from(ADDR_POOL))
        total = 4 * ihl + len(payload)
        if draw(st_.integers(0, 9)) == 0:
            total = draw(st_.integers(0, 0xffff))
        header = struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, total, 1, frag, ttl, proto, 0, src, dst)
        header += options
        header = header[:10] + struct.pack("!H", checksum16(header)) + header[12:]
        return header + payload

    def l4(depth):
        if flow is not None and depth == 0 and draw(st_.integers(0, 5)):
            proto, sport, dport = flow[2], flow[3], flow[4]
        else:
            proto = draw(st_.sampled_from([6, 6, 17, 17, 1, 4, 47]))
            sport = draw(st_.sampled_from(PORT_POOL))
            dport = draw(st_.sampled_from(PORT_POOL))
        body = draw(st_.binary(min_size=0, max_size=40))
        if proto == 6:
            flags = draw(st_.sampled_from([0x02, 0x12, 0x10, 0x11, 0x04, 0x18, 0x01]))
            payload = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 512,
                                  draw(st_.integers(0, 0xffff)), 0) + body
        elif proto == 17:
            payload = struct.pack("!HHHH", sport, dport, 8 + len(body),
                                  draw(st_.sampled_from([0, 1, 0xffff]))) + body
        elif proto == 1:
            icmp_type = draw(st_.sampled_from([3, 11, 12, 8, 0]))
            quoted = ipv4(draw(st_.sampled_from([6, 17])), struct.pack("!HHI", sport, dport, 0), depth + 1) \
                if depth < 1 else b""
            payload = struct.pack("!BBHI", icmp_type, 0, 0, 0) + quoted + body[:8]
        elif proto == 4 and depth < 1:
            return proto, ipv4(*l4(depth + 1), depth + 1)
        else:
            payload = body
        return proto, payload

    frame = l2 + ipv4(*l4(0), 0)
    if draw(st_.integers(0, 3)) == 0:
        frame = frame[:draw(st_.integers(0, len(frame)))]
    if draw(st_.integers(0, 4)) == 0 and frame:
        raw = bytearray(frame)
        for _ in range(draw(st_.integers(1, 3))):
            raw[draw(st_.integers(0, len(raw) - 1))] = draw(st_.integers(0, 255))
        frame = bytes(raw)
    return frame


def ct_pairs_consistent(ct):
    in_use = np.nonzero(ct["flags"] & L.XSKP_CT_IN_USE)[0]
    for idx in in_use:
        peer = int(ct["peer"][idx])
        if peer == L.XSKP_NO_PEER:
            assert ct["flags"][idx] & L.XSKP_CT_DSR_ENCAP
            continue
        assert ct["flags"][peer] & L.XSKP_CT_IN_USE, f"entry {idx} points at a free peer {peer}"
        assert int(ct["peer"][peer]) == idx


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st_.integers(0, 2**32 - 1), batch=st_.lists(frames(), min_size=1, max_size=8),
       offsets=st_.lists(st_.integers(0, 4095), min_size=8, max_size=8),
       ingress=st_.integers(0, 2), bad_desc=st_.integers(0, 15), rounds=st_.integers(1, 3),
       ct_capacity=st_.sampled_from([32, 64, 1024]))
def test_pipeline_never_raises_never_writes_outside_frames(seed, batch, offsets, ingress, bad_desc,
                                                           rounds, ct_capacity):
    """Random frames at random chunk offsets over random tables: no exception, one verdict and one
    count per frame, frames stay inside their chunks, other chunks and the UMEM tail unchanged."""
    rng = np.random.default_rng(seed)
    if seed % 3 == 0:
        st = random_service_tables(rng)
        ft = tables.make_flow_tables(ct_capacity, 32)
    else:
        st, ft = perturbed_topology(rng, ct_capacity)
    n = len(batch)
    chunks = n + 2
    umem = rng.integers(0, 256, chunks * FRAME_SIZE + 100).astype(np.uint8)
    for r in range(rounds):
        addrs = np.zeros(n, np.uint64)
        lens = np.zeros(n, np.uint32)
        for i, frame in enumerate(batch):
            frame = frame[:FRAME_SIZE]
            off = min(offsets[i], FRAME_SIZE - len(frame))
            base = (i + 1) * FRAME_SIZE + off            # chunk 0 and the last stay untouched
            umem[base:base + len(frame)] = np.frombuffer(frame, np.uint8)
            addrs[i] = base
            lens[i] = len(frame)
        if bad_desc == 0:
            addrs[0] = chunks * FRAME_SIZE + 8          # outside the UMEM
        elif bad_desc == 1:
            lens[0] = FRAME_SIZE + 1                    # longer than a chunk
        before = umem.copy()
        original_chunks = [int(a) // FRAME_SIZE for a in addrs]
        verdicts = np.full(n, -5, np.int32)
        counters = tables.make_counters()
        process_batch(umem, addrs, lens, n, ingress, st, ft, counters, verdicts,
                      np.uint64(10**12 + r * 40 * 10**9))
        assert set(verdicts.tolist()) <= {L.XSKP_VERDICT_DROP, L.XSKP_VERDICT_TX_TRANSPORT,
                                          L.XSKP_VERDICT_TX_GATEWAY}
        per_frame = int(counters[1:L.XSKP_DROP_REASON_MAX].sum()
                        + counters[L.XSKP_CNT_TX_TRANSPORT] + counters[L.XSKP_CNT_TX_GATEWAY])
        assert per_frame == n and counters[0] == 0
        touched = np.zeros(umem.shape[0], bool)
        for i in range(n):
            if verdicts[i] != L.XSKP_VERDICT_DROP:
                chunk = int(addrs[i]) // FRAME_SIZE
                assert chunk == original_chunks[i]
                assert int(addrs[i]) + int(lens[i]) <= (chunk + 1) * FRAME_SIZE
            c = original_chunks[i]
            if c < chunks:
                touched[c * FRAME_SIZE:(c + 1) * FRAME_SIZE] = True
        assert np.array_equal(umem[~touched], before[~touched])
        ct_pairs_consistent(ft.ct)


SCENARIOS = fx.scenarios()
STEP_FRAMES = [[(bytes(step.frame), step.ingress) for step in sc.steps] for sc in SCENARIOS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=st_.integers(0, len(SCENARIOS) - 1), step=st_.integers(0, 10),
       cut=st_.integers(0, 200), flips=st_.lists(st_.tuples(st_.integers(0, 199), st_.integers(0, 255)),
                                                  max_size=4),
       offset=st_.sampled_from([0, 1, 20, 256, 3000]))
def test_mutated_fixture_frames_after_their_flow_setup(scenario, step, cut, flips, offset):
    """A fixture step's frame, truncated and with bytes changed, sent after the scenario's earlier
    steps (so conntrack, DSR decapsulation and ICMP translation paths run on broken input): one
    verdict and one count, nothing written outside its chunk, conntrack pairs consistent."""
    steps = STEP_FRAMES[scenario]
    step = step % len(steps)
    st, ft = fx.make_topology(ct_capacity=256, affinity_capacity=32)
    for frame, ingress in steps[:step]:
        fx.run([frame], ingress, st, ft)
    frame, ingress = steps[step]
    raw = bytearray(frame[:cut] if cut < len(frame) else frame)
    for pos, value in flips:
        if raw:
            raw[pos % len(raw)] = value
    raw = bytes(raw)[:FRAME_SIZE - offset]
    umem = np.full(3 * FRAME_SIZE, 0xa5, np.uint8)
    base = FRAME_SIZE + offset
    umem[base:base + len(raw)] = np.frombuffer(raw, np.uint8)
    before = umem.copy()
    addrs = np.array([base], np.uint64)
    lens = np.array([len(raw)], np.uint32)
    verdicts = np.full(1, -5, np.int32)
    counters = tables.make_counters()
    process_batch(umem, addrs, lens, 1, ingress, st, ft, counters, verdicts, np.uint64(10**12))
    assert verdicts[0] in (L.XSKP_VERDICT_DROP, L.XSKP_VERDICT_TX_TRANSPORT, L.XSKP_VERDICT_TX_GATEWAY)
    assert int(counters[1:L.XSKP_DROP_REASON_MAX].sum() + counters[L.XSKP_CNT_TX_TRANSPORT]
               + counters[L.XSKP_CNT_TX_GATEWAY]) == 1
    assert np.array_equal(umem[:FRAME_SIZE], before[:FRAME_SIZE])
    assert np.array_equal(umem[2 * FRAME_SIZE:], before[2 * FRAME_SIZE:])
    if verdicts[0] != L.XSKP_VERDICT_DROP:
        assert FRAME_SIZE <= int(addrs[0]) and int(addrs[0]) + int(lens[0]) <= 2 * FRAME_SIZE
    ct_pairs_consistent(ft.ct)
