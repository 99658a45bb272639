"""Katran-style fixtures through process_batch: each step's verdict, output frame (byte-exact
against scapy's own build, so every checksum is scapy's) and drop reason; see fixtures_pipeline."""
import pytest
from scapy.layers.l2 import Ether

import fixtures_pipeline as fx
from dataplane import abi, tables

SCENARIOS = fx.scenarios()


def scapy_rebuilt(frame):
    """frame re-serialised by scapy with its checksums and lengths recomputed (a UDP checksum of 0,
    "none", is kept; an ICMP error's quoted packet is left as quoted)."""
    pkt = Ether(frame)
    layer = pkt
    while layer:
        keep_udp_zero = layer.name == "UDP" and layer.chksum == 0
        for name in ("chksum", "len"):
            if name in layer.fields and not (name == "chksum" and keep_udp_zero):
                setattr(layer, name, None)
        if layer.name == "ICMP" or (layer.name == "IP" and (layer.frag or layer.flags.MF)):
            break  # a quote or a fragment: its L4 checksum covers bytes that are not here
        layer = layer.payload if layer.payload else None
    return bytes(pkt)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fixture_scenario(scenario):
    """Every step gives its expected verdict, drop reason and exact output frame."""
    st, ft = fx.make_topology()
    if scenario.setup:
        scenario.setup(st, ft)
    for step in scenario.steps:
        frame = bytes(step.frame)
        counters = tables.make_counters()
        verdicts, outs, counters = fx.run([frame], step.ingress, st, ft,
                                          now_ns=int(step.now_s * 1e9), counters=counters)
        got = tables.counters_by_name(counters)
        assert verdicts[0] == step.verdict, f"{step.description}: counters {got}"
        if step.verdict == fx.DROP:
            assert got.get(step.reason) == 1, f"{step.description}: counters {got}"
            continue
        expected = bytes(step.expected)
        assert outs[0] == expected, (
            f"{step.description}\n got      {Ether(outs[0]).summary()} {outs[0].hex()}\n"
            f" expected {Ether(expected).summary()} {expected.hex()}")
        assert scapy_rebuilt(outs[0]) == outs[0], f"{step.description}: checksums do not verify"
