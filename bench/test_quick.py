"""The quick benchmark `make test` runs: one short run of every path at N=10 (UDP, one TCP stream, and the
request/response workloads on the Service paths), the cross-node Pod-to-Pod rows (one TCP stream), and the
bridge-gateway lab's rows (one TCP stream); asserts that each path that can run here forwarded traffic and
that the report was written, never a speed."""
import os

import pytest

from bench.measure import unavailable_reason
from bench.run import QUICK, RESULTS_DIR, run_matrix, select_rows

QUICK_OUT = os.path.join(RESULTS_DIR, "quick")
ROWS = [row.row_id for _, rows in select_rows(QUICK["service_counts"], QUICK["agent_flow_offload"], QUICK["gateways"],
                                               QUICK["workloads"], bridge_paths=QUICK["bridge_paths"])
        for row in rows]


@pytest.fixture(scope="module")
def quick_results():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    return run_matrix(**QUICK, out_dir=QUICK_OUT, quick=True, log=lambda line: None)


@pytest.mark.timeout(210)
def test_quick_report_is_written(quick_results):
    """latest.json, latest.md and latest.png exist and the table has one line per path."""
    for ext in ("json", "md", "png"):
        assert os.path.getsize(os.path.join(QUICK_OUT, f"latest.{ext}")) > 0
    with open(os.path.join(QUICK_OUT, "latest.md")) as f:
        table = f.read()
    assert all(row["label"] in table for row in quick_results["rows"])


@pytest.mark.parametrize("row_id", ROWS)
def test_quick_path_forwards_traffic(quick_results, row_id):
    """The path forwarded packets to the sink on every workload it carries (or says why it cannot run
    here), and completed round trips, requests and connections through the Service for the request/response
    workloads (sockperf, wrk, ab; one second each, no figure asserted); a path keeping its own counters (the
    agent) shows that it translated them: frames towards the Pod, each matched to a conntrack entry or
    DNATed as a new flow in the pipeline, or rewritten by an offloaded flow in its kernel fast path; on the
    cross-node Pod-to-Pod row, routed by its fast path's netfilter bypass."""
    row = next(r for r in quick_results["rows"] if r["row_id"] == row_id)
    if row["unavailable"]:
        pytest.skip(f"{row['label']}: {row['unavailable']}")
    assert row["error"] is None, f"{row['label']}: {row['error']}"
    assert row["workloads"], f"{row['label']} carries no quick workload"
    for key in row["workloads"]:
        if key in row["unsupported"]:
            continue
        sample = row["cells"][key]["samples"][0]
        assert sample["forwarded"] > 0, f"{row['label']} {key}: {sample.get('error')}"
        counters = sample.get("path_counters")
        if counters is None:
            continue
        if row["pod_to_pod"]:
            assert counters.get("FAST_BYPASS", 0) > 0, f"{row['label']} {key}: fast path counters {counters}"
            continue
        # an offloaded flow's packets are rewritten by the kernel fast path (FAST_FLOW), the rest
        # by the pipeline
        fast = counters.get("FAST_FLOW", 0)
        translated = counters.get("XSKP_CNT_CT_HIT", 0) + counters.get("XSKP_CNT_DNAT", 0) + fast
        assert counters.get("XSKP_CNT_TX_GATEWAY", 0) + fast > 0 and translated > 0, \
            f"{row['label']} {key}: pipeline and fast path counters {counters}"
