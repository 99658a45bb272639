"""What the agent's periodic threads read: in-use counts at most once per COUNT_INTERVAL (a count
reads every entry of the tables), and the fast path's liveness without counting anything."""
import time

import numpy as np

from control import agent
from control.config import parse_config
from dataplane import abi
from dataplane.tables import make_flow_tables, with_fast_path, FAST_CONFIG_DTYPE, FLOW_V4_DTYPE


def _agent(tmp_path, flow_offload=True):
    node = agent.Agent(parse_config({"stateDir": str(tmp_path), "flowOffload": flow_offload}))
    fast_config = np.zeros(1, FAST_CONFIG_DTYPE)
    flows = np.zeros(1024 if flow_offload else 0, FLOW_V4_DTYPE)
    tables = make_flow_tables(1024, 1024)
    node.flow_tables = [with_fast_path(tables, flows, fast_config, (0, 0), owner=0) if flow_offload else tables]
    node.fast_config = fast_config
    return node


def test_in_use_counts_are_taken_at_most_once_per_interval(tmp_path):
    node = _agent(tmp_path)
    tables = node.flow_tables[0]
    start = time.monotonic()
    assert node._in_use_counts(now=start) == [{"ct": 0, "affinity": 0}]
    tables.ct["flags"][7] = abi.lib.XSKP_CT_IN_USE
    tables.flows["flags"][3] = abi.lib.XSKP_FLOW_IN_USE
    assert node._in_use_counts(now=start + agent.COUNT_INTERVAL / 2) == [{"ct": 0, "affinity": 0}]
    assert node._fast_path_snapshot()["entries"] == 0       # counted at `start`, not again
    assert node._in_use_counts(now=start + agent.COUNT_INTERVAL) == [{"ct": 1, "affinity": 0}]
    assert node._fast_path_snapshot()["entries"] == 1


def test_fast_path_liveness_reads_the_heartbeat(tmp_path):
    node = _agent(tmp_path)
    node.fast_config[0]["alive_until_ns"] = time.monotonic_ns() + 10**9
    assert node.fast_path_live() is True
    node.fast_config[0]["alive_until_ns"] = time.monotonic_ns() - 1
    assert node.fast_path_live() is False
    assert _agent(tmp_path, flow_offload=False).fast_path_live() is None
