"""`make bench`: the full matrix (every path, N = 10, 1,000, 10,000, medians of 3 interleaved runs) and
the cost of one numba->cffi batch call. Writes bench/results/latest.{json,md,png}; asserts no speed."""
import os

import pytest

from bench import report
from bench.measure import unavailable_reason
from bench.run import FULL, RESULTS_DIR, run_matrix


@pytest.mark.timeout(1500)
def test_full_matrix_writes_report():
    """The whole matrix runs and writes the JSON, the Markdown table and the plot."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    results = run_matrix(**FULL, out_dir=RESULTS_DIR)
    print("\n" + report.markdown(results))
    for ext in ("json", "md", "png"):
        assert os.path.getsize(os.path.join(RESULTS_DIR, f"latest.{ext}")) > 0
    assert [r for r in results["rows"] if r["cells"]], "no path forwarded anything"


def test_numba_cffi_batch_call_cost(benchmark):
    """One numba->cffi batch call, timed by the function the dataplane exposes for it."""
    cost = report.batch_call_cost()
    if "unavailable" in cost:
        pytest.skip(cost["unavailable"])
    benchmark.extra_info["ns_per_call"] = cost["ns"]
    benchmark.pedantic(report.batch_call_cost, rounds=3, iterations=1)
    assert cost["ns"] > 0
