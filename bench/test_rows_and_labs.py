"""Unit tests of the rows issue 12's must-shows added: the bridge-gateway lab's rows, the cross-node
Pod-to-Pod rows, (f) with flowOffload false at the smallest N only, the attach mode read per row, CPU per GB
and the report's Pod-to-Pod section. No namespaces, no timing.

The `ip -j -d link` entries are what iproute2 6.1 (Debian 12) printed in a lab namespace.
"""
from bench import agent_setup, report
from bench.measure import (POD_TO_POD_PORT, POD_TO_POD_WORKLOADS, RR_LATENCY, TCP_SERVER_PORT, TCP_WORKLOADS,
                           UDP_ESTABLISHED, WORKLOADS, cpu_per_gb, xdp_attach_mode)
from bench.paths import CrossNodeBypass, CrossNodeKernel, IptablesKubeProxy, NodeNetfilter, XskproxyAgent, all_paths
from bench.run import FULL, QUICK, row_workloads, select_rows

SKB_LINK = {"ifname": "xa", "xdp": {"mode": 2, "prog": {"id": 1822, "name": "xdp_generate", "jited": 1},
                                    "attached": [{"mode": 2, "prog": {"id": 1822, "name": "xdp_generate"}}]}}
NATIVE_LINK = {"ifname": "tr0", "xdp": {"mode": 1, "prog": {"id": 7, "name": "xskp_steer"}}}


def test_flow_offload_comparison_rows_run_at_the_smallest_service_count_only():
    """The first flowOffload setting gives (f) at every N; the others only at the smallest (cheap comparison rows)."""
    ids = [r.row_id for r in all_paths((10, 1000, 10000), (None, False)) if r.key == "f"]
    assert ids == ["f10", "f1000", "f10000", "f10-no-offload"]


def test_flow_offload_comparison_rows_carry_what_rides_established_flows():
    """A comparison row (a later flowOffload setting) carries UDP established and TCP bulk, not new flows nor
    request/response; the first setting's rows carry everything."""
    rows = [r for r in all_paths((10,), (None, False)) if r.key == "f"]
    assert [w.key for w in row_workloads(rows[1], WORKLOADS, (10,))] == [UDP_ESTABLISHED.key] + [
        w.key for w in TCP_WORKLOADS]
    assert row_workloads(rows[0], WORKLOADS, (10,)) == [w for w in WORKLOADS if not w.pod_to_pod]


def test_full_and_quick_row_selection():
    """make bench: every veth row incl. f10-no-offload and (h), (i); the bridge lab (b), (c), (f) at N=10 with
    TCP bulk. The quick run: no comparison row; the bridge lab also runs (h), (i)."""
    full = dict(select_rows(FULL["service_counts"], FULL["agent_flow_offload"], FULL["gateways"], FULL["workloads"],
                            bridge_paths=FULL["bridge_paths"]))
    assert [r.row_id for r in full["bridge"]] == ["b10-bridge", "c10-bridge", "f10-bridge"]
    assert {"f10-no-offload", "h", "i", "f10000"} <= {r.row_id for r in full["veth"]}
    quick = dict(select_rows(QUICK["service_counts"], QUICK["agent_flow_offload"], QUICK["gateways"],
                             QUICK["workloads"], bridge_paths=QUICK["bridge_paths"]))
    assert [r.row_id for r in quick["bridge"]] == ["b10-bridge", "c10-bridge", "f10-bridge", "h-bridge", "i-bridge"]
    assert not any(r.comparison for rows in quick.values() for r in rows)
    only = dict(select_rows((10,), (None,), ("veth", "bridge"), WORKLOADS, only="hi"))
    assert [r.row_id for r in only["bridge"]] == ["h-bridge", "i-bridge"]


def test_bridge_lab_has_the_service_paths_at_the_smallest_n_and_the_pod_to_pod_rows():
    """The bridge-gateway lab runs (b), (c), (f) at the smallest N with the first flowOffload setting, and (h),
    (i); its rows are told apart by row_id and label."""
    rows = all_paths((10, 1000), (None, False), gateway="bridge")
    assert [r.row_id for r in rows] == ["b10-bridge", "c10-bridge", "f10-bridge", "h-bridge", "i-bridge"]
    assert all(r.label.endswith("bridge gateway") and r.describe()["gateway"] == "bridge" for r in rows)
    veth_ids = {r.row_id for r in all_paths((10, 1000), (None, False))}
    assert not veth_ids & {r.row_id for r in rows}


def test_bridge_rows_carry_tcp_bulk_only():
    """On the bridge lab a Service path carries the iperf3 workloads, not UDP nor request/response."""
    row = IptablesKubeProxy(10, "bridge")
    assert row_workloads(row, WORKLOADS, (10,)) == TCP_WORKLOADS
    assert row_workloads(IptablesKubeProxy(10), WORKLOADS, (10,)) == [w for w in WORKLOADS if not w.pod_to_pod]


def test_pod_to_pod_workloads_run_on_the_cross_node_rows_only():
    """(h) and (i) carry only the Pod-to-Pod workloads, on either lab; no other row carries them."""
    for gateway in ("veth", "bridge"):
        for row in (CrossNodeKernel(10, gateway), CrossNodeBypass(10, gateway)):
            assert row_workloads(row, WORKLOADS, (10, 1000)) == POD_TO_POD_WORKLOADS
            assert row.unsupported(POD_TO_POD_WORKLOADS[0]) is None
    others = [r for r in all_paths((10,), (None, False)) if not r.pod_to_pod]
    assert not any(r.carries(w) for r in others for w in POD_TO_POD_WORKLOADS)


def test_pod_to_pod_aims_at_the_pod_on_a_port_no_service_uses():
    """The Pod-to-Pod server port is not the Services' backend port, so no path treats the flow as a Service's."""
    assert POD_TO_POD_WORKLOADS[0].server_port == POD_TO_POD_PORT != TCP_SERVER_PORT
    assert TCP_WORKLOADS[0].server_port == RR_LATENCY.server_port == TCP_SERVER_PORT
    assert all(w.offloads and w.tool == "iperf3" for w in POD_TO_POD_WORKLOADS)


def test_bypass_row_runs_the_agent_with_offload_forwarding_and_the_peer_node():
    """(i) is the agent with flowOffload true, ip_forward on (bpf_fib_lookup needs it) and the other node in
    its manifest, whose podCIDR the client's Pod address is in."""
    row = CrossNodeBypass(10)
    assert row.flow_offload is True and row.kernel_forwards and row.row_id == "i"
    assert agent_setup.agent_config("/m", "/s", "", flow_offload=row.flow_offload)["flowOffload"] is True
    doc = agent_setup.manifest([], node_ip="10.0.0.1", pod_cidr="10.244.0.0/24",
                               other_nodes=[("bench-peer", "10.0.0.100", "10.244.1.0/24")])
    nodes = {n["metadata"]["name"]: n for n in doc["items"] if n["kind"] == "Node"}
    assert nodes["bench-peer"]["spec"]["podCIDR"] == "10.244.1.0/24"
    assert nodes["bench-peer"]["status"]["addresses"][0] == {"type": "InternalIP", "address": "10.0.0.100"}
    assert nodes[agent_setup.NODE_NAME]["spec"]["podCIDR"] == "10.244.0.0/24"
    assert XskproxyAgent(10).other_nodes(None) == []


def test_node_netfilter_has_forward_chains_conntrack_and_the_service_rules():
    """A node's rules: filter FORWARD through KUBE-FORWARD (conntrack states) and ANTREA-FORWARD, nat with
    (b)'s KUBE-SERVICES for N Services, kube-proxy's and Antrea's masquerade, each table committed once."""
    text = NodeNetfilter(3).ruleset("10.244.0.2", "10.244.0.0/24")
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines.count("COMMIT") == 2 and lines[-1] == "COMMIT"
    assert lines.index("*nat") == lines.index("COMMIT") + 1
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in lines
    assert any("--ctstate RELATED,ESTABLISHED -j ACCEPT" in line for line in lines)
    assert any(line.startswith("-A ANTREA-FORWARD -i gw0") for line in lines)
    assert sum(line.startswith("-A KUBE-SERVICES -d ") for line in lines) == 4   # 3 UDP + the last one's TCP
    assert any("-s 10.244.0.0/24 ! -d 10.244.0.0/16 ! -o gw0" in line and "MASQUERADE" in line for line in lines)


def test_xdp_attach_mode_from_ip_link_json():
    """`ip -j -d link`'s xdp.mode: 1 native (driver), 2 skb (generic); no xdp key: nothing attached."""
    assert xdp_attach_mode(SKB_LINK) == "skb"
    assert xdp_attach_mode(NATIVE_LINK) == "native"
    assert xdp_attach_mode({"ifname": "gw0"}) is None


def test_attach_text_names_mode_and_interfaces():
    """The report's `attached` cell: XDP mode per interface group, transport first, and the tc programs."""
    assert report.attach_text({"xdp": {"gw0": "skb", "tr0": "skb"}, "tc": ["tr0", "gw0"]}) == \
        "XDP skb on tr0, gw0 + tc on tr0, gw0"
    assert report.attach_text({"xdp": {"tr0": "native", "gw0": "native"}, "tc": []}) == "XDP native on tr0, gw0"
    assert report.attach_text({"xdp": {}, "tc": []}) == ""
    assert report.attach_text({"xdp": {}, "tc": ["tr0", "gw0"], "upcall": ["tr0", "gw0"]}) == \
        "tc on tr0, gw0 + upcall pairs of tr0, gw0"
    assert report.attach_text(None) == ""


def test_cpu_per_gb():
    """Busy and own seconds of the path core per 10^9 bytes received, in ms; nothing received: None."""
    assert cpu_per_gb(0.5, 0.25, 2_000_000_000) == {"ms_per_gb": 250.0, "own_ms_per_gb": 125.0}
    assert cpu_per_gb(0.5, 0.25, 0) == {"ms_per_gb": None, "own_ms_per_gb": None}


def _cell(gbit_s, ms_per_gb, own_ms_per_gb, counters=None):
    stat = (lambda v: {"median": v, "min": v, "max": v})
    return {"rate": stat(gbit_s), "gbit_s": stat(gbit_s), "path_ms_per_gb": stat(ms_per_gb),
            "path_own_ms_per_gb": stat(own_ms_per_gb), "path_cpu_utilisation": stat(0.5), "errors": [],
            "samples": [{"path_counters": counters, "forwarded": 1}]}


def _results():
    workloads = [{"key": w.key, "name": w.name, "unit": w.unit, "tool": w.tool, "request_response": False,
                  "pod_to_pod": w.pod_to_pod} for w in (UDP_ESTABLISHED, POD_TO_POD_WORKLOADS[0])]
    rows = []
    for row, cell in ((CrossNodeKernel(10), _cell(10.0, 400.0, 300.0)),
                      (CrossNodeBypass(10), _cell(12.0, 300.0, 330.0, {"FAST_BYPASS": 5000}))):
        rows.append({**row.describe(), "unavailable": None, "error": None, "unsupported": {},
                     "workloads": [POD_TO_POD_WORKLOADS[0].key], "cells": {POD_TO_POD_WORKLOADS[0].key: cell}})
    meta = {"runs": 1, "seconds_per_measurement": 1, "generator_cpu": 0, "path_cpu": 1, "kernel": "6.18",
            "loadavg_at_start": ["0", "0", "0"], "quick": True, "gateways": ["veth"]}
    return {"meta": meta, "workloads": workloads, "rows": rows}


def test_pod_to_pod_comparison_gives_bypass_over_kernel_ratios():
    """Throughput and CPU per GB ratios (i)/(h) per lab and workload, for latest.json."""
    [entry] = report.pod_to_pod_comparison(_results())
    assert (entry["gateway"], entry["workload"]) == ("veth", "p2p_tcp1")
    assert entry["ratio_gbit_s"] == 1.2 and entry["ratio_path_ms_per_gb"] == 0.75
    assert abs(entry["ratio_path_own_ms_per_gb"] - 1.1) < 1e-9


def test_markdown_puts_pod_to_pod_rows_in_their_own_section():
    """The Pod-to-Pod rows are left out of the main tables and shown with their bypass counters and ratios."""
    text = report.markdown(_results())
    main, _, section = text.partition("Cross-node Pod-to-Pod TCP")
    assert "(h) cross-node" not in main and "(h) cross-node" in section
    assert "FAST_BYPASS=5000" in section and "| veth gateway | p2p_tcp1 | x1.20 | x0.75 | x1.10 |" in section


def test_bridge_rows_are_compared_with_b_of_the_bridge_lab():
    """The x ratio of a bridge-lab row is to (b) on the bridge lab, not to (b) on the veth lab."""
    rows = [r.describe() for r in (IptablesKubeProxy(10), IptablesKubeProxy(10, "bridge"),
                                   XskproxyAgent(10, None, "bridge"), XskproxyAgent(10))]
    results = {"rows": rows}
    assert report.reference_row(results, rows[2])["row_id"] == "b10-bridge"
    assert report.reference_row(results, rows[3])["row_id"] == "b10"
