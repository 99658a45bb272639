"""`make bench`: the agent with 1 and 2 workers on a 2-queue lab (bench/queues.py, issue 15). Writes
bench/results/queues.{json,md}; asserts no speed, only that both rows forwarded."""
import os

import pytest

from bench import queues
from bench.measure import unavailable_reason


@pytest.mark.timeout(900)
def test_one_and_two_workers_are_measured_side_by_side():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    results = queues.run()
    queues.write(results)
    print("\n" + queues.markdown(results))
    assert os.path.getsize(os.path.join(queues.RESULTS_DIR, "queues.md")) > 0
    assert all(cell and cell["median"] > 0 for cells in results.values() for cell in cells.values()), results
